"""Temporal feature aggregation (T-Pool, paper Eq. 8) applied to a TAdaConv's output.

Default: ``z = Norm1(y) + Norm2(AvgPool_T(y))`` with a temporal window of 3 frames, stride 1 and zero
padding counted in the average (boundary frames are down-weighted, as the released checkpoints were
trained), and ``Norm2`` zero-initialised so ``z == Norm1(y)`` at init.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _native

__all__ = ["TemporalAggregation", "temporal_pool", "ChannelNorm"]

POOLS = ("avg", "max", "mix")
SHORTCUTS = ("separate", "shared", "none")
NORMS = ("bn", "ln")


def temporal_pool(y: Tensor, pool: str = "avg", dim: int = 2) -> Tensor:
    """Pool ``(B, C, T, H, W)`` over a window of 3 frames, stride 1, padding 1 (T is kept, any T >= 1).

    ``avg`` counts the zero padding (boundary frames are averaged with a zero); ``max`` ignores it;
    ``mix`` is their sum. ``dim``: the time dimension (``1`` for a channels-last ``(B, T, H, W, C)``);
    the output keeps ``y``'s layout.

    ``avg`` is one matrix product with the ``T x T`` band matrix of thirds over ``y``'s memory (viewed
    ``(P, T, Q)``, whatever its layout), a single pass where ``avg_pool3d`` (which also rejects T < 3
    and copies a frame-major input to a contiguous one) or pad + slices take four; its backward is one
    more product (the matrix is symmetric). The sums agree with ``(y[t-1] + y[t] + y[t+1]) / 3`` to
    rounding. ``max`` runs on pad + slices.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    out = None
    if pool in ("avg", "mix"):
        out = _avg_pool(y, dim)
    if pool in ("max", "mix"):
        pad = (0, 0) * (y.dim() - 1 - dim) + (1, 1)
        t = y.shape[dim]
        p = F.pad(y, pad, value=float("-inf"))
        m = torch.maximum(torch.maximum(p.narrow(dim, 0, t), p.narrow(dim, 1, t)), p.narrow(dim, 2, t))
        out = m if out is None else out + m
    return out


_BANDS: dict = {}


def _band(t: int, like: Tensor) -> Tensor:
    """The ``T x T`` matrix of the 3-frame average with zero padding: ``1/3`` on the three central
    diagonals (kept per size, dtype and device: building it is four small ops, a fifth of the pool's
    cost at 384 channels, 14²)."""
    make = lambda: torch.ones(t, t, dtype=like.dtype, device=like.device).triu(-1).tril(1).div_(3.0)  # noqa: E731
    if not isinstance(t, int) or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return make()  # symbolic sizes and fake tensors are not cached
    key = (t, like.dtype, like.device)
    band = _BANDS.get(key)
    if band is None:
        if len(_BANDS) > 64:
            _BANDS.clear()
        with torch.inference_mode(False):  # a cached inference tensor could not be saved for backward later
            band = _BANDS[key] = make()
    return band


