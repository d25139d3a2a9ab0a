"""A synthetic compositional zero-shot benchmark: classes are sentences whose words combine.

Each class is one combination of a colour, a shape and a motion, named by the template
:data:`TEMPLATE`, ``"{article} {colour} {shape} {motion}"`` -- e.g. ``"a red square moving left"``
(``"an"`` before a vowel). Its videos show exactly that: one object of that shape, in that colour, doing
that motion on the textured backgrounds of :mod:`tada.data.synth`. Motions are the classes of
:mod:`tada.data.synth` written with spaces (``"moving left"`` is ``moving_left``), rendered the same
way: a video of the second class of a time-reversal pair (``moving left``, ``moving up``,
``shrinking``) is the time-reversed rendering of an independent draw of the first (``moving right``,
``moving down``, ``growing``), so only the order of the frames tells a pair apart.

What differs from :mod:`tada.data.synth` so that the words are visible:

- the object's colour is the named palette colour (:data:`COLOURS`) jittered by at most
  ±:data:`COLOUR_JITTER` per channel, and both background colours lie at least
  ``synth.MIN_COLOR_DISTANCE`` (RGB distance) from *every* colour of the dataset (the best of
  :data:`BACKGROUND_TRIES` draws when no draw is that far, as with many colours): the background
  never looks like a colour word, and its distribution is the same for every class;
- the object is upright (tilted by at most ±:data:`MAX_TILT_DEG`) unless it rotates, so that a
  square does not turn into a diamond.

The split is over *class combinations* (the "seen / held-out split"): a model trains on the seen
classes and is evaluated zero-shot on the held-out ones, whose every word (colour, shape, motion)
occurs in some seen class. Combinations are grouped in *cells* (one colour, one shape, and a
time-reversal pair of motions, or a motion without its partner). A held-out class is either

- ``direction_only``: its mirror (the same colour and shape with the reversed motion) is seen, so it
  differs from a seen class only in the direction of time -- a frame-order-blind model cannot tell
  it from its mirror; or
- a new combination: its whole cell is held out (e.g. neither "a red square moving left" nor "a red
  square moving right" is seen; its words, and with the defaults every pair of them, are).

:func:`split_classes` holds out ``round(held_out * N)`` of the ``N`` combinations (default a third),
``round(direction_only * that)`` of them direction-only (default half; parity is adjusted), and
chooses them deterministically from ``seed``: :data:`SPLIT_STARTS` random splits, each improved by
:data:`SPLIT_STEPS` local moves (swap two cells' roles, or flip which class of a direction-only cell
is held out), minimise -- in this order -- any word left unseen (must be none), the spread of held-out
counts per colour, per shape and per motion (max - min, summed), and the number of held-out classes
with a word pair (colour+shape, colour+motion, shape+motion) that no seen class has. With the
defaults (4 colours × 3 shapes × 6 motions = 72 classes) 24 are held out, 12 of them direction-only;
each colour has 6, each shape 8 and each motion 4 held out, and every word pair of a held-out class
occurs in a seen class (seeds 0, 1, 2).

Layout written under ``out`` (paths in the lists are relative to ``out``; each list has its own
``classes.txt`` beside it, which :func:`tada.data.datasets.load_annotations` reads for its label names,
so a config needs no ``data.class_names``)::

    videos/{slug}/{slug}_{i:04d}.mp4  slug: the words joined by underscores, "red_square_moving_left"
    seen/train.txt, seen/val.txt, seen/test.txt   Kinetics-style "path label" lines, seen classes
    seen/classes.txt                  the seen classes; line number (from 0) = label of the seen lists
    heldout/test.txt                  every video of the held-out classes
    heldout/classes.txt               the held-out classes; line number = label of heldout/test.txt
    classes.txt                       all classes (colour-major, then shape, then motion)
    classes_seen.txt, classes_heldout.txt   copies of seen/classes.txt and heldout/classes.txt
    compositional.json                settings, word lists, each class's words, the split, counts

A config trains on it with ``data.root=OUT data.train_list=seen/train.txt data.val_list=seen/val.txt
data.test_list=seen/test.txt`` (``data.class_names`` left unset, or ``classes_seen.txt``); zero-shot
evaluation reads ``heldout/test.txt`` with ``heldout/classes.txt`` (``classes_heldout.txt``).

Seen classes' videos are split ``split`` (train/val/test, per class, as :mod:`tada.data.synth`);
held-out classes' videos all go to ``heldout/test.txt``. Video ``i`` of a class is seeded by
``(seed, palette index of the colour, shape index, motion index, i)``: it does not depend on the
other shapes or motions asked for, nor on ``per_class`` -- only, through the background rule above,
on the set of colours. The same seed gives the same lists, split and decoded frames.

Default size: 72 classes × 30 videos (2,160 videos of 16 frames of 64×64 at 30 fps, 11 MB): written in
31 s on one core of a 2-core CPU (about 14 ms a video: NumPy rendering, then libx264).
``colours=("red", "blue"), shapes=("square", "circle"), per_class=3, frames=8, size=32`` makes a toy
copy (16 classes, 48 videos) in well under a second.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .synth import (
    FORWARD_CLASS, BG_CONTRAST, MIN_COLOR_DISTANCE, REVERSAL_PAIRS, SHAPES, SYNTH_CLASSES, ClipParams,
    RenderedClip, reverse_clip, split_counts, draw_params, render, write_video,
)

__all__ = [
    "COLOURS",
    "TEMPLATE",
    "DEFAULT_COLOURS",
    "DEFAULT_SHAPES",
    "DEFAULT_MOTIONS",
    "CompositionalClass",
    "CompositionalSplit",
    "class_name",
    "compositional_classes",
    "split_classes",
    "render_compositional_clip",
    "make_compositional_dataset",
]

log = logging.getLogger(__name__)

#: The palette: colour word -> nominal RGB. Any two are at least 120 apart (RGB distance).
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "cyan": (40, 200, 220),
    "magenta": (220, 50, 200),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
#: How class names are made from their words (``article`` is "an" before a vowel, else "a").
TEMPLATE = "{article} {colour} {shape} {motion}"
DEFAULT_COLOURS: Tuple[str, ...] = ("red", "green", "blue", "yellow")
DEFAULT_SHAPES: Tuple[str, ...] = ("square", "circle", "triangle")
DEFAULT_MOTIONS: Tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", "growing",
                                    "shrinking")
COLOUR_JITTER = 12.0  # per-channel uniform jitter of the object colour
MAX_TILT_DEG = 12.0  # the object's fixed tilt (non-rotating motions)
BACKGROUND_TRIES = 200
SPLIT_STARTS = 4  # random starts of the split search
SPLIT_STEPS = 600  # local moves per start
_SPLIT_STREAM = 7_000_001  # the split's RNG stream, apart from the videos' streams
_VIDEO_SPLIT_STREAM = 10**6  # as tada.data.synth: the per-class train/val/test permutation


@dataclasses.dataclass(frozen=True)
class CompositionalClass:
    """One combination of words and the class name made from it by :data:`TEMPLATE`."""

    colour: str
    shape: str
    motion: str  # a phrase: "moving left"

    @property
    def name(self) -> str:
        return class_name(self.colour, self.shape, self.motion)

    @property
    def slug(self) -> str:
        """The folder name of the class's videos: ``red_square_moving_left``."""
        return f"{self.colour} {self.shape} {self.motion}".replace(" ", "_")

    @property
    def synth_motion(self) -> str:
        """The :mod:`tada.data.synth` class of the motion (``moving_left``)."""
        return self.motion.replace(" ", "_")

    @property
    def mirror(self) -> Optional["CompositionalClass"]:
        """The same colour and shape with the time-reversed motion, or None for an unpaired motion."""
        for a, b in REVERSAL_PAIRS:
            if self.synth_motion in (a, b):
                other = b if self.synth_motion == a else a
                return CompositionalClass(self.colour, self.shape, other.replace("_", " "))
        return None


