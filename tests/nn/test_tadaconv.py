"""TAdaConv2d and its routing functions: exact at init, order-sensitive once trained, switches, errors."""
import pytest
import torch
import torch.nn as nn

from tada.nn import RouteFuncAttn, RouteFuncMLP, TAdaConv2d, tada_conv2d
from nn_testing import randomise  # tests/nn/nn_testing.py

B, T, H, W = 2, 5, 9, 8


def per_frame(conv, x):
    b, c, t, h, w = x.shape
    y = conv(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)




# (conv, TAda kwargs): dense cin conv; depthwise cout conv with bias and bias calibration
LAYERS = {
    "dense-cin": (lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), dict(cal_dim="cin")),
    "depthwise-cout": (
        lambda: nn.Conv2d(16, 16, 7, padding=3, groups=16, bias=True),
        dict(cal_dim="cout", bias_calibration=True),
    ),
    "cin_cout": (lambda: nn.Conv2d(16, 8, 3, padding=1, bias=True), dict(cal_dim="cin_cout")),
}
ROUTINGS = {
    "v1": dict(routing="v1"),
    "v2": dict(routing="v2", routing_kwargs=dict(head_dim=4)),
}


@pytest.mark.parametrize("routing", ["v1", "v2", "none"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_equals_per_frame_conv2d_at_init(layer, routing):
    torch.manual_seed(0)
    make_conv, kw = LAYERS[layer]
    conv = make_conv()
    if routing == "none":
        tada = TAdaConv2d.from_conv2d(conv, routing=None, **kw)
    else:
        tada = TAdaConv2d.from_conv2d(conv, **ROUTINGS[routing], **kw)
    x = torch.randn(B, conv.in_channels, T, H, W)
    ref = per_frame(conv, x)
    if routing == "none":
        ones = lambda c: torch.ones(B, c, T)  # noqa: E731
        alpha = {"cin": ones(16), "cout": ones(16), "cin_cout": (ones(16), ones(8))}[kw["cal_dim"]]
        beta = ones(16) if kw.get("bias_calibration") else None
        out = tada(x, alpha=alpha, bias_alpha=beta)
    else:
        out = tada(x)
    assert out.shape == ref.shape
    # exact up to where an un-fused bias add rounds differently from the conv's fused one
    atol = 0 if conv.bias is None else 1e-6
    assert torch.allclose(out, ref, rtol=0, atol=atol), (out - ref).abs().max()


def test_dense_cin_at_init_is_bitwise_equal():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=True)
    x = torch.randn(B, 16, T, H, W)
    assert torch.equal(TAdaConv2d.from_conv2d(conv)(x), per_frame(conv, x))


def test_v2_without_zero_init_is_not_identity():
    # the control for the test above: a non-zero-initialised routing does change the output
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=True)
    tada = TAdaConv2d.from_conv2d(conv, cal_dim="cout", routing="v2", routing_kwargs=dict(head_dim=4, zero_init=False))
    x = torch.randn(B, 16, T, H, W)
    assert not torch.allclose(tada(x), per_frame(conv, x), atol=1e-3)


def test_routing_gets_gradient_at_init():
    # zero-initialised last layer, yet the gradient reaches it: the calibration can learn
    torch.manual_seed(0)
    for routing in ROUTINGS.values():
        tada = TAdaConv2d(8, 8, 3, padding=1, **routing)
        tada(torch.randn(B, 8, T, H, W)).square().sum().backward()
        assert tada.routing.heads.b.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_module_fast_equals_grouped_with_routing(layer, routing):
    torch.manual_seed(0)
    make_conv, kw = LAYERS[layer]
    fast = randomise(TAdaConv2d.from_conv2d(make_conv(), impl="fast", **ROUTINGS[routing], **kw)).double().eval()
    grouped = TAdaConv2d.from_conv2d(make_conv(), impl="grouped", **ROUTINGS[routing], **kw).double().eval()
    grouped.load_state_dict(fast.state_dict())
    x = torch.randn(B, fast.in_channels, T, H, W, dtype=torch.float64)
    assert torch.allclose(fast(x), grouped(x), rtol=1e-10, atol=1e-10)


def time_reversal_gap(routing: nn.Module, x):
    """How far calibration(reverse(x)) is from reverse(calibration(x))."""
    routing.eval()
    with torch.no_grad():
        a = routing(x)
        a_rev = routing(x.flip(2))
    return (a_rev - a.flip(-1)).abs().max().item()


