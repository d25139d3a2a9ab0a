"""The training loop, driven by a typed :class:`~tada.engine.config.Config`; what a batch means (the
loss, the metrics) is the run's :class:`~tada.engine.tasks.Task`, so the loop knows nothing about labels.

One process or many (``torchrun``: DDP, NCCL on GPU, gloo on CPU). Per iteration: the task's batch
augmentation, forward under autocast (bf16 on CPU/GPU; fp16 with loss scaling, meant for the GPU, runs
on the CPU too), the task's loss, gradient accumulation and clipping, optimiser step, per-iteration lr
schedule, EMA. The run's parts come from :mod:`tada.engine.build`; evaluation is
:func:`tada.engine.evaluate.evaluate`.
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
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data.labels import LabelSpace
from .build import autocast_for, build_dataset, build_loader, load_weights, test_transforms
from .checkpoint import config_diff, load_checkpoint, remove_partial_writes, save_checkpoint, set_rng_state
from .config import Config, to_dict
from .distributed import (DistInfo, all_reduce_mean, any_rank, barrier, collective, init_distributed,
                          is_distributed)
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler, scaled_lr
from .tasks import Task, build_task, task_class

__all__ = ["Trainer", "TrainingStopped", "build_dataset", "test_transforms"]  # the last two: from .build

log = logging.getLogger("tada.train")


class TrainingStopped(RuntimeError):
    """Raised when a run stops on purpose (a signal, ``train.stop_after_steps``) after saving ``last.pt``.
    ``signal`` is the signal's name (``"SIGTERM"``, ``"SIGINT"``) or None."""

    def __init__(self, message: str, signal: Optional[str] = None):
        super().__init__(message)
        self.signal = signal


# -- the trainer -----------------------------------------------------------------------------------

class Trainer:
    """Builds the run from ``cfg`` (datasets, task, model) and runs :meth:`fit` / :meth:`evaluate`.

    ``datasets`` may pass ready ``{"train": (ds, label space), "val": ...}`` (tests do this); ``task`` a
    ready :class:`~tada.engine.tasks.Task` instead of the one ``cfg.task`` names.
    """

    def __init__(self, cfg: Config, *, datasets: Optional[dict] = None, progress: bool = True,
                 splits=("train", "val"), task: Optional[Task] = None):
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
        make = task_class(cfg).build_dataset if task is None else type(task).build_dataset
        for split in splits:
            if split not in self.datasets and getattr(cfg.data, f"{split}_list"):
                self.datasets[split] = make(cfg, split)
        self.datasets = {k: (ds, LabelSpace.from_parser(lab)) for k, (ds, lab) in self.datasets.items()}
        ref = next(iter(self.datasets.values()), None)
        if ref is None and not cfg.model.num_classes:
            raise ValueError("model.num_classes is not set and there is no dataset to count classes from")
        self.labels: LabelSpace = ref[1] if ref else LabelSpace.single(str(i) for i in range(cfg.model.num_classes))
        self.task = task if task is not None else build_task(cfg, self.labels)
        for split, (ds, _) in self.datasets.items():
            self.task.check_labels(getattr(ds, "samples", ()), split)
        self.model = self.task.build_model(self.device)
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

    @property
    def class_names(self):
        """The class names (one head) or ``[verbs, nouns]``: :attr:`labels` says which."""
        names = [list(n) for n in self.labels.names]
        return names if self.labels.multi_head else names[0]

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

    def _autocast(self):
        return autocast_for(self.cfg, self.device)()

    def _loader(self, ds, *, train: bool, skip_batches: int = 0, epoch: int = 0) -> DataLoader:
        return build_loader(self.cfg, ds, train=train, rank=self.dist.rank, world_size=self.dist.world_size,
                            skip_batches=skip_batches, epoch=epoch, device=self.device, collate_fn=self.task.collate)

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
                row = {"epoch": self.epoch, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "time": time.time() - t_start}
                new_best = False
                if "val" in self.datasets and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.optim.epochs):
                    res = self.evaluate(self.datasets["val"][0])
                    row.update({f"val_{k}": v for k, v in self.task.metrics(res).items()})
                    if self.ema is not None:
                        ema_res = self.evaluate(self.datasets["val"][0], model=self.ema.module)
                        row.update({f"val_{k}_ema": v for k, v in list(self.task.metrics(ema_res).items())[:1]})
                    score = self.task.score(res)
                    if score > self.best:
                        self.best, new_best = score, True
                self.history.append(row)
                self._log_epoch(row, writer)
                # last.pt first: a full disk while writing best.pt must not cost the epoch's resume point
                self._save("last.pt", metrics=row)
                if new_best:
                    self._save("best.pt", metrics=row)
                if cfg.train.save_every and self.epoch % cfg.train.save_every == 0:
                    self._save(f"epoch_{self.epoch}.pt", metrics=row)
                if self.epoch < cfg.optim.epochs and any_rank(self._stop_signal is not None, self.device):
                    self._stop(self._stop_signal or "a signal to another rank", saved=self.out / "last.pt")
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
            x = self.task.inputs(batch).to(self.device, non_blocking=True)
            if cfg.train.channels_last and x.dim() == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            x, batch = self.task.prepare(x, batch)
            sync = (micro + 1) % accum == 0
            ctx = self.ddp.no_sync() if (is_distributed() and not sync) else nullcontext()
            # DDP syncs in forward (buffers, bucket rebuilds) and backward (gradients): a lost rank fails here
            peers = collective(f"step {self.step + 1} (forward and backward with the gradient all-reduce)")
            with ctx, peers:
                with self._autocast():
                    logits = self.task.forward(self.forward_model, x)
                loss = self.task.loss(logits, batch)
                finite = bool(torch.isfinite(loss))
                if any_rank(not finite, self.device, "agreeing on whether a loss is NaN"):  # all ranks stop
                    path = self._save(f"nan_step{self.step}.pt")
                    where = f"loss is {loss.item()}" if not finite else "the loss of another rank is not finite"
                    raise FloatingPointError(
                        f"{where} at step {self.step} (epoch {self.epoch + 1}, batch "
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
    def evaluate(self, ds, *, model: Optional[nn.Module] = None):
        """The task's evaluation result of ``model`` (default: the trained one) on dataset ``ds``."""
        return evaluate(model if model is not None else self.model, self._loader(ds, train=False), self.task,
                        device=self.device, autocast=autocast_for(self.cfg, self.device), progress=self.progress)

    # -- checkpoints, logs ---------------------------------------------------------------------
    def _save(self, name: str, metrics: Optional[dict] = None) -> Path:
        path = self.out / name
        if self.dist.is_main:
            save_checkpoint(path, model=self.model, optimizer=getattr(self, "optimizer", None),
                            scheduler=getattr(self, "scheduler", None), ema=self.ema, scaler=self.scaler,
                            epoch=self.epoch, step=self.step, config=to_dict(self.cfg),
                            class_names=self.class_names, labels=self.labels.to_json(), metrics=metrics,
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
        load_weights(self.model, checkpoint, ema=ema, name=self.cfg.model.name)

    def write_report(self, res, name: str = "test") -> Dict[str, str]:
        """The task's files for an evaluation result (per-class CSV, JSON summary, plots, ...)."""
        if not self.dist.is_main:
            return {}
        return self.task.write(res, self.out, name, self.history)
