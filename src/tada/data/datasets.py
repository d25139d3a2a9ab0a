"""Annotation parsers for the formats users already have, and the clip dataset that reads them.

Every parser returns ``(samples, class_names)``: a list of :class:`Sample` whose ``path`` is relative
to the video root (as the annotation file writes it, or as the detected layout requires), and the
class names indexed by label id. A malformed line raises ``ValueError`` naming the file, the line
number and what was expected -- at build time, not in hour three.

===============  ===================================================================  ===============
format           annotation files                                                     parser
===============  ===================================================================  ===============
kinetics         ``path label`` lines (any Kinetics 400/600/700/710 list)             parse_kinetics_list
kinetics_csv     official ``label,youtube_id,time_start,time_end,split`` CSV          parse_kinetics_csv
ssv2             ``labels.json`` + ``train.json`` / ``validation.json``               parse_ssv2
ssv1             ``something-something-v1-{train,validation,labels}.csv``             parse_ssv1
epic             ``EPIC_100_{train,validation}.csv``                                  parse_epic_kitchens
ucf101           ``classInd.txt`` + ``trainlist0N.txt`` / ``testlist0N.txt``          parse_ucf101
hmdb51           ``{class}_test_split{N}.txt`` files (tags 1 train, 2 test)           parse_hmdb51
csv              ``path,label`` CSV (label an integer or a class name)                parse_csv
folder           ``root/{class}/*.mp4``                                               parse_folder
===============  ===================================================================  ===============

:func:`load_annotations` dispatches by name and :func:`detect_format` guesses the name from the file.

:class:`VideoClipDataset` turns samples into clips: it probes each video lazily, samples frame
indices (interval or segment sampling, within ``[start, end]`` for clips cut from longer videos),
decodes, and applies a transform. A video that cannot be read never ends a run: in training it is
logged, counted in ``dataset.failures`` and replaced by another random sample; at test time it comes
back as a zero clip with ``valid=False`` so batches still collate and the evaluator can exclude it.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .decode import VideoDecodeError, VideoInfo, probe, read_frames
from .labels import LabelSpace
from .sampling import interval_indices, segment_indices, test_views

__all__ = [
    "Sample",
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "parse_kinetics_list",
    "parse_kinetics_csv",
    "parse_ssv2",
    "parse_ssv1",
    "parse_epic_kitchens",
    "parse_ucf101",
    "parse_hmdb51",
    "parse_csv",
    "parse_folder",
    "parse_timestamp",
    "load_annotations",
    "detect_format",
    "VideoClipDataset",
    "collate_views",
    "count_invalid",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
PathLike = Union[str, os.PathLike]
Label = Union[int, Tuple[int, int]]


@dataclass
class Sample:
    """One annotated clip.

    ``path`` is relative to the dataset root (or absolute). ``label`` is a class id, or a
    ``(verb_class, noun_class)`` pair for Epic-Kitchens. A clip cut from a longer video is given by
    ``start_sec``/``end_sec`` (converted to frame indices with the video's probed fps; these win) or
    by ``start_frame``/``end_frame`` (inclusive frame indices of the file itself). ``meta`` keeps
    whatever else the annotation said (narration, youtube id, ...)."""

    path: str
    label: Label
    start_sec: Optional[float] = None
    end_sec: Optional[float] = None
    start_frame: Optional[int] = None
    end_frame: Optional[int] = None
    meta: dict = field(default_factory=dict)


def _malformed(file: PathLike, lineno: int, expected: str, got: Any) -> ValueError:
    return ValueError(f"{file}:{lineno}: malformed line, expected {expected}; got {got!r}")


def _read_text(file: PathLike) -> str:
    """The text of an annotation file: missing, binary or not-UTF-8 files are errors that say so."""
    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such annotation file") from None

    def where(pos: int) -> str:
        line = data.count(b"\n", 0, pos) + 1
        return f"{file}:{line}: byte {data[pos:pos + 1]!r} at offset {pos}"

    if b"\0" in data:
        raise ValueError(f"{where(data.index(0))}: a binary (or UTF-16) file, not a UTF-8 annotation list")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where(e.start)} is not UTF-8; annotation files must be UTF-8 -- convert it "
                         "(e.g. iconv -f latin1 -t utf-8)") from None
    return text.removeprefix("\ufeff")  # a byte-order mark, as spreadsheet programs write


def _read_lines(file: PathLike):
    """(line number from 1, stripped line) for every non-empty, non-comment line."""
    for n, line in enumerate(io.StringIO(_read_text(file), newline=None), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield n, line


def _read_class_names(names: Union[None, PathLike, Sequence[str]]) -> Optional[List[str]]:
    if names is None:
        return None
    if isinstance(names, (str, os.PathLike)):
        return [line for _, line in _read_lines(names)]
    return [str(n) for n in names]


def _known_class_names(file: PathLike, names: Union[None, PathLike, Sequence[str]]
                       ) -> Tuple[Optional[List[str]], str]:
    """The class names given, else those of a ``classes.txt`` beside ``file``, else None; and where
    they come from (for error messages)."""
    if names is not None:
        return _read_class_names(names), str(names) if isinstance(names, (str, os.PathLike)) else "class_names"
    sibling = Path(file).parent / "classes.txt"
    return (_read_class_names(sibling), str(sibling)) if sibling.is_file() else (None, "")


def _label_out_of_range(file: PathLike, lineno: int, label: int, names: List[str], source: str) -> ValueError:
    return ValueError(f"{file}:{lineno}: label {label} is out of range: {source} has {len(names)} class names "
                      f"(ids 0..{len(names) - 1}); fix the label or the class list")


def _inferred_names(file: PathLike, labels: Sequence[int]) -> List[str]:
    """``"0" .. str(max label)`` when no class names are known; sparse ids (more than half of
    0..max never used) are logged, as they usually mean a typo in a label."""
    top, used = max(labels, default=-1), len(set(labels))
    if top + 1 > 2 * used:
        log.warning("%s: labels run up to %d but only %d of the %d ids occur, so the model gets %d classes; "
                    "a typo in a label? Give the class names (data.class_names, or a classes.txt beside the "
                    "list) to check them", file, top, used, top + 1, top + 1)
    return [str(i) for i in range(top + 1)]


def _parse_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Kinetics


def parse_kinetics_list(file: PathLike, *, class_names: Union[None, PathLike, Sequence[str]] = None,
                        root: Optional[PathLike] = None) -> Tuple[List[Sample], List[str]]:
    """``path label`` per line (label an integer id; the path may contain spaces).

    Class names come from ``class_names`` (a list or a file with one name per line), else from a
    ``classes.txt`` next to the list; a label outside them is an error. Without either they are
    ``"0", "1", ...`` up to the largest label seen (so a K400 list gives 400 classes, K710 gives 710)."""
    names, source = _known_class_names(file, class_names)
    samples: List[Sample] = []
    for n, line in _read_lines(file):
        parts = line.rsplit(None, 1)
        label = _parse_int(parts[-1]) if len(parts) == 2 else None
        if label is None or label < 0:
            raise _malformed(file, n, "'<relative/path.mp4> <integer label >= 0>'", line)
        if names is not None and label >= len(names):
            raise _label_out_of_range(file, n, label, names, source)
        samples.append(Sample(parts[0], label))
    return samples, names if names is not None else _inferred_names(file, [s.label for s in samples])


def _detect_layout(root: Optional[PathLike], candidates: List[List[str]]) -> int:
    """Index of the layout (a list of candidate relative paths per sample, one per layout) under
    which most of the first few samples exist under ``root``; 0 when none exists."""
    if root is None or not candidates:
        return 0
    hits = Counter()
    for per_sample in candidates[:20]:
        for k, rel in enumerate(per_sample):
            if os.path.exists(os.path.join(root, rel)):
                hits[k] += 1
                break
    return hits.most_common(1)[0][0] if hits else 0


def parse_kinetics_csv(file: PathLike, *, root: Optional[PathLike] = None,
                       class_names: Union[None, PathLike, Sequence[str]] = None,
                       ext: str = ".mp4") -> Tuple[List[Sample], List[str]]:
    """The official ``label,youtube_id,time_start,time_end,split`` CSV.

    Files are ``{youtube_id}_{start:06d}_{end:06d}.mp4``, either directly under ``root`` or in class
    folders ``root/{label}/`` (spaces kept, or replaced by underscores) -- detected from the files under
    ``root`` (default: the CSV's folder). Class ids are the sorted class names (of ``class_names``
    when given, else of a ``classes.txt`` beside the CSV, so train and val CSVs share one mapping)."""
    root = Path(file).parent if root is None else root
    names, source = _known_class_names(file, class_names)
    rows = []
    with io.StringIO(_read_text(file), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return [], names or []
        cols = [h.strip() for h in header]
        need = ("label", "youtube_id", "time_start", "time_end")
        if not all(c in cols for c in need):
            raise _malformed(file, 1, "the header 'label,youtube_id,time_start,time_end,split'", ",".join(header))
        pos = {c: cols.index(c) for c in cols}
        for n, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            try:
                label = row[pos["label"]].strip()
                vid = row[pos["youtube_id"]].strip()
                start, end = int(float(row[pos["time_start"]])), int(float(row[pos["time_end"]]))
                split = row[pos["split"]].strip() if "split" in pos and pos["split"] < len(row) else ""
            except (IndexError, ValueError):
                raise _malformed(file, n, "'label,youtube_id,time_start,time_end,split' with integer times",
                                 ",".join(row)) from None
            if not vid:
                raise _malformed(file, n, "a non-empty youtube_id", ",".join(row))
            rows.append((n, label, vid, start, end, split))
    names = sorted(names) if names is not None else sorted({r[1] for r in rows if r[1]})
    index = {name: i for i, name in enumerate(names)}
    candidates = []
    for _, label, vid, start, end, _ in rows:
        fname = f"{vid}_{start:06d}_{end:06d}{ext}"
        candidates.append([fname, f"{label}/{fname}", f"{label.replace(' ', '_')}/{fname}"])
    layout = _detect_layout(root, candidates)
    samples = []
    for (n, label, vid, start, end, split), cand in zip(rows, candidates):
        if label and label not in index:
            raise ValueError(f"{file}:{n}: class {label!r} is not among the {len(names)} class names of {source}")
        samples.append(Sample(cand[layout], index[label] if label else -1,
                              meta={"youtube_id": vid, "time_start": start, "time_end": end, "split": split}))
    return samples, names


# --------------------------------------------------------------------------------------------------
# Something-Something


def parse_ssv2(file: PathLike, labels: Optional[PathLike] = None, *, ext: str = ".webm"
               ) -> Tuple[List[Sample], List[str]]:
    """SSV2 ``train.json`` / ``validation.json`` with ``labels.json`` (template -> id as a string).

    The label of an entry is the id of its ``template`` with the ``[...]`` brackets removed (that is
    how labels.json spells templates). Videos are ``{id}.webm``. Entries without a template (the
    unlabelled test set) get label -1."""
    labels = Path(file).parent / "labels.json" if labels is None else Path(labels)
    text = _read_text(labels)
    try:
        table = json.loads(text)
        template_to_id = {str(k): int(v) for k, v in table.items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"{labels}: expected a JSON object mapping templates to integer ids ({e})") from None
    names = [""] * (max(template_to_id.values(), default=-1) + 1)
    for template, i in template_to_id.items():
        names[i] = template
    try:
        entries = json.loads(_read_text(file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a JSON list of {{id, label, template, placeholders}} entries")
    samples = []
    for k, entry in enumerate(entries):
        where = f"{file}: entry {k}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{where}: expected an object with 'id' and 'template', got {entry!r}")
        if "template" in entry:
            template = str(entry["template"]).replace("[", "").replace("]", "")
            if template not in template_to_id:
                raise ValueError(f"{where}: template {entry['template']!r} is not in {labels}")
            label = template_to_id[template]
        else:
            label = -1
        samples.append(Sample(f"{entry['id']}{ext}", label,
                              meta={k2: entry[k2] for k2 in ("label", "placeholders") if k2 in entry}))
    return samples, names


def parse_ssv1(file: PathLike, labels: Optional[PathLike] = None) -> Tuple[List[Sample], List[str]]:
    """SSV1 ``something-something-v1-{train,validation}.csv`` (``id;label name``) with
    ``something-something-v1-labels.csv`` (one class name per line; id = line number from 0).
    Samples are frame folders ``{id}`` (``{id}/00001.jpg``, ...)."""
    labels = Path(file).parent / "something-something-v1-labels.csv" if labels is None else Path(labels)
    names = [line for _, line in _read_lines(labels)]
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for n, line in _read_lines(file):
        parts = line.split(";", 1)
        if len(parts) != 2 or not parts[0].strip():
            raise _malformed(file, n, "'<id>;<class name>'", line)
        vid, name = parts[0].strip(), parts[1].strip()
        if name not in index:
            raise _malformed(file, n, f"a class name listed in {labels}", line)
        samples.append(Sample(vid, index[name]))
    return samples, names


# --------------------------------------------------------------------------------------------------
# Epic-Kitchens-100

EPIC_COLUMNS = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes")
_TIMESTAMP = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def parse_timestamp(text: str) -> float:
    """``"HH:MM:SS.ff"`` -> seconds."""
    m = _TIMESTAMP.match(text.strip())
    if not m:
        raise ValueError(f"expected a timestamp 'HH:MM:SS.ff', got {text!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def parse_epic_kitchens(file: PathLike, *, root: Optional[PathLike] = None, ext: str = ".MP4"
                        ) -> Tuple[List[Sample], Tuple[List[str], List[str]]]:
    """``EPIC_100_{train,validation}.csv``: label = ``(verb_class, noun_class)``, clip = the
    start/stop timestamps of ``{participant}/{video_id}.MP4`` (also ``{participant}/videos/...``) or
    ``videos/{video_id}.MP4`` (detected under ``root``). Returns ``(samples, (verb_names,
    noun_names))``. A file without verb/noun columns (the test timestamps) gives label ``(-1, -1)``."""
    rows = []
    with io.StringIO(_read_text(file), newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        need = ("participant_id", "video_id", "start_timestamp", "stop_timestamp")
        if not all(c in header for c in need):
            raise _malformed(file, 1, "the EPIC-100 header (" + ",".join(EPIC_COLUMNS) + ")", ",".join(header))
        pos = {c: i for i, c in enumerate(header)}
        labelled = "verb_class" in pos and "noun_class" in pos
        for n, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise _malformed(file, n, f"{len(header)} comma-separated columns", ",".join(row))
            try:
                start = parse_timestamp(row[pos["start_timestamp"]])
                stop = parse_timestamp(row[pos["stop_timestamp"]])
                label = (int(row[pos["verb_class"]]), int(row[pos["noun_class"]])) if labelled else (-1, -1)
                sf = int(row[pos["start_frame"]]) if "start_frame" in pos else None
                ef = int(row[pos["stop_frame"]]) if "stop_frame" in pos else None
            except ValueError as e:
                raise _malformed(file, n, f"HH:MM:SS.ff timestamps and integer classes/frames ({e})",
                                 ",".join(row)) from None
            if stop < start:
                raise _malformed(file, n, "stop_timestamp >= start_timestamp", ",".join(row))
            if labelled and min(label) < 0:
                raise _malformed(file, n, "verb_class and noun_class >= 0", ",".join(row))
            rows.append((row, pos, start, stop, label, sf, ef))
    root = Path(file).parent if root is None else root
    candidates = []
    for row, pos, *_ in rows:
        p, v = row[pos["participant_id"]], row[pos["video_id"]]
        candidates.append([f"{p}/{v}{ext}", f"{p}/videos/{v}{ext}", f"videos/{v}{ext}", f"{v}{ext}"])
    layout = _detect_layout(root, candidates)
    verbs: Dict[int, str] = {}
    nouns: Dict[int, str] = {}
    samples = []
    for (row, pos, start, stop, label, sf, ef), cand in zip(rows, candidates):
        meta = {k: row[pos[k]] for k in ("narration_id", "narration", "verb", "noun") if k in pos}
        if labelled:
            verbs.setdefault(label[0], row[pos["verb"]] if "verb" in pos else str(label[0]))
            nouns.setdefault(label[1], row[pos["noun"]] if "noun" in pos else str(label[1]))
        # start_frame/stop_frame in the CSV count frames of the original (50/60 fps) videos; they are
        # kept in meta, and the clip is cut by time so any re-encoded copy works.
        meta.update({"csv_start_frame": sf, "csv_stop_frame": ef})
        samples.append(Sample(cand[layout], label, start_sec=start, end_sec=stop, meta=meta))

    def table(d: Dict[int, str]) -> List[str]:
        return [d.get(i, str(i)) for i in range(max(d, default=-1) + 1)]

    return samples, (table(verbs), table(nouns))


# --------------------------------------------------------------------------------------------------
# UCF101 / HMDB51


def parse_ucf101(file: PathLike, class_ind: Optional[PathLike] = None) -> Tuple[List[Sample], List[str]]:
    """A UCF101 ``trainlist0N.txt`` (``Class/v_Class_g08_c01.avi 1``, 1-based labels) or
    ``testlist0N.txt`` (no labels: the class is the folder) with ``classInd.txt`` (``1 ApplyEyeMakeup``).
    Labels are 0-based."""
    class_ind = Path(file).parent / "classInd.txt" if class_ind is None else Path(class_ind)
    ids: Dict[int, str] = {}
    for n, line in _read_lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or _parse_int(parts[0]) is None:
            raise _malformed(class_ind, n, "'<1-based id> <ClassName>'", line)
        ids[int(parts[0])] = parts[1]
    names = [ids.get(i + 1, "") for i in range(max(ids, default=0))]
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for n, line in _read_lines(file):
        parts = line.split()
        if len(parts) == 2 and _parse_int(parts[1]) is not None and 1 <= int(parts[1]) <= len(names):
            label = int(parts[1]) - 1
        elif len(parts) == 1 and "/" in parts[0] and parts[0].split("/")[0] in index:
            label = index[parts[0].split("/")[0]]
        else:
            raise _malformed(file, n, f"'Class/video.avi [1-based label <= {len(names)}]' with Class in {class_ind}",
                             line)
        samples.append(Sample(parts[0], label))
    return samples, names


_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")


def parse_hmdb51(path: PathLike, *, split: Optional[int] = None, subset: str = "train"
                 ) -> Tuple[List[Sample], List[str]]:
    """HMDB51 split files ``{class}_test_split{N}.txt`` (``name.avi 0|1|2``: 1 = train, 2 = test,
    0 = unused) in the folder ``path`` (or ``path`` is one of them: its folder and split number are
    used). ``subset``: ``"train"``, ``"test"`` or ``"all"`` (1 and 2). Classes are the sorted class
    names; videos are ``{class}/{name}``."""
    path = Path(path)
    if path.is_file():
        m = _HMDB_SPLIT.match(path.name)
        if not m:
            raise ValueError(f"{path}: expected a file named '{{class}}_test_split{{N}}.txt'")
        split = int(m.group("n")) if split is None else split
        path = path.parent
    split = 1 if split is None else split
    if subset not in ("train", "test", "all"):
        raise ValueError(f"subset must be 'train', 'test' or 'all', got {subset!r}")
    keep = {"train": {1}, "test": {2}, "all": {1, 2}}[subset]
    files = {}
    for f in path.iterdir():
        m = _HMDB_SPLIT.match(f.name)
        if m and int(m.group("n")) == split:
            files[m.group("cls")] = f
    if not files:
        raise ValueError(f"{path}: no '{{class}}_test_split{split}.txt' files found")
    names = sorted(files)
    samples = []
    for label, name in enumerate(names):
        for n, line in _read_lines(files[name]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _malformed(files[name], n, "'<video.avi> <0|1|2>'", line)
            if int(parts[1]) in keep:
                samples.append(Sample(f"{name}/{parts[0]}", label, meta={"tag": int(parts[1])}))
    return samples, names


# --------------------------------------------------------------------------------------------------
# generic


def parse_csv(file: PathLike, *, class_names: Union[None, PathLike, Sequence[str]] = None
              ) -> Tuple[List[Sample], List[str]]:
    """``path,label`` rows (an optional ``path,label`` header). Labels are either all integers or
    all class names; names map to ids by ``class_names`` (or a ``classes.txt`` beside the CSV) when
    given, else by sorted order. An integer label outside the known class names, or negative, is an error."""
    names, source = _known_class_names(file, class_names)
    rows = []
    with io.StringIO(_read_text(file), newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise _malformed(file, n, "'<path>,<label>' (label an integer id or a class name)", ",".join(row))
            rows.append((n, row[0].strip(), row[1].strip()))
    numeric = all(_parse_int(lab) is not None for _, _, lab in rows)
    if numeric and rows:
        for n, _, lab in rows:
            if int(lab) < 0:
                raise _malformed(file, n, "a label >= 0 (an integer id or a class name)", lab)
            if names is not None and int(lab) >= len(names):
                raise _label_out_of_range(file, n, int(lab), names, source)
        samples = [Sample(p, int(lab)) for _, p, lab in rows]
        return samples, names if names is not None else _inferred_names(file, [s.label for s in samples])
    names = sorted({lab for _, _, lab in rows}) if names is None else names
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for n, p, lab in rows:
        if lab not in index:
            raise _malformed(file, n, "a class name from the class list (labels must be all ids or all names)", lab)
        samples.append(Sample(p, index[lab]))
    return samples, names


def parse_folder(root: PathLike, *, extensions: Sequence[str] = VIDEO_EXTENSIONS
                 ) -> Tuple[List[Sample], List[str]]:
    """``root/{class}/*.mp4`` (any of ``extensions``): classes are the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: expected a folder with one sub-folder of videos per class")
    exts = {e.lower() for e in extensions}
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = []
    for label, name in enumerate(names):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in exts and not f.name.startswith("."):
                samples.append(Sample(f"{name}/{f.name}", label))
    if not samples:
        raise ValueError(f"{root}: no videos ({', '.join(sorted(exts))}) found in class sub-folders")
    return samples, names


# --------------------------------------------------------------------------------------------------
# dispatch

FORMATS: Dict[str, Callable[..., Tuple[List[Sample], Any]]] = {
    "kinetics": parse_kinetics_list,
    "kinetics_csv": parse_kinetics_csv,
    "ssv2": parse_ssv2,
    "ssv1": parse_ssv1,
    "epic": parse_epic_kitchens,
    "ucf101": parse_ucf101,
    "hmdb51": parse_hmdb51,
    "csv": parse_csv,
    "folder": parse_folder,
}


def _first_line(file: Path) -> str:
    for _, line in _read_lines(file):  # a missing, binary or non-UTF-8 file raises here, saying so
        return line
    raise ValueError(f"{file}: the annotation list is empty (no line that is not blank or a # comment)")


def detect_format(path: PathLike) -> str:
    """Guess the annotation format of ``path`` from its name, extension and first line."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such annotation list or folder")
    if path.is_dir():
        entries = list(path.iterdir())
        if any(_HMDB_SPLIT.match(e.name) for e in entries):
            return "hmdb51"
        if any(e.is_dir() for e in entries):
            return "folder"
        raise ValueError(f"{path}: cannot tell the format of this folder (neither HMDB51 split files "
                         "nor one sub-folder of videos per class)")
    if _HMDB_SPLIT.match(path.name):
        return "hmdb51"
    if re.match(r"^(train|test)list\d+\.txt$", name):
        return "ucf101"
    if name.startswith("something-something-v1-"):
        return "ssv1"
    if name.endswith(".json"):
        return "ssv2"
    first = _first_line(path)
    header = [c.strip().lower() for c in first.split(",")]
    if header[:1] == ["narration_id"] or {"video_id", "start_timestamp", "stop_timestamp"} <= set(header) \
            or name.startswith("epic_100"):
        return "epic"
    if {"label", "youtube_id", "time_start", "time_end"} <= set(header):
        return "kinetics_csv"
    if ";" in first and "," not in first and _parse_int(first.split(";")[0].strip()) is not None:
        return "ssv1"
    if name.endswith(".csv") or ("," in first and len(first.split(",")) == 2):
        return "csv"
    if len(first.rsplit(None, 1)) == 2 and _parse_int(first.rsplit(None, 1)[1]) is not None:
        return "kinetics"
    raise ValueError(f"{path}: cannot detect the annotation format (first line {first!r}); "
                     f"pass one of {sorted(FORMATS)}")


def load_annotations(path: PathLike, format: Optional[str] = None, *, root: Optional[PathLike] = None,
                     **kwargs) -> Tuple[List[Sample], LabelSpace]:
    """Parse ``path`` with the parser of ``format`` (detected when None) into ``(samples, label space)``.
    ``root`` is passed to the parsers that look at the video files to detect a layout; ``kwargs`` go to
    the parser."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such annotation list or folder")
    fmt = detect_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose one of {sorted(FORMATS)}")
    if fmt in ("kinetics_csv", "epic") and root is not None:
        kwargs.setdefault("root", root)
    samples, names = FORMATS[fmt](path, **kwargs)
    if not samples:
        raise ValueError(f"{path}: no samples in this {fmt} annotation list (is the file empty, or only "
                         "blank lines, comments or a header?)")
    return samples, LabelSpace.from_parser(names)


# --------------------------------------------------------------------------------------------------
# the dataset


def _to_float_clip(clip: torch.Tensor, label):
    """Default transform: uint8 (T, H, W, 3) -> float (3, T, H, W) in [0, 1]."""
    return clip.permute(3, 0, 1, 2).float().div_(255.0), label


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of videos for training or multi-view testing.

    Args:
        samples: from a parser (or :func:`load_annotations`).
        root: folder the sample paths are relative to (absolute paths are used as they are).
        frames: frames per clip (T).
        sampling: ``"interval"`` (T frames every ``rate`` frames at ``target_fps``; Kinetics) or
            ``"segment"`` (one frame per equal segment; SSV2, TAdaFormer).
        rate, target_fps: interval sampling's step, measured at ``target_fps``.
        train: random sampling and bad-video replacement; else deterministic test views.
        transform: ``transform(uint8 (T, H, W, 3), label) -> (float (3, T, H, W), label)``; or a
            sequence of them, one per spatial crop index (test views); None: scale to [0, 1].
        num_clips, num_crops: test views per video; ``len = len(samples) * num_clips * num_crops`` and
            item ``i`` is view ``i % (num_clips * num_crops)`` of sample ``i // (num_clips * num_crops)``.
            Ignored in training (one random clip per item).
        max_retries: in training, how many bad videos in a row are replaced before giving up.
        backend, decode_threads: passed to :func:`tada.data.decode.read_frames`.
        seed: None: training randomness comes from torch's RNG (which the DataLoader seeds per worker
            and per epoch); an int: from ``(seed, epoch, index, attempt)`` -- see :meth:`set_epoch`.
        fill_shape: shape of the zero clip returned for an unreadable video at test time; by default
            that of the first good clip this process produced (another sample is read if needed).

    Items are dicts ``{"video", "label", "index", "view", "valid", "replaced"}``: ``index`` is the
    sample index actually returned, ``view`` its ``(clip, crop)``, ``replaced`` the sample indices of
    the bad videos it stands in for. ``failures`` maps path -> reason for every bad video seen by this
    process (a DataLoader worker has its own copy; use ``replaced``/``valid`` of the items to count
    across workers).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        root: Optional[PathLike] = None,
        frames: int = 8,
        sampling: str = "interval",
        rate: int = 8,
        target_fps: float = 30.0,
        train: bool,
        transform: Union[None, Callable, Sequence[Callable]] = None,
        num_clips: int = 1,
        num_crops: int = 1,
        max_retries: int = 10,
        backend: Optional[str] = None,
        decode_threads: int = 0,
        seed: Optional[int] = None,
        fill_shape: Optional[Sequence[int]] = None,
    ):
        if sampling not in ("interval", "segment"):
            raise ValueError(f"sampling must be 'interval' or 'segment', got {sampling!r}")
        if frames < 1 or rate < 1 or num_clips < 1 or num_crops < 1 or max_retries < 0:
            raise ValueError(f"need frames, rate, num_clips, num_crops >= 1 and max_retries >= 0; got "
                             f"{frames}, {rate}, {num_clips}, {num_crops}, {max_retries}")
        if not samples:
            raise ValueError("VideoClipDataset needs at least one sample")
        if not isinstance(transform, (type(None),)) and not callable(transform):
            transform = list(transform)
            if len(transform) != num_crops:
                raise ValueError(f"got {len(transform)} transforms for {num_crops} crops; give one per crop index")
        self.samples = list(samples)
        self.root = None if root is None else os.fspath(root)
        self.frames, self.sampling, self.rate, self.target_fps = frames, sampling, rate, float(target_fps)
        self.train = bool(train)
        self.transform = transform
        self.num_clips, self.num_crops = (1, 1) if self.train else (num_clips, num_crops)
        self.views = [(0, 0)] if self.train else list(test_views(num_clips, num_crops))
        self.max_retries = max_retries
        self.backend, self.decode_threads = backend, decode_threads
        self.seed = seed
        self.epoch = 0
        self.fill_shape = None if fill_shape is None else tuple(int(s) for s in fill_shape)
        self.failures: Dict[str, str] = {}
        self._info: Dict[str, VideoInfo] = {}

    def __len__(self) -> int:
        return len(self.samples) * len(self.views)

    def set_epoch(self, epoch: int) -> None:
        """With an integer ``seed``, makes training randomness depend on the epoch."""
        self.epoch = int(epoch)

    # -- pieces ------------------------------------------------------------------------------------

    def path_of(self, index: int) -> str:
        p = self.samples[index].path
        return p if self.root is None or os.path.isabs(p) else os.path.join(self.root, p)

    def info(self, index: int) -> VideoInfo:
        """Probe result of sample ``index`` (cached in this instance)."""
        path = self.path_of(index)
        if path not in self._info:
            self._info[path] = probe(path, self.backend)
        return self._info[path]

    def _rng(self, index: int, attempt: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def frame_range(self, index: int) -> Tuple[int, int]:
        """Inclusive ``[first, last]`` frame indices the clip of sample ``index`` covers."""
        s, info = self.samples[index], self.info(index)
        n = int(info.num_frames)
        if n <= 0:
            raise VideoDecodeError(self.path_of(index), "video has no frames")
        first, last = 0, n - 1
        if s.start_sec is not None or s.end_sec is not None:
            if s.start_sec is not None:
                first = int(math.ceil(s.start_sec * info.fps - 1e-6))
            if s.end_sec is not None:
                last = int(math.floor(s.end_sec * info.fps + 1e-6))
        elif s.start_frame is not None or s.end_frame is not None:
            first = 0 if s.start_frame is None else int(s.start_frame)
            last = n - 1 if s.end_frame is None else int(s.end_frame)
        first = min(max(first, 0), n - 1)
        last = min(max(last, first), n - 1)
        return first, last

    def frame_indices(self, index: int, clip_index: int = 0, rng: Optional[np.random.Generator] = None
                      ) -> List[int]:
        """Frame indices of the clip (``clip_index`` of ``num_clips`` at test time)."""
        first, last = self.frame_range(index)
        n = last - first + 1
        common = dict(train=self.train, clip_index=clip_index, num_clips=self.num_clips, rng=rng)
        if self.sampling == "interval":
            rel = interval_indices(n, self.frames, self.rate, video_fps=float(self.info(index).fps),
                                   target_fps=self.target_fps, **common)
        else:
            rel = segment_indices(n, self.frames, **common)
        return [min(max(first + int(i), first), last) for i in rel]

    def _load(self, index: int, clip_index: int, rng) -> torch.Tensor:
        path = self.path_of(index)
        if path in self.failures:  # known bad in this process: do not decode it again
            raise VideoDecodeError(path, self.failures[path])
        if not os.path.exists(path):
            raise VideoDecodeError(path, "file not found")
        clip = read_frames(path, self.frame_indices(index, clip_index, rng), self.backend,
                           num_threads=self.decode_threads)
        if clip.ndim != 4 or clip.shape[0] != self.frames or clip.shape[-1] != 3 or clip.numel() == 0:
            raise VideoDecodeError(path, f"decoded an unexpected clip shape {tuple(clip.shape)}")
        return clip

    def _apply(self, clip: torch.Tensor, label, crop_index: int):
        t = self.transform
        if t is None:
            t = _to_float_clip
        elif not callable(t):
            t = t[crop_index]
        return t(clip, label)

    def _record_failure(self, index: int, err: Exception) -> None:
        path = self.path_of(index)
        reason = err.reason if isinstance(err, VideoDecodeError) else f"{type(err).__name__}: {err}"
        if path not in self.failures:
            self.failures[path] = reason
            log.warning("bad video %s (sample %d): %s", path, index, reason)

    def _read(self, index: int, clip_index: int, crop_index: int, rng):
        """(video, label) or raises for a bad video. Only reading is guarded, not the transform."""
        try:
            clip = self._load(index, clip_index, rng)
        except (VideoDecodeError, OSError, ValueError, EOFError, RuntimeError, IndexError) as e:
            self._record_failure(index, e)
            raise _BadVideo(index, self.failures[self.path_of(index)]) from e
        except Exception as e:  # noqa: BLE001 - any decoder error (av.error.*) is a bad file, not a bug here
            if type(e).__module__.split(".")[0] not in ("av", "torchcodec", "decord"):
                raise
            self._record_failure(index, e)
            raise _BadVideo(index, self.failures[self.path_of(index)]) from e
        if rng is not None and self.seed is not None:
            # torchvision's random transforms draw from torch's global RNG: give them one seeded from
            # (seed, epoch, index, attempt) too, so a clip's augmentation does not depend on which
            # process or worker loads it, or on what was loaded before (exact resume, DDP == 1 process)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**62)))
                video, label = self._apply(clip, self.samples[index].label, crop_index)
        else:
            video, label = self._apply(clip, self.samples[index].label, crop_index)
        if self.fill_shape is None:
            self.fill_shape = tuple(video.shape)
        return video, label

    def _fill(self, index: int, clip_index: int, crop_index: int) -> torch.Tensor:
        if self.fill_shape is None:  # find the output shape from another (good) sample
            for other in list(range(index + 1, len(self.samples))) + list(range(index)):
                try:
                    self._read(other, clip_index, crop_index, None)
                    break
                except _BadVideo:
                    continue
            else:
                raise RuntimeError("every video of the dataset is unreadable; see dataset.failures: "
                                   + "; ".join(f"{p}: {r}" for p, r in list(self.failures.items())[:5]))
        return torch.zeros(self.fill_shape)

    # -- access ------------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        index, view = divmod(i, len(self.views))
        clip_index, crop_index = self.views[view]
        if not self.train:
            try:
                video, label = self._read(index, clip_index, crop_index, None)
                valid = True
            except _BadVideo:
                video, label, valid = self._fill(index, clip_index, crop_index), self.samples[index].label, False
            return {"video": video, "label": label, "index": index, "view": (clip_index, crop_index),
                    "valid": valid, "replaced": []}
        replaced: List[int] = []
        current = index
        for attempt in range(self.max_retries + 1):
            try:
                video, label = self._read(current, 0, 0, self._rng(current, attempt))
                return {"video": video, "label": label, "index": current, "view": (0, 0), "valid": True,
                        "replaced": replaced}
            except _BadVideo:
                replaced.append(current)
                known_bad = {j for j in replaced}
                candidates = len(self.samples) - len(known_bad)
                if candidates <= 0:
                    break
                rng = self._rng(index, attempt + 1000)
                current = int(rng.integers(len(self.samples)))
                while current in known_bad:
                    current = int(rng.integers(len(self.samples)))
        raise RuntimeError(
            f"too many bad videos: sample {index} and {len(replaced) - 1} random replacements could not be "
            f"read (max_retries={self.max_retries}); this process has seen {len(self.failures)} bad files, e.g. "
            + "; ".join(f"{p}: {r}" for p, r in list(self.failures.items())[:5])
            + ". Check the data with `tada data inspect`.")


class _BadVideo(Exception):
    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index, self.reason = index, reason


def collate_views(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Collate dataset items: ``video`` (B, 3, T, H, W), ``label`` (B,) or (B, 2) for (verb, noun),
    ``index`` (B,), ``view`` (B, 2), ``valid`` (B,) bool, ``replaced`` a list of lists."""
    if not batch:
        raise ValueError("collate_views got an empty batch")
    labels = [b["label"] for b in batch]
    return {
        "video": torch.stack([b["video"] for b in batch]),
        "label": torch.as_tensor([tuple(lab) if isinstance(lab, (tuple, list)) else int(lab) for lab in labels],
                                 dtype=torch.long),
        "index": torch.as_tensor([b["index"] for b in batch], dtype=torch.long),
        "view": torch.as_tensor([tuple(b["view"]) for b in batch], dtype=torch.long),
        "valid": torch.as_tensor([bool(b["valid"]) for b in batch], dtype=torch.bool),
        "replaced": [list(b.get("replaced", [])) for b in batch],
    }


def count_invalid(batch: Dict[str, Any]) -> int:
    """Number of invalid (unreadable) items in a collated batch or a list of items."""
    if isinstance(batch, dict):
        valid = batch["valid"]
        return int((~torch.as_tensor(valid, dtype=torch.bool)).sum())
    return sum(not b["valid"] for b in batch)