def _avg_pool(y: Tensor, dim: int, add_to: Optional[Tensor] = None) -> Tensor:
    """The 3-frame average of ``y`` over ``dim``; with ``add_to`` (laid out like ``y``, not needing
    a gradient) it is added into that tensor in place (one ``addmm_``/``baddbmm_``, no new tensor)."""
    dim = dim % y.dim()
    order = sorted(range(y.dim()), key=lambda d: (-y.stride(d), -y.shape[d]))  # y's dims in memory order
    ym = y.permute(order)
    # pad + slices for overlapping or gapped memory, and on the meta device, where the FLOP counter runs
    # (the pool is a 3-tap elementwise average, which it does not count; the product would be T MACs/element)
    if not ym.is_contiguous() or y.device.type == "meta" or (add_to is not None and add_to.stride() != y.stride()):
        t = y.shape[dim]
        p = F.pad(y, (0, 0) * (y.dim() - 1 - dim) + (1, 1))
        out = (p.narrow(dim, 0, t) + p.narrow(dim, 1, t) + p.narrow(dim, 2, t)) / 3.0
        return out if add_to is None else add_to.add_(out)
    k = order.index(dim)
    t = y.shape[dim]
    band, ym3 = _band(t, y), ym.reshape(math.prod(ym.shape[:k]), t, -1)
    if add_to is not None:
        acc = add_to.permute(order).view(ym3.shape)
        if acc.shape[0] == 1:
            acc[0].addmm_(band, ym3[0])
        else:
            acc.baddbmm_(band.expand(acc.shape[0], t, t), ym3)
        return add_to
    return torch.matmul(band, ym3).view(ym.shape).permute([order.index(d) for d in range(y.dim())])


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

    def forward(self, y: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None) -> Tensor:
        """``y``: ``(B, C, T, H, W)``. ``scale`` / ``shift`` (broadcastable to ``y``, e.g. ``(B, C, T, 1, 1)``):
        aggregate ``y * scale + shift`` instead, the per-frame affine a ``cout`` TAdaConv applies to its
        output (see :meth:`TAdaConv2d.forward <tada.nn.TAdaConv2d.forward>` with ``split=True``), so that
        the multiply runs inside this pass and only ``y`` is kept for backward."""
        if y.dim() != 5 or y.shape[1] != self.channels:
            raise ValueError(
                f"TemporalAggregation({self.channels}) expects (B, {self.channels}, T, H, W), "
                f"got shape {tuple(y.shape)}"
            )
        return self._aggregate(y, scale, shift, channels_last=False)

    def forward_channels_last(self, y: Tensor, scale: Optional[Tensor] = None,
                              shift: Optional[Tensor] = None) -> Tensor:
        """The same aggregation on ``(B, T, H, W, C)`` (channels last, e.g. a ConvNeXt block's layout),
        returned in that layout, with no layout copies: the pool runs over dim 1 and the LayerNorms over
        the last dim directly. Equal to ``forward(y.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)``
        (the same sums in the same order); ``norm="ln"`` only. ``scale`` / ``shift`` as in
        :meth:`forward`, broadcastable in this layout (e.g. ``(B, T, 1, 1, C)``)."""
        if self.norm_kind != "ln":
            raise ValueError("forward_channels_last needs norm='ln' (BatchNorm normalises over dim 1)")
        if y.dim() != 5 or y.shape[-1] != self.channels:
            raise ValueError(
                f"TemporalAggregation({self.channels}).forward_channels_last expects (B, T, H, W, {self.channels}), "
                f"got shape {tuple(y.shape)}"
            )
        return self._aggregate(y, scale, shift, channels_last=True)

    def _aggregate(self, y: Tensor, scale, shift, channels_last: bool) -> Tensor:
        if self.fuses(y, scale, shift, channels_last=channels_last):
            return fused_tpool(self, y, scale, shift, channels_last=channels_last)
        out = _native_infer(self, y, scale, shift, channels_last)
        if out is not None:
            return out
        y = _affine(y, scale, shift)
        pooled = temporal_pool(y, self.pool, dim=1 if channels_last else 2)
        frozen = self.frozen_affines(y)
        if frozen is not None:
            return frozen_tpool(y, pooled, frozen)
        if channels_last:  # the LayerNorms over the last dim directly
            norm = lambda n, z: F.layer_norm(z, (self.channels,), n.weight, n.bias, n.eps)  # noqa: E731
        else:
            norm = lambda n, z: n(z)  # noqa: E731
        if self.shortcut == "separate":
            return norm(self.norm1, y) + norm(self.norm2, pooled)
        if self.shortcut == "shared":
            return norm(self.norm1, y + pooled)
        return norm(self.norm1, pooled)

    def frozen_affines(self, y: Tensor):
        """Inference with frozen BatchNorms (eval mode, running statistics, no gradient, the default
        ``separate`` form): each norm is a per-channel affine ``y * a + c``, so ``Norm1(y) + Norm2(p)`` is
        ``y * a1 + p * a2 + (c1 + c2)``, two ``addcmul`` passes instead of two norms and a sum
        (:func:`frozen_tpool`). Returns ``((a1, a2, c1 + c2))`` shaped to broadcast over ``y``'s channel
        dim 1, or None where this does not apply (then the norms run as modules)."""
        if (self.norm_kind != "bn" or self.shortcut != "separate" or torch.is_grad_enabled()
                or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting()):
            return None
        frozen = _frozen_bns(self)
        if frozen is None:
            return None
        shape = (-1,) + (1,) * (y.dim() - 2)
        return tuple(v.to(y.dtype).view(shape) for v in frozen)

    def fuses(self, y: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None, *,
              channels_last: bool = False) -> bool:
        """Whether this call runs as one fused autograd function (:class:`_FusedTPool`): a gradient is
        needed, the default form (``pool="avg"``, ``shortcut="separate"``, affine norms of the built
        types: BatchNorm on ``(B, C, T, H, W)``, LayerNorm channels-last), float32/64, no autocast, and
        not tracing, scripting, compiling or exporting (those see the plain composition). The fused
        form returns the same values and keeps only ``y`` (and the norms' per-row statistics) for
        backward, recomputing the cheap affine and pool there instead of keeping both."""
        if self.pool != "avg" or self.shortcut != "separate" or not torch.is_grad_enabled():
            return False
        if self.norm_kind != ("ln" if channels_last else "bn"):
            return False
        kinds = (ChannelNorm, nn.LayerNorm) if channels_last else (nn.BatchNorm3d,)  # not e.g. SyncBatchNorm
        if any(type(n) not in kinds or n.weight is None for n in (self.norm1, self.norm2)):
            return False
        tensors = [t for t in (y, scale, shift) if t is not None]
        params = (self.norm1.weight, self.norm1.bias, self.norm2.weight, self.norm2.bias)
        if not any(t.requires_grad for t in tensors + list(params)):
            return False
        if y.dtype not in (torch.float32, torch.float64) or any(t.dtype != y.dtype for t in tensors):
            return False
        if torch.is_autocast_enabled(y.device.type):
            return False
        return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                    or torch.compiler.is_exporting())

    def takes_affine(self, y: Tensor, *, channels_last: bool = False) -> bool:
        """Whether a ``cout`` TAdaConv before this layer should hand over its per-frame affine
        (``split=True``) instead of applying it: this call then applies it inside its own pass, as the
        fused training node (:meth:`fuses`) or the native inference kernel (:func:`_native_infer`) does.
        ``y``: the input, or a tensor of the same batch, dtype, device and gradient needs."""
        return self.fuses(y, channels_last=channels_last) or _native_infer_applies(self, y, channels_last)

    def extra_repr(self) -> str:
        return f"{self.channels}, norm={self.norm_kind!r}, pool={self.pool!r}, shortcut={self.shortcut!r}"



