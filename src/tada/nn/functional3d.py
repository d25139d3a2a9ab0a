"""The TAdaConv3d operator, functional form: a Conv3d whose kernel is calibrated per *output* frame.

``y_t = conv3d(x, alpha_t * W)[t] + beta_t * bias`` for a Conv3d kernel ``W`` of shape
``(C_out, C_in/groups, kt, kh, kw)``; ``alpha_t`` belongs to output frame ``t`` and scales all ``kt``
temporal taps alike. Two implementations, equal up to rounding (tests/nn/test_tadaconv3d.py):

* ``fast``, never a per-frame kernel:

  - ``cout``: ``conv3d(x, alpha_t * W) == alpha_t * conv3d(x, W)`` per output frame, so one plain
    Conv3d, then a per-frame scale (and the per-frame calibrated bias).
  - ``cin``: ``y_t = sum_tau W_tau * (alpha_t . x_{s*t + d*tau - p})``: output frame ``t`` reads input
    frames ``s*t + d*tau - p`` (``tau < kt``; zero outside the clip), each scaled by ``alpha_t``. Those
    ``kt`` frames per output frame are gathered, scaled by ``alpha_t`` and folded into the channels,
    ``Z[b*T_out + t, c*kt + tau] = alpha[b, c, t] * x[b, c, s*t + d*tau - p]``, and
    ``y = conv2d(Z, W.reshape(C_out, C_in/g * kt, kh, kw))`` (a free view of ``W``; each group's
    channels stay contiguous, so ``groups`` carries over). One ordinary conv2d with the FLOPs of the
    Conv3d plus one pass to build ``Z`` (``kt * T_out / T`` times the input). For backward only
    ``x``, ``alpha`` and ``W`` are kept (:class:`_CinConv`): ``Z`` is rebuilt there, so autograd keeps
    what a Conv3d keeps; ``grad alpha`` is one batched dot product, ``grad x`` is summed tap by tap.
* ``grouped``: materialise one kernel per (b, t) and run one grouped Conv3d with
  ``groups = groups*B*T_out`` over each output frame's temporal window, as the paper's release does.
  Kept as the reference.

Temporal geometry follows Conv3d: ``T_out = (T + 2p - d*(kt-1) - 1) // s + 1``; zero padding only.
Outputs are ``(B, C_out, T_out, H', W')``: contiguous for ``cout`` (the Conv3d's own output), stored
frame-major for ``cin`` (like :func:`tada.nn.functional.tada_conv2d`'s).

:func:`output_frame_centres` / :func:`sample_output_frames` define how a calibration computed at the
input frame rate (a routing function's output) is brought to the output frame rate.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .functional import batch_to_frames

__all__ = [
    "tada_conv3d",
    "CAL_DIMS_3D",
    "IMPLS_3D",
    "output_frames",
    "output_frame_centres",
    "sample_output_frames",
]

CAL_DIMS_3D = ("cin", "cout")
IMPLS_3D = ("auto", "fast", "grouped")

_IntOr3 = Union[int, Sequence[int]]


def _triple(v, name: str, minimum: int) -> Tuple[int, int, int]:
    if isinstance(v, str):
        raise ValueError(f"{name} must be an int or a 3-tuple of ints (zero padding only), got {v!r}")
    if isinstance(v, int) and not isinstance(v, bool):
        vals = (v, v, v)
    else:
        vals = tuple(v) if isinstance(v, (tuple, list)) else None
    if (
        vals is None
        or len(vals) != 3
        or any(isinstance(i, bool) or not isinstance(i, int) or i < minimum for i in vals)
    ):
        raise ValueError(f"{name} must be an int or a 3-tuple of ints >= {minimum}, got {v!r}")
    return vals


def output_frames(frames: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Conv3d's temporal output length ``(T + 2p - d*(kt-1) - 1) // s + 1``."""
    return (frames + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_frame_centres(
    frames: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Tuple[Tensor, Tensor]:
    """Input frames at the temporal centre of each output frame's receptive field.

    Output frame ``t`` reads input frames ``s*t - p + d*tau`` for ``tau < kt``; its centre is
    ``c_t = s*t - p + d*(kt-1)/2``. Returns ``(lo, hi) = (floor(c_t), ceil(c_t))`` clamped to
    ``[0, T-1]`` (equal when ``d*(kt-1)`` is even, e.g. every odd ``kt``), each of length ``T_out``.
    """
    t_out = output_frames(frames, kernel, stride, padding, dilation)
    if t_out < 1:
        raise ValueError(
            f"{frames} frames are too few for temporal kernel {kernel}, padding {padding}, dilation {dilation}"
        )
    twice = 2 * (torch.arange(t_out) * stride - padding) + dilation * (kernel - 1)
    lo = torch.div(twice, 2, rounding_mode="floor").clamp(0, frames - 1)
    hi = torch.div(twice + 1, 2, rounding_mode="floor").clamp(0, frames - 1)
    return lo, hi


def sample_output_frames(
    calibration: Tensor, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Tensor:
    """Bring a ``(B, n, T)`` calibration at the input frame rate to the output frame rate ``T_out``.

    ``alpha_out[..., t]`` is the calibration at the centre ``c_t`` of output frame ``t``'s temporal
    receptive field (:func:`output_frame_centres`): the frame itself when ``c_t`` is a frame, the mean
    of the two neighbouring frames when it falls half-way (even ``d*(kt-1)``), clamped at the clip's
    ends. When ``T_out == T`` and every ``c_t == t`` (stride 1, "same" padding) it is returned as is.
    A calibration of ones stays exactly ones.
    """
    frames = calibration.shape[-1]
    lo, hi = output_frame_centres(frames, kernel, stride, padding, dilation)  # CPU index tensors
    same = torch.equal(lo, hi)  # compared on the CPU (works when the calibration is on the meta device)
    if same and lo.numel() == frames and torch.equal(lo, torch.arange(frames)):
        return calibration
    lo, hi = lo.to(calibration.device), hi.to(calibration.device)
    if same:
        return calibration.index_select(-1, lo)
    return 0.5 * (calibration.index_select(-1, lo) + calibration.index_select(-1, hi))


def _as_calibration(a, name: str, shape: Tuple[int, int, int], what: str) -> Tensor:
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, {what}, T_out), got {type(a).__name__}")
    if a.dim() == 5 and a.shape[-2:] == (1, 1):
        a = a.flatten(2)  # (B, n, T_out, 1, 1) -> (B, n, T_out)
    if a.dim() != 3:
        raise ValueError(
            f"{name} must have shape (B, {what}, T_out) (optionally with trailing (1, 1)), got shape {tuple(a.shape)}"
        )
    if tuple(a.shape) != shape:
        raise ValueError(
            f"{name} has shape {tuple(a.shape)} but x and weight need (B, {what}, T_out) = {shape} "
            f"(one calibration per OUTPUT frame)"
        )
    return a


def tada_conv3d(
    x: Tensor,
    weight: Tensor,
    alpha: Tensor,
    bias: Optional[Tensor] = None,
    beta: Optional[Tensor] = None,
    stride: _IntOr3 = 1,
    padding: _IntOr3 = 0,
    dilation: _IntOr3 = 1,
    groups: int = 1,
    cal_dim: str = "cin",
    impl: str = "auto",
) -> Tensor:
    """Temporally-adaptive 3D convolution, ``y_t = conv3d(x, alpha_t * W)[t] + beta_t * bias``.

    Args:
        x: ``(B, C_in, T, H, W)``.
        weight: a Conv3d weight ``(C_out, C_in/groups, kt, kh, kw)``.
        alpha: ``(B, C_in, T_out)`` for ``cal_dim="cin"``, ``(B, C_out, T_out)`` for ``"cout"``, one
            calibration per output frame (a trailing ``(1, 1)`` is accepted). It scales all ``kt``
            taps of that frame's kernel.
        bias: ``(C_out,)`` or None; not scaled by ``alpha``.
        beta: ``(B, C_out, T_out)`` bias calibration, ``bias_t = beta_t * bias``; needs ``bias``.
        stride, padding, dilation: ints or 3-tuples ``(t, h, w)`` as for Conv3d (zero padding).
        impl: ``"fast"``, ``"grouped"`` (per-frame kernels, the release's method) or ``"auto"`` (fast).

    Returns:
        ``(B, C_out, T_out, H', W')``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not isinstance(cal_dim, str) or cal_dim not in CAL_DIMS_3D:
        raise ValueError(f"unknown cal_dim {cal_dim!r} for tada_conv3d; expected one of {CAL_DIMS_3D}")
    if not isinstance(impl, str) or impl not in IMPLS_3D:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS_3D}")
    if x.dim() != 5:
        raise ValueError(f"x must have shape (B, C_in, T, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if weight.dim() != 5:
        raise ValueError(
            f"weight must be a Conv3d weight (C_out, C_in/groups, kt, kh, kw), got shape {tuple(weight.shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride = _triple(stride, "stride", 1)
    padding = _triple(padding, "padding", 0)
    dilation = _triple(dilation, "dilation", 1)
    b, c_in, t = x.shape[:3]
    c_out, c_in_g, kt = weight.shape[:3]
    if c_in_g * groups != c_in:
        raise ValueError(
            f"x has {c_in} input channels but weight {tuple(weight.shape)} with groups={groups} "
            f"expects {c_in_g * groups}"
        )
    if c_out % groups:
        raise ValueError(f"C_out={c_out} is not divisible by groups={groups}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (c_out,)):
        shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"bias must have shape ({c_out},), got {shape}")
    t_out = output_frames(t, kt, stride[0], padding[0], dilation[0])
    if t_out < 1:
        raise ValueError(
            f"x has {t} frames, too few for temporal kernel {kt} with padding {padding[0]} and dilation {dilation[0]}"
        )
    alpha = _as_calibration(alpha, "alpha", (b, c_in if cal_dim == "cin" else c_out, t_out),
                            "C_in" if cal_dim == "cin" else "C_out")
    if beta is not None:
        if bias is None:
            raise ValueError("beta calibrates the bias, but bias is None")
        beta = _as_calibration(beta, "beta", (b, c_out, t_out), "C_out")
    if impl == "grouped":
        return _grouped(x, weight, alpha, bias, beta, stride, padding, dilation, groups, cal_dim, t_out)
    if cal_dim == "cout":
        return _fast_cout(x, weight, alpha, bias, beta, stride, padding, dilation, groups)
    return _fast_cin(x, weight, alpha, bias, beta, stride, padding, dilation, groups, t_out)


def _frame_shift(bias: Optional[Tensor], beta: Optional[Tensor]) -> Optional[Tensor]:
    """Per-frame bias ``(B, C_out, T_out)`` (or ``(1, C_out, 1)`` without ``beta``), or None."""
    if bias is None:
        return None
    return bias[None, :, None] * beta if beta is not None else bias[None, :, None]


def _fast_cout(x, weight, alpha, bias, beta, stride, padding, dilation, groups):
    y = F.conv3d(x, weight, None, stride, padding, dilation, groups)
    shift = _frame_shift(bias, beta)
    if shift is None:
        return y * alpha[..., None, None]
    return torch.addcmul(shift[..., None, None], y, alpha[..., None, None])


def _time_windows(x: Tensor, kt: int, st: int, pt: int, dt: int) -> Tensor:
    """``(B, C, T, H, W) -> (B, C, T_out, H, W, kt)`` views of the zero-padded input: the ``kt`` frames
    ``s*t + d*tau - p`` read by each output frame ``t`` (used by the grouped reference)."""
    if pt:
        x = F.pad(x, (0, 0, 0, 0, pt, pt))
    windows = x.unfold(2, dt * (kt - 1) + 1, st)
    return windows[..., ::dt] if dt > 1 else windows


def _tap_ranges(frames: int, kt: int, st: int, pt: int, dt: int, t_out: int):
    """Per tap ``tau``: ``(tau, t0, t1, j0)``, output frames ``t0 <= t < t1`` read input frame
    ``j0 + s*(t - t0)`` inside the clip (the others read zero padding); taps reading only padding are
    left out."""
    out = []
    for tau in range(kt):
        off = dt * tau - pt  # input frame read by output frame t is s*t + off
        t0 = max(0, -(off // st) if off < 0 else 0)  # ceil(-off / s) for negative off
        t1 = min(t_out, (frames - 1 - off) // st + 1)
        if t1 > t0:
            out.append((tau, t0, t1, st * t0 + off))
    return out


def _scaled_windows(x: Tensor, a: Optional[Tensor], kt: int, st: int, pt: int, dt: int, t_out: int,
                    first: int = 0, last: Optional[int] = None) -> Tensor:
    """``Z[b, t, c, tau] = a[b, t, c] * x[b, c, s*t + d*tau - p]`` (zero outside the clip) for the output
    frames ``first <= t < last`` (default: all), contiguous ``(B, last - first, C, kt, H, W)``; ``a`` is
    ``(B, T_out, C)``, or None for the unscaled windows. Not differentiable (used outside autograd)."""
    b, c, frames, h, w = x.shape
    last = t_out if last is None else last
    z = x.new_empty(b, last - first, c, kt, h, w, dtype=x.dtype if a is None else torch.result_type(x, a))
    ranges = []
    for tau, t0, t1, j0 in _tap_ranges(frames, kt, st, pt, dt, t_out):
        lo, hi = max(t0, first), min(t1, last)
        if hi > lo:
            ranges.append((tau, lo, hi, j0 + st * (lo - t0)))
    if len(ranges) < kt or any(t0 > first or t1 < last for _, t0, t1, _ in ranges):
        z.zero_()
    for tau, t0, t1, j0 in ranges:
        src = x[:, :, j0: j0 + st * (t1 - t0 - 1) + 1: st].transpose(1, 2)  # (B, n, C, H, W)
        dst = z[:, t0 - first:t1 - first, :, tau]
        if a is None:
            dst.copy_(src)
        else:
            torch.mul(src, a[:, t0:t1, :, None, None], out=dst)
    return z


class _CinConv(torch.autograd.Function):
    """``conv2d(Z, W.reshape(C_out, C_in/g * kt, kh, kw))`` with ``Z`` from :func:`_scaled_windows`.

    Saves only ``x``, ``a`` and ``weight`` for backward (what a Conv3d keeps alive anyway) and rebuilds
    ``Z`` there, instead of keeping the ``kt * T_out / T`` times larger ``Z``. ``grad a`` is one batched
    dot product of ``grad Z`` with the unscaled windows; ``grad x`` is accumulated tap by tap.
    """

    @staticmethod
    def forward(ctx, x, a, weight, bias, geometry):
        kt, st, pt, dt, t_out, stride2, padding2, dilation2, groups = geometry
        c_out, c_in_g, _, kh, kw = weight.shape
        z = _scaled_windows(x, a, kt, st, pt, dt, t_out).flatten(0, 1).flatten(1, 2)
        y = F.conv2d(z, weight.reshape(c_out, c_in_g * kt, kh, kw), bias, stride2, padding2, dilation2, groups)
        ctx.save_for_backward(x, a, weight)
        ctx.geometry, ctx.has_bias = geometry, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, a, weight = ctx.saved_tensors
        kt, st, pt, dt, t_out, stride2, padding2, dilation2, groups = ctx.geometry
        need_x, need_a, need_w, need_b = ctx.needs_input_grad[:4]
        c_out, c_in_g, _, kh, kw = weight.shape
        b, c, frames, h, w = x.shape
        dtype = gy.dtype  # under autocast the convolution ran in gy's dtype
        windows = _scaled_windows(x, None, kt, st, pt, dt, t_out)  # (B, T_out, C, kt, H, W), unscaled
        z = (windows * a[..., None, None, None]).to(dtype).flatten(0, 1).flatten(1, 2)
        w2 = weight.reshape(c_out, c_in_g * kt, kh, kw).to(dtype)
        gz, gw, gb = torch.ops.aten.convolution_backward(
            gy.contiguous(), z, w2, [c_out] if ctx.has_bias else None, stride2, padding2, dilation2,
            False, [0, 0], groups, [need_x or need_a, need_w, need_b and ctx.has_bias],
        )
        del z
        gx = ga = None
        if need_a:  # ga[b, t, c] = <gz[b, t, c], windows[b, t, c]>, one batched dot product
            n, k = b * t_out * c, kt * h * w
            ga = torch.bmm(gz.reshape(n, 1, k), windows.to(gz.dtype).view(n, k, 1)).view(b, t_out, c).to(a.dtype)
        del windows
        if need_x:  # gx[b, c, s*t + d*tau - p] += a[b, t, c] * gz[b, t, c, tau]
            gz = gz.reshape(b, t_out, c, kt, h, w)
            gx = torch.zeros_like(x, dtype=torch.result_type(gz, x))
            for tau, t0, t1, j0 in _tap_ranges(frames, kt, st, pt, dt, t_out):
                sl = slice(j0, j0 + st * (t1 - t0 - 1) + 1, st)
                g_tap = gz[:, t0:t1, :, tau]  # (B, n, C, H, W)
                gx[:, :, sl].transpose(1, 2).addcmul_(g_tap, a[:, t0:t1, :, None, None].to(g_tap.dtype))
            gx = gx.to(x.dtype)
        gw = gw.reshape(weight.shape).to(weight.dtype) if need_w else None
        gb = gb if need_b and ctx.has_bias else None
        return gx, ga, gw, gb, None


def _cin_inference(x: Tensor, a: Tensor, w2: Tensor, bias: Optional[Tensor], geometry) -> Tensor:
    """The no-gradient ``cin`` path, ``(B*T_out, C_out, H', W')``, with ``Z`` built a chunk of output
    frames at a time: each chunk's ``Z`` holds about as many elements as ``x`` (not ``kt * T_out / T``
    times as many), so inference memory stays near a Conv3d's. One chunk (one conv2d) when
    ``T_out <= T / kt``."""
    kt, st, pt, dt, t_out = geometry[:5]
    b, frames = x.shape[0], x.shape[2]
    chunk = max(1, min(t_out, frames // kt))
    if chunk >= t_out or torch.jit.is_tracing() or torch.jit.is_scripting():
        z = _scaled_windows(x, a, kt, st, pt, dt, t_out).flatten(0, 1).flatten(1, 2)
        return F.conv2d(z, w2, bias, *geometry[5:])
    y = None
    for t0 in range(0, t_out, chunk):
        t1 = min(t_out, t0 + chunk)
        z = _scaled_windows(x, a, kt, st, pt, dt, t_out, t0, t1).flatten(0, 1).flatten(1, 2)
        part = F.conv2d(z, w2, bias, *geometry[5:])
        del z
        if y is None:
            y = part.new_empty(b, t_out, *part.shape[1:])
        y[:, t0:t1] = part.view(b, t1 - t0, *part.shape[1:])
    return y.flatten(0, 1)


def _fast_cin(x, weight, alpha, bias, beta, stride, padding, dilation, groups, t_out):
    b = x.shape[0]
    c_out, c_in_g, kt, kh, kw = weight.shape
    geometry = (kt, stride[0], padding[0], dilation[0], t_out, stride[1:], padding[1:], dilation[1:], groups)
    a = alpha.transpose(1, 2).contiguous()  # (B, T_out, C_in)
    fused_bias = bias if beta is None else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, a, weight, fused_bias)):
        y = _CinConv.apply(x, a, weight, fused_bias, geometry)
    else:  # inference / export: the same computation without the autograd.Function
        y = _cin_inference(x, a, weight.reshape(c_out, c_in_g * kt, kh, kw), fused_bias, geometry)
    if beta is not None:
        y = y + (bias[None, :] * beta.transpose(1, 2).reshape(b * t_out, c_out))[..., None, None]
    return batch_to_frames(y, b, t_out)


def _grouped(x, weight, alpha, bias, beta, stride, padding, dilation, groups, cal_dim, t_out):
    """Per-(b, t) kernels, one grouped Conv3d over every output frame's own temporal window."""
    b, c_in, _, h, w = x.shape
    c_out, c_in_g, kt, kh, kw = weight.shape
    n = b * t_out
    a = alpha.transpose(1, 2).reshape(n, -1)  # row b*T_out + t
    if cal_dim == "cin":
        # the input channel of weight[o, j] is (o // (C_out/g)) * (C_in/g) + j
        a = a.reshape(n, groups, 1, c_in_g).expand(n, groups, c_out // groups, c_in_g).reshape(n, c_out, c_in_g)
        kernels = weight[None] * a[..., None, None, None]
    else:
        kernels = weight[None] * a[:, :, None, None, None, None]
    kernels = kernels.reshape(n * c_out, c_in_g, kt, kh, kw)
    frame_bias = None
    if bias is not None:
        frame_bias = _frame_shift(bias, beta).expand(b, c_out, t_out).transpose(1, 2).reshape(n * c_out)
    span = dilation[0] * (kt - 1) + 1
    windows = _time_windows(x, span, stride[0], padding[0], 1)  # (B, C, T_out, H, W, span)
    xg = windows.permute(0, 2, 1, 5, 3, 4).reshape(1, n * c_in, span, h, w)
    y = F.conv3d(xg, kernels, frame_bias, (1, *stride[1:]), (0, *padding[1:]), dilation, groups * n)
    return y.reshape(b, t_out, c_out, *y.shape[-2:]).transpose(1, 2)
