"""Reading checkpoints from local paths and loading them strictly into a model.

Formats are detected from the file's first bytes, never fetched, and nothing in a file is imported or
run: a safetensors file; a TorchScript archive (OpenAI CLIP's ``ViT-B-16.pt``), whose pickle this module
reads as data (``torch.jit.load`` would run the archive's code); or a ``torch.save`` pickle, read with
``torch.load(weights_only=True)`` and inert stand-ins for the objects it holds beside its weights.
Containers are unwrapped (``model_state`` of the released TAda checkpoints, ``state_dict``, ``model``,
``module``, ``ema``...), then the model's ``checkpoint_filter_fn`` converts foreign keys to its own.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import re
import sys
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Union

import torch
from torch import Tensor

__all__ = ["read_checkpoint", "unwrap_state_dict", "load_pretrained", "LoadReport", "centre_inflate"]

log = logging.getLogger("tada.models")

# container keys, in order of preference
_CONTAINER_KEYS = ("model_state", "state_dict", "model", "module", "params")


class _Inert:
    """Stand-in for a class or function a TorchScript archive's pickle names (its ``__torch__`` module
    classes, or anything else): building or calling it only records the arguments and the state, so
    nothing from the file is imported or run."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.state = args, None
        return self

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.qualname}>"


def _inert(qualname: str) -> type:
    return type(qualname.rpartition(".")[2] or qualname, (_Inert,), {"qualname": qualname})


def _weights_only_stand_in(qualname: str) -> type:
    """Stand-in that ``torch.load(weights_only=True)`` may build for a global a checkpoint names beside
    its weights (the release pickles its config node there): building or calling it gives an
    OrderedDict, the one type that unpickler lets a pickle fill with items and attributes, recording the
    name and the arguments. Nothing from the file is imported or run."""

    def new(cls, *args, **kwargs):
        record = OrderedDict()
        record.__dict__.update(qualname=qualname, args=args)
        return record

    return type(qualname.rpartition(".")[2] or qualname, (), {"__new__": new})