def _routings(kernels, global_context=True):
    return {
        "v1": RouteFuncMLP(16, kernels=kernels, global_context=global_context),
        "v2": RouteFuncAttn(16, kernels=kernels, head_dim=4),
    }


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_calibration_depends_on_frame_order(kind):
    x = torch.randn(B, 16, T, H, W, generator=torch.Generator().manual_seed(1))
    routing = randomise(_routings((3, 3))[kind])
    assert time_reversal_gap(routing, x) > 1e-2


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_order_blind_control(kind):
    # with temporal kernels of size 1 (V1 also without its global term, which is order-free anyway)
    # nothing sees order: the gap vanishes, so the test above measures a real property
    x = torch.randn(B, 16, T, H, W, generator=torch.Generator().manual_seed(1))
    routing = randomise(_routings((1, 1))[kind])
    assert time_reversal_gap(routing, x) < 1e-5


def test_v1_switches_shapes_and_sizes():
    x = torch.randn(B, 16, T, H, W)
    for kw in [dict(linear=True), dict(kernels=(5, 7)), dict(global_context=False), dict(reduction=8)]:
        rf = RouteFuncMLP(16, 24, **kw)
        assert rf(x).shape == (B, 24, T)
        assert torch.equal(rf(x), torch.ones(B, 24, T))  # zero-init => exactly 1
    assert RouteFuncMLP(16, global_context=False).g is None
    assert RouteFuncMLP(16, linear=True).a is None
    assert RouteFuncMLP(16, reduction=8).a.out_channels == 2
    assert RouteFuncMLP(16, kernels=(5, 7)).heads.b.kernel_size == (7,)
    rf = RouteFuncMLP(16, 24, zero_init=False)
    assert not torch.equal(rf(x), torch.ones(B, 24, T))
    a_in, a_out = RouteFuncMLP(16, (16, 24))(x)
    assert a_in.shape == (B, 16, T) and a_out.shape == (B, 24, T)
    alpha, beta = RouteFuncMLP(16, 24, bias_channels=24)(x)
    assert alpha.shape == beta.shape == (B, 24, T)


def test_operator_parameter_count_matches_paper_table1():
    # Table 1: TAdaConv with C_in = C_out = 64, K = 3, r = 4 has 43,008 weights (the base kernel
    # plus the two temporal convs of the routing; biases and norm affine terms not counted)
    tada = TAdaConv2d(64, 64, 3, padding=1, routing_kwargs=dict(global_context=False))
    n = sum(p.numel() for p in tada.parameters() if p.dim() > 1)
    assert n == 43_008


def test_v2_attention_scale_and_heads():
    rf = RouteFuncAttn(96, head_dim=12)
    assert rf.num_heads == 4 and rf.scale == pytest.approx(48 ** -0.5)  # c'^-0.5, not head_dim^-0.5
    alpha, beta = RouteFuncAttn(96, 96, head_dim=48, bias_channels=96)(torch.randn(1, 96, 4, 3, 3))
    assert torch.equal(alpha, torch.ones(1, 96, 4)) and torch.equal(beta, torch.ones(1, 96, 4))
    rf = RouteFuncAttn(96, head_dim=48, zero_init=False)
    assert not torch.allclose(rf(torch.randn(1, 96, 4, 3, 3)), torch.ones(1, 96, 4))


