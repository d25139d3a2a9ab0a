"""BMN post-processing (SPEC §8) on hand-made cases: candidates, Soft-NMS, window fusion,
classification and the results JSON."""
import json
import math

import pytest
import torch

from tada.engine.proposals import (
    bmn_candidates,
    classify_by_clip_scores,
    classify_video_level,
    fuse_windows,
    results_json,
    soft_nms,
    to_seconds,
)

START = torch.tensor([0.3, 0.9, 0.2, 0.1, 0.6, 0.5, 0.1, 0.05])
END = torch.tensor([0.1, 0.1, 0.2, 0.8, 0.3, 0.2, 0.7, 0.4])


def _confidence(T=8):
    d = torch.arange(T, dtype=torch.float32)[:, None]
    t = torch.arange(T, dtype=torch.float32)[None, :]
    return torch.stack([0.5 + 0.05 * d - 0.02 * t, 0.9 - 0.03 * d - 0.01 * t])  # (2, D, T): reg, cls


def test_candidates_hand_curve():
    # starts: 0 (always), 1 (peak), 4 (peak), 5 (0.5 > 0.5 * 0.9); 7 is never tested.
    # ends: 3 (peak), 6 (peak), 7 (always); 1 is no peak (0.1 is not > 0.1), 2 < 0.4 and no peak.
    conf = _confidence()
    cand = bmn_candidates(START, END, conf)
    pairs = [(s, e) for s in (0, 1, 4, 5) for e in (3, 6, 7) if e > s]
    pairs.sort(key=lambda se: (se[1] - se[0] - 1, se[0]))  # duration-major, then start
    assert cand.shape == (len(pairs), 5) == (10, 5)
    for row, (s, e) in zip(cand.tolist(), pairs, strict=True):
        d = e - s - 1
        reg, cls = conf[0, d, s].item(), conf[1, d, s].item()
        se = START[s].item() * END[e].item()
        assert row == pytest.approx([s / 8, e / 8, se * cls * reg, se, cls * reg], rel=1e-6)


def test_candidates_max_duration_and_validation():
    cand = bmn_candidates(START, END, _confidence(), max_duration=3)
    lengths = torch.round((cand[:, 1] - cand[:, 0]) * 8).long().tolist()
    assert sorted(lengths) == [1, 2, 2, 2, 3, 3]  # (5,6); (1,3) (4,6) (5,7); (0,3) (4,7)
    assert max(lengths) <= 3
    with pytest.raises(ValueError, match="confidence"):
        bmn_candidates(START, END, torch.zeros(2, 8, 7))
    with pytest.raises(ValueError, match="one window"):
        bmn_candidates(START[None], END[None], _confidence())


def _nms_set():
    return torch.tensor([
        [0.0, 0.8, 0.9],    # P0
        [0.0, 0.7, 0.85],   # P1
        [0.1, 0.8, 0.8],    # P2
        [0.0, 0.6, 0.6],    # P3
        [0.85, 0.95, 0.3],  # P4
    ], dtype=torch.float64)


def test_soft_nms_hand_computation():
    g = lambda iou: math.exp(-iou ** 2 / 0.4)  # noqa: E731
    # pick P0 (width 0.8, threshold 0.5 + 0.4 * 0.8 = 0.82): P1, P2 have IoU 0.875 -> decayed;
    # P3 has IoU 0.75 > 0.5 but < 0.82 -> kept as is (the width-adaptive rule); P4 IoU 0.
    p1 = 0.85 * g(0.875)
    p2 = 0.8 * g(0.875)
    # pick P3 (0.6, width 0.6, threshold 0.74): P1 IoU 0.6/0.7 -> decayed again; P2 IoU 0.625 -> not.
    p1 *= g(0.6 / 0.7)
    # then P4 (0.3), P2 (0.118; its threshold 0.78 > IoU 0.75 with P1), P1.
    out, idx = soft_nms(_nms_set(), return_indices=True)
    assert idx.tolist() == [0, 3, 4, 2, 1]
    want = [[0.0, 0.8, 0.9], [0.0, 0.6, 0.6], [0.85, 0.95, 0.3], [0.1, 0.8, p2], [0.0, 0.7, p1]]
    assert out.tolist() == [pytest.approx(r, rel=1e-9) for r in want]
    top = soft_nms(_nms_set(), top_k=3)
    assert top.shape == (3, 3) and top[:, 2].tolist() == pytest.approx([0.9, 0.6, 0.3])


