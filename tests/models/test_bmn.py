"""BMN (SPEC §8): the boundary-matching layer (sparse = dense reference = the reference's loop rule),
its fused Conv3d projection, the model's outputs, label generation and the losses on hand cases."""
import math

import pytest
import torch

from tada.models.bmn import (
    BMN,
    BMProjection,
    BoundaryMatchingLayer,
    bm_sampling_matrix,
    bm_valid_mask,
    bmn_loss,
    bmn_targets,
)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # sampling weights built in float64 too
    yield
    torch.set_default_dtype(old)


def _loop_reference_mask(T, D, N, S, ratio):
    """The sampling rule written out point by point as the BMN reference describes it (math.modf
    split, both neighbours kept when inside [0, T-1]; zero for proposals ending past the window);
    independent of the vectorised construction in tada.models.bmn. Returns (T, N*D*T)."""
    m = torch.zeros(T, N, D, T, dtype=torch.float64)
    for t in range(T):
        for d in range(D):
            if t + d >= T:
                continue
            length = d + 1.0
            lo, hi = t - length * ratio, t + d + length * ratio
            step = (hi - lo) / (N * S - 1.0)
            pts = [lo + step * i for i in range(N * S)]
            for n in range(N):
                v = [0.0] * T
                for p in pts[n * S:(n + 1) * S]:
                    frac, down = math.modf(p)
                    up = math.ceil(p)
                    if 0 <= int(down) <= T - 1:
                        v[int(down)] += 1 - frac
                    if 0 <= up <= T - 1:
                        v[up] += frac
                m[:, n, d, t] = torch.tensor(v) / S
    return m.reshape(T, -1)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("T,D,N,S,ratio", [(16, 16, 32, 3, 0.5), (10, 7, 5, 2, 0.3), (12, 12, 4, 1, 0.0)])
def test_dense_mask_matches_pointwise_reference(float64, T, D, N, S, ratio):
    ref = _loop_reference_mask(T, D, N, S, ratio)
    layer = BoundaryMatchingLayer(T, D, N, S, ratio, impl="dense")
    assert layer.mask.shape == (T, N * D * T)
    assert (layer.mask - ref).abs().max().item() < 1e-12


def _read_weights(impl, T=10, D=10, N=2, S=3, ratio=0.5):
    """out[c, n, d, t] with one-hot inputs: the weight with which bin n of (d, t) reads position c."""
    layer = BoundaryMatchingLayer(T, D, N, S, ratio, impl=impl)
    return layer(torch.eye(T, dtype=torch.float64)[None])[0]  # (C=T, N, D, T)


@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_hand_checked_sample_positions(float64, impl):
    w = _read_weights(impl)
    # proposal start 2, duration 2 (d=1): range [2 - 1, 3 + 1] = [1, 4], 6 points 0.6 apart:
    # 1.0 1.6 2.2 | 2.8 3.4 4.0  -> bin 0 reads pos 1: (1 + .4)/3, pos 2: (.6 + .8)/3, pos 3: .2/3
    exp0 = {1: 1.4 / 3, 2: 1.4 / 3, 3: 0.2 / 3}
    exp1 = {2: 0.2 / 3, 3: 1.4 / 3, 4: 1.4 / 3}
    for n, exp in ((0, exp0), (1, exp1)):
        col = w[:, n, 1, 2]
        want = torch.zeros(10, dtype=torch.float64)
        for pos, v in exp.items():
            want[pos] = v
        assert (col - want).abs().max().item() < 1e-12, (n, col)
    # start 0, d=1: points -1.0 -0.4 0.2 | 0.8 1.4 2.0. -1.0 reads nothing; -0.4 reads position 0 with
    # full weight (the reference's truncation toward zero); 0.2 -> .8 at 0, .2 at 1.
    assert w[:, 0, 1, 0].tolist() == pytest.approx([1.8 / 3, 0.2 / 3] + [0.0] * 8, abs=1e-12)
    # start 8, d=1: 7 7.6 8.2 | 8.8 9.4 10.0: bin 1 loses 9.4's upper half and all of 10.0
    assert w[:, 1, 1, 8].tolist() == pytest.approx([0.0] * 8 + [0.2 / 3, 1.4 / 3], abs=1e-12)
    # start 9, d=1 ends past the window: all zero; every valid bin reads a total weight <= 1
    assert w[:, :, 1, 9].abs().max().item() == 0.0
    totals = w.sum(0)  # (N, D, T)
    valid = bm_valid_mask(10)
    assert (totals[:, ~valid] == 0).all()
    assert (totals[:, valid] <= 1 + 1e-12).all() and (totals[:, valid] > 0).all()


