"""Every routing name on every TAda model family: ConvNeXt (``tada=``), TAdaFormer (``tada_routing=``),
``tadaify(routing=)`` and the plug-in backbones (``routing=`` of ``tada_r3d_r50`` & co.).

For each family and each name of :func:`tada.nn.routing_names`: with ``init="ones"`` the TAda model
equals its plain counterpart (same weights) at init, with ``init="random"`` it does not (the control
that shows the comparison can fail); backward reaches the routing, whose tensors are new by design;
an unknown name is refused naming the valid ones. Tiny configurations only.
"""
import copy

import pytest
import timm
import torch

import tada
from model_testing import randomise_bn, rel_err
from tada.models import load_pretrained, tadaify
from tada.models.convnext import FrameConv2d
from tada.models.vit import VideoViT
from tada.nn import (DynamicCalibration, LearnableCalibration, RouteFuncAttn, RouteFuncMLP, TAdaConv2d, TAdaConv3d,
                     TAMCalibration, routing_names)

NAMES = routing_names()
GENERATORS = tuple(n for n in NAMES if n not in ("v1", "v2"))
CLASSES = {"v1": RouteFuncMLP, "v2": RouteFuncAttn, "learnable": LearnableCalibration,
           "learnable_t": LearnableCalibration, "dynamic": DynamicCalibration, "dynamic_t": DynamicCalibration,
           "tam_global": TAMCalibration, "tam_local_global": TAMCalibration}
EXACT, DIFFERS = 1e-5, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models, one thread


def test_the_generators_are_all_the_names_but_v1_v2():
    assert set(CLASSES) == set(NAMES) and len(GENERATORS) == 6


