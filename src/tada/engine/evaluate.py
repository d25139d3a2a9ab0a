"""The one evaluator: :func:`run_model` runs a model over a loader (eval mode, no gradients, autocast)
and hands every batch's outputs on; :func:`evaluate` hands them to the task's accumulator and gathers
the results across ranks. ``tada train`` (validation), ``tada test`` and ``tada extract`` (pooled
features instead of logits) all run their models through it."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..data.labels import LabelSpace
from .distributed import collective

__all__ = ["evaluate", "run_model"]

log = logging.getLogger("tada.eval")


def run_model(model: nn.Module, loader, on_batch: Callable, *, device, autocast: Callable = nullcontext,
              forward: Optional[Callable] = None, inputs: Optional[Callable] = None, progress: bool = False,
              desc: str = "eval") -> None:
    """``on_batch(outputs, batch)`` for every batch of ``loader``, in eval mode without gradients (the
    model's mode is restored afterwards). ``inputs(batch)`` gives the model's input (default:
    ``batch["video"]``), or None to skip the model for that batch (``on_batch(None, batch)``);
    ``forward(model, x)`` replaces ``model(x).float()`` (e.g. pooled features)."""
    was = model.training
    model.eval()
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for batch in it:
                x = inputs(batch) if inputs is not None else batch["video"]
                if x is None:
                    on_batch(None, batch)
                    continue
                x = x.to(device, non_blocking=True)
                with autocast():
                    out = forward(model, x) if forward is not None else model(x).float()
                on_batch(out, batch)
    finally:
        model.train(was)


def evaluate(model: nn.Module, loader, task, *, device, autocast: Callable = nullcontext, progress: bool = False):
    """The task's evaluation result of ``model`` on ``loader`` (all ranks' views gathered)."""
    acc = task.accumulator()
    run_model(model, loader, acc.add, device=device, autocast=autocast, progress=progress, inputs=task.inputs,
              forward=task.eval_outputs)
    with collective("gathering evaluation results"):
        acc.gather()
    res = acc.result()
    invalid = getattr(res, "invalid", None)
    if invalid:
        log.warning("%d videos could not be read and were excluded from the evaluation", len(invalid))
    return res


def test_checkpoint(cfg, checkpoint, *, ema: bool = False, progress: bool = False):
    """``tada test``: multi-view evaluation of a training checkpoint on ``data.test_list`` and the task's
    report files in ``train.output_dir``; builds only the test set, the task and the model.
    Returns ``(task, result, {what: path})``."""
    from pathlib import Path

    from .build import autocast_for, build_loader, load_weights
    from .distributed import init_distributed
    from .tasks import build_task, task_class

    if not cfg.data.test_list:
        raise ValueError("data.test_list is not set (give it in the config or as data.test_list=PATH)")
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout)
    ds, labels = task_class(cfg).build_dataset(cfg, "test")
    task = build_task(cfg, LabelSpace.from_parser(labels))
    task.check_labels(getattr(ds, "samples", ()), "test")
    if hasattr(task, "build_model_for_state"):  # the architecture read from the checkpoint (no source files)
        from .checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint)
        key = "model_ema_state" if ema else "model_state"
        if key not in state:
            raise ValueError(f"{checkpoint} has no {key!r}")
        model = task.build_model_for_state(state[key], dist.device)
    else:
        model = task.build_model(dist.device, pretrained=False)
        load_weights(model, checkpoint, ema=ema, name=cfg.model.name)
    loader = build_loader(cfg, ds, train=False, rank=dist.rank, world_size=dist.world_size, device=dist.device,
                          collate_fn=task.collate)
    res = evaluate(model, loader, task, device=dist.device, autocast=autocast_for(cfg, dist.device),
                   progress=progress and dist.is_main)
    files = {}
    if dist.is_main:
        out = Path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = task.write(res, out, "test")
    return task, res, files
