"""Small layers shared by the model families."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from torch import Tensor

__all__ = ["drop_path", "DropPath"]


def drop_path(x: Tensor, p: float, training: bool, batch: Optional[int] = None) -> Tensor:
    """Stochastic depth with one decision per *video*; survivors are scaled by ``1 / (1 - p)``.

    ``x`` is ``(B, ...)`` (``batch=None``), or ``(B * k, ...)`` with the ``k`` rows of a video adjacent
    (row ``b * k + j``; e.g. the frames of ViT tokens) when ``batch=B`` is given: all frames, positions
    and channels of a video are kept or dropped together.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    b = x.shape[0] if batch is None else batch
    mask = x.new_empty(b).bernoulli_(keep).div_(keep)
    if batch is not None:
        mask = mask.repeat_interleave(x.shape[0] // batch)
    return x * mask.view(-1, *([1] * (x.dim() - 1)))


class DropPath(nn.Module):
    """:func:`drop_path` as a module: ``forward(x, batch=None)``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor, batch: Optional[int] = None) -> Tensor:
        return drop_path(x, self.p, self.training, batch)

    def extra_repr(self) -> str:
        return f"p={self.p:.3g}"
