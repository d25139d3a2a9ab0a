"""From a config to the parts of a run: datasets with their label space, the task, the model, loaders,
autocast. Building knows nothing of the loop, so ``tada test``, ``tada predict`` and ``tada extract``
build only what they need and never construct a :class:`~tada.engine.trainer.Trainer`."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..data import datasets as D
from ..data import transforms as TF
from ..data.labels import LabelSpace
from ..models import create_model
from .checkpoint import load_checkpoint
from .config import Config, from_dict

__all__ = ["build_dataset", "test_transforms", "build_model", "build_loader", "autocast_for", "load_weights",
           "labels_of_checkpoint", "load_for_inference"]


def _norm_stats(name: str):
    return (TF.CLIP_MEAN, TF.CLIP_STD) if name == "clip" else (TF.IMAGENET_MEAN, TF.IMAGENET_STD)


def _resolve(root: str, path: Optional[str]) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(root) / p


def test_transforms(d) -> list:
    """One test pipeline per spatial crop index of the data config ``d`` (a :class:`DataConfig`)."""
    mean, std = _norm_stats(d.normalize)
    return [TF.build_test_transform(short_side=d.test_short_side, crop_size=d.test_crop_size,
                                    num_crops=d.test_crops, crop_index=c, mean=mean, std=std)
            for c in range(d.test_crops)]


def build_dataset(cfg: Config, split: str, *, train: Optional[bool] = None) -> Tuple[D.VideoClipDataset, LabelSpace]:
    """``(dataset, label space)`` for ``split`` in train / val / test, from the config's data section."""
    d = cfg.data
    lst = {"train": d.train_list, "val": d.val_list, "test": d.test_list}[split]
    if lst is None:
        raise ValueError(f"data.{split}_list is not set in the config")
    path = _resolve(d.root, lst)
    if not path.exists():
        raise FileNotFoundError(f"data.{split}_list: {path} does not exist")
    kwargs: Dict[str, Any] = {}
    if d.class_names and d.format in ("kinetics", "csv", "kinetics_csv"):
        kwargs["class_names"] = str(_resolve(d.root, d.class_names))
    if d.format == "hmdb51":  # one folder of split files holds both subsets: val / test read the test videos
        kwargs["subset"] = "train" if split == "train" else "test"
    samples, labels = D.load_annotations(path, d.format, root=d.root or None, **kwargs)
    if d.flip_label_map not in (None, "ssv2"):
        raise ValueError(f"data.flip_label_map must be null or 'ssv2', got {d.flip_label_map!r}")
    if d.flip_label_map == "ssv2":
        labels = labels.with_flip_pairs(TF.SSV2_FLIP_MAP)
    is_train = (split == "train") if train is None else train
    mean, std = _norm_stats(d.normalize)
    if is_train:
        transform = TF.build_train_transform(
            crop_size=d.crop_size, scale=d.train_scale, short_side_range=d.short_side_range, flip=d.flip,
            flip_label_map=labels.flip_map() or None, rand_augment=d.rand_augment, grayscale_p=d.grayscale_p,
            random_erasing_p=d.random_erasing_p, mean=mean, std=std)
        clips, crops = 1, 1
    else:
        clips, crops = d.test_clips, d.test_crops
        transform = test_transforms(d)
    ds = D.VideoClipDataset(
        samples, root=d.root or None, frames=d.frames, sampling=d.sampling, rate=d.rate,
        target_fps=d.target_fps, train=is_train, transform=transform, num_clips=clips, num_crops=crops,
        max_retries=d.max_retries, backend=d.backend, seed=cfg.train.seed)
    return ds, labels


def build_model(cfg: Config, num_outputs: int, device=torch.device("cpu"), *, pretrained: bool = True) -> nn.Module:
    """The config's model with a head of ``num_outputs`` (``model.pretrained`` loaded when ``pretrained``)."""
    m = cfg.model
    kwargs = dict(m.kwargs)
    if m.drop_path_rate:
        kwargs["drop_path_rate"] = m.drop_path_rate
    kwargs.setdefault("drop_rate", m.drop_rate)
    model = create_model(m.name, pretrained=m.pretrained if pretrained else None, num_classes=num_outputs, **kwargs)
    if cfg.train.grad_checkpoint:
        model.set_grad_checkpointing(True)
    return model.to(device)


class _SkipSampler(Sampler):
    """A distributed sampler's epoch order without its first ``skip`` indices (resume mid-epoch)."""

    def __init__(self, base: DistributedSampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: SIGTERM / SIGINT sent to the whole process group (SLURM, ``docker stop``,
    Ctrl-C) must reach only the main process, which saves and stops the workers itself."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(cfg: Config, ds, *, train: bool, rank: int = 0, world_size: int = 1, skip_batches: int = 0,
                 epoch: int = 0, device=torch.device("cpu"), collate_fn=None) -> DataLoader:
    """This rank's share of ``ds``: shuffled per epoch and without a last partial batch in training,
    every view once (padded to equal shares, counted once by the metrics) in evaluation. ``collate_fn``:
    the task's (:meth:`~tada.engine.tasks.Task.collate`; default :func:`tada.data.collate_views`)."""
    d = cfg.data
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=cfg.train.seed,
                                 drop_last=train)
    sampler.set_epoch(epoch)
    if skip_batches:
        sampler = _SkipSampler(sampler, skip_batches * d.batch_size)
    g = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
    return DataLoader(ds, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                      collate_fn=collate_fn or D.collate_views, drop_last=train, generator=g,
                      worker_init_fn=ignore_stop_signals if d.num_workers else None,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=False)


def autocast_for(cfg: Config, device):
    """A context-manager factory for ``train.amp`` on ``device``."""
    amp, kind = cfg.train.amp, torch.device(device).type
    if amp == "none":
        return nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(kind, dtype=dtype)


def load_weights(model: nn.Module, checkpoint, *, ema: bool = False, name: str = "") -> dict:
    """Model weights from a training checkpoint (``ema=True``: its EMA weights); returns the checkpoint."""
    state = load_checkpoint(checkpoint)
    key = "model_ema_state" if ema else "model_state"
    if key not in state:
        raise ValueError(f"{checkpoint} has no {key!r}")
    try:
        model.load_state_dict(state[key])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not fit model {name or type(model).__name__!r}: "
                         f"{str(e).splitlines()[0]}") from e
    return state


def labels_of_checkpoint(state: dict) -> Optional[LabelSpace]:
    if state.get("labels"):
        return LabelSpace.from_json(state["labels"])
    return LabelSpace.from_json(state["class_names"]) if state.get("class_names") else None


def load_for_inference(checkpoint, device="cpu"):
    """``(model in eval mode, config, label space)`` from a checkpoint written by the trainer: its config
    builds the model, its label space sizes the head."""
    state = load_checkpoint(checkpoint)
    cfg = from_dict(Config, state.get("config") or {})
    labels = labels_of_checkpoint(state)
    if labels is None:
        raise ValueError(f"{checkpoint} has no class names; it was not written by `tada train`")
    from .tasks import build_task

    task = build_task(cfg, labels)
    if hasattr(task, "build_model_for_state"):  # the architecture read from the state (no source files needed)
        return task.build_model_for_state(state["model_state"], device).eval(), cfg, labels
    model = task.build_model(pretrained=False)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not fit model {cfg.model.name!r}: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), cfg, labels