def test_sampling_matrix_is_sparse():
    coo = bm_sampling_matrix(100)
    rows = coo.indices()[0]
    per_row = torch.bincount(rows, minlength=coo.shape[0])
    assert coo.shape == (32 * 100 * 100, 100)
    assert per_row.max().item() <= 2 * 3  # each of the 3 points of a bin reads 2 positions at most
    assert coo.values().abs().min().item() > 0


# ---------------------------------------------------------------------------- sparse vs dense


@pytest.mark.parametrize("T,D,C,B", [(16, None, 6, 2), (16, 9, 4, 2), (100, 30, 3, 1)])
def test_bm_layer_sparse_equals_dense_float64(float64, T, D, C, B):
    g = torch.Generator().manual_seed(T + C)
    x = torch.randn(B, C, T, generator=g)
    dense = BoundaryMatchingLayer(T, D, impl="dense")(x)
    sparse = BoundaryMatchingLayer(T, D, impl="sparse")(x)
    assert sparse.shape == dense.shape == (B, C, 32, D or T, T)
    assert (sparse - dense).abs().max().item() < 1e-12 * max(1.0, dense.abs().max().item())


def test_bm_layer_sparse_equals_dense_float32_full_size():
    # float32: both sum the same float32 weights times x; a bin has <= 6 non-zero terms with weights
    # summing to <= 1, so the two summation orders differ by a few ulps of max|x| (~4 here):
    # 6 * 2**-24 * 4 ~ 1.4e-6, hence atol 5e-6.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 100, generator=g)
    dense = BoundaryMatchingLayer(100, impl="dense")(x)
    sparse = BoundaryMatchingLayer(100, impl="sparse")(x)
    assert dense.dtype == sparse.dtype == torch.float32
    assert (sparse - dense).abs().max().item() < 5e-6
    assert dense.abs().max().item() > 1.0  # the comparison is not between zeros


def test_perturbed_index_breaks_the_comparison(float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, generator=g)
    dense = BoundaryMatchingLayer(16, impl="dense")(x)
    layer = BoundaryMatchingLayer(16, impl="sparse")
    k = layer.sampler.nnz // 2
    layer.sampler.fwd_col[k] = (layer.sampler.fwd_col[k] + 1) % 16  # one weight reads the wrong position
    assert (layer(x) - dense).abs().max().item() > 1e-3


def _projection_pair(C, C_out, T, D, seed):
    torch.manual_seed(seed)
    dense = BMProjection(C, C_out, T, D, impl="dense")
    sparse = BMProjection(C, C_out, T, D, impl="sparse")
    assert set(dense.state_dict()) == set(sparse.state_dict()) == {"weight", "bias"}
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.parametrize("T,D,C,C_out", [(16, None, 8, 5), (16, 7, 4, 6), (100, 20, 3, 4)])
def test_projection_sparse_equals_dense_with_gradients(float64, T, D, C, C_out):
    dense, sparse = _projection_pair(C, C_out, T, D, seed=T + C)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, C, T, generator=g)
    xd, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    yd, ys = dense(xd), sparse(xs)
    assert ys.shape == yd.shape == (2, C_out, D or T, T)
    assert _rel(ys, yd) < 1e-6
    cot = torch.randn(yd.shape, generator=g)
    yd.backward(cot)
    ys.backward(cot)
    assert _rel(xs.grad, xd.grad) < 1e-6
    assert _rel(sparse.weight.grad, dense.weight.grad) < 1e-6
    assert _rel(sparse.bias.grad, dense.bias.grad) < 1e-6


def test_projection_sparse_equals_dense_float32():
    dense, sparse = _projection_pair(16, 8, 32, None, seed=0)
    x = torch.randn(2, 16, 32)
    yd, ys = dense(x), sparse(x)
    # float32: each output sums C * N * <= 6 = 3072 products in a different order; relative 1e-5
    # of the largest output is ~100 ulps, well above that rounding and far below a real error.
    assert _rel(ys, yd) < 1e-5


