"""Training checkpoints: atomic writes, complete state for an exact resume, safe loading.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data (so it loads with
``weights_only=True``: nothing in it can run code): model, optimiser, schedule, EMA and loss-scaler
states, the RNG states of Python, NumPy, torch (CPU and CUDA), the position (epoch, step), the config
and class names. It is written to a temporary file in the same folder, flushed, then renamed over the
target, so a crash mid-write never leaves a half-written ``last.pt``.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "atomic_save"]


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
                    step: int = 0, config: Optional[dict] = None, class_names=None, metrics: Optional[dict] = None,
                    extra: Optional[dict] = None) -> Path:
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
        raise ValueError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if not isinstance(state, dict) or "model_state" not in state:
        raise ValueError(f"{p} is not a training checkpoint of this project (no 'model_state'); "
                         "to initialise a model from weights use model.pretrained= instead")
    return state