@dataclasses.dataclass(frozen=True)
class CompositionalSplit:
    """The seen / held-out split of a list of classes (each list in the classes' order)."""

    seen: Tuple[CompositionalClass, ...]
    heldout: Tuple[CompositionalClass, ...]
    direction_only: Tuple[CompositionalClass, ...]  # held out, mirror seen


def class_name(colour: str, shape: str, motion: str) -> str:
    """``"a red square moving left"``: the words through :data:`TEMPLATE`."""
    article = "an" if colour[:1].lower() in "aeiou" else "a"
    return TEMPLATE.format(article=article, colour=colour, shape=shape, motion=motion)


# --------------------------------------------------------------------------------------------------
# the classes and their split


def _check_words(kind: str, words: Sequence[str], known: Sequence[str]) -> List[str]:
    words = [str(w) for w in words]
    if not words:
        raise ValueError(f"{kind}: give at least one")
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    if len(set(words)) != len(words):
        raise ValueError(f"duplicate {kind} in {words}")
    return words


def compositional_classes(colours: Sequence[str] = DEFAULT_COLOURS, shapes: Sequence[str] = DEFAULT_SHAPES,
                          motions: Sequence[str] = DEFAULT_MOTIONS) -> List[CompositionalClass]:
    """Every combination, colour-major, then shape, then motion (the order of ``classes.txt``)."""
    colours = _check_words("colours", colours, list(COLOURS))
    shapes = _check_words("shapes", shapes, list(SHAPES))
    motions = _check_words("motions", motions, [c.replace("_", " ") for c in SYNTH_CLASSES])
    if "circle" in shapes and any(m.startswith("rotating") for m in motions):
        raise ValueError("a rotating circle looks the same in every frame; drop 'circle' or the rotating motions")
    return [CompositionalClass(c, s, m) for c, s, m in itertools.product(colours, shapes, motions)]


