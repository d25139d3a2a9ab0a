"""ConvNeXt-layout video models: exactness at init against timm's ConvNeXt, checkpoint conversion
(timm, original, released TAdaConvNeXtV2, this project's own), loud failures on bad checkpoints, the
paper's parameter / FLOP counts, and the options' behaviour."""
import re
import warnings

import pytest
import timm
import torch

import tada
from release_reference import make_released_route_attn, released_route_attn
from tada.models.convnext import VideoConvNeXt
from tada.nn.layers import drop_path
from tada.models.flops import profile_model
from tada.nn import RouteFuncAttn, RouteFuncMLP, TAdaConv2d


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- a randomised ImageNet ConvNeXt-T (timm) and its checkpoints ---------------------------------
@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory):
    """timm ConvNeXt-T with random LayerNorm affines and a layer scale that is far from 1e-6, so every
    block matters; saved in timm's and in the original release's layout."""
    torch.manual_seed(0)
    ref = timm.create_model("convnext_tiny", pretrained=False).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.25 + 0.5 * torch.rand_like(p))
            elif p.dim() == 1 and re.search(r"norm|stem\.1|downsample\.0", name):
                p.copy_(0.2 * torch.randn_like(p) + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("convnext")
    timm_path = d / "timm_convnext_tiny.pth"
    torch.save(ref.state_dict(), timm_path)
    orig_path = d / "original_convnext_tiny.pth"
    torch.save({"model": timm_to_original(ref.state_dict())}, orig_path)
    return ref, timm_path, orig_path


def timm_to_original(sd):
    """timm ConvNeXt keys -> the original facebookresearch/ConvNeXt keys (written from the layouts)."""
    out = {}
    for k, v in sd.items():
        k2 = k
        k2 = re.sub(r"^stem\.([01])\.", r"downsample_layers.0.\1.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.downsample\.([01])\.", r"downsample_layers.\1.\2.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.\2.pwconv1.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.\2.pwconv2.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k2)
        k2 = re.sub(r"^head\.norm\.", "norm.", k2)
        k2 = re.sub(r"^head\.fc\.", "head.", k2)
        out[k2] = v
    assert "downsample_layers.0.0.weight" in out and "stages.2.8.pwconv2.weight" in out
    return out


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.randn(1, 3, 6, 64, 64)


@pytest.fixture(scope="module")
def timm_feats(timm_tiny, clip):
    ref = timm_tiny[0]
    with torch.no_grad():
        return ref.forward_features(clip[0].transpose(0, 1))  # (T, 768, 2, 2)


@pytest.fixture(scope="module")
def v2_from_timm(timm_tiny):
    return tada.create_model("tadaconvnextv2_tiny", pretrained=timm_tiny[1], num_classes=1000).eval()


# -- 1. exact at init ----------------------------------------------------------------------------
def test_tadaconvnextv2_equals_imagenet_convnext_at_init(v2_from_timm, timm_feats, clip, timm_tiny):
    m = v2_from_timm
    with torch.no_grad():
        f = m.forward_features(clip)
    assert f.shape == (1, 768, 3, 2, 2)
    want = timm_feats[[0, 2, 4]].transpose(0, 1)[None]  # the tubelet stem sees frames 0, 2, 4
    assert rel_err(f, want) < 1e-5
    # the blocks matter: the last stage changes the features a lot
    assert timm_feats.abs().mean() > 0.1
    # the head too (LayerNorm + Linear of the 1000-class ImageNet head, mean over frames first)
    ref = timm_tiny[0]
    with torch.no_grad():
        logits = m(clip)
        pooled = want.mean(dim=(2, 3, 4))
        ref_logits = ref.head.fc(torch.nn.functional.layer_norm(
            pooled, (768,), ref.head.norm.weight, ref.head.norm.bias, ref.head.norm.eps))
    assert rel_err(logits, ref_logits) < 1e-5
    rep = m.load_report
    assert rep.loaded == len(timm_tiny[0].state_dict())
    assert rep.new_by_design and not rep.reinitialised_head
    assert all(".routing." in k or ".tpool.norm2." in k for k in rep.new_by_design)


def test_tsn_equals_imagenet_convnext_on_every_frame(timm_tiny, timm_feats, clip):
    m = tada.create_model("tsn_convnext_tiny", pretrained=timm_tiny[1], num_classes=1000).eval()
    assert not any(isinstance(x, TAdaConv2d) for x in m.modules())
    with torch.no_grad():
        f = m.forward_features(clip)
    assert f.shape == (1, 768, 6, 2, 2)
    assert rel_err(f, timm_feats.transpose(0, 1)[None]) < 1e-5


@pytest.mark.parametrize("name,frames", [("tadaconvnextv2_tiny", [0, 2, 4]), ("tadaconvnext_tiny", [0, 2, 4]),
                                         ("tsn_convnext_tiny", list(range(6)))])
def test_original_layout_checkpoint_gives_the_same_model(name, frames, timm_tiny, timm_feats, clip):
    m = tada.create_model(name, pretrained=timm_tiny[2], num_classes=1000).eval()
    with torch.no_grad():
        f = m.forward_features(clip)
    assert rel_err(f, timm_feats[frames].transpose(0, 1)[None]) < 1e-5


# -- 2. the TAda parts are live --------------------------------------------------------------------
def test_nonzero_routing_and_tpool_change_the_output(v2_from_timm, clip):
    m = v2_from_timm
    snap = {k: v.clone() for k, v in m.state_dict().items()}
    blk = m.stages[1].blocks[1]
    try:
        with torch.no_grad():
            base = m.forward_features(clip).clone()
            torch.nn.init.normal_(blk.conv_dw.routing.heads.b.weight, std=0.05)
            assert rel_err(m.forward_features(clip), base) > 1e-3
            torch.nn.init.zeros_(blk.conv_dw.routing.heads.b.weight)
            torch.testing.assert_close(m.forward_features(clip), base, rtol=1e-6, atol=1e-6)
            torch.nn.init.normal_(blk.conv_dw.routing.heads.b_bias.weight, std=0.05)
            assert rel_err(m.forward_features(clip), base) > 1e-4
            torch.nn.init.zeros_(blk.conv_dw.routing.heads.b_bias.weight)
            blk.tpool.norm2.weight.fill_(0.5)
            assert rel_err(m.forward_features(clip), base) > 1e-3
    finally:
        m.load_state_dict(snap)


def test_tada_is_sensitive_to_frame_order_and_tsn_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 32, 32)
    rev = x.flip(2)
    tsn = tada.create_model("tsn_convnext_mini", num_classes=5).eval()
    with torch.no_grad():
        torch.testing.assert_close(tsn(rev), tsn(x), rtol=1e-5, atol=1e-5)
    # with the tubelet stem's frames reversed too, only the TAda parts can see the order
    m = tada.create_model("tadaconvnextv2_mini", num_classes=5, tubelet=False, layer_scale_init=1.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(rev), m(x), rtol=1e-5, atol=1e-5)  # at init: per-frame model
        for mod in m.modules():
            if isinstance(mod, RouteFuncAttn):
                torch.nn.init.normal_(mod.heads.b.weight, std=0.1)
        assert (m(rev) - m(x)).abs().max() > 1e-4


# -- 3. the paper's released checkpoints -----------------------------------------------------------
def released_mini_state(num_classes=10, pointwise_conv=False, seed=0):
    """A released-layout TAdaConvNeXtV2 state dict for tadaconvnextv2_mini (SPEC §6 key/shape rules)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    dims, depths = (32, 64, 128, 256), (1, 1, 2, 1)
    sd, routing = {}, {}
    sd["backbone.downsample_layers.0.0.weight"] = r(dims[0], 3, 3, 4, 4)
    sd["backbone.downsample_layers.0.0.bias"] = r(dims[0])
    sd["backbone.downsample_layers.0.1.weight"] = 1 + r(dims[0])
    sd["backbone.downsample_layers.0.1.bias"] = r(dims[0])
    for i in range(1, 4):
        sd[f"backbone.downsample_layers.{i}.0.weight"] = 1 + r(dims[i - 1])
        sd[f"backbone.downsample_layers.{i}.0.bias"] = r(dims[i - 1])
        sd[f"backbone.downsample_layers.{i}.1.weight"] = r(dims[i], dims[i - 1], 1, 2, 2)
        sd[f"backbone.downsample_layers.{i}.1.bias"] = r(dims[i])
    for s, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"backbone.stages.{s}.{j}"
            sd[f"{p}.dwconv.weight"] = r(1, 1, c, 1, 7, 7)
            sd[f"{p}.dwconv.bias"] = r(1, 1, c)
            rf = make_released_route_attn(c, 2, generator=g)
            routing[(s, j)] = rf
            sd.update({f"{p}.dwconv_rf.{k}": v for k, v in rf.items()})
            for n in ("norm", "norm_avgpool"):
                sd[f"{p}.{n}.weight"] = 1 + r(c)
                sd[f"{p}.{n}.bias"] = r(c)
            w1, w2 = r(4 * c, c), r(c, 4 * c)
            sd[f"{p}.pwconv1.weight"] = w1[..., None, None, None] if pointwise_conv else w1
            sd[f"{p}.pwconv1.bias"] = r(4 * c)
            sd[f"{p}.pwconv2.weight"] = w2[..., None, None, None] if pointwise_conv else w2
            sd[f"{p}.pwconv2.bias"] = r(c)
            sd[f"{p}.gamma"] = 0.5 + r(c)
    sd["backbone.norm.weight"] = 1 + r(dims[-1])
    sd["backbone.norm.bias"] = r(dims[-1])
    sd["head.out.weight"] = r(num_classes, dims[-1])
    sd["head.out.bias"] = r(num_classes)
    return sd, routing


@pytest.mark.parametrize("pointwise_conv", [False, True])
def test_released_checkpoint_loads_correctly(tmp_path, pointwise_conv):
    sd, routing = released_mini_state(pointwise_conv=pointwise_conv)
    path = tmp_path / "released.pyth"
    torch.save({"epoch": 0, "model_state": sd, "cfg": {}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quick_gelu: no warning
        m = tada.create_model("tadaconvnextv2_mini", pretrained=path, act="quick_gelu", num_classes=10).eval()
    assert m.load_report.loaded == len(m.state_dict())  # everything came from the checkpoint
    assert not m.load_report.new_by_design and not m.load_report.reinitialised_head
    sd = {k: v.double() for k, v in sd.items()}
    m = m.double()
    heads = set()
    for (s, j), rf in routing.items():
        blk = m.stages[s].blocks[j]
        heads.add(blk.conv_dw.routing.num_heads)
        x = torch.randn(2, blk.conv_dw.in_channels, 4, 3, 3, dtype=torch.float64)
        with torch.no_grad():
            ours = blk.conv_dw.routing(x)
        ref = released_route_attn({k: v.double() for k, v in rf.items()}, x, head_dim=16, zero_init=True)
        assert len(ours) == len(ref) == 2
        for a, b in zip(ours, ref):
            assert rel_err(a, b) < 1e-5
        p = f"backbone.stages.{s}.{j}"
        torch.testing.assert_close(blk.conv_dw.weight, sd[f"{p}.dwconv.weight"][0, 0])
        torch.testing.assert_close(blk.conv_dw.bias, sd[f"{p}.dwconv.bias"].flatten())
        torch.testing.assert_close(blk.tpool.norm1.weight, sd[f"{p}.norm.weight"])
        torch.testing.assert_close(blk.tpool.norm2.weight, sd[f"{p}.norm_avgpool.weight"])
        torch.testing.assert_close(blk.tpool.norm2.bias, sd[f"{p}.norm_avgpool.bias"])
        torch.testing.assert_close(blk.mlp.fc1.weight, sd[f"{p}.pwconv1.weight"].reshape(blk.mlp.fc1.weight.shape))
        torch.testing.assert_close(blk.mlp.fc2.bias, sd[f"{p}.pwconv2.bias"])
        torch.testing.assert_close(blk.gamma, sd[f"{p}.gamma"])
        assert isinstance(blk.mlp.act, tada.nn.QuickGELU)
    assert heads == {1, 2, 4, 8}  # the interleaved head layout matters in most stages
    torch.testing.assert_close(m.stem.conv.weight, sd["backbone.downsample_layers.0.0.weight"])
    torch.testing.assert_close(m.stages[2].downsample.conv.weight, sd["backbone.downsample_layers.2.1.weight"][:, :, 0])
    torch.testing.assert_close(m.head_norm.bias, sd["backbone.norm.bias"])
    torch.testing.assert_close(m.head.weight, sd["head.out.weight"])
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 4, 64, 64, dtype=torch.float64))).all()


def test_released_checkpoint_warns_on_gelu_and_refuses_non_v2(tmp_path):
    sd, _ = released_mini_state()
    with pytest.warns(UserWarning, match="quick_gelu"):
        tada.models.load_pretrained(tada.create_model("tadaconvnextv2_mini", num_classes=10), sd)
    with pytest.raises(ValueError, match="tada='v2'"):
        tada.models.load_pretrained(tada.create_model("tsn_convnext_mini", num_classes=10), sd)


# -- 4. bad checkpoints fail loudly and change nothing ----------------------------------------------
def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


@pytest.fixture
def v2_tiny(v2_from_timm):
    return v2_from_timm  # (every test below checks that a failed load changes nothing)


def test_resnet_checkpoint_is_rejected(tmp_path, v2_tiny):
    import torchvision

    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    snap = _snapshot(v2_tiny)
    with pytest.raises(ValueError, match=r"unrecognised checkpoint layout.*stem\.0\.weight.*downsample_layers"):
        tada.models.load_pretrained(v2_tiny, path)
    assert _unchanged(v2_tiny, snap)


def test_truncated_checkpoint_is_rejected(tmp_path):
    m = tada.create_model("tadaconvnextv2_mini")
    path = tmp_path / "ckpt.pth"
    torch.save(m.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    other = tada.create_model("tadaconvnextv2_mini")
    snap = _snapshot(other)
    with pytest.raises(ValueError, match="truncated"):
        tada.models.load_pretrained(other, path)
    assert _unchanged(other, snap)


def test_wrong_size_checkpoints_are_rejected(tmp_path, v2_tiny, timm_tiny):
    snap = _snapshot(v2_tiny)
    # ConvNeXt-S = ConvNeXt-T with 27 blocks in stage 2 (same widths): extend the tiny checkpoint
    sd = dict(timm_tiny[0].state_dict())
    for j in range(9, 27):
        block8 = {k: v for k, v in sd.items() if k.startswith("stages.2.blocks.8.")}
        sd.update({k.replace("blocks.8.", f"blocks.{j}."): v for k, v in block8.items()})
    small = tmp_path / "convnext_small.pth"
    torch.save(sd, small)
    with pytest.raises(ValueError, match=r"unexpected keys: stages\.2\.blocks\.(9|1\d|2\d)"):
        tada.models.load_pretrained(v2_tiny, small)
    wide = tmp_path / "convnext_tiny_base_dims.pth"
    torch.save(timm.create_model("convnext_tiny", pretrained=False, dims=(128, 256, 512, 1024)).state_dict(), wide)
    with pytest.raises(ValueError, match=r"shape mismatches: .*checkpoint \(128"):
        tada.models.load_pretrained(v2_tiny, wide)
    assert _unchanged(v2_tiny, snap)
    # a tiny checkpoint into a small model: the deeper stage's blocks are missing (checked before
    # anything is loaded, so a meta-device model is enough)
    with torch.device("meta"):
        m = tada.create_model("tsn_convnext_small")
    with pytest.raises(ValueError, match=r"missing keys: stages\.2\.blocks\.(9|1\d|2\d)"):
        tada.models.load_pretrained(m, timm_tiny[1])


def test_filter_is_pure_and_own_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    m = tada.create_model("tadaconvnextv2_mini", num_classes=7).eval()
    for mod in m.modules():  # make everything non-trivial
        if isinstance(mod, (RouteFuncAttn,)):
            torch.nn.init.normal_(mod.heads.b.weight, std=0.1)
    path = tmp_path / "own.pth"
    torch.save({"state_dict": m.state_dict()}, path)
    m2 = tada.create_model("tadaconvnextv2_mini", pretrained=path, num_classes=7).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    sd = dict(m.state_dict())
    keys = list(sd)
    m2.checkpoint_filter_fn(sd)
    assert list(sd) == keys


def test_tsn_checkpoint_initialises_tada_model_exactly(tmp_path):
    torch.manual_seed(0)
    tsn = tada.create_model("tsn_convnext_mini", num_classes=7, layer_scale_init=0.5).eval()
    path = tmp_path / "tsn.pth"
    torch.save(tsn.state_dict(), path)
    m = tada.create_model("tadaconvnextv2_mini", pretrained=path, num_classes=7).eval()
    x = torch.randn(2, 3, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tsn(x[:, :, ::2]), rtol=1e-5, atol=1e-6)


# -- 5. FLOP counts beyond flops.PAPER (whose rows test_registry.py checks) ----------------------------------------------
def test_v1_flops_at_224():
    """At 224² the V1 model costs (224/256)² of its 256² cost: 72, not the 94 of SPEC's table."""
    with torch.device("meta"):
        m = tada.create_model("tadaconvnext_tiny", num_classes=400)
    _, f224 = profile_model(m, 32, 224)
    _, f256 = profile_model(m, 32, 256)
    assert abs(f224 / f256 - (224 / 256) ** 2) < 0.01
    assert 70 < f224 < 74


def test_v1_routing_layout():
    with torch.device("meta"):
        m = tada.create_model("tadaconvnext_tiny")
    blk = m.stages[0].blocks[0]
    assert isinstance(blk.conv_dw.routing, RouteFuncMLP) and blk.conv_dw.routing.reduction == 4
    assert blk.conv_dw.cal_dim == "cout" and blk.conv_dw.bias_calibration
    assert blk.tpool is None and m.frame_multiple == 2


# -- 6. options -------------------------------------------------------------------------------------
def test_quick_gelu_changes_the_output():
    torch.manual_seed(0)
    a = tada.create_model("tadaconvnextv2_mini", num_classes=5, layer_scale_init=1.0).eval()
    b = tada.create_model("tadaconvnextv2_mini", num_classes=5, layer_scale_init=1.0, act="quick_gelu").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert rel_err(b(x), a(x)) > 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(act="relu"), "act"),
    (dict(tada="v3"), "tada"),
    (dict(depths=(1, 1, 2)), "same length"),
    (dict(depths=(1, 0, 2, 1)), "depths"),
    (dict(head_dim=24), "head_dim"),
    (dict(reduction=0), "reduction"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(drop_rate=-0.1), "drop_rate"),
    (dict(tubelet="yes"), "tubelet"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tada.create_model("tadaconvnextv2_mini", **kwargs)


def test_bad_inputs():
    m = tada.create_model("tadaconvnextv2_mini")
    with pytest.raises(ValueError, match="multiple of 2"):
        m(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 4, 3, 32, 32))