def test_soft_nms_low_threshold_and_ties():
    # with low = high = 0.7 the threshold is 0.7 whatever the width: P3 (IoU 0.75) is decayed too
    out, idx = soft_nms(_nms_set(), low_threshold=0.7, high_threshold=0.7, return_indices=True)
    p3 = 0.6 * math.exp(-0.75 ** 2 / 0.4)
    assert idx.tolist() == [0, 4, 3, 2, 1]
    assert out[2, 2].item() == pytest.approx(p3, rel=1e-9)
    # identical proposals with equal scores: the first given wins, the copy is decayed (IoU 1)
    dup = torch.tensor([[0.2, 0.4, 0.5], [0.2, 0.4, 0.5], [0.6, 0.7, 0.5]])
    out, idx = soft_nms(dup, return_indices=True)
    assert idx.tolist() == [0, 2, 1]
    assert out[2, 2].item() == pytest.approx(0.5 * math.exp(-1 / 0.4), rel=1e-6)
    assert soft_nms(torch.zeros(0, 3)).shape == (0, 3)
    with pytest.raises(ValueError, match="end < start"):
        soft_nms(torch.tensor([[0.5, 0.2, 1.0]]))


def test_fuse_two_overlapping_windows():
    # two windows of T = 4 at offsets 0 and 2 on a grid of L = 6; D = 2, one map channel
    w0 = {"start": torch.tensor([1.0, 2.0, 3.0, 4.0]), "end": torch.tensor([0.1, 0.2, 0.3, 0.4]),
          "confidence": torch.arange(8, dtype=torch.float32).reshape(1, 2, 4)}
    w1 = {"start": torch.tensor([10.0, 20.0, 30.0, 40.0]), "end": torch.tensor([1.0, 2.0, 3.0, 4.0]),
          "confidence": 100 + torch.arange(8, dtype=torch.float32).reshape(1, 2, 4)}
    f = fuse_windows([w0, w1], [0, 2], 6)
    assert f["start"].tolist() == pytest.approx([1, 2, (3 + 10) / 2, (4 + 20) / 2, 30, 40])
    assert f["end"].tolist() == pytest.approx([0.1, 0.2, 0.65, 1.2, 3, 4])
    # confidence cell (d, g) averages the windows where (d, g - offset) ends inside the window:
    # w0 rows: d0 [0 1 2 3], d1 [4 5 6 (7: ends past w0)]; w1: d0 [100..103], d1 [104 105 106 (107)]
    conf = f["confidence"][0]
    assert conf[0].tolist() == pytest.approx([0, 1, (2 + 100) / 2, (3 + 101) / 2, 102, 103])
    assert conf[1].tolist() == pytest.approx([4, 5, (6 + 104) / 2, 105, 106, 0])  # g=3: only w1; g=5: none


def test_fuse_respects_valid_lengths():
    w = {"start": torch.ones(4), "end": torch.ones(4), "confidence": torch.ones(1, 2, 4)}
    w_pad = {"start": torch.full((4,), 5.0), "end": torch.full((4,), 5.0), "confidence": torch.full((1, 2, 4), 5.0)}
    f = fuse_windows([w, w_pad], [0, 2], 5, valid_lengths=[4, 3])  # w_pad: positions 2, 3, 4 real
    assert f["start"].tolist() == pytest.approx([1, 1, 3, 3, 5])
    assert f["confidence"][0, 1].tolist() == pytest.approx([1, 1, 3, 5, 0])
    with pytest.raises(ValueError, match="valid_lengths"):
        fuse_windows([w], [2], 5, valid_lengths=[4])
    with pytest.raises(ValueError, match="one offset per window"):
        fuse_windows([w, w], [0], 5)