def _cells(classes: Sequence[CompositionalClass]) -> List[List[int]]:
    """Indices of the classes grouped in cells: a class and its mirror when both are present."""
    index = {c: i for i, c in enumerate(classes)}
    cells, done = [], set()
    for i, c in enumerate(classes):
        if i in done:
            continue
        j = index.get(c.mirror) if c.mirror is not None else None
        cell = [i] if j is None else sorted((i, j))
        done.update(cell)
        cells.append(cell)
    return cells


def _all_words_seen(classes: Sequence[CompositionalClass], held: set) -> bool:
    seen = [c for i, c in enumerate(classes) if i not in held]
    return all({getattr(c, k) for c in classes} == {getattr(c, k) for c in seen} for k in ("colour", "shape", "motion"))


def _split_score(classes: Sequence[CompositionalClass], held: set) -> Tuple[int, int]:
    """(spread of held-out counts per word, summed over colour/shape/motion; held-out classes with a word
    pair no seen class has)."""
    spread = 0
    for k in ("colour", "shape", "motion"):
        counts = {getattr(c, k): 0 for c in classes}
        for i in held:
            counts[getattr(classes[i], k)] += 1
        spread += max(counts.values()) - min(counts.values())
    seen = [c for i, c in enumerate(classes) if i not in held]
    pairs = {(k, a, b) for c in seen for k, a, b in _word_pairs(c)}
    uncovered = sum(any(p not in pairs for p in _word_pairs(classes[i])) for i in held)
    return spread, uncovered


def _word_pairs(c: CompositionalClass):
    return (("cs", c.colour, c.shape), ("cm", c.colour, c.motion), ("sm", c.shape, c.motion))


def _candidate(cells: List[List[int]], n_full: int, n_dir: int, rng: np.random.Generator) -> Optional[List[int]]:
    """A random cell state (:func:`_held`): whole cells worth ``n_full`` classes held out (1), one class of
    ``n_dir`` other paired cells (2: the first, 3: the second), the rest seen (0); None if impossible."""
    state = [0] * len(cells)
    order = rng.permutation(len(cells)).tolist()
    for k in order:
        if n_full >= len(cells[k]):
            state[k], n_full = 1, n_full - len(cells[k])
    free = [k for k in order if state[k] == 0 and len(cells[k]) == 2]
    if n_full or n_dir > len(free):
        return None
    for k in free[:n_dir]:
        state[k] = 2 + int(rng.integers(2))
    return state


def _held(cells: List[List[int]], state: Sequence[int]) -> set:
    held: set = set()
    for cell, s in zip(cells, state):
        held.update(cell if s == 1 else [cell[s - 2]] if s >= 2 else [])
    return held


def _neighbour(cells: List[List[int]], state: List[int], rng: np.random.Generator) -> List[int]:
    """A move that keeps the counts: flip a direction-only cell, or swap the states of two cells of the
    same size."""
    new = list(state)
    a = int(rng.integers(len(cells)))
    if new[a] >= 2 and rng.random() < 0.3:
        new[a] = 5 - new[a]
        return new
    same = [k for k in range(len(cells)) if len(cells[k]) == len(cells[a]) and new[k] != new[a]]
    if same:
        b = same[int(rng.integers(len(same)))]
        new[a], new[b] = new[b], new[a]
    return new


