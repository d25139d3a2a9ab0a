"""Temporal action detection and proposal evaluation by the ActivityNet protocol (``tada eval-detection``).

    tada eval-detection GT.json PRED.json [--tiou 0.5:0.05:0.95 | --tiou 0.3,0.5,0.7]
                        [--subset validation] [--ek100] [--proposals] [--out results.json]

Ground truth is an ActivityNet-style JSON (:mod:`tada.data.segments`); predictions the ActivityNet
results JSON ``{"results": {video: [{"segment": [s, e], "label": str, "score": float}, ...]}}``
(Epic-Kitchens predictions also carry ``"verb"`` and ``"noun"`` class ids). All values returned are
fractions in [0, 1]; the printed table shows them x100, as papers report them.

**Detection** (the semantics of the official ``Evaluation/eval_detection.py`` of activitynet/ActivityNet,
restated here in our words):

* *Classes*: the labels of the ground-truth segments of the evaluated subset. A class with ground truth
  but no prediction has AP 0 and still counts in the mean. A label with no ground truth in the subset is
  not evaluated; its predictions are ignored with a warning (the official code stops with a KeyError).
* *Order*: the predictions of a class, taken in file order (videos as they appear in the results, then
  entries), are sorted by descending score. The official code uses ``argsort()[::-1]``; NumPy's default
  sort leaves the order of equal scores unspecified (its classic introsort keeps ties in place only for
  small arrays, which it insertion-sorts; the SIMD sorts of recent NumPy on AVX-512 machines do not even
  then), so the official tie order depends on the platform and the NumPy version. We fix it as a
  *stable* ascending sort reversed: equal scores are visited in reverse file order (the last one
  first) -- the official order whenever its sort keeps ties in place. The ground truths a prediction
  is compared with are ordered the same way (descending tIoU, equal tIoU: the later segment first).
* *Matching*, independently at each tIoU threshold: a prediction is a true positive when some ground
  truth of its class and video, not yet matched at that threshold, has tIoU >= threshold; it takes the
  first such one in the order above (the highest tIoU). Otherwise it is a false positive -- a duplicate
  of an already-matched detection, a prediction for a video with no ground truth of that class, and a
  prediction for a video that is not in the evaluated subset at all (the official code does not filter
  predictions by subset; we warn when it happens).
* Ground truths no prediction matches are misses (videos without predictions, zero-length segments).
* *AP*: precision ``TP/(TP+FP)`` and recall ``TP/#GT`` after each prediction; AP is the area under the
  interpolated curve (VOC 2011+: precision made monotone by taking the maximum to the right, summed
  over the recall steps, with the points (0, 0) and (1, 0) added). mAP = mean over classes at each
  threshold; average mAP = mean of those over the thresholds (ActivityNet / HACS: 0.5:0.05:0.95,
  ``np.linspace(0.5, 0.95, 10)``; Epic-Kitchens: 0.1:0.1:0.5, verb / noun / action).

**Proposals** (the official ``Evaluation/eval_proposal.py``): labels are ignored. Over the subset's
videos that have ground truth, with ``AN_max`` the average number of proposals wanted per video
(100): the ratio ``AN_max * #videos / #proposals`` (all proposals of the file, also those of videos
outside the subset, as the official code counts them) scales each video's count; each video keeps its
``min(int(n * ratio), n)`` best-scored proposals (ties in reverse file order, as above). For 100
fractions ``f = 1/100 .. 1`` of them (a video keeps ``min(int(kept * f * AN_max * #videos / #kept_total),
kept)``) a ground truth is recalled when one of the kept proposals has tIoU >= threshold (no one-to-one
matching); recall is the fraction of ground truths recalled, AR the mean of recall over the thresholds,
and AN = f * #kept_total / #videos (so ``1, 2, ..., 100`` when every video has enough proposals).
AR@k is AR at AN = k. The AUC is the trapezoid area of AR against AN over ``[AN_1, AN_max]`` divided by
``AN_max`` (the official code prints ``100 * area / AN_max``): ``auc`` here is that area / AN_max, a
fraction; the table prints it x100 (BMN's "AUC 67.10").

The command reads the ground truth as written (``clip_to_duration=False, keep_zero_length=True``: no
end clipped to the duration, zero-length segments kept as unmatchable ground truth), which is what the
official code sees. It drops videos on a server-side "blocked" list; there is no such list here.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.segments import UntrimmedVideo, _read_json, load_activitynet_json

__all__ = [
    "ANET_TIOU",
    "EK100_TIOU",
    "AR_AT",
    "DetectionResult",
    "ProposalResult",
    "temporal_iou",
    "interpolated_ap",
    "average_precision_detection",
    "evaluate_detection",
    "evaluate_proposals",
    "evaluate_ek100",
    "load_predictions",
    "parse_tiou",
    "build_parser",
    "main",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ANET_TIOU = np.linspace(0.5, 0.95, 10)  # the official default, bit for bit
EK100_TIOU = np.linspace(0.1, 0.5, 5)
AR_AT = (1, 5, 10, 50, 100)
_LABEL_KEYS = ("label", "verb", "noun")


# --------------------------------------------------------------------------------------------------
# primitives


def _segments(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 2)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of [start, end], got shape {a.shape}")
    return a


def temporal_iou(segments: Any, candidates: Any) -> np.ndarray:
    """tIoU of every segment (N, 2) with every candidate (M, 2) -> (N, M): intersection (clipped at 0)
    over ``len_a + len_b - intersection``. Two zero-length segments (union 0) have tIoU 0 (the official
    code divides 0 by 0 there)."""
    a, b = _segments(segments, "segments"), _segments(candidates, "candidates")
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter = inter.clip(0)
    union = (b[None, :, 1] - b[None, :, 0]) + (a[:, None, 1] - a[:, None, 0]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interpolated_ap(precision: Any, recall: Any) -> float:
    """Area under the interpolated precision-recall curve (ActivityNet / VOC 2011+): the points (0, 0)
    and (1, 0) are added, precision is replaced by its maximum at any higher recall, and the area is
    the sum over the steps where recall changes of ``(r_i - r_{i-1}) * p_i``."""
    p, r = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    if p.ndim != 1 or p.shape != r.shape:
        raise ValueError(f"precision and recall must be 1-D of the same length, got {p.shape} and {r.shape}")
    mp = np.concatenate([[0.0], p, [0.0]])
    mr = np.concatenate([[0.0], r, [1.0]])
    mp = np.maximum.accumulate(mp[::-1])[::-1]
    idx = np.nonzero(mr[1:] != mr[:-1])[0] + 1
    return float(np.sum((mr[idx] - mr[idx - 1]) * mp[idx]))


def _thresholds(tiou_thresholds: Any) -> np.ndarray:
    t = np.atleast_1d(np.asarray(tiou_thresholds, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or t.min() <= 0 or t.max() > 1:
        raise ValueError(f"tIoU thresholds must be a non-empty list of numbers in (0, 1], got {tiou_thresholds!r}")
    return t


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores in reverse input order (see the module docstring)."""
    return np.argsort(scores, kind="stable")[::-1]


