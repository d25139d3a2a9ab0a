"""The fused inference passes of a TAda bottleneck (TAda2D's layout, frame-major NCHW frames):

* the head, a TAdaConv after BatchNorm + ReLU: the native kernels (``bn_relu_mean``, ``bn_relu_scale`` in
  ``tada/nn/csrc/scale.cpp``) against the composition they replace, and
  :meth:`TAdaConv2d.forward_after_bn_relu` against ``conv(relu(bn(z)))``, and where it declines;
* T-Pool with frozen BatchNorms and the ReLU after it (``tpool_frozen_frames`` in ``tpool.cpp``) against
  the composition;
* the bottleneck blocks that use both (TAda2D, TAda-SlowOnly) against their layer-by-layer forward."""
import shutil

import pytest
import torch
import torch.nn as nn
from torch.profiler import profile

import tada
from tada.models.builders import FrameAggregation, aggregate_frame_major
from tada.nn import TAdaConv2d, _native, temporal_pool
from tada.nn.functional import batch_to_frames

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the native kernels cannot be built here")

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPES = [(6, 70, 9, 11), (1, 3, 5, 4), (4, 1, 7, 7), (3, 130, 1, 1), (2, 64, 28, 28)]


@pytest.fixture(autouse=True)
def _loaded():
    assert _native.available()


def _inputs(shape, dtype, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt)
    scale = torch.randn(shape[1], generator=g, dtype=dtype)  # negative scales too: ReLU then cuts either side
    shift = 0.5 * torch.randn(shape[1], generator=g, dtype=dtype)
    a = torch.rand(shape[:2], generator=g, dtype=dtype) + 0.5
    return z, scale, shift, a


def _relu_affine(z, scale, shift):
    return torch.relu(z * scale[:, None, None] + shift[:, None, None])


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_kernels_equal_the_composition(shape, dtype, fmt):
    z, scale, shift, a = _inputs(shape, dtype, FORMATS[fmt])
    r = _relu_affine(z, scale, shift)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    v = torch.ops.tada_native.bn_relu_mean(z, scale, shift)
    assert v.shape == shape[:2] and torch.allclose(v, r.mean((2, 3)), **tol)
    xa = torch.ops.tada_native.bn_relu_scale(z, scale, shift, a)
    assert xa.is_contiguous(memory_format=FORMATS[fmt])  # z's layout, for the convolution after it
    assert torch.allclose(xa, r * a[:, :, None, None], **tol)
    assert (xa >= 0).all() and (xa == 0).any()


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
def test_kernels_do_not_depend_on_the_thread_count(fmt):
    z, scale, shift, a = _inputs((4, 200, 30, 30), torch.float32, FORMATS[fmt], seed=1)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append((torch.ops.tada_native.bn_relu_mean(z, scale, shift),
                         torch.ops.tada_native.bn_relu_scale(z, scale, shift, a)))
    finally:
        torch.set_num_threads(threads)
    for v, xa in outs[1:]:
        assert torch.equal(v, outs[0][0]) and torch.equal(xa, outs[0][1])


@pytest.mark.parametrize("op, bad, match", [
    ("mean", lambda z, s, b, a: (z[0], s, b), r"\(N, C, H, W\)"),
    ("mean", lambda z, s, b, a: (z, s.double(), b), "all be float32 or all float64"),
    ("mean", lambda z, s, b, a: (z, s[:-1], b), r"contiguous \(C,\) tensors"),
    ("mean", lambda z, s, b, a: (z.transpose(2, 3), s, b), "contiguous or channels-last"),
    ("scale", lambda z, s, b, a: (z, s, b, a[:, :-1]), r"contiguous \(N, C\)"),
    ("scale", lambda z, s, b, a: (z, s, b, a.double()), "of z's dtype"),
])
def test_bad_inputs_are_refused_with_what_is_wrong(op, bad, match):
    z, scale, shift, a = _inputs((2, 8, 6, 5), torch.float32, torch.contiguous_format)
    fn = torch.ops.tada_native.bn_relu_mean if op == "mean" else torch.ops.tada_native.bn_relu_scale
    with pytest.raises(RuntimeError, match=match):
        fn(*bad(z, scale, shift, a))


