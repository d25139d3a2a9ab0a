"""ResNet building blocks that take their sub-layers as callables (the PyTorchVideo way).

One :class:`Bottleneck` builds the blocks of TSN / TAda2D, R(2+1)D, R3D, SlowOnly and both SlowFast
pathways: what differs between those networks is *which* convolution sits at each place, and that is
an argument::

    Bottleneck(256, 512, stride=2, conv_a=conv3d((3, 1, 1)), conv_b=tada_conv2d(3), aggregation=t_pool())

Conventions (every factory follows them, so a user's own layer plugs in the same way):

* a **conv factory** (:data:`ConvFn`) is called ``factory(in_channels, out_channels, stride)`` and
  returns a module mapping ``(B, C_in, T, H, W)`` to ``(B, C_out, T, H/stride, W/stride)``; ``stride``
  is spatial (blocks never stride in time);
* a **norm factory** (:data:`NormFn`) is called ``factory(channels)``; an **aggregation factory**
  (T-Pool) too, and replaces the norm after ``conv_b``;
* layers take and return ``(B, C, T, H, W)`` tensors. Per-frame 2D layers (:class:`FrameConv2d`,
  :class:`FrameBatchNorm2d`, :class:`FrameAggregation`, :class:`~tada.nn.TAdaConv2d`) fold the frames
  into the batch, run on ``(B*T, C, H, W)`` and return the result *frame-major* (memory laid out as
  ``(B, T, C, H, W)``), so a chain of them folds and unfolds with free views and never copies for
  layout; a 3D layer (``nn.Conv3d``) reads any layout.

The per-frame layers subclass ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``TemporalAggregation``, so their
state-dict keys and shapes are those of the plain layers (torchvision weights load as they are).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..nn import TAdaConv2d, TemporalAggregation, temporal_pool
from ..nn.aggregation import frozen_tpool, frozen_tpool_frames, fused_tpool
from ..nn.tadaconv import has_forward_hooks
from ..nn.functional import batch_to_frames, frames_to_batch

__all__ = [
    "ConvFn",
    "NormFn",
    "FrameConv2d",
    "FrameBatchNorm2d",
    "FrameAggregation",
    "FrameMaxPool2d",
    "Conv2plus1d",
    "Bottleneck",
    "aggregate_frame_major",
    "conv_then_tpool",
    "channels_last_view",
    "conv2d",
    "conv3d",
    "tada_conv2d",
    "tada_conv3d",
    "conv2plus1d",
    "t_pool",
    "batch_norm",
    "make_stage",
    "run_layers",
    "as_video",
    "mark_absent_in_2d",
    "routing_kwargs_for",
]

ConvFn = Callable[[int, int, int], nn.Module]
"""``factory(in_channels, out_channels, stride) -> layer`` on ``(B, C, T, H, W)`` (stride is spatial)."""
NormFn = Callable[[int], nn.Module]
"""``factory(channels) -> layer`` on ``(B, C, T, H, W)``."""

_Int3 = Union[int, Tuple[int, int, int]]


def mark_absent_in_2d(module: nn.Module) -> nn.Module:
    """Mark a module that no 2D (ImageNet) checkpoint has a counterpart for, although it is not a TAda
    branch: a temporal conv of R(2+1)D, the fast pathway and lateral connections of SlowFast. Loading a
    2D checkpoint keeps these at their initialisation (other checkpoints must provide them)."""
    module._tada_absent_in_2d = True
    return module


# -- per-frame 2D layers on (B, C, T, H, W) -----------------------------------------------------------
class FrameConv2d(nn.Conv2d):
    """``nn.Conv2d`` applied to every frame of a ``(B, C, T, H, W)`` tensor (a 4-D input is passed
    through as a plain Conv2d). The output is frame-major."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            return super().forward(x)
        b, t = x.shape[0], x.shape[2]
        return batch_to_frames(super().forward(frames_to_batch(x)), b, t)


class FrameBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` on the frames of a ``(B, C, T, H, W)`` tensor: statistics over
    ``(B*T, H, W)`` are those of a BatchNorm3d over ``(B, T, H, W)``. The output is frame-major."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            return super().forward(x)
        b, t = x.shape[0], x.shape[2]
        return batch_to_frames(super().forward(frames_to_batch(x)), b, t)


class FrameMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` on every frame of a ``(B, C, T, H, W)`` tensor (the ``[1, 3, 3]`` stem pool of
    SlowFast / SlowOnly). The output is frame-major."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            return super().forward(x)
        b, t = x.shape[0], x.shape[2]
        return batch_to_frames(super().forward(frames_to_batch(x)), b, t)


