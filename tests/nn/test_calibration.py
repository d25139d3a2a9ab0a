"""Calibration generators (tada.nn.calibration): exact at init, order (in)sensitivity, frame counts, shares."""
import math

import pytest
import torch
import torch.nn as nn

from tada.nn import (CALIBRATIONS, PartialCalibration, TAdaConv2d, TAdaConv3d, build_routing, routing_names,
                     tada_conv2d)
from tada.nn.calibration import temporally_varying

B, C, T, H, W = 2, 16, 6, 7, 7
FIXED = ("learnable", "dynamic")
VARYING = ("learnable_t", "dynamic_t", "tam_local_global")


def per_frame(conv, x):
    b, c, t, h, w = x.shape
    y = conv(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


# (conv, TAda kwargs): a dense cin conv that strides, and a depthwise cout conv with bias calibration
LAYERS = {
    "dense-cin": (lambda: nn.Conv2d(C, 24, 3, stride=2, padding=1, bias=False), dict(cal_dim="cin")),
    "depthwise-cout": (lambda: nn.Conv2d(C, C, 5, padding=2, groups=C, bias=True),
                       dict(cal_dim="cout", bias_calibration=True)),
}


def routed(name, init="ones", **kw):
    return build_routing(name, C, C, kwargs={"init": init, **kw})


@pytest.mark.parametrize("name", CALIBRATIONS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_ones_init_equals_the_plain_conv_and_random_init_does_not(name, layer):
    torch.manual_seed(0)
    make, kw = LAYERS[layer]
    conv = make()
    x = torch.randn(B, C, T, H, W)
    ref = per_frame(conv, x)
    out = TAdaConv2d.from_conv2d(conv, routing=name, routing_kwargs={"init": "ones"}, **kw)(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out - ref).abs().max()
    torch.manual_seed(1)
    rand = TAdaConv2d.from_conv2d(conv, routing=name, routing_kwargs={"init": "random"}, **kw)(x)
    assert (rand - ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", CALIBRATIONS)
def test_alpha_shapes_and_exact_ones_at_any_frame_count(name):
    gen = routed(name, frames=8)
    for t in (1, 3, 8, 13):
        a = gen(torch.randn(B, C, t, H, W))
        assert a.shape == (B, C, t)
        assert torch.equal(a, torch.ones_like(a))


@pytest.mark.parametrize("name", CALIBRATIONS)
def test_bias_head_and_pair_forms(name):
    if name.startswith("tam"):
        gen = build_routing(name, C, C, bias_channels=C, kwargs={"init": "random"})
        a, beta = gen(torch.randn(B, C, T, H, W))
        assert a.shape == beta.shape == (B, C, T)
        with pytest.raises(ValueError, match="per input channel"):
            build_routing(name, C, (C, 24))
        return
    gen = build_routing(name, C, (C, 24), bias_channels=24, kwargs={"init": "random"})
    (a_in, a_out), beta = gen(torch.randn(B, C, T, H, W))
    assert a_in.shape == (B, C, T) and a_out.shape == beta.shape == (B, 24, T)


def _reversal_gap(gen, x):
    """max |alpha(reversed clip) - flip(alpha(clip))|: 0 when the calibration cannot tell the order."""
    with torch.no_grad():
        a = gen(x)
        a_rev = gen(x.flip(2))
    return (a_rev - a.flip(-1)).abs().max().item(), a


@pytest.mark.parametrize("name", FIXED)
def test_temporally_fixed_calibrations_cannot_tell_a_clip_from_its_reversal(name):
    torch.manual_seed(0)
    gen = routed(name, init="random").eval()
    x = torch.randn(B, C, T, H, W)
    gap, a = _reversal_gap(gen, x)
    assert gap < 1e-6
    assert torch.allclose(a, a[..., :1].expand_as(a))  # one alpha for every frame
    assert not temporally_varying(name)


@pytest.mark.parametrize("name", VARYING)
def test_temporally_varying_calibrations_tell_a_clip_from_its_reversal(name):
    torch.manual_seed(0)
    x = torch.randn(B, C, T, H, W)
    control, _ = _reversal_gap(routed(name, init="ones").eval(), x)  # all ones: nothing to tell
    assert control == 0
    gap, a = _reversal_gap(routed(name, init="random").eval(), x)
    assert gap > 1e-3
    assert (a - a[..., :1]).abs().max() > 1e-3  # a different alpha per frame
    assert temporally_varying(name)


def test_tam_global_is_constant_over_time_but_reads_the_order():
    torch.manual_seed(0)
    gen = routed("tam_global", init="random").eval()
    x = torch.randn(B, C, T, H, W)
    gap, a = _reversal_gap(gen, x)
    assert torch.allclose(a, a[..., :1].expand_as(a))
    assert gap > 1e-3  # its MLP over the frame sequence is not symmetric in time
    assert not temporally_varying("tam_global")


def test_frame_resampling_of_learnable_t():
    gen = routed("learnable_t", init="random", frames=4)
    p = gen.params[0].detach()[:, :]  # (C, 4)
    x8 = torch.randn(1, C, 4, 3, 3)
    assert torch.allclose(gen(x8)[0], 1 + p)
    a7 = gen(torch.randn(1, C, 7, 3, 3))[0]  # 7 frames: every other one is a midpoint of two parameters
    assert torch.allclose(a7[:, 0], 1 + p[:, 0]) and torch.allclose(a7[:, -1], 1 + p[:, -1])
    assert torch.allclose(a7[:, 1], 1 + 0.5 * (p[:, 0] + p[:, 1]))


def test_dynamic_is_an_mlp_of_the_clip_descriptor():
    torch.manual_seed(0)
    gen = routed("dynamic", init="random", reduction=2)
    x = torch.randn(B, C, T, H, W)
    g = x.mean(dim=(2, 3, 4))
    expect = 1 + gen.fc2[0](torch.relu(gen.fc1(g)))
    assert torch.allclose(gen(x), expect[..., None].expand(B, C, T), atol=1e-6)


def test_learnable_parameters_train_and_fixed_ones_stay_tied_over_time():
    torch.manual_seed(0)
    conv = TAdaConv2d(C, C, 3, padding=1, routing="learnable_t", routing_kwargs={"frames": T})
    x = torch.randn(B, C, T, H, W)
    conv(x).square().mean().backward()
    g = conv.routing.params[0].grad
    assert g.shape == (C, T) and g.abs().sum() > 0


@pytest.mark.parametrize("name", CALIBRATIONS)
def test_tadaconv3d_takes_every_generator(name):
    torch.manual_seed(0)
    conv3 = nn.Conv3d(C, C, 3, padding=1, bias=False)
    x = torch.randn(B, C, T, H, W)
    tada = TAdaConv3d.from_conv3d(conv3, routing=name, routing_kwargs={"init": "ones"})
    assert torch.allclose(tada(x), conv3(x), atol=1e-5)


# -- the share of calibrated channels (Fig. 4) -----------------------------------------------------
def _mlp_params(c, n, r=4):
    """RouteFuncMLP(c -> n) by hand: g 1x1 (c*c + c), a k3 (c*(c/r)*3 + c/r), BN (2 * c/r), b k3 (c/r * n * 3)."""
    h = c // r
    return c * c + c + c * h * 3 + h + 2 * h + h * n * 3


@pytest.mark.parametrize("fraction,calibrated", [(1 / 64, 1), (1 / 16, 1), (1 / 4, 4), (1 / 2, 8), (1.0, 16)])
def test_cal_fraction_parameter_counts_and_untouched_channels(fraction, calibrated):
    torch.manual_seed(0)
    conv = TAdaConv2d(C, 24, 3, padding=1, routing="v1", cal_fraction=fraction)
    n_routing = sum(p.numel() for p in conv.routing.parameters())
    assert n_routing == _mlp_params(C, calibrated)
    with torch.no_grad():
        for p in conv.routing.parameters():  # random routing: alpha far from 1 on the calibrated channels
            p.normal_(0, 0.5)
    x = torch.randn(B, C, T, H, W)
    a = conv.routing(x)
    assert a.shape == (B, C, T)
    assert torch.equal(a[:, calibrated:], torch.ones_like(a[:, calibrated:]))
    assert (a[:, :calibrated] - 1).abs().max() > 1e-2
    plain = nn.Conv2d(C, 24, 3, padding=1, bias=False)
    plain.weight.data.copy_(conv.weight)
    x0 = x.clone()
    x0[:, :calibrated] = 0  # only the untouched input channels carry signal: the plain conv's output
    assert torch.allclose(conv(x0), per_frame(plain, x0), atol=1e-5)
    assert not torch.allclose(conv(x), per_frame(plain, x), atol=1e-3)


def test_cal_fraction_on_output_channels_leaves_the_rest_plain():
    torch.manual_seed(0)
    dw = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=True)
    tada = TAdaConv2d.from_conv2d(dw, cal_dim="cout", bias_calibration=True, routing="dynamic_t",
                                  routing_kwargs={"init": "random"}, cal_fraction=0.25)
    x = torch.randn(B, C, T, H, W)
    y, ref = tada(x), per_frame(dw, x)
    assert torch.allclose(y[:, 4:], ref[:, 4:], atol=1e-6)
    assert (y[:, :4] - ref[:, :4]).abs().max() > 1e-3
    assert isinstance(tada.routing, PartialCalibration)


def test_partial_calibration_keeps_the_pair_form():
    gen = build_routing("learnable", C, (C, 24), bias_channels=24, kwargs={"init": "random"}, cal_fraction=0.5)
    (a_in, a_out), beta = gen(torch.randn(B, C, T, H, W))
    assert a_in.shape == (B, C, T) and a_out.shape == beta.shape == (B, 24, T)
    assert torch.equal(a_in[:, 8:], torch.ones(B, 8, T)) and torch.equal(a_out[:, 12:], torch.ones(B, 12, T))
    assert torch.equal(beta[:, 12:], torch.ones(B, 12, T))


def test_functional_use_with_a_generated_alpha():
    torch.manual_seed(0)
    gen = routed("tam_local_global", init="random").eval()
    x = torch.randn(B, C, T, H, W)
    w = torch.randn(8, C, 3, 3)
    fast = tada_conv2d(x, w, gen(x), padding=1, impl="fast")
    grouped = tada_conv2d(x, w, gen(x), padding=1, impl="grouped")
    assert torch.allclose(fast, grouped, atol=1e-5)


# -- errors ---------------------------------------------------------------------------------------------
def test_names_and_errors():
    assert set(CALIBRATIONS) <= set(routing_names()) and {"v1", "v2"} <= set(routing_names())
    with pytest.raises(ValueError, match="unknown routing 'nope'.*learnable"):
        TAdaConv2d(C, C, 3, routing="nope")
    with pytest.raises(ValueError, match="init must be one of"):
        routed("dynamic", init="zeros")
    with pytest.raises(ValueError, match="bad routing_kwargs for routing 'learnable'"):
        routed("learnable", kernels=(3, 3))
    with pytest.raises(ValueError, match="fixes"):
        routed("dynamic", temporal=True)
    with pytest.raises(ValueError, match="cal_fraction"):
        TAdaConv2d(C, C, 3, cal_fraction=0)
    with pytest.raises(ValueError, match="cal_fraction only applies"):
        TAdaConv2d(C, C, 3, routing=None, cal_fraction=0.5)
    with pytest.raises(ValueError, match="init or zero_init"):
        routed("v1", zero_init=True)
    v1 = routed("v1", init="random")
    assert (v1(torch.randn(B, C, T, H, W)) - 1).abs().max() > 1e-3  # init maps onto zero_init=False
    assert math.isclose(TAdaConv2d(C, C, 3, cal_fraction=0.5).cal_fraction, 0.5)
