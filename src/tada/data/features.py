"""Per-video clip features for temporal action localisation, and the datasets a localiser (BMN) reads.

**Feature folders** (:class:`FeatureStore`), one ``T x C`` array per video with the time of each row:

============  ==============================================================  ======================
``fmt``       files in the folder                                             row times
============  ==============================================================  ======================
tada          the ``--out`` folder of ``tada extract``: ``manifest.json`` +   the manifest's clip
              ``<id>.npy`` / ``.npz`` / ``.csv`` (:mod:`tada.engine.extract`)  centres (seconds)
npy           ``<id>.npy``, float ``T x C``                                    uniform (below)
actionformer  ``<id>.npz`` with ``feats`` ``T x C`` (ActionFormer's layout;    uniform
              optional ``scores`` ``T x K``)
mmaction      ``<id>.csv``: a header row, then one row of ``C`` numbers per    uniform
              time step (MMAction2's BMN feature CSV)
============  ==============================================================  ======================

``fmt="auto"`` takes ``tada`` when the folder has a ``manifest.json``, else the one kind of feature
file it holds. Files without times are taken to cover the video uniformly: row ``i`` of ``T`` is
centred at ``(i + 0.5) * duration / T`` seconds, so the caller passes the video's duration. With
``tada extract --scores`` the class-score columns are not features: :meth:`FeatureStore.load`
returns the feature columns only (the manifest's ``columns.feature_dim``) and
:meth:`FeatureStore.load_scores` the scores. Arrays are read with ``allow_pickle=False`` (nothing in a
feature file can run code); a missing file names the video and the folder, and a file that is not a
``T x C`` array of finite numbers is a ``ValueError`` naming the file.

**Whole-video datasets** (ActivityNet, HACS; :class:`RescaledFeatureDataset`): each video's features
are resampled to a fixed ``temporal_scale`` (BMN: 100) by :func:`rescale_features` -- linear
interpolation between rows at the centres ``(k + 0.5) / S * duration`` of ``S`` equal bins, holding
the first / last row before the first / after the last row time. This is how BMN's ActivityNet input
is made (BSN/BMN rescale each video's snippet features to 100 positions by linear interpolation, and
MMAction2's ActivityNet feature CSVs hold those 100 rows). Ground truth is given in window units:
``[start / duration, end / duration]`` clipped to ``[0, 1]``.

**Sliding windows** (Epic-Kitchens; :class:`SlidingWindowFeatureDataset`): videos far longer than any
action are cut into windows of ``window`` feature rows starting every ``stride`` rows, optionally
resampled to ``temporal_scale`` positions. The TAda release on EK100 (following the "stronger
baseline for egocentric action detection" recipe) uses half-overlapping windows of 200 bins of two
feature steps (2 x 0.133 s): 400 rows (53.3 s) starting every 200 rows, each resampled to 200 bins
by linear interpolation with aligned end points; overlapping predictions are averaged downstream --
here ``window=400, stride=200, temporal_scale=200``. Window starts are ``0, stride, 2 * stride, ...``
while the window fits, plus a last window aligned to the end of the video (starting at
``T - window``) when the strided ones leave rows uncovered (the release instead lets its last window
run past the end, zero-padded, and skips one that would start less than 0.2 s before the end); a
video shorter than a window gets one window, zero-padded at the end, whose ``valid`` says how many
rows are real. With a row step ``dt`` (the mean spacing of the row times; a single row
spans ``[0, 2 t_0]``), window ``w`` starting at row ``r`` covers the seconds
``[t_r - dt / 2, t_r - dt / 2 + window * dt]`` -- returned as ``window`` so that predictions in window
units ``x`` map back to seconds ``start_s + x * (end_s - start_s)``.

Ground truth cut to a window: a segment is kept when its part inside the window is at least
``min_overlap`` of its own length *or* of the window's length, and is then clipped to the window.
The release keeps a training window's segment only when it lies inside the window (its
intersection-over-segment, IoA, ``> 0.999``) and drops training windows without such a segment;
``min_overlap=0.999`` (the default) is that rule, extended so that a segment longer than the window
that covers the whole window is kept (the release loses it). In training (``train=True``) windows
without a kept segment are dropped (``drop_empty``); in evaluation every window is kept.

Items are dicts ``{"features" (C, S) float32, "segments" (n, 2) float32 in window units, "labels" (n,)
long (ids in ``class_names``), "verbs" / "nouns" (n,) long (Epic-Kitchens classes, -1 when a segment
has none), "valid" (int, real rows), "video_id", "duration" (s), "window" (start_s, end_s)}`` and
:func:`collate_localization` batches them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .segments import Segment, UntrimmedVideo, class_names as _segment_class_names

__all__ = [
    "FEATURE_FORMATS",
    "FeatureStore",
    "rescale_features",
    "uniform_times",
    "window_starts",
    "FeatureWindow",
    "RescaledFeatureDataset",
    "SlidingWindowFeatureDataset",
    "collate_localization",
    "load_extracted",
    "MANIFEST",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
#: ``fmt`` -> file extension of the per-video files (``tada``: from its manifest)
FEATURE_FORMATS: Dict[str, Optional[str]] = {"tada": None, "npy": ".npy", "actionformer": ".npz", "mmaction": ".csv"}
#: the manifest ``tada extract`` writes beside the per-video files
MANIFEST = "manifest.json"
_EXT_FORMAT = {ext: fmt for fmt, ext in FEATURE_FORMATS.items() if ext}


# --------------------------------------------------------------------------------------------------
# reading feature files


def _check_array(a: Any, path: Path, what: str = "features") -> np.ndarray:
    """``a`` as a contiguous float32 ``T x C`` array of finite numbers, else a ValueError naming ``path``."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{path}: {what} must be a T x C array with T, C >= 1, got shape {a.shape}; "
                         "re-extract this video (tada extract)")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{path}: {what} must be numbers, got dtype {a.dtype}")
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{path}: {int(bad.sum())} NaN/inf value(s) in the {what} (first in row {row} of "
                         f"{a.shape[0]}); re-extract this video")
    return np.ascontiguousarray(a, dtype=np.float32)