def conv_then_tpool(conv: nn.Module, agg: TemporalAggregation, x: Tensor, *, channels_last: bool = False) -> Tensor:
    """``agg(conv(x))`` for ``x`` ``(B, C, T, H, W)``. A ``cout`` :class:`TAdaConv2d` hands its per-frame
    affine over (``split=True``) where T-Pool applies it inside its own pass
    (:meth:`TemporalAggregation.takes_affine`). ``channels_last=True``: T-Pool runs on the
    ``(B, T, H, W, C)`` view of the conv output (LayerNorms over the last dim) and returns that layout."""
    if isinstance(conv, TAdaConv2d) and agg.takes_affine(x, channels_last=channels_last):
        y, scale, shift = conv(x, split=True)
    else:
        y, scale, shift = conv(x), None, None
    if not channels_last:
        return agg(y, scale, shift)
    scale, shift = (None if t is None else t.permute(0, 2, 3, 4, 1) for t in (scale, shift))
    return agg.forward_channels_last(channels_last_view(y), scale, shift)


def channels_last_view(x: Tensor) -> Tensor:
    """``(B, C, T, H, W) -> (B, T, H, W, C)``: a view when the memory is already channels-last (always
    on CPU / CUDA for channels-last conv inputs), else one copy."""
    x = x.permute(0, 2, 3, 4, 1)
    return x if x.is_contiguous() else x.contiguous()


def aggregate_frame_major(agg: TemporalAggregation, y: Tensor, frames: int, *, relu: bool = False) -> Tensor:
    """``agg(y)`` for ``y`` given as frame-major ``(B*T, C, H, W)``; returns ``(B*T, C, H, W)``
    (``relu=True``: ``relu(agg(y))``, in the same pass where the native inference kernel runs).

    Equal to ``frames_to_batch(agg(batch_to_frames(y, B, T)))`` without any layout copy: the temporal
    pool runs on a ``(B, 1, T, C, H*W)`` view (pooling dim 2, which is T there) and the norms run on
    ``(B*T, C, 1, H, W)``, over which a BatchNorm3d has the statistics of one over ``(B, C, T, H, W)``
    and a channel LayerNorm is unchanged.
    """
    n, c, h, w = y.shape
    if n % frames:
        raise ValueError(f"batch of {n} frames is not a multiple of T={frames}")
    if agg.fuses(y):  # one autograd node that keeps only y for backward
        out = fused_tpool(agg, y, None, None, channels_last=False, frames=frames)
    else:
        out = frozen_tpool_frames(agg, y, frames, relu)  # frozen BatchNorms at inference: one native pass
        if out is not None:
            return out
        out = _aggregate_composition(agg, y, frames)
    return torch.relu(out) if relu else out


