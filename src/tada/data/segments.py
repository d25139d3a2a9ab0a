"""Untrimmed videos and their labelled segments, for temporal action localisation.

Two sources, one in-memory form (:class:`UntrimmedVideo` holding :class:`Segment` s, times in seconds):

**ActivityNet-style JSON** (ActivityNet 1.3, HACS Segments v1.1.1 -- same layout; SPEC §5)::

    {"version": ..., "taxonomy": ..., "database": {
        "<video id>": {"duration": 120.5, "subset": "training" | "validation" | "testing",
                       "resolution"?: ..., "url"?: ..., "fps"?: 30.0,
                       "annotations": [{"segment": [start, end], "label": "Long jump"}, ...]}}}

Only ``database`` is required (HACS files and hand-made ones may lack ``version`` / ``taxonomy``).
Testing-subset videos may have no ``annotations`` (or an empty list). Extra keys are ignored; an
annotation may carry ``verb`` / ``noun`` integers (what :func:`write_activitynet_json` writes for
Epic-Kitchens segments).

Rules for segments, decided here once (the loader applies them, with the file, video id and annotation
index in every error):

* ``start < 0``, ``end < start`` (reversed), a non-number, ``NaN`` / ``Infinity``, a segment that is
  not two numbers, a label that is not a string: ``ValueError``.
* ``start == end`` (zero length): ActivityNet 1.3 has a few such annotations (e.g. ``ZZVrH3Hv1fM``
  ``[0, 0]``; about 0.3 % of its annotations are 0 or 0.01 s long, activitynet/ActivityNet issue #56).
  They are dropped with one warning per file by default (nothing can be learnt from them);
  ``keep_zero_length=True`` keeps them -- the detection evaluator does, because the official
  ActivityNet evaluation counts them as ground truth that no prediction can match.
* ``end > duration``: clipped to the duration (``clip_to_duration=True``, the default, one log line per
  file); a segment that then has ``start >= end`` (it starts at or after the end of the video) is an
  error. The evaluator passes ``clip_to_duration=False`` to score against the file as written, as the
  official evaluation does.

**Epic-Kitchens-100 CSVs** (``EPIC_100_{train,validation}.csv``, parsed by
:func:`tada.data.datasets.parse_epic_kitchens`): each row is a segment of its video with label
``"{verb_class},{noun_class}"`` and ``verb`` / ``noun`` set. Video durations come from
``EPIC_100_video_info.csv`` (``video_id,duration,fps,resolution``) or a mapping, else (with a warning)
from the last stop time of the video's segments.

Videos keep the file's order (a dict in insertion order), and segments their order in the file.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .datasets import _read_text, parse_epic_kitchens

__all__ = [
    "Segment",
    "UntrimmedVideo",
    "load_activitynet_json",
    "load_ek100_segments",
    "write_activitynet_json",
    "class_names",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Segment:
    """A labelled interval ``[start, end]`` in seconds. For Epic-Kitchens ``label`` is the action
    ``"verb_class,noun_class"`` (e.g. ``"3,12"``) and ``verb`` / ``noun`` hold the two classes.

    ``end > start`` for every segment the loaders return by default; ``end == start`` only with
    ``keep_zero_length=True`` (see the module docstring)."""

    start: float
    end: float
    label: str
    verb: Optional[int] = None
    noun: Optional[int] = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise ValueError(f"a segment needs finite times with end >= start, got [{self.start}, {self.end}]")
        if not isinstance(self.label, str):
            raise ValueError(f"a segment label must be a string, got {self.label!r}")

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class UntrimmedVideo:
    """One untrimmed video: its id, duration (seconds), subset (ActivityNet names: ``"training"``,
    ``"validation"``, ``"testing"``), segments in file order, and frame rate when known."""

    id: str
    duration: float
    subset: str
    segments: Tuple[Segment, ...]
    fps: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"video {self.id!r}: duration must be a positive number of seconds, got {self.duration}")


# --------------------------------------------------------------------------------------------------
# reading JSON


def _read_json(path: PathLike, what: str) -> Any:
    """The parsed JSON of ``path``: a missing file, non-UTF-8 bytes or invalid JSON are errors that name
    the file (and the line/column of a syntax error). Plain JSON only: nothing in it can run code."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); expected {what}") from None