# --------------------------------------------------------------------------------------------------
# detection AP of one class


def _class_ap(gt_video: np.ndarray, gt_seg: np.ndarray, pred_video: np.ndarray, pred_seg: np.ndarray,
              pred_score: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """AP at each threshold of one class. ``gt_video`` / ``pred_video`` are integer video codes
    (predictions of videos without ground truth of this class: -1); predictions in file order."""
    n_t, n_pos, n_pred = len(thr), len(gt_video), len(pred_video)
    if n_pos == 0:
        raise ValueError("a class without ground truth has no AP (recall is undefined)")
    if n_pred == 0:
        return np.zeros(n_t)
    order = _descending(pred_score)
    pv, ps = pred_video[order], pred_seg[order]
    tp = np.zeros((n_t, n_pred), dtype=bool)

    # ground truth per video, padded to (V, K) -- padding has tIoU -1, so it is never eligible
    videos, gt_slot = np.unique(gt_video, return_inverse=True)
    counts = np.bincount(gt_slot, minlength=len(videos))
    k_max = int(counts.max())
    by_video = np.argsort(gt_slot, kind="stable")
    col = np.arange(n_pos) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.zeros((len(videos), k_max, 2))
    valid = np.zeros((len(videos), k_max), dtype=bool)
    padded[gt_slot[by_video], col] = gt_seg[by_video]
    valid[gt_slot[by_video], col] = True

    slot = np.searchsorted(videos, pv)
    has_gt = (pv >= 0) & (slot < len(videos))
    has_gt[has_gt] = videos[slot[has_gt]] == pv[has_gt]
    rows = np.nonzero(has_gt)[0]          # positions (in score order) of predictions that can match
    if len(rows):
        v = slot[rows]
        g = padded[v]                                               # (R, K, 2)
        inter = (np.minimum(ps[rows, None, 1], g[..., 1]) - np.maximum(ps[rows, None, 0], g[..., 0])).clip(0)
        union = (g[..., 1] - g[..., 0]) + (ps[rows, None, 1] - ps[rows, None, 0]) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        iou[~valid[v]] = -1.0
        gt_order = _descending_rows(iou)                            # (R, K) ground truth visiting order
        iou_sorted = np.take_along_axis(iou, gt_order, axis=1)
        # rank of each prediction among those of its video: videos are independent, so the r-th
        # predictions of all videos are matched together
        by_v = np.argsort(v, kind="stable")
        v_counts = np.bincount(v, minlength=len(videos))
        rank = np.empty(len(rows), dtype=np.int64)
        rank[by_v] = np.arange(len(rows)) - np.repeat(np.cumsum(v_counts) - v_counts, v_counts)
        locked = np.zeros((len(videos), n_t, k_max), dtype=bool)
        for r in range(int(rank.max()) + 1):
            sel = np.nonzero(rank == r)[0]
            vs, go = v[sel], gt_order[sel]                           # (S,), (S, K)
            lk = np.take_along_axis(locked[vs], np.broadcast_to(go[:, None, :], (len(sel), n_t, k_max)), axis=2)
            elig = (iou_sorted[sel][:, None, :] >= thr[None, :, None]) & ~lk
            hit = elig.any(axis=2)                                   # (S, T)
            first = elig.argmax(axis=2)
            s_i, t_i = np.nonzero(hit)
            locked[vs[s_i], t_i, go[s_i, first[s_i, t_i]]] = True
            tp[:, rows[sel]] = hit.T
    tp_cum = np.cumsum(tp, axis=1).astype(np.float64)
    fp_cum = np.cumsum(~tp, axis=1).astype(np.float64)
    recall = tp_cum / n_pos
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(n_t)])


