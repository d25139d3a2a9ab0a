"""The task interface: what a batch means to the loss and to the metrics. The training loop
(:class:`~tada.engine.trainer.Trainer`) and the evaluator (:func:`~tada.engine.evaluate.evaluate`) call
only these methods, so they know nothing about labels.

By default a task trains a video model (:func:`~tada.engine.build.build_model`) on the video datasets of
the data section (:func:`~tada.engine.build.build_dataset`), and a batch is the dict
:func:`tada.data.collate_views` makes (``video``, ``label``, ``index``, ``view``, ``valid``, ``replaced``);
a task may read any of it. ``outputs`` is what :meth:`Task.forward` returns for :meth:`Task.inputs` of the
batch (for classification ``(B, num_outputs())`` logits). A task on other inputs (e.g. localisation on
pre-extracted features) overrides the data and model hooks: :meth:`Task.build_dataset` (a classmethod,
called before the task exists, since the task is built from the datasets' label space),
:meth:`Task.collate`, :meth:`Task.inputs`, :meth:`Task.forward` and :meth:`Task.build_model`.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from ...data.labels import LabelSpace

__all__ = ["Task", "Accumulator"]


class Accumulator(Protocol):
    """Collects evaluation outputs batch by batch (``add``), across ranks (``gather``), then gives one
    result object (``result``) that the task's ``metrics`` / ``score`` / ``summary`` / ``write`` read."""

    def add(self, outputs: Tensor, batch: Dict[str, Any]) -> None: ...

    def gather(self) -> None: ...

    def result(self) -> Any: ...


class Task:
    """Subclass, set ``name`` (and ``Options``, a dataclass of the task's own ``task.kwargs``), register it
    with :func:`~tada.engine.tasks.register_task`, and implement ``loss`` and ``accumulator`` (and
    ``metrics`` / ``score`` / ``summary`` / ``write`` for what its evaluation reports)."""

    name: ClassVar[str] = ""
    Options: ClassVar[Optional[type]] = None

    def __init__(self, labels: LabelSpace, cfg, options=None):
        self.labels, self.cfg, self.options = labels, cfg, options

    # -- data and model -----------------------------------------------------------------------
    @classmethod
    def build_dataset(cls, cfg, split: str, *, train: Optional[bool] = None):
        """``(dataset, label space or parser)`` of ``split`` (train / val / test); default: the video clips
        of the data section."""
        from ..build import build_dataset

        return build_dataset(cfg, split, train=train)

    @staticmethod
    def collate(items):
        """The loaders' ``collate_fn`` (a plain function, so DataLoader workers can pickle it)."""
        from ...data.datasets import collate_views

        return collate_views(items)

    def inputs(self, batch: Dict[str, Any]) -> Tensor:
        """The model's input in a batch."""
        return batch["video"]

    def forward(self, model, x: Tensor):
        """The model's outputs for input ``x`` (what :meth:`loss` and the accumulator receive)."""
        return model(x)

    def eval_outputs(self, model, x: Tensor):
        """:meth:`forward` in evaluation, in float32 (autocast may have run it in bf16)."""
        return self.forward(model, x).float()

    def build_model(self, device=torch.device("cpu"), *, pretrained: bool = True):
        """The model the config names, with a head of :meth:`num_outputs`."""
        from ..build import build_model

        return build_model(self.cfg, self.num_outputs(), device, pretrained=pretrained)

    # -- the model ------------------------------------------------------------------------------
    def num_outputs(self) -> int:
        """Width of the model's head."""
        return self.cfg.model.num_classes or self.labels.num_classes

    def check_labels(self, samples: Sequence, split: str) -> None:
        """Refuse annotated labels outside the label space (called when the run is built)."""
        for s in samples:
            if split != "train" and s.label == -1:  # unlabelled test entries (SSV2 test, empty CSV labels)
                continue
            if not self.label_fits(s.label):
                space = list(self.labels.sizes) if self.labels.multi_head else self.num_outputs()
                raise ValueError(f"{split} sample {s.path} has label {s.label}, outside the {space} classes of "
                                 "the model; fix the annotation list, data.class_names or model.num_classes")

    def label_fits(self, label) -> bool:
        return self.labels.fits(label)

    # -- training -------------------------------------------------------------------------------
    def prepare(self, x: Tensor, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Any]]:
        """Batch-level training augmentation (e.g. mixup) on the input on its device; default: none."""
        return x, batch

    def loss(self, outputs: Tensor, batch: Dict[str, Any]) -> Tensor:
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------
    def accumulator(self) -> Accumulator:
        raise NotImplementedError

    def metrics(self, result) -> Dict[str, float]:
        """Numbers for the epoch log (``val_<key>``)."""
        return {}

    def score(self, result) -> float:
        """Higher is better: the epoch with the best score is kept as ``best.pt``."""
        return float("nan")

    def summary(self, result) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in self.metrics(result).items())

    def write(self, result, out, name: str = "test", history: Sequence[dict] = ()) -> Dict[str, str]:
        """Files for an evaluation result in folder ``out``; returns ``{what: path}``."""
        return {}

    @staticmethod
    def labels_on(batch: Dict[str, Any], device) -> Tensor:
        return batch["label"].to(device)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=1), dim=1).mean()
