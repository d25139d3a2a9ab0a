"""Temporal feature aggregation (T-Pool)."""
import pytest
import torch
import torch.nn.functional as F

from tada.nn import ChannelNorm, TemporalAggregation, _native, temporal_pool


def test_avg_pool_counts_zero_padding_by_hand():
    y = torch.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1)  # frames 1, 2, 3, 4
    out = temporal_pool(y, "avg").flatten().tolist()
    assert out == pytest.approx([(0 + 1 + 2) / 3, (1 + 2 + 3) / 3, (2 + 3 + 4) / 3, (3 + 4 + 0) / 3])


def test_max_pool_ignores_padding_and_mix_is_sum():
    y = -torch.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1)  # all negative: a zero pad would win a max
    assert temporal_pool(y, "max").flatten().tolist() == [-1.0, -1.0, -2.0, -3.0]
    assert torch.equal(temporal_pool(y, "mix"), temporal_pool(y, "avg") + temporal_pool(y, "max"))


@pytest.mark.parametrize("t", [1, 2, 3, 8])
def test_pool_matches_avg_pool3d_and_works_for_short_clips(t):
    y = torch.randn(2, 3, t, 4, 5, dtype=torch.float64)
    out = temporal_pool(y, "avg")
    assert out.shape == y.shape
    padded = F.pad(y, (0, 0, 0, 0, 1, 1))  # avg_pool3d needs T >= 3 unpadded, so pad by hand
    ref = F.avg_pool3d(padded, (3, 1, 1), stride=1)
    assert torch.allclose(out, ref, atol=1e-12)
    if t >= 3:
        assert torch.allclose(out, F.avg_pool3d(y, (3, 1, 1), 1, (1, 0, 0), count_include_pad=True), atol=1e-12)


@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_separate_norms_start_as_norm1(norm):
    agg = TemporalAggregation(6, norm=norm)
    y = torch.randn(2, 6, 5, 4, 4)
    assert torch.equal(agg(y), agg.norm1(y))
    # once norm2 is trained the pooled branch contributes
    with torch.no_grad():
        agg.norm2.weight.fill_(1.0)
    assert not torch.allclose(agg(y), agg.norm1(y))


def test_shortcut_variants():
    y = torch.randn(2, 6, 5, 4, 4)
    shared = TemporalAggregation(6, shortcut="shared").eval()
    none = TemporalAggregation(6, shortcut="none", pool="max").eval()
    assert shared.norm2 is None and none.norm2 is None
    assert torch.allclose(shared(y), shared.norm1(y + temporal_pool(y, "avg")))
    assert torch.allclose(none(y), none.norm1(temporal_pool(y, "max")))


def test_channel_norm_normalises_over_channels():
    y = torch.randn(2, 6, 3, 4, 4)
    ref = F.layer_norm(y.permute(0, 2, 3, 4, 1), (6,), eps=1e-6).permute(0, 4, 1, 2, 3)
    assert torch.allclose(ChannelNorm(6)(y), ref, atol=1e-6)


def test_bn_statistics_span_batch_and_time():
    agg = TemporalAggregation(3, norm="bn", shortcut="none").train()
    y = torch.randn(4, 3, 6, 5, 5)
    z = agg(y)
    assert torch.allclose(z.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(norm="gn"), "unknown norm"), (dict(pool="median"), "unknown pool"), (dict(shortcut="x"), "unknown shortcut")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemporalAggregation(4, **kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"expects \(B, 4, T, H, W\)"):
        TemporalAggregation(4)(torch.randn(2, 5, 3, 4, 4))


@pytest.mark.parametrize("pool", ["avg", "max", "mix"])
@pytest.mark.parametrize("shortcut", ["separate", "shared", "none"])
def test_channels_last_form_is_the_same(pool, shortcut):
    torch.manual_seed(0)
    agg = TemporalAggregation(16, norm="ln", pool=pool, shortcut=shortcut)
    with torch.no_grad():
        for p in agg.parameters():
            p.normal_()
    y = torch.randn(2, 5, 6, 7, 16).requires_grad_()  # (B, T, H, W, C)
    native = agg.forward_channels_last(y)  # the native kernels where they apply (tests/nn/test_native_tpool.py)
    with _native.disabled():  # the same sums in the same order as the (B, C, T, H, W) form
        out = agg.forward_channels_last(y)
    ref = agg(y.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    assert out.is_contiguous() and torch.equal(out, ref)
    assert native.is_contiguous()
    torch.testing.assert_close(native, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grad, grad_ref = torch.autograd.grad(out, y, g)[0], torch.autograd.grad(ref, y, g)[0]
    if agg.fuses(y, channels_last=True):  # the fused backward sums in another order
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(grad, grad_ref)
    with pytest.raises(ValueError, match="norm='ln'"):
        TemporalAggregation(16, norm="bn").forward_channels_last(y)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 16\)"):
        agg.forward_channels_last(y.permute(0, 4, 1, 2, 3))
