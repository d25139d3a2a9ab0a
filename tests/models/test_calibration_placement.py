"""Where to calibrate on TAda2D (paper Fig. 4) and which generator (Table 3a / A8): ``tada_stages``,
``cal_fraction`` and ``routing=<generator>`` on the ResNet family: exact at init against TSN loaded
from a torchvision checkpoint, hand-counted parameters, untouched stages plain."""
import pytest
import torch
import torch.nn as nn

import tada
from tada.nn import CALIBRATIONS, TAdaConv2d
from model_testing import randomise_bn, rel_err

MIDS = {2: 16, 3: 32, 4: 64, 5: 128}  # tada2d_r_mini's bottleneck widths per stage (res2..res5)


def _mlp_params(c, n, r=4):
    """RouteFuncMLP(c -> n) by hand: g 1x1 (c*c + c), a k3 (c*(c/r)*3 + c/r), BN (2 * c/r), b k3 (c/r*n*3)."""
    h = c // r
    return c * c + c + c * h * 3 + h + 2 * h + h * n * 3


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def torchvision_mini(tmp_path_factory):
    """A torchvision-layout checkpoint with tsn_r_mini's shapes (stem 32, planes 16..128; random
    weights and BN statistics)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    g = torch.Generator().manual_seed(0)
    tv = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5)
    tv.conv1, tv.bn1, tv.inplanes = nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), 32
    tv.layer1 = tv._make_layer(Bottleneck, 16, 1)
    tv.layer2 = tv._make_layer(Bottleneck, 32, 1, stride=2)
    tv.layer3 = tv._make_layer(Bottleneck, 64, 1, stride=2)
    tv.layer4 = tv._make_layer(Bottleneck, 128, 1, stride=2)
    tv.fc = nn.Linear(512, 5)
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(0, 0.05, generator=g)
    tv = randomise_bn(tv, g)
    path = tmp_path_factory.mktemp("tv") / "mini.pth"
    torch.save(tv.state_dict(), path)
    return path


def _pair(path, **kw):
    tsn = tada.create_model("tsn_r_mini", pretrained=path, num_classes=5).eval()
    model = tada.create_model("tada2d_r_mini", pretrained=path, num_classes=5, **kw).eval()
    return tsn, model


@pytest.mark.parametrize("kw", [
    dict(tada_stages=(2,)), dict(tada_stages=(5,)), dict(tada_stages=(3, 4)),
    dict(cal_fraction=1 / 64), dict(tada_stages=(4, 5), cal_fraction=1 / 4, aggregation=False),
    *[dict(routing=name) for name in CALIBRATIONS],
    dict(routing="v1", routing_kwargs={"global_context": False}),
])
def test_exact_at_init_from_a_torchvision_checkpoint(torchvision_mini, kw):
    tsn, model = _pair(torchvision_mini, **kw)
    assert model.load_report.reinitialised_head == []
    missing_old = [k for k in model.load_report.new_by_design if ".routing." not in k and ".agg.norm2." not in k]
    assert missing_old == []
    x = torch.randn(2, 3, 6, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(model(x), tsn(x)) < 1e-6


def test_random_init_generators_depart_from_the_plain_model(torchvision_mini):
    tsn, _ = _pair(torchvision_mini)
    x = torch.randn(2, 3, 6, 32, 32, generator=torch.Generator().manual_seed(1))
    for name in CALIBRATIONS:
        torch.manual_seed(0)
        _, model = _pair(torchvision_mini, routing=name, routing_kwargs={"init": "random"})
        with torch.no_grad():
            assert rel_err(model(x), tsn(x)) > 1e-4, name


def test_tada_stages_build_tsn_stages_elsewhere_and_count_parameters():
    tsn = tada.create_model("tsn_r_mini", num_classes=4)
    for stages in [(2,), (3,), (5,), (2, 4), (2, 3, 4, 5)]:
        m = tada.create_model("tada2d_r_mini", num_classes=4, tada_stages=stages)
        for s, layer in zip((2, 3, 4, 5), m.stages):
            conv2, blk = layer[0].conv2, layer[0]
            assert isinstance(conv2, TAdaConv2d) == (s in stages)
            assert (blk.agg is not None) == (s in stages) and (blk.bn2 is None) == (s in stages)
        # each TAda stage adds its routing and T-Pool's second BatchNorm (2 x mid)
        extra = sum(_mlp_params(MIDS[s], MIDS[s]) + 2 * MIDS[s] for s in stages)
        assert _count(m) - _count(tsn) == extra, stages
    assert tada.create_model("tada2d_r_mini", num_classes=4).tada_stages == (2, 3, 4, 5)


@pytest.mark.parametrize("fraction", [1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0])
def test_cal_fraction_counts_parameters_and_leaves_the_rest_at_one(fraction):
    import math

    tsn = tada.create_model("tsn_r_mini", num_classes=4)
    m = tada.create_model("tada2d_r_mini", num_classes=4, cal_fraction=fraction, aggregation=False)
    extra = sum(_mlp_params(c, max(1, math.ceil(c * fraction - 1e-9))) for c in MIDS.values())
    assert _count(m) - _count(tsn) == extra
    with torch.no_grad():  # a trained-looking routing: alpha far from 1 where it is routed
        for name, p in m.named_parameters():
            if ".routing." in name:
                p.normal_(0, 0.3)
    x = torch.randn(1, 3, 4, 32, 32)
    alphas = {}
    hooks = [layer[0].conv2.routing.register_forward_hook(lambda mod, i, o, s=s: alphas.__setitem__(s, o))
             for s, layer in zip(MIDS, m.stages)]
    with torch.no_grad():
        m.eval()(x)
    for h in hooks:
        h.remove()
    for s, c in MIDS.items():
        n = max(1, math.ceil(c * fraction - 1e-9))
        a = alphas[s]
        assert a.shape == (1, c, 4)
        assert torch.equal(a[:, n:], torch.ones_like(a[:, n:]))
        assert (a[:, :n] - 1).abs().max() > 1e-3


def test_placement_errors():
    with pytest.raises(ValueError, match="tada_stages must be a non-empty subset of \\(2, 3, 4, 5\\)"):
        tada.create_model("tada2d_r_mini", tada_stages=(1, 2))
    with pytest.raises(ValueError, match="tada_stages only apply"):
        tada.create_model("tsn_r_mini", tada_stages=(2,))
    with pytest.raises(ValueError, match="cal_fraction must be in"):
        tada.create_model("tada2d_r_mini", cal_fraction=2)
    with pytest.raises(ValueError, match="routing"):
        tada.create_model("tada2d_r_mini", routing="nope")
