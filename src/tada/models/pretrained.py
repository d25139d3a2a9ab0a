"""Reading checkpoints from local paths and loading them strictly into a model.

Formats are detected, never fetched: a ``.safetensors`` file, a TorchScript archive (OpenAI CLIP's
``ViT-B-16.pt``), or a pickled state dict read with ``torch.load(weights_only=True)``. Containers are
unwrapped (``model_state`` of the released TAda checkpoints, ``state_dict``, ``model``, ``module``,
``ema``...), then the model's ``checkpoint_filter_fn`` converts foreign keys to its own.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Union

import torch
from torch import Tensor

__all__ = ["read_checkpoint", "unwrap_state_dict", "load_pretrained", "LoadReport", "centre_inflate"]

log = logging.getLogger("tada.models")

# container keys, in order of preference
_CONTAINER_KEYS = ("model_state", "state_dict", "model", "module", "params")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def unwrap_state_dict(obj) -> Dict[str, Tensor]:
    """Find the flat ``{name: tensor}`` state dict inside a checkpoint container."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint holds no tensors (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):  # DataParallel / DDP
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)\.(\w+)")


def _inert(module: str, name: str) -> type:
    """A stand-in for a class a checkpoint pickled *beside* its weights (e.g. the release's config
    node): a plain dict subclass named like it, so ``weights_only`` unpickling can build the object
    without importing or running anything from the file."""

    def setstate(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)

    def new(cls, *args, **kwargs):
        return dict.__new__(cls)

    return type(name, (dict,), {"__module__": module, "__qualname__": name, "__setstate__": setstate,
                                "__new__": new, "__init__": lambda self, *a, **k: None})


class _RestrictedPickle:
    """A pickle module for ``torch.load`` that builds torch's own objects (the ``weights_only``
    allowlist) and turns every other class the file names into an inert stand-in: nothing from the
    file is imported or run."""

    __name__ = "tada_restricted_pickle"

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            allowed = torch._weights_only_unpickler._get_allowed_globals()
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            return _inert(module, name)

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedPickle.Unpickler(file, **kwargs).load()


def _load_weights_only(p: Path):
    """``torch.load(weights_only=True)``. A checkpoint that pickles other objects beside its weights
    (the release stores its config node there) is read with :class:`_RestrictedPickle` instead, which
    replaces those objects by inert stand-ins."""
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _GLOBAL_RE.search(str(e)) is None:
            raise
    return torch.load(str(p), map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a local checkpoint into a flat state dict on the CPU."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p} (pretrained= takes a local file path; nothing is downloaded)")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {p} is empty (0 bytes)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return unwrap_state_dict(load_file(str(p), device="cpu"))
        if _is_torchscript(p):
            return unwrap_state_dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        obj = _load_weights_only(p)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"cannot read checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "The file may be truncated or not a PyTorch / safetensors checkpoint."
        ) from e
    return unwrap_state_dict(obj)


def centre_inflate(weight2d: Tensor, time_kernel: int) -> Tensor:
    """2D kernel ``(O, I, kh, kw)`` -> 3D ``(O, I, kt, kh, kw)`` that is zero except the centre frame.

    A tubelet stem initialised this way sees only frame ``t`` of each window, so with stride 2 in time
    it equals the 2D layer applied to frames 0, 2, 4, ...
    """
    if weight2d.dim() != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(weight2d.shape)}")
    w = weight2d.new_zeros(weight2d.shape[:2] + (time_kernel,) + weight2d.shape[2:])
    w[:, :, time_kernel // 2] = weight2d
    return w


@dataclass
class LoadReport:
    source: str
    loaded: int
    new_by_design: List[str] = field(default_factory=list)
    reinitialised_head: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"loaded {self.loaded} tensors from {self.source}"
        if self.new_by_design:
            s += f"; {len(self.new_by_design)} new-by-design tensors keep their init (routing, T-Pool, TAda branches)"
        if self.reinitialised_head:
            s += f"; classifier re-initialised ({', '.join(self.reinitialised_head)}: class count differs)"
        return s


def _listing(keys, n=12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_pretrained(model, path_or_state_dict, *, source: str = None) -> LoadReport:
    """Load a checkpoint into ``model`` strictly.

    Raises ``ValueError`` listing the keys if, after conversion by ``model.checkpoint_filter_fn``, any
    model tensor is missing (other than new-by-design ones), any checkpoint tensor is unexpected, or a
    shape differs (other than the classifier, which is re-initialised with a message when the class
    count differs). Nothing is loaded unless all checks pass.
    """
    if isinstance(path_or_state_dict, Mapping):
        sd, source = dict(path_or_state_dict), source or "state dict"
    else:
        sd, source = read_checkpoint(path_or_state_dict), source or str(path_or_state_dict)
    name = getattr(model, "model_name", type(model).__name__)
    try:
        sd = model.checkpoint_filter_fn(sd)
    except ValueError as e:
        raise ValueError(f"checkpoint {source} does not fit {name}: {e}") from e

    own = model.state_dict()
    new = model.new_parameter_names()
    head = model.head_keys() if hasattr(model, "head_keys") else set()

    reinit = []
    head_in_ckpt = [k for k in head if k in sd]
    if head_in_ckpt and any(sd[k].shape != own[k].shape for k in head_in_ckpt):
        reinit = sorted(head)
        for k in head_in_ckpt:
            del sd[k]
    shape_mismatch = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape
    ]
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd and k not in new and k not in head]
    problems = []
    if shape_mismatch:
        problems.append(f"{len(shape_mismatch)} shape mismatches: {_listing(shape_mismatch, 6)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if problems:
        raise ValueError(
            f"checkpoint {source} does not fit {name} (nothing was loaded): " + "; ".join(problems)
            + ". Is it a checkpoint of another architecture or size?"
        )
    missing_head = [k for k in head if k not in sd]
    if missing_head and not reinit:
        reinit = sorted(missing_head)  # a backbone-only checkpoint (e.g. ImageNet without our head)
    model.load_state_dict(sd, strict=False)
    report = LoadReport(
        source=source,
        loaded=len(sd),
        new_by_design=sorted(k for k in new if k not in sd),
        reinitialised_head=reinit,
    )
    log.info("%s: %s", name, report)
    model.load_report = report
    return report