def _descending_rows(x: np.ndarray) -> np.ndarray:
    return np.argsort(x, axis=1, kind="stable")[:, ::-1]


def average_precision_detection(gt: Mapping[str, Any], pred: Mapping[str, Any],
                                tiou_thresholds: Any = ANET_TIOU) -> np.ndarray:
    """AP of one class at each tIoU threshold -> ``(len(thresholds),)``.

    ``gt``: video id -> ``(K, 2)`` ground-truth segments of this class; ``pred``: video id -> ``(P, 3)``
    rows ``[start, end, score]`` of this class's predictions, in file order (that order breaks score
    ties; see the module docstring). Raises ValueError when ``gt`` has no segment."""
    thr = _thresholds(tiou_thresholds)
    codes: Dict[str, int] = {}
    gv, gs = [], []
    for vid, segs in gt.items():
        a = _segments(segs, f"gt[{vid!r}]")
        codes.setdefault(vid, len(codes))
        gv.append(np.full(len(a), codes[vid]))
        gs.append(a)
    pv, ps, sc = [], [], []
    for vid, rows in pred.items():
        a = np.asarray(rows, dtype=np.float64)
        if a.size == 0:
            continue
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"pred[{vid!r}] must be a (P, 3) array of [start, end, score], got shape {a.shape}")
        pv.append(np.full(len(a), codes.get(vid, -1)))
        ps.append(a[:, :2])
        sc.append(a[:, 2])
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    return _class_ap(cat(gv, (0,)).astype(np.int64), cat(gs, (0, 2)), cat(pv, (0,)).astype(np.int64),
                     cat(ps, (0, 2)), cat(sc, (0,)), thr)