def _bn_affine(bn: nn.modules.batchnorm._BatchNorm):
    """An eval-mode BatchNorm (with running statistics) as ``x * a + c`` per channel."""
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = bn.weight * a
    return a, (-bn.running_mean * a if bn.bias is None else bn.bias - bn.running_mean * a)


def frozen_tpool(y: Tensor, pooled: Tensor, affines) -> Tensor:
    """``Norm1(y) + Norm2(pooled)`` for frozen BatchNorms given as :meth:`TemporalAggregation.frozen_affines`."""
    a1, a2, c = affines
    return torch.addcmul(c, y, a1).addcmul_(pooled, a2)


def _native_infer_applies(agg: TemporalAggregation, y: Tensor, channels_last: bool) -> bool:
    """Whether :func:`_native_infer` may run for ``agg`` on inputs like ``y`` (all but their layout):
    no gradient, the default form (avg pool, ``separate``), LayerNorms channels-last or frozen BatchNorms
    (:meth:`TemporalAggregation.frozen_affines`), float32/64 on the CPU, no autocast, eager mode, and the
    native kernels built."""
    if agg.pool != "avg" or agg.shortcut != "separate" or y.device.type != "cpu":
        return False
    if y.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu"):
        return False
    if torch.is_grad_enabled() and (y.requires_grad or any(p.requires_grad for p in agg.parameters())):
        return False
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()):
        return False
    if channels_last:
        if any(type(n) not in (ChannelNorm, nn.LayerNorm) or n.weight is None or n.bias is None
               for n in (agg.norm1, agg.norm2)):
            return False
    elif agg.norm_kind != "bn" or not _bns_frozen(agg):
        return False
    return _native.available()