def _describe(obj) -> str:
    return getattr(obj, "qualname", None) or type(obj).__name__


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
    if not isinstance(obj, Mapping) or (not obj and hasattr(obj, "qualname")):  # e.g. a stand-in's record
        raise ValueError(f"the checkpoint holds a {_describe(obj)} object, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"the checkpoint holds no tensors (top-level keys: {sorted(map(str, obj))[:10]})")
    if all(k.startswith("module.") for k in tensors):  # DataParallel / DDP
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# -- what a file is --------------------------------------------------------------------------------

_TORCHSCRIPT = "a TorchScript archive (torch.jit.save, like OpenAI CLIP's .pt files)"
_PICKLE_ZIP = "a pickle zip archive (torch.save)"
_LEGACY = "a legacy torch.save pickle (PyTorch before 1.6)"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # its first pickle: torch's magic number
_SAFETENSORS = "a safetensors file"
_NOT_A_CHECKPOINT = "not a checkpoint (its first bytes are neither a zip archive, a pickle nor a safetensors header)"
_ADVICE = ("If the file is incomplete, copy or download it again. A checkpoint from a source you trust can be "
           "converted to safetensors, or loaded in Python and re-saved as a plain state dict with "
           "torch.save(model.state_dict(), path).")


def _detect(p: Path) -> str:
    """What ``p`` holds, from its first bytes and, for a zip archive, the names of its records."""
    with open(p, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return _TORCHSCRIPT
        if any(n.endswith("data.pkl") for n in names):
            return _PICKLE_ZIP
        return "a zip archive without a data.pkl record, so not a PyTorch checkpoint"
    if head.startswith(b"PK\x03\x04"):
        return "a damaged zip archive (it starts like one but its directory cannot be read: it is probably truncated)"
    if head == _LEGACY_MAGIC:
        return _LEGACY
    if head[:1] == b"\x80":
        return "a plain pickle (pickle.dump, not torch.save), which is not unpickled here"
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= p.stat().st_size:
        return _SAFETENSORS
    return _NOT_A_CHECKPOINT


_WEIGHTS_ONLY_PREAMBLE = re.compile(r".*(?:WeightsUnpickler error: |from a trusted source\. )")


def _reason(e: BaseException) -> str:
    """The whole message of ``e`` as one line of full sentences."""
    text = " ".join(str(e).split())
    if isinstance(e, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
        # torch's reason, without its advice to load with weights_only=False (which runs the file's code)
        text = _WEIGHTS_ONLY_PREAMBLE.sub("", text, count=1).split(" Check the documentation of torch.load")[0]
        text = f"PyTorch's weights-only unpickler refused it: {text.rstrip('.')}. Nothing in a checkpoint is run"
    elif not isinstance(e, ValueError):
        text = f"{type(e).__name__}: {text}"
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# -- TorchScript archives, read as data ------------------------------------------------------------

# storage types whose names are not their dtypes' (``torch.FloatStorage`` is ``torch.float``, and so on)
_STORAGE_DTYPES = {"CharStorage": "int8", "ByteStorage": "uint8", "ComplexHalfStorage": "complex32",
                   "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8"}


def _view(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor(_v2)``: a tensor is a strided view of a flat storage."""
    if not isinstance(storage, Tensor):
        raise pickle.UnpicklingError(f"a tensor is built on a {_describe(storage)}, not on a storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _view_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_):
    """``torch._utils._rebuild_tensor_v3``: the same on an untyped storage, with the dtype given."""
    return _view(storage.view(torch.uint8).view(dtype), offset, size, stride)


# the only globals an archive's pickle gets, with the storage types (as their dtypes) and dtypes
_ARCHIVE_GLOBALS = {"collections.OrderedDict": OrderedDict, "torch._utils._rebuild_tensor": _view,
                    "torch._utils._rebuild_tensor_v2": _view, "torch._utils._rebuild_tensor_v3": _view_v3}


class _ArchiveUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl``: tensors are views of the storages in its ``data/``
    records, every other global (the archive's ``__torch__`` classes, or anything else) is an inert
    stand-in that records its state. No TorchScript class is instantiated, nothing is run."""

    def __init__(self, z: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(z.read(prefix + "data.pkl")))
        self.z, self.prefix, self.storages, self.stand_ins = z, prefix, {}, {}

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key in _ARCHIVE_GLOBALS:
            return _ARCHIVE_GLOBALS[key]
        if module == "torch":  # FloatStorage -> torch.float, float16 -> torch.float16; no lazy imports
            dtype = torch.__dict__.get(_STORAGE_DTYPES.get(name, name.removesuffix("Storage").lower()))
            if isinstance(dtype, torch.dtype):
                return dtype
        if key not in self.stand_ins:
            self.stand_ins[key] = _inert(key)
        return self.stand_ins[key]

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            info, nbytes = self.z.getinfo(f"{self.prefix}data/{key}"), numel * dtype.itemsize
            if info.file_size != nbytes:
                raise ValueError(f"storage {key} has {info.file_size} bytes where its tensors need {nbytes}")
            buf = bytearray(nbytes)
            with self.z.open(info) as f:  # checks the record's CRC
                f.readinto(buf)
            self.storages[key] = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        return self.storages[key]


_CLASS_RE = re.compile(r"^class (\w+)\(Module\):\n((?:(?:  .*)?\n)*)", re.M)
_SLOTS_RE = re.compile(r"^  (__parameters__|__buffers__) = \[(.*)\]", re.M)


def _module_classes(z: zipfile.ZipFile, prefix: str) -> Dict[str, dict]:
    """``{qualified name: {"__parameters__": [...], "__buffers__": [...], "__setstate__": bool}}`` of the
    archive's module classes, read as text from its ``code/`` records (never run)."""
    classes = {}
    for n in z.namelist():
        if n.startswith(prefix + "code/") and n.endswith(".py"):
            module = n[len(prefix) + len("code/"):-len(".py")].replace("/", ".")
            for m in _CLASS_RE.finditer(z.read(n).decode("utf-8")):
                info = {k: re.findall(r'"([^"]*)"', v) for k, v in _SLOTS_RE.findall(m.group(2))}
                info["__setstate__"] = re.search(r"^  def __setstate__\(", m.group(2), re.M) is not None
                classes[f"{module}.{m.group(1)}"] = info
    return classes


def _archive_state_dict(obj, classes: Dict[str, dict], prefix: str = "", above=()) -> Dict[str, Tensor]:
    """What ``torch.jit.load(f).state_dict()`` gives, from the modules' recorded states: each module's
    parameters, then its buffers (as its class lists them; plain tensor attributes such as CLIP's
    ``attn_mask`` are neither), then its submodules' under ``name.``."""
    where = f"submodule {prefix[:-1]}" if prefix else "the archive's root object"
    info = classes.get(getattr(type(obj), "qualname", None))
    if info is None:
        raise ValueError(f"{where} is a {_describe(obj)}, not a TorchScript module")
    if info["__setstate__"] or not isinstance(obj.state, dict):
        raise ValueError(f"{where} is a {_describe(obj)}, whose own __setstate__ code torch.jit.load would run to "
                         "restore it; archives are read as data here and nothing in them is run")
    out, above = {}, above + (obj,)
    for group in ("__parameters__", "__buffers__"):
        names = set(info.get(group, ()))
        for k, v in obj.state.items():
            if k in names and v is not None:
                if not isinstance(v, Tensor):
                    raise ValueError(f"{prefix}{k} is stored as a {_describe(v)}, not as a tensor")
                out[prefix + k] = v
    for k, v in obj.state.items():
        if getattr(type(v), "qualname", None) in classes:
            if any(v is a for a in above):
                raise ValueError(f"{prefix}{k} contains itself")
            out.update(_archive_state_dict(v, classes, f"{prefix}{k}.", above))
    return out


def _read_torchscript(p: Path) -> Dict[str, Tensor]:
    """The state dict of a TorchScript archive, read without ``torch.jit.load``."""
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"it has {len(pkl)} top-level data.pkl records where a TorchScript archive has one")
        prefix = pkl[0][: -len("data.pkl")]
        order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if order != sys.byteorder:
            raise ValueError(f"its tensors are stored {order}-endian and this machine is {sys.byteorder}-endian")
        root = _ArchiveUnpickler(z, prefix).load()
        return _archive_state_dict(root, _module_classes(z, prefix))


# -- torch.save pickles ----------------------------------------------------------------------------

def _foreign_globals(p: Path, kind: str) -> List[str]:
    """The globals a ``torch.save`` pickle names that ``weights_only`` loading does not allow (e.g. the
    release's config class); for a legacy file, the globals of its pickles outside torch."""
    if kind == _PICKLE_ZIP:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
    names = set()
    with open(p, "rb") as f:
        for _ in range(4):  # magic number, protocol, system info, then the checkpoint (its storages follow)
            if not f.peek(1):
                break
            try:
                found = [arg.split(" ", 1) for op, arg, _ in pickletools.genops(f) if op.name in ("GLOBAL", "INST")]
            except ValueError as e:
                raise ValueError(f"Its pickles cannot be parsed ({e}): the file is damaged or truncated") from e
            for module, name in found:  # protocol 2 names Python 2's modules; map them as torch does
                module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
                names.add(f"{module}.{name}")
    return sorted(n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict")


def _load_weights_only(p: Path, kind: str):
    """``torch.load(weights_only=True)``, with an inert stand-in allowed for each other global the file
    names, so objects pickled beside the weights load as inert records; torch still refuses the modules
    it blocks (``os``, ``sys``...)."""
    stand_ins = [(_weights_only_stand_in(n), n) for n in _foreign_globals(p, kind)]
    with torch.serialization.safe_globals(stand_ins), open(p, "rb") as f:  # a file: torch.load goes by content
        return torch.load(f, map_location="cpu", weights_only=True)


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a local checkpoint into a flat state dict on the CPU. Raises ``ValueError`` saying what the
    file is, why it cannot be read and what to do."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p} (pretrained= takes a local file path; nothing is downloaded)")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {p} is empty (0 bytes)")
    kind = "a file"
    try:  # whatever goes wrong reading an untrusted file makes it unreadable; the cause is chained
        kind = _detect(p)
        if kind == _SAFETENSORS:
            from safetensors.torch import load_file

            return unwrap_state_dict(load_file(str(p), device="cpu"))
        if kind == _TORCHSCRIPT:
            return unwrap_state_dict(_read_torchscript(p))
        if kind in (_PICKLE_ZIP, _LEGACY):
            return unwrap_state_dict(_load_weights_only(p, kind))
        raise ValueError("It cannot be read as a safetensors file, a TorchScript archive or a torch.save pickle")
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {p}: it is {kind}. {_reason(e)} {_ADVICE}") from e


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
    shape differs (other than the classifier, which is re-initialised with a logged warning when the
    class count differs). Nothing is loaded unless all checks pass.
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

    reinit, head_counts = [], None
    head_in_ckpt = sorted(k for k in head if k in sd)
    if head_in_ckpt and any(sd[k].shape != own[k].shape for k in head_in_ckpt):
        reinit = sorted(head)
        head_counts = sd[head_in_ckpt[0]].shape[0], own[head_in_ckpt[0]].shape[0]  # weight and bias: dim 0
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
    if head_counts:  # a warning, so that it shows even where no logging is configured
        log.warning("%s: the classifier of checkpoint %s (%s) has %d classes and the model %d; it is re-initialised "
                    "(random) and has to be trained, the rest of the checkpoint is loaded", name, source,
                    ", ".join(head_in_ckpt), *head_counts)
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
