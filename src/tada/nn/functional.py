"""The TAdaConv operator, functional form.

A TAdaConv is a 2D convolution applied frame by frame whose kernel is recalibrated per frame:
``W_t = alpha_t * W`` (SPEC §1). Three implementations:

* ``fast``: rescale the *features* instead of the kernel and run one ordinary convolution on the
  ``(B*T)`` batch. Exact for ``cin`` (``conv(x, a*W) == conv(a*x, W)``), ``cout``
  (``conv(x, a*W) == a*conv(x, W)``), ``cin_cout`` (both) and bias calibration. Costs one
  elementwise multiply on top of the convolution, keeps no per-frame kernels for backward, and has
  no batch size baked into the graph. For ``cin`` with gradients it runs as :class:`_ScaledInputConv`,
  which keeps the scaled input for the convolution's weight gradient, as a convolution keeps its
  input. Inside :func:`recompute_scaled_input` it keeps only ``x``, ``alpha`` and the weight (what
  the layer before keeps alive anyway) and recomputes the scaled input in backward: one input-sized
  tensor less per layer, for one more pass over it.
* ``frames``: the ``fast`` forward, and a backward that runs each frame's convolution gradient
  against its own calibrated kernel ``alpha_t * W`` and the *unscaled* input: ``grad x`` comes out
  directly, and ``grad W`` and ``grad alpha`` are reductions of the per-frame kernel gradients,
  so backward makes no pass over the input for ``alpha`` at all. Differs from ``fast`` only where
  ``alpha`` scales input channels (``cin``, ``cin_cout``), and only in backward. On the CPU it is
  the cheaper one for strided convolutions on large maps (the batched input gradient of a stride-2
  convolution is slow there; :data:`AUTO_FRAMES_RATIO`).
* ``grouped``: materialise one kernel per (b, t) and run a single grouped convolution with
  ``groups = groups*B*T``: the method of the paper's release, kept as the reference and for
  ``k2`` (kernel-tap calibration), which has no feature-scaling form.

Tensors are ``(B, C, T, H, W)``. Internally the frames are folded into the batch as
``x.transpose(1, 2).reshape(B*T, C, H, W)``; when ``x`` is stored frame-major (its memory laid out
as ``(B, T, C, H, W)``, as the output of this function is) that fold is a free view, so chains of
TAdaConvs never copy for layout.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

__all__ = ["tada_conv2d", "recompute_scaled_input", "auto_impl", "AUTO_GROUPED_RATIO", "AUTO_FRAMES_RATIO",
           "CAL_DIMS", "IMPLS", "frames_to_batch", "batch_to_frames"]

CAL_DIMS = ("cin", "cout", "cin_cout", "k2")
IMPLS = ("auto", "fast", "frames", "grouped")

_IntOr2 = Union[int, Tuple[int, int]]
Alpha = Union[Tensor, Sequence[Tensor]]


def frames_to_batch(x: Tensor) -> Tensor:
    """``(B, C, T, H, W) -> (B*T, C, H, W)``; a view when ``x`` is stored frame-major."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(y: Tensor, batch: int, frames: int) -> Tensor:
    """``(B*T, C, H, W) -> (B, C, T, H, W)`` as a view (the result is stored frame-major)."""
    _, c, h, w = y.shape
    return y.reshape(batch, frames, c, h, w).transpose(1, 2)


def _per_frame(a: Tensor) -> Tensor:
    """Calibration ``(B, n, T) -> (B*T, n)``, row ``b*T + t`` matching :func:`frames_to_batch`."""
    b, n, t = a.shape
    return a.transpose(1, 2).reshape(b * t, n)


def _as_calibration(a: object, name: str, batch: int, channels: int, frames: int, what: str) -> Tensor:
    """Validate one calibration tensor and return it as ``(B, n, T)``."""
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, {what}, T), got {type(a).__name__}")
    if a.dim() == 5 and a.shape[-2:] == (1, 1):
        a = a.flatten(2)  # (B, n, T, 1, 1) -> (B, n, T)
    if a.dim() != 3:
        raise ValueError(
            f"{name} must have shape (B, {what}, T) (optionally with trailing (1, 1)), "
            f"got shape {tuple(a.shape)}"
        )
    expected = (batch, channels, frames)
    if tuple(a.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)} but x and weight need (B, {what}, T) = {expected}"
        )
    return a


