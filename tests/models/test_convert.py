import pytest
import torch

from release_reference import make_released_route_attn, released_route_attn
from tada.models.convert import (
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