def frozen_tpool_frames(agg: TemporalAggregation, y: Tensor, frames: int, relu: bool = False) -> Optional[Tensor]:
    """T-Pool's inference with frozen BatchNorms on a frame batch ``y`` ``(B*T, C, H, W)`` stored
    frame-major and contiguous (TAda2D's layout), followed by a ReLU if ``relu``, as one native pass
    (``tada_native::tpool_frozen_frames``): ``y * a1 + avgpool_t(y) * a2 + c``. None where it does not
    apply (:func:`_native_infer_applies`, another layout); the same values as the composition to rounding."""
    if y.dim() != 4 or not y.is_contiguous() or not _native_infer_applies(agg, y, False):
        return None
    if y.shape[0] % frames or y.shape[1] != agg.channels:
        return None
    a1, a2, c = (v.to(y.dtype).contiguous() for v in _frozen_bns(agg))
    return torch.ops.tada_native.tpool_frozen_frames(y, frames, a1, a2, c, bool(relu))


def _native_infer(agg: TemporalAggregation, y: Tensor, scale, shift, channels_last: bool) -> Optional[Tensor]:
    """T-Pool's inference as one native pass over channels-last memory (``csrc/tpool.cpp``), or None where
    it does not apply (:func:`_native_infer_applies`, or ``y``'s memory is not ``(B, T, H, W, C)``
    contiguous, or ``scale`` / ``shift`` vary over space); the plain composition then runs. The same
    values as that composition to rounding (the sums run in another order)."""
    if y.dim() != 5 or not _native_infer_applies(agg, y, channels_last):
        return None
    rows = _native_rows(y, scale, shift, channels_last)
    if rows is None:
        return None
    if channels_last:
        n1, n2 = agg.norm1, agg.norm2
        params, ln, eps = (n1.weight, n1.bias, n2.weight, n2.bias), True, (n1.eps, n2.eps)
    else:
        a1, a2, c12 = _frozen_bns(agg)
        params, ln, eps = (a1, c12, a2, torch.zeros_like(c12)), False, (0.0, 0.0)
    params = [p.detach().to(y.dtype).contiguous() for p in params]
    out = torch.ops.tada_native.tpool_infer(*rows, *params, ln, *eps)
    b, t, h, w, c = y.shape if channels_last else y.permute(0, 2, 3, 4, 1).shape
    out = out.view(b, t, h, w, c)
    return out if channels_last else out.permute(0, 4, 1, 2, 3)


def _bns_frozen(agg: TemporalAggregation) -> bool:
    """Whether both norms of ``agg`` are affine BatchNorms in eval mode with running statistics."""
    return all(type(n) is nn.BatchNorm3d and not n.training and n.running_mean is not None and n.weight is not None
               for n in (agg.norm1, agg.norm2))


def _frozen_bns(agg: TemporalAggregation):
    """The two frozen BatchNorms of ``agg`` as ``(a1, a2, c1 + c2)`` (``(C,)`` each), or None where they
    are not frozen (see :meth:`TemporalAggregation.frozen_affines`, which this shares its test with)."""
    if not _bns_frozen(agg):
        return None
    (a1, c1), (a2, c2) = [_bn_affine(n) for n in (agg.norm1, agg.norm2)]
    return a1, a2, c1 + c2


def _affine(y: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """``y * scale + shift`` with either part optional (one ``addcmul`` for both, as the fast TAdaConv),
    laid out like ``y``. (Left to itself, the elementwise op may take its layout from the small
    broadcast operand: a frame-major ``y`` then gave a contiguous result, on which the BatchNorms after
    it ran 1.8x slower.)"""
    if scale is None and shift is None:
        return y
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, scale, shift)):
        if scale is None:
            return y + shift
        return y * scale if shift is None else torch.addcmul(shift, y, scale)
    out = torch.empty_like(y)
    if scale is None:
        return torch.add(y, shift, out=out)
    return torch.mul(y, scale, out=out) if shift is None else torch.addcmul(shift, y, scale, out=out)