def _score(classes: Sequence[CompositionalClass], held: set) -> Tuple[int, int, int]:
    """(0 if every word is still seen else 1, spread, uncovered) -- smaller is better."""
    return (0 if _all_words_seen(classes, held) else 1, *_split_score(classes, held))


def split_classes(classes: Sequence[CompositionalClass], *, held_out: Union[float, Sequence[str]] = 1 / 3,
                  direction_only: float = 0.5, seed: int = 0) -> CompositionalSplit:
    """The seen / held-out split (see the module docstring).

    ``held_out``: the fraction of the classes to hold out, or the names of the classes to hold out.
    ``direction_only``: the share of the held-out classes whose mirror stays seen (with a fraction).
    Raises ValueError when no split keeps every word seen."""
    classes = list(classes)
    n = len(classes)
    if isinstance(held_out, (int, float)) and not isinstance(held_out, bool):
        held = _choose_split(classes, float(held_out), direction_only, seed)
    else:
        names = [str(h) for h in ([held_out] if isinstance(held_out, str) else held_out)]
        by_name = {c.name: i for i, c in enumerate(classes)}
        unknown = [h for h in names if h not in by_name]
        if unknown:
            raise ValueError(f"held_out names classes that are not in the dataset: {unknown}; classes are named "
                             f"like {classes[0].name!r}")
        held = {by_name[h] for h in names}
        if not held or len(held) >= n:
            raise ValueError(f"held_out must name between 1 and {n - 1} classes, got {len(held)}")
        if not _all_words_seen(classes, held):
            raise ValueError("held_out leaves a colour, shape or motion in no seen class; every word of a held-out "
                             "class must occur in some seen class")
    seen_set = {c for i, c in enumerate(classes) if i not in held}
    heldout = tuple(c for i, c in enumerate(classes) if i in held)
    return CompositionalSplit(
        seen=tuple(c for i, c in enumerate(classes) if i not in held), heldout=heldout,
        direction_only=tuple(c for c in heldout if c.mirror is not None and c.mirror in seen_set))


def _choose_split(classes: List[CompositionalClass], fraction: float, direction_only: float, seed: int) -> set:
    n = len(classes)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1) or a list of class names, got {fraction}")
    if not 0.0 <= direction_only <= 1.0:
        raise ValueError(f"direction_only must be in [0, 1], got {direction_only}")
    n_held = int(round(fraction * n))
    if not 1 <= n_held <= n - 1:
        raise ValueError(f"held_out={fraction} of {n} classes holds out {n_held}; need 1..{n - 1}")
    cells = _cells(classes)
    n_pairs = sum(len(c) == 2 for c in cells)
    n_dir = min(int(round(direction_only * n_held)), n_pairs)
    if not any(len(c) == 1 for c in cells) and (n_held - n_dir) % 2:
        # whole paired cells hold out two classes at a time: move one class to the direction-only side
        n_dir = n_dir + 1 if n_dir < min(n_pairs, n_held) else n_dir - 1
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    # A few random starts, each improved by local moves (accepted when not worse); the best end wins.
    best, best_score = None, None
    for _ in range(SPLIT_STARTS):
        state = _candidate(cells, n_held - n_dir, n_dir, rng)
        if state is None:
            break
        score = _score(classes, _held(cells, state))
        for _ in range(SPLIT_STEPS):
            if score == (0, 0, 0):
                break
            new = _neighbour(cells, state, rng)
            new_score = _score(classes, _held(cells, new))
            if new_score <= score:
                state, score = new, new_score
        if best_score is None or score < best_score:
            best, best_score = state, score
    if best is None or best_score[0]:
        raise ValueError(f"no split of these {n} classes holds out {n_held} ({n_dir} direction-only) with every "
                         "colour, shape and motion still seen; hold out fewer (held_out) or add words")
    return _held(cells, best)


# --------------------------------------------------------------------------------------------------
# rendering