def _check(
    x: Tensor,
    weight: Tensor,
    alpha: Alpha,
    bias: Optional[Tensor],
    groups: int,
    cal_dim: str,
    bias_alpha: Optional[Tensor],
    impl: str,
):
    """Validate the arguments of :func:`tada_conv2d`; return (alpha_in, alpha_out, alpha_k2, beta)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not isinstance(cal_dim, str) or cal_dim not in CAL_DIMS:
        raise ValueError(f"unknown cal_dim {cal_dim!r}; expected one of {CAL_DIMS}")
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl in ("fast", "frames") and cal_dim == "k2":
        raise ValueError(
            "cal_dim='k2' scales kernel taps, which has no exact feature-scaling form: "
            "use impl='grouped' (or 'auto')"
        )
    if x.dim() != 5:
        raise ValueError(f"x must have shape (B, C_in, T, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"weight must be a Conv2d weight (C_out, C_in/groups, kh, kw), got shape {tuple(weight.shape)}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    b, c_in, t = x.shape[:3]
    c_out, c_in_g, kh, kw = weight.shape
    if c_in_g * groups != c_in:
        raise ValueError(
            f"x has {c_in} input channels but weight {tuple(weight.shape)} with groups={groups} "
            f"expects {c_in_g * groups}"
        )
    if c_out % groups != 0:
        raise ValueError(f"C_out={c_out} is not divisible by groups={groups}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (c_out,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({c_out},), got {shape}")

    a_in = a_out = a_k2 = None
    if cal_dim == "cin":
        a_in = _as_calibration(alpha, "alpha", b, c_in, t, "C_in")
    elif cal_dim == "cout":
        a_out = _as_calibration(alpha, "alpha", b, c_out, t, "C_out")
    elif cal_dim == "k2":
        a_k2 = _as_calibration(alpha, "alpha", b, kh * kw, t, "kh*kw")
    else:  # cin_cout
        if isinstance(alpha, Tensor) or not isinstance(alpha, (tuple, list)) or len(alpha) != 2:
            raise TypeError("cal_dim='cin_cout' takes alpha as a pair (alpha_in, alpha_out)")
        a_in = _as_calibration(alpha[0], "alpha[0] (alpha_in)", b, c_in, t, "C_in")
        a_out = _as_calibration(alpha[1], "alpha[1] (alpha_out)", b, c_out, t, "C_out")

    beta = None
    if bias_alpha is not None:
        if bias is None:
            raise ValueError("bias_alpha calibrates the bias, but bias is None")
        beta = _as_calibration(bias_alpha, "bias_alpha", b, c_out, t, "C_out")
    return a_in, a_out, a_k2, beta


def tada_conv2d(
    x: Tensor,
    weight: Tensor,
    alpha: Alpha,
    bias: Optional[Tensor] = None,
    *,
    stride: _IntOr2 = 1,
    padding: Union[_IntOr2, str] = 0,
    dilation: _IntOr2 = 1,
    groups: int = 1,
    cal_dim: str = "cin",
    bias_alpha: Optional[Tensor] = None,
    impl: str = "auto",
    split: bool = False,
):
    """Temporally-adaptive 2D convolution, ``y_t = conv(x_t, alpha_t * W) + beta_t * bias``.

    Args:
        x: ``(B, C_in, T, H, W)``.
        weight: a Conv2d weight ``(C_out, C_in/groups, kh, kw)`` (the base kernel ``W_b``).
        alpha: the calibration, ``(B, C_cal, T)`` (a trailing ``(1, 1)`` is accepted):
            ``C_in`` values for ``cal_dim="cin"``, ``C_out`` for ``"cout"``, ``kh*kw`` for ``"k2"``,
            and a pair ``(alpha_in, alpha_out)`` for ``"cin_cout"``.
        bias: ``(C_out,)`` or None. Not scaled by ``alpha``.
        bias_alpha: ``(B, C_out, T)`` bias calibration (TAdaConvV2); needs ``bias``.
        impl: ``"fast"`` (feature scaling), ``"frames"`` (feature scaling forward, per-frame kernel
            gradients backward), ``"grouped"`` (per-frame kernels) or ``"auto"`` (per shape, see
            :func:`auto_impl`).

        split: return ``(y, scale, shift)`` with the result ``y * scale + shift``, for the layer after
            it to apply inside its own pass (:class:`~tada.nn.TemporalAggregation`). With
            ``cal_dim="cout"`` on the fast path, ``y`` is the plain convolution of every frame, ``scale``
            the calibration ``(B, C_out, T, 1, 1)`` and ``shift`` the (calibrated) bias
            ``(1 or B, C_out, 1 or T, 1, 1)`` or None; otherwise ``(result, None, None)``.

    Returns:
        ``(B, C_out, T, H', W')``, stored frame-major (a triple with ``split=True``).
    """
    a_in, a_out, a_k2, beta = _check(x, weight, alpha, bias, groups, cal_dim, bias_alpha, impl)
    if impl == "auto":
        impl = auto_impl(cal_dim, x.shape, weight.shape, groups, x.device.type, stride)
    if split and cal_dim == "cout" and impl in ("fast", "frames"):
        return _fast_split(x, weight, bias, a_out, beta, stride, padding, dilation, groups)
    if impl in ("fast", "frames"):
        y = _fast(x, weight, bias, a_in, a_out, beta, stride, padding, dilation, groups, impl == "frames")
    else:
        y = _grouped(x, weight, bias, a_in, a_out, a_k2, beta, stride, padding, dilation, groups)
    return (y, None, None) if split else y


def _fast_split(x, weight, bias, a_out, beta, stride, padding, dilation, groups):
    """The fast ``cout`` form as ``(plain conv, scale, shift)``."""
    b, _, t = x.shape[:3]
    y = batch_to_frames(F.conv2d(frames_to_batch(x), weight, None, stride, padding, dilation, groups), b, t)
    # scale and shift stored (B, T, C), as y is (frame-major or channels-last): with C innermost in both,
    # the elementwise passes over y vectorise (4x faster than with a (B, C, T)-ordered scale)
    as5 = lambda v: batch_to_frames(v[:, :, None, None], b, t)  # noqa: E731  (B*T, C) -> (B, C, T, 1, 1)
    shift = None
    if bias is not None:
        shift = bias[None, :, None, None, None] if beta is None else as5(bias * _per_frame(beta))
    return y, as5(_per_frame(a_out)), shift


_RECOMPUTE = threading.local()


@contextlib.contextmanager
def recompute_scaled_input(enabled: bool = True):
    """Inside this block (on this thread), the ``fast`` ``cin`` TAdaConvs of a training forward keep
    only their input, ``alpha`` and the weight for backward, and recompute the scaled input
    ``x * alpha`` there, as activation checkpointing would: one input-sized tensor less per layer, for
    one more elementwise pass over it in backward (on a 2-core CPU, fwd+bwd 1.06 -> 1.12x a plain
    convolution at 64 channels on 56², 1.10 -> 1.16x at 128 channels, stride 2). Outside it they keep
    the scaled input, as a convolution keeps its input. Values and gradients are the same either way.
    ``enabled=False`` switches it off inside an enclosing block.
    """
    prev = getattr(_RECOMPUTE, "on", False)
    _RECOMPUTE.on = bool(enabled)
    try:
        yield
    finally:
        _RECOMPUTE.on = prev


class _ScaledInputConv(torch.autograd.Function):
    """``conv2d(x * a, W, bias)`` on the frame batch (``x`` ``(N, C, H, W)``, ``a`` ``(N, C)``).

    Saves ``x``, ``a``, ``W`` and the scaled input ``xa`` (``recompute``: not ``xa``, recomputed in
    backward). Backward, batched (``per_frame=False``): the convolution's gradients at ``xa``, then
    ``grad x = a * grad(xa)`` (in place) and ``grad a = sum_hw x * grad(xa)``, in one pass where the
    native kernel applies (:func:`_native_scale_applies`). Per frame (``per_frame=True``, never needs ``xa``): see
    :func:`_per_frame_backward`.
    """

    @staticmethod
    def forward(ctx, x, a, weight, bias, conv, per_frame, recompute=False):
        xa = x * a[:, :, None, None]
        y = F.conv2d(xa, weight, bias, *conv)
        keep = not (per_frame or recompute)
        ctx.save_for_backward(x, a, weight, *((xa,) if keep else ()))
        ctx.conv, ctx.has_bias, ctx.per_frame = conv, bias is not None, per_frame
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, a, weight, *kept = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_a, need_w, need_b = ctx.needs_input_grad[:4]
        dtype = gy.dtype  # under autocast the convolution ran in gy's dtype
        if ctx.per_frame:
            gx, ga, gw, gb = _per_frame_backward(gy, x, a, weight, ctx.conv, need_x, need_a, need_w,
                                                 need_b and ctx.has_bias)
            return gx, ga, gw, gb, None, None, None
        xa = (kept[0] if kept else x * a[:, :, None, None]).to(dtype)
        gxa, gw, gb = torch.ops.aten.convolution_backward(
            gy.contiguous(), xa, weight.to(dtype), [weight.shape[0]] if ctx.has_bias else None, stride, padding,
            dilation, False, [0, 0], groups, [need_x or need_a, need_w, need_b and ctx.has_bias],
        )
        del xa
        gx = ga = None
        if need_a and need_x and _native_scale_applies(gxa, x, a):
            # one pass: grad a = sum_hw grad(xa) * x, and grad(xa) scaled by a in place into grad x
            ga = torch.ops.tada_native.cin_scale_backward(gxa, x, a.contiguous())
            gx = gxa
        else:
            if need_a:
                # one dot product per (frame, channel); 2-4x faster than a bmm of (1, k) x (k, 1) rows at
                # 28²-112² on the CPU
                ga = torch.linalg.vecdot(gxa.flatten(2), x.to(gxa.dtype).flatten(2)).to(a.dtype)
            if need_x:
                gx = gxa.mul_(a[:, :, None, None].to(gxa.dtype)).to(x.dtype)  # gxa is ours: in place
        gw = gw.to(weight.dtype) if need_w else None
        return gx, ga, gw, gb if need_b and ctx.has_bias else None, None, None, None


def _native_scale_applies(g: Tensor, x: Tensor, a: Tensor) -> bool:
    """Whether the native one-pass kernel (``csrc/scale.cpp``) takes this backward: plain CPU tensors (not
    a compiler's fake or functional ones: the kernel has no meta form), float32 or float64 throughout,
    ``g`` and ``x`` both contiguous or both channels-last."""
    if not (type(g) is Tensor and type(x) is Tensor and g.device.type == "cpu"
            and g.dtype in (torch.float32, torch.float64) and x.dtype == g.dtype and a.dtype == g.dtype):
        return False
    if _exporting():
        return False
    both = lambda fmt: g.is_contiguous(memory_format=fmt) and x.is_contiguous(memory_format=fmt)  # noqa: E731
    if not (both(torch.contiguous_format) or both(torch.channels_last)):
        return False
    from . import _native

    return _native.available()


def _input_scale_per_weight(a: Tensor, groups: int, c_out: int) -> Tensor:
    """``a`` ``(N, C_in)`` laid out like a weight's ``(C_out, C_in/g)`` entries, ``(N, C_out, C_in/g)``:
    the input channel of ``weight[o, j]`` is ``(o // (C_out/g)) * (C_in/g) + j``."""
    n, c_in = a.shape
    c_in_g = c_in // groups
    return a.reshape(n, groups, 1, c_in_g).expand(n, groups, c_out // groups, c_in_g).reshape(n, c_out, c_in_g)


def _per_frame_backward(gy, x, a, weight, conv, need_x, need_a, need_w, need_b):
    """Backward of ``conv2d(x * a, W)`` frame by frame, as the convolution of each frame ``n`` with its
    own kernel ``K_n = a_n * W`` (exact: ``conv(x_n * a_n, W) == conv(x_n, K_n)``).

    Each frame's ``convolution_backward`` against the unscaled ``x_n`` gives ``grad x_n`` directly and
    the kernel gradient ``G_n``; then ``grad W = sum_n a_n * G_n`` and ``grad a_n = sum_{o,taps} W * G_n``
    (summed over the output channels of each input channel's group). Keeps ``B*T`` kernels and kernel
    gradients (small where this path is chosen: a 3x3 kernel against a large map).
    """
    stride, padding, dilation, groups = conv
    dtype = gy.dtype
    n = x.shape[0]
    c_out, c_in_g, kh, kw = weight.shape
    a_k = _input_scale_per_weight(a.to(dtype), groups, c_out)[..., None, None]
    w = weight.to(dtype)
    kernels = w.unsqueeze(0) * a_k
    gy = gy.contiguous()
    xs = x.to(dtype)
    want_g = need_w or need_a
    gxs, gks = [], []
    for i in range(n):
        gxi, gki, _ = torch.ops.aten.convolution_backward(
            gy[i:i + 1], xs[i:i + 1], kernels[i], None, stride, padding, dilation, False, [0, 0], groups,
            [need_x, want_g, False])
        if need_x:
            gxs.append(gxi)
        if want_g:
            gks.append(gki)
    gx = torch.cat(gxs).to(x.dtype) if need_x else None
    gw = ga = None
    if want_g:
        gk = torch.stack(gks)  # (N, C_out, C_in/g, kh, kw)
        if need_w:
            gw = (gk * a_k).sum(0).to(weight.dtype)
        if need_a:
            ga = (gk * w.unsqueeze(0)).sum((3, 4)).reshape(n, groups, c_out // groups, c_in_g).sum(2)
            ga = ga.reshape(n, groups * c_in_g).to(a.dtype)
    gb = gy.sum((0, 2, 3)) if need_b else None
    return gx, ga, gw, gb


def _scaled_input_conv(xf, a, weight, bias, stride, padding, dilation, groups, per_frame=False):
    """``conv2d(xf * a, ...)``: through :class:`_ScaledInputConv` when a gradient is needed (and the
    padding is numeric), as plain ops otherwise (inference, export). ``per_frame`` picks its
    per-frame backward."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (xf, a, weight, bias))
    if needs_grad and not isinstance(padding, str) and not torch.jit.is_tracing():
        conv = (tuple(_pair(stride)), tuple(_pair(padding)), tuple(_pair(dilation)), groups)
        return _ScaledInputConv.apply(xf, a, weight, bias, conv, bool(per_frame),
                                      getattr(_RECOMPUTE, "on", False))
    return F.conv2d(xf * a[:, :, None, None], weight, bias, stride, padding, dilation, groups)


#: Where ``auto`` takes the grouped form, per device type: ``{device: {"dense": r, "depthwise": r}}``
#: means grouped when the input frame has at least ``r`` pixels per per-frame kernel weight of one
#: output channel group (``H*W >= r * (C_out/groups) * kh * kw``), i.e. where materialising the B*T
#: kernels could cost less than the fast path's extra pass over the input. Empty: on the one device
#: measured (a 2-core Xeon CPU) the grouped form lost at model level even on the shapes where the
#: operator alone favoured it (TAda2D-R50, TAdaConvNeXtV2-T and TAdaFormer-B/16 training steps 1.22x,
#: 1.45x and 1.23x slower with it there; ``benchmarks/model_speed.py --fast``), so ``auto`` runs
#: ``fast``. An entry is added only with a measurement that shows the grouped form winning.
AUTO_GROUPED_RATIO: dict = {}


#: Where ``auto`` takes the ``frames`` form for an input-channel calibration, per device type:
#: ``{device: r}`` means ``frames`` for a strided convolution whose input frame has at least ``r``
#: pixels per kernel weight of one output channel group (``stride > 1`` and
#: ``H*W >= r * (C_out/groups) * kh * kw``). Measured on a 2-core Xeon CPU (``benchmarks/op_speed.py``):
#: at TAda2D-R50's 64-channel stride-2 layer on 112² (ratio 21.8) the batched input gradient of the
#: convolution takes 58 ms and the 16 per-frame ones 43 ms, and ``frames`` needs no pass over the input
#: for ``alpha``; at the 128-channel stride-2 layer on 56² (ratio 2.7) the two backward forms cost the
#: same, and below that the batched one wins.
AUTO_FRAMES_RATIO: dict = {"cpu": 8.0}


def auto_impl(cal_dim: str, x_shape, weight_shape, groups: int, device_type: str = "cpu",
              stride: _IntOr2 = 1) -> str:
    """The implementation ``impl="auto"`` runs for this shape: deterministic, from the shapes, the
    stride and the device type only.

    ``k2`` has only the grouped form. Otherwise ``grouped`` where :data:`AUTO_GROUPED_RATIO` says the
    kernels are small enough against the feature map on this device type; for an input-channel
    calibration (``cin``, ``cin_cout``), ``frames`` where :data:`AUTO_FRAMES_RATIO` says so (strided
    convolutions on large maps; its forward is the fast one, so inference and export are unchanged);
    else ``fast``. Always ``fast`` while tracing, compiling or exporting (the grouped form bakes ``B*T``
    into the graph as its group count; compiled, the fast path's scaling fuses into the neighbouring
    pass). Pass ``impl="fast"``, ``"frames"`` or ``"grouped"`` to override.
    """
    if cal_dim == "k2":
        return "grouped"
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _exporting():
        return "fast"
    c_out, c_in_g, kh, kw = weight_shape
    h, w = x_shape[-2], x_shape[-1]
    per_kernel = (c_out // groups) * kh * kw
    ratios = AUTO_GROUPED_RATIO.get(device_type)
    if ratios:
        ratio = ratios.get("depthwise" if c_in_g == 1 and groups > 1 else "dense")
        if ratio is not None and h * w >= ratio * per_kernel:
            return "grouped"
    frames_ratio = AUTO_FRAMES_RATIO.get(device_type)
    if (frames_ratio is not None and cal_dim in ("cin", "cin_cout") and max(_pair(stride)) > 1
            and h * w >= frames_ratio * per_kernel):
        return "frames"
    return "fast"


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def _fast(x, weight, bias, a_in, a_out, beta, stride, padding, dilation, groups, per_frame=False):
    b, _, t = x.shape[:3]
    xf = frames_to_batch(x)
    post = a_out is not None or beta is not None
    if a_in is not None:
        y = _scaled_input_conv(xf, _per_frame(a_in), weight, None if post else bias, stride, padding, dilation,
                               groups, per_frame)
    else:
        y = F.conv2d(xf, weight, None if post else bias, stride, padding, dilation, groups)
    if post:
        shift = None
        if bias is not None:
            shift = bias[None, :, None, None]
            if beta is not None:
                shift = shift * _per_frame(beta)[:, :, None, None]
        if a_out is None:
            y = y + shift
        elif shift is None:
            y = y * _per_frame(a_out)[:, :, None, None]
        else:
            y = torch.addcmul(shift, y, _per_frame(a_out)[:, :, None, None])
    return batch_to_frames(y, b, t)


def _grouped(x, weight, bias, a_in, a_out, a_k2, beta, stride, padding, dilation, groups):
    b, c_in, t, h, w = x.shape
    c_out, c_in_g, kh, kw = weight.shape
    n = b * t
    kernels = weight.unsqueeze(0)  # (1, C_out, C_in/g, kh, kw), broadcast to (B*T, ...)
    if a_in is not None:
        kernels = kernels * _input_scale_per_weight(_per_frame(a_in), groups, c_out)[..., None, None]
    if a_out is not None:
        kernels = kernels * _per_frame(a_out)[:, :, None, None, None]
    if a_k2 is not None:
        kernels = kernels * _per_frame(a_k2).reshape(n, 1, 1, kh, kw)
    kernels = kernels.expand(n, c_out, c_in_g, kh, kw).reshape(n * c_out, c_in_g, kh, kw)
    frame_bias = None
    if bias is not None:
        frame_bias = bias.expand(n, c_out)
        if beta is not None:
            frame_bias = frame_bias * _per_frame(beta)
        frame_bias = frame_bias.reshape(n * c_out)
    xg = frames_to_batch(x).reshape(1, n * c_in, h, w)
    y = F.conv2d(xg, kernels, frame_bias, stride, padding, dilation, groups * n)
    return batch_to_frames(y.reshape(n, c_out, y.shape[-2], y.shape[-1]), b, t)
