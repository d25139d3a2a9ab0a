"""TSN-R50 / TAda2D-R50 (SPEC §2, §3, §6): exactness at init against torchvision, ablation switches,
the released checkpoint layout, strict loading and the paper's parameter / FLOP counts."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import tada
from tada.models import load_pretrained
from tada.models.flops import profile_model
from tada.models.resnet import Bottleneck, VideoResNet, aggregate_frame_major
from tada.nn import TemporalAggregation
from tada.nn.functional import batch_to_frames, frames_to_batch
from model_testing import randomise_bn as _randomise_bn, rel_err as _rel_err  # noqa: E402




def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    sd = model.state_dict()
    return sd.keys() == snap.keys() and all(torch.equal(sd[k], snap[k]) for k in sd)


# -- 1/2: exact at init against torchvision ------------------------------------------------------------
@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tv = _randomise_bn(torchvision.models.resnet50(), g).eval()
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    tsn = tada.create_model("tsn_r50", pretrained=path, num_classes=1000).eval()
    tada2d = tada.create_model("tada2d_r50", pretrained=path, num_classes=1000).eval()
    x = torch.randn(1, 3, 3, 64, 64, generator=g)
    return dict(tv=tv, path=path, tsn=tsn, tada2d=tada2d, x=x)


def _torchvision_strided(tv):
    """torchvision ResNet-50 with the max-pool replaced by stride 2 in layer1's first block (same weights)."""
    ref = copy.deepcopy(tv)
    ref.maxpool = nn.Identity()
    ref.layer1[0].conv2.stride = (2, 2)
    ref.layer1[0].downsample[0].stride = (2, 2)
    return ref.eval()


def test_torchvision_resnet50_loads_with_only_new_by_design_params_missing(r50):
    rep_tsn, rep_tada = r50["tsn"].load_report, r50["tada2d"].load_report
    assert rep_tsn.new_by_design == [] and rep_tsn.reinitialised_head == []
    assert rep_tsn.loaded == len(r50["tv"].state_dict())
    assert rep_tada.reinitialised_head == []
    new = rep_tada.new_by_design
    assert new and all(".conv2.routing." in k or ".agg.norm2." in k for k in new), new[:5]
    assert len([k for k in new if k.endswith("agg.norm2.weight")]) == 16  # one T-Pool per bottleneck
    # the torchvision tensors land where they should
    tv = r50["tv"].state_dict()
    own = r50["tada2d"].state_dict()
    assert torch.equal(own["layer3.2.conv2.weight"], tv["layer3.2.conv2.weight"])
    assert torch.equal(own["layer3.2.agg.norm1.running_var"], tv["layer3.2.bn2.running_var"])
    assert torch.equal(own["head.weight"], tv["fc.weight"])


def test_tsn_and_tada2d_equal_each_other_and_strided_torchvision_at_init(r50):
    x = r50["x"]
    with torch.no_grad():
        out_tsn = r50["tsn"](x)
        out_tada = r50["tada2d"](x)
        ref = _torchvision_strided(r50["tv"])
        fc = ref.fc
        ref.fc = nn.Identity()
        frames = x[0].transpose(0, 1)  # (T, 3, H, W)
        ref_logits = fc(ref(frames).mean(0, keepdim=True))  # per-frame features averaged over frames
        plain_tv = r50["tv"](frames).mean(0, keepdim=True)  # with the max-pool: a different network
    assert out_tsn.shape == (1, 1000)
    assert _rel_err(out_tada, out_tsn) < 1e-5
    assert _rel_err(out_tsn, ref_logits) < 1e-5
    assert _rel_err(plain_tv, ref_logits) > 1e-3  # the comparison above can tell the layouts apart


def test_perturbed_routing_or_tpool_changes_the_output(r50):
    x = r50["x"]
    model = copy.deepcopy(r50["tada2d"])
    with torch.no_grad():
        base = r50["tsn"](x)
        model.layer2[1].conv2.routing.heads.b.weight.normal_(0, 0.05)
        routed = model(x)
        assert _rel_err(routed, base) > 1e-3
        model = copy.deepcopy(r50["tada2d"])
        model.layer3[0].agg.norm2.weight.fill_(0.5)
        assert _rel_err(model(x), base) > 1e-3


# -- model surface on the mini variant -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["tsn_r_mini", "tada2d_r_mini"])
@pytest.mark.parametrize("t", [1, 3])
def test_mini_any_frame_count_and_feature_shape(name, t):
    model = tada.create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, t, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, t, 2, 2)
    out = model.forward_head(feats)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_frames_stay_independent_in_tsn():
    model = tada.create_model("tsn_r_mini", num_classes=0).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        one = model.forward_features(x[:, :, 2:3])
    torch.testing.assert_close(feats[:, :, 2:3], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["bn", "ln"])
