"""The native T-Pool kernels (``tada/nn/csrc/tpool.cpp``) against the plain PyTorch composition they
replace: the same values (float64 to 1e-12, float32 to rounding), in the same layout, on the shapes
and forms the models use, and stepping aside wherever they do not apply."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tada import create_model
from tada.nn import TemporalAggregation, _native, temporal_pool
from tada.nn import aggregation as agg_mod

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built here")


def test_builds_here():
    # with a compiler present the kernels must build (else the tests below would only test the fallback)
    assert _native.available()


def _ln_agg(c, dtype, seed=0):
    torch.manual_seed(seed)
    agg = TemporalAggregation(c, norm="ln", eps=1e-6).to(dtype).eval()
    with torch.no_grad():
        for p in agg.parameters():
            p.normal_()
    return agg


def _bn_agg(c, dtype, seed=0):
    torch.manual_seed(seed)
    agg = TemporalAggregation(c, norm="bn").to(dtype).eval()
    with torch.no_grad():
        for n in (agg.norm1, agg.norm2):
            n.weight.normal_(), n.bias.normal_(), n.running_mean.normal_(), n.running_var.uniform_(0.5, 2.0)
    return agg


def _by_hand_ln(agg, y, scale, shift):
    """The channels-last LN T-Pool written out with plain ops (independent of the module's own code)."""
    u = y if scale is None else y * scale
    u = u if shift is None else u + shift
    ln = lambda n, z: F.layer_norm(z, (agg.channels,), n.weight, n.bias, n.eps)  # noqa: E731
    return ln(agg.norm1, u) + ln(agg.norm2, temporal_pool(u, "avg", dim=1))


def _by_hand_bn(agg, y, scale, shift):
    u = y if scale is None else y * scale
    u = u if shift is None else u + shift
    bn = lambda n, z: F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)  # noqa: E731
    return bn(agg.norm1, u) + bn(agg.norm2, temporal_pool(u, "avg"))


def _count_native(monkeypatch):
    calls = []
    real = torch.ops.tada_native.tpool_infer

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(agg_mod.torch.ops.tada_native, "tpool_infer", spy, raising=False)
    return calls


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("t", [1, 2, 3, 8])
@pytest.mark.parametrize("affine", ["none", "scale", "shift", "both", "bias"])
def test_ln_channels_last_matches(dtype, tol, t, affine):
    assert _native.available()
    b, h, w, c = 2, 5, 3, 24
    agg = _ln_agg(c, dtype)
    torch.manual_seed(1)
    y = torch.randn(b, t, h, w, c, dtype=dtype)
    scale = torch.randn(b, t, 1, 1, c, dtype=dtype) if affine in ("scale", "both", "bias") else None
    shift = {"shift": torch.randn(b, t, 1, 1, c, dtype=dtype), "both": torch.randn(b, t, 1, 1, c, dtype=dtype),
             "bias": torch.randn(c, dtype=dtype)}.get(affine)  # "bias": one (C,) shift for every frame
    with torch.no_grad():
        out = agg_mod._native_infer(agg, y, scale, shift, True)
        assert out is not None
        with _native.disabled():
            assert agg_mod._native_infer(agg, y, scale, shift, True) is None
            plain = agg.forward_channels_last(y, scale, shift)
    expect = _by_hand_ln(agg, y, scale, shift)
    assert out.shape == y.shape and out.stride() == y.stride() and out.dtype == dtype
    torch.testing.assert_close(out, expect, rtol=tol, atol=tol)
    torch.testing.assert_close(out, plain, rtol=tol, atol=tol)
    with torch.no_grad():  # the module's own entry point takes the native path
        torch.testing.assert_close(agg.forward_channels_last(y, scale, shift), out, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("t", [1, 3, 8])
@pytest.mark.parametrize("with_affine", [False, True])
def test_frozen_bn_channels_last_memory_matches(dtype, tol, t, with_affine):
    b, h, w, c = 2, 4, 4, 16
    agg = _bn_agg(c, dtype)
    torch.manual_seed(2)
    y = torch.randn(b, t, h, w, c, dtype=dtype).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W) in channels-last memory
    scale = torch.randn(b, t, 1, 1, c, dtype=dtype).permute(0, 4, 1, 2, 3) if with_affine else None
    shift = torch.randn(1, c, 1, 1, 1, dtype=dtype) if with_affine else None
    with torch.no_grad():
        out = agg_mod._native_infer(agg, y, scale, shift, False)
        assert out is not None
        with _native.disabled():
            plain = agg(y, scale, shift)
    torch.testing.assert_close(out, _by_hand_bn(agg, y, scale, shift), rtol=tol, atol=tol)
    torch.testing.assert_close(out, plain, rtol=tol, atol=tol)
    assert out.stride() == y.stride()


