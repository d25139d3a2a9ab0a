"""Argument checks shared by the model families' constructors (clear ``ValueError`` at build time)."""
from __future__ import annotations

from typing import Any, Sequence, Tuple


def check_pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Sequence) -> Any:
    if value not in tuple(choices):
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(choices)}")
    return value


def check_pos_int_seq(value: Any, name: str) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return tuple(check_pos_int(v, f"{name}[{i}]") for i, v in enumerate(value))
