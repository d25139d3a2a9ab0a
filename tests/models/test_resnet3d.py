"""Plug-in backbones (SPEC §2, §7): R(2+1)D, R3D, SlowOnly, SlowFast with and without TAdaConv.

The paper's parameter / FLOP counts are rows of flops.PAPER (checked in test_registry.py, which also
runs every registered model forward and backward)."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import tada
from tada.models import load_pretrained
from tada.models.builders import inflate_conv_weight
from tada.models.resnet3d import DualPathBlock, SlowFast, VideoResNet3d
from tada.nn import TAdaConv2d, TAdaConv3d
from model_testing import randomise_bn as _randomise_bn, rel_err as _rel_err  # noqa: E402

PLAIN_TADA = [
    ("r2plus1d_r50", "tada_r2plus1d_r50", {}),
    ("r2plus1d_r50", "tada_r2plus1d_r50_2d1d", {}),
    ("r3d_r50", "tada_r3d_r50", {}),
    ("slowonly_r50", "tada_slowonly_r50", {}),
    ("slowfast_r50_4x16", "tada_slowfast_r50_4x16", {}),
    ("slowfast_r50_4x16", "tada_slowfast_r50_4x16", {"tada_fast": True}),  # fast bottleneck width 4
    ("slowfast_r50_8x8", "tada_slowfast_r50_8x8", {}),
]
NEW = sorted({n for p, t, _ in PLAIN_TADA for n in (p, t)})
SMALL = dict(depths=(1, 1, 1, 1), widths=(64, 128, 256, 512), stem_width=32)




def _randomise_routing(model, g):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (TAdaConv2d, TAdaConv3d)):
                m.routing.heads.b.weight.normal_(0, 0.05, generator=g)


@pytest.mark.parametrize("plain_name, tada_name, extra", PLAIN_TADA, ids=lambda v: str(v) if v else "")
def test_tada_variant_equals_the_plain_backbone_at_init(plain_name, tada_name, extra):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    arch = dict(SMALL, widths=(128, 256, 512, 1024), stem_width=64) if extra else SMALL
    plain = _randomise_bn(tada.create_model(plain_name, num_classes=5, **arch), g).eval()
    model = tada.create_model(tada_name, num_classes=5, **arch, **extra)
    report = load_pretrained(model, plain.state_dict())  # strict: only the TAda routing is new
    assert report.new_by_design and report.reinitialised_head == []
    assert set(report.new_by_design) == model.new_parameter_names()
    assert all(".routing." in k for k in report.new_by_design), report.new_by_design[:3]
    kinds = {type(m) for m in model.modules()}
    assert (TAdaConv3d in kinds) == (tada_name in ("tada_r3d_r50", "tada_r2plus1d_r50_2d1d"))
    model.eval()
    frames = 16 if "slowfast" in plain_name else 4
    x = torch.randn(2, 3, frames, 32, 32, generator=g)
    with torch.no_grad():
        ref = plain(x)
        out = model(x)
        assert _rel_err(out, ref) < 1e-5
        _randomise_routing(model, g)  # and the routing does change the function once it is trained
        assert _rel_err(model(x), ref) > 1e-4


def _meta(name, **kw):
    with torch.device("meta"):
        return tada.create_model(name, **kw)


@pytest.fixture(scope="module")
def tv_r50(tmp_path_factory):
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.resnet50(weights=None), torch.Generator().manual_seed(0)).eval()
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.mark.filterwarnings("ignore:.*meta parameter")
@pytest.mark.parametrize("name", NEW)
def test_torchvision_resnet50_loads_strictly(name, tv_r50):
    """Every plug-in backbone loads ImageNet ResNet-50 weights (inflated where 3D) with the strict
    loader; only the TAda routing is reported new, and the classifier (1000 classes) is re-initialised.
    Built on the meta device: the shapes and keys are checked, nothing is computed."""
    _, path = tv_r50
    model = _meta(name)
    report = load_pretrained(model, path)
    assert set(report.new_by_design) == model.new_parameter_names()
    assert report.reinitialised_head == ["head.bias", "head.weight"]


def _strided_2d(tv):
    """torchvision ResNet-50 with the max-pool replaced by stride 2 in layer1's first block (the R2D layout)."""
    ref = copy.deepcopy(tv)
    ref.maxpool = nn.Identity()
    ref.layer1[0].conv2.stride = (2, 2)
    ref.layer1[0].downsample[0].stride = (2, 2)
    ref.avgpool, ref.fc = nn.Identity(), nn.Identity()
    return ref.eval()


