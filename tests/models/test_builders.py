"""tada.models.builders: the bottleneck takes its sub-layers as callables; per-frame layers keep the
frame-major layout; 2D -> 3D inflation."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tada.models.builders import (Bottleneck, FrameAggregation, FrameBatchNorm2d, FrameConv2d, conv2d, conv3d,
                                  inflate_conv_weight, t_pool, tada_conv2d)
from tada.nn import TAdaConv2d, TemporalAggregation


def _frame_major(x):
    return x.transpose(1, 2).is_contiguous()


def _copy_2d_into_3d(src: nn.Module, dst: nn.Module):
    """Same weights; 4-D conv kernels become (O, I, 1, kh, kw)."""
    sd = {k: (v.unsqueeze(2) if v.dim() == 4 else v) for k, v in src.state_dict().items()}
    dst.load_state_dict(sd)


def _randomise(module, g):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


@pytest.mark.parametrize("stride", [1, 2])
def test_per_frame_bottleneck_equals_the_same_block_built_from_conv3d_factories(stride):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    per_frame = Bottleneck(16, 32, stride).eval()
    k3 = Bottleneck(16, 32, stride, conv_a=conv3d((1, 1, 1)), conv_b=conv3d((1, 3, 3)), conv_c=conv3d(1),
                    shortcut=conv3d(1), norm=nn.BatchNorm3d).eval()
    _randomise(per_frame, g)
    _copy_2d_into_3d(per_frame, k3)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)
    with torch.no_grad():
        a, b = per_frame(x), k3(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert _frame_major(a)  # chained per-frame blocks fold the frames with free views
    assert isinstance(per_frame.conv2, nn.Conv2d) and isinstance(per_frame.bn2, nn.BatchNorm2d)


def test_a_users_callable_plugs_in():
    calls = []

    def my_conv(cin, cout, stride):
        calls.append((cin, cout, stride))
        return nn.Conv3d(cin, cout, (3, 3, 3), (1, stride, stride), 1, bias=False)

    blk = Bottleneck(8, 16, 2, conv_b=my_conv, aggregation=t_pool())
    assert calls == [(4, 4, 2)] and blk.bn2 is None and isinstance(blk.agg, TemporalAggregation)
    assert blk(torch.randn(1, 8, 4, 8, 8)).shape == (1, 16, 4, 4, 4)


def test_tada_factory_and_tpool_start_as_the_plain_block():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    plain = Bottleneck(16, 16).eval()
    _randomise(plain, g)
    tada = Bottleneck(16, 16, conv_b=tada_conv2d(3), aggregation=t_pool()).eval()
    sd = {k.replace("bn2.", "agg.norm1."): v for k, v in plain.state_dict().items()}
    missing, unexpected = tada.load_state_dict(sd, strict=False)
    assert not unexpected and all(".routing." in k or "agg.norm2" in k for k in missing)
    assert isinstance(tada.conv2, TAdaConv2d)
    x = torch.randn(2, 16, 4, 6, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(tada(x), plain(x), rtol=1e-5, atol=1e-5)


def test_frame_layers_equal_their_3d_counterparts_on_any_layout():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 7, 7, generator=g)
    conv = FrameConv2d(4, 6, 3, 2, 1, bias=False)
    ref = F.conv3d(x, conv.weight.unsqueeze(2), stride=(1, 2, 2), padding=(0, 1, 1))
    torch.testing.assert_close(conv(x), ref)
    torch.testing.assert_close(conv(x.transpose(1, 2).contiguous().transpose(1, 2)), ref)  # frame-major input
    bn = FrameBatchNorm2d(4).train()
    bn3 = nn.BatchNorm3d(4).train()
    torch.testing.assert_close(bn(x), bn3(x))
    torch.testing.assert_close(bn.running_var, bn3.running_var)
    agg, agg_ref = FrameAggregation(4), TemporalAggregation(4)
    with torch.no_grad():
        agg.norm2.weight.fill_(0.7)
        agg_ref.norm2.weight.fill_(0.7)
    torch.testing.assert_close(agg(x), agg_ref(x))
    assert conv2d(1)(4, 8, 1).kernel_size == (1, 1) and conv3d((3, 1, 1))(4, 8, 2).padding == (1, 0, 0)


def test_inflated_kernel_on_a_static_clip_is_the_2d_kernel():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    frame = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64)
    clip = frame[:, :, None].expand(1, 4, 5, 6, 6)
    y = F.conv3d(clip, inflate_conv_weight(w, 3), padding=(1, 1, 1))
    ref = F.conv2d(frame, w, padding=1)
    for t in range(1, 4):
        torch.testing.assert_close(y[:, :, t], ref)
    torch.testing.assert_close(y[:, :, 0], ref * 2 / 3)  # the zero temporal padding