# -- TAdaConv2d.forward_after_bn_relu ---------------------------------------------------------------------
def _layer(routing="v1", stride=1, impl="auto", dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(16).to(dtype)
    conv = TAdaConv2d(16, 12, 3, stride, 1, routing=routing, impl=impl,
                      routing_kwargs={"zero_init": False, **({"head_dim": 4} if routing == "v2" else {})}, **kw).to(dtype)
    with torch.no_grad():  # statistics and affine away from the identity, so a wrong fold would show
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return bn.eval(), conv.eval()


def _reference(conv, bn, z, batch):
    r = torch.relu(bn(z))  # the layers one by one, as Bottleneck runs them when nothing fuses
    return conv(batch_to_frames(r, batch, z.shape[0] // batch))


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("routing", ["v1", "v2"])
@pytest.mark.parametrize("stride, impl", [(1, "auto"), (2, "auto"), (1, "fast"), (2, "frames")])
def test_forward_after_bn_relu_equals_the_layers(routing, stride, impl, fmt):
    bn, conv = _layer(routing, stride, impl)
    batch = 2
    z = torch.randn(batch * 4, 16, 9, 10, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    with torch.no_grad():
        out = conv.forward_after_bn_relu(z, bn, batch)
        ref = _reference(conv, bn, z, batch)
    assert out is not None and out.dim() == 4
    assert torch.allclose(batch_to_frames(out, batch, 4), ref, rtol=1e-10, atol=1e-12)


def test_forward_after_bn_relu_float32_and_a_bias():
    bn, conv = _layer(dtype=torch.float32, bias=True)
    z = torch.randn(6, 16, 12, 12)
    with torch.no_grad():
        out = conv.forward_after_bn_relu(z, bn, 3)
        ref = _reference(conv, bn, z, 3)
    assert torch.allclose(batch_to_frames(out, 3, 2), ref, rtol=1e-5, atol=1e-5)


def _declining(case):
    """(bn, conv, z) for which the fused head must decline."""
    z = torch.randn(4, 16, 8, 8, dtype=torch.float64)
    if case == "generator routing":  # a calibration generator does not route from the descriptor
        torch.manual_seed(0)
        return nn.BatchNorm2d(16).double().eval(), TAdaConv2d(16, 12, 3, 1, 1, routing="learnable").double(), z
    bn, conv = _layer(impl="grouped" if case == "grouped impl" else "auto",
                      **({"cal_dim": "cout"} if case == "cout calibration" else {}))
    if case == "bn training":
        bn.train()
    elif case == "bn without running stats":
        bn = nn.BatchNorm2d(16, track_running_stats=False).double().eval()
    elif case == "bfloat16":
        bn, conv, z = bn.bfloat16(), conv.bfloat16(), z.bfloat16()
    elif case == "float32 layer, float64 input":
        conv = conv.float()
    return bn, conv, z


@pytest.mark.parametrize("case", [
    "bn training", "bn without running stats", "cout calibration", "grouped impl", "generator routing",
    "bfloat16", "float32 layer, float64 input",
])
def test_forward_after_bn_relu_declines_where_it_does_not_apply(case):
    bn, conv, z = _declining(case)
    with torch.no_grad():
        assert conv.forward_after_bn_relu(z, bn, 2) is None


def test_forward_after_bn_relu_declines_with_autograd_on_or_the_native_kernels_off():
    bn, conv = _layer()
    z = torch.randn(4, 16, 8, 8, dtype=torch.float64)
    assert conv.forward_after_bn_relu(z, bn, 2) is None  # grad mode: the layers keep their autograd
    with torch.no_grad(), _native.disabled():
        assert conv.forward_after_bn_relu(z, bn, 2) is None
    with torch.no_grad():
        assert conv.forward_after_bn_relu(z, bn, 2) is not None


def test_routing_from_descriptor_is_its_forward():
    x = torch.randn(2, 16, 4, 6, 7, dtype=torch.float64)
    for routing in ("v1", "v2"):
        _, conv = _layer(routing)
        r = conv.routing
        assert torch.equal(r.from_descriptor(x.mean((3, 4))), r(x))


# -- T-Pool with frozen BatchNorms on frame-major frames -------------------------------------------------
def _frozen_agg(c, dtype, seed=0):
    torch.manual_seed(seed)
    agg = FrameAggregation(c, norm="bn").to(dtype)
    with torch.no_grad():
        for n in (agg.norm1, agg.norm2):
            n.weight.uniform_(-1.5, 1.5), n.bias.uniform_(-0.3, 0.3)
            n.running_mean.uniform_(-0.5, 0.5), n.running_var.uniform_(0.5, 2.0)
    return agg.eval()


def _tpool_reference(agg, y, frames, relu):
    n, c, h, w = y.shape
    y5 = y.reshape(n // frames, frames, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
    z = agg.norm1(y5) + agg.norm2(temporal_pool(y5, "avg"))
    z = torch.relu(z) if relu else z
    return z.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("relu", [False, True], ids=["no-relu", "relu"])
@pytest.mark.parametrize("frames", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_frozen_tpool_frames_equals_the_composition(dtype, frames, relu):
    agg = _frozen_agg(24, dtype)
    y = torch.randn(2 * frames, 24, 7, 9, dtype=dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    with torch.no_grad(), profile() as prof:
        out = aggregate_frame_major(agg, y, frames, relu=relu)
    assert any(e.key == "tada_native::tpool_frozen_frames" for e in prof.key_averages())
    with torch.no_grad():
        ref = _tpool_reference(agg, y, frames, relu)
    assert out.shape == y.shape and out.is_contiguous()
    assert torch.allclose(out, ref, **tol)
    with torch.no_grad(), _native.disabled():  # the composition's own path, with the same relu handling
        assert torch.allclose(aggregate_frame_major(agg, y, frames, relu=relu), ref, **tol)


def test_frozen_tpool_frames_does_not_depend_on_the_thread_count():
    agg = _frozen_agg(64, torch.float32)
    y = torch.randn(16, 64, 20, 20)
    threads = torch.get_num_threads()
    outs = []
    try:
        with torch.no_grad():
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                outs.append(aggregate_frame_major(agg, y, 8, relu=True))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("bad, match", [
    (lambda y, a1, a2, k: (y.transpose(2, 3), 2, a1, a2, k, False), r"contiguous \(B\*T, C, H, W\)"),
    (lambda y, a1, a2, k: (y, 3, a1, a2, k, False), "not a multiple of frames=3"),
    (lambda y, a1, a2, k: (y, 2, a1[:-1], a2, k, False), r"contiguous \(C,\) CPU tensors of y's dtype"),
    (lambda y, a1, a2, k: (y, 2, a1, a2.double(), k, False), r"contiguous \(C,\) CPU tensors of y's dtype"),
])
def test_frozen_tpool_frames_refuses_bad_inputs_with_what_is_wrong(bad, match):
    y = torch.randn(4, 8, 5, 5)
    a1, a2, k = torch.randn(8), torch.randn(8), torch.randn(8)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.tada_native.tpool_frozen_frames(*bad(y, a1, a2, k))


def test_frozen_tpool_frames_steps_aside_for_training_and_gradients():
    agg = _frozen_agg(8, torch.float32)
    y = torch.randn(4, 8, 5, 5, requires_grad=True)
    for train, grad in ((True, False), (False, True)):
        agg.train(train)
        with torch.set_grad_enabled(grad), profile() as prof:
            out = aggregate_frame_major(agg, y, 2, relu=True)
        assert not any(e.key == "tada_native::tpool_frozen_frames" for e in prof.key_averages())
        assert (out >= 0).all()
    agg.eval()
    out = aggregate_frame_major(agg, y, 2, relu=True)
    out.sum().backward()  # the autograd composition: gradients reach the input
    assert y.grad is not None and y.grad.abs().sum() > 0


# -- the blocks that use it -----------------------------------------------------------------------------
def _calibrated(model):
    """Routing that does not start at alpha == 1 and BatchNorm statistics of real activations, so the
    fused head has something to get wrong."""
    torch.manual_seed(0)
    for m in model.modules():
        if hasattr(m, "heads") and isinstance(m.heads, nn.Module):
            for p in m.heads.parameters():
                nn.init.normal_(p, std=0.05)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
        model(torch.randn(2, 3, 4, 64, 64))
    return model.eval()


@pytest.mark.parametrize("name", ["tada2d_r_mini", "tada_slowonly_r50"])
def test_blocks_fuse_at_inference_and_match_their_layers(name):
    model = _calibrated(tada.create_model(name, num_classes=5))
    tada_blocks = sum(isinstance(getattr(m, "conv2", None), TAdaConv2d) for m in model.modules())
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad(), profile() as prof:
        fused = model(x)
    tpools = sum(isinstance(getattr(m, "agg", None), FrameAggregation) for m in model.modules())
    counts = {e.key: e.count for e in prof.key_averages()}
    assert tada_blocks > 0  # every TAda bottleneck took the fused head, every T-Pool the fused T-Pool + ReLU
    assert counts.get("tada_native::bn_relu_scale") == tada_blocks
    assert counts.get("tada_native::tpool_frozen_frames", 0) == tpools and tpools in (0, tada_blocks)
    with torch.enable_grad():  # eval mode with autograd on: the layers one by one
        ref = model(x)
    assert torch.allclose(fused, ref, rtol=1e-4, atol=1e-5)


def test_block_fusion_is_an_inference_only_path():
    model = _calibrated(tada.create_model("tada2d_r_mini", num_classes=5)).train()
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad(), profile() as prof:
        model(x)
    assert not any(e.key == "tada_native::bn_relu_scale" for e in prof.key_averages())
    model.eval()
    y = model(x)  # eval with autograd on: no fusion, gradients flow
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_an_exported_head_runs_the_layers():
    """Under torch.export the head declines (the native kernels have no symbolic form): the graph holds
    the norm, the ReLU and the TAdaConv as they are, and computes what they compute."""
    bn, conv = _layer(dtype=torch.float32)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.conv = bn, conv

        def forward(self, z):
            out = self.conv.forward_after_bn_relu(z, self.bn, 2)
            return _reference(self.conv, self.bn, z, 2) if out is None else batch_to_frames(out, 2, 2)

    z = torch.randn(4, 16, 8, 8)
    head = Head().eval()
    with torch.no_grad():
        program = torch.export.export(head, (z,))
        ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        assert not any("tada_native" in op for op in ops)
        assert torch.allclose(program.module()(z), head(z), rtol=1e-5, atol=1e-6)


def test_forward_hooks_see_their_calls():
    """A hook on a layer the fused head would skip keeps that block on the layer-by-layer path (so
    ``tada.engine.explain.calibrations`` records every routed alpha under no_grad); the other blocks
    still fuse, and the result is the same."""
    from tada.engine.explain import calibrations

    model = _calibrated(tada.create_model("tada2d_r_mini", num_classes=5))
    blocks = [m for m in model.modules() if isinstance(getattr(m, "conv2", None), TAdaConv2d)]
    x = torch.randn(1, 3, 4, 64, 64)
    seen = []
    handle = blocks[1].conv2.routing.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad(), profile() as prof:
            hooked = model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    assert sum(e.count for e in prof.key_averages() if e.key == "tada_native::bn_relu_scale") == len(blocks) - 1
    with torch.no_grad():
        assert torch.allclose(hooked, model(x), rtol=1e-4, atol=1e-5)
        alphas = calibrations(model, x)
    assert len(alphas) == len(blocks) and all((a - 1).abs().max() > 1e-4 for a in alphas.values())
