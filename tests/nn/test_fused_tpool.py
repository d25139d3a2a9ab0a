"""T-Pool's fused autograd function (and the split ``cout`` TAdaConv that feeds it) against the plain
composition it replaces: gradcheck in float64, the same values, gradients and BatchNorm statistics,
what it keeps for backward, and where it steps aside."""
import contextlib
import copy
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tada import create_model
from tada.models.builders import aggregate_frame_major
from tada.nn import TAdaConv2d, TemporalAggregation, _native, tada_conv2d, temporal_pool
from tada.nn.functional import frames_to_batch

F64 = dict(dtype=torch.float64)
# "fused": the PyTorch autograd node (_FusedTPool); "native": the C++ kernels where they apply (_NativeTPool)
ENGINES = ["fused", pytest.param("native", marks=pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler for the native kernels"))]
NODE = {"fused": "_FusedTPool", "native": "_NativeTPool"}


def _engine(engine):
    return _native.disabled() if engine == "fused" else contextlib.nullcontext()


def _agg(norm, seed=0, c=6, momentum=0.1):
    torch.manual_seed(seed)
    agg = TemporalAggregation(c, norm=norm, momentum=momentum).double().train()
    with torch.no_grad():
        for p in agg.parameters():
            p.normal_()
    return agg


def _plain(agg, y, scale, shift, layout):
    """The composition the fused node replaces, written out with plain differentiable ops."""
    u = y if scale is None else y * scale
    u = u if shift is None else u + shift
    if layout == "cl":
        ln = lambda n, z: F.layer_norm(z, (agg.channels,), n.weight, n.bias, n.eps)  # noqa: E731
        return ln(agg.norm1, u) + ln(agg.norm2, temporal_pool(u, "avg", dim=1))
    return agg.norm1(u) + agg.norm2(temporal_pool(u, "avg"))


def _same_grads(out, expect, inputs, ref_inputs, gz, tol=1e-10):
    """The gradients of ``out`` w.r.t. ``inputs`` equal those of ``expect`` w.r.t. ``ref_inputs``."""
    for a, b in zip(torch.autograd.grad(out, list(inputs), gz), torch.autograd.grad(expect, list(ref_inputs), gz)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _run(agg, y, scale, shift, layout):
    return agg.forward_channels_last(y, scale, shift) if layout == "cl" else agg(y, scale, shift)


# (layout, norm, shape, per-frame affine shape); "bcthw_cl": (B, C, T, H, W) in channels-last memory (TAdaFormer)
LAYOUTS = [("cl", "ln", (2, 5, 4, 3, 6), (2, 5, 1, 1, 6)), ("bcthw", "bn", (2, 6, 5, 4, 3), (2, 6, 5, 1, 1)),
           ("bcthw_cl", "bn", (2, 6, 5, 4, 3), (2, 6, 5, 1, 1))]


def _randn(shape, layout, g):
    if layout != "bcthw_cl":
        return torch.randn(*shape, generator=g, **F64)
    b, c, t, h, w = shape
    return torch.randn(b, t, h, w, c, generator=g, **F64).permute(0, 4, 1, 2, 3)


# every layout with the PyTorch node; the native kernels where channels are innermost in memory
CASES = [pytest.param(*layout, e.values[0] if hasattr(e, "values") else e, marks=getattr(e, "marks", ()))
         for layout in LAYOUTS for e in ENGINES if layout[0] != "bcthw" or e == "fused"]


@pytest.mark.parametrize("frames", [1, 2, 5])
@pytest.mark.parametrize("affine", ["none", "scale", "shift", "both", "bias_only"])
@pytest.mark.parametrize("layout,norm,shape,sshape,engine", CASES)
def test_fused_tpool_gradcheck_and_equals_the_composition(layout, norm, shape, sshape, affine, frames, engine):
    with _engine(engine):
        _check_fused_tpool(layout, norm, shape, sshape, affine, frames, NODE[engine])


def _check_fused_tpool(layout, norm, shape, sshape, affine, frames, node):
    shape = list(shape)
    shape[1 if layout == "cl" else 2] = frames
    sshape = list(sshape)
    sshape[1 if layout == "cl" else 2] = frames
    g = torch.Generator().manual_seed(1)
    y = _randn(shape, layout, g).requires_grad_()
    scale = (1 + 0.3 * _randn(sshape, layout, g)).requires_grad_() if affine in ("scale", "both") else None
    shift = None
    if affine in ("shift", "both"):
        shift = _randn(sshape, layout, g).requires_grad_()
    elif affine == "bias_only":  # an uncalibrated bias: one value per channel, broadcast over B and T
        bshape = [1] * 5
        bshape[-1 if layout == "cl" else 1] = 6
        shift = torch.randn(*bshape, generator=g, **F64).requires_grad_()
    agg, ref = _agg(norm), None
    ref = copy.deepcopy(agg)
    assert agg.fuses(y, scale, shift, channels_last=layout == "cl")
    out = _run(agg, y, scale, shift, layout)
    assert out.grad_fn.name().startswith(node)
    assert out.stride() == y.stride()
    expect = _plain(ref, y, scale, shift, layout)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    inputs = [t for t in (y, scale, shift) if t is not None]
    gz = torch.randn(out.shape, generator=g, **F64)
    _same_grads(out, expect, inputs + list(agg.parameters()), inputs + list(ref.parameters()), gz)
    if norm == "bn":  # the running statistics move as the plain BatchNorms' do
        for n, r in ((agg.norm1, ref.norm1), (agg.norm2, ref.norm2)):
            torch.testing.assert_close(n.running_mean, r.running_mean, rtol=0, atol=1e-14)
            torch.testing.assert_close(n.running_var, r.running_var, rtol=0, atol=1e-14)
            assert n.num_batches_tracked == r.num_batches_tracked == 1
    assert torch.autograd.gradcheck(lambda *t: _gc(agg, layout, scale, shift, *t), tuple(inputs), fast_mode=True)


def _gc(agg, layout, scale, shift, *args):
    """``_run`` on gradcheck's perturbed inputs (in the order y, scale, shift, the ones given)."""
    it = iter(args)
    y = next(it)
    s = next(it) if scale is not None else None
    b = next(it) if shift is not None else None
    return _run(agg, y, s, b, layout)


def test_fused_tpool_in_eval_mode_batchnorm_and_momentum_none():
    """Frozen BatchNorm (eval mode, running statistics) and ``momentum=None`` (the cumulative average) take
    the fused path and match ``nn.BatchNorm3d``."""
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 6, 4, 3, 3, generator=g, **F64).requires_grad_()
    for mode in ("eval", "cumulative"):
        agg = _agg("bn", momentum=None if mode == "cumulative" else 0.1)
        agg.eval() if mode == "eval" else agg.train()
        ref = copy.deepcopy(agg)
        for _ in range(3):
            out, expect = agg(y), _plain(ref, y, None, None, "bcthw")
        torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
        gz = torch.randn(out.shape, generator=g, **F64)
        _same_grads(out, expect, [y, *agg.parameters()], [y, *ref.parameters()], gz)
        torch.testing.assert_close(agg.norm2.running_var, ref.norm2.running_var, rtol=0, atol=1e-14)
        assert agg.norm1.num_batches_tracked == ref.norm1.num_batches_tracked


@pytest.mark.parametrize("frames", [1, 2, 4])
def test_frame_major_aggregation_fused_equals_the_plain_one(frames, monkeypatch):
    """TAda2D's T-Pool on the frame batch (``aggregate_frame_major``) takes the fused path: same values,
    gradients and statistics as the composition on ``(B, C, T, H, W)``."""
    agg = _agg("bn")
    ref = copy.deepcopy(agg)
    g = torch.Generator().manual_seed(3)
    y5 = torch.randn(2, 6, frames, 5, 4, generator=g, **F64).requires_grad_()
    yf = frames_to_batch(y5.transpose(1, 2).contiguous().transpose(1, 2))
    out = aggregate_frame_major(agg, yf, frames)
    assert out.grad_fn.name().startswith("_FusedTPool")
    expect = frames_to_batch(_plain(ref, y5, None, None, "bcthw"))
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    gz = torch.randn(out.shape, generator=g, **F64)
    _same_grads(out, expect, [y5, *agg.parameters()], [y5, *ref.parameters()], gz)
    torch.testing.assert_close(agg.norm2.running_mean, ref.norm2.running_mean, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: aggregate_frame_major(agg.eval(), t, frames), (yf.detach().requires_grad_(),),
                                    fast_mode=True)


def test_fused_tpool_keeps_only_its_input_for_backward():
    """The node keeps ``y`` (and per-row statistics), not the affine's output or the pooled tensor."""
    agg = _agg("ln", c=16).float()
    y = torch.randn(2, 8, 10, 10, 16, requires_grad=True)
    scale = torch.randn(2, 8, 1, 1, 16, requires_grad=True)
    shift = torch.randn(2, 8, 1, 1, 16, requires_grad=True)
    out = agg.forward_channels_last(y, scale, shift)
    big = [t for t in out.grad_fn.saved_tensors if t.numel() >= y.numel()]
    assert len(big) == 1 and big[0].data_ptr() == y.data_ptr()
    plain = _plain(agg, y, scale, shift, "cl")
    saved = set()
    stack = [plain.grad_fn]
    while stack:  # every input-sized tensor the plain graph keeps
        fn = stack.pop()
        if fn is None:
            continue
        for name in dir(fn):
            if name.startswith("_saved_"):
                t = getattr(fn, name)
                if isinstance(t, torch.Tensor) and t.numel() >= y.numel():
                    saved.add(t.data_ptr())
        stack.extend(f for f, _ in fn.next_functions)
    assert len(saved) >= 3  # y, y*scale+shift, the pooled tensor


@pytest.mark.parametrize("frames", [1, 2, 3, 8])
def test_avg_pool_in_every_layout_is_avg_pool3d_with_the_padding_counted(frames):
    """The band-matrix product equals ``avg_pool3d`` over zero-padded frames, for contiguous,
    frame-major, channels-last and gapped (strided) memory, keeping the input's layout, and so does its
    gradient (the transposed product)."""
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 3, frames, 4, 6, generator=g, **F64)
    ref = F.avg_pool3d(F.pad(y, (0, 0, 0, 0, 1, 1)), (3, 1, 1), stride=1)
    layouts = [y, y.transpose(1, 2).contiguous().transpose(1, 2), y.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)]
    for v in layouts:
        out = temporal_pool(v)
        assert out.stride() == v.stride()
        torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    gapped = y[..., ::2]
    torch.testing.assert_close(temporal_pool(gapped), ref[..., ::2], rtol=1e-14, atol=1e-14)
    cl = y.permute(0, 2, 3, 4, 1).contiguous()
    torch.testing.assert_close(temporal_pool(cl, dim=1), ref.permute(0, 2, 3, 4, 1), rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: temporal_pool(t), (layouts[2].clone().requires_grad_(),), fast_mode=True)


