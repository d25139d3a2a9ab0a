"""What the labels of a dataset mean: the class names of each head, and the left/right flip pairs.

:func:`tada.data.load_annotations` returns a :class:`LabelSpace` beside the samples; the head width,
the task (loss, metrics), ``tada data inspect`` and ``tada predict`` all read it, so no code has to
guess from the shape of a name list whether it holds one head or two.

    LabelSpace.single(["abseiling", "air drumming"])          # one head, Kinetics-style
    LabelSpace.verb_noun(verbs, nouns)                        # Epic-Kitchens: heads "verb" and "noun"
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

__all__ = ["LabelSpace"]


@dataclass(frozen=True)
class LabelSpace:
    """``heads``: head names; ``names``: class names per head; ``flip_pairs``: class ids of one head
    that swap under a horizontal flip (SSV2's "left"/"right" classes). A sample's label is an ``int``
    for one head, a tuple of one id per head otherwise."""

    heads: Tuple[str, ...]
    names: Tuple[Tuple[str, ...], ...]
    flip_pairs: Tuple[Tuple[int, int], ...] = ()

    def __post_init__(self):
        if not self.heads or len(self.heads) != len(self.names):
            raise ValueError(f"a label space needs one list of class names per head, got heads {self.heads} "
                             f"and {len(self.names)} name lists")
        for pair in self.flip_pairs:
            if len(pair) != 2 or not all(0 <= c < len(self.names[0]) for c in pair):
                raise ValueError(f"flip pair {pair} is not two class ids below {len(self.names[0])}")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def single(cls, names: Iterable[str], flip_pairs: Iterable[Tuple[int, int]] = ()) -> "LabelSpace":
        return cls(("class",), (tuple(str(n) for n in names),), tuple(tuple(p) for p in flip_pairs))

    @classmethod
    def verb_noun(cls, verbs: Iterable[str], nouns: Iterable[str]) -> "LabelSpace":
        return cls(("verb", "noun"), (tuple(verbs), tuple(nouns)))

    @classmethod
    def from_parser(cls, names: Union[Sequence[str], Tuple[Sequence[str], Sequence[str]]]) -> "LabelSpace":
        """From what a parser returns: a list of class names, or Epic-Kitchens' ``(verbs, nouns)`` tuple
        (the only place that tells them apart by shape)."""
        if isinstance(names, LabelSpace):
            return names
        if isinstance(names, tuple) and len(names) == 2 and all(isinstance(n, (list, tuple)) for n in names):
            return cls.verb_noun(*names)
        return cls.single(names)

    def with_flip_pairs(self, mapping: Mapping[int, int]) -> "LabelSpace":
        """The pairs of ``mapping`` (``{a: b, b: a}``) that exist in this label space."""
        n = len(self.names[0])
        pairs = sorted({tuple(sorted((a, b))) for a, b in mapping.items() if a < n and b < n})
        return replace(self, flip_pairs=tuple(pairs))

    # -- what consumers ask ---------------------------------------------------------------------
    @property
    def sizes(self) -> Tuple[int, ...]:
        return tuple(len(n) for n in self.names)

    @property
    def num_classes(self) -> int:
        """The width of one head covering every head's classes (Epic-Kitchens: verbs + nouns)."""
        return sum(self.sizes)

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1

    @property
    def class_names(self) -> List[str]:
        """The class names of a one-head label space."""
        if self.multi_head:
            raise ValueError(f"this label space has {len(self.heads)} heads ({', '.join(self.heads)}); "
                             "ask for names[i] of one head")
        return list(self.names[0])

    def flip_map(self) -> Dict[int, int]:
        return {**{a: b for a, b in self.flip_pairs}, **{b: a for a, b in self.flip_pairs}}

    def fits(self, label) -> bool:
        """Whether ``label`` (an int, or one id per head) names a class of this space."""
        if self.multi_head:
            return isinstance(label, (tuple, list)) and len(label) == len(self.heads) and all(
                0 <= int(v) < n for v, n in zip(label, self.sizes))
        return not isinstance(label, (tuple, list)) and 0 <= int(label) < self.sizes[0]

    def name_of(self, label) -> str:
        if self.multi_head:
            return "/".join(names[v] if 0 <= v < len(names) else str(v) for v, names in zip(label, self.names))
        return self.names[0][label] if 0 <= label < len(self.names[0]) else str(label)

    # -- files ----------------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {"heads": list(self.heads), "names": [list(n) for n in self.names],
                "flip_pairs": [list(p) for p in self.flip_pairs]}

    @classmethod
    def from_json(cls, data) -> "LabelSpace":
        """From :meth:`to_json`, or from the ``class_names`` of checkpoints written before label spaces
        (a list of names, or ``[verbs, nouns]``)."""
        if isinstance(data, Mapping):
            return cls(tuple(data["heads"]), tuple(tuple(n) for n in data["names"]),
                       tuple(tuple(p) for p in data.get("flip_pairs", ())))
        if data and all(isinstance(n, (list, tuple)) for n in data):
            return cls.verb_noun(*data) if len(data) == 2 else cls(
                tuple(f"head{i}" for i in range(len(data))), tuple(tuple(n) for n in data))
        return cls.single(data)