def _bn_call(bn: nn.BatchNorm3d):
    """What ``bn.forward`` would pass to the batch-norm kernel now: ``(training, momentum, running_mean,
    running_var)``; counts the batch (``num_batches_tracked``) as ``nn.BatchNorm3d`` does."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return batch_stats, momentum, bn.running_mean if keep else None, bn.running_var if keep else None


def fused_tpool(agg: TemporalAggregation, y: Tensor, scale, shift, channels_last: bool, frames: Optional[int] = None
           ) -> Tensor:
    """The fused T-Pool: on ``(B, C, T, H, W)`` (BatchNorm), channels-last ``(B, T, H, W, C)``
    (LayerNorm), or with ``frames=T`` on the frame batch ``(B*T, C, H, W)`` of frame-major memory
    (BatchNorm; returns ``(B*T, C, H, W)``, see :func:`tada.models.builders.aggregate_frame_major`)."""
    n1, n2 = agg.norm1, agg.norm2
    if channels_last:
        norms = (("ln", n1.eps), ("ln", n2.eps))
    else:
        norms = tuple(("bn", n.eps) + _bn_call(n) for n in (n1, n2))
    tdim = 1 if channels_last else 2
    # the native kernels: LayerNorms, or BatchNorms with batch statistics; both norms with a bias
    if frames is None and (channels_last or all(spec[2] for spec in norms)) and n1.bias is not None \
            and n2.bias is not None:
        rows = _native_rows(y, scale, shift, channels_last)
        if rows is not None:
            return _NativeTPool.apply(y, scale, shift, n1.weight, n1.bias, n2.weight, n2.bias, rows, norms)
    return _FusedTPool.apply(y, scale, shift, n1.weight, n1.bias, n2.weight, n2.bias, norms, tdim, frames)


def _native_rows(y: Tensor, scale, shift, channels_last: bool):
    """``(y, scale, shift)`` as the native kernels take them (``y`` viewed ``(B, T, P, C)``, the affine
    ``(B, T, C)`` contiguous, detached), or None where they cannot: not the CPU, not float32/64, ``y``'s
    memory not ``(B, T, H, W, C)`` contiguous, an affine that varies over space, or no native kernels."""
    if y.dim() != 5 or y.device.type != "cpu" or y.dtype not in (torch.float32, torch.float64):
        return None
    yl = y if channels_last else y.permute(0, 2, 3, 4, 1)
    if not yl.is_contiguous():
        return None
    b, t, h, w, c = yl.shape
    rows = [yl.detach().view(b, t, h * w, c)]
    for v in (scale, shift):
        if v is not None:
            if v.dtype != y.dtype or v.device != y.device:
                return None
            if channels_last and v.dim() < 5:  # broadcast over the leading dims, as in the plain composition
                v = v.reshape((1,) * (5 - v.dim()) + tuple(v.shape))
            if v.dim() != 5:
                return None
            v = v if channels_last else v.permute(0, 2, 3, 4, 1)
            if v.shape[2] != 1 or v.shape[3] != 1:
                return None
            v = v.detach().expand(b, t, 1, 1, c).reshape(b, t, c).contiguous()
        rows.append(v)
    return rows if _native.available() else None


class _NativeTPool(torch.autograd.Function):
    """T-Pool's default form (``N1(u) + N2(AvgPool_T(u))``, ``u = y * scale + shift``) on channels-last
    memory as native passes (``csrc/tpool.cpp``), keeping only ``y`` and the affine for backward:

    * LayerNorms: forward is the inference kernel; backward one kernel that recomputes ``u``, the pool and
      both norms' row statistics from ``y``.
    * BatchNorms with batch statistics: forward one pass for the per-channel statistics of ``u`` and of
      its pool (updating the running statistics as ``nn.BatchNorm3d`` does), then the inference kernel
      with the norms as affines; backward one pass for the per-channel sums, one for the gradients.
    """

    @staticmethod
    def forward(ctx, y, scale, shift, w1, b1, w2, b2, rows, norms):
        yr, sr, hr = rows
        ctx.shape, ctx.ln = y.shape, norms[0][0] == "ln"
        ctx.aff_shapes = tuple(None if v is None else v.shape for v in (scale, shift))
        if ctx.ln:
            params = [p.detach().contiguous() for p in (w1, b1, w2, b2)]
            ctx.eps = (norms[0][1], norms[1][1])
            out = torch.ops.tada_native.tpool_infer(yr, sr, hr, *params, True, *ctx.eps)
            ctx.save_for_backward(yr, sr, hr, *params)
            return out.view(y.shape)
        stats = torch.ops.tada_native.tpool_bn_stats(yr, sr, hr)  # float64 (4, C)
        n = yr.numel() // yr.shape[-1]
        affines, norm = [], []
        for (mean, var), (w, b), spec in zip((stats[:2], stats[2:]), ((w1, b1), (w2, b2)), norms):
            _, eps, _, momentum, rm, rv = spec
            if rm is not None:
                rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
                rv.mul_(1 - momentum).add_((var * (n / max(n - 1, 1))).to(rv.dtype), alpha=momentum)
            rstd = torch.rsqrt(var + eps)
            a = w.detach().double() * rstd
            affines += [a, b.detach().double() - mean * a]
            norm += [mean, rstd, w.detach().double()]
        affines = [v.to(y.dtype) for v in affines]
        out = torch.ops.tada_native.tpool_infer(yr, sr, hr, *affines, False, 0.0, 0.0)
        ctx.save_for_backward(yr, sr, hr, torch.stack(norm).to(y.dtype))
        return out.view(yr.shape[:2] + y.shape[3:] + yr.shape[3:]).permute(0, 4, 1, 2, 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, gz):
        yr, sr, hr, *rest = ctx.saved_tensors
        gz = (gz if ctx.ln else gz.permute(0, 2, 3, 4, 1)).contiguous().view(yr.shape)
        if ctx.ln:
            gy, gs, gh, gp = torch.ops.tada_native.tpool_ln_backward(gz, yr, sr, hr, *rest, *ctx.eps)
        else:
            gy, gs, gh, gp = torch.ops.tada_native.tpool_bn_backward(gz, yr, sr, hr, rest[0])
        need = ctx.needs_input_grad
        b, t, c = yr.shape[0], yr.shape[1], yr.shape[3]
        grads = []
        for g, shape, n in zip((gs, gh), ctx.aff_shapes, need[1:3]):
            if n and shape is not None:
                g = g.view(b, t, 1, 1, c)  # LayerNorms run channels-last; BatchNorms on (B, C, T, H, W)
                grads.append((g if ctx.ln else g.permute(0, 4, 1, 2, 3)).sum_to_size(shape))
            else:
                grads.append(None)
        gw = [gp[i] if need[3 + i] else None for i in range(4)]
        gy = gy.view(ctx.shape) if ctx.ln else gy.view(b, t, *ctx.shape[3:], c).permute(0, 4, 1, 2, 3)
        return (gy if need[0] else None, *grads, *gw, None, None)


def _pool_of(u: Tensor, tdim: int, frames: Optional[int], add_to: Optional[Tensor] = None) -> Tensor:
    """The average pool of T-Pool's (normalised-layout) input ``u``: over ``tdim``, or for the frame
    batch ``u`` ``(B*T, C, 1, H, W)`` over the frames of each video (a ``(B, 1, T, C, H*W)`` view);
    ``add_to``: added into that tensor in place (see :func:`_avg_pool`)."""
    if frames is None:
        return _avg_pool(u, tdim, add_to)
    n, c, _, h, w = u.shape
    video = lambda v: v.reshape(n // frames, 1, frames, c, h * w)  # noqa: E731
    out = _avg_pool(video(u), 2, None if add_to is None else video(add_to))
    return out.view(n, c, 1, h, w) if add_to is None else add_to


def _norm_forward(spec, x: Tensor, w: Tensor, b: Tensor):
    """One norm with the kernel autograd's own would call: ``(out, stat1, stat2)``."""
    if spec[0] == "ln":
        return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, spec[1])
    _, eps, batch_stats, momentum, rm, rv = spec
    return torch.ops.aten.native_batch_norm(x, w, b, rm, rv, batch_stats, momentum, eps)


