"""Single-label classification: soft-target cross-entropy (label smoothing, mixup / cutmix), multi-view
top-1 / top-5 / mean class accuracy, per-class CSV, JSON summary and plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Sequence

from ...data import transforms as TF
from ..metrics import EvalResult, ViewAccumulator, write_per_class_csv
from . import register_task
from .base import Task, soft_cross_entropy

__all__ = ["Classification", "ViewScores"]


class ViewScores:
    """The multi-view accumulator of a classification head (or of several heads, ``split`` sizes)."""

    def __init__(self, num_classes, heads=None):
        self.sizes = num_classes if heads else None
        self.acc = ViewAccumulator(num_classes, heads=heads)

    def add(self, outputs, batch):
        labels = batch["label"]
        if self.sizes:
            outputs = tuple(outputs.split(list(self.sizes), dim=1))
            labels = tuple(labels[:, i] for i in range(len(self.sizes)))
        self.acc.add(outputs, labels, batch["index"], batch["view"], batch["valid"])

    def gather(self):
        self.acc.gather()

    def result(self) -> EvalResult:
        return self.acc.summarise(with_confusion=True)


@register_task
class Classification(Task):
    name = "classification"

    def __init__(self, labels, cfg, options=None):
        super().__init__(labels, cfg, options)
        t = cfg.train
        self.mixup = TF.build_mixup(t.mixup_alpha, t.cutmix_alpha, t.label_smoothing, self.num_outputs())

    def label_fits(self, label) -> bool:  # the head's width (model.num_classes may exceed the names)
        return not isinstance(label, (tuple, list)) and 0 <= int(label) < self.num_outputs()

    def prepare(self, x, batch):
        x, batch["target"] = self.mixup(x, self.labels_on(batch, x.device))
        return x, batch

    def loss(self, outputs, batch):
        return soft_cross_entropy(outputs, batch["target"])

    def accumulator(self):
        return ViewScores(self.num_outputs())

    def metrics(self, res: EvalResult) -> Dict[str, float]:
        return {"top1": res.top1, "top5": res.top5, "mean_class_acc": res.mean_class_acc}

    def score(self, res: EvalResult) -> float:
        return res.top1

    def summary(self, res: EvalResult) -> str:
        return res.summary()

    def class_names(self):
        return None if self.labels.multi_head else self.labels.class_names

    def write(self, res: EvalResult, out, name: str = "test", history: Sequence[dict] = ()) -> Dict[str, str]:
        out = Path(out)
        names = self.class_names()
        files = {"per_class_csv": str(write_per_class_csv(out / f"{name}_per_class.csv", res, names))}
        summary: Dict[str, Any] = {"top1": res.top1, "top5": res.top5, "mean_class_acc": res.mean_class_acc,
                                   "videos": res.num_videos, "views": res.num_views, "unreadable": len(res.invalid),
                                   **res.extra}
        (out / f"{name}_results.json").write_text(json.dumps(summary, indent=1))
        files["results_json"] = str(out / f"{name}_results.json")
        from ..plots import plot_run

        files.update(plot_run(out, list(history), res, names))
        return files