def _clip(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _routings(model):
    return [m.routing for m in model.modules() if isinstance(m, (TAdaConv2d, TAdaConv3d))]


def _check_routings(model, name, init):
    rs = _routings(model)
    assert rs and all(type(r) is CLASSES[name] for r in rs), {type(r).__name__ for r in rs}
    if name in GENERATORS:
        assert all(r.init == init for r in rs)
    elif name == "v2":
        assert all(r.zero_init == (init == "ones") for r in rs)


def _check_exact_or_not(out, ref, init):
    err = rel_err(out, ref)
    if init == "ones":
        assert err < EXACT, err
    else:
        assert err > DIFFERS, err


def _check_backward(model, out, expect_new=()):
    """The routing's parameters all get a gradient, each routing a non-zero one, and they (and only
    new-by-design tensors) are in ``new_parameter_names()``."""
    out.logsumexp(1).sum().backward()
    named = dict(model.named_parameters())
    routing = {n: p for n, p in named.items() if ".routing." in n}
    assert routing
    missing = [n for n, p in routing.items() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in routing.values())
    for r in _routings(model):
        assert sum(p.grad.abs().sum() for p in r.parameters()) > 0, type(r).__name__
    new = model.new_parameter_names()
    assert set(routing) <= new
    assert all(".routing." in n or any(s in n for s in expect_new) for n in new), sorted(new)[:5]


def _check_unknown(build):
    with pytest.raises(ValueError) as e:
        build("tam_locl_global")
    msg = str(e.value)
    assert "tam_locl_global" in msg and all(repr(n) in msg for n in NAMES), msg


# -- ConvNeXt: tada=<name>, routing_kwargs ---------------------------------------------------------------------------------
def _tsn_convnext():
    torch.manual_seed(0)
    return tada.create_model("tsn_convnext_mini", num_classes=7, layer_scale_init=0.5).eval()


@pytest.mark.parametrize("init", ["ones", "random"])
@pytest.mark.parametrize("name", NAMES)
def test_convnext_equals_tsn_at_init(name, init):
    tsn = _tsn_convnext()
    torch.manual_seed(1)
    m = tada.create_model("tadaconvnextv2_mini", num_classes=7, tada=name, routing_kwargs={"init": init})
    report = load_pretrained(m, tsn.state_dict())  # strict: only the routing and T-Pool's norm2 are new
    assert set(report.new_by_design) == m.new_parameter_names()
    _check_routings(m, name, init)
    x = _clip(2, 3, 6, 32, 32)
    with torch.no_grad():
        # the tubelet stem (centre-initialised from the 2D one) sees frames 0, 2, 4
        _check_exact_or_not(m.eval()(x), tsn(x[:, :, ::2]), init)


@pytest.mark.parametrize("name", GENERATORS)
def test_convnext_backward_reaches_the_generator(name):
    torch.manual_seed(0)
    m = tada.create_model("tadaconvnextv2_mini", num_classes=5, tada=name, tubelet=False, layer_scale_init=1.0)
    _check_backward(m.train(), m(_clip(2, 3, 4, 32, 32)), expect_new=(".tpool.norm2.",))


def test_convnext_routing_kwargs_merge_and_errors():
    with torch.device("meta"):
        v1 = tada.create_model("tadaconvnextv2_mini", tada="v1", aggregation=False, routing_kwargs={"reduction": 2})
        v2 = tada.create_model("tadaconvnextv2_mini", routing_kwargs={"head_dim": 8, "init": "random"})
        default = tada.create_model("tadaconvnextv2_mini")
        gen = tada.create_model("tadaconvnextv2_mini", tada="dynamic", routing_kwargs={"reduction": 8, "frames": 4})
    assert all(r.reduction == 2 and r.kernels == (3, 3) for r in _routings(v1))
    assert all(r.head_dim == 8 and not r.zero_init for r in _routings(v2)) and v2.head_dim == 8
    assert all(r.head_dim == 16 and r.zero_init for r in _routings(default)) and default.routing_kwargs == {}
    assert all(r.reduction == 8 and r.frames == 4 for r in _routings(gen)) and gen.reduction is None
    _check_unknown(lambda n: tada.create_model("tadaconvnextv2_mini", tada=n))
    with pytest.raises(ValueError, match="kernels"):  # a V1 / V2 argument is not a generator's
        tada.create_model("tadaconvnextv2_mini", tada="learnable", routing_kwargs={"kernels": (3, 3)})
    with pytest.raises(ValueError, match="routing_kwargs"):  # the model's V1 / V2 width: say it in routing_kwargs
        tada.create_model("tadaconvnextv2_mini", tada="dynamic", reduction=4)
    with pytest.raises(ValueError, match="TAda"):
        tada.create_model("tsn_convnext_mini", routing_kwargs={"init": "ones"})
    with pytest.raises(ValueError, match="head_dim=24"):  # the effective V2 widths are checked
        tada.create_model("tadaconvnextv2_mini", routing_kwargs={"head_dim": 24})


# -- TAdaFormer: tada_routing=<name>, tada_routing_kwargs --------------------------------------------------------------------
def _small_vit(**kw):
    args = dict(width=128, layers=2, heads=2, patch_size=16, img_size=64, tada_head_dim=32, num_classes=10)
    return VideoViT(**{**args, **kw})


def _with_plain_branch_convs(model):
    """A copy of ``model`` whose TAda branches convolve with a plain per-frame depthwise conv (the same
    weights, no calibration): the TAdaFormer a calibration of exactly 1 gives."""
    plain = copy.deepcopy(model)
    for blk in plain.blocks:
        conv = blk.tada.conv
        frame = FrameConv2d(conv.in_channels, conv.out_channels, 3, padding=1, groups=conv.groups, bias=True)
        with torch.no_grad():
            frame.weight.copy_(conv.weight)
            frame.bias.copy_(conv.bias)
        blk.tada.conv = frame
    return plain


def _live_branches(model, seed=3):
    """The branch's last Linear is zero at init (the branch adds 0 whatever its routing): give it
    weights, as after training, so the routing's calibration reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in model.blocks:
            blk.tada.proj.weight.normal_(0, 0.5, generator=g)


@pytest.mark.parametrize("init", ["ones", "random"])
@pytest.mark.parametrize("name", NAMES)
def test_tadaformer_equals_its_plain_branch_model_at_init(name, init):
    torch.manual_seed(0)
    m = _small_vit(tada_routing=name, tada_routing_kwargs={"init": init}).eval()
    _check_routings(m, name, init)
    x = _clip(2, 3, 4, 64, 64)
    with torch.no_grad():
        tsn = _small_vit(tada=False).eval()
        load_pretrained(m, tsn.state_dict())  # CLIP-like 2D weights: the branches are new by design
        # the per-frame model on the frames the tubelet sees: exact whatever the routing (the branch adds 0)
        assert rel_err(m(x), tsn(x[:, :, ::2])) < EXACT
        _live_branches(m)
        _check_exact_or_not(m(x), _with_plain_branch_convs(m)(x), init)


@pytest.mark.parametrize("name", GENERATORS)
def test_tadaformer_backward_reaches_the_generator(name):
    torch.manual_seed(0)
    m = _small_vit(tada_routing=name, layers=1)
    _live_branches(m)
    _check_backward(m.train(), m(_clip(2, 3, 4, 32, 32)), expect_new=(".tada.",))
    assert all(".tada." in n for n in m.new_parameter_names())


def test_tadaformer_defaults_are_the_released_branch_and_errors():
    default, v2 = _small_vit(), _small_vit(tada_routing="v2", tada_routing_kwargs={})
    assert default.state_dict().keys() == v2.state_dict().keys()
    assert all(type(r) is RouteFuncAttn and r.head_dim == 32 and r.reduction == 2 and not r.zero_init
               for r in _routings(default))
    v1 = _small_vit(tada_routing="v1", tada_routing_kwargs={"kernels": (1, 3)})
    assert all(r.reduction == 2 and r.kernels == (1, 3) for r in _routings(v1))
    _check_unknown(lambda n: _small_vit(tada_routing=n))
    with pytest.raises(ValueError, match="head_dim"):
        _small_vit(tada_routing="learnable", tada_routing_kwargs={"head_dim": 32})
    with pytest.raises(ValueError, match="tada=True"):
        _small_vit(tada=False, tada_routing="dynamic")
    with pytest.raises(ValueError, match="tada_routing='v2'"):  # a released (V2) checkpoint into another routing
        _small_vit(tada_routing="dynamic").checkpoint_filter_fn({"backbone.conv1.weight": torch.zeros(1)})


# -- tadaify(routing=<name>) ------------------------------------------------------------------------------------------------
TADAIFY_SOURCES = ["resnet18", "convnext_atto"]  # dense convs (cin) with an RGB stem; depthwise convs with bias (cout)


def _src2d(name):
    torch.manual_seed(0)
    return randomise_bn(timm.create_model(name, pretrained=False, num_classes=10), torch.Generator().manual_seed(0)).eval()


def _per_frame(model2d, x):
    b, c, t, h, w = x.shape
    return model2d(x.transpose(1, 2).reshape(b * t, c, h, w)).reshape(b, t, -1).mean(1)


@pytest.mark.parametrize("init", ["ones", "random"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source", TADAIFY_SOURCES)
def test_tadaify_equals_the_2d_model_per_frame_at_init(source, name, init):
    src = _src2d(source)
    m = tadaify(src, routing=name, routing_kwargs={"init": init}).eval()
    _check_routings(m, name, init)
    x = _clip(2, 3, 4, 32, 32)
    with torch.no_grad():
        _check_exact_or_not(m(x), _per_frame(src, x), init)


@pytest.mark.parametrize("name", GENERATORS)
def test_tadaify_backward_reaches_the_generator(name):
    m = tadaify(_src2d("resnet18"), routing=name).train()
    _check_backward(m, m(_clip(2, 3, 3, 32, 32)))
    assert m.new_parameter_names() == {n for n in m.state_dict() if ".routing." in n}


def test_tadaify_routing_kwargs_and_errors():
    src = _src2d("resnet18")
    dyn = tadaify(src, routing="dynamic_t")
    assert dyn.backbone.conv1.routing.reduction == 3  # capped at the RGB stem's 3 inputs
    assert dyn.backbone.layer1[0].conv1.routing.reduction == 4  # the generator's own default
    lrn = tadaify(src, routing="learnable_t", routing_kwargs={"frames": 4})
    assert all(r.frames == 4 for r in _routings(lrn))
    _check_unknown(lambda n: tadaify(src, routing=n))
    with pytest.raises(ValueError, match="kernels"):
        tadaify(src, routing="dynamic", routing_kwargs={"kernels": (3, 3)})
    with pytest.raises(ValueError, match="tam_"):  # TAM calibrates per input channel: not a dense conv's cout
        tadaify(src, routing="tam_global", cal_dim="cout")


# -- plug-in backbones: create_model("tada_*", routing=<name>, routing_kwargs) ---------------------------------------
SMALL3D = dict(depths=(1, 1, 1, 1), widths=(64, 128, 256, 512), stem_width=32)
PLAIN_TADA = [
    ("r2plus1d_r50", "tada_r2plus1d_r50", {}),
    ("r2plus1d_r50", "tada_r2plus1d_r50_2d1d", {}),
    ("r3d_r50", "tada_r3d_r50", {}),
    ("slowonly_r50", "tada_slowonly_r50", {}),
    ("slowfast_r50_4x16", "tada_slowfast_r50_4x16", {"tada_fast": True}),
]


def _arch(extra):  # SlowFast's fast pathway is 1/8 as wide: wider, so its TAdaConvs have 4 inputs
    return dict(SMALL3D, widths=(128, 256, 512, 1024), stem_width=64) if extra else SMALL3D


@pytest.mark.parametrize("init", ["ones", "random"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("plain_name, tada_name, extra", PLAIN_TADA, ids=[t for _, t, _ in PLAIN_TADA])
def test_plug_in_backbone_equals_the_plain_one_at_init(plain_name, tada_name, extra, name, init):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    plain = randomise_bn(tada.create_model(plain_name, num_classes=5, **_arch(extra)), g).eval()
    m = tada.create_model(tada_name, num_classes=5, routing=name, routing_kwargs={"init": init}, **_arch(extra), **extra)
    report = load_pretrained(m, plain.state_dict())  # strict: only the routing is new
    assert set(report.new_by_design) == m.new_parameter_names()
    assert all(".routing." in k for k in report.new_by_design)
    _check_routings(m, name, init)
    x = _clip(2, 3, 16 if "slowfast" in plain_name else 4, 32, 32)
    with torch.no_grad():
        _check_exact_or_not(m.eval()(x), plain(x), init)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("tada_name", ["tada_r3d_r50", "tada_r2plus1d_r50_2d1d"])
def test_plug_in_backbone_backward_reaches_the_generator(tada_name, name):
    torch.manual_seed(0)
    m = tada.create_model(tada_name, num_classes=5, routing=name, **SMALL3D).train()
    _check_backward(m, m(_clip(2, 3, 4, 32, 32)))


def test_plug_in_backbone_defaults_and_errors():
    with torch.device("meta"):
        default = tada.create_model("tada_slowonly_r50")
        dyn = tada.create_model("tada_r3d_r50", routing="dynamic_t", routing_kwargs={"reduction": 8, "frames": 4})
    assert all(type(r) is RouteFuncMLP and r.reduction == 4 for r in _routings(default))
    assert all(type(r) is DynamicCalibration and r.reduction == 8 and r.frames == 4 for r in _routings(dyn))
    assert all(isinstance(m, TAdaConv3d) for m in dyn.modules() if isinstance(m, (TAdaConv2d, TAdaConv3d)))
    _check_unknown(lambda n: tada.create_model("tada_r3d_r50", routing=n, **SMALL3D))
    with pytest.raises(ValueError, match="TAda variants"):
        tada.create_model("r3d_r50", routing="dynamic")
    with pytest.raises(ValueError, match="TAda variants"):
        tada.create_model("slowfast_r50_8x8", routing_kwargs={"init": "ones"})
    with pytest.raises(ValueError, match="global_context"):
        tada.create_model("tada_slowonly_r50", routing="learnable", routing_kwargs={"global_context": False},
                          **SMALL3D)
