"""The training loop and multi-view evaluation, driven by a typed :class:`~tada.engine.config.Config`.

One process or many (``torchrun``: DDP, NCCL on GPU, gloo on CPU). Per iteration: forward under
autocast (bf16 on CPU/GPU; fp16 with loss scaling, meant for the GPU, runs on the CPU too),
soft-target cross-entropy (label smoothing, mixup/cutmix), gradient accumulation and clipping,
optimiser step, per-iteration lr schedule, EMA.
Every epoch (``train.eval_every``): multi-view validation. Checkpoints: ``last.pt`` (every epoch, on
SIGTERM / SIGINT, and at ``train.stop_after_steps``), then ``best.pt`` (best validation top-1) and
``epoch_{N}.pt`` every ``train.save_every`` epochs.

Never silently losing work: a run resumes from ``last.pt`` in its output folder to the exact batch when
the saved config matches (it is refused, naming the keys that differ, when not; ``train.resume=false``
starts over). A signal to any rank (or to the whole process group, data-loader workers included: they
ignore it) stops every rank at the same step: the stop flag is all-reduced after each step, ``last.pt``
is written once, and :class:`TrainingStopped` says how to resume. A NaN/inf loss saves
``nan_step{N}.pt`` and stops with the step number. Unreadable training videos are replaced, and
counted in the result of :meth:`Trainer.fit`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..data import datasets as D
from ..data import transforms as TF
from ..models import create_model
from .checkpoint import config_diff, load_checkpoint, remove_partial_writes, save_checkpoint, set_rng_state
from .config import Config, to_dict
from .distributed import (DistInfo, all_reduce_mean, all_reduce_sum, any_rank, barrier, collective, init_distributed,
                          is_distributed)
from .metrics import EvalResult, ViewAccumulator, write_per_class_csv
from .optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["Trainer", "build_dataset", "test_transforms", "TrainingStopped"]

log = logging.getLogger("tada.train")


class TrainingStopped(RuntimeError):
    """Raised when a run stops on purpose (a signal, ``train.stop_after_steps``) after saving ``last.pt``.
    ``signal`` is the signal's name (``"SIGTERM"``, ``"SIGINT"``) or None."""

    def __init__(self, message: str, signal: Optional[str] = None):
        super().__init__(message)
        self.signal = signal


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: SIGTERM / SIGINT sent to the whole process group (SLURM, ``docker stop``,
    Ctrl-C) must reach only the main process, which saves and stops the workers itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- data ------------------------------------------------------------------------------------------

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


def build_dataset(cfg: Config, split: str, *, train: Optional[bool] = None):
    """``(dataset, class_names)`` for ``split`` in train / val / test, from the config's data section."""
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
    samples, class_names = D.load_annotations(path, d.format, root=d.root or None, **kwargs)
    is_train = (split == "train") if train is None else train
    mean, std = _norm_stats(d.normalize)
    if is_train:
        flip_map = TF.SSV2_FLIP_MAP if d.flip_label_map == "ssv2" else None
        if d.flip_label_map not in (None, "ssv2"):
            raise ValueError(f"data.flip_label_map must be null or 'ssv2', got {d.flip_label_map!r}")
        transform = TF.build_train_transform(
            crop_size=d.crop_size, scale=d.train_scale, short_side_range=d.short_side_range, flip=d.flip,
            flip_label_map=flip_map, rand_augment=d.rand_augment, grayscale_p=d.grayscale_p,
            random_erasing_p=d.random_erasing_p, mean=mean, std=std)
        clips, crops = 1, 1
    else:
        clips, crops = d.test_clips, d.test_crops
        transform = test_transforms(d)
    ds = D.VideoClipDataset(
        samples, root=d.root or None, frames=d.frames, sampling=d.sampling, rate=d.rate,
        target_fps=d.target_fps, train=is_train, transform=transform, num_clips=clips, num_crops=crops,
        max_retries=d.max_retries, backend=d.backend, seed=cfg.train.seed)
    return ds, class_names


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


# -- the trainer -----------------------------------------------------------------------------------