def _norm_backward(spec, g: Tensor, x: Tensor, s1: Tensor, s2: Tensor, w: Tensor, b: Tensor, mask):
    if spec[0] == "ln":
        return torch.ops.aten.native_layer_norm_backward(g, x, [x.shape[-1]], s1, s2, w, b, mask)
    _, eps, batch_stats, _, rm, rv = spec
    return torch.ops.aten.native_batch_norm_backward(g, x, w, rm, rv, s1, s2, batch_stats, eps, mask)


class _FusedTPool(torch.autograd.Function):
    """``Norm1(u) + Norm2(AvgPool_T(u))`` with ``u = y * scale + shift`` (T-Pool's default form, after a
    ``cout`` TAdaConv's per-frame affine), as one autograd node.

    Forward runs the same kernels as the plain composition (so the same values). Backward keeps only
    ``y``, ``scale``, ``shift``, the norm parameters and the norms' per-row statistics, where the plain
    graph keeps ``u``, ``y`` and ``AvgPool_T(u)`` and differentiates the pool through three padded
    slices (a zero fill and a copy each): here ``u`` and the pool are recomputed, both norm backwards
    run as autograd's own kernels, and the pool's adjoint is the pool itself (the 3-tap average with
    zero padding is a symmetric operator).
    """

    @staticmethod
    def forward(ctx, y, scale, shift, w1, b1, w2, b2, norms, tdim, frames):
        u = _affine(y, scale, shift)
        if frames is not None:
            u = u.unsqueeze(2)  # (B*T, C, 1, H, W): a BatchNorm3d over it has the statistics of the video's
        z1, s11, s12 = _norm_forward(norms[0], u, w1, b1)
        z2, s21, s22 = _norm_forward(norms[1], _pool_of(u, tdim, frames), w2, b2)
        ctx.save_for_backward(y, scale, shift, w1, b1, w2, b2, s11, s12, s21, s22)
        ctx.norms, ctx.tdim, ctx.frames = norms, tdim, frames
        if frames is None:
            return z1.add_(z2)
        return torch.add(z1.squeeze(2), z2.squeeze(2))  # a new tensor (an output may not be a view)

    @staticmethod
    @once_differentiable
    def backward(ctx, gz):
        y, scale, shift, w1, b1, w2, b2, s11, s12, s21, s22 = ctx.saved_tensors
        need_y, need_scale, need_shift, nw1, nb1, nw2, nb2 = ctx.needs_input_grad[:7]
        tdim, frames = ctx.tdim, ctx.frames
        u = _affine(y, scale, shift)
        if frames is not None:
            u, gz = u.unsqueeze(2), gz.unsqueeze(2)
        gu, gw1, gb1 = _norm_backward(ctx.norms[0], gz, u, s11, s12, w1, b1, [True, nw1, nb1])
        gp, gw2, gb2 = _norm_backward(ctx.norms[1], gz, _pool_of(u, tdim, frames), s21, s22, w2, b2, [True, nw2, nb2])
        _pool_of(gp, tdim, frames, add_to=gu)  # the pool is self-adjoint: gu += pool(gp), in place
        del gp
        if frames is not None:
            gu, u = gu.squeeze(2), u.squeeze(2)
        # few new tensors (each a page-faulted allocation with glibc's default malloc): gu * y goes into u's
        # buffer (u is y itself only when there is no scale), and gy is gu scaled in place
        gy = gscale = gshift = None
        if need_scale:
            prod = torch.mul(gu, y, out=u) if u is not y and u.stride() == gu.stride() else gu * y
            gscale = prod.sum_to_size(scale.shape)
            del prod
        del u
        if need_shift:
            gshift = gu.sum_to_size(shift.shape)
            if gshift.data_ptr() == gu.data_ptr():  # nothing to sum (a 1x1 map): sum_to_size returned gu itself
                gshift = gshift.clone()
        if need_y:
            gy = gu if scale is None else gu.mul_(scale)
        return gy, gscale, gshift, gw1, gb1, gw2, gb2, None, None, None
