"""Tasks: what a batch means, the loss, what evaluation accumulates and reports.

=====================  ===================================================================
``classification``     one label per clip (Kinetics, SSV2, ...): :mod:`.classification`
``verb_noun``          Epic-Kitchens verb + noun heads, action accuracy: :mod:`.verb_noun`
``localization``       BMN on pre-extracted features, proposals and mAP: :mod:`.localization`
``video_text``         a video tower + CLIP's text tower, class names as text: :mod:`.video_text`
=====================  ===================================================================

Adding a task is one file: subclass :class:`~tada.engine.tasks.base.Task`, decorate it with
:func:`register_task`, import it here (or anywhere before the run is built), and select it with
``task.name=<name>`` (its own options go to ``task.kwargs``, checked against its ``Options``
dataclass).
"""
from __future__ import annotations

import difflib
from typing import Dict, Type

from .base import Accumulator, Task

__all__ = ["Task", "Accumulator", "register_task", "build_task", "list_tasks", "task_class"]

_TASKS: Dict[str, Type[Task]] = {}


def register_task(cls: Type[Task]) -> Type[Task]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _TASKS[cls.name] = cls
    return cls


def list_tasks():
    return sorted(_TASKS)


def _lookup(name: str) -> Type[Task]:
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"task.name={name!r} is not a registered task ({', '.join(list_tasks())}){hint}")
    return _TASKS[name]


def task_class(cfg) -> Type[Task]:
    """The class of the task ``cfg.task`` names, before its label space is known: its
    :meth:`~Task.build_dataset` makes the datasets the label space comes from (``auto``: the video
    tasks' datasets, which ``classification`` and ``verb_noun`` share)."""
    name = cfg.task.name
    return Task if name == "auto" else _lookup(name)


def build_task(cfg, labels) -> Task:
    """The task ``cfg.task`` names (``auto``: ``verb_noun`` for a two-head label space, else
    ``classification``) for label space ``labels``."""
    from ..config import from_dict

    name = cfg.task.name
    if name == "auto":
        name = "verb_noun" if labels.multi_head else "classification"
    cls = _lookup(name)
    if cls.Options is None:
        if cfg.task.kwargs:
            raise ValueError(f"task {name!r} takes no options, got task.kwargs={cfg.task.kwargs}")
        options = None
    else:
        options = from_dict(cls.Options, cfg.task.kwargs, "task.kwargs")
    return cls(labels, cfg, options)


from . import classification, localization, verb_noun, video_text  # noqa: E402,F401  (register the built-in tasks)
