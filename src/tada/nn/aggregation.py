"""Temporal feature aggregation (T-Pool, paper Eq. 8) applied to a TAdaConv's output.

Default: ``z = Norm1(y) + Norm2(AvgPool_T(y))`` with a temporal window of 3 frames, stride 1 and zero
padding counted in the average (boundary frames are down-weighted, as the released checkpoints were
trained), and ``Norm2`` zero-initialised so ``z == Norm1(y)`` at init.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TemporalAggregation", "temporal_pool", "ChannelNorm"]

POOLS = ("avg", "max", "mix")
SHORTCUTS = ("separate", "shared", "none")
NORMS = ("bn", "ln")


def temporal_pool(y: Tensor, pool: str = "avg", dim: int = 2) -> Tensor:
    """Pool ``(B, C, T, H, W)`` over a window of 3 frames, stride 1, padding 1 (T is kept, any T >= 1).

    ``avg`` counts the zero padding (boundary frames are averaged with a zero); ``max`` ignores it;
    ``mix`` is their sum. Written with pad + slices rather than ``avg_pool3d``, which rejects T < 3,
    and which would also copy a frame-major input to a contiguous one. ``dim``: the time dimension
    (``1`` for a channels-last ``(B, T, H, W, C)``); the output keeps ``y``'s layout.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    pad = (0, 0) * (y.dim() - 1 - dim) + (1, 1)
    t = y.shape[dim]
    window = lambda p: (p.narrow(dim, 0, t), p.narrow(dim, 1, t), p.narrow(dim, 2, t))  # noqa: E731
    out = None
    if pool in ("avg", "mix"):
        prev, cur, nxt = window(F.pad(y, pad))
        out = (prev + cur + nxt) / 3.0
    if pool in ("max", "mix"):
        prev, cur, nxt = window(F.pad(y, pad, value=float("-inf")))
        m = torch.maximum(torch.maximum(prev, cur), nxt)
        out = m if out is None else out + m
    return out


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension (dim 1) of a ``(B, C, ...)`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _norm(kind: str, channels: int, eps, momentum) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm3d(channels, eps=1e-5 if eps is None else eps, momentum=momentum)
    return ChannelNorm(channels, eps=1e-6 if eps is None else eps)


class TemporalAggregation(nn.Module):
    """T-Pool aggregation on ``(B, C, T, H, W)``.

    Args:
        channels: C.
        norm: ``"bn"`` (BatchNorm over (B, T, H, W), TAda2D / TAdaFormer) or ``"ln"`` (LayerNorm over
            channels, TAdaConvNeXtV2).
        pool: ``"avg"`` | ``"max"`` | ``"mix"`` (avg + max).
        shortcut: ``"separate"`` ``Norm1(y) + Norm2(Pool(y))`` (default; ``norm2`` zero-init),
            ``"shared"`` ``Norm(y + Pool(y))``, ``"none"`` ``Norm(Pool(y))``.
        eps: norm epsilon (default 1e-5 for BN, 1e-6 for LN).
        momentum: BN momentum.
    """

    def __init__(
        self,
        channels: int,
        *,
        norm: str = "bn",
        pool: str = "avg",
        shortcut: str = "separate",
        eps: float = None,
        momentum: float = 0.1,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {shortcut!r}; expected one of {SHORTCUTS}")
        self.channels, self.norm_kind, self.pool, self.shortcut = channels, norm, pool, shortcut
        self.norm1 = _norm(norm, channels, eps, momentum)
        self.norm2 = None
        if shortcut == "separate":
            self.norm2 = _norm(norm, channels, eps, momentum)
            nn.init.zeros_(self.norm2.weight)
            nn.init.zeros_(self.norm2.bias)

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() != 5 or y.shape[1] != self.channels:
            raise ValueError(
                f"TemporalAggregation({self.channels}) expects (B, {self.channels}, T, H, W), "
                f"got shape {tuple(y.shape)}"
            )
        pooled = temporal_pool(y, self.pool)
        if self.shortcut == "separate":
            return self.norm1(y) + self.norm2(pooled)
        if self.shortcut == "shared":
            return self.norm1(y + pooled)
        return self.norm1(pooled)

    def forward_channels_last(self, y: Tensor) -> Tensor:
        """The same aggregation on ``(B, T, H, W, C)`` (channels last, e.g. a ConvNeXt block's layout),
        returned in that layout, with no layout copies: the pool runs over dim 1 and the LayerNorms over
        the last dim directly. Equal to ``forward(y.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)``
        (the same sums in the same order); ``norm="ln"`` only."""
        if self.norm_kind != "ln":
            raise ValueError("forward_channels_last needs norm='ln' (BatchNorm normalises over dim 1)")
        if y.dim() != 5 or y.shape[-1] != self.channels:
            raise ValueError(
                f"TemporalAggregation({self.channels}).forward_channels_last expects (B, T, H, W, {self.channels}), "
                f"got shape {tuple(y.shape)}"
            )
        pooled = temporal_pool(y, self.pool, dim=1)
        ln = lambda norm, z: F.layer_norm(z, (self.channels,), norm.weight, norm.bias, norm.eps)  # noqa: E731
        if self.shortcut == "separate":
            return ln(self.norm1, y) + ln(self.norm2, pooled)
        if self.shortcut == "shared":
            return ln(self.norm1, y + pooled)
        return ln(self.norm1, pooled)

    def extra_repr(self) -> str:
        return f"{self.channels}, norm={self.norm_kind!r}, pool={self.pool!r}, shortcut={self.shortcut!r}"

