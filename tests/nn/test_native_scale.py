"""The native one-pass backward of the ``cin`` calibration (``tada/nn/csrc/scale.cpp``) against the
plain composition it replaces, and its use by the fast path's backward."""
import shutil

import pytest
import torch

from tada.nn import _native, tada_conv2d
from tada.nn import functional as fn_mod

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built here")

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPES = [(6, 70, 9, 11), (1, 3, 5, 4), (4, 1, 7, 7), (3, 130, 1, 1), (2, 64, 28, 28)]


def _inputs(shape, dtype, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    a = torch.rand(shape[:2], generator=g, dtype=dtype) + 0.5
    return grad, x, a


@pytest.fixture(autouse=True)
def _loaded():
    assert _native.available()  # with a compiler present the kernels must build (and be loaded to call)


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_equals_the_composition(shape, dtype, fmt):
    grad, x, a = _inputs(shape, dtype, FORMATS[fmt])
    ref_ga = (grad * x).sum((2, 3))
    ref_gx = grad * a[:, :, None, None]
    out = grad.clone(memory_format=FORMATS[fmt])
    ga = torch.ops.tada_native.cin_scale_backward(out, x, a)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert torch.allclose(ga, ref_ga, **tol)
    assert torch.equal(out, ref_gx)  # one product per element: exact
    assert out.is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
def test_does_not_depend_on_the_thread_count(fmt):
    grad, x, a = _inputs((4, 200, 30, 30), torch.float32, FORMATS[fmt], seed=1)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            g = grad.clone(memory_format=FORMATS[fmt])
            outs.append((torch.ops.tada_native.cin_scale_backward(g, x, a), g))
    finally:
        torch.set_num_threads(threads)
    for ga, g in outs[1:]:
        assert torch.equal(ga, outs[0][0]) and torch.equal(g, outs[0][1])


@pytest.mark.parametrize("bad, match", [
    (lambda g, x, a: (g, x.contiguous(memory_format=torch.channels_last), a), "both be contiguous, or both channels-last"),
    (lambda g, x, a: (g, x.double(), a), "must all be float32 or all float64"),
    (lambda g, x, a: (g, x[:, :, :-1], a), "same shape"),
    (lambda g, x, a: (g, x, a[:, :-1]), r"\(N, C\)"),
])
def test_bad_inputs_are_refused_with_what_is_wrong(bad, match):
    grad, x, a = _inputs((2, 8, 6, 6), torch.float32, torch.contiguous_format)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.tada_native.cin_scale_backward(*bad(grad, x, a))


@pytest.mark.parametrize("channels_last", [False, True], ids=["frame-major", "channels-last"])
def test_the_fast_backward_runs_it_and_matches_the_composition(monkeypatch, channels_last):
    """TAdaConv's fast cin backward takes the kernel (spied) and gives the gradients of the plain
    PyTorch form (with the native kernels off) to float64 rounding."""
    calls = []
    real = fn_mod._native_scale_applies
    monkeypatch.setattr(fn_mod, "_native_scale_applies", lambda *a: calls.append(real(*a)) or calls[-1])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 3, 10, 10, generator=g, dtype=torch.float64)
    if channels_last:  # (B, C, T, H, W) whose frames are channels-last
        x = x.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    x.requires_grad_()
    w = torch.randn(12, 16, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = (torch.rand(2, 16, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    gy = torch.randn(2, 12, 3, 10, 10, generator=g, dtype=torch.float64)
    grads = {}
    for engine in ("native", "torch"):
        calls.clear()
        if engine == "native":
            y = tada_conv2d(x, w, a, padding=1, impl="fast")
            grads[engine] = torch.autograd.grad(y, (x, w, a), gy)
            assert calls == [True]
        else:
            with _native.disabled():
                y = tada_conv2d(x, w, a, padding=1, impl="fast")
                grads[engine] = torch.autograd.grad(y, (x, w, a), gy)
            assert calls == [False]
    for p, q in zip(grads["native"], grads["torch"]):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-12)