def test_v2_attention_matches_torch_multihead_attention():
    # independent check of the attention maths against nn.MultiheadAttention (same scale)
    torch.manual_seed(0)
    rf = RouteFuncAttn(32, head_dim=4).eval()
    c = 16
    mha = nn.MultiheadAttention(c, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(rf.qkv.weight)
        mha.in_proj_bias.copy_(rf.qkv.bias)
        mha.out_proj.weight.copy_(rf.proj.weight)
        mha.out_proj.bias.copy_(rf.proj.bias)
    h = torch.randn(3, 6, c)
    # nn.MultiheadAttention scales by head_dim**-0.5; pre-scale q to emulate c'**-0.5
    ratio = (c ** -0.5) / (4 ** -0.5)
    with torch.no_grad():
        mha.in_proj_weight[:c] *= ratio
        mha.in_proj_bias[:c] *= ratio
    ref, _ = mha(h, h, h, need_weights=False)
    assert torch.allclose(rf._attention(h), ref, atol=1e-6)


def test_k2_and_cin_cout_modules_run_and_train():
    x = torch.randn(B, 8, T, H, W)
    for kw in [dict(cal_dim="k2"), dict(cal_dim="cin_cout"), dict(cal_dim="k2", routing="v2", routing_kwargs=dict(head_dim=4))]:
        m = TAdaConv2d(8, 12, 3, padding=1, **kw)
        y = m(x)
        assert y.shape == (B, 12, T, H, W)
        y.sum().backward()
        assert m.weight.grad is not None


def _x():
    return torch.randn(2, 4, 3, 8, 8)


def _w(*shape):
    return torch.randn(*(shape or (4, 4, 3, 3)))


def _a(*shape):
    return torch.ones(*(shape or (2, 4, 3)))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: tada_conv2d(torch.randn(2, 4, 8, 8), _w(), _a(2, 4, 1)), ValueError, "B, C_in, T, H, W"),
        (lambda: tada_conv2d(_x(), _w(4, 3, 3, 3), _a()), ValueError, "input channels"),
        (lambda: tada_conv2d(_x(), _w(4, 4, 3), _a()), ValueError, "Conv2d weight"),
        (lambda: tada_conv2d(_x(), _w(), _a(2, 4, 5)), ValueError, r"alpha has shape \(2, 4, 5\)"),
        (lambda: tada_conv2d(_x(), _w(), _a(2, 4)), ValueError, "alpha must have shape"),
        (lambda: tada_conv2d(_x(), _w(), _a(), cal_dim="cx"), ValueError, "unknown cal_dim 'cx'"),
        (lambda: tada_conv2d(_x(), _w(), _a(2, 9, 3), cal_dim="k2", impl="fast"), ValueError, "k2"),
        (lambda: tada_conv2d(_x(), _w(), _a(), impl="cuda"), ValueError, "unknown impl"),
        (lambda: tada_conv2d(_x(), _w(), _a(), bias_alpha=_a()), ValueError, "bias is None"),
        (lambda: tada_conv2d(_x(), _w(), _a(), cal_dim="cin_cout"), TypeError, "pair"),
        (lambda: tada_conv2d(_x(), _w(), [[1.0]]), TypeError, "alpha must be a torch.Tensor"),
        (lambda: tada_conv2d(_x().numpy(), _w(), _a()), TypeError, "x must be a torch.Tensor"),
        (lambda: tada_conv2d(_x(), _w(), _a(), bias=_a(3)), ValueError, r"bias must have shape \(4,\)"),
        (lambda: TAdaConv2d(8, 8, 3, cal_dim="cout2"), ValueError, "unknown cal_dim"),
        (lambda: TAdaConv2d(8, 8, 3, routing="v3"), ValueError, "unknown routing"),
        (lambda: TAdaConv2d(8, 8, 3, bias_calibration=True), ValueError, "bias=True"),
        (lambda: TAdaConv2d(8, 6, 3, groups=4), ValueError, "divisible by groups"),
        (lambda: TAdaConv2d(8, 8, 3, routing="v2"), ValueError, "head_dim"),
        (lambda: TAdaConv2d(8, 8, 3, routing_kwargs=dict(in_channels=3)), ValueError, "may not set"),
        (lambda: TAdaConv2d(8, 8, 3)(torch.randn(2, 8, 9, 9)), ValueError, "B, C_in, T, H, W"),
        (lambda: TAdaConv2d(8, 8, 3, routing=None)(torch.randn(2, 8, 3, 9, 9)), ValueError, "pass alpha"),
        (lambda: TAdaConv2d.from_conv2d(nn.Conv3d(3, 3, 3)), TypeError, "nn.Conv2d"),
        (lambda: TAdaConv2d.from_conv2d(nn.Conv2d(3, 3, 3, padding_mode="reflect")), ValueError, "zero padding"),
        (lambda: RouteFuncMLP(8, kernels=(2, 3)), ValueError, "odd"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_routing_descriptor_of_a_channels_last_view_equals_the_plain_mean():
    """The routing reads the per-frame spatial means of a (B, C, T, H, W) view of channels-last memory
    (ConvNeXt's layout) in that layout; the values are those of the plain mean up to rounding."""
    from tada.nn.routing import _descriptor

    cl = torch.randn(2, 5, 9, 8, 16, dtype=torch.float64)  # (B, T, H, W, C) memory
    x = cl.permute(0, 4, 1, 2, 3)
    assert not x.is_contiguous()
    ref = x.contiguous().mean(dim=(3, 4))
    assert torch.allclose(_descriptor(x), ref, rtol=1e-14, atol=1e-15)
    assert torch.allclose(_descriptor(x.contiguous()), ref, rtol=0, atol=0)
    xf = torch.randn(2, 5, 16, 9, 8).transpose(1, 2)  # frame-major (TAda2D's layout): the plain path
    assert torch.equal(_descriptor(xf), xf.mean(dim=(3, 4)))
