"""Typed configs: dataclasses loaded from YAML, with ``key.sub=value`` overrides.

Every value is checked against its field's type when the config is built (``int``, ``float``,
``bool``, ``str``, ``Optional[...]``, ``Literal[...]``, tuples, lists, dicts and nested config
dataclasses); an unknown key is an error that names the closest valid key. A YAML file may start from
other files with ``_base_: [relative.yaml, ...]`` (merged in order, then the file's own values).
Value ranges and combinations (``train.eval_every >= 1``, ``optim.min_lr <= optim.lr``, ...) are
checked by :func:`validate` whenever a whole :class:`Config` is built, so a bad value fails at load
time naming its key; :func:`load_config` also checks that the device and the output folder are usable.

    cfg = load_config("configs/synth/tada2d_mini.yaml", ["optim.lr=0.05", "data.frames=8"])
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

__all__ = [
    "ConfigError",
    "TaskConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "Config",
    "load_config",
    "from_dict",
    "to_dict",
    "validate",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says which and what to do."""


@dataclasses.dataclass
class ModelConfig:
    name: str = "tada2d_r_mini"
    pretrained: Optional[str] = None
    num_classes: Optional[int] = None  # None: taken from the dataset's class count
    drop_path_rate: float = 0.0
    drop_rate: float = 0.5
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # further create_model overrides


@dataclasses.dataclass
class DataConfig:
    format: Literal["kinetics", "kinetics_csv", "ssv2", "ssv1", "epic", "ucf101", "hmdb51", "csv",
                    "folder"] = "kinetics"
    root: str = ""
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    class_names: Optional[str] = None  # kinetics / kinetics_csv / csv (default: a classes.txt beside the list)
    frames: int = 8
    sampling: Literal["interval", "segment"] = "interval"
    rate: int = 8
    target_fps: float = 30.0
    crop_size: int = 224
    train_scale: Optional[Tuple[float, float]] = (0.08, 1.0)  # RandomResizedCrop; None: short-side jitter
    short_side_range: Optional[Tuple[int, int]] = None  # TAda2D: (224, 340)
    flip: bool = True
    flip_label_map: Optional[str] = None  # "ssv2" swaps the left/right classes
    rand_augment: Optional[str] = None  # e.g. "rand-m9-n4-mstd0.5"
    grayscale_p: float = 0.0
    random_erasing_p: float = 0.0
    normalize: Literal["imagenet", "clip"] = "imagenet"
    test_clips: int = 1
    test_crops: int = 1
    test_short_side: int = 256
    test_crop_size: int = 256
    batch_size: int = 8  # per process
    num_workers: int = 2
    backend: Optional[str] = None
    max_retries: int = 10


@dataclasses.dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"  # adam: L2 weight decay in the gradient (BMN's recipe)
    lr: float = 0.1
    base_batch_size: Optional[int] = None  # if set, lr scales linearly with the global batch
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: Tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 1e-6
    min_lr: float = 0.0
    layer_decay: Optional[float] = None  # layer-wise lr decay (TAdaFormer: 0.7 B, 0.85 L)
    new_param_lr_mult: float = 1.0  # x lr for new TAda parameters and the head (TAdaFormer: 10)
    clip_grad: Optional[float] = None
    accum_steps: int = 1
    schedule: Literal["cosine", "step"] = "cosine"  # step: x gamma at each of milestones (epochs)
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    deterministic: bool = False
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: Optional[float] = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    grad_checkpoint: bool = False
    sync_bn: bool = False
    eval_every: int = 1  # epochs
    save_every: int = 0  # epochs; 0: only last and best
    log_every: int = 10  # iterations
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when there is one
    # true: continue from output_dir/last.pt when it exists (refused if the saved config differs);
    # false (or `tada train --overwrite`): start over, replacing what the folder holds
    resume: bool = True
    stop_after_steps: Optional[int] = None  # save last.pt and stop after this many steps (like a kill)
    dist_timeout: float = 1800.0  # seconds a collective waits for the other ranks before the run stops


@dataclasses.dataclass
class TaskConfig:
    # what a batch means, the loss, the metrics (tada.engine.tasks): classification | verb_noun | a
    # registered task; auto: verb_noun for a two-head label space (Epic-Kitchens), else classification
    name: str = "auto"
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the task's own options (its Options)


@dataclasses.dataclass
class Config:
    name: str = "default"
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


# -- typed construction ---------------------------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check ``value`` against type ``tp`` and return it (ints are accepted for floats, lists for tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def _unknown_key(cls, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
    full = f"{where}.{key}" if where else key
    return ConfigError(f"unknown config key {full!r}{hint}")


