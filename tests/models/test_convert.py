import pytest
import torch

from release_reference import make_released_route_attn, released_route_attn
from tada.models.convert import (
    conv_to_linear,
    conv3d_to_conv1d,
    convert_released_route_attn,
    interleaved_to_head_major,
    squeeze_tada_bias,
    squeeze_tada_weight,
)
from tada.nn import RouteFuncAttn


@pytest.mark.parametrize("channels,reduction,head_dim,zero_init,bias_cal", [
    (96, 2, 48, True, True),    # TAdaConvNeXtV2-T stage 1: one head
    (384, 2, 48, True, True),   # four heads
    (128, 2, 16, True, False),  # many heads, no bias calibration
    (256, 2, 64, False, True),  # TAdaFormer-style: no zero-init
])
def test_released_route_attn_converts_to_reference(channels, reduction, head_dim, zero_init, bias_cal):
    g = torch.Generator().manual_seed(channels + head_dim)
    rel = make_released_route_attn(channels, reduction, bias_cal=bias_cal, generator=g)
    rf = RouteFuncAttn(channels, reduction=reduction, head_dim=head_dim, zero_init=zero_init,
                       bias_channels=channels if bias_cal else None).double()
    sd = convert_released_route_attn(rel, "rf", head_dim=head_dim)
    missing, unexpected = rf.load_state_dict({k[3:]: v.double() for k, v in sd.items()}, strict=True)
    x = torch.randn(2, channels, 6, 3, 3, generator=g, dtype=torch.float64)
    ref = released_route_attn({k: v.double() for k, v in rel.items()}, x, head_dim, zero_init)
    ours = rf(x)
    ours = list(ours) if isinstance(ours, tuple) else [ours]
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_layout_quirk_matters():
    """Loading the released q/k/v projection without the permutation gives a different routing, so the
    test above would catch a converter that forgot it (with more than one head)."""
    g = torch.Generator().manual_seed(0)
    rel = make_released_route_attn(384, 2, generator=g)
    sd = convert_released_route_attn(rel, "rf", head_dim=48)
    sd["rf.qkv.weight"] = rel["qkv_proj.weight"].flatten(1)
    sd["rf.qkv.bias"] = rel["qkv_proj.bias"]
    rf = RouteFuncAttn(384, reduction=2, head_dim=48, bias_channels=384).double()
    rf.load_state_dict({k[3:]: v.double() for k, v in sd.items()})
    x = torch.randn(2, 384, 6, 2, 2, generator=g, dtype=torch.float64)
    ref = released_route_attn({k: v.double() for k, v in rel.items()}, x, 48, True)
    assert (rf(x)[0] - ref[0]).abs().max() > 1e-3