def _short(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _number(value: Any, *, allow_str: bool = False) -> Optional[float]:
    """``value`` as a finite float (a number; with ``allow_str`` also a numeric string, as CSV cells and
    some HACS durations are); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
    elif allow_str and isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def _class_id(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


class _Notes:
    """Counts of the segments a loader clipped or dropped, logged once per file."""

    def __init__(self, path: PathLike):
        self.path = path
        self.clipped: List[str] = []
        self.dropped: List[str] = []

    def report(self) -> None:
        if self.dropped:
            log.warning("%s: dropped %d zero-length segment(s) (start == end), e.g. %s; pass "
                        "keep_zero_length=True to keep them", self.path, len(self.dropped), ", ".join(self.dropped[:3]))
        if self.clipped:
            log.info("%s: clipped the end of %d segment(s) to the video duration, e.g. %s",
                     self.path, len(self.clipped), ", ".join(self.clipped[:3]))


def _finish_segment(path: PathLike, tag: str, start: float, end: float, duration: float, *, clip: bool,
                    keep_zero: bool, notes: _Notes, **fields) -> Optional[Segment]:
    """Apply the module's segment rules to ``[start, end]`` of a video of ``duration`` seconds:
    a Segment, None (a dropped zero-length one) or a ValueError naming the file and ``tag`` (the
    video and annotation)."""
    where = f"{path}: {tag}"
    if start < 0:
        raise ValueError(f"{where}: segment [{start}, {end}] starts before 0")
    if end < start:
        raise ValueError(f"{where}: segment [{start}, {end}] ends before it starts (swap start and end?)")
    if end == start:
        if not keep_zero:
            notes.dropped.append(tag)
            return None
    elif clip and end > duration:
        if start >= duration:
            raise ValueError(f"{where}: segment [{start}, {end}] starts at or after the end of the video "
                             f"(duration {duration} s); fix the segment or the duration")
        notes.clipped.append(tag)
        end = duration
    return Segment(start, end, **fields)


def _parse_annotation(path: PathLike, tag: str, ann: Any, duration: float, *, clip: bool, keep_zero: bool,
                      notes: _Notes) -> Optional[Segment]:
    where = f"{path}: {tag}"
    if not isinstance(ann, dict):
        raise ValueError(f"{where}: expected an object {{\"segment\": [start, end], \"label\": str}}, "
                         f"got {_short(ann)}")
    seg = ann.get("segment")
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise ValueError(f"{where}: 'segment' must be two numbers [start, end] in seconds, got {_short(seg)}")
    start, end = _number(seg[0]), _number(seg[1])
    if start is None or end is None:
        raise ValueError(f"{where}: 'segment' must be two finite numbers [start, end], got {_short(seg)}")
    label = ann.get("label")
    if not isinstance(label, str):
        raise ValueError(f"{where}: 'label' must be a string (the class name), got {_short(label)}")
    extra = {}
    for key in ("verb", "noun"):
        if ann.get(key) is not None:
            v = _class_id(ann[key])
            if v is None or v < 0:
                raise ValueError(f"{where}: {key!r} must be a class id (an integer >= 0), got {_short(ann[key])}")
            extra[key] = v
    return _finish_segment(path, tag, start, end, duration, clip=clip, keep_zero=keep_zero, notes=notes,
                           label=label, **extra)


def _parse_video(path: PathLike, vid: str, entry: Any, *, clip: bool, keep_zero: bool,
                 notes: _Notes) -> UntrimmedVideo:
    where = f"{path}: video {vid!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with 'duration', 'subset' and 'annotations', "
                         f"got {_short(entry)}")
    if "duration" not in entry:
        raise ValueError(f"{where}: no 'duration' (seconds)")
    duration = _number(entry["duration"], allow_str=True)
    if duration is None or duration <= 0:
        raise ValueError(f"{where}: 'duration' must be a positive number of seconds, got {_short(entry['duration'])}")
    subset = entry.get("subset")
    if not isinstance(subset, str):
        raise ValueError(f"{where}: 'subset' must be a string (training / validation / testing), got {_short(subset)}")
    fps = None
    if entry.get("fps") is not None:
        fps = _number(entry["fps"])
        if fps is None or fps <= 0:
            raise ValueError(f"{where}: 'fps' must be a positive number, got {_short(entry['fps'])}")
    anns = entry.get("annotations")
    if anns is None:
        anns = []
    if not isinstance(anns, list):
        raise ValueError(f"{where}: 'annotations' must be a list of {{segment, label}} objects, "
                         f"got {type(anns).__name__}")
    segments = []
    for i, ann in enumerate(anns):
        s = _parse_annotation(path, f"video {vid!r} annotation {i}", ann, duration, clip=clip, keep_zero=keep_zero,
                              notes=notes)
        if s is not None:
            segments.append(s)
    return UntrimmedVideo(vid, duration, subset, tuple(segments), fps)


def load_activitynet_json(path: PathLike, subset: Optional[str] = None, *, clip_to_duration: bool = True,
                          keep_zero_length: bool = False) -> Dict[str, UntrimmedVideo]:
    """The videos of an ActivityNet 1.3 / HACS-style JSON, in file order; only those of ``subset``
    (e.g. ``"validation"``) when given. Every video is validated, whatever its subset. See the module
    docstring for the segment rules (clipping, zero-length segments)."""
    data = _read_json(path, "ActivityNet-style annotation JSON")
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ValueError(f"{path}: expected an ActivityNet-style JSON object with a 'database' mapping video ids "
                         "to {duration, subset, annotations}")
    notes = _Notes(path)
    videos: Dict[str, UntrimmedVideo] = {}
    for vid, entry in data["database"].items():
        v = _parse_video(path, vid, entry, clip=clip_to_duration, keep_zero=keep_zero_length, notes=notes)
        if subset is None or v.subset == subset:
            videos[vid] = v
    notes.report()
    if subset is not None and not videos and data["database"]:
        found = sorted({e.get("subset") for e in data["database"].values() if isinstance(e.get("subset"), str)})
        raise ValueError(f"{path}: no video of subset {subset!r}; the file has subsets {found}")
    return videos


# --------------------------------------------------------------------------------------------------
# Epic-Kitchens-100


def _read_video_info(video_info: Union[PathLike, Mapping[str, float]]
                     ) -> Tuple[Dict[str, float], Dict[str, float], str]:
    """``(durations, fps, source name)`` from ``EPIC_100_video_info.csv`` or a mapping id -> seconds."""
    if isinstance(video_info, Mapping):
        out = {}
        for vid, d in video_info.items():
            v = _number(d, allow_str=True)
            if v is None or v <= 0:
                raise ValueError(f"video_info[{vid!r}]: a duration must be a positive number of seconds, got {d!r}")
            out[str(vid)] = v
        return out, {}, "video_info"
    path = video_info
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such video info file (EPIC_100_video_info.csv)")
    durations: Dict[str, float] = {}
    fps: Dict[str, float] = {}
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if "video_id" not in header or "duration" not in header:
            raise ValueError(f"{path}:1: expected the header video_id,duration,fps,resolution; "
                             f"got {','.join(header)!r}")
        pos = {c: i for i, c in enumerate(header)}
        for n, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} comma-separated columns, got {','.join(row)!r}")
            vid = row[pos["video_id"]].strip()
            d = _number(row[pos["duration"]], allow_str=True)
            if d is None or d <= 0:
                raise ValueError(f"{path}:{n}: video {vid!r}: duration must be a positive number of seconds, "
                                 f"got {row[pos['duration']]!r}")
            durations[vid] = d
            if "fps" in pos:
                r = _number(row[pos["fps"]], allow_str=True)
                if r is None or r <= 0:
                    raise ValueError(f"{path}:{n}: video {vid!r}: fps must be a positive number, "
                                     f"got {row[pos['fps']]!r}")
                fps[vid] = r
    return durations, fps, str(path)


def load_ek100_segments(csv_path: PathLike, *, video_info: Union[None, PathLike, Mapping[str, float]] = None,
                        subset: str = "validation", keep_zero_length: bool = False
                        ) -> Dict[str, UntrimmedVideo]:
    """The videos of an ``EPIC_100_{train,validation}.csv`` as untrimmed videos of ``subset``, in the
    order they first occur. Each row is a Segment with label ``"{verb_class},{noun_class}"``, ``verb``
    and ``noun``. Durations (and fps) come from ``video_info`` (``EPIC_100_video_info.csv`` or a mapping
    video id -> seconds; a video missing from it is an error); without it, a video's duration is the
    last stop time of its segments (logged once). Segment rules as for ActivityNet JSON (end clipped to
    the duration, zero-length segments dropped unless ``keep_zero_length``)."""
    # ext="" makes every candidate path of the parser end in the bare video id
    samples, _ = parse_epic_kitchens(csv_path, ext="")
    if samples and samples[0].label == (-1, -1):
        raise ValueError(f"{csv_path}: no verb_class / noun_class columns (the test timestamps?); untrimmed "
                         "segments need the labelled EPIC_100_train.csv or EPIC_100_validation.csv")
    rows: Dict[str, List[Any]] = {}
    for s in samples:
        rows.setdefault(Path(s.path).name, []).append(s)
    if video_info is not None:
        durations, fps, source = _read_video_info(video_info)
        missing = [v for v in rows if v not in durations]
        if missing:
            raise ValueError(f"{csv_path}: video(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                             f"are not in {source}; give the matching EPIC_100_video_info.csv")
    else:
        durations = {v: max(s.end_sec for s in rs) for v, rs in rows.items()}
        fps = {}
        log.warning("%s: no video_info given, so each video's duration is the last stop time of its segments; "
                    "pass EPIC_100_video_info.csv for the true durations", csv_path)
    notes = _Notes(csv_path)
    videos: Dict[str, UntrimmedVideo] = {}
    for vid, rs in rows.items():
        segments = []
        for s in rs:
            verb, noun = s.label
            tag = f"video {vid!r} narration {s.meta.get('narration_id', '?')}"
            seg = _finish_segment(csv_path, tag, s.start_sec, s.end_sec, durations[vid], clip=True,
                                  keep_zero=keep_zero_length, notes=notes, label=f"{verb},{noun}", verb=verb, noun=noun)
            if seg is not None:
                segments.append(seg)
        videos[vid] = UntrimmedVideo(vid, durations[vid], subset, tuple(segments), fps.get(vid))
    notes.report()
    return videos


# --------------------------------------------------------------------------------------------------
# writing, class lists


def _annotation(s: Segment) -> Dict[str, Any]:
    out: Dict[str, Any] = {"segment": [s.start, s.end], "label": s.label}
    if s.verb is not None:
        out["verb"] = s.verb
    if s.noun is not None:
        out["noun"] = s.noun
    return out


def write_activitynet_json(videos: Mapping[str, UntrimmedVideo], path: PathLike, *, version: str = "tada") -> None:
    """Write ``videos`` in the ActivityNet layout (with the ``version`` and ``taxonomy`` keys the
    official tools require; ``fps`` and Epic-Kitchens ``verb`` / ``noun`` keys when set), atomically.
    :func:`load_activitynet_json` of the file gives back equal objects (times are written exactly)."""
    database = {}
    for vid, v in videos.items():
        entry: Dict[str, Any] = {"duration": v.duration, "subset": v.subset,
                                 "annotations": [_annotation(s) for s in v.segments]}
        if v.fps is not None:
            entry["fps"] = v.fps
        database[vid] = entry
    doc = {"version": version, "taxonomy": [], "database": database}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def class_names(videos: Union[Mapping[str, UntrimmedVideo], Iterable[UntrimmedVideo]]) -> List[str]:
    """The sorted distinct segment labels of ``videos``."""
    vs = videos.values() if isinstance(videos, Mapping) else videos
    return sorted({s.label for v in vs for s in v.segments})