def _background_colours(rng: np.random.Generator, palette: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two background colours (the second ``BG_CONTRAST`` of the way to a random one, as in synth) far
    from every palette colour: the first draw at least ``MIN_COLOR_DISTANCE`` away, else the farthest."""
    best, best_d = None, -1.0
    for _ in range(BACKGROUND_TRIES):
        a = rng.uniform(0.0, 255.0, size=3)
        b = a + BG_CONTRAST * (rng.uniform(0.0, 255.0, size=3) - a)
        d = float(min(np.linalg.norm(palette - a, axis=1).min(), np.linalg.norm(palette - b, axis=1).min()))
        if d > best_d:
            best, best_d = (a, b), d
        if d >= MIN_COLOR_DISTANCE:
            break
    return best


def render_compositional_clip(cls: CompositionalClass, seed: Union[int, Sequence[int], np.random.Generator], *,
                              frames: int = 16, size: int = 64,
                              colours: Sequence[str] = DEFAULT_COLOURS) -> RenderedClip:
    """Render one video of ``cls``: :func:`tada.data.synth.draw_params` of the forward motion with the
    class's shape and (jittered) colour, an upright object, backgrounds far from every colour of
    ``colours`` (the dataset's); time-reversed for the second motion of a pair."""
    if cls.colour not in COLOURS or cls.shape not in SHAPES or cls.synth_motion not in FORWARD_CLASS:
        raise ValueError(f"cannot render {cls}: colour, shape or motion unknown (see compositional_classes)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    forward = FORWARD_CLASS[cls.synth_motion]
    p: ClipParams = draw_params(forward, rng, frames=frames, size=size)
    colour = np.clip(np.asarray(COLOURS[cls.colour], float) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)
    palette = np.asarray([COLOURS[c] for c in dict.fromkeys([*colours, cls.colour])], float)
    bg_a, bg_b = _background_colours(rng, palette)
    angle = p.angle
    if p.motion != "rotate":
        angle = np.full(frames, np.deg2rad(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)))
    p = dataclasses.replace(p, shape=cls.shape, color=tuple(colour.tolist()),
                            bg_colors=(tuple(bg_a.tolist()), tuple(bg_b.tolist())), angle=angle)
    clip = render(p)
    return clip if forward == cls.synth_motion else reverse_clip(clip)


def _video_seed(seed: int, cls: CompositionalClass) -> List[int]:
    return [seed, list(COLOURS).index(cls.colour), SHAPES.index(cls.shape), SYNTH_CLASSES.index(cls.synth_motion)]


# --------------------------------------------------------------------------------------------------
# the dataset


def _check_sizes(per_class: int, frames: int, size: int, split: Tuple[float, float, float]) -> None:
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if per_class < 3:
        raise ValueError(f"per_class must be >= 3 (train, val and test videos of every seen class), got {per_class}")
    split_counts(per_class, split)  # raises when the split leaves no training video


def _write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def make_compositional_dataset(
    out: Union[str, Path],
    *,
    colours: Sequence[str] = DEFAULT_COLOURS,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    motions: Sequence[str] = DEFAULT_MOTIONS,
    per_class: int = 30,
    frames: int = 16,
    size: int = 64,
    fps: int = 30,
    seed: int = 0,
    held_out: Union[float, Sequence[str]] = 1 / 3,
    direction_only: float = 0.5,
    split: Tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: bool = False,
) -> Dict[str, Path]:
    """Write the compositional dataset under ``out`` (layout in the module docstring); return its paths:
    ``{"root", "train", "val", "test_seen", "test_heldout", "classes", "classes_seen", "classes_heldout",
    "meta"}``. ``held_out`` / ``direction_only``: see :func:`split_classes`; ``split``: train/val/test
    shares of each seen class's ``per_class`` videos."""
    _check_sizes(per_class, frames, size, split)
    classes = compositional_classes(colours, shapes, motions)
    parts = split_classes(classes, held_out=held_out, direction_only=direction_only, seed=seed)
    colours = [str(c) for c in colours]
    out = Path(out)
    t0 = time.perf_counter()
    jobs = [(c, i) for c in classes for i in range(per_class)]
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="tada synth --compositional", unit="video")
    for c, i in iterator:
        rel = out / _video_path(c, i)
        rel.parent.mkdir(parents=True, exist_ok=True)
        clip = render_compositional_clip(c, [*_video_seed(seed, c), i], frames=frames, size=size, colours=colours)
        write_video(rel, clip.frames, fps=fps)
    lists = _lists(parts, per_class, split, seed)
    paths = _write_files(out, classes, parts, lists)
    meta = _metadata(classes, parts, lists, dict(
        colours=colours, shapes=list(shapes), motions=list(motions), per_class=per_class, frames=frames,
        size=size, fps=fps, seed=seed, held_out=_held_out_setting(held_out),
        direction_only_fraction=direction_only, split=list(split)))
    paths["meta"] = out / "compositional.json"
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %d compositional videos (%d seen + %d held-out classes) to %s in %.1f s", len(jobs),
             len(parts.seen), len(parts.heldout), out, time.perf_counter() - t0)
    return paths


