"""Epic-Kitchens verb + noun: one head over both class sets, a cross-entropy per head; at evaluation
verb, noun and action accuracy (an action is the (verb, noun) pair, scored by the product of the two
probabilities, so it is right when both argmaxes are)."""
from __future__ import annotations

import torch.nn.functional as F

from . import register_task
from .classification import Classification, ViewScores

__all__ = ["VerbNoun"]


@register_task
class VerbNoun(Classification):
    name = "verb_noun"

    def __init__(self, labels, cfg, options=None):
        if not labels.multi_head or len(labels.heads) != 2:
            raise ValueError(f"task verb_noun needs a label space with a verb and a noun head, got heads "
                             f"{labels.heads}; use an Epic-Kitchens annotation list (data.format=epic)")
        super(Classification, self).__init__(labels, cfg, options)  # no mixup: two label sets

    def num_outputs(self) -> int:
        return self.labels.num_classes

    def label_fits(self, label) -> bool:
        return self.labels.fits(label)

    def prepare(self, x, batch):
        return x, batch

    def loss(self, outputs, batch):
        y = self.labels_on(batch, outputs.device)
        nv = self.labels.sizes[0]
        ls = self.cfg.train.label_smoothing
        return (F.cross_entropy(outputs[:, :nv].float(), y[:, 0], label_smoothing=ls)
                + F.cross_entropy(outputs[:, nv:].float(), y[:, 1], label_smoothing=ls))

    def accumulator(self):
        return ViewScores(self.labels.sizes, heads=self.labels.heads)
