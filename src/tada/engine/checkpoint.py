"""Training checkpoints: atomic writes, complete state for an exact resume, safe loading.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data (so it loads with
``weights_only=True``: nothing in it can run code): model, optimiser, schedule, EMA and loss-scaler
states, the RNG states of Python, NumPy, torch (CPU and CUDA), the position (epoch, step), the config
and class names. It is written to a temporary file in the same folder, flushed, then renamed over the
target, so a crash mid-write never leaves a half-written ``last.pt``; the ``.tmp`` files a killed write
leaves behind are removed by :func:`remove_partial_writes` when the next run starts. A failed write
names the path and says when the disk is full.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "atomic_save",
           "remove_partial_writes", "config_diff", "RUN_NEUTRAL_KEYS"]

log = logging.getLogger("tada.train")


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``. On failure
    the temporary file is removed, ``path`` keeps its previous content, and the ``OSError`` names the path
    (and says "no space left on device" when that is the cause)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        code = _errno(e)
        if code is None:
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        if code == errno.ENOSPC:
            raise OSError(code, f"cannot write checkpoint {path}: no space left on device "
                                f"({_free_space(path.parent)} in {path.parent}); {kept}. Free some space or set "
                                "train.output_dir to a larger disk, then run the same command again to resume") from e
        raise OSError(code, f"cannot write checkpoint {path}: {os.strerror(code)}; {kept}") from e
    return path


def _errno(e: BaseException):
    """The errno of an OSError, also when torch.save wraps it in a RuntimeError."""
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        if isinstance(e, RuntimeError) and "No space left on device" in str(e):
            return errno.ENOSPC
        e = e.__cause__ or e.__context__
    return None


def remove_partial_writes(folder: Union[str, os.PathLike]) -> list:
    """Delete the ``.NAME.XXXX.tmp`` files an interrupted :func:`atomic_save` left in ``folder``."""
    removed = []
    for p in sorted(Path(folder).glob(".*.tmp")):
        if p.is_file() and ".pt." in p.name:
            p.unlink()
            removed.append(p)
    if removed:
        log.warning("removed %d partial checkpoint file(s) an interrupted write left behind: %s",
                    len(removed), ", ".join(p.name for p in removed))
    return removed


# config keys that may change between a run and its resume without changing what it computes
RUN_NEUTRAL_KEYS = (
    "train.output_dir", "train.resume", "train.stop_after_steps", "train.log_every", "train.dist_timeout",
    "train.eval_every", "train.save_every", "train.device", "train.compile",
    "data.root", "data.num_workers", "data.backend", "data.val_list", "data.test_list", "data.max_retries",
    "data.test_clips", "data.test_crops", "data.test_short_side", "data.test_crop_size",
)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict) or (prefix.endswith("kwargs") and prefix):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(saved: dict, current: dict, ignore=RUN_NEUTRAL_KEYS) -> list:
    """``["key: saved -> now", ...]`` for the keys whose values differ (tuples and lists compare equal)."""
    a, b = _flatten(saved or {}), _flatten(current or {})

    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and norm(a.get(k)) != norm(b.get(k))]


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path, *, model, optimizer=None, scheduler=None, ema=None, scaler=None, epoch: int = 0,
                    step: int = 0, config: Optional[dict] = None, class_names=None, labels: Optional[dict] = None,
                    metrics: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Write everything a resume needs. ``model``/``ema`` may be wrapped (DDP): their ``module`` is saved."""
    unwrap = lambda m: getattr(m, "module", m)  # noqa: E731
    state = {
        "format": "tada-checkpoint-v1",
        "model_name": getattr(unwrap(model), "model_name", type(unwrap(model)).__name__),
        "model_state": unwrap(model).state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng_state(),
        "config": config or {},
        "class_names": list(class_names) if class_names is not None else None,
        "labels": labels,  # LabelSpace.to_json(): heads, names per head, flip pairs
        "metrics": metrics or {},
    }
    if optimizer is not None:
        state["optimizer_state"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler_state"] = scheduler.state_dict()
    if ema is not None:
        state["model_ema_state"] = unwrap(getattr(ema, "module", ema)).state_dict()
    if scaler is not None:
        state["scaler_state"] = scaler.state_dict()
    if extra:
        state["extra"] = extra
    return atomic_save(state, path)


def load_checkpoint(path) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        why = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Check the doc"))
        raise ValueError(
            f"cannot read checkpoint {p}: it is not a training checkpoint that loads as plain data "
            f"({type(e).__name__}: {why.rstrip('.')}). A file written by `tada train` loads this way; a truncated "
            "file or one that pickles code is refused. Pass a checkpoint written by `tada train`, or give "
            "model weights as model.pretrained= instead") from e
    if not isinstance(state, dict) or "model_state" not in state:
        raise ValueError(f"{p} is not a training checkpoint of this project (no 'model_state'); "
                         "to initialise a model from weights use model.pretrained= instead")
    return state