@pytest.mark.parametrize("pool", ["avg", "max", "mix"])
@pytest.mark.parametrize("shortcut", ["separate", "shared", "none"])
def test_frame_major_aggregation_equals_temporal_aggregation(norm, pool, shortcut):
    torch.manual_seed(0)
    agg = TemporalAggregation(6, norm=norm, pool=pool, shortcut=shortcut).train()
    for m in agg.modules():
        if m is not agg and hasattr(m, "weight"):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    ref_agg = copy.deepcopy(agg)
    b, t = 2, 5
    y4 = torch.randn(b * t, 6, 3, 4, dtype=torch.float64)
    agg.double(), ref_agg.double()
    ours = aggregate_frame_major(agg, y4, t)
    ref = frames_to_batch(ref_agg(batch_to_frames(y4, b, t)))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # the running statistics (BN) are updated identically
    for (k, v), (_, w) in zip(agg.state_dict().items(), ref_agg.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=1e-10, atol=1e-10, msg=k)


# -- 3: ablation switches ------------------------------------------------------------------------------
ABLATIONS = [
    dict(cal_dim="cin"),
    dict(cal_dim="cout"),
    dict(cal_dim="cin_cout"),
    dict(cal_dim="k2"),
    dict(routing="v2"),
    dict(routing="v2", cal_dim="cout", routing_kwargs=dict(reduction=4)),
    dict(routing_kwargs=dict(linear=True)),
    dict(routing_kwargs=dict(global_context=False, kernels=(1, 5), reduction=2)),
    dict(aggregation=False),
    dict(agg_pool="max"),
    dict(agg_pool="mix"),
    dict(agg_norm="ln"),
    dict(agg_shortcut="shared"),
    dict(agg_shortcut="none"),
    dict(tada_impl="grouped"),
]