def _not_readable(path: Path, kind: str, e: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable {kind} ({type(e).__name__}: {' '.join(str(e).split())})")


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _not_readable(path, ".npy array", e) from None
    if not isinstance(a, np.ndarray):  # an .npz archive under a .npy name
        a.close()
        raise ValueError(f"{path}: an .npz archive, not a .npy array; pass fmt='actionformer' for .npz features")
    return a


def _read_npz(path: Path, keys: Sequence[str]) -> Dict[str, Optional[np.ndarray]]:
    """The arrays ``keys`` of an .npz; the first must be there, the others are None when absent."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _not_readable(path, ".npz archive", e) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of named arrays ({keys[0]!r}, ...)")
    with z:
        files = list(z.files)
        if keys[0] not in files:
            raise ValueError(f"{path}: no array {keys[0]!r} in this .npz (it has {sorted(files)}); pass feature_key= "
                             "to name the features' array")
        try:
            return {k: (z[k] if k in files else None) for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise _not_readable(path, ".npz archive", e) from None


def _read_csv(path: Path) -> np.ndarray:
    try:
        a = np.loadtxt(path, dtype=np.float64, delimiter=",", skiprows=1, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a feature CSV (a header row, then one row of comma-separated numbers per "
                         f"time step): {' '.join(str(e).split())}") from None
    return a


def uniform_times(num_rows: int, duration: float) -> np.ndarray:
    """Row centres ``(i + 0.5) * duration / num_rows`` (seconds, float64) of rows covering
    ``[0, duration]`` uniformly."""
    return (np.arange(int(num_rows), dtype=np.float64) + 0.5) * (float(duration) / int(num_rows))


def _check_duration(duration: Optional[float], video_id: str, fmt: str) -> float:
    if duration is None:
        raise ValueError(f"{fmt} features of video {video_id!r} carry no times: pass duration= (the video's length "
                         "in seconds) so that the rows can be spread uniformly over [0, duration]")
    d = float(duration)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"video {video_id!r}: duration must be a positive number of seconds, got {duration!r}")
    return d


def load_extracted(out_dir: PathLike, video_id: str) -> Dict[str, Any]:
    """One video of a ``tada extract`` folder read back with its manifest entry: ``{"feats" (T x C),
    "scores" (T x K) or None, "centres" (T,) seconds, "entry"}`` (also
    :func:`tada.engine.extract.load_features`, the writer's name for it)."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = next((e for e in manifest["videos"] if e["video"] == video_id), None)
    if entry is None:
        raise KeyError(f"{video_id!r} is not among the extracted videos of {out / MANIFEST}")
    path, fmt, dim = out / entry["file"], manifest["output_format"], manifest["columns"]["feature_dim"]
    if fmt == "actionformer":
        with np.load(path, allow_pickle=False) as z:
            feats, scores = z["feats"], (z["scores"] if "scores" in z.files else None)
    else:
        table = np.load(path, allow_pickle=False) if fmt == "npy" else \
            np.loadtxt(path, dtype=np.float32, delimiter=",", skiprows=1, ndmin=2)
        feats, scores = table[:, :dim], (table[:, dim:] if table.shape[1] > dim else None)
    if "centres" in entry:
        centres = np.asarray(entry["centres"], dtype=np.float64)
    else:
        centres = entry["first_centre"] + entry["centre_step"] * np.arange(entry["num_clips"], dtype=np.float64)
    return {"feats": feats, "scores": scores, "centres": centres, "entry": entry}


class FeatureStore:
    """Reads ``T x C`` features of a video with the time (seconds) of each row (module doc).

    Args:
        root: the feature folder.
        fmt: ``"auto"``, ``"tada"`` (a ``tada extract`` folder with ``manifest.json``), ``"npy"``,
            ``"actionformer"`` (``<id>.npz`` with ``feature_key``) or ``"mmaction"`` (``<id>.csv``).
        feature_key: the array of the features in an ``.npz`` (ActionFormer: ``"feats"``).
        strict: what the datasets built on this store do with a video that has no features: raise a
            ``FileNotFoundError`` naming them (True), or leave it out with a warning (False).
    """

    def __init__(self, root: PathLike, *, fmt: str = "auto", feature_key: str = "feats", strict: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"feature folder {self.root} does not exist (give the --out folder of tada extract "
                                    "or a folder of <video>.npy / .npz / .csv files)")
        if fmt != "auto" and fmt not in FEATURE_FORMATS:
            raise ValueError(f"unknown feature format {fmt!r}; choose one of {['auto', *FEATURE_FORMATS]}")
        self.fmt = self._detect() if fmt == "auto" else fmt
        self.feature_key = str(feature_key)
        self.strict = bool(strict)
        self.manifest: Optional[Dict[str, Any]] = None
        self._entries: Dict[str, Dict[str, Any]] = {}
        self.unreadable: Dict[str, str] = {}
        if self.fmt == "tada":
            self._read_manifest()

    def _detect(self) -> str:
        if (self.root / MANIFEST).is_file():
            return "tada"
        kinds = sorted({_EXT_FORMAT[p.suffix.lower()] for p in self.root.iterdir()
                        if p.is_file() and p.suffix.lower() in _EXT_FORMAT})
        if len(kinds) == 1:
            return kinds[0]
        if not kinds:
            raise ValueError(f"{self.root}: no manifest.json and no .npy / .npz / .csv feature files; is this a "
                             "feature folder?")
        raise ValueError(f"{self.root}: holds feature files of several formats ({', '.join(kinds)}); pass fmt= to "
                         "choose one")

    def _read_manifest(self) -> None:
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; fmt='tada' reads the --out folder of tada extract "
                                    "(pass fmt='npy', 'actionformer' or 'mmaction' for plain feature files)")
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            self._entries = {str(e["video"]): e for e in m["videos"]}
            self.unreadable = {str(u["video"]): str(u.get("error", "")) for u in m.get("unreadable", [])}
            int(m["columns"]["feature_dim"])
            if m["output_format"] not in _EXT_FORMAT.values():
                raise ValueError(f"output_format {m['output_format']!r}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a tada extract manifest ({type(e).__name__}: {e}); run tada extract "
                             "again into this folder") from None
        self.manifest = m

    # -- what is there -----------------------------------------------------------------------------

    @property
    def video_ids(self) -> List[str]:
        """The ids of the videos with features (manifest order, or sorted file stems)."""
        if self.fmt == "tada":
            return list(self._entries)
        ext = FEATURE_FORMATS[self.fmt]
        return sorted(p.stem for p in self.root.iterdir() if p.is_file() and p.suffix.lower() == ext)

    @property
    def feature_dim(self) -> Optional[int]:
        """``C`` from the manifest (``tada``); None for other formats (read a file)."""
        return int(self.manifest["columns"]["feature_dim"]) if self.manifest else None

    @property
    def score_names(self) -> Optional[List[str]]:
        """The class names of :meth:`load_scores`' columns (``tada extract --scores``), else None."""
        if not self.manifest or not self.manifest["columns"].get("scores"):
            return None
        names = self.manifest.get("class_names")
        return list(names) if names is not None else None

    def path(self, video_id: str) -> Path:
        """The file that holds ``video_id``'s features (it may not exist)."""
        if self.fmt == "tada":
            entry = self._entries.get(video_id)
            return self.root / (entry["file"] if entry else video_id + self.manifest["extension"])
        return self.root / (video_id + FEATURE_FORMATS[self.fmt])

    def __contains__(self, video_id: object) -> bool:
        if not isinstance(video_id, str):
            return False
        if self.fmt == "tada":
            return video_id in self._entries and self.path(video_id).is_file()
        return self.path(video_id).is_file()

    def _missing(self, video_id: str) -> FileNotFoundError:
        where = f"{self.path(video_id)}"
        if video_id in self.unreadable:
            return FileNotFoundError(f"no features for video {video_id!r} in {self.root}: tada extract could not read "
                                     f"it ({self.unreadable[video_id]})")
        if self.fmt == "tada" and video_id in self._entries:
            return FileNotFoundError(f"no features for video {video_id!r} in {self.root}: the manifest lists {where} "
                                     "but the file is gone; run tada extract again (it resumes)")
        return FileNotFoundError(f"no features for video {video_id!r} in {self.root} (expected {where})")

    # -- reading -----------------------------------------------------------------------------------

    def num_rows(self, video_id: str) -> int:
        """``T`` without reading the whole file where the format allows (manifest, .npy header)."""
        if video_id not in self:
            raise self._missing(video_id)
        if self.fmt == "tada":
            return int(self._entries[video_id]["num_clips"])
        if self.fmt == "npy":
            path = self.path(video_id)
            try:
                shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            except (ValueError, OSError, EOFError) as e:
                raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(e).split())})") from None
            if len(shape) != 2 or shape[0] < 1:
                raise ValueError(f"{path}: features must be a T x C array with T, C >= 1, got shape {shape}")
            return int(shape[0])
        return int(self._read(video_id)[0].shape[0])

    def times(self, video_id: str, duration: Optional[float] = None) -> np.ndarray:
        """Row times (seconds, float64 ``(T,)``): the manifest's clip centres (``tada``: ``first_centre
        + k * centre_step``, or its listed ``centres``), else :func:`uniform_times` over ``duration``."""
        if self.fmt == "tada":
            if video_id not in self:
                raise self._missing(video_id)
            e = self._entries[video_id]
            if "centres" in e:
                return np.asarray(e["centres"], dtype=np.float64)
            return float(e["first_centre"]) + float(e["centre_step"]) * np.arange(int(e["num_clips"]), dtype=np.float64)
        d = _check_duration(duration, video_id, self.fmt)
        return uniform_times(self.num_rows(video_id), d)

    def _read(self, video_id: str) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """``(features, scores or None, times or None)`` checked, float32."""
        if video_id not in self:
            raise self._missing(video_id)
        path = self.path(video_id)
        if self.fmt == "tada":
            try:
                got = load_extracted(self.root, video_id)
            except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
                raise ValueError(f"{path}: cannot read the features of {video_id!r} ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())}); run tada extract again") from None
            feats = _check_array(got["feats"], path)
            scores = None if got["scores"] is None else _check_array(got["scores"], path, "scores")
            times = np.asarray(got["centres"], dtype=np.float64)
            if times.shape != (feats.shape[0],):
                raise ValueError(f"{path}: {feats.shape[0]} feature rows but the manifest gives {times.shape[0]} clip "
                                 "times; run tada extract again")
            if feats.shape[1] != self.feature_dim:
                raise ValueError(f"{path}: {feats.shape[1]} feature columns, the manifest says {self.feature_dim}")
            return feats, scores, times
        if self.fmt == "npy":
            return _check_array(_read_npy(path), path), None, None
        if self.fmt == "actionformer":
            z = _read_npz(path, (self.feature_key, "scores"))
            feats = _check_array(z[self.feature_key], path)
            scores = None if z["scores"] is None else _check_array(z["scores"], path, "scores")
            return feats, scores, None
        return _check_array(_read_csv(path), path), None, None

    def load(self, video_id: str, duration: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(features float32 (T, C), row times float64 (T,) seconds)``. ``duration`` is needed for
        formats without times (rows spread uniformly over it); a ``tada`` folder has its own times."""
        if self.fmt != "tada":
            _check_duration(duration, video_id, self.fmt)
        feats, _, times = self._read(video_id)
        if times is None:
            times = uniform_times(feats.shape[0], float(duration))
        if feats.shape[0] > 1 and not np.all(np.diff(times) > 0):
            raise ValueError(f"{self.path(video_id)}: row times must increase, got {times[:5].tolist()} ...")
        return feats, times

    def load_scores(self, video_id: str) -> Optional[np.ndarray]:
        """The class-score columns ``(T, K)`` float32 (``tada extract --scores``; an ActionFormer
        ``.npz``'s ``scores``), or None when the file has none."""
        return self._read(video_id)[1]

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, fmt={self.fmt!r})"


# --------------------------------------------------------------------------------------------------
# resampling and windows


def rescale_features(feats: np.ndarray, times: np.ndarray, duration: float, temporal_scale: int = 100) -> np.ndarray:
    """Features ``(T, C)`` with row times ``(T,)`` (seconds, increasing) resampled to ``(C, S)``:
    column ``k`` is the linear interpolation between the two rows around ``(k + 0.5) / S * duration``,
    and the first (last) row before the first (after the last) row time. Rows placed by
    :func:`uniform_times` and ``S = T`` give the input back exactly."""
    f = np.asarray(feats, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 1:
        raise ValueError(f"features must be T x C with T >= 1, got shape {f.shape}")
    if t.shape != (f.shape[0],):
        raise ValueError(f"times must be one per feature row, got {t.shape} for {f.shape[0]} rows")
    if not np.all(np.isfinite(t)) or (t.size > 1 and not np.all(np.diff(t) > 0)):
        raise ValueError("row times must be finite and strictly increasing")
    d = float(duration)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    S = int(temporal_scale)
    if S < 1 or S != temporal_scale:
        raise ValueError(f"temporal_scale must be an integer >= 1, got {temporal_scale!r}")
    pos = (np.arange(S, dtype=np.float64) + 0.5) * (d / S)
    if t.size == 1:
        return np.ascontiguousarray(np.repeat(f.T, S, axis=1), dtype=np.float32)
    i0 = np.clip(np.searchsorted(t, pos, side="right") - 1, 0, t.size - 2)
    w = np.clip((pos - t[i0]) / (t[i0 + 1] - t[i0]), 0.0, 1.0)[:, None]
    out = f[i0] * (1.0 - w) + f[i0 + 1] * w
    return np.ascontiguousarray(out.T, dtype=np.float32)


def window_starts(num_rows: int, window: int, stride: int) -> List[int]:
    """First rows of the windows over ``num_rows`` rows: every ``stride`` rows while a window fits,
    plus one aligned to the end when rows are left over; ``[0]`` when the video is shorter than a window."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if num_rows <= window:
        return [0]
    starts = list(range(0, num_rows - window + 1, stride))
    if starts[-1] + window < num_rows:
        starts.append(num_rows - window)
    return starts


def _row_step(times: np.ndarray) -> float:
    """Seconds between rows: their mean spacing; a single row spans ``[0, 2 t_0]``."""
    if times.size > 1:
        return float(times[-1] - times[0]) / (times.size - 1)
    return 2.0 * float(times[0]) if times[0] > 0 else 1.0


@dataclass(frozen=True)
class FeatureWindow:
    """Window of ``video_id``: rows ``first_row .. first_row + valid - 1`` (the rest zero padding),
    covering ``[start_s, end_s]`` seconds."""

    video_id: str
    first_row: int
    valid: int
    start_s: float
    end_s: float


# --------------------------------------------------------------------------------------------------
# datasets


def _video_list(videos: Union[Mapping[str, UntrimmedVideo], Sequence[UntrimmedVideo]]) -> List[UntrimmedVideo]:
    vs = list(videos.values()) if isinstance(videos, Mapping) else list(videos)
    for v in vs:
        if not isinstance(v, UntrimmedVideo):
            raise ValueError(f"expected UntrimmedVideo objects (tada.data.segments), got {type(v).__name__}")
    if not vs:
        raise ValueError("no videos given (is the annotation subset empty?)")
    return vs


def _with_features(videos: List[UntrimmedVideo], store: FeatureStore) -> List[UntrimmedVideo]:
    missing = [v.id for v in videos if v.id not in store]
    if not missing:
        return videos
    names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if store.strict:
        raise FileNotFoundError(f"{len(missing)} of {len(videos)} videos have no features in {store.root}: {names} "
                                "(extract them, or pass strict=False to the FeatureStore to leave them out)")
    log.warning("%d of %d videos have no features in %s and are left out: %s", len(missing), len(videos),
                store.root, names)
    kept = [v for v in videos if v.id in store]
    if not kept:
        raise FileNotFoundError(f"none of the {len(videos)} videos has features in {store.root}")
    return kept


def _class_index(videos: List[UntrimmedVideo], class_names: Optional[Sequence[str]]
                 ) -> Tuple[List[str], Dict[str, int]]:
    names = list(class_names) if class_names is not None else _segment_class_names(videos)
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise ValueError("class_names has duplicates")
    for v in videos:
        for s in v.segments:
            if s.label not in index:
                raise ValueError(f"video {v.id!r}: segment label {s.label!r} is not among the {len(names)} class names "
                                 f"(e.g. {names[:3]}); pass the class list the labels come from")
    return names, index


def _targets(segs: Sequence[Segment], spans: np.ndarray, index: Dict[str, int]) -> Dict[str, torch.Tensor]:
    return {
        "segments": torch.as_tensor(spans.reshape(-1, 2), dtype=torch.float32),
        "labels": torch.as_tensor([index[s.label] for s in segs], dtype=torch.long),
        "verbs": torch.as_tensor([-1 if s.verb is None else s.verb for s in segs], dtype=torch.long),
        "nouns": torch.as_tensor([-1 if s.noun is None else s.noun for s in segs], dtype=torch.long),
    }


def _cut(segs: Sequence[Segment], start_s: float, end_s: float, min_overlap: float
         ) -> Tuple[List[Segment], np.ndarray]:
    """The segments kept in ``[start_s, end_s]`` (module doc) and their clipped spans in window units."""
    length = end_s - start_s
    kept, spans = [], []
    for s in segs:
        inter = min(s.end, end_s) - max(s.start, start_s)
        if inter <= 0 or inter < min_overlap * min(s.end - s.start, length) - 1e-9:
            continue
        kept.append(s)
        spans.append(((max(s.start, start_s) - start_s) / length, (min(s.end, end_s) - start_s) / length))
    return kept, np.clip(np.asarray(spans, dtype=np.float64).reshape(-1, 2), 0.0, 1.0)


class RescaledFeatureDataset(torch.utils.data.Dataset):
    """Whole videos resampled to ``temporal_scale`` positions (ActivityNet / HACS; module doc).

    Args:
        videos: untrimmed videos (a list, or the dict of :func:`~tada.data.segments.load_activitynet_json`).
        store: their features.
        temporal_scale: ``S`` (BMN: 100).
        class_names: label order (default: the sorted labels of ``videos``; give an evaluation set the
            training set's ``class_names`` so that ids agree). A label outside it is a ``ValueError``.
        cache: keep each video's resampled features in memory after the first read (``C x S`` floats).

    Segments are clipped to ``[0, duration]``; one lying wholly outside is left out.
    """

    def __init__(self, videos: Union[Mapping[str, UntrimmedVideo], Sequence[UntrimmedVideo]], store: FeatureStore, *,
                 temporal_scale: int = 100, class_names: Optional[Sequence[str]] = None, cache: bool = False):
        if int(temporal_scale) != temporal_scale or temporal_scale < 1:
            raise ValueError(f"temporal_scale must be an integer >= 1, got {temporal_scale!r}")
        self.store, self.temporal_scale = store, int(temporal_scale)
        self.videos = _with_features(_video_list(videos), store)
        self.class_names, self._index = _class_index(self.videos, class_names)
        self.cache = bool(cache)
        self._cached: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def features(self, i: int) -> torch.Tensor:
        """Video ``i``'s resampled features ``(C, S)``."""
        if i in self._cached:
            return self._cached[i]
        v = self.videos[i]
        feats, times = self.store.load(v.id, v.duration)
        x = torch.from_numpy(rescale_features(feats, times, v.duration, self.temporal_scale))
        if self.cache:
            self._cached[i] = x
        return x

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} videos")
        i %= len(self)
        v = self.videos[i]
        segs, spans = _cut(v.segments, 0.0, v.duration, 0.0)
        return {"features": self.features(i), **_targets(segs, spans, self._index), "valid": self.temporal_scale,
                "video_id": v.id, "duration": float(v.duration), "window": (0.0, float(v.duration))}


class SlidingWindowFeatureDataset(torch.utils.data.Dataset):
    """Windows of ``window`` feature rows every ``stride`` rows (Epic-Kitchens; module doc).

    Args:
        videos, store, class_names: as :class:`RescaledFeatureDataset`.
        window: feature rows per window (the release on EK100: 400 rows of 0.133 s).
        stride: rows between window starts (the release: 200).
        temporal_scale: None: items hold the ``window`` rows as they are; an int ``S``: each (zero-padded)
            window resampled to ``S`` positions by linear interpolation with the end points aligned
            (``F.interpolate(..., align_corners=True)``, as the release does; it uses ``S = 200``), and
            ``valid`` counts the positions that fall on real rows.
        min_overlap: a segment is kept in a window when the part inside is at least this share of its
            length or of the window (0.999: inside the window, the release's rule).
        train: training windows (``drop_empty`` applies) or evaluation windows (all kept).
        drop_empty: in training, leave out windows without a kept segment (the release does).
        cache: keep every video's features in memory after the first read (else only the last video).

    ``windows`` lists the :class:`FeatureWindow` of each item.
    """

    def __init__(self, videos: Union[Mapping[str, UntrimmedVideo], Sequence[UntrimmedVideo]], store: FeatureStore, *,
                 window: int = 200, stride: int = 100, temporal_scale: Optional[int] = None,
                 min_overlap: float = 0.999, class_names: Optional[Sequence[str]] = None, train: bool = True,
                 drop_empty: bool = True, cache: bool = False):
        if not (0.0 <= float(min_overlap) <= 1.0):
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
        if int(window) != window or int(stride) != stride or window < 1 or stride < 1:
            raise ValueError(f"window and stride must be integers >= 1, got {window!r}, {stride!r}")
        if temporal_scale is not None and (int(temporal_scale) != temporal_scale or temporal_scale < 1):
            raise ValueError(f"temporal_scale must be None or an integer >= 1, got {temporal_scale!r}")
        if stride > window:
            log.warning("stride %d > window %d: rows between windows are never seen", stride, window)
        self.store, self.window, self.stride = store, int(window), int(stride)
        self.temporal_scale = None if temporal_scale is None else int(temporal_scale)
        self.min_overlap, self.train = float(min_overlap), bool(train)
        self.drop_empty, self.cache = bool(drop_empty), bool(cache)
        self.videos = {v.id: v for v in _with_features(_video_list(videos), store)}
        self.class_names, self._index = _class_index(list(self.videos.values()), class_names)
        self._cached: Dict[str, np.ndarray] = {}
        self._last: Optional[Tuple[str, np.ndarray]] = None
        self.windows: List[FeatureWindow] = []
        dropped = 0
        for v in self.videos.values():
            times = store.times(v.id, v.duration)
            step = _row_step(times)
            for first in window_starts(times.size, self.window, self.stride):
                start_s = float(times[first]) - step / 2
                w = FeatureWindow(v.id, first, min(self.window, times.size - first), start_s,
                                  start_s + self.window * step)
                if self.train and self.drop_empty and not _cut(v.segments, w.start_s, w.end_s, self.min_overlap)[0]:
                    dropped += 1
                    continue
                self.windows.append(w)
        if not self.windows:
            raise ValueError(f"no training window of {self.window} rows holds a segment under min_overlap="
                             f"{self.min_overlap} ({dropped} windows dropped); lower min_overlap or pass "
                             "drop_empty=False")
        if dropped:
            log.info("left out %d training windows without a segment (%d kept)", dropped, len(self.windows))

    def __len__(self) -> int:
        return len(self.windows)

    def _features(self, video_id: str) -> np.ndarray:
        if video_id in self._cached:
            return self._cached[video_id]
        if self._last is not None and self._last[0] == video_id:
            return self._last[1]
        v = self.videos[video_id]
        feats, _ = self.store.load(video_id, v.duration)
        if self.cache:
            self._cached[video_id] = feats
        self._last = (video_id, feats)
        return feats

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        w = self.windows[i % len(self)]
        v = self.videos[w.video_id]
        feats = self._features(w.video_id)
        x = torch.zeros(feats.shape[1], self.window, dtype=torch.float32)
        x[:, :w.valid] = torch.from_numpy(feats[w.first_row:w.first_row + w.valid].T)
        valid = w.valid
        if self.temporal_scale is not None:
            x, valid = _resample_window(x, w.valid, self.temporal_scale)
        segs, spans = _cut(v.segments, w.start_s, w.end_s, self.min_overlap)
        return {"features": x, **_targets(segs, spans, self._index), "valid": valid, "video_id": w.video_id,
                "duration": float(v.duration), "window": (w.start_s, w.end_s)}


def _resample_window(x: torch.Tensor, valid: int, size: int) -> Tuple[torch.Tensor, int]:
    """``(C, W)`` -> ``(C, size)`` by linear interpolation with aligned end points (output ``k`` at input
    position ``k (W - 1) / (size - 1)``), and how many outputs lie on the first ``valid`` rows."""
    W = x.shape[1]
    y = torch.nn.functional.interpolate(x[None], size=size, mode="linear", align_corners=True)[0]
    if W == 1 or size == 1:
        return y, size
    return y, min(size, (valid - 1) * (size - 1) // (W - 1) + 1)


_STACKED = ("features", "window", "duration", "valid")


def collate_localization(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch localisation items: ``features`` ``(B, C, S)``, ``window`` ``(B, 2)`` and ``duration``
    ``(B,)`` float64 seconds, ``valid`` ``(B,)`` long; ``segments`` / ``labels`` / ``verbs`` / ``nouns``
    (ragged), ``video_id`` and any other key as lists."""
    if not items:
        raise ValueError("collate_localization got an empty batch")
    shapes = {tuple(it["features"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"items have features of different shapes {sorted(shapes)}; a batch needs one (C, S)")
    out: Dict[str, Any] = {
        "features": torch.stack([it["features"] for it in items]),
        "window": torch.as_tensor([tuple(it["window"]) for it in items], dtype=torch.float64).reshape(-1, 2),
        "duration": torch.as_tensor([float(it["duration"]) for it in items], dtype=torch.float64),
        "valid": torch.as_tensor([int(it.get("valid", it["features"].shape[-1])) for it in items], dtype=torch.long),
    }
    for key in items[0]:
        if key not in _STACKED:
            out[key] = [it[key] for it in items]
    return out