def test_fused_path_steps_aside():
    """Without a gradient, for the other pools / shortcuts, other norm types and under autocast the
    plain composition runs (and gives the same values)."""
    y = torch.randn(2, 6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    agg = _agg("bn")
    with torch.no_grad():
        assert not agg.fuses(y)
    for kw in (dict(pool="max"), dict(pool="mix"), dict(shortcut="shared"), dict(shortcut="none")):
        assert not TemporalAggregation(6, **kw).double().fuses(y)
    assert not _agg("ln").fuses(y)  # LayerNorm over dim 1 of (B, C, T, H, W): the plain ChannelNorm path
    sync = _agg("bn")
    sync.norm1 = nn.SyncBatchNorm(6).double()
    assert not sync.fuses(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _agg("bn").float().fuses(y.float())
    assert _agg("bn").fuses(y)
    x = torch.randn(2, 6, 4, 3, 3, dtype=torch.float64)
    assert not _agg("bn").requires_grad_(False).fuses(x)  # nothing needs a gradient


@pytest.mark.parametrize("bias,bias_calibration", [(False, False), (True, False), (True, True)])
def test_split_cout_tadaconv_recombines_to_the_layer_output(bias, bias_calibration):
    torch.manual_seed(5)
    conv = TAdaConv2d(6, 6, 3, padding=1, groups=6, bias=bias, cal_dim="cout", routing="v2",
                      routing_kwargs={"reduction": 2, "head_dim": 3}, bias_calibration=bias_calibration).double()
    x = torch.randn(2, 6, 4, 5, 5, **F64)
    y, scale, shift = conv(x, split=True)
    assert scale.shape == (2, 6, 4, 1, 1) and (shift is None) == (not bias)
    rec = y * scale if shift is None else torch.addcmul(shift, y, scale)
    torch.testing.assert_close(rec, conv(x), rtol=1e-12, atol=1e-12)
    # the other forms have no output affine: the layer's own output comes back whole
    dense = TAdaConv2d(6, 8, 3, padding=1).double()
    out, s, b = dense(x, split=True)
    assert s is None and b is None and torch.equal(out, dense(x))
    w, a = torch.randn(6, 1, 3, 3, **F64), torch.randn(2, 6, 4, **F64)
    out, s, b = tada_conv2d(x, w, a, groups=6, cal_dim="cout", impl="grouped", split=True)
    assert s is None and torch.allclose(out, tada_conv2d(x, w, a, groups=6, cal_dim="cout"), atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name,frames,size", [("tadaconvnextv2_mini", 4, 32), ("tadaformer_b16", 4, 32),
                                              ("tada2d_r50", 4, 32)])
def test_models_train_the_same_with_and_without_fusion(name, frames, size, engine, monkeypatch):
    """A whole training forward/backward of each family with the fused T-Pool (the PyTorch node, or the
    native kernels where they apply: ConvNeXt, TAdaFormer) equals the plain graph (float64; the
    TAdaFormer's zero-initialised branches get random weights so they matter)."""
    with _engine(engine):
        _check_model_training(name, frames, size, NODE[engine] if name != "tada2d_r50" else "_FusedTPool",
                              monkeypatch)


def _check_model_training(name, frames, size, node, monkeypatch):
    torch.manual_seed(6)
    kw = dict(width=64, layers=2, heads=2, patch_size=8, img_size=size, tada_head_dim=16, double_tada=True,
              # temp_enhance's Conv3d leaves the branch (B, C, T, H, W)-contiguous, where only the PyTorch node runs
              temp_enhance=node == "_FusedTPool") if name.startswith("tadaformer") else {}
    m = create_model(name, num_classes=5, **kw).double().train()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.abs().max() == 0:  # zero-init parts (T-Pool's norm2, TAdaFormer's branch projection)
                p.normal_(0, 0.2)
    ref = copy.deepcopy(m)
    x = torch.randn(2, 3, frames, size, size, **F64)
    torch.manual_seed(7)  # the same head dropout / drop-path draws in both runs
    out = m(x)
    assert _count_nodes(out.grad_fn, node) > 0
    grads = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    monkeypatch.setattr(TemporalAggregation, "fuses", lambda *a, **k: False)
    torch.manual_seed(7)
    out_ref = ref(x)
    grads_ref = torch.autograd.grad(out_ref.square().sum(), list(ref.parameters()))
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-9)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)
    for b, r in zip(m.buffers(), ref.buffers()):
        torch.testing.assert_close(b, r, rtol=0, atol=1e-12)