def test_projection_second_order_gradients(float64):
    _, sparse = _projection_pair(3, 2, 8, None, seed=4)
    x = torch.randn(1, 3, 8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: sparse(v), (x,))
    assert torch.autograd.gradgradcheck(lambda v: sparse(v) ** 2, (x,))


def test_bad_inputs_raise():
    layer = BoundaryMatchingLayer(16)
    with pytest.raises(ValueError, match="temporal_scale=16"):
        layer(torch.randn(1, 4, 20))
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        layer(torch.randn(4, 16))
    with pytest.raises(ValueError, match="impl"):
        BoundaryMatchingLayer(16, impl="fast")
    with pytest.raises(ValueError, match="max_duration"):
        BoundaryMatchingLayer(16, max_duration=17)
    with pytest.raises(ValueError, match="channels"):
        BMProjection(4, 2, 16)(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        BMN(in_channels=10, temporal_scale=16)


# ------------------------------------------------------------------------------------------ model


SMALL = dict(in_channels=8, temporal_scale=16, num_samples=8, hidden_1d=8, hidden_2d=6, hidden_3d=12)


def test_bmn_forward_shapes_and_backward():
    torch.manual_seed(0)
    model = BMN(**SMALL, max_duration=10)
    out = model(torch.randn(3, 8, 16))
    assert out["confidence"].shape == (3, 2, 10, 16)
    assert out["start"].shape == out["end"].shape == (3, 16)
    for v in out.values():
        assert ((v > 0) & (v < 1)).all()  # sigmoid outputs
    segs = [torch.tensor([[0.1, 0.4]]), torch.zeros(0, 2), torch.tensor([[0.0, 0.3], [0.5, 0.9]])]
    loss, parts = bmn_loss(out, bmn_targets(segs, 16, 10), generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert set(parts) == {"tem", "pem_reg", "pem_cls"}


def test_bmn_dense_and_sparse_agree_and_share_reference_keys(float64):
    torch.manual_seed(1)
    dense = BMN(**SMALL, impl="dense")
    sparse = BMN(**SMALL, impl="sparse")
    sd = dense.state_dict()
    assert set(sd) == set(sparse.state_dict())
    assert sd["x_3d_p.0.weight"].shape == (12, 8, 8, 1, 1)  # the reference's Conv3d key and layout
    assert {"x_1d_b.0.weight", "x_1d_s.2.weight", "x_1d_e.2.bias", "x_1d_p.0.weight", "x_2d_p.6.weight"} <= set(sd)
    sparse.load_state_dict(sd)
    x = torch.randn(2, 8, 16)
    a, b = dense(x), sparse(x)
    for k in a:
        assert _rel(b[k], a[k]) < 1e-6, k


# ----------------------------------------------------------------------------------------- labels


def test_targets_hand_case():
    tg = bmn_targets([torch.tensor([[0.22, 0.48]]), torch.zeros(0, 2)], temporal_scale=10)
    iou, start, end = tg["iou"][0], tg["start"][0], tg["end"][0]
    assert iou.shape == (10, 10) and iou.dtype == torch.float32
    # proposal (d, t) = [t/10, (t+d+1)/10] against [0.22, 0.48]
    assert iou[2, 2].item() == pytest.approx(0.26 / 0.30, abs=1e-6)  # [0.2, 0.5]
    assert iou[1, 2].item() == pytest.approx(0.18 / 0.28, abs=1e-6)  # [0.2, 0.4]
    assert iou[3, 1].item() == pytest.approx(0.26 / 0.40, abs=1e-6)  # [0.1, 0.5]
    assert iou[9, 0].item() == pytest.approx(0.26, abs=1e-6)  # [0, 1]
    assert iou[0, 5].item() == 0.0  # [0.5, 0.6] misses it
    assert iou[8, 2].item() == 0.0  # [0.2, 1.1] overlaps but ends past the window
    # start region [0.07, 0.37] against anchors [(i-.5)/10, (i+.5)/10]
    assert start.tolist() == pytest.approx([0, 0.8, 1, 1, 0.2, 0, 0, 0, 0, 0], abs=1e-6)
    # end region [0.33, 0.63]
    assert end.tolist() == pytest.approx([0, 0, 0, 0.2, 1, 1, 0.8, 0, 0, 0], abs=1e-6)
    # the empty item
    assert tg["iou"][1].abs().sum() == 0 and tg["start"][1].abs().sum() == 0 and tg["end"][1].abs().sum() == 0


def test_targets_take_the_max_over_segments_and_respect_max_duration():
    tg = bmn_targets([torch.tensor([[0.22, 0.48], [0.2, 0.3]])], temporal_scale=10, max_duration=4)
    assert tg["iou"].shape == (1, 4, 10)
    assert tg["iou"][0, 0, 2].item() == pytest.approx(1.0, abs=1e-6)  # [0.2, 0.3] exactly
    assert tg["iou"][0, 2, 2].item() == pytest.approx(0.26 / 0.30, abs=1e-6)
    assert tg["start"][0, 2].item() == pytest.approx(1.0)


def test_targets_reject_bad_segments():
    with pytest.raises(ValueError, match=r"segments\[0\].*\[0, 1\]"):
        bmn_targets([torch.tensor([[0.2, 12.0]])], 10)
    with pytest.raises(ValueError, match="end < start"):
        bmn_targets([torch.tensor([[0.5, 0.2]])], 10)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        bmn_targets([torch.tensor([0.1, 0.2, 0.3])], 10)


# ----------------------------------------------------------------------------------------- losses


def _hand_case():
    x = 0.99  # cells of proposals that end past the window: must be ignored
    iou = torch.tensor([[[0.95, 0.5, 0.1, 0.0],
                         [0.8, 0.75, 0.0, x],
                         [0.6, 0.0, x, x],
                         [0.4, x, x, x]]])
    targets = {"iou": iou, "start": torch.tensor([[1.0, 0.3, 0.8, 0.0]]), "end": torch.tensor([[0.0, 0.6, 0.0, 0.0]])}
    valid = bm_valid_mask(4)
    reg = torch.where(valid, torch.tensor(0.5), torch.tensor(0.01))
    cls = torch.where(valid, torch.tensor(0.7), torch.tensor(0.01))
    outputs = {"confidence": torch.stack([reg, cls])[None], "start": torch.tensor([[0.9, 0.2, 0.6, 0.1]]),
               "end": torch.tensor([[0.3, 0.7, 0.2, 0.4]])}
    return outputs, targets


def test_losses_hand_case():
    outputs, targets = _hand_case()
    total, parts = bmn_loss(outputs, targets, generator=torch.Generator().manual_seed(0))
    eps = 1e-5
    lg = lambda v: math.log(v + eps)  # noqa: E731
    # TEM start: 2 positives of 4 -> r = 2, weights 1 / 1; end: 1 of 4 -> r = 4, weights 2 / (2/3)
    tem_s = -(lg(0.9) + lg(0.6) + lg(1 - 0.2) + lg(1 - 0.1)) / 4
    tem_e = -(2 * lg(0.7) + 2 / 3 * (lg(1 - 0.3) + lg(1 - 0.2) + lg(1 - 0.4))) / 4
    # PEM-reg: 3 cells > 0.7, 3 in (0.3, 0.7] (r = 1: all kept), 1 in (0, 0.3] (r = 3 -> 1: kept);
    # the three zero-IoU cells are in no band. Prediction 0.5 everywhere.
    sse = 0.45 ** 2 + 0.3 ** 2 + 0.25 ** 2 + 0.0 ** 2 + 0.1 ** 2 + 0.1 ** 2 + 0.4 ** 2
    reg = 0.5 * sse / 7
    # PEM-cls: 1 positive (0.95), 9 valid negatives -> entries 10, r = 10, weights 5 and 5/9
    cls = -(5 * lg(0.7) + 5 / 9 * 9 * lg(1 - 0.7)) / 10
    assert parts["tem"].item() == pytest.approx(tem_s + tem_e, rel=1e-6)
    assert parts["pem_reg"].item() == pytest.approx(reg, rel=1e-6)
    assert parts["pem_cls"].item() == pytest.approx(cls, rel=1e-6)
    assert total.item() == pytest.approx(tem_s + tem_e + 10 * reg + cls, rel=1e-6)


def test_regression_subsampling_follows_the_draws():
    # 1 high cell, 6 mid cells: each mid cell is kept when its uniform draw u > 1 - 1/6; the low band
    # is empty. The generator's first draw is the mid band's.
    T = 4
    iou = torch.zeros(1, T, T)
    iou[0, 0, :] = torch.tensor([0.9, 0.5, 0.5, 0.5])
    iou[0, 1, :3] = torch.tensor([0.5, 0.5, 0.5])
    pred = torch.zeros(1, T, T, requires_grad=True)
    outputs = {"confidence": torch.stack([pred, torch.full_like(pred, 0.5)], 1),
               "start": torch.full((1, T), 0.5), "end": torch.full((1, T), 0.5)}
    targets = {"iou": iou, "start": torch.zeros(1, T), "end": torch.zeros(1, T)}
    _, parts = bmn_loss(outputs, targets, generator=torch.Generator().manual_seed(5))
    u = torch.rand(iou.shape, generator=torch.Generator().manual_seed(5))
    mid = iou == 0.5
    kept = mid & (u > 1 - 1 / 6)
    n = 1 + kept.sum().item()
    assert parts["pem_reg"].item() == pytest.approx(0.5 * (0.81 + 0.25 * kept.sum().item()) / n, rel=1e-6)


def test_regression_sampling_never_leaves_its_band():
    # more high cells than mid cells: the reference's unclamped ratio would also pick zero-IoU cells
    iou = torch.zeros(1, 4, 4)
    iou[0, 0, :] = torch.tensor([0.9, 0.8, 0.75, 0.5])
    pred = torch.full((1, 4, 4), 0.2)
    outputs = {"confidence": torch.stack([pred, pred], 1), "start": torch.full((1, 4), 0.5),
               "end": torch.full((1, 4), 0.5)}
    targets = {"iou": iou, "start": torch.zeros(1, 4), "end": torch.zeros(1, 4)}
    _, parts = bmn_loss(outputs, targets, generator=torch.Generator().manual_seed(0))
    want = 0.5 * (0.7 ** 2 + 0.6 ** 2 + 0.55 ** 2 + 0.3 ** 2) / 4
    assert parts["pem_reg"].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("case", ["no_segments", "all_positive", "saturated"])
def test_losses_finite_without_positives_or_negatives(case):
    T = 8
    torch.manual_seed(0)
    logits = torch.randn(1, 2, T, T, requires_grad=True)
    s_logit = torch.randn(1, T, requires_grad=True)
    if case == "saturated":  # predictions exactly 0 and 1
        conf = torch.zeros(1, 2, T, T).index_fill(3, torch.tensor([0, 2]), 1.0).requires_grad_()
    else:
        conf = torch.sigmoid(logits)
    outputs = {"confidence": conf, "start": torch.sigmoid(s_logit), "end": torch.sigmoid(s_logit)}
    if case == "all_positive":
        targets = {"iou": torch.ones(1, T, T), "start": torch.ones(1, T), "end": torch.ones(1, T)}
    else:
        targets = bmn_targets([torch.zeros(0, 2)], T)
    total, parts = bmn_loss(outputs, targets, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    leaf = conf if case == "saturated" else logits
    assert torch.isfinite(leaf.grad).all() and torch.isfinite(s_logit.grad).all()
    if case == "no_segments":
        assert parts["pem_reg"].item() == 0.0


def test_loss_is_reproducible_with_a_generator():
    torch.manual_seed(0)
    model = BMN(**SMALL)
    out = model(torch.randn(2, 8, 16))
    tg = bmn_targets([torch.tensor([[0.1, 0.6]]), torch.tensor([[0.3, 0.5], [0.6, 0.95]])], 16)
    a = bmn_loss(out, tg, generator=torch.Generator().manual_seed(7))[0]
    b = bmn_loss(out, tg, generator=torch.Generator().manual_seed(7))[0]
    assert a.item() == b.item()


def test_loss_rejects_mismatched_shapes():
    outputs, targets = _hand_case()
    with pytest.raises(ValueError, match="targets\\['iou'\\]"):
        bmn_loss(outputs, {**targets, "iou": targets["iou"][:, :3]})
    with pytest.raises(ValueError, match="lacks"):
        bmn_loss(outputs, {"iou": targets["iou"]})