def test_inference_mode():
    agg = _ln_agg(8, torch.float32)
    y = torch.randn(1, 4, 3, 3, 8)
    with torch.inference_mode():
        out = agg.forward_channels_last(y)
    torch.testing.assert_close(out, _by_hand_ln(agg, y, None, None).detach(), rtol=2e-5, atol=2e-5)


def test_steps_aside_where_it_does_not_apply():
    ln, bn = _ln_agg(8, torch.float32), _bn_agg(8, torch.float32)
    y_cl = torch.randn(2, 4, 3, 3, 8)
    y_fm = torch.randn(2, 4, 8, 3, 3).permute(0, 2, 1, 3, 4)  # frame-major (B, C, T, H, W): channels not innermost
    with torch.no_grad():
        assert agg_mod._native_infer(ln, y_cl, None, None, True) is not None
        assert agg_mod._native_infer(bn, y_fm, None, None, False) is None  # layout
        assert agg_mod._native_infer(ln, y_cl.transpose(2, 3), None, None, True) is None  # gapped rows
        assert agg_mod._native_infer(bn, y_cl.permute(0, 4, 1, 2, 3), torch.randn(2, 8, 4, 3, 3), None, False) is None
        bn.norm1.train()  # batch statistics: not a frozen affine
        assert agg_mod._native_infer(bn, y_cl.permute(0, 4, 1, 2, 3), None, None, False) is None
        bn.norm1.eval()
        for form in ({"pool": "max"}, {"shortcut": "shared"}):
            other = TemporalAggregation(8, norm="ln", **form).eval()
            assert agg_mod._native_infer(other, y_cl, None, None, True) is None
        assert agg_mod._native_infer(ln, y_cl.half(), None, None, True) is None
    # a gradient is needed: the fused autograd node (or the plain graph) runs instead
    assert agg_mod._native_infer(ln, y_cl.requires_grad_(), None, None, True) is None
    assert agg_mod._native_infer(ln, y_cl.detach(), None, None, True) is None  # the norms' parameters need one
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert agg_mod._native_infer(ln, y_cl.detach(), None, None, True) is None


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("TADA_NATIVE", "0")
    assert not _native.available()
    agg = _ln_agg(8, torch.float32)
    with torch.no_grad():
        assert agg_mod._native_infer(agg, torch.randn(1, 3, 2, 2, 8), None, None, True) is None
    monkeypatch.delenv("TADA_NATIVE")
    assert _native.available()