# --------------------------------------------------------------------------------------------------
# results


@dataclass
class DetectionResult:
    """Per-class AP (classes x thresholds), mAP per threshold and the average mAP, all in [0, 1]."""

    tiou_thresholds: np.ndarray
    ap: np.ndarray
    classes: List[str]
    map_per_tiou: np.ndarray
    average_map: float
    num_ground_truth: int = 0
    num_predictions: int = 0
    ignored_predictions: int = 0       # labels without ground truth in the subset
    outside_subset_predictions: int = 0  # videos not in the subset: counted as false positives
    subset: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "subset": self.subset,
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "map_per_tiou": [float(m) for m in self.map_per_tiou],
            "average_map": float(self.average_map),
            "classes": list(self.classes),
            "ap": {c: [float(x) for x in row] for c, row in zip(self.classes, self.ap)},
            "num_ground_truth": self.num_ground_truth,
            "num_predictions": self.num_predictions,
            "ignored_predictions": self.ignored_predictions,
            "outside_subset_predictions": self.outside_subset_predictions,
        }


@dataclass
class ProposalResult:
    """AR against AN (``avg_proposals`` grid, ``recall`` = AR averaged over the thresholds,
    ``recall_per_tiou`` thresholds x grid), AR@k and the normalised AUC, all in [0, 1]."""

    tiou_thresholds: np.ndarray
    avg_proposals: np.ndarray
    recall: np.ndarray
    recall_per_tiou: np.ndarray
    ar_at: Dict[int, float]
    auc: float
    num_ground_truth: int = 0
    num_videos: int = 0
    subset: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "subset": self.subset,
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "ar_at": {str(k): float(v) for k, v in self.ar_at.items()},
            "auc": float(self.auc),
            "avg_proposals": [float(x) for x in self.avg_proposals],
            "recall": [float(x) for x in self.recall],
            "recall_per_tiou": [[float(x) for x in row] for row in self.recall_per_tiou],
            "num_ground_truth": self.num_ground_truth,
            "num_videos": self.num_videos,
        }


# --------------------------------------------------------------------------------------------------
# predictions


def _bad(where: str, what: str, got: Any) -> ValueError:
    r = repr(got)
    return ValueError(f"{where}: {what}, got {r if len(r) <= 80 else r[:77] + '...'}")


