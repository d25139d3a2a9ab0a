"""ActivityNet-protocol detection mAP and proposal AR@AN: hand-computed cases, a loop reference of the
official protocol on random fixtures, the predictions loader and the ``tada eval-detection`` command."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tada.data.segments import Segment, UntrimmedVideo
from tada.engine.detection_eval import (ANET_TIOU, EK100_TIOU, average_precision_detection, evaluate_detection,
                                        evaluate_ek100, evaluate_proposals, interpolated_ap, load_predictions, main,
                                        parse_tiou, temporal_iou)


def V(vid, segments, subset="validation", duration=100.0):
    return UntrimmedVideo(vid, duration, subset, tuple(Segment(s, e, lab) for s, e, lab in segments))


def P(s, e, label, score, **kw):
    return {"segment": [s, e], "label": label, "score": score, **kw}


# --------------------------------------------------------------------------------------------------
# a loop reference of the official protocol (activitynet/ActivityNet Evaluation/eval_detection.py and
# eval_proposal.py), written from its description: plain Python, one prediction at a time


def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (b[1] - b[0]) + (a[1] - a[0]) - inter
    return inter / union if union > 0 else 0.0


def _desc(values):
    """Descending; equal values: the later one first (a stable ascending sort, reversed)."""
    return sorted(range(len(values)), key=lambda i: values[i])[::-1]


def _ref_ap_from_flags(flags, npos):
    tp = fp = 0
    prec, rec = [], []
    for f in flags:
        tp, fp = tp + f, fp + (not f)
        prec.append(tp / (tp + fp))
        rec.append(tp / npos)
    mp, mr = [0.0] + prec + [0.0], [0.0] + rec + [1.0]
    for i in range(len(mp) - 2, -1, -1):
        mp[i] = max(mp[i], mp[i + 1])
    return sum((mr[i] - mr[i - 1]) * mp[i] for i in range(1, len(mr)) if mr[i] != mr[i - 1])


def _ref_detection(gt_videos, predictions, thresholds, subset="validation"):
    """{class: [AP per threshold]} by the official loops."""
    gts = [(vid, s.start, s.end, s.label) for vid, v in gt_videos.items() if v.subset == subset for s in v.segments]
    preds = [(vid, p["segment"][0], p["segment"][1], p["label"], p["score"])
             for vid, ps in predictions.items() for p in ps]
    out = {}
    for c in sorted({g[3] for g in gts}):
        g_c = [g for g in gts if g[3] == c]
        p_c = [p for p in preds if p[3] == c]
        order = _desc([p[4] for p in p_c])
        aps = []
        for thr in thresholds:
            locked, flags = set(), []
            for i in order:
                vid, s, e = p_c[i][:3]
                cand = [j for j, g in enumerate(g_c) if g[0] == vid]
                ious = [_iou((s, e), g_c[j][1:3]) for j in cand]
                hit = False
                for k in _desc(ious):
                    if ious[k] < thr:
                        break
                    if cand[k] in locked:
                        continue
                    locked.add(cand[k])
                    hit = True
                    break
                flags.append(hit)
            aps.append(_ref_ap_from_flags(flags, len(g_c)) if flags else 0.0)
        out[c] = aps
    return out


def _ref_proposals(gt_videos, proposals, max_avg, thresholds, subset="validation"):
    """(AN grid, AR per AN) by the official loops."""
    videos = [(vid, v) for vid, v in gt_videos.items() if v.subset == subset and v.segments]
    total = sum(len(ps) for ps in proposals.values())
    ratio = max_avg * float(len(videos)) / total
    kept = {}
    for vid, _ in videos:
        ps = proposals.get(vid, [])
        order = _desc([p["score"] for p in ps])
        nr = min(int(len(ps) * ratio), len(ps))
        kept[vid] = [ps[i]["segment"] for i in order][:nr]
    total_kept = sum(len(k) for k in kept.values())
    pcn = [(k / 100.0) * (max_avg * float(len(videos)) / total_kept) for k in range(1, 101)]
    npos = sum(len(v.segments) for _, v in videos)
    recall = []
    for thr in thresholds:
        row = []
        for f in pcn:
            matched = 0
            for vid, v in videos:
                use = kept[vid][:min(int(len(kept[vid]) * f), len(kept[vid]))]
                matched += sum(any(_iou(p, (s.start, s.end)) >= thr for p in use) for s in v.segments)
            row.append(matched / npos)
        recall.append(row)
    ar = np.mean(np.array(recall), axis=0)
    an = np.array([f * (float(total_kept) / len(videos)) for f in pcn])
    return an, ar


def _random_fixture(seed):
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    gt, pred = {}, {}
    for k in range(7):
        subset = "training" if k == 6 else "validation"
        segs = []
        for _ in range(int(rng.integers(0, 5))):
            s = float(rng.uniform(0, 80))
            segs.append((s, s + float(rng.uniform(0.5, 20)), classes[int(rng.integers(0, 3))]))
        gt[f"v{k}"] = V(f"v{k}", segs, subset)
    for vid in list(gt) + ["not_in_gt"]:
        entries = []
        for _ in range(int(rng.integers(0, 16))):
            segs = gt[vid].segments if vid in gt else ()
            if segs and rng.random() < 0.6:  # a jittered copy of a ground truth, sometimes relabelled
                g = segs[int(rng.integers(0, len(segs)))]
                s, e = g.start + rng.normal(0, 1.5), g.end + rng.normal(0, 1.5)
                label = g.label if rng.random() < 0.8 else classes[int(rng.integers(0, 3))]
            else:
                s = float(rng.uniform(0, 90))
                e, label = s + float(rng.uniform(0.5, 15)), classes[int(rng.integers(0, 3))]
            s, e = min(s, e), max(s, e)
            score = float(rng.random())
            if rng.random() < 0.4:
                score = round(score, 1)  # many ties
            entries.append(P(float(s), float(e), label, score))
        pred[vid] = entries
    return gt, pred


@pytest.mark.parametrize("seed", range(6))
def test_detection_matches_the_loop_reference(seed):
    gt, pred = _random_fixture(seed)
    thr = ANET_TIOU if seed % 2 else EK100_TIOU
    res = evaluate_detection(gt, pred, thr)
    ref = _ref_detection(gt, pred, thr)
    assert res.classes == sorted(ref)
    np.testing.assert_allclose(res.ap, np.array([ref[c] for c in res.classes]), atol=1e-12, rtol=0)
    assert res.average_map == pytest.approx(np.mean([ref[c] for c in ref]), abs=1e-12)
    assert res.outside_subset_predictions == len(pred["v6"]) + len(pred["not_in_gt"])


@pytest.mark.parametrize("seed, max_avg", [(0, 100), (1, 3), (2, 5), (3, 1.5), (4, 10)])
def test_proposals_match_the_loop_reference(seed, max_avg):
    gt, pred = _random_fixture(seed)
    res = evaluate_proposals(gt, pred, max_avg_nr_proposals=max_avg)
    an, ar = _ref_proposals(gt, pred, max_avg, ANET_TIOU)
    np.testing.assert_allclose(res.avg_proposals, an, atol=1e-12, rtol=0)
    np.testing.assert_allclose(res.recall, ar, atol=1e-12, rtol=0)
    assert res.auc == pytest.approx(np.trapezoid(ar, an) / an[-1], abs=1e-12)


# --------------------------------------------------------------------------------------------------
# primitives


def test_temporal_iou_hand_values():
    iou = temporal_iou([[0, 10], [5, 5]], [[2, 12], [20, 30], [2, 4], [0, 10], [5, 5]])
    np.testing.assert_allclose(iou, [[8 / 12, 0, 0.2, 1, 0], [0, 0, 0, 0, 0]], atol=1e-15)
    assert temporal_iou(np.zeros((0, 2)), [[0, 1]]).shape == (0, 1)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        temporal_iou([[0, 1, 2]], [[0, 1]])


def test_interpolated_ap_hand_values():
    # TP, FP, TP over 2 ground truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3
    assert interpolated_ap([1, 0.5, 2 / 3], [0.5, 0.5, 1.0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a false positive first: precision 0 then 1/2 at recall 1 -> 1/2
    assert interpolated_ap([0.0, 0.5], [0.0, 1.0]) == pytest.approx(0.5)
    assert interpolated_ap([], []) == 0.0
    with pytest.raises(ValueError, match="same length"):
        interpolated_ap([1, 0.5], [0.5])


# --------------------------------------------------------------------------------------------------
# the must-show cases, computed on paper


def test_perfect_predictions_give_one():
    gt = {"v1": V("v1", [(0, 10, "a"), (20, 35, "b")]), "v2": V("v2", [(5, 9, "a")])}
    pred = {"v1": [P(0, 10, "a", 0.3), P(20, 35, "b", 0.9)], "v2": [P(5, 9, "a", 0.8)]}
    res = evaluate_detection(gt, pred)
    np.testing.assert_array_equal(res.ap, np.ones((2, 10)))
    assert res.average_map == 1.0 and res.classes == ["a", "b"] and res.num_ground_truth == 3


def test_shifted_segment_cuts_off_at_its_tiou():
    # GT [0, 10], prediction [2, 12]: tIoU 8/12 = 0.667 -> TP at 0.50..0.65 (4 thresholds), FP at 0.70..0.95
    res = evaluate_detection({"v": V("v", [(0, 10, "a")])}, {"v": [P(2, 12, "a", 0.9)]})
    np.testing.assert_array_equal(res.map_per_tiou, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert res.average_map == pytest.approx(0.4)


def test_duplicate_detections_are_false_positives():
    # GTs A [0,10], B [20,30]; A (0.9), A again (0.8), B (0.7): TP FP TP -> AP = 1/2 * 1 + 1/2 * 2/3
    gt = {"v": V("v", [(0, 10, "a"), (20, 30, "a")])}
    pred = {"v": [P(0, 10, "a", 0.9), P(0, 10, "a", 0.8), P(20, 30, "a", 0.7)]}
    assert evaluate_detection(gt, pred).average_map == pytest.approx(5 / 6)
    # the same through the one-class function
    ap = average_precision_detection({"v": [[0, 10], [20, 30]]}, {"v": [[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]]})
    np.testing.assert_allclose(ap, np.full(10, 5 / 6))


def test_a_class_without_ground_truth_is_not_evaluated(caplog):
    gt = {"v": V("v", [(0, 10, "a"), (40, 50, "b")])}
    pred = {"v": [P(0, 10, "a", 0.9), P(60, 70, "ghost", 0.99), P(61, 70, "ghost", 0.5)]}
    with caplog.at_level(logging.WARNING, logger="tada.engine.detection_eval"):
        res = evaluate_detection(gt, pred)
    # "ghost" has no ground truth: its predictions are ignored; "b" has no prediction: AP 0, still averaged
    assert res.classes == ["a", "b"] and res.ignored_predictions == 2 and "ghost" in caplog.text
    np.testing.assert_array_equal(res.ap, [np.ones(10), np.zeros(10)])
    assert res.average_map == 0.5
    with pytest.raises(ValueError, match="without ground truth"):
        average_precision_detection({}, {"v": [[0, 1, 0.5]]})


def test_videos_without_predictions_count_their_ground_truth_as_misses():
    gt = {"v1": V("v1", [(0, 10, "a")]), "v2": V("v2", [(0, 10, "a")]), "t": V("t", [], subset="testing")}
    res = evaluate_detection(gt, {"v1": [P(0, 10, "a", 0.9)]})
    assert res.average_map == pytest.approx(0.5)  # precision 1 up to recall 1/2


def test_tied_scores_are_taken_in_reverse_file_order():
    # one GT; a false positive and a true positive with the same score. Reverse file order visits the
    # second (TP) first: precision 1 at recall 1 -> AP 1. The other way round: FP first -> AP 1/2.
    gt = {"v": V("v", [(0, 10, "a")])}
    fp, tp = P(50, 60, "a", 0.7), P(0, 10, "a", 0.7)
    assert evaluate_detection(gt, {"v": [fp, tp]}).average_map == pytest.approx(1.0)
    assert evaluate_detection(gt, {"v": [tp, fp]}).average_map == pytest.approx(0.5)
    # ties across videos follow the order of the videos in the results
    gt2 = {"v": V("v", [(0, 10, "a")]), "w": V("w", [])}
    assert evaluate_detection(gt2, {"w": [P(50, 60, "a", 0.7)], "v": [tp]}).average_map == pytest.approx(1.0)
    assert evaluate_detection(gt2, {"v": [tp], "w": [P(50, 60, "a", 0.7)]}).average_map == pytest.approx(0.5)


def test_a_prediction_takes_the_highest_tiou_unmatched_ground_truth():
    # GT g1 [0,10], g2 [4,14]. p1 [2,12] (0.9) has tIoU 2/3 with both (a tie: the later, g2, first);
    # p2 [0,10] (0.8) then takes g1 (tIoU 1). Both TP -> AP 1 at 0.5..0.65; above, p1 misses: FP then TP,
    # precision 1/2 at recall 1/2 -> AP 1/4. (Had the tie gone to g1, p2 would be a FP at 0.5 too.)
    gt = {"v": V("v", [(0, 10, "a"), (4, 14, "a")])}
    res = evaluate_detection(gt, {"v": [P(2, 12, "a", 0.9), P(0, 10, "a", 0.8)]})
    np.testing.assert_allclose(res.map_per_tiou, [1, 1, 1, 1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25])
    # p1 [0.5,10.5] is closer to g1 (tIoU 9.5/10.5) than to g2 (6.5/14): it takes g1, so p2 (tIoU 0.43
    # with g2) is a false positive at 0.5: TP FP -> precision 1 at recall 1/2 -> AP 1/2
    res = evaluate_detection(gt, {"v": [P(0.5, 10.5, "a", 0.9), P(0, 10, "a", 0.8)]})
    assert res.map_per_tiou[0] == pytest.approx(0.5)


def test_predictions_of_videos_outside_the_subset_are_false_positives(caplog):
    gt = {"val": V("val", [(0, 10, "a")]), "train": V("train", [(0, 10, "a")], subset="training")}
    pred = {"train": [P(0, 10, "a", 0.9)], "val": [P(0, 10, "a", 0.5)]}
    with caplog.at_level(logging.WARNING, logger="tada.engine.detection_eval"):
        res = evaluate_detection(gt, pred)
    assert res.average_map == pytest.approx(0.5) and res.outside_subset_predictions == 1
    assert "count as false positives" in caplog.text
    # evaluated on every video, the training prediction is a true positive
    assert evaluate_detection(gt, pred, subset=None).average_map == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"no ground-truth video of subset 'testing'.*'training', 'validation'"):
        evaluate_detection(gt, pred, subset="testing")


def test_ek100_verb_noun_action():
    seg = lambda s, e, v, n: Segment(s, e, f"{v},{n}", verb=v, noun=n)  # noqa: E731
    gt = {"P01_01": UntrimmedVideo("P01_01", 60.0, "validation", (seg(0, 10, 3, 8), seg(20, 30, 2, 9)))}
    pred = {"P01_01": [P(0, 10, "3,9", 0.9, verb=3, noun=9), P(20, 30, "2,9", 0.8, verb=2, noun=9)]}
    res = evaluate_ek100(gt, pred)
    # verbs 3 and 2 both right -> 1. Nouns: 8 has no prediction (0); 9: FP (0.9, at [0,10]) then TP -> 1/2.
    # Actions: "3,8" no prediction (0), "2,9" right (1); "3,9" has no ground truth and is ignored.
    assert res["verb"].average_map == pytest.approx(1.0)
    assert res["noun"].average_map == pytest.approx(0.25)
    assert res["action"].average_map == pytest.approx(0.5) and res["action"].ignored_predictions == 1
    np.testing.assert_allclose(res["verb"].tiou_thresholds, [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(ValueError, match="without a 'verb' class"):
        evaluate_detection({"v": V("v", [(0, 1, "a")])}, {"v": [P(0, 1, "a", 1, verb=1)]}, label_key="verb")


def test_ar_at_an_hand_case():
    # one video, GTs [0,10], [20,30]; proposals by score: [20,30], [50,60], [0,10]. AN = 1, 2 keep the
    # first 1, 2 -> recall 1/2; AN >= 3 all three -> 1 (every threshold, the matches are exact).
    gt = {"v": V("v", [(0, 10, "a"), (20, 30, "a")])}
    props = {"v": [{"segment": [0, 10], "score": 0.7}, {"segment": [20, 30], "score": 0.9},
                   {"segment": [50, 60], "score": 0.8}]}
    res = evaluate_proposals(gt, props)
    np.testing.assert_allclose(res.avg_proposals, np.arange(1, 101), atol=1e-9)
    assert res.ar_at == pytest.approx({1: 0.5, 5: 1.0, 10: 1.0, 50: 1.0, 100: 1.0})
    # trapezoids: 1..2 at 1/2, 2..3 from 1/2 to 1, 3..100 at 1 -> (0.5 + 0.75 + 97) / 100
    assert res.auc == pytest.approx(0.9825)
    # a shifted proposal (tIoU 2/3) is recalled at 4 of the 10 thresholds
    res = evaluate_proposals({"v": V("v", [(0, 10, "a")])}, {"v": [{"segment": [2, 12], "score": 1.0}]})
    assert res.ar_at[100] == pytest.approx(0.4)


def test_proposal_counts_are_scaled_by_the_ratio():
    # AN_max 1 over 2 videos and 6 proposals: ratio 1/3, so video a keeps int(4/3) = 1 proposal and video b
    # int(2/3) = 0 -- b's perfect proposal is never used. AN runs 0.01 .. 1; a's top one counts from AN 0.5.
    gt = {"a": V("a", [(0, 10, "x")]), "b": V("b", [(0, 5, "x")])}
    props = {"a": [{"segment": [0, 10], "score": 0.9}] + [{"segment": [50, 51], "score": 0.1}] * 3,
             "b": [{"segment": [0, 5], "score": 0.95}, {"segment": [70, 80], "score": 0.2}]}
    res = evaluate_proposals(gt, props, max_avg_nr_proposals=1)
    np.testing.assert_allclose(res.avg_proposals, np.arange(1, 101) / 100)
    assert res.recall[48] == 0 and res.recall[49] == pytest.approx(0.5) and res.ar_at == pytest.approx({1: 0.5})
    assert res.auc == pytest.approx(0.01 * 0.25 + 0.5 * 0.5)
    # a video without proposals: its ground truth is never recalled
    res = evaluate_proposals(gt, {"a": [{"segment": [0, 10], "score": 0.9}]})
    assert res.ar_at[100] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# predictions file, thresholds and the command


def test_load_predictions(tmp_path):
    f = tmp_path / "pred.json"
    f.write_text(json.dumps({"version": "x", "external_data": {}, "results": {
        "v2": [{"segment": [1, 2.5], "label": "a", "score": 0.5}],
        "v1": [{"segment": [0, 1], "label": 7, "score": 1},
               {"segment": [3, 4], "score": 0.1, "verb": 2, "noun": "5"}]}}))
    out = load_predictions(f)
    assert list(out) == ["v2", "v1"]
    assert out["v1"] == [{"segment": [0.0, 1.0], "score": 1.0, "label": "7"},
                         {"segment": [3.0, 4.0], "score": 0.1, "verb": 2, "noun": 5, "label": "2,5"}]


@pytest.mark.parametrize("entry, message", [
    ({"segment": [1], "label": "a", "score": 1}, "'segment' must be two numbers"),
    ({"segment": [1, float("nan")], "label": "a", "score": 1}, "'segment' must be two finite numbers"),
    ({"segment": [5, 1], "label": "a", "score": 1}, "'segment' ends before it starts"),
    ({"segment": [1, 2], "label": "a"}, "no 'score'"),
    ({"segment": [1, 2], "label": "a", "score": "high"}, "'score' must be a finite number"),
    ({"segment": [1, 2], "label": ["a"], "score": 1}, "'label' must be a string"),
    ({"segment": [1, 2], "label": "a", "score": 1, "verb": 1.5}, "'verb' must be a class id"),
    ("oops", "expected an object"),
])
def test_malformed_predictions_name_the_file_video_and_index(tmp_path, entry, message):
    f = tmp_path / "pred.json"
    f.write_text(json.dumps({"results": {"vid9": [{"segment": [0, 1], "label": "a", "score": 1}, entry]}}))
    with pytest.raises(ValueError, match=r"pred\.json: video 'vid9' prediction 1: " + message):
        load_predictions(f)


def test_predictions_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.json: no such predictions JSON file"):
        load_predictions(tmp_path / "none.json")
    f = tmp_path / "p.json"
    f.write_text('{"database": {}}')
    with pytest.raises(ValueError, match=r"p\.json: expected an ActivityNet results JSON"):
        load_predictions(f)
    f.write_text('{"results": {"v": {"segment": [0, 1]}}}')
    with pytest.raises(ValueError, match=r"p\.json: video 'v': expected a list"):
        load_predictions(f)


def test_parse_tiou():
    assert np.array_equal(parse_tiou("0.5:0.05:0.95"), ANET_TIOU)  # the official thresholds, bit for bit
    np.testing.assert_allclose(parse_tiou("0.1:0.1:0.5"), [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(parse_tiou("0.3, 0.5,0.7"), [0.3, 0.5, 0.7])
    np.testing.assert_allclose(parse_tiou("0.5:0.2:1.0"), [0.5, 0.7, 0.9])  # end not on the grid: not included
    for bad in ("1.5", "0.5:0:1", "a,b", "0.5:0.1", "0,0.5"):
        with pytest.raises(ValueError, match="--tiou|start:step:end"):
            parse_tiou(bad)


def _files(tmp_path, results, gt=None):
    g = tmp_path / "gt.json"
    g.write_text(json.dumps(gt or {"version": "1.3", "taxonomy": [], "database": {
        "v": {"duration": 30.0, "subset": "validation", "annotations": [{"segment": [0, 10], "label": "a"}]},
        "t": {"duration": 30.0, "subset": "training", "annotations": [{"segment": [0, 5], "label": "a"}]}}}))
    p = tmp_path / "pred.json"
    p.write_text(json.dumps({"results": results}))
    return str(g), str(p)


def test_cli_detection_table_and_json(tmp_path, capsys):
    g, p = _files(tmp_path, {"v": [P(2, 12, "a", 0.9)]})
    out = tmp_path / "res.json"
    assert main([g, p, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "40.00" in printed and "0.50" in printed and "0.95" in printed
    doc = json.loads(out.read_text())
    assert doc["detection"]["average_map"] == pytest.approx(0.4)
    assert doc["detection"]["map_per_tiou"][:5] == pytest.approx([1, 1, 1, 1, 0])
    assert main([g, p, "--tiou", "0.3,0.6,0.7", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["detection"]["map_per_tiou"] == pytest.approx([1, 1, 0])
    # --subset all: the training video's ground truth is missed too
    assert main([g, p, "--subset", "all", "--tiou", "0.5", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["detection"]["average_map"] == pytest.approx(0.5)


def test_cli_proposals_and_ek100(tmp_path, capsys):
    g, p = _files(tmp_path, {"v": [{"segment": [0, 10], "score": 0.9}, {"segment": [20, 25], "score": 0.95}]})
    out = tmp_path / "res.json"
    assert main([g, p, "--proposals", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "AR@100" in printed and "AUC" in printed
    doc = json.loads(out.read_text())
    assert "detection" not in doc and doc["proposals"]["ar_at"]["1"] == 0 and doc["proposals"]["ar_at"]["5"] == 1
    ek = {"database": {"P01_01": {"duration": 60.0, "subset": "validation", "annotations": [
        {"segment": [0, 10], "label": "3,8", "verb": 3, "noun": 8}]}}}
    g, p = _files(tmp_path, {"P01_01": [P(0, 10, "3,8", 0.9, verb=3, noun=8)]}, gt=ek)
    assert main([g, p, "--ek100", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())["detection"]
    assert set(doc) == {"verb", "noun", "action"} and doc["action"]["average_map"] == 1.0
    assert doc["verb"]["tiou_thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert "verb" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tiou", "0.5:x:0.9"], "--tiou"),
    (["--bogus"], "unrecognized arguments"),
    (["--subset", "nope"], "no video of subset 'nope'"),
    (["--max-proposals", "0", "--proposals"], "--max-proposals"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    g, p = _files(tmp_path, {"v": [P(0, 10, "a", 0.9)]})
    assert main([g, p] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tada eval-detection: error:") and message in err and "\n" not in err


def test_cli_bad_files_exit_2(tmp_path, capsys):
    g, p = _files(tmp_path, {"v": [{"segment": [0, 10], "score": 0.9}]})
    assert main([g, str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such predictions JSON file" in capsys.readouterr().err
    assert main([g, p]) == 2  # detection needs labels
    assert "no 'label'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main([str(bad), p]) == 2
    assert "bad.json:1:2: not valid JSON" in capsys.readouterr().err
