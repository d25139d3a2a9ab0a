"""Temporal action localisation: BMN on pre-extracted clip features (SPEC §8).

The task reads features (``tada extract`` output, ActionFormer ``.npz``, MMAction2 ``.csv``) and
untrimmed-video annotations (ActivityNet / HACS JSON, Epic-Kitchens-100 CSV), trains
:class:`~tada.models.bmn.BMN` with its TEM + PEM losses, and evaluates by post-processing the
boundary and confidence maps into proposals (candidates, Soft-NMS), classifying them, and computing
the ActivityNet-protocol mAP and AR@AN (:mod:`tada.engine.detection_eval`).

Config (``configs/localization/``)::

    task.name: localization
    data.train_list / val_list / test_list:  annotation files (ActivityNet-style JSON, or EK100 CSVs);
        the subset of each split is task.kwargs.subsets[split] (JSON files hold all subsets)
    data.root:      folder the relative paths below are resolved against
    data.batch_size: 16 (BMN)
    model.name: bmn, model.kwargs: BMN's arguments (in_channels defaults to the features' width)
    task.kwargs:    features (folder), protocol (rescale | window), temporal_scale, window, window_stride,
                    classify (clips | video | ek100 | none), Soft-NMS settings, tiou thresholds

**Protocols.** ``rescale`` (ActivityNet, HACS, the synthetic benchmark): each video's features are
interpolated to ``temporal_scale`` bins covering the whole video; one window per video.
``window`` (Epic-Kitchens): windows of ``window`` feature rows every ``window_stride`` rows; each
window's proposals are mapped to seconds, the windows of a video are concatenated and Soft-NMS runs
over the video (so a proposal found by two overlapping windows is kept once).

**Classification of proposals** (``classify``): ``clips`` -- the clip classifier's softmax scores
(``tada extract --scores``) averaged over the clips whose centres lie inside the proposal (the nearest
clip when none does); each proposal gets its ``top_k_classes`` classes, score = proposal score x class
score. ``video`` -- HACS / ActivityNet's one action per video: the scores averaged over the whole
video. ``ek100`` -- verb and noun scores pooled like ``clips``, top (verb, noun) pairs.
``none`` -- class-agnostic proposals only (AR@AN; mAP is not computed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ...data.labels import LabelSpace
from . import register_task
from .base import Task

__all__ = ["Localization", "LocalizationOptions", "LocalizationResult"]

log = logging.getLogger("tada.localization")

PROTOCOLS = ("rescale", "window")
CLASSIFY = ("clips", "video", "ek100", "none")


@dataclasses.dataclass
class LocalizationOptions:
    features: str = ""  # folder of per-video features
    feature_format: str = "auto"  # auto | tada | npy | actionformer | mmaction
    protocol: str = "rescale"
    temporal_scale: int = 100
    window: int = 200  # protocol window: rows per window
    window_stride: int = 100
    min_overlap: float = 0.999  # window protocol: share of a segment (or of the window) a window must hold
    subsets: Dict[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "training", "val": "validation", "test": "validation"})
    classify: str = "clips"
    top_k_classes: int = 2
    peak_threshold: float = 0.5  # candidate boundaries: local maxima or > this x the maximum
    nms_alpha: float = 0.4
    nms_low: float = 0.5
    nms_high: float = 0.9
    max_proposals: int = 100
    tiou: Optional[List[float]] = None  # default: 0.5:0.05:0.95 (ek100: 0.1:0.1:0.5)
    plot_videos: int = 4


def _resolve(root: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() or not root else Path(root) / p


def _check_options(o: LocalizationOptions) -> None:
    if not o.features:
        raise ValueError("task.kwargs.features is not set: give the folder of extracted features "
                         "(tada extract --out DIR)")
    if o.protocol not in PROTOCOLS:
        raise ValueError(f"task.kwargs.protocol={o.protocol!r}; expected one of {PROTOCOLS}")
    if o.classify not in CLASSIFY:
        raise ValueError(f"task.kwargs.classify={o.classify!r}; expected one of {CLASSIFY}")
    for key in ("temporal_scale", "window", "window_stride", "max_proposals", "top_k_classes"):
        if getattr(o, key) < 1:
            raise ValueError(f"task.kwargs.{key} must be >= 1, got {getattr(o, key)}")
    missing = [s for s in ("train", "val", "test") if s not in o.subsets]
    if missing:
        raise ValueError(f"task.kwargs.subsets has no subset for {missing}; e.g. "
                         "{train: training, val: validation, test: validation}")


def _options(cfg) -> LocalizationOptions:
    from ..config import from_dict

    o = from_dict(LocalizationOptions, cfg.task.kwargs, "task.kwargs")
    _check_options(o)
    return o


def load_untrimmed(path: Path, subset: Optional[str]):
    """Videos of an annotation file: ActivityNet-style JSON, or an Epic-Kitchens-100 CSV."""
    from ...data import segments as S

    if not path.exists():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    if path.suffix.lower() == ".csv":
        info = path.parent / "EPIC_100_video_info.csv"
        return S.load_ek100_segments(path, video_info=info if info.exists() else None, subset=subset or "validation")
    return S.load_activitynet_json(path, subset=subset)


@dataclasses.dataclass
class LocalizationResult:
    proposals: Dict[str, List[dict]]  # class-agnostic, seconds
    detections: Dict[str, List[dict]]  # classified (empty when classify=none)
    metrics: Dict[str, float]
    detection: Any = None  # DetectionResult (or a dict of them for ek100)
    proposal: Any = None  # ProposalResult
    invalid: List[str] = dataclasses.field(default_factory=list)


class _MapAccumulator:
    """Post-processes each window's maps as it arrives (candidates + Soft-NMS in window units, mapped to
    seconds), keeps the proposals per video, gathers them across ranks, and classifies and evaluates
    them in :meth:`result`."""

    def __init__(self, task: "Localization"):
        self.task = task
        self.per_video: Dict[str, Dict[Any, list]] = {}  # video -> {window key: proposals (K, 3) seconds}

    def add(self, outputs, batch):
        from ..proposals import bmn_candidates, soft_nms

        o = self.task.options
        conf, start, end = (outputs[k].detach().float().cpu() for k in ("confidence", "start", "end"))
        windows = batch["window"]
        valid = batch.get("valid")
        for i, vid in enumerate(batch["video_id"]):
            cand = bmn_candidates(start[i], end[i], conf[i], peak_threshold=o.peak_threshold)
            if valid is not None:  # proposals must end inside the valid rows of a padded window
                cand = cand[cand[:, 1] <= float(valid[i]) / start.shape[-1] + 1e-9]
            cand = soft_nms(cand[:, :3], alpha=o.nms_alpha, low_threshold=o.nms_low, high_threshold=o.nms_high,
                            top_k=o.max_proposals)
            w0, w1 = (float(v) for v in windows[i])
            sec = cand.clone()
            sec[:, :2] = w0 + cand[:, :2] * (w1 - w0)
            self.per_video.setdefault(vid, {})[(w0, w1)] = sec.numpy()

    def gather(self):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.per_video)
        merged: Dict[str, Dict[Any, list]] = {}
        for part in parts:
            for vid, wins in part.items():
                for key, val in wins.items():
                    merged.setdefault(vid, {}).setdefault(key, val)
        self.per_video = merged

    def result(self) -> LocalizationResult:
        return self.task.finish(self.per_video)


@register_task
class Localization(Task):
    """BMN proposals + classification + ActivityNet-protocol mAP on pre-extracted features."""

    name = "localization"
    Options = LocalizationOptions

    def __init__(self, labels: LabelSpace, cfg, options=None):
        super().__init__(labels, cfg, options if options is not None else _options(cfg))
        _check_options(self.options)
        self._gt = None
        self._store = None

    # -- data ---------------------------------------------------------------------------------
    @classmethod
    def build_dataset(cls, cfg, split: str, *, train: Optional[bool] = None):
        from ...data.features import FeatureStore, RescaledFeatureDataset, SlidingWindowFeatureDataset
        from ...data.segments import class_names

        o = _options(cfg)
        lst = {"train": cfg.data.train_list, "val": cfg.data.val_list, "test": cfg.data.test_list}[split]
        if lst is None:
            raise ValueError(f"data.{split}_list is not set in the config (the annotation file of that split)")
        videos = load_untrimmed(_resolve(cfg.data.root, lst), o.subsets[split])
        store = FeatureStore(_resolve(cfg.data.root, o.features), fmt=o.feature_format)
        missing = [v for v in videos if v not in store]
        if missing:
            log.warning("%d of %d %s videos have no features in %s and are left out (first: %s)", len(missing),
                        len(videos), split, o.features, missing[0])
        kept = [v for k, v in videos.items() if k in store]
        if not kept:
            raise ValueError(f"no {split} video of {lst} (subset {o.subsets[split]!r}) has features in {o.features}")
        names = _label_names(cfg, o, split)
        if o.protocol == "rescale":
            ds = RescaledFeatureDataset(kept, store, temporal_scale=o.temporal_scale, class_names=names)
        else:
            is_train = split == "train" if train is None else train
            ds = SlidingWindowFeatureDataset(kept, store, window=o.window, stride=o.window_stride,
                                             min_overlap=o.min_overlap, class_names=names, train=is_train)
        return ds, LabelSpace.single(names if names is not None else class_names(videos))

    @staticmethod
    def collate(items):
        from ...data.features import collate_localization

        return collate_localization(items)

    def inputs(self, batch):
        return batch["features"]

    def forward(self, model, x):
        return model(x)

    def eval_outputs(self, model, x):
        return {k: v.float() for k, v in model(x).items()}

    def check_labels(self, samples: Sequence, split: str) -> None:  # segment labels are checked by the parsers
        return None

    def num_outputs(self) -> int:
        return self.labels.num_classes

    def store(self):
        if self._store is None:
            from ...data.features import FeatureStore

            self._store = FeatureStore(_resolve(self.cfg.data.root, self.options.features),
                                       fmt=self.options.feature_format)
        return self._store

    def build_model(self, device=torch.device("cpu"), *, pretrained: bool = True):
        from ...models.bmn import BMN

        m = self.cfg.model
        if m.name != "bmn":
            raise ValueError(f"the localization task trains model.name=bmn, got {m.name!r}")
        kwargs = dict(m.kwargs)
        if "in_channels" not in kwargs:
            kwargs["in_channels"] = self._feature_dim()
        kwargs.setdefault("temporal_scale", self.options.temporal_scale if self.options.protocol == "rescale"
                          else self.options.window)
        try:
            model = BMN(**kwargs)
        except TypeError as e:
            raise ValueError(f"model.kwargs {kwargs} do not fit BMN: {e}") from e
        if m.pretrained:
            from ..build import load_weights

            load_weights(model, m.pretrained, name="bmn")
        return model.to(device)

    def _feature_dim(self) -> int:
        gt = self.ground_truth()
        store = self.store()
        for vid, video in gt.items():
            if vid in store:
                feats, _ = store.load(vid, video.duration)
                return int(feats.shape[1])
        raise ValueError(f"no annotated video has features in {self.options.features}; cannot size BMN's input")

    # -- training -----------------------------------------------------------------------------
    def loss(self, outputs, batch):
        from ...models.bmn import bmn_loss, bmn_targets

        scale = outputs["start"].shape[-1]
        max_duration = outputs["confidence"].shape[-2]
        targets = bmn_targets(batch["segments"], scale, max_duration)
        targets = {k: v.to(outputs["start"].device) for k, v in targets.items()}
        total, _ = bmn_loss({k: v.float() for k, v in outputs.items()}, targets)
        return total

    # -- evaluation ---------------------------------------------------------------------------
    def ground_truth(self):
        """Every annotated video of the config's annotation files (all splits), by id."""
        if self._gt is None:
            gt = {}
            d = self.cfg.data
            for split, lst in (("train", d.train_list), ("val", d.val_list), ("test", d.test_list)):
                if lst:
                    for vid, v in load_untrimmed(_resolve(d.root, lst), self.options.subsets[split]).items():
                        gt.setdefault(vid, v)
            self._gt = gt
        return self._gt

    def accumulator(self):
        return _MapAccumulator(self)

    def _tiou(self):
        from ..detection_eval import ANET_TIOU, EK100_TIOU

        if self.options.tiou:
            return np.asarray(self.options.tiou, dtype=np.float64)
        return EK100_TIOU if self.options.classify == "ek100" else ANET_TIOU

    def finish(self, per_video: Dict[str, Dict[Any, Any]]) -> LocalizationResult:
        """Per video: its windows' proposals (seconds) merged by Soft-NMS, classified, evaluated."""
        from ..proposals import soft_nms

        o = self.options
        gt_all = self.ground_truth()
        proposals: Dict[str, List[dict]] = {}
        detections: Dict[str, List[dict]] = {}
        for vid in sorted(per_video):
            wins = per_video[vid]
            props = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 3) for p in wins.values()])
            props = torch.from_numpy(props)
            if len(wins) > 1:
                props = soft_nms(props, alpha=o.nms_alpha, low_threshold=o.nms_low, high_threshold=o.nms_high,
                                 top_k=o.max_proposals)
            duration = gt_all[vid].duration if vid in gt_all else float(props[:, 1].max()) if len(props) else 0.0
            props[:, 0].clamp_(0, duration)
            props[:, 1].clamp_(0, duration)
            props = props[props[:, 1] > props[:, 0]]
            proposals[vid] = [{"segment": [float(s), float(e)], "score": float(c)} for s, e, c in props.tolist()]
            if o.classify != "none":
                detections[vid] = self._classify(vid, props)
        videos = {vid: gt_all[vid] for vid in per_video if vid in gt_all}
        thr = self._tiou()
        # predicted classes that a small evaluation subset lacks are ignored by the protocol; said once by
        # `tada eval-detection`, not at every validation epoch
        quiet = logging.getLogger("tada.engine.detection_eval")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return self._evaluate(proposals, detections, videos, thr)
        finally:
            quiet.setLevel(level)

    def _evaluate(self, proposals, detections, videos, thr) -> LocalizationResult:
        from ..detection_eval import evaluate_detection, evaluate_ek100, evaluate_proposals

        o = self.options
        prop_res = evaluate_proposals(videos, proposals, max_avg_nr_proposals=o.max_proposals, subset=None)
        metrics = {f"ar@{k}": float(v) for k, v in prop_res.ar_at.items()}
        metrics["auc"] = float(prop_res.auc)
        det = None
        if o.classify == "ek100":
            det = evaluate_ek100(videos, detections, tiou_thresholds=thr, subset=None)
            for head, r in det.items():
                metrics[f"{head}_map"] = float(r.average_map)
            metrics["map"] = metrics.get("action_map", float("nan"))
        elif o.classify != "none":
            det = evaluate_detection(videos, detections, thr, subset=None)
            metrics["map"] = float(det.average_map)
            for t, v in zip(det.tiou_thresholds, det.map_per_tiou):
                metrics[f"map@{float(t):.2f}"] = float(v)
        return LocalizationResult(proposals, detections, metrics, det, prop_res)

    def _scores(self, vid: str):
        """``(clip scores (T, K), clip centres (T,) seconds, class names)`` of a video, or None. The
        names are the extraction manifest's (``tada extract --scores``); files without a manifest
        (ActionFormer ``scores``) must have one column per class of the annotations, in sorted order."""
        store = self.store()
        scores = store.load_scores(vid)
        if scores is None:
            return None
        duration = self.ground_truth()[vid].duration
        names = store.score_names
        if names is None:
            names = list(self.labels.class_names)
            if scores.shape[1] != len(names):
                raise ValueError(f"the scores of {vid} in {store.root} have {scores.shape[1]} columns but the "
                                 f"annotations have {len(names)} classes, and no manifest names the columns")
        return scores, store.times(vid, duration), names

    def _classify(self, vid: str, props: torch.Tensor) -> List[dict]:
        from ..proposals import classify_by_clip_scores

        o = self.options
        got = self._scores(vid)
        if got is None:
            raise ValueError(f"task.kwargs.classify={o.classify!r} needs the clip classifier's scores beside the "
                             f"features (tada extract --scores); {vid} has none. Use classify=none for proposals only")
        scores, times, names = got
        if o.classify == "ek100":
            verbs = [n for n in names if n.startswith("verb:")]
            nv = len(verbs)
            return classify_by_clip_scores(props, times, scores[:, :nv], scores[:, nv:], top_k_pairs=o.top_k_classes)
        scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
        times_t = torch.as_tensor(np.asarray(times), dtype=torch.float32)
        out = []
        for s, e, c in props.tolist():
            if o.classify == "video":
                pooled = scores.mean(0)
            else:
                inside = (times_t >= s) & (times_t <= e)
                pooled = scores[inside].mean(0) if bool(inside.any()) else \
                    scores[int(torch.argmin((times_t - 0.5 * (s + e)).abs()))]
            top = pooled.topk(min(o.top_k_classes, pooled.numel()))
            for p, k in zip(top.values.tolist(), top.indices.tolist()):
                out.append({"segment": [s, e], "label": names[k], "score": c * p})
        return out

    def metrics(self, res: LocalizationResult) -> Dict[str, float]:
        return dict(res.metrics)

    def score(self, res: LocalizationResult) -> float:
        return res.metrics.get("map", res.metrics.get("auc", float("nan")))

    def summary(self, res: LocalizationResult) -> str:
        m = res.metrics
        keys = [k for k in ("map", "map@0.50", "map@0.75", "map@0.95", "verb_map", "noun_map", "ar@100", "auc")
                if k in m]
        return ", ".join(f"{k} {100 * m[k]:.2f}" for k in keys) + f" ({len(res.proposals)} videos)"

    def write(self, res: LocalizationResult, out, name: str = "test", history: Sequence[dict] = ()) -> Dict[str, str]:
        from ..plots import plot_curves, plot_timeline
        from ..proposals import results_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files: Dict[str, str] = {}
        path = out / f"{name}_proposals.json"
        path.write_text(json.dumps(results_json(res.proposals)))
        files["proposals_json"] = str(path)
        if res.detections:
            path = out / f"{name}_predictions.json"
            path.write_text(json.dumps(results_json(res.detections)))
            files["predictions_json"] = str(path)
        summary: Dict[str, Any] = {"metrics": res.metrics, "videos": len(res.proposals)}
        if res.detection is not None:
            det = res.detection
            summary["detection"] = {k: v.to_dict() for k, v in det.items()} if isinstance(det, dict) else det.to_dict()
        if res.proposal is not None:
            summary["proposals"] = res.proposal.to_dict()
        path = out / f"{name}_detection.json"
        path.write_text(json.dumps(summary, indent=1))
        files["results_json"] = str(path)
        path = out / f"{name}_detection.md"
        path.write_text(_markdown_table(res))
        files["table_md"] = str(path)
        gt = self.ground_truth()
        shown = [v for v in sorted(res.proposals) if v in gt][: self.options.plot_videos]
        if shown:
            files["timeline_png"] = plot_timeline(out / f"{name}_timeline.png", [gt[v] for v in shown],
                                                  [res.detections.get(v) or res.proposals[v] for v in shown])
        curves = plot_curves(out, list(history)) if history else None
        if curves:
            files["curves_png"] = curves
        return files


def _label_names(cfg, o: LocalizationOptions, split: str) -> Optional[List[str]]:
    """Class names shared by every split: those of all annotation files of the config, sorted."""
    from ...data.segments import class_names

    names = set()
    d = cfg.data
    for s, lst in (("train", d.train_list), ("val", d.val_list), ("test", d.test_list)):
        if lst:
            names.update(class_names(load_untrimmed(_resolve(d.root, lst), o.subsets[s])))
    return sorted(names) if names else None


def _markdown_table(res: LocalizationResult) -> str:
    m = res.metrics
    lines = ["| metric | value |", "|---|---|"]
    for k, v in m.items():
        lines.append(f"| {k} | {100 * v:.2f} |")
    return "\n".join(lines) + "\n"
