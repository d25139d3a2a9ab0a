"""BMN post-processing: candidate proposals, Soft-NMS, sliding-window fusion, classification and
the ActivityNet results JSON (SPEC §8).

Coordinates: :class:`tada.models.bmn.BMN` predicts on a grid of ``T`` positions; position ``i`` is
time ``i / T`` of the window (window units). Proposal ``(d, s)`` runs from ``s / T`` to
``(s + d + 1) / T``.

**Candidates** (:func:`bmn_candidates`, the reference's rule). A position is a start candidate when
its start probability is a strict local maximum (greater than both neighbours) or exceeds
``peak_threshold`` (0.5) times the largest start probability; position 0 is always a start
candidate and position ``T - 1`` always an end candidate; the two end positions are otherwise not
tested (the reference only tests ``1 .. T - 2``). Ends likewise. Every start candidate ``s`` pairs
with every end candidate ``e = s + d + 1 < T`` (so a proposal never ends exactly at the window's
end, as in the reference) with ``d < D``; score = ``start[s] * end[e] * cls[d, s] * reg[d, s]``.

**Soft-NMS** (:func:`soft_nms`, the BMN reference's Gaussian variant). Repeatedly take the
highest-scoring remaining proposal ``m``; every other remaining proposal ``j`` whose IoU with ``m``
exceeds ``low + (high - low) * width(m)`` (an adaptive threshold: wide proposals suppress only
near-duplicates; ``width`` in window units) has its score multiplied by ``exp(-IoU^2 / alpha)``.
Stop after ``top_k`` picks. Each step is one vectorised update of the remaining set. Ties (equal
scores) go to the proposal given first, so the result does not depend on the sort's stability.
Defaults α = 0.4, low 0.5, high 0.9, top 100 (HACS / ActivityNet; the release uses low 0.25 on
EK100).

**Sliding windows** (:func:`fuse_windows`, EK100). The release averages overlapping predictions
before candidate generation: on the video's global grid, each position's start / end probability
is the mean over the windows that cover it with real features, and each confidence cell
``(d, g)`` the mean over the windows in which proposal ``(d, g - offset)`` starts inside the
window's real content and ends within it (``t + d + 1 <= valid``); cells no window covers are 0.
Candidates and Soft-NMS then run on the fused maps as on one long window (units: the global grid),
and :func:`to_seconds` maps them to seconds.

**Classification.** HACS / ActivityNet (:func:`classify_video_level`): one action per video, so
each proposal takes the video's ``top_k_classes`` classes from a video-level classifier, scored
``proposal score x class score``. EK100 (:func:`classify_by_clip_scores`): verb and noun
probabilities of the clips whose centre lies inside the proposal are averaged (the nearest clip
when none does); the ``top_k_pairs`` (verb, noun) pairs by product of the pooled probabilities
become detections scored ``proposal score x verb x noun``, labelled ``"verb,noun"``.

**Results JSON** (:func:`results_json`): ``{"version", "results": {video: [{"segment": [s, e],
"score", "label", ...}]}, "external_data"}``, the ActivityNet evaluation format.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "CANDIDATE_COLUMNS",
    "bmn_candidates",
    "soft_nms",
    "fuse_windows",
    "to_seconds",
    "classify_video_level",
    "classify_by_clip_scores",
    "results_json",
]

CANDIDATE_COLUMNS = ("xmin", "xmax", "score", "start_x_end", "cls_x_reg")


# ------------------------------------------------------------------------------------- candidates


def _boundary_candidates(p: Tensor, threshold: float, always: int) -> Tensor:
    """Bool (T,): strict local maxima or > threshold * max on 1..T-2; position ``always`` set."""
    t = p.shape[0]
    out = torch.zeros(t, dtype=torch.bool, device=p.device)
    if t >= 3:
        mid = p[1:-1]
        out[1:-1] = ((mid > p[2:]) & (mid > p[:-2])) | (mid > threshold * p.max())
    out[always] = True
    return out


def bmn_candidates(start: Tensor, end: Tensor, confidence: Tensor, *, max_duration: Optional[int] = None,
                   peak_threshold: float = 0.5) -> Tensor:
    """Candidate proposals of one window from BMN's maps.

    ``start``, ``end``: ``(T,)`` probabilities; ``confidence``: ``(2, D, T)`` (regression,
    classification), e.g. ``BMN(x)["confidence"][i]``. ``max_duration`` (<= D) limits durations
    further. Returns ``(K, 5)`` rows ``[xmin, xmax, score, start*end, cls*reg]`` in window units
    (:data:`CANDIDATE_COLUMNS`), ordered by duration then start (the reference's enumeration).
    """
    start, end, confidence = _as_float(start, "start"), _as_float(end, "end"), _as_float(confidence, "confidence")
    if start.dim() != 1 or end.shape != start.shape:
        raise ValueError(f"start and end must be (T,) of the same length, got {tuple(start.shape)} and "
                         f"{tuple(end.shape)} (pass one window, not a batch)")
    t = start.shape[0]
    if confidence.dim() != 3 or confidence.shape[0] != 2 or confidence.shape[2] != t:
        raise ValueError(f"confidence must be (2, D, {t}) [regression, classification], got {tuple(confidence.shape)}")
    d = confidence.shape[1]
    if max_duration is not None:
        if isinstance(max_duration, bool) or not isinstance(max_duration, int) or not 1 <= max_duration <= d:
            raise ValueError(f"max_duration must be an int in [1, {d}], got {max_duration!r}")
        d = max_duration
    s_ok = _boundary_candidates(start, peak_threshold, 0)
    e_ok = _boundary_candidates(end, peak_threshold, t - 1)
    dd = torch.arange(d, device=start.device)[:, None]
    ss = torch.arange(t, device=start.device)[None, :]
    ee = ss + dd + 1
    ok = (ee < t) & s_ok[None, :] & e_ok[ee.clamp(max=t - 1)]
    di, si = ok.nonzero(as_tuple=True)  # row-major: duration, then start
    ei = si + di + 1
    boundary = start[si] * end[ei]
    conf = confidence[1, di, si] * confidence[0, di, si]
    dt = start.dtype
    return torch.stack([si.to(dt) / t, ei.to(dt) / t, boundary * conf, boundary, conf], dim=1)


# --------------------------------------------------------------------------------------- Soft-NMS


def _iou_1d(s: Tensor, e: Tensor, ss: Tensor, ee: Tensor) -> Tensor:
    inter = (torch.minimum(e, ee) - torch.maximum(s, ss)).clamp(min=0)
    union = (e - s) + (ee - ss) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def soft_nms(proposals: Tensor, *, alpha: float = 0.4, low_threshold: float = 0.5, high_threshold: float = 0.9,
             top_k: int = 100, return_indices: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The BMN reference's Soft-NMS on ``(K, >=3)`` rows ``[start, end, score, ...]`` (window units).

    Returns ``(k, 3)`` ``[start, end, decayed score]``, ``k = min(top_k, K)``, in pick order (which
    is descending decayed score); with ``return_indices`` also the picked rows' indices into
    ``proposals``.
    """
    p = _as_float(proposals, "proposals")
    if p.dim() != 2 or p.shape[1] < 3:
        raise ValueError(f"proposals must be (K, >=3) [start, end, score, ...], got {tuple(p.shape)}")
    if not torch.isfinite(p[:, :3]).all():
        raise ValueError("proposals contain non-finite start / end / score values")
    if (p[:, 1] < p[:, 0]).any():
        raise ValueError("proposals contain a row with end < start")
    for name, v in (("alpha", alpha), ("low_threshold", low_threshold), ("high_threshold", high_threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    s, e = p[:, 0].double(), p[:, 1].double()
    score = p[:, 2].double().clone()
    alive = torch.ones(len(p), dtype=torch.bool, device=p.device)
    picked: List[int] = []
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=p.device)
    for _ in range(min(top_k, len(p))):
        m = int(torch.argmax(torch.where(alive, score, neg_inf)))  # first maximum: ties to the lower index
        picked.append(m)
        alive[m] = False
        iou = _iou_1d(s[m], e[m], s, e)
        hit = alive & (iou > low_threshold + (high_threshold - low_threshold) * (e[m] - s[m]))
        score = torch.where(hit, score * torch.exp(-iou.square() / alpha), score)
    idx = torch.tensor(picked, dtype=torch.long, device=p.device)
    out = torch.stack([s[idx], e[idx], score[idx]], dim=1).to(p.dtype)
    return (out, idx) if return_indices else out


# ----------------------------------------------------------------------------------------- windows


def fuse_windows(windows: Sequence[Mapping[str, Tensor]], offsets: Sequence[int], total_length: int, *,
                 valid_lengths: Optional[Sequence[int]] = None) -> Dict[str, Tensor]:
    """Average overlapping sliding-window predictions onto the video's global grid.

    ``windows[i]``: ``{"start": (T,), "end": (T,), "confidence": (C, D, T)}`` (one window's BMN
    outputs; any number ``C`` of maps, e.g. verb / noun maps too); ``offsets[i]``: the global
    position of the window's position 0; ``total_length``: ``L``, positions on the global grid;
    ``valid_lengths[i]``: positions of window ``i`` that hold real features (default
    ``min(T, L - offset)``; the rest is padding past the video's end). Returns ``{"start": (L,),
    "end": (L,), "confidence": (C, D, L)}``.
    """
    if not windows or len(windows) != len(offsets):
        raise ValueError(f"need one offset per window, got {len(windows)} windows and {len(offsets)} offsets")
    if isinstance(total_length, bool) or not isinstance(total_length, int) or total_length < 1:
        raise ValueError(f"total_length must be a positive int, got {total_length!r}")
    if valid_lengths is not None and len(valid_lengths) != len(windows):
        raise ValueError("valid_lengths needs one entry per window")
    first = windows[0]
    conf0 = _as_float(first["confidence"], "confidence")
    if conf0.dim() != 3:
        raise ValueError(f"windows[0]['confidence'] must be (C, D, T), got {tuple(conf0.shape)}")
    c, d, t = conf0.shape
    length = total_length
    dev, dt = conf0.device, conf0.dtype
    sums = {k: torch.zeros(length, dtype=dt, device=dev) for k in ("start", "end")}
    conf_sum = torch.zeros(c, d, length, dtype=dt, device=dev)
    pos_count = torch.zeros(length, dtype=dt, device=dev)
    cell_count = torch.zeros(d, length, dtype=dt, device=dev)
    dd = torch.arange(d, device=dev)[:, None]
    tt = torch.arange(t, device=dev)[None, :]
    for i, (w, off) in enumerate(zip(windows, offsets, strict=True)):
        conf = _as_float(w["confidence"], f"windows[{i}]['confidence']")
        st, en = _as_float(w["start"], f"windows[{i}]['start']"), _as_float(w["end"], f"windows[{i}]['end']")
        if conf.shape != (c, d, t) or st.shape != (t,) or en.shape != (t,):
            raise ValueError(f"windows[{i}] has shapes start {tuple(st.shape)}, end {tuple(en.shape)}, confidence "
                             f"{tuple(conf.shape)}; every window must match start/end ({t},), confidence {(c, d, t)}")
        if isinstance(off, bool) or not isinstance(off, int) or not 0 <= off < length:
            raise ValueError(f"offsets[{i}] must be an int in [0, {length}), got {off!r}")
        valid = min(t, length - off) if valid_lengths is None else valid_lengths[i]
        if isinstance(valid, bool) or not isinstance(valid, int) or not 0 <= valid <= min(t, length - off):
            raise ValueError(f"valid_lengths[{i}] must be an int in [0, {min(t, length - off)}], got {valid!r}")
        g = slice(off, off + valid)
        pos_count[g] += 1
        sums["start"][g] += st[:valid]
        sums["end"][g] += en[:valid]
        cells = ((tt + dd + 1) <= valid)[:, :valid].to(dt)  # (D, valid): proposal inside the real content
        cell_count[:, g] += cells
        conf_sum[:, :, g] += conf[:, :, :valid] * cells
    out = {k: v / pos_count.clamp(min=1) for k, v in sums.items()}
    out["confidence"] = conf_sum / cell_count.clamp(min=1)
    return out


def to_seconds(proposals: Tensor, duration: float) -> Tensor:
    """Rows ``[start, end, ...]`` in [0, 1] units of a grid covering ``duration`` seconds -> seconds
    (start clipped at 0 and end at 1 first, as the reference); other columns unchanged."""
    p = _as_float(proposals, "proposals")
    if p.dim() != 2 or p.shape[1] < 2:
        raise ValueError(f"proposals must be (K, >=2), got {tuple(p.shape)}")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not (
            math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    out = p.clone()
    out[:, 0] = p[:, 0].clamp(min=0) * duration
    out[:, 1] = p[:, 1].clamp(max=1) * duration
    return out


# ---------------------------------------------------------------------------------- classification


def _check_proposals_seconds(proposals) -> Tensor:
    p = _as_float(proposals, "proposals")
    if p.dim() != 2 or p.shape[1] < 3:
        raise ValueError(f"proposals must be (K, >=3) [start, end, score] in seconds, got {tuple(p.shape)}")
    if not torch.isfinite(p[:, :3]).all():
        raise ValueError("proposals contain non-finite values")
    return p


def _descending(scores: Tensor) -> Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def classify_video_level(proposals: Tensor, class_scores: Tensor, class_names: Sequence[str], *,
                         top_k_classes: int = 2) -> List[dict]:
    """HACS / ActivityNet: every proposal ``[s, e, score]`` (seconds) takes the video's top-k
    classes; detection score = proposal score x class score. Sorted by descending score (stable)."""
    p = _check_proposals_seconds(proposals)
    cs = _as_float(class_scores, "class_scores")
    if cs.dim() != 1 or cs.numel() != len(class_names):
        raise ValueError(f"class_scores must be ({len(class_names)},), one per class name, got {tuple(cs.shape)}")
    if isinstance(top_k_classes, bool) or not isinstance(top_k_classes, int) or top_k_classes < 1:
        raise ValueError(f"top_k_classes must be a positive int, got {top_k_classes!r}")
    top = _descending(cs)[:top_k_classes]
    score = p[:, 2, None] * cs[top][None, :]  # (K, k)
    flat = score.reshape(-1)
    out = []
    for j in _descending(flat).tolist():
        i, c = divmod(j, len(top))
        out.append({"segment": [float(p[i, 0]), float(p[i, 1])], "label": str(class_names[int(top[c])]),
                    "score": float(flat[j])})
    return out


def classify_by_clip_scores(proposals: Tensor, clip_times: Tensor, verb_scores: Tensor, noun_scores: Tensor, *,
                            top_k_pairs: int = 5) -> List[dict]:
    """EK100: ``(verb, noun)`` detections from clip classifier probabilities pooled over each proposal.

    ``proposals``: ``(K, >=3)`` ``[s, e, score]`` in seconds; ``clip_times``: ``(T,)`` clip centres
    in seconds; ``verb_scores`` ``(T, V)``, ``noun_scores`` ``(T, N)``: non-negative probabilities.
    Each proposal yields its ``top_k_pairs`` pairs by ``verb x noun`` (exact: the best k pairs of
    non-negative scores use only the k best verbs and k best nouns), entries ``{"segment", "score",
    "label": "v,n", "verb", "noun"}``; proposal by proposal in the given order, pairs best first.
    """
    p = _check_proposals_seconds(proposals)
    times = _as_float(clip_times, "clip_times")
    vs, ns = _as_float(verb_scores, "verb_scores"), _as_float(noun_scores, "noun_scores")
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"clip_times must be a non-empty (T,) tensor of seconds, got {tuple(times.shape)}")
    for name, sc in (("verb_scores", vs), ("noun_scores", ns)):
        if sc.dim() != 2 or sc.shape[0] != times.shape[0]:
            raise ValueError(f"{name} must be (T={times.shape[0]}, classes), got {tuple(sc.shape)}")
        if not torch.isfinite(sc).all() or (sc < 0).any():
            raise ValueError(f"{name} must be finite and non-negative (softmax probabilities, not logits)")
    if isinstance(top_k_pairs, bool) or not isinstance(top_k_pairs, int) or top_k_pairs < 1:
        raise ValueError(f"top_k_pairs must be a positive int, got {top_k_pairs!r}")
    if len(p) == 0:
        return []
    inside = (times[None, :] >= p[:, 0, None]) & (times[None, :] <= p[:, 1, None])  # (K, T)
    nearest = (times[None, :] - 0.5 * (p[:, 0, None] + p[:, 1, None])).abs().argmin(1)
    empty = ~inside.any(1)
    inside[empty, nearest[empty]] = True
    w = inside.to(vs.dtype)
    w = w / w.sum(1, keepdim=True)
    verb, noun = w @ vs, w @ ns  # (K, V), (K, N)
    k = min(top_k_pairs, verb.shape[1] * noun.shape[1])
    out = []
    for i in range(len(p)):
        tv = _descending(verb[i])[:k]
        tn = _descending(noun[i])[:k]
        pair = (verb[i, tv][:, None] * noun[i, tn][None, :]).reshape(-1)
        for j in _descending(pair)[:k].tolist():
            v, n = int(tv[j // len(tn)]), int(tn[j % len(tn)])
            out.append({"segment": [float(p[i, 0]), float(p[i, 1])], "score": float(p[i, 2] * pair[j]),
                        "label": f"{v},{n}", "verb": v, "noun": n})
    return out


# ------------------------------------------------------------------------------------------- JSON


def results_json(per_video: Mapping[str, List[dict]], *, external_data: Optional[dict] = None) -> dict:
    """The ActivityNet results file: ``{"version", "results", "external_data"}``.

    Every entry needs ``segment`` ``[s, e]`` (finite, ``s <= e``) and a finite ``score``; other keys
    (``label``, ``verb``, ``noun``) are kept. Values become plain JSON types.
    """
    results: Dict[str, List[dict]] = {}
    for video, entries in per_video.items():
        rows = []
        for j, entry in enumerate(entries):
            where = f"results[{video!r}][{j}]"
            if "segment" not in entry or "score" not in entry:
                raise ValueError(f"{where} needs 'segment' and 'score', got keys {sorted(entry)}")
            seg = [float(v) for v in entry["segment"]]
            score = float(entry["score"])
            if len(seg) != 2 or not all(math.isfinite(v) for v in seg) or seg[1] < seg[0]:
                raise ValueError(f"{where}: segment must be [start, end] with finite start <= end, "
                                 f"got {entry['segment']}")
            if not math.isfinite(score):
                raise ValueError(f"{where}: score must be finite, got {score}")
            row = {k: _plain(v) for k, v in entry.items()}
            row["segment"], row["score"] = seg, score
            rows.append(row)
        results[str(video)] = rows
    return {"version": "VERSION 1.3", "results": results,
            "external_data": dict(external_data) if external_data is not None else {"used": False, "details": ""}}


def _plain(v):
    if isinstance(v, Tensor):
        return v.tolist()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def _as_float(x, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a numeric tensor, got dtype {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())