def test_r3d_inflated_from_2d_equals_the_2d_network_on_identical_frames(tv_r50):
    """R3D from a 2D ResNet-50 (``W3d[:, :, tau] = W2d / 3``): on a clip of identical frames every frame
    whose receptive field does not reach the temporal zero padding (17 3D convs: frames 17..T-18) is the
    2D network's output for that frame; the boundary frames are not (zero padding)."""
    tv, path = tv_r50
    model = tada.create_model("r3d_r50", pretrained=path).double().eval()
    sd = model.state_dict()
    torch.testing.assert_close(sd["conv1.weight"], inflate_conv_weight(tv.conv1.weight.double(), 3))
    torch.testing.assert_close(sd["layer2.1.conv2.weight"][:, :, 1], tv.layer2[1].conv2.weight.double() / 3)
    assert sd["layer2.1.conv1.weight"].shape[2:] == (1, 1, 1)
    g = torch.Generator().manual_seed(5)
    frame = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    t = 36
    clip = frame[:, :, None].expand(1, 3, t, 32, 32).contiguous()
    with torch.no_grad():
        feats = model.forward_features(clip)  # (1, 2048, T, 1, 1)
        ref = _strided_2d(tv).double()(frame)  # (1, 2048)
    assert feats.shape == (1, 2048, t, 1, 1)
    for k in (17, 18):
        assert _rel_err(feats[:, :, k, 0, 0], ref) < 1e-6, k  # W / 3 is rounded in float32
    assert _rel_err(feats[:, :, 0, 0, 0], ref) > 1e-3  # the zero temporal padding at the clip's start


def test_tada_r3d_from_2d_equals_r3d(tv_r50):
    _, path = tv_r50
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 4, 32, 32, generator=g)
    r3d = tada.create_model("r3d_r50", pretrained=path).eval()
    t3d = tada.create_model("tada_r3d_r50", pretrained=path).eval()
    assert isinstance(t3d.layer3[2].conv2, TAdaConv3d)
    with torch.no_grad():
        assert _rel_err(t3d.forward_features(x), r3d.forward_features(x)) < 1e-5


def test_torchvision_weights_land_where_they_should(tv_r50):
    """R(2+1)D: conv2 -> conv2.spatial, its temporal conv and BN keep their init; SlowFast: the slow
    pathway takes the 2D weights (inflated for the 3x1x1 convs of res4/res5, lateral inputs zero), the
    fast pathway and the lateral connections keep their init."""
    tv, path = tv_r50
    tvsd = tv.state_dict()
    torch.manual_seed(3)
    r21 = tada.create_model("tada_r2plus1d_r50_2d1d")
    init = {k: v.clone() for k, v in r21.state_dict().items()}
    load_pretrained(r21, path)
    sd = r21.state_dict()
    assert torch.equal(sd["layer3.4.conv2.spatial.weight"], tvsd["layer3.4.conv2.weight"])
    assert torch.equal(sd["layer3.4.bn2.running_var"], tvsd["layer3.4.bn2.running_var"])
    assert torch.equal(sd["layer3.4.conv2.temporal.weight"], init["layer3.4.conv2.temporal.weight"])
    assert torch.equal(sd["layer3.4.conv2.norm.weight"], init["layer3.4.conv2.norm.weight"])
    assert sd["layer3.4.conv2.temporal.weight"].shape == (256, 256, 3, 1, 1)

    sf = tada.create_model("slowfast_r50_8x8")
    init = {k: v.clone() for k, v in sf.state_dict().items()}
    load_pretrained(sf, path)
    sd = sf.state_dict()
    assert torch.equal(sd["conv1.weight"], tvsd["conv1.weight"])
    w = sd["layer1.0.slow.conv1.weight"]
    assert w.shape == (64, 80, 1, 1)
    assert torch.equal(w[:, :64], tvsd["layer1.0.conv1.weight"]) and not w[:, 64:].any()
    w = sd["layer3.0.slow.conv1.weight"]
    assert w.shape == (256, 640, 3, 1, 1)
    torch.testing.assert_close(w[:, :512], inflate_conv_weight(tvsd["layer3.0.conv1.weight"], 3))
    assert not w[:, 512:].any()
    assert sd["layer4.0.slow.downsample.0.weight"].shape == (2048, 1280, 1, 1)
    for k in ("fast_conv1.weight", "fuse.2.conv.weight", "layer2.1.fast.conv1.weight", "layer4.2.fast.bn3.bias"):
        assert torch.equal(sd[k], init[k]), k


