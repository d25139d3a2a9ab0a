"""Multi-view evaluation: per-view scores -> per-video predictions -> accuracy tables.

Each test view (temporal clip x spatial crop) contributes its softmax scores to its video; the video's
score is the sum over its views (SPEC §4). Views are keyed by ``(sample index, view id)`` so that
results gathered from several processes, including the samples a distributed sampler repeats to pad
the last batch, are counted once. Videos whose files could not be read are reported, not scored.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ViewAccumulator", "EvalResult", "topk_accuracy", "write_per_class_csv"]


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Top-k accuracy in percent of ``scores`` (N, C) against ``labels`` (N,)."""
    out = {}
    if scores.shape[0] == 0:
        return {k: float("nan") for k in ks}
    for k in ks:
        k_eff = min(k, scores.shape[1])
        top = scores.topk(k_eff, dim=1).indices
        out[k] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return out


@dataclass
class EvalResult:
    top1: float
    top5: float
    mean_class_acc: float
    per_class_acc: List[float]
    num_videos: int
    num_views: int
    invalid: List[int] = field(default_factory=list)  # sample indices that could not be read
    extra: Dict[str, float] = field(default_factory=dict)  # e.g. verb/noun/action for EK100
    confusion: Optional[Tensor] = None

    def summary(self) -> str:
        s = (f"top-1 {self.top1:.2f}  top-5 {self.top5:.2f}  mean class acc {self.mean_class_acc:.2f}  "
             f"({self.num_videos} videos, {self.num_views} views")
        s += f", {len(self.invalid)} unreadable and excluded)" if self.invalid else ")"
        for k, v in self.extra.items():
            s += f"  {k} {v:.2f}"
        return s


class ViewAccumulator:
    """Collects per-view softmax scores keyed by ``(sample index, view)``; a repeated key is ignored.

    For single-label data ``labels`` are ints; for Epic-Kitchens pass ``heads=("verb", "noun")`` and
    logits/labels as pairs, and ``summarise`` adds verb, noun and action accuracy (the action of a
    video is right when both its verb and its noun are).
    """

    def __init__(self, num_classes, heads: Optional[Tuple[str, ...]] = None):
        self.heads = heads
        self.num_classes = num_classes
        self._views: Dict[Tuple[int, object], Tuple[object, object]] = {}
        self._invalid: set = set()

    def __len__(self) -> int:
        return len(self._views)

    def add(self, logits, labels, indices: Iterable[int], views: Iterable, valid: Optional[Iterable[bool]] = None):
        """``logits``: (B, C) (or a tuple of them, one per head); ``labels``: (B,) (or a tuple);
        ``indices``: the sample index of each row; ``views``: a view id per row (e.g. (clip, crop));
        ``valid``: False for rows whose video could not be read (reported, not scored)."""
        multi = isinstance(logits, (tuple, list))
        if multi:
            probs = [torch.softmax(x.detach().float(), 1).cpu() for x in logits]
        else:
            probs = torch.softmax(logits.detach().float(), 1).cpu()
        idx = [int(i) for i in indices]
        valid = [bool(v) for v in valid] if valid is not None else [True] * len(idx)
        for row, (i, v, ok) in enumerate(zip(idx, views, valid)):
            if not ok:
                self._invalid.add(i)
                continue
            key = (i, _view_key(v))
            if key in self._views:  # a padded repeat from a distributed sampler
                continue
            p = [q[row] for q in probs] if multi else probs[row]
            lab = tuple(int(lb[row]) for lb in labels) if multi else int(labels[row])
            self._views[key] = (p, lab)

    def gather(self) -> None:
        """All-gather the views of every rank (a no-op outside torch.distributed); a view that several
        ranks saw (the sampler's padding) counts once."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, {"views": self._views, "invalid": self._invalid})
        self._views, self._invalid = {}, set()
        for part in parts:
            for key, val in part["views"].items():
                self._views.setdefault(key, val)
            self._invalid |= part["invalid"]

    def _per_video(self):
        sums: Dict[int, object] = {}
        labels: Dict[int, object] = {}
        for (i, _), (p, lab) in sorted(self._views.items(), key=lambda kv: str(kv[0])):
            if i in sums:
                sums[i] = [a + b for a, b in zip(sums[i], p)] if isinstance(p, list) else sums[i] + p
            else:
                sums[i], labels[i] = p, lab
        return sums, labels

    # -- results -------------------------------------------------------------------------------
    def summarise(self, with_confusion: bool = False) -> EvalResult:
        sums, labs = self._per_video()
        order = sorted(sums)
        invalid = sorted(self._invalid - set(order))
        if self.heads is None:
            scores = torch.stack([sums[i] for i in order]) if order else torch.zeros(0, self.num_classes)
            labels = torch.tensor([labs[i] for i in order], dtype=torch.long)
            return self._single(scores, labels, len(self._views), invalid, with_confusion)
        # verb / noun heads
        sv = torch.stack([sums[i][0] for i in order])
        sn = torch.stack([sums[i][1] for i in order])
        lv = torch.tensor([labs[i][0] for i in order])
        ln = torch.tensor([labs[i][1] for i in order])
        res = self._single(sv, lv, len(self._views), invalid, with_confusion)
        nacc = topk_accuracy(sn, ln)
        # the action score of (v, n) is p(v) * p(n); its argmax is the pair of the two argmaxes
        action = (sv.argmax(1) == lv) & (sn.argmax(1) == ln)
        res.extra = {
            f"{self.heads[0]}_top1": res.top1, f"{self.heads[0]}_top5": res.top5,
            f"{self.heads[1]}_top1": nacc[1], f"{self.heads[1]}_top5": nacc[5],
            "action_top1": 100.0 * action.float().mean().item(),
        }
        return res

    def _single(self, scores, labels, num_views, invalid, with_confusion) -> EvalResult:
        n_cls = scores.shape[1]
        acc = topk_accuracy(scores, labels)
        pred = scores.argmax(1) if scores.shape[0] else torch.zeros(0, dtype=torch.long)
        confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
        confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
        counts = confusion.sum(1)
        per_class = [100.0 * confusion[c, c].item() / counts[c].item() if counts[c] else float("nan")
                     for c in range(n_cls)]
        present = [a for a, n in zip(per_class, counts.tolist()) if n]
        mean_cls = sum(present) / len(present) if present else float("nan")
        return EvalResult(acc[1], acc[5], mean_cls, per_class, scores.shape[0], num_views, invalid,
                          confusion=confusion if with_confusion else None)


def _view_key(v):
    if isinstance(v, Tensor):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return v


def write_per_class_csv(path, result: EvalResult, class_names: Optional[Sequence[str]] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class_name", "videos", "accuracy"])
        counts = result.confusion.sum(1).tolist() if result.confusion is not None else [None] * len(result.per_class_acc)
        for c, acc in enumerate(result.per_class_acc):
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            w.writerow([c, name, counts[c], f"{acc:.4f}"])
    return path