def _aggregate_composition(agg: TemporalAggregation, y: Tensor, frames: int) -> Tensor:
    n, c, h, w = y.shape
    pooled = temporal_pool(y.reshape(n // frames, 1, frames, c, h * w), agg.pool).reshape(n, c, 1, h, w)
    y5 = y.unsqueeze(2)
    frozen = agg.frozen_affines(y5)
    if frozen is not None:  # inference with frozen BatchNorms: two passes instead of two norms and a sum
        return frozen_tpool(y5, pooled, frozen).squeeze(2)
    if agg.shortcut == "separate":
        z = agg.norm1(y5) + agg.norm2(pooled)
    elif agg.shortcut == "shared":
        z = agg.norm1(y5 + pooled)
    else:
        z = agg.norm1(pooled)
    return z.squeeze(2)


class FrameAggregation(TemporalAggregation):
    """T-Pool (:class:`~tada.nn.TemporalAggregation`, same parameters) computed on the frame-major
    layout (:func:`aggregate_frame_major`): no layout copy for a frame-major input."""

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() != 5 or y.shape[1] != self.channels:
            return super().forward(y)  # its error message
        b, t = y.shape[0], y.shape[2]
        return batch_to_frames(aggregate_frame_major(self, frames_to_batch(y), t), b, t)


# -- running a chain of layers on the cheapest layout -----------------------------------------------------
_PER_FRAME = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)
_ELEMENTWISE = (nn.ReLU, nn.Identity, nn.GELU, nn.SiLU)


def run_layers(layers: Sequence[Optional[nn.Module]], x: Tensor, batch: int, frames: int) -> Tensor:
    """Apply ``layers`` in order to ``x`` (``(B, C, T, H, W)`` or its frame batch ``(B*T, C, H, W)``).

    2D layers (``nn.Conv2d``, ``nn.BatchNorm2d``, 2D pools, and :class:`FrameAggregation`) run on the
    frame batch, anything else on ``(B, C, T, H, W)``, activations on whichever the tensor is; the
    switches are free views of frame-major memory. The result is in the layout of the last layer (see
    :func:`as_video`). Running the 2D layers on their own 4-D outputs (not on 5-D views of them) also
    keeps in-place activations off views, which autograd would otherwise copy for in backward.
    ``nn.Sequential`` layers are unrolled; ``None`` entries are skipped.
    """
    for m in layers:
        if m is None:
            continue
        if isinstance(m, nn.Sequential):
            x = run_layers(list(m), x, batch, frames)
        elif isinstance(m, FrameAggregation):
            x = aggregate_frame_major(m, x if x.dim() == 4 else frames_to_batch(x), frames)
        elif isinstance(m, _PER_FRAME):
            x = m(x if x.dim() == 4 else frames_to_batch(x))
        elif isinstance(m, _ELEMENTWISE):
            x = m(x)
        else:
            x = m(as_video(x, batch, frames))
    return x


def as_video(x: Tensor, batch: int, frames: int) -> Tensor:
    """A frame batch ``(B*T, C, H, W)`` as ``(B, C, T, H, W)`` (a view); a 5-D tensor as it is."""
    return x if x.dim() == 5 else batch_to_frames(x, batch, frames)


class Conv2plus1d(nn.Module):
    """``spatial -> norm -> act -> temporal``: the (2+1)D factorisation of R(2+1)D, spatial first.

    The three parts are built by the factories given to :func:`conv2plus1d`; ``norm`` and ``temporal``
    have no 2D counterpart (:func:`mark_absent_in_2d`) unless the temporal conv is a TAdaConv (whose
    routing is new by design anyway).
    """

    def __init__(self, spatial: nn.Module, norm: nn.Module, act: nn.Module, temporal: nn.Module):
        super().__init__()
        self.spatial, self.norm, self.act, self.temporal = spatial, norm, act, temporal

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[2]
        return as_video(run_layers((self.spatial, self.norm, self.act, self.temporal), x, b, t), b, t)


# -- factories ----------------------------------------------------------------------------------------
def _triple(k: _Int3) -> Tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)


def conv2d(kernel_size: int = 3) -> ConvFn:
    """A per-frame ``kernel_size`` x ``kernel_size`` conv (no bias, "same" padding)."""

    def make(cin: int, cout: int, stride: int = 1) -> nn.Module:
        return FrameConv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)

    return make


