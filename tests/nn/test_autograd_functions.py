"""The operator's custom autograd functions against the plain compositions they replace: gradcheck in
float64, equal values and gradients, and what they keep for backward."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from tada.nn import _native, recompute_scaled_input, tada_conv2d
from tada.nn.functional import _ScaledInputConv
from tada.nn.functional3d import _CinConv

GEOMS = [  # stride, padding, dilation, groups
    ((1, 1), (1, 1), (1, 1), 1), ((2, 2), (1, 1), (1, 1), 1), ((1, 2), (0, 2), (2, 1), 2), ((1, 1), (1, 1), (1, 1), 4),
]


def _inputs(bias, seed=0, n=3, c=4, hw=6, c_out=8):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64)
    x = torch.randn(n, c, hw, hw, generator=g, **kw).requires_grad_()
    a = (1 + 0.3 * torch.randn(n, c, generator=g, **kw)).requires_grad_()
    return x, a, c_out, g, bias


@pytest.mark.parametrize("per_frame,recompute", [(False, False), (False, True), (True, False)],
                         ids=["batched-backward", "batched-backward-recompute", "per-frame-backward"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("engine", ["native", "torch"])
def test_scaled_input_conv_gradcheck_and_equals_the_composition(geom, bias, per_frame, recompute, engine):
    """The batched backward's last pass runs as the native kernel where it is built (csrc/scale.cpp)
    and as PyTorch ops otherwise: both are checked."""
    if engine == "native" and not _native.available():
        pytest.skip("no native kernels here")
    with contextlib.ExitStack() as stack:
        if engine == "torch":
            stack.enter_context(_native.disabled())
        _check_scaled_input_conv(geom, bias, per_frame, recompute)


def _check_scaled_input_conv(geom, bias, per_frame, recompute):
    stride, padding, dilation, groups = geom
    x, a, c_out, g, _ = _inputs(bias)
    w = torch.randn(c_out, x.shape[1] // groups, 3, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(c_out, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    conv = (stride, padding, dilation, groups)
    fn = lambda x, a, w, b: _ScaledInputConv.apply(x, a, w, b, conv, per_frame, recompute)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, a, w, b), fast_mode=True)
    ref = F.conv2d(x * a[:, :, None, None], w, b, stride, padding, dilation, groups)
    out = fn(x, a, w, b)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(ref)
    params = [t for t in (x, a, w, b) if t is not None]
    g_ref = torch.autograd.grad(ref, params, gy)
    g_out = torch.autograd.grad(out, params, gy)
    for p, q in zip(g_out, g_ref):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, False), (False, False, True),
                                    (True, True, False)], ids=["x", "alpha", "weight", "x-alpha"])
def test_per_frame_backward_computes_only_what_is_asked(wanted):
    """Each subset of gradients from the per-frame backward equals the composition's (the loop skips
    the parts nobody needs)."""
    g = torch.Generator().manual_seed(3)
    kw = dict(dtype=torch.float64)
    x = torch.randn(4, 6, 9, 9, generator=g, **kw).requires_grad_(wanted[0])
    a = (1 + 0.3 * torch.randn(4, 6, generator=g, **kw)).requires_grad_(wanted[1])
    w = torch.randn(5, 6, 3, 3, generator=g, **kw).requires_grad_(wanted[2])
    conv = ((2, 2), (1, 1), (1, 1), 1)
    out = _ScaledInputConv.apply(x, a, w, None, conv, True)
    ref = F.conv2d(x * a[:, :, None, None], w, None, *conv)
    gy = torch.randn(ref.shape, generator=g, **kw)
    leaves = [t for t, want in zip((x, a, w), wanted) if want]
    for p, q in zip(torch.autograd.grad(out, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


def test_frames_impl_under_bfloat16_autocast_matches_fast():
    """The per-frame backward runs in the dtype the forward's convolution ran in (autocast), like the
    batched one, and returns gradients in the leaves' dtypes."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 16, 16).requires_grad_()
    w = torch.randn(8, 8, 3, 3).requires_grad_()
    a = (1 + 0.1 * torch.randn(1, 8, 3)).requires_grad_()
    grads = {}
    for impl in ("fast", "frames"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = tada_conv2d(x, w, a, stride=2, padding=1, impl=impl)
        assert y.dtype == torch.bfloat16
        grads[impl] = torch.autograd.grad(y.float().square().sum(), (x, w, a))
    for p, q in zip(grads["frames"], grads["fast"]):
        assert p.dtype == torch.float32
        assert ((p - q).norm() / q.norm()).item() < 2e-2  # bf16 rounding, summed in different orders


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs (views counted once each)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("impl", ["fast", "frames"])
def test_scaled_input_conv_keeps_no_second_input_sized_tensor(impl):
    """fast inside recompute_scaled_input(), and frames always, keep no scaled input for backward."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 12, 12).requires_grad_()  # (B, C, T, H, W)
    w = torch.randn(16, 16, 3, 3).requires_grad_()
    a = (1 + 0.1 * torch.randn(2, 16, 4)).requires_grad_()
    with recompute_scaled_input(impl == "fast"):
        fast, y_fast = _saved_bytes(lambda: tada_conv2d(x, w, a, padding=1, impl=impl))

    def composition():
        xf = x.transpose(1, 2).reshape(8, 16, 12, 12)
        return F.conv2d(xf * a.transpose(1, 2).reshape(8, 16)[:, :, None, None], w, None, 1, 1)

    plain, y_plain = _saved_bytes(composition)
    x_bytes = x.numel() * x.element_size()
    assert plain - fast >= 0.9 * x_bytes  # the scaled input is no longer kept
    assert torch.allclose(y_fast.transpose(1, 2).reshape(8, 16, 12, 12), y_plain, atol=1e-5)


def test_recompute_scaled_input_trades_one_input_sized_tensor_for_the_same_gradients():
    """Outside the block the fast cin path keeps the scaled input (one input-sized tensor more than
    inside it); values and every gradient are the same; the block nests, switches off with
    enabled=False, and is restored on exit, also after an error."""
    from tada.nn.functional import _RECOMPUTE

    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 12, 12).requires_grad_()
    w = torch.randn(16, 16, 3, 3).requires_grad_()
    a = (1 + 0.1 * torch.randn(2, 16, 4)).requires_grad_()
    run = lambda: tada_conv2d(x, w, a, padding=1, impl="fast")  # noqa: E731
    kept, y_kept = _saved_bytes(run)
    with recompute_scaled_input():
        lean, y_lean = _saved_bytes(run)
        with recompute_scaled_input(enabled=False):
            again, _ = _saved_bytes(run)
        assert _RECOMPUTE.on
    x_bytes = x.numel() * x.element_size()
    assert kept - lean == pytest.approx(x_bytes, rel=0.01) and again == kept
    assert torch.equal(y_kept, y_lean)
    gy = torch.randn_like(y_kept)
    for p, q in zip(torch.autograd.grad(y_kept, (x, w, a), gy), torch.autograd.grad(y_lean, (x, w, a), gy)):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError):
        with recompute_scaled_input():
            raise RuntimeError("boom")
    assert not _RECOMPUTE.on


@pytest.mark.parametrize("geometry", [
    (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 0, 1), (3, 1, 2, 2), (1, 1, 0, 1),
])
def test_cin_conv3d_gradcheck(geometry):
    kt, st, pt, dt = geometry
    g = torch.Generator().manual_seed(0)
    kw = dict(dtype=torch.float64)
    b, c, t, hw, c_out = 1, 3, 5, 4, 2
    t_out = (t + 2 * pt - dt * (kt - 1) - 1) // st + 1
    x = torch.randn(b, c, t, hw, hw, generator=g, **kw).requires_grad_()
    a = (1 + 0.3 * torch.randn(b, t_out, c, generator=g, **kw)).requires_grad_()
    w = torch.randn(c_out, c, kt, 3, 3, generator=g, **kw).requires_grad_()
    bias = torch.randn(c_out, generator=g, **kw).requires_grad_()
    geom = (kt, st, pt, dt, t_out, (1, 1), (1, 1), (1, 1), 1)
    assert torch.autograd.gradcheck(lambda *z: _CinConv.apply(*z, geom), (x, a, w, bias), fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "frame_major", "channels_last"])
def test_spatial_mean_gradcheck_and_equals_the_composition(layout):
    """The routing descriptor's mean (``_SpatialMean``): autograd's mean in value and gradient, with the
    gradient laid out like the input (channels innermost for a channels-last view)."""
    from tada.nn.routing import _SpatialMean

    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 5, 4, 3, 6, generator=g, dtype=torch.float64)  # (B, C, T, H, W)
    x = {"contiguous": base, "frame_major": base.transpose(1, 2).contiguous().transpose(1, 2),
         "channels_last": base.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)}[layout].requires_grad_()
    assert torch.autograd.gradcheck(_SpatialMean.apply, (x,), fast_mode=True)
    out, ref = _SpatialMean.apply(x), x.mean(dim=(3, 4))
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    gv = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got, = torch.autograd.grad(out, x, gv)
    want, = torch.autograd.grad(ref, x, gv)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if layout == "channels_last":
        assert got.stride(1) == 1  # channels innermost, like x


def test_lean_quick_gelu_gradcheck_and_equals_the_composition():
    from tada.nn.routing import QuickGELU, _QuickGELU, quick_gelu

    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(4, 7, 5, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(_QuickGELU.apply, (x,), fast_mode=True)
    out, ref = QuickGELU(lean=True)(x), quick_gelu(x)
    assert out.grad_fn.name().startswith("_QuickGELU") and torch.equal(out, ref)
    assert [t.data_ptr() for t in out.grad_fn.saved_tensors] == [x.data_ptr()]  # nothing else kept
    gy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(out, x, gy)[0], torch.autograd.grad(ref, x, gy)[0],
                               rtol=1e-12, atol=1e-12)