def test_slowfast_slow_pathway_from_2d_is_slowonly_at_init():
    """With the lateral inputs zero, SlowFast's slow features equal SlowOnly's on every alpha-th frame."""
    torch.manual_seed(0)
    src = _randomise_bn(tada.create_model("tsn_r_mini", num_classes=5), torch.Generator().manual_seed(2))
    x = torch.randn(1, 3, 16, 32, 32)
    for name, alpha in (("slowfast_r50_4x16", 8), ("tada_slowfast_r50_8x8", 4)):
        sf = tada.create_model(name, num_classes=5, **SMALL)
        slow = tada.create_model("slowonly_r50", num_classes=5, **SMALL)
        load_pretrained(sf, src.state_dict())
        load_pretrained(slow, src.state_dict())
        sf.eval(), slow.eval()
        with torch.no_grad():
            feats = sf.forward_features(x)
            ref = slow.forward_features(x[:, :, ::alpha])
        assert feats.shape == (1, 512 + 64, 16 // alpha, 1, 1)
        torch.testing.assert_close(feats[:, :512], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 3, 8, 13, 32])
def test_slowfast_frame_counts(frames):
    """The slow pathway reads ceil(T / alpha) frames and every lateral conv produces as many."""
    model = tada.create_model("slowfast_r50_8x8", num_classes=3, **SMALL).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, frames, 32, 32))
    assert feats.shape == (1, 576, -(-frames // 4), 1, 1)


def test_slowfast_head_pools_each_pathway():
    """Fast features on the slow grid: their mean over T is the fast pathway's own mean when alpha | T."""
    model = _meta("slowfast_r50_4x16")
    f = torch.randn(2, 5, 32, 3, 3, dtype=torch.float64)
    grid = SlowFast._to_slow_grid(model, f, 4, 32)
    torch.testing.assert_close(grid.mean(2), f.mean(2))
    torch.testing.assert_close(grid[:, :, 1], f[:, :, 8:16].mean(2))
    f = torch.randn(1, 2, 11, 1, 1, dtype=torch.float64)  # the last slow frame sees 3 fast frames
    grid = SlowFast._to_slow_grid(model, f, 2, 11)
    torch.testing.assert_close(grid[:, :, 1], f[:, :, 8:].mean(2))


def test_layouts():
    r21, r3d, so, sf = (_meta(n) for n in ("r2plus1d_r50", "r3d_r50", "slowonly_r50", "slowfast_r50_4x16"))
    assert isinstance(r21, VideoResNet3d) and r21.maxpool is None
    assert r21.layer1[0].conv2.spatial.stride == (2, 2) and r21.layer1[0].conv2.temporal.kernel_size == (3, 1, 1)
    assert r21.layer1[0].conv2.temporal.padding == (1, 0, 0)
    assert r3d.conv1.kernel_size == (3, 7, 7) and r3d.conv1.stride == (1, 2, 2) and r3d.maxpool is None
    assert r3d.layer4[2].conv2.kernel_size == (3, 3, 3) and r3d.layer1[0].conv2.stride == (1, 2, 2)
    assert so.maxpool is not None and so.layer1[0].conv2.stride == (1, 1)
    assert [type(s[0].conv1).__name__ for s in so.stages] == ["FrameConv2d", "FrameConv2d", "Conv3d", "Conv3d"]
    assert isinstance(sf.layer1[0], DualPathBlock) and sf.fast_conv1.kernel_size == (5, 7, 7)
    assert [s[0].slow.conv1.in_channels for s in sf.stages] == [80, 320, 640, 1280]
    assert [s[0].fast.conv1.kernel_size for s in sf.stages] == [(3, 1, 1)] * 4
    assert sf.fuse[0].conv.kernel_size == (5, 1, 1) and sf.fuse[0].conv.stride == (8, 1, 1)
    assert _meta("slowfast_r50_8x8").fuse[3].conv.kernel_size == (7, 1, 1)
    assert sf.num_features == 2304
    tf = _meta("tada_slowfast_r50_4x16", tada_fast=True)
    assert isinstance(tf.layer2[0].fast.conv2, TAdaConv2d) and isinstance(tf.layer2[0].slow.conv2, TAdaConv2d)
    assert not isinstance(_meta("tada_slowfast_r50_4x16").layer2[0].fast.conv2, TAdaConv2d)


def test_foreign_checkpoints_are_rejected():
    model = _meta("r3d_r50")
    with pytest.raises(ValueError, match="released TAda"):
        load_pretrained(model, {"backbone.conv1.a.weight": torch.zeros(64, 3, 1, 7, 7)})
    with pytest.raises(ValueError, match="unrecognised checkpoint format"):
        load_pretrained(model, {"stages.0.0.dwconv.weight": torch.zeros(96, 1, 7, 7)})


# -- PySlowFast / PyTorchVideo checkpoints (SPEC §7), written from their key schemes ---------------------
ARCH = dict(depths=(1, 2, 1, 1), widths=(64, 128, 256, 512), stem_width=32)


def _pyslowfast(g, two_paths, num_classes=7, fusion_kernel=7, beta=8):
    """Random tensors named as a PySlowFast SlowFast / Slow R50 checkpoint (every conv a 5-D Conv3d)."""
    sd = {}

    def conv(key, *shape):
        sd[f"{key}.weight"] = torch.randn(*shape, generator=g) / 10

    def bn(key, c):
        sd[f"{key}.weight"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{key}.bias"] = torch.randn(c, generator=g) / 10
        sd[f"{key}.running_mean"] = torch.randn(c, generator=g) / 10
        sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{key}.num_batches_tracked"] = torch.tensor(7)

    stem, widths, depths = ARCH["stem_width"], ARCH["widths"], ARCH["depths"]
    paths = [(stem, widths, (1, 1, 3, 3), 1)]
    if two_paths:
        paths.append((stem // beta, [w // beta for w in widths], (3, 3, 3, 3), 5))
    for p, (sw, _, _, kt) in enumerate(paths):
        conv(f"s1.pathway{p}_stem.conv", sw, 3, kt, 7, 7)
        bn(f"s1.pathway{p}_stem.bn", sw)
    cin = [sw for sw, _, _, _ in paths]
    for s in range(2, 6):
        if two_paths:
            cf = cin[1]
            conv(f"s{s - 1}_fuse.conv_f2s", 2 * cf, cf, fusion_kernel, 1, 1)
            bn(f"s{s - 1}_fuse.bn", 2 * cf)
            cin[0] += 2 * cf
        for p, (_, ws, kts, _) in enumerate(paths):
            w, kt = ws[s - 2], kts[s - 2]
            for j in range(depths[s - 2]):
                pre = f"s{s}.pathway{p}_res{j}"
                if j == 0:
                    conv(f"{pre}.branch1", w, cin[p], 1, 1, 1)
                    bn(f"{pre}.branch1_bn", w)
                conv(f"{pre}.branch2.a", w // 4, cin[p], kt, 1, 1)
                bn(f"{pre}.branch2.a_bn", w // 4)
                conv(f"{pre}.branch2.b", w // 4, w // 4, 1, 3, 3)
                bn(f"{pre}.branch2.b_bn", w // 4)
                conv(f"{pre}.branch2.c", w, w // 4, 1, 1, 1)
                bn(f"{pre}.branch2.c_bn", w)
                cin[p] = w
    sd["head.projection.weight"] = torch.randn(num_classes, sum(c for c in cin), generator=g) / 10
    sd["head.projection.bias"] = torch.randn(num_classes, generator=g) / 10
    return sd


def _as_pytorchvideo(sd, two_paths):
    """The same tensors under PyTorchVideo's names (``blocks.N[.multipathway_blocks.p]...``)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("s1.pathway"):
            p = parts[1][len("pathway")]
            mid = f"multipathway_blocks.{p}." if two_paths else ""
            out[f"blocks.0.{mid}{'conv' if parts[2] == 'conv' else 'norm'}.{parts[3]}"] = v
        elif "_fuse." in k:
            n = int(parts[0][1]) - 1
            out[f"blocks.{n}.multipathway_fusion.{'conv_fast_to_slow' if parts[1] == 'conv_f2s' else 'norm'}.{parts[2]}"] = v
        elif k.startswith("head.projection."):
            out[f"blocks.{6 if two_paths else 5}.proj.{parts[2]}"] = v
        else:
            n = int(parts[0][1]) - 1
            p, j = parts[1][len("pathway")], parts[1].split("_res")[1]
            mid = f"multipathway_blocks.{p}." if two_paths else ""
            if parts[2] == "branch1":
                mod = "branch1_conv"
            elif parts[2] == "branch1_bn":
                mod = "branch1_norm"
            else:
                x = parts[3]
                mod = f"branch2.norm_{x[0]}" if x.endswith("_bn") else f"branch2.conv_{x}"
            out[f"blocks.{n}.{mid}res_blocks.{j}.{mod}.{parts[-1]}"] = v
    return out


@pytest.mark.parametrize("source", ["pyslowfast", "pytorchvideo"])
@pytest.mark.parametrize("name", ["slowfast_r50_8x8", "tada_slowfast_r50_8x8", "slowonly_r50"])
def test_pyslowfast_and_pytorchvideo_checkpoints_load(name, source):
    g = torch.Generator().manual_seed(9)
    two = "slowfast" in name
    psf = _pyslowfast(g, two)
    sd = psf if source == "pyslowfast" else _as_pytorchvideo(psf, two)
    model = tada.create_model(name, num_classes=7, **ARCH)
    report = load_pretrained(model, {"model_state": sd}["model_state"])
    assert report.reinitialised_head == [] and set(report.new_by_design) == model.new_parameter_names()
    own = model.state_dict()
    p = ".slow" if two else ""
    expect = {
        "conv1.weight": psf["s1.pathway0_stem.conv.weight"][:, :, 0],
        "bn1.running_var": psf["s1.pathway0_stem.bn.running_var"],
        f"layer1.0{p}.downsample.0.weight": psf["s2.pathway0_res0.branch1.weight"][:, :, 0],
        f"layer1.0{p}.downsample.1.bias": psf["s2.pathway0_res0.branch1_bn.bias"],
        f"layer2.1{p}.conv1.weight": psf["s3.pathway0_res1.branch2.a.weight"][:, :, 0],
        f"layer2.1{p}.conv2.weight": psf["s3.pathway0_res1.branch2.b.weight"][:, :, 0],
        f"layer2.1{p}.bn2.running_mean": psf["s3.pathway0_res1.branch2.b_bn.running_mean"],
        f"layer3.0{p}.conv1.weight": psf["s4.pathway0_res0.branch2.a.weight"],  # 3x1x1 stays 3D
        f"layer4.0{p}.conv3.weight": psf["s5.pathway0_res0.branch2.c.weight"][:, :, 0],
        "head.weight": psf["head.projection.weight"],
    }
    if two:
        expect.update({
            "fast_conv1.weight": psf["s1.pathway1_stem.conv.weight"],
            "fast_bn1.bias": psf["s1.pathway1_stem.bn.bias"],
            "fuse.0.conv.weight": psf["s1_fuse.conv_f2s.weight"],
            "fuse.3.bn.running_var": psf["s4_fuse.bn.running_var"],
            "layer2.1.fast.conv1.weight": psf["s3.pathway1_res1.branch2.a.weight"],
            "layer2.1.fast.conv2.weight": psf["s3.pathway1_res1.branch2.b.weight"][:, :, 0],
        })
    for k, v in expect.items():
        assert own[k].shape == v.shape and torch.equal(own[k], v), k
    n_own = sum(v.numel() for k, v in own.items() if k not in model.new_parameter_names())
    assert n_own == sum(v.numel() for v in psf.values())


def test_a_slowfast_checkpoint_does_not_fit_slowonly():
    sd = _pyslowfast(torch.Generator().manual_seed(1), True)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_pretrained(tada.create_model("slowonly_r50", num_classes=7, **ARCH), sd)


def test_bad_plug_in_options_raise_clear_errors():
    with pytest.raises(ValueError, match="tada_fast"):
        _meta("slowfast_r50_4x16", tada_fast=True)
    with pytest.raises(ValueError, match="fusion_kernel must be odd"):
        _meta("slowfast_r50_8x8", fusion_kernel=4)
    with pytest.raises(ValueError, match="beta_inv"):
        _meta("slowfast_r50_8x8", widths=(64, 128, 256, 500))
    with pytest.raises(ValueError, match="one entry per stage"):
        _meta("r3d_r50", depths=(1, 1, 1))
    with pytest.raises(ValueError, match="drop_rate"):
        _meta("r2plus1d_r50", drop_rate=1.0)
