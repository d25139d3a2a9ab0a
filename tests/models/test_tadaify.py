"""``tada.tadaify``: TAdaConv as a plug-in for timm / torchvision 2D CNNs (random weights, small inputs)."""
import threading

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import tada
from tada.models import TAdaified, load_pretrained, tadaify
from tada.models.tadaify import FoldedTAdaConv2d, PlugInTPool, _FRAMES, is_spatial_conv, num_frames
from tada.nn import RouteFuncAttn, RouteFuncMLP, TAdaConv2d
from model_testing import randomise_bn  # noqa: E402

# (source, name): small members of the families; every one has spatial convs, the ones marked below
# have depthwise (cout) or grouped (cin) convs
SOURCES = [
    ("timm", "resnet18"),
    ("timm", "resnext26ts"),  # grouped 3x3
    ("timm", "regnetx_002"),  # grouped 3x3
    ("timm", "convnext_atto"),  # depthwise 7x7 with bias, LayerNorm head
    ("timm", "efficientnet_b0"),  # depthwise, SE
    ("timm", "mobilenetv3_small_100"),  # depthwise, SE, conv_head after the pooling
    ("torchvision", "resnet18"),
    ("torchvision", "resnet50"),  # bottlenecks
    ("torchvision", "mobilenet_v3_small"),  # classifier = Linear-Hardswish-Dropout-Linear
]
IDS = [f"{s}-{n}" for s, n in SOURCES]
T, SIZE, CLASSES = 4, 32, 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: intra-op threads only add overhead (and stall on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _build(source, name, num_classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    if source == "timm":
        m = timm.create_model(name, pretrained=False, num_classes=num_classes)
    else:
        m = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return _randomise_norms(m, seed)


def _randomise_norms(model, seed=0):
    """Non-trivial norm statistics and affine parameters, so no norm is an identity."""
    g = torch.Generator().manual_seed(seed)
    randomise_bn(model, g)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def _clip(batch=2, frames=T, size=SIZE, seed=1):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _per_frame(model2d, x):
    """The 2D model on every frame, logits averaged over frames."""
    b, c, t, h, w = x.shape
    return model2d(x.transpose(1, 2).reshape(b * t, c, h, w)).reshape(b, t, -1).mean(1)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _randomise_routing(model, std=0.02, seed=2):
    """Give the routing's (zero-initialised) last layers random weights, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (RouteFuncMLP, RouteFuncAttn)):
                for head in (m.heads.b, m.heads.b2, m.heads.b_bias):
                    if head is not None:
                        head.weight.copy_(std * torch.randn(head.weight.shape, generator=g))


# -- exact at init ------------------------------------------------------------------------------
@pytest.mark.parametrize("routing", ["v1", "v2"])
@pytest.mark.parametrize("source,name", SOURCES, ids=IDS)
def test_exact_at_init_against_the_2d_model_per_frame(source, name, routing):
    src = _build(source, name).eval()
    model = tadaify(src, routing=routing).eval()
    alphas = []
    for m in model.modules():
        if isinstance(m, (RouteFuncMLP, RouteFuncAttn)):
            m.register_forward_hook(lambda mod, inp, out: alphas.append(out))
    x = _clip()
    with torch.no_grad():
        ref = _per_frame(src, x)
        out = model(x)
        assert len(alphas) == len(model.tada_layers)
        assert all(torch.equal(a, torch.ones_like(a)) for a in alphas)  # the zero-initialised last layer: alpha == 1
        assert out.shape == (2, CLASSES)
        assert _rel(out, ref) < 1e-5
        # the per-frame model does not see the order of the frames, nor does the TAda model at init
        assert _rel(model(x.flip(2)), ref) < 1e-5


# -- conversion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source,name", SOURCES, ids=IDS)
def test_every_spatial_conv_is_converted_with_the_right_cal_dim(source, name):
    src = _build(source, name)
    spatial = {n: m for n, m in src.named_modules() if is_spatial_conv(m)}
    pointwise = sum(1 for m in src.modules() if isinstance(m, nn.Conv2d) and not is_spatial_conv(m))
    model = tadaify(src)

    converted = {n[len("backbone."):]: m for n, m in model.named_modules() if isinstance(m, FoldedTAdaConv2d)}
    assert set(converted) == set(spatial) and len(converted) == len(spatial) > 0
    assert model.tada_layers.keys() == spatial.keys()
    assert not any(is_spatial_conv(m) for m in model.modules()), "a spatial nn.Conv2d was left"
    assert sum(1 for m in model.modules() if isinstance(m, nn.Conv2d)) == pointwise  # 1x1 convs untouched
    kinds = set()
    for n, conv in spatial.items():
        new = converted[n]
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        kinds.add("depthwise" if depthwise else "grouped" if conv.groups > 1 else "dense")
        assert new.cal_dim == ("cout" if depthwise else "cin") == model.tada_layers[n], n
        assert (new.stride, new.padding, new.dilation, new.groups) == (conv.stride, conv.padding, conv.dilation, conv.groups)
        assert torch.equal(new.weight, conv.weight) and new.weight is not conv.weight  # a copy
        assert (new.bias is None) == (conv.bias is None)
        assert isinstance(new.routing, RouteFuncMLP) and new.tpool is None
    if name in ("convnext_atto", "efficientnet_b0", "mobilenetv3_small_100", "mobilenet_v3_small"):
        assert "depthwise" in kinds
    if name in ("resnext26ts", "regnetx_002"):
        assert "grouped" in kinds
    # the source model is left as it was
    assert sum(1 for m in src.modules() if is_spatial_conv(m)) == len(spatial)


@pytest.mark.parametrize("source,name", SOURCES, ids=IDS)
def test_backward_reaches_the_routing(source, name):
    model = tadaify(_build(source, name)).train()
    out = model(_clip(frames=3))
    out.logsumexp(1).sum().backward()
    routing = [(n, p) for n, p in model.named_parameters() if ".routing." in n]
    assert routing
    missing = [n for n, p in routing if p.grad is None]
    assert not missing, missing[:5]
    # the zero-initialised last layer is where learning starts: its gradient is not zero
    last = [(n, p) for n, p in routing if n.endswith("routing.heads.b.weight")]
    assert len(last) == len(model.tada_layers)
    dead = [n for n, p in last if p.grad.abs().sum() == 0]
    assert not dead, dead[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("routing", ["v1", "v2"])
@pytest.mark.parametrize("source,name", [SOURCES[0], SOURCES[3], SOURCES[6]], ids=[IDS[0], IDS[3], IDS[6]])
def test_a_trained_routing_sees_the_order_of_the_frames(source, name, routing):
    src = _build(source, name).eval()
    model = tadaify(src, routing=routing).eval()
    _randomise_routing(model)
    alphas = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: alphas.append(out))
        for m in model.modules()
        if isinstance(m, (RouteFuncMLP, RouteFuncAttn))
    ]
    x = _clip()
    with torch.no_grad():
        out = model(x)
        a_fwd, alphas[:] = list(alphas), []
        out_rev = model(x.flip(2))
        a_rev = list(alphas)
        ref = _per_frame(src, x)
    for h in hooks:
        h.remove()
    # the calibration of the flipped clip is not the flipped calibration (a per-frame model's would be)
    assert len(a_fwd) == len(a_rev) == len(model.tada_layers) and a_fwd[0].shape == (2, 3, T)
    differs = [_rel(r, f.flip(2)) > 1e-3 for f, r in zip(a_fwd, a_rev)]
    assert sum(differs) >= len(differs) - 1, differs  # the RGB stem's routing (hidden width 1) may be dead
    calibrated = [not torch.allclose(a, torch.ones_like(a)) for a in a_fwd]
    assert sum(calibrated) >= len(calibrated) - 1, calibrated
    assert torch.isfinite(out).all() and torch.isfinite(out_rev).all()
    assert _rel(out, ref) > 1e-3  # no longer the per-frame 2D model
    assert _rel(out_rev, out) > 1e-3  # and the order of the frames matters


# -- T-Pool -------------------------------------------------------------------------------------
def test_tpool_after_chosen_convs_is_exact_at_init_and_learnable():
    src = _build("timm", "resnet18").eval()
    names = ["layer1.0.conv2", "layer2.1.conv2"]
    model = tadaify(src, tpool=names).eval()
    pools = {n[len("backbone."):-len(".tpool")]: m for n, m in model.named_modules() if isinstance(m, PlugInTPool)}
    assert sorted(pools) == names and model.tpool_layers == tuple(names)
    seen = []
    pools["layer1.0.conv2"].register_forward_hook(lambda mod, inp, out: seen.append(torch.equal(out, inp[0])))
    x = _clip()
    with torch.no_grad():
        ref = _per_frame(src, x)
        assert _rel(model(x), ref) < 1e-5
        assert seen == [True]  # T-Pool is the identity at init, not merely close to it
        for p in pools.values():
            p.norm2.weight.normal_()
            p.norm2.bias.normal_()
        assert _rel(model(x), ref) > 1e-3

    by_predicate = tadaify(src, tpool=lambda n, conv: n.endswith("conv2"), tpool_kwargs={"norm": "ln", "pool": "mix"})
    assert len(by_predicate.tpool_layers) == 8
    assert all(m.norm_kind == "ln" and m.pool == "mix" for m in by_predicate.modules() if isinstance(m, PlugInTPool))
    everywhere = tadaify(_build("timm", "convnext_atto").eval(), tpool="all", tpool_kwargs={"norm": "ln"}).eval()
    with torch.no_grad():
        assert _rel(everywhere(x), _per_frame(_build("timm", "convnext_atto").eval(), x)) < 1e-5

    with pytest.raises(ValueError, match="layer1.0.conv2"):
        tadaify(src, tpool=["layer1.0.conv_2"])
    no_stem = tadaify(src, tpool="all", exclude=["conv1"])
    assert "conv1" not in no_stem.tpool_layers and len(no_stem.tpool_layers) == len(no_stem.tada_layers) == 16
    with pytest.raises(ValueError, match="excluded"):
        tadaify(src, tpool=["layer1.0.conv2"], exclude=["layer1.0.conv2"])
    with pytest.raises(ValueError, match="shortcut"):
        tadaify(src, tpool="all", tpool_kwargs={"shortcut": "none"})
    with pytest.raises(ValueError, match="tpool_kwargs"):
        tadaify(src, tpool="all", tpool_kwargs={"nrom": "ln"})


# -- new parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize("source,name", [SOURCES[0], SOURCES[4], SOURCES[8]], ids=[IDS[0], IDS[4], IDS[8]])
def test_new_parameter_names_are_exactly_the_new_tensors(source, name):
    src = _build(source, name)
    model = tadaify(src, tpool=lambda n, conv: conv.groups == 1)
    assert model.tpool_layers
    new = model.new_parameter_names()
    from_2d = {f"backbone.{k}" for k in src.state_dict()}
    assert new and new == set(model.state_dict()) - from_2d
    assert from_2d <= set(model.state_dict())  # every 2D tensor kept its name
    assert all(".routing." in n or ".tpool.norm2." in n for n in new)
    params = {n for n, _ in model.named_parameters()}
    assert params & new == {n for n in params if ".routing." in n or ".tpool.norm2." in n}
    # so the 2D weights load strictly, the new tensors keeping their init
    report = load_pretrained(model, src.state_dict())
    assert set(report.new_by_design) == new and not report.reinitialised_head


# -- head surface -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source,name", [SOURCES[0], SOURCES[3], SOURCES[5], SOURCES[8]], ids=[IDS[0], IDS[3], IDS[5], IDS[8]])
def test_head_surface_and_reset_classifier(source, name):
    model = tadaify(_build(source, name)).eval()
    x = _clip(batch=1, frames=3)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 5 and feats.shape[:3] == (1, model.num_features, 3)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        assert model.num_classes == CLASSES and model.head_keys()
        assert all(k in model.state_dict() for k in model.head_keys())
        model.reset_classifier(3)
        assert model.num_classes == 3 and model(x).shape == (1, 3)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(5)
        assert model(x).shape == (1, 5)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_the_frame_count_is_read_from_every_call():
    src = _build("timm", "resnet18").eval()
    model = tadaify(src).eval()
    _randomise_routing(model)
    xs = {t: _clip(batch=1, frames=t, seed=t) for t in (1, 2, 5)}
    with torch.no_grad():
        ref = {t: model(x) for t, x in xs.items()}
        again = {t: model(xs[t]) for t in (5, 1, 2)}
    out = model(xs[2])  # with autograd
    for t in xs:
        torch.testing.assert_close(again[t], ref[t])
    torch.testing.assert_close(out.detach(), ref[2])
    assert _FRAMES.get() is None  # nothing is left behind

    # two threads, two frame counts, at the same time
    results, barrier = {}, threading.Barrier(2)

    def run(t):
        barrier.wait()
        with torch.no_grad():
            for _ in range(3):
                results[t] = model(xs[t])

    threads = [threading.Thread(target=run, args=(t,)) for t in (2, 5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in (2, 5):
        torch.testing.assert_close(results[t], ref[t])

    # the backbone called directly needs the frame count
    frames = xs[2].transpose(1, 2).reshape(2, 3, SIZE, SIZE)
    with pytest.raises(RuntimeError, match="frame count"):
        model.backbone(frames)
    with torch.no_grad(), num_frames(2):
        torch.testing.assert_close(model.backbone(frames).mean(0, keepdim=True), ref[2])
    with pytest.raises(ValueError, match="B\\*T"):
        with num_frames(3):
            model.backbone(frames)


def test_ddp_with_changing_frame_counts(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs a fresh torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tadaify(_build("timm", "regnetx_002")).train()
        ddp = nn.parallel.DistributedDataParallel(model)
        for t in (2, 3):
            ddp.zero_grad(set_to_none=True)
            ddp(_clip(frames=t, size=16)).logsumexp(1).sum().backward()
            assert all(p.grad is not None for n, p in model.named_parameters() if ".routing." in n)
    finally:
        dist.destroy_process_group()


# -- options --------------------------------------------------------------------------------------
def test_options_cal_dim_routing_kwargs_exclude_bias_calibration():
    src = _build("timm", "convnext_atto").eval()
    x = _clip()
    with torch.no_grad():
        ref = _per_frame(src, x)

    def exact(m):
        with torch.no_grad():
            return _rel(m.eval()(x), ref) < 1e-5

    all_cin = tadaify(src, cal_dim="cin")
    assert set(all_cin.tada_layers.values()) == {"cin"} and exact(all_cin)
    per_layer = tadaify(src, cal_dim=lambda n, conv: "cin_cout" if conv.groups > 1 else "auto")
    assert per_layer.tada_layers["stem.0"] == "cin" and "cin_cout" in per_layer.tada_layers.values() and exact(per_layer)

    v2 = tadaify(src, routing="v2", bias_calibration=True, routing_kwargs={"reduction": 2})
    dw = v2.backbone.stages[0].blocks[0].conv_dw
    assert isinstance(dw.routing, RouteFuncAttn) and dw.bias_calibration and dw.cal_dim == "cout"
    assert dw.routing.reduction == 2 and (dw.in_channels // 2) % dw.routing.head_dim == 0
    assert exact(v2)
    _randomise_routing(v2)
    assert not exact(v2)

    sized = tadaify(src, routing_kwargs=lambda n, conv: {"reduction": 8, "kernels": (1, 3)})
    assert all(m.routing.kernels == (1, 3) for m in sized.modules() if isinstance(m, FoldedTAdaConv2d))
    stem = sized.backbone.stem[0].routing  # 3 input channels: the reduction is capped there
    assert stem.reduction == 3 and stem.a.out_channels == 1

    no_stem = tadaify(src, exclude=["stem.0"])
    assert type(no_stem.backbone.stem[0]) is nn.Conv2d and "stem.0" not in no_stem.tada_layers and exact(no_stem)
    only_dw = tadaify(src, exclude=lambda n, conv: conv.groups == 1)
    assert set(only_dw.tada_layers.values()) == {"cout"} and exact(only_dw)

    grouped = tadaify(src, impl="grouped")
    assert exact(grouped)

    inplace = _build("timm", "resnet18")
    made = tadaify(inplace, inplace=True)
    assert made.backbone is inplace and not any(is_spatial_conv(m) for m in inplace.modules())


def test_a_shared_conv_is_converted_once_everywhere_it_sits():
    src = timm.create_model("resnet18", pretrained=False, num_classes=2)
    shared = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    src.layer1[0].conv2 = shared
    src.layer1[1].conv2 = shared
    model = tadaify(src)
    assert model.backbone.layer1[0].conv2 is model.backbone.layer1[1].conv2
    assert isinstance(model.backbone.layer1[1].conv2, FoldedTAdaConv2d)


# -- create_model ---------------------------------------------------------------------------------
def test_create_model_with_the_tadaify_prefix():
    m = tada.create_model("tadaify:resnet18", num_classes=5, routing="v2", tpool=["layer4.1.conv2"], drop_rate=0.25)
    assert isinstance(m, TAdaified) and m.model_name == "tadaify:resnet18" and m.source == "timm"
    assert m.num_classes == 5 and m.backbone.drop_rate == 0.25  # a timm argument reaches timm
    assert all(isinstance(c.routing, RouteFuncAttn) for c in m.modules() if isinstance(c, TAdaConv2d))
    assert m.tpool_layers == ("layer4.1.conv2",)
    assert m.eval()(_clip(batch=1)).shape == (1, 5)

    tv = tada.create_model("tadaify:torchvision.resnet18", num_classes=0)
    assert tv.source == "torchvision" and tv.num_classes == 0
    assert tv.eval()(_clip(batch=1)).shape == (1, 512)
    assert not any(n.startswith("tadaify") for n in tada.list_models())

    with pytest.raises(ValueError, match="resnet18"):
        tada.create_model("tadaify:resnet_18")
    with pytest.raises(ValueError, match="torchvision.resnet18"):
        tada.create_model("tadaify:torchvision.resnet_18")
    with pytest.raises(ValueError, match="num_classes"):
        tada.create_model("tadaify:resnet18", num_classes=-1)
    with pytest.raises(ValueError, match="pretrained"):
        tada.create_model("tadaify:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="tadaify"):
        tada.create_model("tadaify:")
    with pytest.raises(ValueError, match="tadaify:"):  # the registry's error names the prefix
        tada.create_model("resnet18")


@pytest.mark.parametrize("source,name", [SOURCES[0], SOURCES[6]], ids=[IDS[0], IDS[6]])
def test_a_2d_checkpoint_loads_through_pretrained(tmp_path, source, name):
    src = _build(source, name, seed=3).eval()
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    full = f"tadaify:{name}" if source == "timm" else f"tadaify:torchvision.{name}"
    x = _clip()

    model = tada.create_model(full, num_classes=CLASSES, pretrained=str(path)).eval()
    with torch.no_grad():
        assert _rel(model(x), _per_frame(src, x)) < 1e-5
    assert set(model.load_report.new_by_design) == model.new_parameter_names()

    other = tada.create_model(full, num_classes=7, pretrained=str(path)).eval()  # another class count
    assert other.load_report.reinitialised_head and other.num_classes == 7
    with torch.no_grad():
        f_src = src.forward_features(x.transpose(1, 2).reshape(-1, 3, SIZE, SIZE)) if source == "timm" else None
        if f_src is not None:
            f = other.forward_features(x)
            torch.testing.assert_close(f.transpose(1, 2).reshape(f_src.shape), f_src, rtol=1e-5, atol=1e-5)

    headless = tada.create_model(full, num_classes=0, pretrained=str(path)).eval()  # the 2D classifier is dropped
    assert headless.num_classes == 0 and not headless.load_report.reinitialised_head
    with torch.no_grad():
        assert headless(x).shape == (2, headless.head_hidden_size)

    wrong = tmp_path / "wrong.pth"
    torch.save(_build("timm", "resnet26").state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit"):
        tada.create_model("tadaify:resnet18", pretrained=str(wrong))


# -- errors ---------------------------------------------------------------------------------------
def test_not_a_cnn_and_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        tadaify("resnet18")
    with pytest.raises(ValueError, match="no spatial convolution"):
        tadaify(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(ValueError, match="transformer"):
        tadaify(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=2))
    with pytest.raises(ValueError, match="features"):  # a CNN of unknown layout: where do its features end?
        tadaify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))

    src = timm.create_model("resnet18", pretrained=False, num_classes=2)
    with pytest.raises(ValueError, match="routing"):
        tadaify(src, routing="v3")
    with pytest.raises(ValueError, match="cal_dim"):
        tadaify(src, cal_dim="channels")
    with pytest.raises(ValueError, match="cal_dim"):
        tadaify(src, cal_dim=lambda n, conv: "nope")
    with pytest.raises(TypeError, match="routing_kwargs"):
        tadaify(src, routing_kwargs=[("reduction", 4)])
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        tadaify(src, exclude=["layer1.0.conv_1"])
    with pytest.raises(ValueError, match="leaves no spatial"):
        tadaify(src, exclude=lambda n, conv: True)
    with pytest.raises(ValueError, match="list of module names"):
        tadaify(src, tpool="layer1.0.conv2")
    with pytest.raises(ValueError, match="head_dim"):  # the routing's own check, named by layer
        tadaify(src, routing="v2", routing_kwargs={"head_dim": 7})
    with pytest.raises(ValueError, match="already has TAdaConvs"):
        tadaify(tadaify(src))

    class Standardised(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    odd = timm.create_model("resnet18", pretrained=False, num_classes=2)
    odd.layer2[0].conv1 = Standardised(64, 128, 3, stride=2, padding=1, bias=False)
    with pytest.raises(ValueError, match="layer2.0.conv1.*own forward"):
        tadaify(odd)
    assert isinstance(tadaify(odd, exclude=["layer2.0.conv1"]).backbone.layer2[0].conv1, Standardised)

    model = tadaify(src).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 2, SIZE, SIZE))
    with pytest.raises(ValueError, match="forward_features"):
        model.forward_head(torch.randn(2, 512))