def conv3d(kernel_size: _Int3 = 3) -> ConvFn:
    """An ``nn.Conv3d`` of kernel ``(kt, kh, kw)``, stride ``(1, s, s)``, "same" padding, no bias."""
    k = _triple(kernel_size)

    def make(cin: int, cout: int, stride: int = 1) -> nn.Module:
        return nn.Conv3d(cin, cout, k, (1, stride, stride), tuple(x // 2 for x in k), bias=False)

    return make


def routing_kwargs_for(routing: str, channels: int, user: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Routing arguments for one TAdaConv of ``channels`` inputs.

    V1 takes the user's arguments as they are (RouteFuncMLP defaults: r=4, kernels (3, 3), global
    context, non-linear). V2 (RouteFuncAttn, r=2 by default) needs a ``head_dim`` dividing the reduced
    width, which varies across stages: unless given, it is ``gcd(channels // r, 16)``.
    """
    kw = dict(user or {})
    if routing == "v2" and "head_dim" not in kw:
        r = kw.get("reduction", 2)
        if isinstance(r, int) and not isinstance(r, bool) and r >= 1 and channels // r >= 1:
            kw["head_dim"] = math.gcd(channels // r, 16)
    return kw


def tada_conv2d(kernel_size: int = 3, *, cal_dim: str = "cin", routing: str = "v1",
                routing_kwargs: Optional[Mapping[str, Any]] = None, impl: str = "auto",
                cal_fraction: float = 1.0) -> ConvFn:
    """A :class:`~tada.nn.TAdaConv2d` (no bias, "same" padding; V1 routing r=4 on its input by default;
    ``routing`` may be any name of :func:`tada.nn.routing_names`; ``cal_fraction``: the share of
    calibrated channels)."""

    def make(cin: int, cout: int, stride: int = 1) -> nn.Module:
        return TAdaConv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False, cal_dim=cal_dim,
                          routing=routing, routing_kwargs=routing_kwargs_for(routing, cin, routing_kwargs),
                          impl=impl, cal_fraction=cal_fraction)

    return make


def tada_conv3d(kernel_size: _Int3 = 3, *, cal_dim: str = "cin", routing: str = "v1",
                routing_kwargs: Optional[Mapping[str, Any]] = None, impl: str = "auto") -> ConvFn:
    """A ``tada.nn.TAdaConv3d`` (one calibration per output frame for all ``kt`` taps; weight in the
    ``nn.Conv3d`` layout), stride ``(1, s, s)``, "same" padding, no bias."""
    k = _triple(kernel_size)

    def make(cin: int, cout: int, stride: int = 1) -> nn.Module:
        from ..nn import TAdaConv3d  # noqa: PLC0415  (built on demand)

        return TAdaConv3d(cin, cout, k, (1, stride, stride), tuple(x // 2 for x in k), bias=False, cal_dim=cal_dim,
                          routing=routing, routing_kwargs=routing_kwargs_for(routing, cin, routing_kwargs),
                          impl=impl)

    return make


def batch_norm(channels: int) -> nn.Module:
    """The default norm: per-frame BatchNorm2d (BatchNorm3d statistics, frame-major output)."""
    return FrameBatchNorm2d(channels)


def t_pool(norm: str = "bn", pool: str = "avg", shortcut: str = "separate") -> NormFn:
    """T-Pool aggregation factory (paper Eq. 8) on the frame-major layout."""
    return partial(FrameAggregation, norm=norm, pool=pool, shortcut=shortcut)


def conv2plus1d(spatial: ConvFn, temporal: ConvFn, norm: NormFn = batch_norm,
                act: Callable[[], nn.Module] = partial(nn.ReLU, inplace=True),
                temporal_is_new: bool = True) -> ConvFn:
    """A (2+1)D conv factory: ``spatial(cin, cout, stride)`` -> ``norm`` -> ``act`` -> ``temporal(cout, cout)``.

    ``temporal_is_new``: the norm and the temporal conv have no 2D counterpart (true for R(2+1)D).
    """

    def make(cin: int, cout: int, stride: int = 1) -> nn.Module:
        n, t = norm(cout), temporal(cout, cout, 1)
        if temporal_is_new:
            mark_absent_in_2d(n)
            mark_absent_in_2d(t)
        return Conv2plus1d(spatial(cin, cout, stride), n, act(), t)

    return make


# -- the block ----------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet bottleneck on ``(B, C, T, H, W)`` with its sub-layers given as factories.

    ``conv1 (conv_a) -> bn1 -> act -> conv2 (conv_b, spatial stride) -> bn2 | agg -> act -> conv3 (conv_c)
    -> bn3``, ``+ downsample(x)`` (``shortcut`` conv + norm, when the stride or width changes), act.
    Attribute names are torchvision's, so a torchvision ``resnet50`` block's keys are this block's.

    Args:
        in_channels, out_channels: block widths; the bottleneck width is ``out_channels // bottleneck_ratio``.
        stride: spatial stride of ``conv_b`` and of the shortcut conv.
        conv_a, conv_b, conv_c, shortcut: conv factories (:data:`ConvFn`); defaults 1x1, 3x3, 1x1, 1x1
            per-frame convs (the 2D ResNet).
        norm: norm factory for every norm (:data:`NormFn`, default per-frame BatchNorm).
        aggregation: if given, a factory whose layer replaces ``bn2`` (T-Pool), stored as ``agg``.
        act: activation factory (``nn.ReLU(inplace=True)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        bottleneck_ratio: int = 4,
        conv_a: ConvFn = conv2d(1),
        conv_b: ConvFn = conv2d(3),
        conv_c: ConvFn = conv2d(1),
        shortcut: ConvFn = conv2d(1),
        norm: NormFn = batch_norm,
        aggregation: Optional[NormFn] = None,
        act: Callable[[], nn.Module] = partial(nn.ReLU, inplace=True),
    ):
        super().__init__()
        if out_channels % bottleneck_ratio:
            raise ValueError(f"out_channels={out_channels} is not divisible by bottleneck_ratio={bottleneck_ratio}")
        mid = out_channels // bottleneck_ratio
        self.conv1 = conv_a(in_channels, mid, 1)
        self.bn1 = norm(mid)
        self.conv2 = conv_b(mid, mid, stride)
        if aggregation is not None:
            self.bn2 = None
            self.agg = aggregation(mid)
        else:
            self.bn2 = norm(mid)
            self.agg = None
        self.conv3 = conv_c(mid, out_channels, 1)
        self.bn3 = norm(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(shortcut(in_channels, out_channels, stride), norm(out_channels))
        self.relu = act()

    @property
    def tada(self) -> bool:
        return isinstance(self.conv2, TAdaConv2d)

    @property
    def aggregation(self) -> bool:
        return self.agg is not None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, T, H, W)`` -> ``(B, C_out, T, H', W')``; per-frame parts run on the frame batch
        (:func:`run_layers`), so a 2D block computes on ``(B*T, C, H, W)`` throughout."""
        b, t = x.shape[0], x.shape[2]
        fuse = self._fuses_at_inference()
        out = self._head_after_bn_relu(x, b, t) if fuse and isinstance(self.conv2, TAdaConv2d) else None
        if out is None:
            out = run_layers((self.conv1, self.bn1, self.relu, self.conv2), x, b, t)
        if fuse and isinstance(self.agg, FrameAggregation) and not has_forward_hooks(self.agg):
            # T-Pool and the ReLU after it: one native pass at inference with frozen BatchNorms
            out = aggregate_frame_major(self.agg, out if out.dim() == 4 else frames_to_batch(out), t, relu=True)
            out = run_layers((self.conv3, self.bn3), out, b, t)
        else:
            out = run_layers((self.agg if self.agg is not None else self.bn2, self.relu, self.conv3, self.bn3),
                             out, b, t)
        identity = x if self.downsample is None else run_layers((self.downsample,), x, b, t)
        if out.dim() == 4 and identity.dim() == 5:
            identity = frames_to_batch(identity)  # a free view when x is frame-major
        elif out.dim() == 5:
            identity = as_video(identity, b, t)
        return as_video(self.relu(out + identity), b, t)

    def _fuses_at_inference(self) -> bool:
        # eval mode without autograd, a plain ReLU: TAdaConv2d.forward_after_bn_relu and
        # aggregate_frame_major decide the rest (the norms' state, dtype, layout, native kernels)
        return (not self.training and not torch.is_grad_enabled() and type(self.relu) is nn.ReLU
                and not has_forward_hooks(self.relu))

    def _head_after_bn_relu(self, x: Tensor, b: int, t: int) -> Optional[Tensor]:
        """``conv2(relu(bn1(conv1(x))))`` as a frame batch with the norm, ReLU and calibration fused
        (:meth:`~tada.nn.TAdaConv2d.forward_after_bn_relu`), or None where that does not apply."""
        z = run_layers((self.conv1,), x, b, t)
        out = self.conv2.forward_after_bn_relu(z if z.dim() == 4 else frames_to_batch(z), self.bn1, b)
        if out is None:  # conv1 ran already: the rest of the head one layer at a time
            out = run_layers((self.bn1, self.relu, self.conv2), z, b, t)
        return out


BlockFn = Callable[[int, int, int], nn.Module]
"""``block(in_channels, out_channels, stride) -> block``, e.g. ``partial(Bottleneck, conv_b=...)``."""


def make_stage(in_channels: int, out_channels: int, depth: int, stride: int, block: BlockFn) -> nn.Sequential:
    """``depth`` blocks; the first one changes the width and strides."""
    return nn.Sequential(*[
        block(in_channels if j == 0 else out_channels, out_channels, stride if j == 0 else 1) for j in range(depth)
    ])


def inflate_conv_weight(w2d: Tensor, time_kernel: int) -> Tensor:
    """2D kernel ``(O, I, kh, kw)`` -> 3D ``(O, I, kt, kh, kw)``: repeated over the ``kt`` taps and divided
    by ``kt`` (paper Appendix D), so on a clip of identical frames (away from the temporal padding) the
    3D conv computes the 2D one."""
    if w2d.dim() != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(w2d.shape)}")
    return w2d.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel


__all__ += ["BlockFn", "inflate_conv_weight"]