class Trainer:
    """Builds everything from ``cfg`` and runs :meth:`fit` / :meth:`evaluate`.

    ``datasets`` may pass ready ``{"train": (ds, names), "val": (ds, names)}`` (tests do this).
    """

    def __init__(self, cfg: Config, *, datasets: Optional[dict] = None, progress: bool = True,
                 splits=("train", "val")):
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.train.device, cfg.train.dist_timeout)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        self.out = Path(cfg.train.output_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"train.output_dir={self.out} is a file, not a folder; choose another train.output_dir")
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_partial_writes(self.out)
        self._check_device_options()
        self._resume_state = self._read_resume_state() if "train" in splits else None
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.datasets = dict(datasets or {})
        for split in splits:
            if split not in self.datasets and getattr(cfg.data, f"{split}_list"):
                self.datasets[split] = build_dataset(cfg, split)
        ref = next(iter(self.datasets.values()), None)
        self.class_names = list(ref[1]) if ref else None
        # Epic-Kitchens parsers give (verb names, noun names): one head over both, split in the loss
        self.multi_head = bool(self.class_names) and isinstance(self.class_names[0], (list, tuple))
        num_classes = cfg.model.num_classes or self._num_classes()
        self._check_labels(num_classes)
        self.model = self._build_model(num_classes)
        self.ema = None
        if cfg.train.ema_decay:  # after the pretrained weights are in (create_model loaded them)
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay)
        self.ddp = self.model
        if is_distributed():
            if cfg.train.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward_model = torch.compile(self.ddp) if cfg.train.compile else self.ddp
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.amp == "fp16" else None
        self.epoch, self.step, self.batch_in_epoch, self.best = 0, 0, 0, -1.0
        self.history: List[dict] = []
        self.unreadable: set = set()  # training samples that could not be read and were replaced
        self._stop_signal: Optional[str] = None

    # -- building ------------------------------------------------------------------------------
    def _check_device_options(self):
        if self.cfg.train.sync_bn and self.device.type == "cpu":
            raise ValueError("train.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel. "
                             "On the CPU set train.sync_bn=false (each process then normalises its own batch)")
        if self.cfg.train.amp == "fp16" and self.device.type != "cuda" and self.dist.is_main:
            # It works (autocast + loss scaling, the GPU code path), but CPUs have no fast fp16 kernels.
            log.warning("train.amp=fp16 on %s: runs, with loss scaling, but slowly; bf16 is the CPU choice",
                        self.device.type)

    def _read_resume_state(self) -> Optional[dict]:
        """The state in ``output_dir/last.pt`` if this run continues it; refused when its config differs."""
        path = self.out / "last.pt"
        if not path.exists():
            return None
        if not self.cfg.train.resume:
            if self.dist.is_main:
                log.warning("train.resume=false: starting over in %s; its last.pt and logs will be replaced", self.out)
            return None
        state = load_checkpoint(path)
        diff = config_diff(state.get("config") or {}, to_dict(self.cfg))
        if diff:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise ValueError(
                f"{path} (step {state.get('step')}) belongs to a run with another config ({shown}). To continue "
                "it, run with the config it was saved with; to keep it and train this config, choose another "
                "train.output_dir; to replace it, start over with train.resume=false (tada train --overwrite)")
        return state

    def _check_labels(self, num_classes: int) -> None:
        """Every annotated label must fit the head: caught here, not as an index error in hour three."""
        sizes = ([len(c) for c in self.class_names] if self.multi_head else None) if self.class_names else None
        for split, (ds, _) in self.datasets.items():
            for s in getattr(ds, "samples", ()):
                lab = s.label
                if split != "train" and lab == -1:  # unlabelled test entries (SSV2 test, empty CSV labels)
                    continue
                bad = (any(not 0 <= int(v) < n for v, n in zip(lab, sizes)) if sizes and isinstance(lab, (tuple, list))
                       else not isinstance(lab, (tuple, list)) and not 0 <= int(lab) < num_classes)
                if bad:
                    raise ValueError(
                        f"{split} sample {s.path} has label {lab}, outside the {sizes or num_classes} classes of "
                        "the model; fix the annotation list, data.class_names or model.num_classes")

    def _num_classes(self):
        if self.class_names is None:
            raise ValueError("model.num_classes is not set and there is no dataset to count classes from")
        if self.multi_head:
            return sum(len(c) for c in self.class_names)
        return len(self.class_names)

    def _build_model(self, num_classes: int) -> nn.Module:
        m = self.cfg.model
        kwargs = dict(m.kwargs)
        if m.drop_path_rate:
            kwargs["drop_path_rate"] = m.drop_path_rate
        kwargs.setdefault("drop_rate", m.drop_rate)
        model = create_model(m.name, pretrained=m.pretrained, num_classes=num_classes, **kwargs)
        if self.cfg.train.grad_checkpoint:
            model.set_grad_checkpointing(True)
        return model.to(self.device)

    def _autocast(self):
        amp = self.cfg.train.amp
        if amp == "none":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _loader(self, ds, *, train: bool, skip_batches: int = 0, epoch: int = 0) -> DataLoader:
        d = self.cfg.data
        sampler = DistributedSampler(ds, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=train,
                                     seed=self.cfg.train.seed, drop_last=train)
        sampler.set_epoch(epoch)
        if skip_batches:
            sampler = _SkipSampler(sampler, skip_batches * d.batch_size)
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch)
        return DataLoader(ds, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                          collate_fn=D.collate_views, drop_last=train, generator=g,
                          worker_init_fn=_ignore_stop_signals if d.num_workers else None,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    # -- loss ----------------------------------------------------------------------------------
    def _loss(self, logits, batch):
        y = batch["label"].to(self.device)
        if self.multi_head:
            nv = len(self.class_names[0])
            ls = self.cfg.train.label_smoothing
            return (F.cross_entropy(logits[:, :nv].float(), y[:, 0], label_smoothing=ls)
                    + F.cross_entropy(logits[:, nv:].float(), y[:, 1], label_smoothing=ls))
        return torch.sum(-batch["target"] * F.log_softmax(logits.float(), dim=1), dim=1).mean()

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        if "train" not in self.datasets:
            raise ValueError("data.train_list is not set: nothing to train on")
        train_ds = self.datasets["train"][0]
        steps_per_epoch = len(self._loader(train_ds, train=True)) // cfg.optim.accum_steps
        if steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(train_ds)} clips) is smaller than one batch of "
                             f"{cfg.data.batch_size} x {self.dist.world_size} processes x {cfg.optim.accum_steps} "
                             "accumulation steps; lower data.batch_size")
        global_batch = cfg.data.batch_size * self.dist.world_size * cfg.optim.accum_steps
        lr = scaled_lr(cfg.optim, global_batch)
        self.optimizer = build_optimizer(self.model, cfg.optim, lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, steps_per_epoch)
        num_classes = self.model.num_classes
        self.mixup = None if self.multi_head else TF.build_mixup(
            cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.label_smoothing, num_classes)
        self._maybe_resume()
        self._install_signal_handlers()
        writer = self._tensorboard()
        total_steps = cfg.optim.epochs * steps_per_epoch
        t_start = time.time()
        try:
            while self.epoch < cfg.optim.epochs:
                if hasattr(train_ds, "set_epoch"):
                    train_ds.set_epoch(self.epoch)
                loader = self._loader(train_ds, train=True, skip_batches=self.batch_in_epoch * cfg.optim.accum_steps,
                                      epoch=self.epoch)
                train_loss = self._train_epoch(loader, steps_per_epoch, total_steps, writer)
                self.epoch += 1
                self.batch_in_epoch = 0
                val_row = {}
                row = {"epoch": self.epoch, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "time": time.time() - t_start}
                new_best = False
                if "val" in self.datasets and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.optim.epochs):
                    res = self.evaluate(self.datasets["val"][0])
                    row.update(val_top1=res.top1, val_top5=res.top5, val_mean_class_acc=res.mean_class_acc)
                    if self.ema is not None:
                        row["val_top1_ema"] = self.evaluate(self.datasets["val"][0], model=self.ema.module).top1
                    if res.top1 > self.best:
                        self.best, new_best = res.top1, True
                self.history.append(row)
                self._log_epoch(row, writer)
                # last.pt first: a full disk while writing best.pt must not cost the epoch's resume point
                self._save("last.pt", metrics=row)
                if new_best:
                    self._save("best.pt", metrics=row)
                if cfg.train.save_every and self.epoch % cfg.train.save_every == 0:
                    self._save(f"epoch_{self.epoch}.pt", metrics=row)
                if self.epoch < cfg.optim.epochs and any_rank(self._stop_signal is not None, self.device):
                    self._stop(self._stop_signal or "SIGTERM", saved=self.out / "last.pt")
        finally:
            if writer is not None:
                writer.close()
            self._restore_signal_handlers()
        unreadable = self._count_unreadable()
        if unreadable and self.dist.is_main:
            log.warning("%d training samples could not be read and were replaced by random others (their paths "
                        "are in the warnings above); check the data with `tada data inspect`", unreadable)
        return {"history": self.history, "best_top1": self.best, "steps": self.step,
                "time": time.time() - t_start, "output_dir": str(self.out), "unreadable": unreadable}

    def _count_unreadable(self) -> int:
        """Distinct unreadable training samples over all ranks (each rank sees its own share)."""
        if not is_distributed():
            return len(self.unreadable)
        sets = [None] * self.dist.world_size
        with collective("gathering the count of unreadable videos"):
            torch.distributed.all_gather_object(sets, sorted(self.unreadable))
        return len(set().union(*map(set, sets)))

    def _stop(self, why: str, saved: Path):
        if self.dist.is_main:
            log.info("stopped at step %d (%s)", self.step, why)
        sig = why if why.startswith("SIG") else None
        raise TrainingStopped(f"stopped at step {self.step} ({why}); checkpoint {saved}. Run the same command again "
                              "to resume from it (train.resume=true, the default)", signal=sig)

    def _train_epoch(self, loader, steps_per_epoch, total_steps, writer) -> float:
        cfg = self.cfg
        self.ddp.train()
        accum = cfg.optim.accum_steps
        losses, seen, t0 = [], 0, time.time()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}",
                       leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        micro = 0
        for batch in loader:
            for replaced in batch.get("replaced", ()):
                self.unreadable.update(replaced)
            x = batch["video"].to(self.device, non_blocking=True)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            if self.mixup is not None:
                x, batch["target"] = self.mixup(x, batch["label"].to(self.device))
            sync = (micro + 1) % accum == 0
            ctx = self.ddp.no_sync() if (is_distributed() and not sync) else nullcontext()
            # DDP syncs in forward (buffers, bucket rebuilds) and backward (gradients): a lost rank fails here
            peers = collective(f"step {self.step + 1} (forward and backward with the gradient all-reduce)")
            with ctx, peers:
                with self._autocast():
                    logits = self.forward_model(x)
                loss = self._loss(logits, batch)
                if not torch.isfinite(loss):
                    path = self._save(f"nan_step{self.step}.pt")
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {self.step} (epoch {self.epoch + 1}, batch "
                        f"{self.batch_in_epoch + 1}); checkpoint saved to {path}. Lower optim.lr, set "
                        "optim.clip_grad, or check the data")
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            micro += 1
            losses.append(loss.item())
            seen += x.shape[0] * self.dist.world_size
            if not sync:
                continue
            if cfg.optim.clip_grad:
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.batch_in_epoch += 1
            self.scheduler.step_update(self.step)
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
            step_loss = sum(losses[-accum:]) / accum
            self._log_step(step_loss, seen / max(time.time() - t0, 1e-9), writer)
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                clips_s=f"{seen / max(time.time() - t0, 1e-9):.1f}")
                bar.update(1)
            stop_at = cfg.train.stop_after_steps
            # agreed by all ranks, so a signal to one rank stops every rank after this same step
            signalled = any_rank(self._stop_signal is not None, self.device)
            if signalled or (stop_at is not None and self.step >= stop_at):
                path = self._save("last.pt")
                if bar is not None:
                    bar.close()
                self._stop((self._stop_signal or "a signal to another rank") if signalled
                           else f"train.stop_after_steps={stop_at}", saved=path)
            if self.batch_in_epoch >= steps_per_epoch:
                break
        if bar is not None:
            bar.close()
        mean = torch.tensor(sum(losses) / max(len(losses), 1))
        return float(all_reduce_mean(mean))

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, ds, *, model: Optional[nn.Module] = None) -> EvalResult:
        model = model if model is not None else self.model
        was = model.training
        model.eval()
        if self.multi_head:
            nv = len(self.class_names[0])
            acc = ViewAccumulator((nv, model.num_classes - nv), heads=("verb", "noun"))
        else:
            acc = ViewAccumulator(model.num_classes)
        loader = self._loader(ds, train=False)
        it = loader
        if self.progress:
            from tqdm import tqdm

            it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
        for batch in it:
            x = batch["video"].to(self.device)
            with self._autocast():
                logits = model(x).float()
            labels = batch["label"]
            if self.multi_head:
                logits, labels = (logits[:, :nv], logits[:, nv:]), (labels[:, 0], labels[:, 1])
            acc.add(logits, labels, batch["index"], batch["view"], batch["valid"])
        with collective("gathering evaluation results"):
            acc.gather()
        model.train(was)
        res = acc.summarise(with_confusion=True)
        if res.invalid:
            log.warning("%d videos could not be read and were excluded from the evaluation", len(res.invalid))
        return res

    # -- checkpoints, logs ---------------------------------------------------------------------
    def _save(self, name: str, metrics: Optional[dict] = None) -> Path:
        path = self.out / name
        if self.dist.is_main:
            save_checkpoint(path, model=self.model, optimizer=getattr(self, "optimizer", None),
                            scheduler=getattr(self, "scheduler", None), ema=self.ema, scaler=self.scaler,
                            epoch=self.epoch, step=self.step, config=to_dict(self.cfg),
                            class_names=self.class_names, metrics=metrics,
                            extra={"batch_in_epoch": self.batch_in_epoch, "best": self.best,
                                   "history": self.history, "unreadable": sorted(self.unreadable)})
        barrier(f"waiting for rank 0 to write {name}")
        return path

    def _maybe_resume(self) -> None:
        state, self._resume_state = self._resume_state, None
        if state is None:
            return
        path = self.out / "last.pt"
        try:
            self.model.load_state_dict(state["model_state"])
            if "optimizer_state" in state:
                self.optimizer.load_state_dict(state["optimizer_state"])
            if "scheduler_state" in state:
                self.scheduler.load_state_dict(state["scheduler_state"])
            if self.ema is not None and "model_ema_state" in state:
                self.ema.module.load_state_dict(state["model_ema_state"])
            if self.scaler is not None and "scaler_state" in state:
                self.scaler.load_state_dict(state["scaler_state"])
        except (RuntimeError, KeyError, ValueError) as e:  # same config, other code or a damaged file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} matches this config but its state does not fit the model or optimiser "
                             f"({type(e).__name__}: {first}); start over with train.resume=false or choose "
                             "another train.output_dir") from e
        extra = state.get("extra", {})
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = extra.get("batch_in_epoch", 0)
        self.best = extra.get("best", -1.0)
        self.history = list(extra.get("history", []))
        self.unreadable = set(extra.get("unreadable", []))
        set_rng_state(state["rng"])
        self.scheduler.step_update(self.step)
        if self.dist.is_main:
            self._truncate_step_log()
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _truncate_step_log(self) -> None:
        """Drop the ``steps.csv`` rows after the resumed step (a kill -9 after them re-runs those steps)."""
        path = self.out / "steps.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= self.step]
        if len(keep) != len(rows):
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)
            os.replace(tmp, path)

    def _install_signal_handlers(self):
        """SIGTERM and SIGINT set a flag; the loop saves ``last.pt`` after the current step and stops. A
        second Ctrl-C interrupts at once (KeyboardInterrupt)."""
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if signum == signal.SIGINT and self._stop_signal == "SIGINT":
                raise KeyboardInterrupt
            if self._stop_signal is None:
                log.warning("%s received: saving last.pt after this step, then stopping (Ctrl-C again to abort)", name)
            self._stop_signal = self._stop_signal or name

        self._old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def _restore_signal_handlers(self):
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def _tensorboard(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: the CSV logs are always written
            return None
        # purge_step: events after the resumed step (written before a kill) are dropped, like steps.csv's rows
        return SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1 if self.step else None)

    def _log_step(self, loss: float, clips_per_s: float, writer) -> None:
        if not self.dist.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        path = self.out / "steps.csv"
        new = not path.exists() or self.step == 1
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "loss", "lr", "clips_per_s"])
            w.writerow([self.step, self.epoch, f"{loss:.6f}", f"{lr:.6e}", f"{clips_per_s:.2f}"])
        if writer is not None:
            writer.add_scalar("train/loss", loss, self.step)
            writer.add_scalar("train/lr", lr, self.step)

    def _log_epoch(self, row: dict, writer) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "epochs.csv", "w", newline="") as f:
            keys = sorted({k for r in self.history for k in r}, key=lambda k: (k != "epoch", k))
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.history:
                w.writerow(r)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        msg = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        log.info(msg)
        if self.progress:
            print(msg, flush=True)

    def load_weights(self, checkpoint, *, ema: bool = False) -> None:
        """Model weights from a training checkpoint (``ema=True``: its EMA weights)."""
        state = load_checkpoint(checkpoint)
        key = "model_ema_state" if ema else "model_state"
        if key not in state:
            raise ValueError(f"{checkpoint} has no {key!r}")
        try:
            self.model.load_state_dict(state[key])
        except RuntimeError as e:
            raise ValueError(f"{checkpoint} does not fit model {self.cfg.model.name!r}: "
                             f"{str(e).splitlines()[0]}") from e

    def write_report(self, res: EvalResult, name: str = "test") -> Dict[str, str]:
        """Per-class CSV, JSON summary and plots for an evaluation result."""
        if not self.dist.is_main:
            return {}
        names = None if self.multi_head else self.class_names
        out = {"per_class_csv": str(write_per_class_csv(self.out / f"{name}_per_class.csv", res, names))}
        summary = {"top1": res.top1, "top5": res.top5, "mean_class_acc": res.mean_class_acc,
                   "videos": res.num_videos, "views": res.num_views, "unreadable": len(res.invalid), **res.extra}
        (self.out / f"{name}_results.json").write_text(json.dumps(summary, indent=1))
        out["results_json"] = str(self.out / f"{name}_results.json")
        from .plots import plot_run

        out.update(plot_run(self.out, self.history, res, names))
        return out