def _count_nodes(fn, prefix: str) -> int:
    """How many nodes of the graph under ``fn`` are named ``prefix...``."""
    seen, stack, n = set(), [fn], 0
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        n += f.name().startswith(prefix)
        stack.extend(g for g, _ in f.next_functions)
    return n


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layout,norm", [("cl", "ln"), ("bcthw", "bn"), ("bcthw_cl", "bn")])
def test_fused_tpool_on_a_one_pixel_map(layout, norm, engine):
    """On a 1x1 map the per-frame shift has the shape of the input: its gradient must not alias the
    input's (which the backward scales in place)."""
    g = torch.Generator().manual_seed(8)
    shape = (2, 3, 1, 1, 6) if layout == "cl" else (2, 6, 3, 1, 1)
    y = _randn(shape, layout, g).requires_grad_()
    scale = (1 + 0.3 * _randn(shape, layout, g)).requires_grad_()
    shift = _randn(shape, layout, g).requires_grad_()
    agg = _agg(norm)
    ref = copy.deepcopy(agg)
    with _engine(engine):
        out = _run(agg, y, scale, shift, layout)
    expect = _plain(ref, y, scale, shift, layout)
    gz = torch.randn(out.shape, generator=g, **F64)
    _same_grads(out, expect, (y, scale, shift), (y, scale, shift), gz)