def from_dict(cls, data: Dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` from a (nested) mapping, checking every key and value (and, for a
    whole :class:`Config`, the value ranges: :func:`validate`)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in hints or key.startswith("_"):
            raise _unknown_key(cls, key, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    cfg = cls(**kwargs)
    if cls is Config:
        validate(cfg)
    return cfg


def to_dict(cfg) -> Dict[str, Any]:
    """A plain (YAML-safe) dict of a config; tuples become lists."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


# -- value ranges ---------------------------------------------------------------------------------

def _at_least(lo):
    return (lambda v: v >= lo), f">= {lo}"


def _above(lo):
    return (lambda v: v > lo), f"> {lo}"


_FRACTION = (lambda v: 0 <= v < 1), "in [0, 1)"
_PROBABILITY = (lambda v: 0 <= v <= 1), "in [0, 1]"

# dotted key -> (test, what the value must be); None (an option that is off) is never tested
_RULES = {
    "model.num_classes": _at_least(1), "model.drop_path_rate": _FRACTION, "model.drop_rate": _FRACTION,
    "data.frames": _at_least(1), "data.rate": _at_least(1), "data.target_fps": _above(0),
    "data.crop_size": _at_least(1), "data.test_short_side": _at_least(1), "data.test_crop_size": _at_least(1),
    "data.test_clips": _at_least(1), "data.test_crops": _at_least(1), "data.batch_size": _at_least(1),
    "data.num_workers": _at_least(0), "data.max_retries": _at_least(0),
    "data.train_scale": ((lambda v: 0 < v[0] <= v[1]), "two area fractions 0 < min <= max"),
    "data.short_side_range": ((lambda v: 1 <= v[0] <= v[1]), "two sizes 1 <= min <= max"),
    "data.grayscale_p": _PROBABILITY, "data.random_erasing_p": _PROBABILITY,
    "optim.lr": _at_least(0), "optim.base_batch_size": _at_least(1), "optim.weight_decay": _at_least(0),
    "optim.momentum": _FRACTION, "optim.betas": ((lambda v: all(0 <= b < 1 for b in v)), "two numbers in [0, 1)"),
    "optim.epochs": _at_least(1), "optim.warmup_epochs": _at_least(0), "optim.warmup_start_lr": _at_least(0),
    "optim.min_lr": _at_least(0), "optim.layer_decay": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "optim.new_param_lr_mult": _above(0), "optim.clip_grad": _above(0), "optim.accum_steps": _at_least(1),
    "optim.gamma": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "optim.milestones": ((lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v))),
                         "increasing epochs >= 1"),
    "train.label_smoothing": _FRACTION, "train.mixup_alpha": _at_least(0), "train.cutmix_alpha": _at_least(0),
    "train.ema_decay": ((lambda v: 0 < v < 1), "in (0, 1)"), "train.eval_every": _at_least(1),
    "train.save_every": _at_least(0), "train.log_every": _at_least(1), "train.stop_after_steps": _at_least(1),
    "train.dist_timeout": _above(0),
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _yaml_value(v) -> str:
    return "null" if v is None else f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)


def validate(cfg: Config) -> Config:
    """Check the value ranges and combinations that the type alone cannot (``train.eval_every >= 1``,
    ``optim.min_lr <= optim.lr``, ...): a bad value is a :class:`ConfigError` when the config is
    loaded, naming the key, instead of a ZeroDivisionError in the trainer."""
    defaults = Config()
    for key, (ok, rule) in _RULES.items():
        value = _get(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={_yaml_value(value)}: must be {rule}; change it in the config or override "
                              f"it (the default is {key}={_yaml_value(_get(defaults, key))})")
    o = cfg.optim
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr} is above optim.lr={o.lr}: the schedule decays from lr down to "
                          "min_lr; set optim.min_lr <= optim.lr (e.g. optim.min_lr=0)")
    if not cfg.train.output_dir.strip():
        raise ConfigError("train.output_dir is empty; set it to the folder for checkpoints and logs")
    return cfg


def _check_machine(cfg: Config) -> None:
    """What depends on this machine, checked when a config is loaded to run (not when a checkpoint's
    config is read back elsewhere): the device exists, the output folder can be a folder."""
    import torch

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but torch sees no CUDA device on this machine; use train.device=cpu "
                          "or train.device=auto (the GPU when there is one)")
    out = Path(cfg.train.output_dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"train.output_dir={cfg.train.output_dir}: {existing} is a file, not a folder; "
                          "choose another train.output_dir")


# -- files and overrides --------------------------------------------------------------------------

def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"config {path}: _base_ must be a file name or a list of file names (relative to "
                          f"{path.parent}), got {bases!r}")
    merged: Dict[str, Any] = {}
    for b in bases:
        if not (path.parent / b).is_file():
            raise ConfigError(f"config {path}: its _base_ {b!r} was not found (looked for "
                              f"{(path.parent / b).resolve()}; _base_ paths are relative to the including file)")
        merged = _merge(merged, _read_yaml(path.parent / b, seen + (path,)))
    return _merge(merged, data)


def _set_path(data: Dict[str, Any], dotted: str, value) -> None:
    cls, node, parts = Config, data, dotted.split(".")
    where = ""
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(cls, part, where)
        where = f"{where}.{part}" if where else part
        if i == len(parts) - 1:
            node[part] = value
            return
        tp = hints[part]
        if tp is Dict[str, Any] or typing.get_origin(tp) in (dict, Dict):  # free-form: model.kwargs.x=1
            sub = node.setdefault(part, {})
            sub[".".join(parts[i + 1:])] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{where} is a {_type_name(tp)}, it has no sub-key {parts[i + 1]!r}")
        cls, node = tp, node.setdefault(part, {})


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML: ``0.1``, ``true``, ``[224, 340]``, ``null``)."""
    data = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value: {e}") from e
        _set_path(data, key.strip(), value)
    return data


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML recipe (or start from defaults when ``path`` is None), apply overrides, type-check
    and :func:`validate`; also check that the device and the output folder can be used here."""
    data = _read_yaml(Path(path)) if path is not None else {}
    cfg = from_dict(Config, apply_overrides(data, overrides))
    _check_machine(cfg)
    return cfg