def _held_out_setting(held_out: Union[float, Sequence[str]]) -> Union[float, List[str]]:
    if isinstance(held_out, (int, float)) and not isinstance(held_out, bool):
        return float(held_out)
    return [held_out] if isinstance(held_out, str) else [str(h) for h in held_out]


def _video_path(c: CompositionalClass, i: int) -> str:
    return f"videos/{c.slug}/{c.slug}_{i:04d}.mp4"


def _lists(parts: CompositionalSplit, per_class: int, split: Tuple[float, float, float],
           seed: int) -> Dict[str, List[str]]:
    lists: Dict[str, List[str]] = {"train": [], "val": [], "test_seen": [], "test_heldout": []}
    n_train, n_val, _ = split_counts(per_class, split)
    for label, c in enumerate(parts.seen):
        order = np.random.default_rng([*_video_seed(seed, c), _VIDEO_SPLIT_STREAM]).permutation(per_class)
        chunks = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test_seen": order[n_train + n_val:]}
        for key, idx in chunks.items():
            lists[key] += [f"{_video_path(c, i)} {label}" for i in sorted(idx.tolist())]
    for label, c in enumerate(parts.heldout):
        lists["test_heldout"] += [f"{_video_path(c, i)} {label}" for i in range(per_class)]
    return lists


def _write_files(out: Path, classes: Sequence[CompositionalClass], parts: CompositionalSplit,
                 lists: Dict[str, List[str]]) -> Dict[str, Path]:
    seen, heldout = [c.name for c in parts.seen], [c.name for c in parts.heldout]
    paths: Dict[str, Path] = {"root": out}
    for key, rel in (("train", "seen/train.txt"), ("val", "seen/val.txt"), ("test_seen", "seen/test.txt"),
                     ("test_heldout", "heldout/test.txt")):
        paths[key] = _write_lines(out / rel, lists[key])
    _write_lines(out / "seen" / "classes.txt", seen)
    _write_lines(out / "heldout" / "classes.txt", heldout)
    paths["classes"] = _write_lines(out / "classes.txt", [c.name for c in classes])
    paths["classes_seen"] = _write_lines(out / "classes_seen.txt", seen)
    paths["classes_heldout"] = _write_lines(out / "classes_heldout.txt", heldout)
    return paths


def _metadata(classes: Sequence[CompositionalClass], parts: CompositionalSplit, lists: Dict[str, List[str]],
              settings: dict) -> dict:
    seen, heldout, direction = set(parts.seen), set(parts.heldout), set(parts.direction_only)
    entries = []
    for c in classes:
        mirror = c.mirror if c.mirror in set(classes) else None
        entries.append({
            "name": c.name, "colour": c.colour, "shape": c.shape, "motion": c.motion, "dir": f"videos/{c.slug}",
            "split": "seen" if c in seen else "heldout", "direction_only": c in direction,
            "mirror": mirror.name if mirror is not None else None,
            "label": parts.seen.index(c) if c in seen else parts.heldout.index(c),
        })
    return {
        **settings,
        "template": TEMPLATE,
        "palette": {c: list(COLOURS[c]) for c in settings["colours"]},
        "classes": entries,
        "seen": [c.name for c in parts.seen],
        "heldout": [c.name for c in parts.heldout],
        "direction_only": [c.name for c in parts.direction_only],
        "files": {"train": "seen/train.txt", "val": "seen/val.txt", "test_seen": "seen/test.txt",
                  "classes_seen": "seen/classes.txt", "test_heldout": "heldout/test.txt",
                  "classes_heldout": "heldout/classes.txt", "classes": "classes.txt"},
        "codec": "h264 (libx264, yuv420p, crf 18, preset medium, threads 1, no mbtree)",
        "counts": {**{k: len(v) for k, v in lists.items()}, "classes": len(classes), "classes_seen": len(seen),
                   "classes_heldout": len(heldout), "direction_only": len(direction)},
    }
