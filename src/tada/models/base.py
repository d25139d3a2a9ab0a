"""The surface every video model shares: forward_features / forward_head / reset_classifier."""
from __future__ import annotations

import itertools
from typing import Dict, Set, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch import Tensor

from ..nn import TemporalAggregation
from ..nn.calibration import ROUTING_TYPES

__all__ = ["VideoClassifier", "mark_new_by_design"]


def mark_new_by_design(module: nn.Module) -> nn.Module:
    """Mark a module whose parameters a 2D / CLIP checkpoint cannot provide (a TAda branch).

    Routing functions and the zero-initialised second norm of T-Pool are recognised by type; use this
    for anything else a family adds (e.g. TAdaFormer's TAda branches).
    """
    module._tada_new_by_design = True
    return module


class _CheckpointedForward:
    """A block's forward run under ``torch.utils.checkpoint`` while training with autograd on."""

    def __init__(self, module: nn.Module):
        self.fn = type(module).forward
        self.module = module

    def __call__(self, *args, **kwargs):
        if self.module.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self.fn, self.module, *args, use_reentrant=False, **kwargs)
        return self.fn(self.module, *args, **kwargs)


class VideoClassifier(nn.Module):
    """Base of every model in the zoo. Input ``(B, 3, T, H, W)``.

    Subclasses build their backbone and call :meth:`_init_head`; they implement
    :meth:`forward_features` (last feature map, *before* temporal/spatial pooling) and, when the format
    of a foreign checkpoint needs conversion, :meth:`checkpoint_filter_fn`.

    Class attributes a subclass may set:
        frame_multiple: T must be a multiple of this (2 for tubelet stems that halve T).
    """

    frame_multiple: int = 1
    in_chans: int = 3
    grad_checkpoint_types: Tuple[type, ...] = ()  # the residual blocks activation checkpointing wraps

    # -- activation checkpointing ---------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block's activations in backward instead of storing them (less
        memory, ~1/3 more compute). BatchNorm running statistics are updated again by the recompute."""
        if not self.grad_checkpoint_types:
            raise ValueError(f"{type(self).__name__} does not support activation checkpointing")
        for m in self.modules():
            if isinstance(m, self.grad_checkpoint_types):
                if enable:
                    m.forward = _CheckpointedForward(m)
                elif "forward" in m.__dict__:
                    del m.forward

    # -- head ---------------------------------------------------------------------------------
    def _init_head(self, num_features: int, num_classes: int, drop_rate: float = 0.5, head_norm: nn.Module = None):
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head_norm = head_norm if head_norm is not None else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def head_keys(self) -> Set[str]:
        """State-dict keys of the classifier (re-initialised when a checkpoint's class count differs)."""
        return {f"head.{k}" for k in self.head.state_dict()}

    def reset_classifier(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.head = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def pool(self, feats: Tensor) -> Tensor:
        """Global average over (T, H, W) of a (B, C, T, H, W) feature map."""
        return feats.mean(dim=(2, 3, 4))

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_norm(self.pool(feats))
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    # -- forward ------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a video batch (B, {self.in_chans}, T, H, W), got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_chans} input channels at dim 1 of (B, C, T, H, W), "
                f"got shape {tuple(x.shape)}; a (B, T, C, H, W) clip needs x.permute(0, 2, 1, 3, 4)"
            )
        t = x.shape[2]
        if t < self.frame_multiple or t % self.frame_multiple:
            raise ValueError(
                f"{type(self).__name__} needs a frame count that is a positive multiple of "
                f"{self.frame_multiple} (its stem halves T), got T={t}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # -- weights ------------------------------------------------------------------------------
    def checkpoint_filter_fn(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Turn a foreign checkpoint (already unwrapped to a flat state dict) into this model's keys.

        The default accepts this project's own checkpoints only; families override it to detect their
        source formats and apply that format's rule set (:func:`tada.models.convert.apply_rules`),
        raising ``ValueError`` for a format they do not know.
        """
        return state_dict

    def new_parameter_names(self) -> Set[str]:
        """Parameters and buffers that are new by design (absent from any 2D / CLIP checkpoint):
        routing functions, T-Pool's second norm, and modules marked with :func:`mark_new_by_design`."""
        names: Set[str] = set()

        def add(prefix: str, module: nn.Module):
            for n, _ in itertools.chain(module.named_parameters(), module.named_buffers()):
                names.add(f"{prefix}.{n}" if prefix else n)

        for name, m in self.named_modules():
            if isinstance(m, ROUTING_TYPES) or getattr(m, "_tada_new_by_design", False):
                add(name, m)
            elif isinstance(m, TemporalAggregation) and m.norm2 is not None:
                add(f"{name}.norm2" if name else "norm2", m.norm2)
        return names