def test_fused_maps_feed_candidates_and_seconds():
    torch.manual_seed(0)
    wins = [{"start": torch.rand(8), "end": torch.rand(8), "confidence": torch.rand(2, 8, 8)} for _ in range(3)]
    f = fuse_windows(wins, [0, 4, 8], 16)
    cand = bmn_candidates(f["start"], f["end"], f["confidence"])
    assert len(cand) > 0 and (cand[:, 1] * 16 - cand[:, 0] * 16 <= 8 + 1e-6).all()
    sec = to_seconds(soft_nms(cand), 32.0)
    assert (sec[:, 0] >= 0).all() and (sec[:, 1] <= 32.0).all()


def test_classify_video_level():
    props = torch.tensor([[1.0, 4.0, 0.5], [2.0, 9.0, 0.8]])
    out = classify_video_level(props, torch.tensor([0.1, 0.6, 0.3]), ["a", "b", "c"], top_k_classes=2)
    assert [(o["label"], o["segment"], round(o["score"], 6)) for o in out] == [
        ("b", [2.0, 9.0], 0.48), ("b", [1.0, 4.0], 0.3), ("c", [2.0, 9.0], 0.24), ("c", [1.0, 4.0], 0.15)]
    with pytest.raises(ValueError, match="one per class name"):
        classify_video_level(props, torch.tensor([0.1, 0.6]), ["a", "b", "c"])


def test_classify_by_clip_scores():
    times = torch.tensor([0.5, 1.5, 2.5, 3.5])
    verb = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])
    noun = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    props = torch.tensor([[0.0, 2.0, 0.5],    # clips 0, 1: verb [0.6, 0.4], noun [0.4, 0.25, 0.35]
                          [3.0, 3.2, 1.0]])   # no clip centre inside: the nearest to 3.1 is clip 3
    out = classify_by_clip_scores(props, times, verb, noun, top_k_pairs=3)
    assert len(out) == 6
    first = [(o["verb"], o["noun"], o["label"], round(o["score"], 6)) for o in out[:3]]
    assert first == [(0, 0, "0,0", round(0.5 * 0.6 * 0.4, 6)), (0, 2, "0,2", round(0.5 * 0.6 * 0.35, 6)),
                     (1, 0, "1,0", round(0.5 * 0.4 * 0.4, 6))]
    second = [(o["verb"], o["noun"], round(o["score"], 6)) for o in out[3:]]
    assert second == [(1, 2, round(0.8 * 0.4, 6)), (1, 0, round(0.8 * 0.3, 6)), (1, 1, round(0.8 * 0.3, 6))]
    assert out[3]["segment"] == [pytest.approx(3.0), pytest.approx(3.2)]
    with pytest.raises(ValueError, match="non-negative"):
        classify_by_clip_scores(props, times, verb - 1, noun)


def test_results_json():
    doc = results_json({"v1": [{"segment": [torch.tensor(1.0), 2.5], "score": torch.tensor(0.5), "label": "b"}]})
    assert doc == {"version": "VERSION 1.3", "results": {"v1": [{"segment": [1.0, 2.5], "score": 0.5, "label": "b"}]},
                   "external_data": {"used": False, "details": ""}}
    json.dumps(doc)
    with pytest.raises(ValueError, match="v1"):
        results_json({"v1": [{"segment": [3.0, 2.0], "score": 0.1}]})
    with pytest.raises(ValueError, match="score"):
        results_json({"v1": [{"segment": [1.0, 2.0]}]})