@pytest.mark.parametrize("kwargs", ABLATIONS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_ablation_switches_build_run_and_start_as_tsn(kwargs):
    torch.manual_seed(0)
    model = tada.create_model("tada2d_r_mini", num_classes=3, **kwargs).train()
    x = torch.randn(2, 3, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

    # the calibration is 1 and T-Pool's pooled branch is zero at init: with the same 2D weights the
    # model equals TSN, except for the T-Pool variants that change the function by design
    tsn = _randomise_bn(tada.create_model("tsn_r_mini", num_classes=3), torch.Generator().manual_seed(1)).eval()
    load_pretrained(model, tsn.state_dict())
    model.eval()
    with torch.no_grad():
        diff = _rel_err(model(x), tsn(x))
    if kwargs.get("agg_shortcut", "separate") == "separate" and kwargs.get("agg_norm", "bn") == "bn":
        assert diff < 1e-5, diff
    else:
        assert diff > 1e-4  # shared / none shortcut and LN norms differ from TSN at init


def test_ablation_param_counts_follow_the_options():
    m = {k: tada.create_model("tada2d_r_mini", cal_dim=k) for k in ("cin", "cin_cout", "k2")}
    n = {k: sum(p.numel() for p in v.parameters()) for k, v in m.items()}
    assert n["cin_cout"] > n["cin"] > n["k2"]
    blk = m["cin"].layer1[0]
    assert isinstance(blk, Bottleneck) and blk.bn2 is None and blk.agg.norm2 is not None
    no_agg = tada.create_model("tada2d_r_mini", aggregation=False).layer1[0]
    assert no_agg.agg is None and isinstance(no_agg.bn2, nn.BatchNorm2d)
    tsn_pool = tada.create_model("tsn_r_mini", aggregation=True).layer1[0]  # T-Pool on a plain conv
    assert isinstance(tsn_pool.conv2, nn.Conv2d) and tsn_pool.agg is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cal_dim="cin_out"), "unknown cal_dim"),
        (dict(routing="v3"), "unknown routing"),
        (dict(agg_pool="median"), "unknown agg_pool"),
        (dict(agg_shortcut="both"), "unknown agg_shortcut"),
        (dict(agg_norm="gn"), "unknown agg_norm"),
        (dict(aggregation="yes"), "aggregation must be True or False"),
        (dict(drop_rate=1.5), "drop_rate"),
        (dict(tada_impl="fast", cal_dim="k2"), "k2"),
        (dict(routing_kwargs=dict(reduction=0)), "reduction"),
        (dict(routing_kwargs=[("reduction", 2)]), "routing_kwargs must be a dict"),
        (dict(depths=(1, 1), widths=(64, 128, 256)), "same length"),
        (dict(depths=(1, 0, 1, 1), widths=(64, 128, 256, 512)), r"depths\[1\]"),
        (dict(depths=(1,), widths=(66,)), "divisible by bottleneck_ratio"),
        (dict(stem_width=0), "stem_width"),
        (dict(num_classes=-2), "num_classes"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VideoResNet(**{"depths": (1, 1, 1, 1), "widths": (64, 128, 256, 512), "stem_width": 32, **kwargs})


def test_routing_kwargs_need_tada():
    with pytest.raises(ValueError, match="routing_kwargs"):
        tada.create_model("tsn_r_mini", routing_kwargs=dict(reduction=2))


# -- 4: the released TAda2D layout (SPEC §6) -----------------------------------------------------------
MINI = dict(depths=(1, 1, 1, 1), widths=(64, 128, 256, 512), stem=32)


def _make_released(depths, widths, stem, base, num_classes, g):
    """Random tensors in the released TAda2D layout, written from SPEC §6 alone (Conv3d weights
    (O, I, 1, k, k), TAdaConv weight (1, 1, O, I, 3, 3), routing as Conv3d (k, 1, 1), BN3d)."""

    def r(*shape, fan_in=None):
        return torch.randn(*shape, generator=g) / (fan_in ** 0.5 if fan_in else 10)

    sd = {}

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    sd["backbone.conv1.a.weight"] = r(stem, 3, 1, 7, 7, fan_in=3 * 49)
    bn("backbone.conv1.a_bn", stem)
    cin = stem
    for s, (depth, w) in enumerate(zip(depths, widths)):
        mid, hid = w // 4, w // 16
        for j in range(depth):
            p = f"backbone.conv{s + 2}.res_{j + base}"
            if j == 0:
                sd[f"{p}.short_cut.weight"] = r(w, cin, 1, 1, 1, fan_in=cin)
                bn(f"{p}.short_cut_bn", w)
            cb = f"{p}.conv_branch"
            sd[f"{cb}.a.weight"] = r(mid, cin, 1, 1, 1, fan_in=cin)
            bn(f"{cb}.a_bn", mid)
            sd[f"{cb}.b.weight"] = r(1, 1, mid, mid, 3, 3, fan_in=mid * 9)
            sd[f"{cb}.b_rf.g.weight"] = r(mid, mid, 1, 1, 1, fan_in=mid)
            sd[f"{cb}.b_rf.g.bias"] = r(mid)
            sd[f"{cb}.b_rf.a.weight"] = r(hid, mid, 3, 1, 1, fan_in=mid * 3)
            sd[f"{cb}.b_rf.a.bias"] = r(hid)
            bn(f"{cb}.b_rf.bn", hid)
            sd[f"{cb}.b_rf.b.weight"] = r(mid, hid, 3, 1, 1, fan_in=hid * 3)  # non-zero: a trained routing
            bn(f"{cb}.b_bn", mid)
            bn(f"{cb}.b_avgpool_bn", mid)
            sd[f"{cb}.c.weight"] = r(w, mid, 1, 1, 1, fan_in=mid)
            bn(f"{cb}.c_bn", w)
            cin = w
    sd["head.out.weight"] = r(num_classes, widths[-1], fan_in=widths[-1])
    sd["head.out.bias"] = r(num_classes)
    return sd


def _bn(x, sd, p):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return ((x - sd[f"{p}.running_mean"].view(shape)) / torch.sqrt(sd[f"{p}.running_var"].view(shape) + 1e-5)
            * sd[f"{p}.weight"].view(shape) + sd[f"{p}.bias"].view(shape))


def _released_routing(sd, p, x):
    """``1 + conv1d_b(relu(bn(conv1d_a(v + g(mean)))))`` straight from the released Conv3d tensors."""
    v = x.mean(dim=(3, 4), keepdim=True)  # (B, C, T, 1, 1)
    glob = F.conv3d(x.mean(dim=(2, 3, 4), keepdim=True), sd[f"{p}.g.weight"], sd[f"{p}.g.bias"])
    h = F.conv3d(v + glob, sd[f"{p}.a.weight"], sd[f"{p}.a.bias"], padding=(1, 0, 0))
    h = F.relu(_bn(h, sd, f"{p}.bn"))
    return 1 + F.conv3d(h, sd[f"{p}.b.weight"], padding=(1, 0, 0))  # (B, C, T, 1, 1)


def _released_block(sd, p, x, stride):
    cb = f"{p}.conv_branch"
    h = F.relu(_bn(F.conv3d(x, sd[f"{cb}.a.weight"]), sd, f"{cb}.a_bn"))
    alpha = _released_routing(sd, f"{cb}.b_rf", h)
    w = sd[f"{cb}.b.weight"][0, 0]
    b, _, t = h.shape[:3]
    y = torch.stack([
        torch.cat([F.conv2d(h[i:i + 1, :, k], w * alpha[i, None, :, k], stride=stride, padding=1)  # per-frame kernel
                   for i in range(b)])
        for k in range(t)
    ], dim=2)
    pooled = F.avg_pool3d(F.pad(y, (0, 0, 0, 0, 1, 1)), (3, 1, 1), stride=1)  # zero padding counted
    z = F.relu(_bn(y, sd, f"{cb}.b_bn") + _bn(pooled, sd, f"{cb}.b_avgpool_bn"))
    out = _bn(F.conv3d(z, sd[f"{cb}.c.weight"]), sd, f"{cb}.c_bn")
    if f"{p}.short_cut.weight" in sd:
        x = _bn(F.conv3d(x, sd[f"{p}.short_cut.weight"], stride=(1, stride, stride)), sd, f"{p}.short_cut_bn")
    return F.relu(out + x)


def _released_forward(sd, x, depths, base):
    x = F.relu(_bn(F.conv3d(x, sd["backbone.conv1.a.weight"], stride=(1, 2, 2), padding=(0, 3, 3)),
                   sd, "backbone.conv1.a_bn"))
    for s, depth in enumerate(depths):
        for j in range(depth):
            x = _released_block(sd, f"backbone.conv{s + 2}.res_{j + base}", x, 2 if j == 0 else 1)
    return F.linear(x.mean(dim=(2, 3, 4)), sd["head.out.weight"], sd["head.out.bias"])


@pytest.mark.parametrize("base", [0, 1])
def test_released_tada2d_checkpoint_loads_and_computes_the_released_model(tmp_path, base):
    g = torch.Generator().manual_seed(10 + base)
    rel = _make_released(MINI["depths"], MINI["widths"], MINI["stem"], base, 7, g)
    path = tmp_path / "tada2d_mini_k400.pyth"
    torch.save({"epoch": 100, "model_state": rel, "cfg": {}}, path)
    model = tada.create_model("tada2d_r_mini", pretrained=path, num_classes=7).eval()
    assert model.load_report.new_by_design == [] and model.load_report.reinitialised_head == []
    own = model.state_dict()
    # every tensor lands at its key, squeezed
    k = f"backbone.conv3.res_{base}"
    expect = {
        "conv1.weight": rel["backbone.conv1.a.weight"][:, :, 0],
        "bn1.running_var": rel["backbone.conv1.a_bn.running_var"],
        "layer2.0.downsample.0.weight": rel[f"{k}.short_cut.weight"][:, :, 0],
        "layer2.0.downsample.1.bias": rel[f"{k}.short_cut_bn.bias"],
        "layer2.0.conv1.weight": rel[f"{k}.conv_branch.a.weight"][:, :, 0],
        "layer2.0.bn1.running_mean": rel[f"{k}.conv_branch.a_bn.running_mean"],
        "layer2.0.conv2.weight": rel[f"{k}.conv_branch.b.weight"][0, 0],
        "layer2.0.conv2.routing.g.weight": rel[f"{k}.conv_branch.b_rf.g.weight"][:, :, :, 0, 0],
        "layer2.0.conv2.routing.a.weight": rel[f"{k}.conv_branch.b_rf.a.weight"][:, :, :, 0, 0],
        "layer2.0.conv2.routing.bn.running_var": rel[f"{k}.conv_branch.b_rf.bn.running_var"],
        "layer2.0.conv2.routing.heads.b.weight": rel[f"{k}.conv_branch.b_rf.b.weight"][:, :, :, 0, 0],
        "layer2.0.agg.norm1.weight": rel[f"{k}.conv_branch.b_bn.weight"],
        "layer2.0.agg.norm2.weight": rel[f"{k}.conv_branch.b_avgpool_bn.weight"],
        "layer2.0.conv3.weight": rel[f"{k}.conv_branch.c.weight"][:, :, 0],
        "layer2.0.bn3.running_mean": rel[f"{k}.conv_branch.c_bn.running_mean"],
        "head.weight": rel["head.out.weight"],
    }
    for key, value in expect.items():
        assert own[key].shape == value.shape and torch.equal(own[key], value), key
    assert sum(v.numel() for v in own.values()) == sum(v.numel() for v in rel.values())

    x = torch.randn(2, 3, 4, 32, 32, generator=g)
    # the routing of one block, from the source tensors
    h = torch.randn(2, 32, 4, 8, 8, generator=g)
    with torch.no_grad():
        alpha = model.layer2[0].conv2.routing(h)
    torch.testing.assert_close(alpha, _released_routing(rel, f"{k}.conv_branch.b_rf", h)[..., 0, 0],
                               rtol=1e-5, atol=1e-5)
    assert (alpha - 1).abs().max() > 1e-2  # the routing is not trivially 1
    # one bottleneck, and the whole network, against a forward written on the released tensors
    rel64 = {k_: v.double() if v.is_floating_point() else v for k_, v in rel.items()}
    model = model.double()
    xb = torch.randn(2, 64, 4, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.layer2[0](xb), _released_block(rel64, k, xb, 2), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model(x.double()), _released_forward(rel64, x.double(), MINI["depths"], base),
                                   rtol=1e-9, atol=1e-9)


def test_released_layout_with_several_blocks_per_stage(tmp_path):
    g = torch.Generator().manual_seed(3)
    depths = (2, 1, 3, 1)
    rel = _make_released(depths, MINI["widths"], MINI["stem"], 1, 4, g)
    model = VideoResNet(depths=depths, widths=MINI["widths"], stem_width=MINI["stem"], num_classes=4).double().eval()
    load_pretrained(model, {"epoch": 1, "model_state": rel}["model_state"])
    rel64 = {k: v.double() if v.is_floating_point() else v for k, v in rel.items()}
    x = torch.randn(1, 3, 3, 32, 32, dtype=torch.float64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _released_forward(rel64, x, depths, 1), rtol=1e-9, atol=1e-9)


def test_released_checkpoint_into_tsn_is_rejected():
    g = torch.Generator().manual_seed(4)
    rel = _make_released(MINI["depths"], MINI["widths"], MINI["stem"], 1, 4, g)
    model = tada.create_model("tsn_r_mini", num_classes=4)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_pretrained(model, rel)


# -- 5: bad checkpoints ----------------------------------------------------------------------------------
def test_bad_checkpoints_raise_and_load_nothing(r50, tmp_path):
    model = r50["tsn"]
    snap = _snapshot(model)
    tv_sd = r50["tv"].state_dict()

    convnext = {"downsample_layers.0.0.weight": torch.zeros(96, 3, 4, 4),
                "stages.0.0.dwconv.weight": torch.zeros(96, 1, 7, 7), "stages.0.0.gamma": torch.zeros(96)}
    with pytest.raises(ValueError, match="unrecognised checkpoint format.*torchvision resnet"):
        load_pretrained(model, convnext)
    assert _unchanged(model, snap)

    data = r50["path"].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_pretrained(model, truncated)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        tada.create_model("tsn_r50", pretrained=truncated)
    assert _unchanged(model, snap)

    bad_shape = dict(tv_sd)
    bad_shape["layer3.1.conv2.weight"] = torch.zeros(256, 256, 5, 5)
    with pytest.raises(ValueError, match=r"shape mismatch.*layer3\.1\.conv2\.weight"):
        load_pretrained(model, bad_shape)
    assert _unchanged(model, snap)

    missing = dict(tv_sd)
    del missing["layer4.2.bn3.running_var"]
    with pytest.raises(ValueError, match=r"missing keys: layer4\.2\.bn3\.running_var"):
        load_pretrained(model, missing)
    assert _unchanged(model, snap)

    other_release = {"backbone.downsample_layers.0.0.weight": torch.zeros(96, 3, 4, 4)}
    with pytest.raises(ValueError, match="released TAda2D"):
        load_pretrained(model, other_release)
    assert _unchanged(model, snap)


# -- 6: the paper's numbers (SPEC §3; the rows of flops.PAPER are checked in test_registry.py) --------------------------------------------------------------------
def _meta(name, **kwargs):
    with torch.device("meta"):
        return tada.create_model(name, **kwargs)


def test_tada_adds_almost_no_flops():
    _, f_tsn = profile_model(_meta("tsn_r50"), 8, 224)
    _, f_tada = profile_model(_meta("tada2d_r50"), 8, 224)
    assert 0 < f_tada - f_tsn < 0.05  # paper: 33.00 -> 33.02


@pytest.mark.parametrize("cal_dim, delta_m", [("cin", 3.16), ("cout", 3.16), ("cin_cout", 4.10), ("k2", 2.24)])
def test_calibration_dim_param_deltas_match_table_3b(cal_dim, delta_m):
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    delta = (n(_meta("tada2d_r50", cal_dim=cal_dim)) - n(_meta("tsn_r50"))) / 1e6
    assert abs(delta / delta_m - 1) < 0.03, delta