@pytest.mark.parametrize("name,frames,size", [("tadaconvnextv2_mini", 8, 64), ("tadaformer_b16", 16, 64)])
def test_models_infer_the_same_with_the_kernels(name, frames, size, monkeypatch):
    """Whole-model inference, native kernels vs plain composition, with every norm and layer scale made
    non-trivial so that T-Pool's output reaches the logits; the kernels run in every TAda block."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    n_tpool = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm3d)) and m.weight is not None:
                m.weight.normal_(1.0, 0.2), m.bias.normal_(0.0, 0.2)
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0.0, 0.2), m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, TemporalAggregation):
                n_tpool += 1
        for name_, p in model.named_parameters():
            if name_.endswith("gamma"):
                p.fill_(0.5)
    x = torch.randn(1, 3, frames, size, size)
    calls = _count_native(monkeypatch)
    with torch.no_grad():
        out = model(x)
        ran = len(calls)
        with _native.disabled():
            plain = model(x)
    assert n_tpool > 0 and ran == n_tpool
    assert len(calls) == ran  # nothing native while disabled
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["ln", "bn"])
def test_training_kernels_do_not_depend_on_the_thread_count(norm):
    """The sums over pixels run per fixed chunk and are added in chunk order: one thread and two give the
    same bits (forward, every gradient, the running statistics)."""
    torch.manual_seed(3)
    results = []
    for threads in (1, 2):
        agg = (_ln_agg if norm == "ln" else _bn_agg)(32, torch.float32, seed=4).train()
        y = torch.randn(2, 8, 9, 7, 32, generator=torch.Generator().manual_seed(5))
        scale = torch.randn(2, 8, 1, 1, 32, generator=torch.Generator().manual_seed(6))
        if norm == "bn":
            y, scale = y.permute(0, 4, 1, 2, 3), scale.permute(0, 4, 1, 2, 3)
        y.requires_grad_(), scale.requires_grad_()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = agg.forward_channels_last(y, scale) if norm == "ln" else agg(y, scale)
            assert out.grad_fn.name().startswith("_NativeTPool")
            grads = torch.autograd.grad(out, [y, scale, *agg.parameters()], torch.ones_like(out).cos_())
        finally:
            torch.set_num_threads(before)
        results.append([out, *grads, *agg.buffers()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_a_failed_build_falls_back_with_one_warning(tmp_path):
    """Where the kernels cannot be compiled (here: a compiler that always fails, and an empty build
    cache), T-Pool runs as the PyTorch composition with one warning that says what to do."""
    code = (
        "import warnings, torch\n"
        "from tada.nn import TemporalAggregation, _native\n"
        "agg = TemporalAggregation(8, norm='ln').eval()\n"
        "y = torch.randn(1, 4, 3, 3, 8)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    with torch.no_grad():\n"
        "        out = agg.forward_channels_last(y)\n"
        "        again = agg.forward_channels_last(y)\n"
        "msgs = [str(x.message) for x in w if 'native T-Pool kernels could not be built' in str(x.message)]\n"
        "print(_native.available(), len(msgs), 'TADA_NATIVE=0' in msgs[0], torch.equal(out, again), out.shape)\n"
    )
    env = dict(os.environ, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path))
    env.pop("TADA_NATIVE", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "1", "True", "True", "torch.Size([1,", "4,", "3,", "3,", "8])"]


def test_batchnorm_training_forms():
    """Channels-last BatchNorm T-Pool in training: ``momentum=None`` (the cumulative average) over three
    steps moves the running statistics as the plain BatchNorms do; an eval-mode BatchNorm that still
    needs a gradient (frozen statistics) and norms without a bias take the PyTorch node instead."""
    import copy

    agg = _bn_agg(8, torch.float64).train()
    agg.norm1.momentum = agg.norm2.momentum = None
    ref = copy.deepcopy(agg)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        y = torch.randn(2, 4, 3, 3, 8, generator=g, dtype=torch.float64).permute(0, 4, 1, 2, 3).requires_grad_()
        out = agg(y)
        assert out.grad_fn.name().startswith("_NativeTPool")
        torch.testing.assert_close(out, _by_hand_bn_train(ref, y), rtol=1e-12, atol=1e-12)
    for n, r in ((agg.norm1, ref.norm1), (agg.norm2, ref.norm2)):
        torch.testing.assert_close(n.running_mean, r.running_mean, rtol=0, atol=1e-14)
        torch.testing.assert_close(n.running_var, r.running_var, rtol=0, atol=1e-14)
        assert n.num_batches_tracked == r.num_batches_tracked == 3
    agg.eval()
    assert agg(y).grad_fn.name().startswith("_FusedTPool")
    ln = TemporalAggregation(8, norm="ln")
    ln.norm1 = torch.nn.LayerNorm(8, bias=False)
    out = ln.forward_channels_last(torch.randn(2, 4, 3, 3, 8, requires_grad=True))
    assert out.grad_fn.name().startswith("_FusedTPool")


def _by_hand_bn_train(agg, y):
    """Both BatchNorms in training mode with the cumulative-average momentum, as ``nn.BatchNorm3d`` with
    ``momentum=None`` runs them."""
    out = 0
    for n, v in ((agg.norm1, y), (agg.norm2, temporal_pool(y))):
        n.num_batches_tracked += 1
        out = out + F.batch_norm(v, n.running_mean, n.running_var, n.weight, n.bias, True,
                                 1.0 / float(n.num_batches_tracked), n.eps)
    return out


def test_builds_without_ninja_on_path(tmp_path):
    """The ``ninja`` package installs its binary beside this Python, which is not on PATH when the
    environment is not activated: the build finds it there (here PATH holds the compiler tools only)."""
    pytest.importorskip("ninja")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("c++", "g++", "gcc", "cc", "as", "ld"):
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
            real = os.path.realpath(found)
            if not (tools / os.path.basename(real)).exists():
                (tools / os.path.basename(real)).symlink_to(real)
    env = dict(os.environ, PATH=str(tools), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop("TADA_NATIVE", None)
    assert shutil.which("ninja", path=str(tools)) is None
    res = subprocess.run([sys.executable, "-c", "from tada.nn import _native; print(_native.available())"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True"], res.stderr
