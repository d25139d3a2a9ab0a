"""The training loop and multi-view evaluation, driven by a typed :class:`~tada.engine.config.Config`.

One process or many (``torchrun``: DDP, NCCL on GPU, gloo on CPU). Per iteration: forward under
autocast (bf16 on CPU/GPU; fp16 with loss scaling, meant for the GPU, runs on the CPU too),
soft-target cross-entropy (label smoothing, mixup/cutmix), gradient accumulation and clipping,
optimiser step, per-iteration lr schedule, EMA.
Every epoch (``train.eval_every``): multi-view validation. Checkpoints: ``last.pt`` (every epoch, on
SIGTERM, and at ``train.stop_after_steps``), ``best.pt`` (best validation top-1), ``epoch_{N}.pt`` every
``train.save_every`` epochs. A run resumes from ``last.pt`` in its output folder to the exact batch.
A NaN/inf loss saves ``nan_step{N}.pt`` and stops with the step number.
"""
from __future__ import annotations

import csv
import json
import logging
import math
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
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .config import Config, to_dict
from .distributed import DistInfo, all_reduce_mean, barrier, init_distributed, is_distributed
from .metrics import EvalResult, ViewAccumulator, write_per_class_csv
from .optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["Trainer", "build_dataset", "test_transforms", "TrainingStopped"]

log = logging.getLogger("tada.train")


class TrainingStopped(RuntimeError):
    """Raised when a run stops on purpose (SIGTERM) after saving its checkpoint."""


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
        self.dist: DistInfo = init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        self.out = Path(cfg.train.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._check_device_options()
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
        self._stop_signal = False

    # -- building ------------------------------------------------------------------------------
    def _check_device_options(self):
        if self.cfg.train.sync_bn and self.device.type == "cpu":
            raise ValueError("train.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm has no CPU kernel. "
                             "On the CPU set train.sync_bn=false (each process then normalises its own batch)")
        if self.cfg.train.amp == "fp16" and self.device.type != "cuda" and self.dist.is_main:
            # It works (autocast + loss scaling, the GPU code path), but CPUs have no fast fp16 kernels.
            log.warning("train.amp=fp16 on %s: runs, with loss scaling, but slowly; bf16 is the CPU choice",
                        self.device.type)

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
        self._install_sigterm()
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
                row = {"epoch": self.epoch, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "time": time.time() - t_start}
                if "val" in self.datasets and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.optim.epochs):
                    res = self.evaluate(self.datasets["val"][0])
                    row.update(val_top1=res.top1, val_top5=res.top5, val_mean_class_acc=res.mean_class_acc)
                    if self.ema is not None:
                        row["val_top1_ema"] = self.evaluate(self.datasets["val"][0], model=self.ema.module).top1
                    if res.top1 > self.best:
                        self.best = res.top1
                        self._save("best.pt", metrics=row)
                self.history.append(row)
                self._log_epoch(row, writer)
                self._save("last.pt", metrics=row)
                if cfg.train.save_every and self.epoch % cfg.train.save_every == 0:
                    self._save(f"epoch_{self.epoch}.pt", metrics=row)
        finally:
            if writer is not None:
                writer.close()
            self._restore_sigterm()
        return {"history": self.history, "best_top1": self.best, "steps": self.step,
                "time": time.time() - t_start, "output_dir": str(self.out)}

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
            x = batch["video"].to(self.device, non_blocking=True)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            if self.mixup is not None:
                x, batch["target"] = self.mixup(x, batch["label"].to(self.device))
            sync = (micro + 1) % accum == 0
            ctx = self.ddp.no_sync() if (is_distributed() and not sync) else nullcontext()
            with ctx:
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
            if self._stop_signal or (stop_at is not None and self.step >= stop_at):
                path = self._save("last.pt")
                if bar is not None:
                    bar.close()
                why = "SIGTERM" if self._stop_signal else f"train.stop_after_steps={stop_at}"
                raise TrainingStopped(f"stopped at step {self.step} ({why}); resume from {path}")
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
                                   "history": self.history})
        barrier()
        return path

    def _maybe_resume(self) -> None:
        path = self.out / "last.pt"
        if not self.cfg.train.resume or not path.exists():
            return
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model_state"])
        if "optimizer_state" in state:
            self.optimizer.load_state_dict(state["optimizer_state"])
        if "scheduler_state" in state:
            self.scheduler.load_state_dict(state["scheduler_state"])
        if self.ema is not None and "model_ema_state" in state:
            self.ema.module.load_state_dict(state["model_ema_state"])
        if self.scaler is not None and "scaler_state" in state:
            self.scaler.load_state_dict(state["scaler_state"])
        extra = state.get("extra", {})
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = extra.get("batch_in_epoch", 0)
        self.best = extra.get("best", -1.0)
        self.history = list(extra.get("history", []))
        set_rng_state(state["rng"])
        self.scheduler.step_update(self.step)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _install_sigterm(self):
        def handler(signum, frame):
            self._stop_signal = True

        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._old_sigterm = None

    def _restore_sigterm(self):
        if getattr(self, "_old_sigterm", None) is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)

    def _tensorboard(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: the CSV logs are always written
            return None
        return SummaryWriter(str(self.out / "tb"))

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