# -- forward / backward / surface -------------------------------------------------------------------
@pytest.mark.parametrize("name,tout", [("tsn_convnext_mini", 8), ("tadaconvnextv2_mini", 4)])
def test_mini_forward_backward(name, tout):
    torch.manual_seed(0)
    m = tada.create_model(name, num_classes=11, drop_path_rate=0.2)
    x = torch.randn(4, 3, 8, 64, 64)
    f = m.forward_features(x)
    assert f.shape == (4, 256, tout, 2, 2)
    y = m.forward_head(f)
    assert y.shape == (4, 11)
    y.square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
    assert m.forward_head(f, pre_logits=True).shape == (4, 256)
    m.reset_classifier(3)
    assert m(x[:, :, :2]).shape == (4, 3)  # any T (here the smallest)
    m.reset_classifier(0)
    assert m(x[:1, :, :2, :32, :32]).shape == (1, 256)


def test_drop_path_is_one_decision_per_video_and_linear_over_blocks():
    torch.manual_seed(0)
    x = torch.ones(64, 4, 3, 3, 8)
    y = drop_path(x, 0.5, training=True)
    per_video = y.flatten(1)
    assert ((per_video == 0).all(1) | (per_video == 2).all(1)).all()
    assert 0 < (per_video[:, 0] == 0).sum() < 64
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    m = tada.create_model("tsn_convnext_mini", drop_path_rate=0.3)
    rates = [b.drop_path.p for s in m.stages for b in s.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 5))


def test_registered_names_and_meta_construction():
    names = set(tada.list_models("*convnext*"))
    assert {"tsn_convnext_tiny", "tsn_convnext_small", "tsn_convnext_base", "tsn_convnext_mini",
            "tadaconvnext_tiny", "tadaconvnextv2_tiny", "tadaconvnextv2_small", "tadaconvnextv2_base",
            "tadaconvnextv2_mini"} <= names
    with torch.device("meta"):
        m = tada.create_model("tadaconvnextv2_base")
    assert isinstance(m, VideoConvNeXt) and m.head_dim == 64
    assert all(p.is_meta for p in m.parameters())