def test_pool_after_inference_mode_still_trains():
    """The cached band matrix made first under ``torch.inference_mode`` is an ordinary tensor, so a
    later training step can keep it for backward."""
    from tada.nn import aggregation

    aggregation._BANDS.clear()
    y = torch.randn(1, 2, 11, 3, 3)  # a frame count no other test uses
    with torch.inference_mode():
        temporal_pool(y)
    yg = y.clone().requires_grad_()
    temporal_pool(yg).sum().backward()
    assert yg.grad is not None and torch.isfinite(yg.grad).all()


def test_frozen_batchnorm_inference_folds_the_norms(monkeypatch):
    """Inference with frozen BatchNorms runs T-Pool as two affine passes (``frozen_tpool``): the same values
    as the two norms and the sum, in (B, C, T, H, W) and on the frame batch, in the input's layout; in
    training mode, with a gradient, or with other norm types it is not used."""
    agg = _agg("bn").eval()
    with torch.no_grad():
        for n in (agg.norm1, agg.norm2):
            n.running_mean.normal_()
            n.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(9)
    y5 = torch.randn(2, 5, 6, 4, 3, generator=g, **F64).transpose(1, 2)  # (B, C, T, H, W), frame-major
    with torch.no_grad():
        assert agg.frozen_affines(y5) is not None
        out5, outf = agg(y5), aggregate_frame_major(agg, frames_to_batch(y5), 5)
    expect = agg.norm1(y5) + agg.norm2(temporal_pool(y5))
    torch.testing.assert_close(out5, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outf, frames_to_batch(expect), rtol=1e-12, atol=1e-12)
    assert out5.stride() == y5.stride()
    assert agg.frozen_affines(y5) is None  # a gradient may be needed
    with torch.no_grad():
        assert agg.train().frozen_affines(y5) is None
        assert _agg("ln").eval().frozen_affines(y5) is None
        assert TemporalAggregation(6, shortcut="shared").double().eval().frozen_affines(y5) is None
