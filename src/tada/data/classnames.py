"""Class names as text: the clean-up that turns dataset labels into words, prompt templates, and
class-name files.

Rules of :func:`clean_class_name`, in order:

1. underscores become spaces (``brush_hair`` -> ``brush hair``); hyphens, apostrophes and brackets
   stay (``t-shirt``, ``person's``, ``(not on a tie)`` are words already);
2. CamelCase is split where a lower-case letter is followed by an upper-case one (``ApplyEyeMakeup``
   -> ``Apply Eye Makeup``, ``YoYo`` -> ``Yo Yo``), and where a run of capitals is followed by a
   capitalised word (``BMXRiding`` -> ``BMX Riding``): an acronym stays one word instead of being
   spelled out letter by letter (``TV`` is never ``t v``), and digits stay with their neighbours
   (``3DPrinting`` -> ``3D Printing``);
3. white space is collapsed and trimmed;
4. everything is lower-cased (``lower=True``, the default; CLIP's tokenizer lower-cases anyway, so
   this only makes the cleaned names, the prompts and the reports agree).

Names that already are words (Kinetics' ``playing cello``, ``tying knot (not on a tie)``) only get
steps 3-4. No dictionary of per-dataset rewrites is applied: the result is what the dataset says, in
words (UCF101's ``Skijet`` stays ``skijet``); pass your own names (``--class-names``) to change them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Tuple, Union

__all__ = ["DEFAULT_TEMPLATES", "clean_class_name", "clean_class_names", "check_templates", "prompts",
           "read_class_names"]

#: the prompt templates of text-supervised training and zero-shot evaluation: a sentence and the bare name
DEFAULT_TEMPLATES: Tuple[str, ...] = ("a video of a person {}.", "{}")

_SEPARATORS = re.compile(r"_+")
_LOWER_UPPER = re.compile(r"(?<=[a-z])(?=[A-Z])")
_ACRONYM_WORD = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")
_CLASS_IND = re.compile(r"^(\d+)\s+(\S.*)$")


def clean_class_name(name: str, *, lower: bool = True) -> str:
    """A dataset label in words (the module docstring lists the rules): ``"ApplyEyeMakeup"`` ->
    ``"apply eye makeup"``, ``"brush_hair"`` -> ``"brush hair"``, ``"YoYo"`` -> ``"yo yo"``."""
    if not isinstance(name, str):
        raise ValueError(f"a class name must be a string, got {type(name).__name__} {name!r}")
    text = _SEPARATORS.sub(" ", name)
    text = _ACRONYM_WORD.sub(" ", _LOWER_UPPER.sub(" ", text))
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"class name {name!r} is empty after clean-up (only spaces or separators); "
                         "give every class a name")
    return text.lower() if lower else text


def clean_class_names(names: Sequence[str], *, lower: bool = True) -> List[str]:
    """:func:`clean_class_name` of each name; two names that become the same text are an error (their
    text embeddings would be identical, so the classes could not be told apart)."""
    out = [clean_class_name(n, lower=lower) for n in names]
    seen = {}
    for raw, text in zip(names, out):
        if text in seen:
            raise ValueError(f"class names {seen[text]!r} and {raw!r} both become {text!r} after clean-up; "
                             "rename one of them (or turn the clean-up off: clean_names=false)")
        seen[text] = raw
    return out


def check_templates(templates: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``templates`` as a tuple, each checked to hold exactly one ``{}`` (where the name goes)."""
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("no prompt templates given; use at least one, e.g. '{}' or 'a video of a person {}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"prompt template {t!r} must be a string with exactly one '{{}}' where the class "
                             "name goes, e.g. 'a video of a person {}.'")
    return templates


def prompts(name: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> List[str]:
    """``name`` put into every template (``"{}"`` is replaced literally: other braces in a template or
    a name stay as they are)."""
    return [t.replace("{}", name) for t in check_templates(templates)]


def read_class_names(path: Union[str, Path]) -> List[str]:
    """Class names from a text file: one name per line (blank lines and ``#`` comments skipped), or
    UCF101's ``classInd.txt`` layout ``<1-based id> <name>`` (every line so), ordered by id."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class-name file not found: {p} (one class name per line, or '<id> <name>' lines)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not a UTF-8 text file of class names ({e})") from e
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{p}: no class names in it (one name per line)")
    matches = [_CLASS_IND.match(ln) for ln in lines]
    if not all(matches):
        return lines
    ids = {}
    for m in matches:
        i = int(m.group(1))
        if i in ids:
            raise ValueError(f"{p}: id {i} is given twice ({ids[i]!r} and {m.group(2)!r})")
        ids[i] = m.group(2).strip()
    first = min(ids)
    if first not in (0, 1) or sorted(ids) != list(range(first, first + len(ids))):
        raise ValueError(f"{p}: '<id> <name>' lines must number the classes 1..N (or 0..N-1) without gaps; "
                         f"got ids {sorted(ids)[:5]}...")
    return [ids[i] for i in sorted(ids)]