def _finite(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _class_of(x: Any) -> Optional[int]:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    return None


def _clean_prediction(where: str, entry: Any) -> Dict[str, Any]:
    """A validated copy of one prediction: ``segment`` [s, e] (finite, e >= s), ``score`` (finite),
    and when present ``label`` (a string; an integer is turned into its string), ``verb`` / ``noun``
    (integer class ids)."""
    if not isinstance(entry, dict):
        raise _bad(where, 'expected an object {"segment": [start, end], "label": ..., "score": ...}', entry)
    seg = entry.get("segment")
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise _bad(where, "'segment' must be two numbers [start, end] in seconds", seg)
    s, e = _finite(seg[0]), _finite(seg[1])
    if s is None or e is None:
        raise _bad(where, "'segment' must be two finite numbers [start, end]", seg)
    if e < s:
        raise _bad(where, "'segment' ends before it starts", seg)
    if "score" not in entry:
        raise ValueError(f"{where}: no 'score'")
    score = _finite(entry["score"])
    if score is None:
        raise _bad(where, "'score' must be a finite number", entry["score"])
    out: Dict[str, Any] = {"segment": [s, e], "score": score}
    if entry.get("label") is not None:
        label = entry["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise _bad(where, "'label' must be a string (the class name)", label)
        out["label"] = str(label)
    for key in ("verb", "noun"):
        if entry.get(key) is not None:
            c = _class_of(entry[key])
            if c is None or c < 0:
                raise _bad(where, f"{key!r} must be a class id (an integer >= 0)", entry[key])
            out[key] = c
    if "label" not in out and "verb" in out and "noun" in out:
        out["label"] = f"{out['verb']},{out['noun']}"  # the Epic-Kitchens action
    return out


def load_predictions(path: PathLike) -> Dict[str, List[dict]]:
    """An ActivityNet results JSON ``{"results": {video: [{"segment", "label", "score"}, ...]}}``
    (extra top-level keys such as ``version`` / ``external_data`` are ignored) -> video id -> validated
    entries, in file order. A malformed entry is a ValueError naming the file, video and index."""
    data = _read_json(path, "predictions JSON")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: expected an ActivityNet results JSON, an object with 'results' mapping video ids "
                         "to lists of {segment, label, score}")
    out: Dict[str, List[dict]] = {}
    for vid, entries in data["results"].items():
        if not isinstance(entries, list):
            raise _bad(f"{path}: video {vid!r}", "expected a list of predictions", entries)
        out[vid] = [_clean_prediction(f"{path}: video {vid!r} prediction {i}", e) for i, e in enumerate(entries)]
    return out


def _prediction_rows(predictions: Mapping[str, Sequence[dict]], key: Optional[str]
                     ) -> Tuple[List[str], List[Optional[str]], np.ndarray, np.ndarray]:
    """Flat (videos, labels, segments (N, 2), scores (N,)) of all predictions in mapping order; labels
    read from ``key`` (None: not read). Entries are validated (they may come from code, not a file)."""
    vids: List[str] = []
    labels: List[Optional[str]] = []
    segs: List[List[float]] = []
    scores: List[float] = []
    for vid, entries in predictions.items():
        for i, e in enumerate(entries):
            e = _clean_prediction(f"predictions[{vid!r}][{i}]", e)
            if key is not None:
                if key not in e:
                    need = "'verb' and 'noun' class ids" if key != "label" else "a 'label'"
                    raise ValueError(f"predictions[{vid!r}][{i}]: no {key!r}; detection evaluation needs {need} "
                                     "in every prediction (proposals without labels: evaluate_proposals / --proposals)")
                labels.append(str(e[key]))
            else:
                labels.append(None)
            vids.append(vid)
            segs.append(e["segment"])
            scores.append(e["score"])
    return vids, labels, np.asarray(segs, dtype=np.float64).reshape(-1, 2), np.asarray(scores, dtype=np.float64)


def _subset_videos(gt_videos: Mapping[str, UntrimmedVideo], subset: Optional[str]) -> Dict[str, UntrimmedVideo]:
    chosen = {k: v for k, v in gt_videos.items() if subset is None or v.subset == subset}
    if not chosen:
        found = sorted({v.subset for v in gt_videos.values()})
        raise ValueError(f"no ground-truth video of subset {subset!r} (the ground truth has subsets {found}); "
                         "pass the subset to evaluate, or None for all videos")
    return chosen


def _gt_label(seg, key: str, vid: str) -> str:
    if key == "label":
        return seg.label
    value = getattr(seg, key)
    if value is None:
        raise ValueError(f"ground truth video {vid!r} has a segment without a {key!r} class; {key} mAP needs "
                         "Epic-Kitchens segments (load_ek100_segments, or annotations with 'verb' and 'noun')")
    return str(value)


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_detection(gt_videos: Mapping[str, UntrimmedVideo], predictions: Mapping[str, Sequence[dict]],
                       tiou_thresholds: Any = ANET_TIOU, *, subset: Optional[str] = "validation",
                       label_key: str = "label") -> DetectionResult:
    """ActivityNet detection mAP of ``predictions`` (video id -> entries with ``segment``, ``score`` and
    ``label_key``) against the ground truth of ``subset`` (None: every video). ``label_key`` ``"verb"``
    / ``"noun"`` compares the predictions' class ids with the segments' ``verb`` / ``noun``."""
    if label_key not in _LABEL_KEYS:
        raise ValueError(f"label_key must be one of {_LABEL_KEYS}, got {label_key!r}")
    thr = _thresholds(tiou_thresholds)
    videos = _subset_videos(gt_videos, subset)
    code = {vid: i for i, vid in enumerate(videos)}
    gt: Dict[str, Tuple[List[int], List[Tuple[float, float]]]] = {}
    for vid, v in videos.items():
        for s in v.segments:
            g = gt.setdefault(_gt_label(s, label_key, vid), ([], []))
            g[0].append(code[vid])
            g[1].append((s.start, s.end))
    if not gt:
        raise ValueError(f"no ground-truth segments in subset {subset!r}; nothing to evaluate")
    classes = sorted(gt)
    p_vid, p_label, p_seg, p_score = _prediction_rows(predictions, label_key)
    p_code = np.array([code.get(vid, -1) for vid in p_vid], dtype=np.int64)
    known = np.array([lab in gt for lab in p_label], dtype=bool)
    ignored = int((~known).sum())
    if ignored:
        other = sorted({lab for lab, k in zip(p_label, known) if not k})
        log.warning("%d prediction(s) with %s(s) %s that have no ground truth in subset %r are ignored",
                    ignored, label_key, ", ".join(map(repr, other[:5])) + (" ..." if len(other) > 5 else ""), subset)
    outside = int((p_code < 0).sum())
    if outside:
        log.warning("%d prediction(s) are for %d video(s) not in subset %r; they count as false positives, as in "
                    "the official evaluation (drop them, or evaluate the subset they belong to)", outside,
                    len({vid for vid, c in zip(p_vid, p_code) if c < 0}), subset)
    of_class: Dict[str, List[int]] = {}
    for i, lab in enumerate(p_label):
        of_class.setdefault(lab, []).append(i)  # file order kept within each class
    ap = np.zeros((len(classes), len(thr)))
    for ci, c in enumerate(classes):
        m = np.asarray(of_class.get(c, []), dtype=np.int64)
        ap[ci] = _class_ap(np.asarray(gt[c][0], dtype=np.int64), np.asarray(gt[c][1], dtype=np.float64),
                           p_code[m], p_seg[m], p_score[m], thr)
    per_tiou = ap.mean(axis=0)
    return DetectionResult(thr, ap, classes, per_tiou, float(per_tiou.mean()),
                           num_ground_truth=sum(len(g[0]) for g in gt.values()), num_predictions=len(p_vid),
                           ignored_predictions=ignored, outside_subset_predictions=outside, subset=subset)


def evaluate_ek100(gt_videos: Mapping[str, UntrimmedVideo], predictions: Mapping[str, Sequence[dict]],
                   tiou_thresholds: Any = EK100_TIOU, subset: Optional[str] = "validation"
                   ) -> Dict[str, DetectionResult]:
    """Epic-Kitchens-100 detection: ``{"verb", "noun", "action"}`` -> result, by each prediction's
    ``verb`` / ``noun`` class ids and its ``label`` (``"verb,noun"``) against the segments' ``verb``,
    ``noun`` and ``label``, each by the ActivityNet protocol (tIoU 0.1:0.1:0.5 by default)."""
    return {name: evaluate_detection(gt_videos, predictions, tiou_thresholds, subset=subset, label_key=key)
            for name, key in (("verb", "verb"), ("noun", "noun"), ("action", "label"))}


def evaluate_proposals(gt_videos: Mapping[str, UntrimmedVideo], proposals: Mapping[str, Sequence[dict]], *,
                       max_avg_nr_proposals: float = 100, tiou_thresholds: Any = ANET_TIOU,
                       subset: Optional[str] = "validation") -> ProposalResult:
    """AR@AN and AUC of ``proposals`` (video id -> entries with ``segment`` and ``score``; labels ignored)
    by the official ActivityNet proposal protocol (module docstring)."""
    thr = _thresholds(tiou_thresholds)
    if not (isinstance(max_avg_nr_proposals, (int, float)) and math.isfinite(max_avg_nr_proposals)
            and max_avg_nr_proposals > 0):
        raise ValueError(f"max_avg_nr_proposals must be a positive number, got {max_avg_nr_proposals!r}")
    videos = {k: v for k, v in _subset_videos(gt_videos, subset).items() if v.segments}
    if not videos:
        raise ValueError(f"no ground-truth segments in subset {subset!r}; nothing to evaluate")
    p_vid, _, p_seg, p_score = _prediction_rows(proposals, None)
    n_videos, n_total = len(videos), len(p_vid)
    by_video: Dict[str, List[int]] = {}
    for i, vid in enumerate(p_vid):
        by_video.setdefault(vid, []).append(i)
    outside = sum(len(ix) for vid, ix in by_video.items() if vid not in videos)
    if outside:
        log.warning("%d proposal(s) are for videos without ground truth in subset %r; as in the official "
                    "evaluation they still count in the total that scales the proposals kept per video",
                    outside, subset)
    ratio = max_avg_nr_proposals * float(n_videos) / n_total if n_total else 0.0
    # per video: the first kept proposal (in score order) that reaches each threshold, per ground truth
    first_hits, kept, n_gt = [], [], 0
    for vid, v in videos.items():
        gts = np.array([(s.start, s.end) for s in v.segments])
        n_gt += len(gts)
        idx = np.asarray(by_video.get(vid, []), dtype=np.int64)
        nr = min(int(len(idx) * ratio), len(idx)) if len(idx) else 0
        if nr == 0:
            first_hits.append(np.full((len(thr), len(gts)), np.inf))
            kept.append(0)
            continue
        props = p_seg[idx][_descending(p_score[idx])][:nr]
        ok = temporal_iou(gts, props)[None] >= thr[:, None, None]    # (T, K, nr)
        first = np.where(ok.any(axis=2), ok.argmax(axis=2), np.inf)
        first_hits.append(first)
        kept.append(nr)
    total_kept = sum(kept)
    grid = np.arange(1, 101) / 100.0
    if total_kept:
        pcn = grid * (max_avg_nr_proposals * float(n_videos) / total_kept)
    else:
        pcn = grid * 0.0
    matches = np.zeros((len(thr), len(grid)))
    for first, nr in zip(first_hits, kept):
        allowed = np.minimum((nr * pcn).astype(np.int64), nr)         # proposals used at each AN
        matches += (first[:, :, None] < allowed[None, None, :]).sum(axis=1)
    recall_per_tiou = matches / n_gt
    ar = recall_per_tiou.mean(axis=0)
    an = pcn * (float(total_kept) / n_videos)
    if total_kept:
        area = float(np.trapezoid(ar, an)) if hasattr(np, "trapezoid") else float(np.trapz(ar, an))
        auc = area / an[-1]
    else:
        auc = 0.0
    ar_at = {k: float(np.interp(k, an, ar)) if total_kept else 0.0 for k in AR_AT if k <= max_avg_nr_proposals}
    return ProposalResult(thr, an, ar, recall_per_tiou, ar_at, auc, num_ground_truth=n_gt, num_videos=n_videos,
                          subset=subset)


# --------------------------------------------------------------------------------------------------
# command line


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (main), instead of usage text
        raise _UsageError(message)


def parse_tiou(text: str) -> np.ndarray:
    """``"a:b:c"`` (start:step:end, the end included within 1e-6 of a step) or ``"t1,t2,..."``.
    ``0.5:0.05:0.95`` gives ``np.linspace(0.5, 0.95, 10)``, the official thresholds bit for bit."""
    usage = (f"--tiou {text!r}: expected start:step:end (e.g. 0.5:0.05:0.95) or a comma-separated list "
             "(e.g. 0.3,0.5,0.7) of numbers in (0, 1]")
    text = text.strip()
    try:
        parts = [float(x) for x in text.split(":" if ":" in text else ",") if x.strip()]
    except ValueError:
        raise ValueError(usage) from None
    if ":" in text:
        if len(parts) != 3 or not (parts[1] > 0 and parts[2] >= parts[0]):
            raise ValueError(usage + " (start:step:end needs step > 0 and end >= start)")
        a, step, b = parts
        n = int(math.floor((b - a) / step + 1e-6)) + 1
        last = a + (n - 1) * step
        t = np.linspace(a, b if abs(last - b) <= 1e-6 * step else last, n)
    else:
        t = np.array(parts)
    try:
        return _thresholds(t)
    except ValueError:
        raise ValueError(usage) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tada eval-detection", description="Temporal action detection mAP (and proposal AR@AN) by the "
                "ActivityNet protocol. See tada.engine.detection_eval for the exact semantics.")
    p.add_argument("gt", help="ground truth: ActivityNet-style JSON (ActivityNet 1.3, HACS, or tada's EK100 export)")
    p.add_argument("pred", help='predictions: {"results": {video: [{"segment": [s, e], "label", "score"}]}}')
    p.add_argument("--tiou", default=None, help="tIoU thresholds: start:step:end or a comma list (default "
                   "0.5:0.05:0.95; with --ek100 0.1:0.1:0.5)")
    p.add_argument("--subset", default="validation", help="ground-truth subset to evaluate (default validation; "
                   "'all' for every video)")
    p.add_argument("--ek100", action="store_true", help="Epic-Kitchens-100: verb, noun and action mAP")
    p.add_argument("--proposals", action="store_true", help="also AR@1/5/10/50/100 and AUC of the predictions as "
                   "proposals (labels not needed; detection mAP is skipped when they are missing)")
    p.add_argument("--max-proposals", type=float, default=100.0, help="AN_max: average proposals per video "
                   "(default 100)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def _table(rows: Dict[str, DetectionResult]) -> str:
    thr = next(iter(rows.values())).tiou_thresholds
    head = f"{'tIoU':<8}" + "".join(f"{t:>7.2f}" for t in thr) + f"{'avg':>8}"
    lines = [head]
    for name, r in rows.items():
        cells = "".join(f"{100 * m:>7.2f}" for m in r.map_per_tiou)
        lines.append(f"{name:<8}{cells}{100 * r.average_map:>8.2f}")
    return "\n".join(lines)


def _proposal_table(r: ProposalResult) -> str:
    head = "".join(f"{'AR@' + str(k):>8}" for k in r.ar_at) + f"{'AUC':>8}"
    return head + "\n" + "".join(f"{100 * v:>8.2f}" for v in r.ar_at.values()) + f"{100 * r.auc:>8.2f}"


def _write_json(doc: Dict[str, Any], path: PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(args) -> int:
    subset = None if args.subset in ("all", "") else args.subset
    thr = parse_tiou(args.tiou) if args.tiou is not None else (EK100_TIOU if args.ek100 else ANET_TIOU)
    if not (math.isfinite(args.max_proposals) and args.max_proposals > 0):
        raise ValueError(f"--max-proposals must be a positive number, got {args.max_proposals}")
    # the file as written (no clipping, zero-length segments kept): the official evaluation's view of it
    gt = load_activitynet_json(args.gt, clip_to_duration=False, keep_zero_length=True)
    if subset is not None and not any(v.subset == subset for v in gt.values()):
        found = sorted({v.subset for v in gt.values()})
        raise ValueError(f"{args.gt}: no video of subset {subset!r} (the file has {found}); choose one with "
                         "--subset, or --subset all for every video")
    pred = load_predictions(args.pred)
    doc: Dict[str, Any] = {"ground_truth": str(args.gt), "predictions": str(args.pred), "subset": subset}
    keys = ("verb", "noun", "label") if args.ek100 else ("label",)
    labelled = all(k in e for es in pred.values() for e in es for k in keys)
    if args.proposals and not labelled:
        print("detection: skipped (the predictions have no labels)")
    else:
        if args.ek100:
            res = evaluate_ek100(gt, pred, thr, subset=subset)
            doc["detection"] = {k: r.to_dict() for k, r in res.items()}
            print(_table(res))
        else:
            r = evaluate_detection(gt, pred, thr, subset=subset)
            doc["detection"] = r.to_dict()
            print(_table({"mAP": r}))
    if args.proposals:
        pr = evaluate_proposals(gt, pred, max_avg_nr_proposals=args.max_proposals, tiou_thresholds=thr,
                                subset=subset)
        doc["proposals"] = pr.to_dict()
        print(_proposal_table(pr))
    if args.out:
        _write_json(doc, args.out)
        print(f"-> {args.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tada eval-detection``; returns the exit code (2: a bad option, file or value, with a one-line message)."""
    from .commands import run_command

    return run_command("tada eval-detection", lambda a: _run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
