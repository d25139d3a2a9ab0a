"""Routing functions: generate the per-frame calibration ``alpha`` of a TAdaConv from the video.

Both take the feature map the convolution will see, ``(B, C, T, H, W)``, describe each frame by its
spatial mean, and return ``(B, C_cal, T)`` calibrations (SPEC §1):

* :class:`RouteFuncMLP` (V1, TAdaConv / TAda2D): local context from temporal 1D convolutions,
  global context from the clip-level mean added to every frame descriptor.
* :class:`RouteFuncAttn` (V2, TAdaConvV2 / TAdaConvNeXtV2 / TAdaFormer): global context from
  multi-head self-attention across the frame descriptors.

``out_channels`` is an int (one calibration) or a pair ``(n_in, n_out)`` (two heads, for
``cal_dim="cin_cout"``). With ``bias_channels`` set, a further head produces the bias calibration and
``forward`` returns ``(alpha, bias_alpha)``; otherwise it returns ``alpha``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["RouteFuncMLP", "RouteFuncAttn", "quick_gelu", "QuickGELU"]

OutChannels = Union[int, Tuple[int, int]]


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


class _QuickGELU(torch.autograd.Function):
    """:func:`quick_gelu` keeping only ``x`` for backward (the composition also keeps ``sigmoid(1.702 x)``,
    a second input-sized tensor); the sigmoid is recomputed there:
    ``d/dx = s + 1.702 x s (1 - s)``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return quick_gelu(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        return g * (s + 1.702 * x * s * (1 - s))


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``. ``lean=True``: with a gradient, through :class:`_QuickGELU`, which keeps
    half the memory for backward and recomputes the sigmoid (the same values; gradients to rounding)."""

    def __init__(self, lean: bool = False):
        super().__init__()
        self.lean = bool(lean)

    def forward(self, x: Tensor) -> Tensor:
        if self.lean and x.requires_grad and torch.is_grad_enabled() and not (
                torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            return _QuickGELU.apply(x)
        return quick_gelu(x)

    def extra_repr(self) -> str:
        return "lean=True" if self.lean else ""


def _pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _kernel(k, name: str) -> int:
    k = _pos_int(k, name)
    if k % 2 == 0:
        raise ValueError(f"{name} must be odd so 'same' temporal padding keeps T, got {k}")
    return k


def _out_heads(out_channels, in_channels: int) -> Tuple[int, ...]:
    if out_channels is None:
        return (in_channels,)
    if isinstance(out_channels, int) and not isinstance(out_channels, bool):
        return (_pos_int(out_channels, "out_channels"),)
    if isinstance(out_channels, (tuple, list)) and len(out_channels) == 2:
        return tuple(_pos_int(c, "out_channels[i]") for c in out_channels)
    raise ValueError(f"out_channels must be an int or a pair (n_in, n_out), got {out_channels!r}")


def _two_kernels(kernels: Sequence[int]) -> Tuple[int, int]:
    if isinstance(kernels, int) or len(kernels) != 2:
        raise ValueError(f"kernels must be a pair (k1, k2) of odd ints, got {kernels!r}")
    return _kernel(kernels[0], "kernels[0]"), _kernel(kernels[1], "kernels[1]")


class _Heads(nn.Module):
    """The last temporal conv(s) ``hidden -> C_cal`` (no bias): ``b``, ``b2`` (cin_cout), ``b_bias``."""

    def __init__(self, hidden, heads, bias_channels, kernel, zero_init, add_one):
        super().__init__()
        conv = lambda c: nn.Conv1d(hidden, c, kernel, padding=kernel // 2, bias=False)  # noqa: E731
        self.b = conv(heads[0])
        self.b2 = conv(heads[1]) if len(heads) == 2 else None
        self.b_bias = conv(_pos_int(bias_channels, "bias_channels")) if bias_channels is not None else None
        self.add_one = add_one
        if zero_init:
            for m in (self.b, self.b2, self.b_bias):
                if m is not None:
                    nn.init.zeros_(m.weight)

    def _one(self, conv: nn.Conv1d, h: Tensor) -> Tensor:
        out = conv(h)
        return out + 1.0 if self.add_one else out

    def forward(self, h: Tensor):
        alpha = self._one(self.b, h)
        if self.b2 is not None:
            alpha = (alpha, self._one(self.b2, h))
        if self.b_bias is not None:
            return alpha, self._one(self.b_bias, h)
        return alpha


def _descriptor(x: Tensor) -> Tensor:
    """Per-frame spatial means ``(B, C, T)``, reduced in ``x``'s own memory layout (see
    :class:`_SpatialMean`)."""
    if x.dim() != 5:
        raise ValueError(f"routing input must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if x.requires_grad and torch.is_grad_enabled() and not (torch.jit.is_tracing() or torch.compiler.is_compiling()
                                                             or torch.compiler.is_exporting()):
        return _SpatialMean.apply(x)
    return _spatial_mean(x)


def _channels_last_view(x: Tensor) -> bool:
    """``x`` ``(B, C, T, H, W)`` has its channels innermost in memory, as a view of channels-last
    ``(B, T, H, W, C)`` memory (a ConvNeXt block's), dense or not (TAdaFormer's patch tokens without
    their CLS row)."""
    return x.shape[1] > 1 and x.stride(1) == 1 and all(x.stride(d) >= x.shape[1] for d in (2, 3, 4) if x.shape[d] > 1)


def _spatial_mean(x: Tensor) -> Tensor:
    # on a channels-last view, mean(dim=(3, 4)) is ~30x slower on the CPU (a strided reduction) than the
    # same reduction in the memory's own order, for the same values up to rounding
    if _channels_last_view(x):
        return x.permute(0, 2, 3, 4, 1).mean(dim=(2, 3)).transpose(1, 2)
    return x.mean(dim=(3, 4))  # (B, C, T)


class _SpatialMean(torch.autograd.Function):
    """``x.mean(dim=(3, 4))`` whose gradient is laid out like ``x``.

    Autograd's own gradient of the mean is the ``(B, C, T)`` gradient broadcast over (H, W) in
    ``(B, C, T)`` order; added into the gradient of a channels-last ``x`` (where it meets the
    convolution's and the residual's), channels are then not the innermost stride and the add runs
    strided, ~4x slower than a vectorised pass (stage 1 of TAdaConvNeXtV2-T: most of the routing's
    backward). Here the small gradient is divided by H*W and stored in ``x``'s channel order first, then
    broadcast: the same values, a vectorised add.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.shape, ctx.cl = x.shape, _channels_last_view(x)
        return _spatial_mean(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        b, c, t, h, w = ctx.shape
        g = g / (h * w)
        if ctx.cl:  # (B, T, 1, 1, C) memory, broadcast, viewed as (B, C, T, H, W)
            return g.transpose(1, 2).contiguous()[:, :, None, None, :].expand(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return g[..., None, None].expand(b, c, t, h, w)


class RouteFuncMLP(nn.Module):
    """V1 routing (paper Eq. 4-5): ``alpha = 1 + conv_b(ReLU(BN(conv_a(v + fc_g(g)))))``.

    Args:
        in_channels: channels of the feature map the TAdaConv sees.
        out_channels: calibration size (default ``in_channels``), or a pair for ``cin_cout``.
        reduction: ``r``, the hidden width is ``in_channels // r``.
        kernels: temporal kernel sizes ``(k1, k2)`` of ``conv_a`` and ``conv_b``.
        global_context: add the clip-level descriptor ``fc_g(mean_{T,H,W} x)`` to every frame.
        linear: the linear ablation, ``alpha = 1 + conv_b(v + fc_g(g))`` with ``conv_b`` of kernel
            ``kernels[1]`` straight from ``C`` channels (no ``conv_a``, BN or ReLU).
        zero_init: zero-initialise the last conv(s) so ``alpha == 1`` at init.
        bias_channels: if set, also return a bias calibration with this many channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[OutChannels] = None,
        *,
        reduction: int = 4,
        kernels: Sequence[int] = (3, 3),
        global_context: bool = True,
        linear: bool = False,
        zero_init: bool = True,
        bias_channels: Optional[int] = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        c = _pos_int(in_channels, "in_channels")
        heads = _out_heads(out_channels, c)
        k1, k2 = _two_kernels(kernels)
        r = _pos_int(reduction, "reduction")
        if not linear and c // r < 1:
            raise ValueError(f"reduction={r} leaves no hidden channels for in_channels={c}")
        self.in_channels, self.out_channels, self.reduction = c, out_channels, r
        self.kernels, self.global_context, self.linear = (k1, k2), bool(global_context), bool(linear)
        self.g = nn.Conv1d(c, c, 1, bias=True) if global_context else None
        if linear:
            self.a = self.bn = None
            hidden = c
        else:
            hidden = c // r
            self.a = nn.Conv1d(c, hidden, k1, padding=k1 // 2, bias=True)
            self.bn = nn.BatchNorm1d(hidden, eps=bn_eps, momentum=bn_momentum)
        self.heads = _Heads(hidden, heads, bias_channels, k2, zero_init, add_one=True)

    def forward(self, x: Tensor):
        return self.from_descriptor(_descriptor(x))

    def from_descriptor(self, v: Tensor):
        """The calibration from the per-frame spatial means ``v`` ``(B, C, T)`` of the input (what
        ``forward`` computes first): for callers that have the means already."""
        if self.g is not None:
            # mean over (T, H, W) equals the mean over T of the per-frame spatial means
            v = v + self.g(v.mean(dim=2, keepdim=True))
        h = v if self.linear else F.relu(self.bn(self.a(v)))
        return self.heads(h)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, reduction={self.reduction}, "
            f"kernels={self.kernels}, global_context={self.global_context}, linear={self.linear}"
        )


class RouteFuncAttn(nn.Module):
    """V2 routing (paper Eq. 6): temporal conv, then self-attention over the frame descriptors.

    ``h = QuickGELU(LN(conv_a(v)))``; ``h = h + MHSA(LN2(h))``; ``alpha = conv_b(h)`` (``+ 1`` with
    ``zero_init``). The q/k/v projection is one linear ``c' -> 3c'`` laid out ``[q | k | v]`` with head
    ``i`` at channels ``i*head_dim : (i+1)*head_dim`` of each (the released checkpoints interleave
    heads; their converter permutes, this module keeps the standard layout).

    Args:
        in_channels: channels of the feature map the TAdaConv sees.
        out_channels: calibration size (default ``in_channels``), or a pair for ``cin_cout``.
        reduction: ``r``, the hidden width ``c' = in_channels // r`` (a multiple of ``head_dim``).
        kernels: temporal kernel sizes ``(k1, k2)`` of ``conv_a`` and ``conv_b``.
        head_dim: channels per attention head.
        zero_init: zero-initialise ``conv_b`` (and ``conv_b_bias``) and add 1, so the calibration is
            exactly 1 at init (TAdaConvNeXtV2); ``False`` for neither (TAdaFormer).
        bias_channels: if set, also return a bias calibration with this many channels.
        scale: softmax scale; ``None`` uses ``c'**-0.5`` (the whole reduced width, as the released
            checkpoints were trained with), not ``head_dim**-0.5``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[OutChannels] = None,
        *,
        reduction: int = 2,
        kernels: Sequence[int] = (3, 3),
        head_dim: int = 48,
        zero_init: bool = True,
        bias_channels: Optional[int] = None,
        ln_eps: float = 1e-6,
        scale: Optional[float] = None,
    ):
        super().__init__()
        c = _pos_int(in_channels, "in_channels")
        heads = _out_heads(out_channels, c)
        k1, k2 = _two_kernels(kernels)
        r = _pos_int(reduction, "reduction")
        head_dim = _pos_int(head_dim, "head_dim")
        hidden = c // r
        if hidden < 1 or hidden % head_dim != 0:
            raise ValueError(
                f"RouteFuncAttn: the reduced width in_channels // reduction = {c} // {r} = {hidden} "
                f"must be a positive multiple of head_dim={head_dim}; choose head_dim dividing {hidden}"
            )
        self.in_channels, self.out_channels, self.reduction = c, out_channels, r
        self.kernels, self.head_dim, self.num_heads = (k1, k2), head_dim, hidden // head_dim
        self.zero_init = bool(zero_init)
        self.scale = float(scale) if scale is not None else hidden ** -0.5
        self.a = nn.Conv1d(c, hidden, k1, padding=k1 // 2, bias=True)
        self.norm = nn.LayerNorm(hidden, eps=ln_eps)
        self.norm_attn = nn.LayerNorm(hidden, eps=ln_eps)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.proj = nn.Linear(hidden, hidden, bias=True)
        self.heads = _Heads(hidden, heads, bias_channels, k2, zero_init, add_one=zero_init)

    def _attention(self, h: Tensor) -> Tensor:
        b, t, c = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)  # (B, heads, T, T)
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(out)

    def forward(self, x: Tensor):
        return self.from_descriptor(_descriptor(x))

    def from_descriptor(self, v: Tensor):
        """The calibration from the per-frame spatial means ``v`` ``(B, C, T)`` of the input (what
        ``forward`` computes first): for callers that have the means already."""
        h = self.a(v).transpose(1, 2)  # (B, T, c')
        h = quick_gelu(self.norm(h))
        h = h + self._attention(self.norm_attn(h))
        return self.heads(h.transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, reduction={self.reduction}, "
            f"kernels={self.kernels}, head_dim={self.head_dim}, num_heads={self.num_heads}, "
            f"zero_init={self.zero_init}, scale={self.scale:.4g}"
        )