def test_interleaved_permutation_is_a_permutation():
    t = torch.arange(3 * 12).float()
    p = interleaved_to_head_major(t, num_heads=3)
    assert sorted(p.tolist()) == t.tolist()
    # head 1, dim 0 of q comes from release channel 0 * 3 + 1
    assert p[4].item() == 1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="TAdaConv weight"):
        squeeze_tada_weight(torch.zeros(2, 1, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="bias"):
        squeeze_tada_bias(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="temporal conv"):
        conv3d_to_conv1d(torch.zeros(4, 4, 3, 2, 1))
    with pytest.raises(ValueError, match="heads"):
        interleaved_to_head_major(torch.zeros(30), num_heads=4)
    rel = make_released_route_attn(96, 2)
    rel["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_released_route_attn(rel, "rf", head_dim=48)
    assert squeeze_tada_weight(torch.zeros(1, 1, 4, 2, 3, 3)).shape == (4, 2, 3, 3)


# -- the rule engine ------------------------------------------------------------------------------
from tada.models.convert import Rule, apply_rules, explain_rules  # noqa: E402


def _sd(*keys):
    return {k: torch.full((2,), float(i)) for i, k in enumerate(keys)}


def test_first_matching_rule_wins():
    rules = (
        Rule(r"a\.special", "first"),
        Rule(r"a\.(?P<x>\w+)", "second.{x}"),
        Rule(r"a\.special", "never"),  # shadowed by the first rule
    )
    out = apply_rules(_sd("a.special", "a.other"), rules)
    assert list(out) == ["first", "second.other"]
    assert explain_rules(_sd("a.special", "a.other"), rules).unused == [rules[2]]


def test_named_groups_fields_offsets_and_defaults():
    rules = (Rule(r"s(?P<s>\d)\.(?:p(?P<p>\d)\.)?res(?P<j>\d+)\.(?P<rest>.+)", "layer{s-1}.{j}.p{p}.{norm}.{rest}"),
             Rule(r"n(?P<n>\d)", "stage{n+1}"))
    out = apply_rules(_sd("s2.p1.res3.w.x", "s3.res0.b", "n4"), rules, fields={"norm": "bn", "p": "0"})
    assert list(out) == ["layer1.3.p1.bn.w.x", "layer2.0.p0.bn.b", "stage5"]
    with pytest.raises(ValueError, match="no field 'norm'"):
        apply_rules(_sd("s2.res3.w"), rules, fields={"p": "0"})


def test_whole_key_must_match_and_prefix_rules():
    rules = (Rule(r"fc\.weight", "head.weight"), Rule.prefix("visual.", ""), Rule.prefix("text.", None))
    out = apply_rules(_sd("fc.weight.extra", "xfc.weight", "visual.conv1.weight", "text.token"), rules)
    assert list(out) == ["fc.weight.extra", "xfc.weight", "conv1.weight"]  # text.* dropped


def test_transforms_plain_named_and_errors_name_the_key():
    sd = {"a.weight": torch.ones(2, 3, 1, 1), "b.weight": torch.ones(4)}
    rules = (Rule(r"a\.weight", "a.weight", conv_to_linear), Rule(r"b\.weight", "b.weight", "double"))
    out = apply_rules(sd, rules, transforms={"double": lambda t: 2 * t})
    assert out["a.weight"].shape == (2, 3) and torch.equal(out["b.weight"], torch.full((4,), 2.0))
    assert sd["a.weight"].shape == (2, 3, 1, 1)  # pure: the input is untouched
    with pytest.raises(ValueError, match="'double', which was not given"):
        apply_rules(sd, rules)
    with pytest.raises(ValueError, match=r"^a\.weight: expected a pointwise"):
        apply_rules({"a.weight": torch.ones(2, 3, 3, 3)}, rules[:1])


def test_unmatched_keys_keep_drop_or_error():
    rules = (Rule(r"known", "renamed"),)
    sd = _sd("known", "stray.one", "stray.two")
    assert list(apply_rules(sd, rules)) == ["renamed", "stray.one", "stray.two"]  # default: kept
    assert list(apply_rules(sd, rules, unmatched="drop")) == ["renamed"]
    with pytest.raises(ValueError, match=r"my format: keys that match no conversion rule: \['stray.one', 'stray.two'\]"):
        apply_rules(sd, rules, unmatched="error", what="my format")
    with pytest.raises(ValueError, match="unmatched must be"):
        apply_rules(sd, rules, unmatched="ignore")
    rep = explain_rules(sd, rules)
    assert rep.unmatched == ["stray.one", "stray.two"] and rep.targets == {"known": "renamed"}


def test_a_rule_that_matches_nothing_is_harmless_and_reported():
    rules = (Rule(r"x", "y"), Rule(r"never\.(?P<p>\w+)", "z.{p}"))
    assert list(apply_rules(_sd("x"), rules, unmatched="error")) == ["y"]
    assert explain_rules(_sd("x"), rules).unused == [rules[1]]


def test_group_rules_convert_pieces_together():
    seen = []

    def merge(sub, dst):
        seen.append((dst, sorted(sub)))
        return {f"{dst}.qkv": torch.cat([sub["q"], sub["k"], sub["v"]])}

    rules = (Rule(r"blk(?P<i>\d)\.(?P<rest>[qkv])", "blocks.{i}.attn", group=merge),)
    out = apply_rules(_sd("blk0.q", "blk0.k", "blk0.v", "blk1.q", "blk1.k", "blk1.v"), rules)
    assert sorted(out) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"] and out["blocks.0.attn.qkv"].shape == (6,)
    assert seen == [("blocks.0.attn", ["k", "q", "v"]), ("blocks.1.attn", ["k", "q", "v"])]
    with pytest.raises(ValueError, match="named group 'rest'"):
        Rule(r"blk(?P<i>\d)", "x", group=merge)


def test_conditional_rules_and_collisions():
    rules = (Rule(r"(?P<b>l\d)\.conv\.weight", "{b}.conv.spatial.weight", if_target_exists=True),)
    sd = _sd("l1.conv.weight", "l2.conv.weight")
    assert list(apply_rules(sd, rules, targets={"l1.conv.spatial.weight"})) == ["l1.conv.spatial.weight",
                                                                                 "l2.conv.weight"]
    with pytest.raises(ValueError, match="give targets="):
        apply_rules(sd, rules)
    with pytest.raises(ValueError, match="both convert to 'same'"):
        apply_rules(_sd("a", "b"), (Rule(r"[ab]", "same"),))


def test_malformed_rules_fail_when_declared():
    with pytest.raises(ValueError, match="not a regular expression"):
        Rule(r"a(", "b")
    with pytest.raises(ValueError, match="not a name"):
        Rule(r"(?P<s>\d)", "layer{s*2}")
    with pytest.raises(TypeError, match="Rule objects"):
        apply_rules(_sd("a"), [(r"a", "b")])
