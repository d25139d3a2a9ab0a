"""Clip features for temporal action localisation (``tada extract``).

    tada extract CONFIG --checkpoint CKPT --list LIST --out DIR [--preset epic|hacs|anet]
                 [--format npy|actionformer|mmaction] [KEY=VALUE ...] [protocol options]

A trained checkpoint (``tada train``) turns every video of a list into a ``T x C`` array: one row per
clip of a fixed protocol, the model's pooled pre-logits vector
(``model.forward_head(model.forward_features(x), pre_logits=True)``). The checkpoint's own config
gives the model; CONFIG (with ``KEY=VALUE`` overrides) gives the normalisation (``data.normalize``),
the video root (``data.root``), the decode backend and the defaults of the protocol.

**Protocol.** Presets (SPEC §8), every value overridable by its option; values a preset does not name
come from CONFIG (``data.target_fps``, ``data.frames``, ``data.rate``, ``data.test_short_side``; the
stride defaults to the interval):

=======  =====  ===========  ========  ===============  ==========  =====
preset   fps    clip frames  interval  stride / clips   short side  crop
=======  =====  ===========  ========  ===============  ==========  =====
epic     60     8            8         stride 8         224         none
hacs     30     8            8         stride 16        128         none
anet     30     8            8         100 clips        (config)    none
=======  =====  ===========  ========  ===============  ==========  =====

**Time rule** (written into every manifest). ``N`` is the video's frame count on the target grid,
``probe(path, fps=fps).num_frames`` (the duration times ``fps``, rounded); target frame ``j`` is the
frame on screen at time ``j / fps``, as :func:`tada.data.decode.read_frames` with ``fps=`` reads it
(source timestamps snapped to the target grid, so a 25 fps file read at 60 fps repeats frames).
``span = (clip_frames - 1) * interval``.

* stride mode: ``T = ceil(N / stride)`` clips, clip ``k`` starts at ``k * stride`` (one clip per
  ``stride`` frames, covering the whole video);
* fixed-count mode (``--num-clips M``, ActivityNet style): ``T = M`` clips spread uniformly, clip
  ``k`` starts at ``round_half_up(max(0, N - 1 - span) * (k + 0.5) / M)`` (the centres of ``M``
  equal parts of the valid starts: :func:`tada.data.sampling.interval_indices`' test-view rule);
* frames of clip ``k``: ``min(start_k + i * interval, N - 1)`` for ``i < clip_frames``: clips that
  run past the end repeat the last frame (they are kept, so the clips cover the video);
* centre of clip ``k``: ``(start_k + span / 2) / fps`` seconds (the midpoint of its first and last
  frame times).

Frames are resized so their short side is ``short_side`` (antialiased bilinear, as
``build_test_transform``), then kept whole (``--crop none``, default: the whole frame, not square)
or centre-cropped to a ``short_side`` square (``--crop centre``); ``--per-crop`` takes three
``short_side`` squares (left/centre/right along the long side, :class:`~tada.data.transforms.SpatialCrop`)
and concatenates their features (``3 x C`` columns, crop by crop); ``--scores`` adds the softmax class
scores (averaged over the crops).

**Outputs** in DIR, one file per video named by the file's stem:

* ``npy``: ``<id>.npy``, float32 ``T x C`` (with ``--scores``: ``T x (C + K)``, the scores last);
* ``actionformer``: ``<id>.npz`` with ``feats`` (``T x C``; and ``scores`` ``T x K``);
* ``mmaction``: ``<id>.csv``, a header row ``f0,...,f{C-1}[,score_0,...]`` then one row per clip, as
  MMAction2's BMN loader reads it (``np.loadtxt(path, delimiter=',', skiprows=1)``, transposed to
  ``C x T``); values written with 9 significant digits, which round-trips float32 exactly;
* ``manifest.json``: the protocol, the time rule, the model (name, checkpoint path, size, mtime),
  the column layout, per video its file, clip count, target frame count, duration and clip centres
  (stride mode: ``first_centre`` and ``centre_step``; fixed-count mode: every start and centre), and
  the unreadable videos with their reasons. :func:`load_features` reads a video back with its times.

**Resume.** Each output is written to a temporary file, flushed and renamed, and recorded (file
size, protocol/model signature) in ``manifest.rank{R}.jsonl`` right after; a video whose file exists
with the recorded size under the same signature is skipped when the command is run again, so a killed
run resumes and ends with byte-identical files (the manifest holds no times or host names). Files of
another protocol or model are extracted again (and replaced).

**Ranks.** Under ``torchrun`` (``RANK``/``WORLD_SIZE``; gloo on the CPU) video ``i`` of the list is
extracted by rank ``i % WORLD_SIZE``; after a barrier rank 0 merges the per-rank records into
``manifest.json``. The files do not depend on the number of ranks.

**Robustness and memory.** A video that cannot be read (at probe time or in any window) is named in a
warning, listed under ``unreadable`` with the reason, and the others are extracted. A video is read a
window of ``--batch-size`` clips at a time (:mod:`tada.data.stream`: only the distinct frames those
clips use), in ``--workers`` DataLoader processes that decode while the model runs, so the frames in
memory are bounded by the batch size, not by the video's length (the ``T x C`` rows of the video being
extracted are kept until its file is written).
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import transforms as TF
from ..data.decode import VideoDecodeError, available_backends, probe
from ..data.features import MANIFEST, load_extracted as load_features  # the reader lives beside its consumers
from ..data.sampling import interval_indices
from ..data.stream import StreamStats, make_window, read_window

__all__ = ["PRESETS", "FORMATS", "Protocol", "ClipPlan", "ExtractSummary", "FramePreprocess",
           "resolve_protocol", "plan_clips", "read_video_list", "encode_features", "load_features",
           "extract", "build_parser", "main"]

log = logging.getLogger("tada.extract")

#: Protocol values of each preset (SPEC §8); options override them, CONFIG fills what they omit.
PRESETS: Dict[str, Dict[str, Any]] = {
    "epic": dict(fps=60.0, clip_frames=8, interval=8, stride=8, short_side=224, crop="none"),
    "hacs": dict(fps=30.0, clip_frames=8, interval=8, stride=16, short_side=128, crop="none"),
    "anet": dict(fps=30.0, clip_frames=8, interval=8, num_clips=100, crop="none"),
}

#: output format -> file extension
FORMATS: Dict[str, str] = {"npy": ".npy", "actionformer": ".npz", "mmaction": ".csv"}

MANIFEST_VERSION = 1
_CROPS = ("none", "centre")
_THREE_CROPS = ("left", "centre", "right")

TIME_RULE = {
    "target_frame": "target frame j is the frame on screen at time j / fps (tada.data.decode.read_frames "
                    "with fps=: source timestamps snapped to the target grid)",
    "num_frames": "N = probe(path, fps=fps).num_frames = round(duration * fps)",
    "num_clips": "stride mode: ceil(N / stride); fixed-count mode: num_clips",
    "clip_start": "stride mode: k * stride; fixed-count mode: round_half_up(max(0, N - 1 - span) * (k + 0.5) "
                  "/ num_clips), span = (clip_frames - 1) * interval",
    "clip_frames": "min(start_k + i * interval, N - 1) for i < clip_frames (past the end: the last frame)",
    "clip_centre": "(start_k + (clip_frames - 1) * interval / 2) / fps seconds",
}


# --------------------------------------------------------------------------------------------------
# protocol and clip arithmetic


@dataclass(frozen=True)
class Protocol:
    """Which clips of a video become feature rows and how their frames are prepared (module doc).
    Exactly one of ``stride`` (frames between clip starts) and ``num_clips`` (clips per video) is set."""

    fps: float
    clip_frames: int
    interval: int
    stride: Optional[int] = None
    num_clips: Optional[int] = None
    short_side: int = 224
    crop: str = "none"
    per_crop: bool = False

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(what)

        need(isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0,
             f"fps must be a positive number, got {self.fps!r}")
        for name in ("clip_frames", "interval", "short_side"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{name} must be an integer >= 1, got {v!r}")
        need((self.stride is None) != (self.num_clips is None),
             f"give exactly one of stride and num_clips, got stride={self.stride}, num_clips={self.num_clips}")
        for name in ("stride", "num_clips"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                 f"{name} must be an integer >= 1, got {v!r}")
        need(self.crop in _CROPS, f"crop must be one of {list(_CROPS)}, got {self.crop!r}")
        object.__setattr__(self, "fps", float(self.fps))

    @property
    def span(self) -> int:
        """Target frames from the first to the last frame of a clip."""
        return (self.clip_frames - 1) * self.interval

    @property
    def crops(self) -> Tuple[str, ...]:
        """The spatial views of a clip: ``("none",)`` whole frame, ``("centre",)`` or three squares."""
        return _THREE_CROPS if self.per_crop else (self.crop,)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crops"] = list(self.crops)
        return d


def resolve_protocol(data_cfg=None, preset: Optional[str] = None, **options) -> Protocol:
    """The protocol from, by increasing priority: the config's data section (``target_fps``, ``frames``,
    ``rate``, ``test_short_side``), the preset, and ``options`` that are not None (``fps``,
    ``clip_frames``, ``interval``, ``stride``, ``num_clips``, ``short_side``, ``crop``, ``per_crop``).
    An explicit ``stride`` switches a fixed-count preset to stride mode and vice versa; both at once is
    an error. Without either, the stride is the interval."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = set(options) - {f.name for f in dataclasses.fields(Protocol)}
    if unknown:
        raise ValueError(f"unknown protocol option(s) {sorted(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    if "stride" in given and "num_clips" in given:
        raise ValueError("--stride and --num-clips are exclusive: one clip every STRIDE frames, or NUM_CLIPS "
                         "clips spread over each video")
    values: Dict[str, Any] = {}
    if data_cfg is not None:
        values.update(fps=data_cfg.target_fps, clip_frames=data_cfg.frames, interval=data_cfg.rate,
                      short_side=data_cfg.test_short_side)
    values.update(PRESETS.get(preset, {}))
    if "stride" in given:
        values.pop("num_clips", None)
    if "num_clips" in given:
        values.pop("stride", None)
    values.update(given)
    if values.get("stride") is None and values.get("num_clips") is None:
        values["stride"] = values.get("interval")
    missing = [k for k in ("fps", "clip_frames", "interval", "short_side") if values.get(k) is None]
    if missing:
        raise ValueError(f"protocol values not given: {', '.join(missing)} (pass a config, a preset or the options)")
    return Protocol(**values)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class ClipPlan:
    """The clips of one video: ``num_frames`` frames on the target grid under ``protocol``."""

    num_frames: int
    protocol: Protocol

    def __len__(self) -> int:
        p = self.protocol
        return p.num_clips if p.num_clips is not None else max(1, -(-self.num_frames // p.stride))

    def start(self, k: int) -> int:
        p = self.protocol
        if not 0 <= k < len(self):
            raise IndexError(f"clip {k} of {len(self)}")
        if p.stride is not None:
            return k * p.stride
        return self.indices(k)[0]

    def indices(self, k: int) -> List[int]:
        """Target-grid frame indices of clip ``k`` (clamped to the last frame)."""
        p, last = self.protocol, self.num_frames - 1
        if p.stride is not None:
            s = self.start(k)
            return [min(s + i * p.interval, last) for i in range(p.clip_frames)]
        if not 0 <= k < len(self):
            raise IndexError(f"clip {k} of {len(self)}")
        return interval_indices(self.num_frames, p.clip_frames, p.interval, video_fps=p.fps, target_fps=p.fps,
                                train=False, clip_index=k, num_clips=p.num_clips)

    def starts(self) -> List[int]:
        return [self.start(k) for k in range(len(self))]

    def centres(self) -> np.ndarray:
        """Clip centre times in seconds, float64 ``(T,)``."""
        p = self.protocol
        starts = np.arange(len(self), dtype=np.float64) * p.stride if p.stride is not None \
            else np.asarray(self.starts(), dtype=np.float64)
        return (starts + p.span / 2) / p.fps


def plan_clips(num_frames: int, protocol: Protocol) -> ClipPlan:
    """The clips of a video of ``num_frames`` target-grid frames (module doc, "Time rule")."""
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return ClipPlan(int(num_frames), protocol)


# --------------------------------------------------------------------------------------------------
# frames -> model input


class FramePreprocess:
    """uint8 frames ``(U, H, W, 3)`` → float ``(V, 3, U, h, w)``: short side resized to ``short_side``,
    each of the ``V`` views of ``crops`` taken, normalised with ``mean``/``std``."""

    def __init__(self, short_side: int, crops: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        from torchvision.transforms import v2

        self.resize = v2.Resize(int(short_side), antialias=True)
        self.to_video = TF.ToVideo()
        self.normalize = TF.ToFloatNormalize(mean, std)
        self.crops = []
        for c in crops:
            if c == "none":
                self.crops.append(None)
            elif c == "centre" and len(crops) == 1:
                self.crops.append(TF.SpatialCrop(int(short_side), 1))
            elif c in _THREE_CROPS and len(crops) == 3:
                self.crops.append(TF.SpatialCrop(int(short_side), 3, _THREE_CROPS.index(c)))
            else:
                raise ValueError(f"unknown crop list {list(crops)}")

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        video = self.resize(self.to_video(frames))
        views = []
        for crop in self.crops:
            v = video if crop is None else crop(video)
            # ToFloatNormalize writes (3, U, h, w) memory and returns its (U, 3, h, w) view
            views.append(self.normalize(v).as_subclass(torch.Tensor).transpose(0, 1))
        return torch.stack(views)


def _gather_clips(frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(V, 3, U, h, w)`` distinct frames and ``(B, T)`` positions → model batch ``(B*V, 3, T, h, w)``,
    clip-major (clip 0's views first)."""
    v, c, _, h, w = frames.shape
    b, t = positions.shape
    x = frames.index_select(2, positions.reshape(-1)).view(v, c, b, t, h, w)
    return x.permute(2, 0, 1, 3, 4, 5).reshape(b * v, c, t, h, w)


# --------------------------------------------------------------------------------------------------
# video lists and outputs


def read_video_list(path, root=None) -> List[Tuple[str, str]]:
    """``(video id, path)`` for every line of a list: a video path per line, optionally followed by an
    integer label (a Kinetics-style list; the label is ignored). Blank lines and ``#`` comments are
    skipped. Relative paths are joined to ``root`` (default: the list's folder). The id is the file's
    stem; two videos with the same id are an error (their outputs would collide)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--list {path}: no such file")
    base = Path(root) if root else p.parent
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--list {path} is not a UTF-8 text file ({e})") from None
    out: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not (base / line).exists():
            name = parts[0]
        full = Path(name) if Path(name).is_absolute() else base / name
        vid = full.stem if full.suffix else full.name
        if vid in seen:
            raise ValueError(f"{path}:{n}: video id {vid!r} also on line {seen[vid]}; outputs are named by the "
                             "file's stem, so ids must be unique")
        seen[vid] = n
        out.append((vid, str(full)))
    if not out:
        raise ValueError(f"--list {path} names no videos")
    return out


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_features(feats: np.ndarray, scores: Optional[np.ndarray], output_format: str) -> bytes:
    """The bytes of one video's output file (deterministic: the same arrays give the same bytes)."""
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be T x C, got shape {feats.shape}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32)
    if output_format == "npy":
        return _npy_bytes(feats if scores is None else np.concatenate([feats, scores], axis=1))
    if output_format == "actionformer":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for key, arr in (("feats", feats), ("scores", scores)):
                if arr is None:
                    continue
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # no clock in the bytes
                info.external_attr = 0o644 << 16
                z.writestr(info, _npy_bytes(arr))
        return buf.getvalue()
    if output_format == "mmaction":
        table = feats if scores is None else np.concatenate([feats, scores], axis=1)
        header = [f"f{i}" for i in range(feats.shape[1])]
        if scores is not None:
            header += [f"score_{i}" for i in range(scores.shape[1])]
        buf = io.StringIO()
        buf.write(",".join(header) + "\n")
        np.savetxt(buf, table, fmt="%.9g", delimiter=",")
        return buf.getvalue().encode("ascii")
    raise ValueError(f"unknown output format {output_format!r}; choose one of {sorted(FORMATS)}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over ``path`` (a kill leaves either the
    old file or the new one, and at most a ``.NAME.*.tmp`` that the next run removes)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------
# the extraction loop


@dataclass
class _Job:
    vid: str
    path: str
    plan: ClipPlan
    info: Dict[str, Any]
    batch: int
    feats: List[np.ndarray] = field(default_factory=list)
    scores: List[np.ndarray] = field(default_factory=list)
    failed: Optional[str] = None

    @property
    def num_windows(self) -> int:
        return -(-len(self.plan) // self.batch)

    def window(self, w: int):
        first = w * self.batch
        last = min(first + self.batch, len(self.plan))
        return make_window([self.plan.indices(k) for k in range(first, last)], first)


class _WindowDataset(torch.utils.data.Dataset):
    """Item ``i``: one window of ``batch`` clips of one video, decoded and preprocessed, or the reason
    it could not be read. Windows of a video are consecutive items."""

    def __init__(self, jobs: Sequence[_Job], preprocess: FramePreprocess, fps: float, backend: Optional[str]):
        self.jobs, self.preprocess, self.fps, self.backend = list(jobs), preprocess, fps, backend
        self.offsets = [0]
        for j in self.jobs:
            self.offsets.append(self.offsets[-1] + j.num_windows)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> Dict[str, Any]:
        j = bisect.bisect_right(self.offsets, i) - 1
        job, w = self.jobs[j], i - self.offsets[j]
        window = job.window(w)
        item: Dict[str, Any] = {"job": j, "window": w}
        stats = StreamStats()
        try:
            frames = read_window(job.path, window, fps=self.fps, backend=self.backend, stats=stats)
            item["frames"] = self.preprocess(frames)
        except VideoDecodeError as e:
            item["error"] = f"{e.reason} (reading clips {window.first_clip}-{window.first_clip + window.num_clips - 1})"
            return item
        except Exception as e:  # noqa: BLE001 - one bad file must not end a run over thousands
            item["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            return item
        item["positions"] = window.positions_tensor()
        item["held"], item["decoded"] = stats.peak_frames_held, stats.peak_frames_decoded
        return item


@dataclass
class ExtractSummary:
    """What one rank did: ids extracted, skipped (already there) and unreadable (id → reason); clips run
    through the model; the most frames one window held and decoded; wall time."""

    extracted: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    unreadable: Dict[str, str] = field(default_factory=dict)
    clips: int = 0
    peak_frames_held: int = 0
    peak_frames_decoded: int = 0
    seconds: float = 0.0
    manifest: Optional[str] = None
    #: rank 0, from the manifest it wrote (all ranks, this run and earlier ones): videos with features,
    #: and unreadable videos
    total_videos: int = 0
    total_unreadable: int = 0

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("nan")


def _signature(settings: Dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_records(out: Path) -> List[Dict[str, Any]]:
    """Records of earlier runs: the entries of ``manifest.json`` and the lines of every rank's jsonl
    (a line cut short by a kill is ignored)."""
    recs: List[Dict[str, Any]] = []
    m = out / MANIFEST
    if m.is_file():
        try:
            manifest = json.loads(m.read_text())
            sig = manifest.get("signature")
            recs += [dict(e, signature=sig) for e in manifest.get("videos", [])]
            recs += [dict(e, signature=sig) for e in manifest.get("unreadable", [])]
        except (ValueError, AttributeError, TypeError):
            log.warning("%s is not a readable manifest; its videos are extracted again", m)
    for p in sorted(out.glob("manifest.rank*.jsonl")):
        for line in p.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "video" in rec:
                recs.append(rec)
    return recs


def _is_done(rec: Dict[str, Any], out: Path, sig: str) -> bool:
    if rec.get("signature") != sig or "error" in rec or "file" not in rec:
        return False
    f = out / rec["file"]
    return f.is_file() and f.stat().st_size == rec.get("bytes")


def _done_records(recs, out: Path, sig: str) -> Dict[str, Dict[str, Any]]:
    return {r["video"]: r for r in recs if _is_done(r, out, sig)}


def _append_record(path: Path, rec: Dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _probe_job(vid: str, path: str, protocol: Protocol, backend: Optional[str], batch: int):
    """A :class:`_Job` for a readable video, else the reason it cannot be read."""
    if os.path.isdir(path):
        return "a folder, not a video file: tada extract maps clip times to source frames by timestamp, " \
               "which a frame folder does not have"
    try:
        info = probe(path, backend, fps=protocol.fps)
        native = probe(path, backend)
    except VideoDecodeError as e:
        return e.reason
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    plan = plan_clips(info.num_frames, protocol)
    meta = {"num_frames": info.num_frames, "duration": native.duration, "source_fps": native.fps,
            "source_frames": native.num_frames, "width": native.width, "height": native.height}
    return _Job(vid, path, plan, meta, batch)


def _entry(job: _Job, file: str, nbytes: int, shape, sig: str) -> Dict[str, Any]:
    p = job.plan.protocol
    rec: Dict[str, Any] = {"video": job.vid, "path": job.path, "file": file, "bytes": nbytes,
                           "shape": list(shape), "num_clips": len(job.plan), **job.info, "signature": sig}
    if p.stride is not None:
        rec["first_centre"] = (p.span / 2) / p.fps
        rec["centre_step"] = p.stride / p.fps
    else:
        rec["starts"] = job.plan.starts()
        rec["centres"] = job.plan.centres().tolist()
    return rec


def _warn_other_signature(out: Path, sig: str, settings: Dict[str, Any]) -> None:
    m = out / MANIFEST
    if not m.is_file():
        return
    try:
        old = json.loads(m.read_text())
    except ValueError:
        return
    if old.get("signature") in (None, sig):
        return
    was = old.get("settings", {})
    diff = sorted(k for k in set(was) | set(settings) if was.get(k) != settings.get(k))
    log.warning("%s was written for another protocol or model (differs in: %s); videos are extracted again "
                "and their files replaced", m, ", ".join(diff) or "unknown")


@torch.inference_mode()
def extract(videos: Sequence[Tuple[str, str]], out_dir, *, model: torch.nn.Module, protocol: Protocol,
            mean: Sequence[float] = TF.IMAGENET_MEAN, std: Sequence[float] = TF.IMAGENET_STD,
            output_format: str = "npy", scores: bool = False, class_names: Optional[Sequence[str]] = None,
            batch_size: int = 8, workers: int = 2, device="cpu", backend: Optional[str] = None,
            model_info: Optional[Dict[str, Any]] = None, rank: int = 0, world_size: int = 1,
            progress: bool = False, head_sizes: Optional[Sequence[int]] = None) -> ExtractSummary:
    """Extract ``videos`` (``(id, path)`` pairs, e.g. from :func:`read_video_list`) into ``out_dir``
    with ``model`` (eval mode) under ``protocol``; this rank takes the videos ``i % world_size == rank``
    and, after a barrier, rank 0 writes ``manifest.json``. ``model_info`` (name, checkpoint path, size,
    mtime) goes into the manifest and, except the path, into the signature that decides what a rerun
    skips. ``head_sizes``: the class count of each head when the scores come from several (Epic-Kitchens
    verb + noun: a softmax per head). Returns this rank's :class:`ExtractSummary`."""
    from .distributed import barrier

    if output_format not in FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; choose one of {sorted(FORMATS)}")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    if backend is not None and backend not in available_backends():
        raise ValueError(f"video backend {backend!r} is not available here; available: {available_backends()}")
    multiple = getattr(model, "frame_multiple", 1)
    if protocol.clip_frames % multiple:
        raise ValueError(f"clip_frames={protocol.clip_frames}: this model needs a multiple of {multiple} frames")
    device = torch.device(device)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ext = FORMATS[output_format]
    model_info = dict(model_info or {"name": type(model).__name__})
    norm = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    settings = {"protocol": protocol.to_dict(), "output_format": output_format, "scores": bool(scores),
                "normalize": norm, "backend": backend,
                "model": {k: v for k, v in model_info.items() if k != "checkpoint"}}
    sig = _signature(settings)
    if rank == 0:
        _warn_other_signature(out, sig, settings)
    summary = ExtractSummary()
    records = _read_records(out)
    done = _done_records(records, out, sig)
    partial = out / f"manifest.rank{rank}.jsonl"

    mine = [(i, vid, path) for i, (vid, path) in enumerate(videos) if i % world_size == rank]
    jobs: List[_Job] = []
    for _, vid, path in mine:
        for stale in out.glob(f".{vid}{ext}.*.tmp"):  # a write a kill interrupted
            stale.unlink()
        if vid in done:
            summary.skipped.append(vid)
            continue
        job = _probe_job(vid, path, protocol, backend, batch_size)
        if isinstance(job, str):
            _fail(summary, partial, vid, path, job, sig)
        else:
            jobs.append(job)

    if jobs:
        _run_jobs(jobs, summary, out, partial, model, protocol, mean, std, output_format, scores, batch_size,
                  workers, device, backend, sig, progress, rank, world_size, head_sizes)
    summary.seconds = time.perf_counter() - t0

    barrier("waiting for every rank to finish its videos before writing the manifest")
    if rank == 0:
        path, summary.total_videos, summary.total_unreadable = _write_manifest(
            videos, out, sig, settings, model_info, class_names, protocol, output_format, scores, model)
        summary.manifest = str(path)
    barrier("waiting for rank 0 to write the manifest")
    return summary


def _fail(summary: ExtractSummary, partial: Path, vid: str, path: str, reason: str, sig: str) -> None:
    log.warning("cannot read video %s (%s): %s; it is listed under 'unreadable' in the manifest", vid, path, reason)
    summary.unreadable[vid] = reason
    _append_record(partial, {"video": vid, "path": path, "error": reason, "signature": sig})


def _run_jobs(jobs, summary, out, partial, model, protocol, mean, std, output_format, scores, batch_size, workers,
              device, backend, sig, progress, rank, world_size, head_sizes=None) -> None:
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from .evaluate import run_model

    ds = _WindowDataset(jobs, FramePreprocess(protocol.short_side, protocol.crops, mean, std), protocol.fps, backend)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    views = len(protocol.crops)
    ext = FORMATS[output_format]
    bar = tqdm(total=sum(len(j.plan) for j in jobs), unit="clip", disable=not progress, dynamic_ncols=True,
               file=sys.stderr, desc=f"extract (rank {rank}/{world_size})" if world_size > 1 else "extract")

    def inputs(item):  # None: the model skips this window (its video failed)
        job = jobs[item["job"]]
        if job.failed or "error" in item:
            return None
        return _gather_clips(item["frames"], item["positions"])

    def forward(model, x):
        fmap = model.forward_features(x)
        f = model.forward_head(fmap, pre_logits=True).float()
        if not scores:
            return f, None
        logits = model.forward_head(fmap).float()
        parts = logits.split(list(head_sizes), dim=1) if head_sizes else (logits,)
        return f, torch.cat([torch.softmax(p, dim=1) for p in parts], dim=1)

    def on_window(out, item):
        job: _Job = jobs[item["job"]]
        n = min(batch_size, len(job.plan) - item["window"] * batch_size)
        bar.update(n)
        if job.failed:
            return
        if "error" in item:
            job.failed = item["error"]
            job.feats, job.scores = [], []
            _fail(summary, partial, job.vid, job.path, job.failed, sig)
            return
        summary.peak_frames_held = max(summary.peak_frames_held, item["held"])
        summary.peak_frames_decoded = max(summary.peak_frames_decoded, item["decoded"])
        f, p = out
        job.feats.append(f.reshape(n, views * f.shape[1]).cpu().numpy())
        if scores:
            job.scores.append(p.reshape(n, views, p.shape[1]).mean(1).cpu().numpy())
        summary.clips += n
        if item["window"] == job.num_windows - 1:
            feats = np.concatenate(job.feats)
            sc = np.concatenate(job.scores) if scores else None
            data = encode_features(feats, sc, output_format)
            name = job.vid + ext
            _atomic_write(out_dir / name, data)
            shape = (feats.shape[0], feats.shape[1] + (sc.shape[1] if sc is not None else 0))
            _append_record(partial, _entry(job, name, len(data), shape, sig))
            summary.extracted.append(job.vid)
            job.feats, job.scores = [], []

    out_dir = out
    try:
        run_model(model, loader, on_window, device=device, inputs=inputs, forward=forward)
    finally:
        bar.close()


def _write_manifest(videos, out: Path, sig: str, settings, model_info, class_names, protocol: Protocol,
                    output_format: str, scores: bool, model) -> Tuple[Path, int, int]:
    recs = _read_records(out)
    done = _done_records(recs, out, sig)
    errors = {r["video"]: r for r in recs if r.get("signature") == sig and "error" in r}
    entries, unreadable = [], []
    for vid, path in videos:
        if vid in done:
            e = {k: v for k, v in done[vid].items() if k != "signature"}
            entries.append(e)
        else:
            reason = errors.get(vid, {}).get("error", "not extracted (no rank reported it)")
            unreadable.append({"video": vid, "path": path, "error": reason})
    dim = None
    if entries:
        dim = entries[0]["shape"][1] - (len(class_names) if scores and class_names else 0)
    elif hasattr(model, "num_features"):
        dim = int(model.num_features) * len(protocol.crops)
    manifest = {
        "format_version": MANIFEST_VERSION,
        "tool": "tada extract",
        "signature": sig,
        "output_format": output_format,
        "extension": FORMATS[output_format],
        "protocol": protocol.to_dict(),
        "time_rule": TIME_RULE,
        "normalize": settings["normalize"],
        "backend": settings["backend"],
        "model": model_info,
        "columns": {
            "feature_dim": dim,
            "crops": list(protocol.crops),
            "features": "pooled pre-logits, model.forward_head(model.forward_features(x), pre_logits=True); "
                        "with several crops, their features side by side in the order of 'crops'",
            "scores": (f"softmax class scores averaged over the crops, {len(class_names or [])} columns after the "
                       "features (npy, mmaction) or the 'scores' array (actionformer)") if scores else None,
        },
        "class_names": list(class_names) if class_names is not None else None,
        "settings": settings,
        "videos": entries,
        "unreadable": unreadable,
    }
    path = out / MANIFEST
    _atomic_write(path, (json.dumps(manifest, indent=1) + "\n").encode())
    for p in out.glob("manifest.rank*.jsonl"):
        p.unlink()
    return path, len(entries), len(unreadable)


# --------------------------------------------------------------------------------------------------
# command line


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (main), instead of usage text
        raise _UsageError(message)


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tada extract", description="Clip features of every video of a list, for temporal action "
                "localisation (BMN, ActionFormer). See tada.engine.extract for the protocol and time rule.")
    p.add_argument("config", help="YAML config: data.normalize, data.root, data.backend and protocol defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.root=/videos")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `tada train` (gives the model)")
    p.add_argument("--list", required=True, dest="video_list",
                   help="video paths, one a line (a trailing integer label is ignored)")
    p.add_argument("--out", required=True, help="output folder (features, manifest.json)")
    p.add_argument("--root", default=None, help="folder relative paths are joined to (default: data.root, else "
                   "the list's folder)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="epic: 60 fps, 8x8, stride 8, short side 224; hacs: "
                   "30 fps, 8x8, stride 16, short side 128; anet: 100 clips per video")
    p.add_argument("--format", dest="output_format", choices=list(FORMATS), default="npy",
                   help="npy: <id>.npy T x C; actionformer: <id>.npz with 'feats'; mmaction: <id>.csv (BMN)")
    g = p.add_argument_group("protocol (overrides the preset and the config)")
    g.add_argument("--fps", type=_positive_float, help="target frame rate of the clip timeline")
    g.add_argument("--clip-frames", type=_int_at_least(1), help="frames per clip")
    g.add_argument("--interval", type=_int_at_least(1), help="target-fps frames between a clip's frames")
    g.add_argument("--stride", type=_int_at_least(1), help="target-fps frames between clip starts")
    g.add_argument("--num-clips", type=_int_at_least(1), help="a fixed number of clips per video, spread uniformly")
    g.add_argument("--short-side", type=_int_at_least(1), help="resize frames so their short side is this")
    g.add_argument("--crop", choices=_CROPS, default=None, help="none: the whole frame (default); centre: a "
                   "short-side square")
    g.add_argument("--per-crop", action="store_true", default=None,
                   help="three short-side squares (left/centre/right), features concatenated")
    g.add_argument("--scores", action="store_true", help="also write the softmax class scores")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="clips per model call and per decoded window (default: data.batch_size)")
    r.add_argument("--workers", type=_int_at_least(0), default=2, help="decoding processes (default 2)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--backend", default=None, help="video decoder (default: data.backend, else pyav)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _load_model(checkpoint, device):
    """``(model in eval mode, its config, label space)`` of a checkpoint written by ``tada train``."""
    from .build import load_for_inference

    return load_for_inference(checkpoint, device)


def _run(args) -> int:
    from .config import load_config
    from .distributed import cleanup, init_distributed

    cfg = load_config(args.config, args.overrides)
    if args.per_crop and args.crop == "centre":
        raise ValueError("--per-crop takes three crops (left, centre, right); it does not combine with --crop centre")
    protocol = resolve_protocol(cfg.data, args.preset, fps=args.fps, clip_frames=args.clip_frames,
                                interval=args.interval, stride=args.stride, num_clips=args.num_clips,
                                short_side=args.short_side, crop=args.crop, per_crop=args.per_crop)
    root = args.root if args.root is not None else (cfg.data.root or None)
    videos = read_video_list(args.video_list, root)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--checkpoint {ckpt}: no such file")
    backend = args.backend if args.backend is not None else cfg.data.backend
    batch = args.batch_size or cfg.data.batch_size
    dist = init_distributed(args.device)
    try:
        model, mcfg, labels = _load_model(ckpt, dist.device)
        # score columns: the class names, head by head ("verb:take", ... for Epic-Kitchens)
        names = labels.class_names if not labels.multi_head else [
            f"{h}:{n}" for h, head in zip(labels.heads, labels.names) for n in head]
        st = ckpt.stat()
        model_info = {"name": mcfg.model.name, "checkpoint": str(ckpt.resolve()), "checkpoint_bytes": st.st_size,
                      "checkpoint_mtime_ns": st.st_mtime_ns}
        mean, std = (TF.CLIP_MEAN, TF.CLIP_STD) if cfg.data.normalize == "clip" else (TF.IMAGENET_MEAN, TF.IMAGENET_STD)
        s = extract(videos, args.out, model=model, protocol=protocol, mean=mean, std=std,
                    output_format=args.output_format, scores=args.scores, class_names=names, batch_size=batch,
                    workers=args.workers, device=dist.device, backend=backend, model_info=model_info,
                    rank=dist.rank, world_size=dist.world_size,
                    head_sizes=labels.sizes if labels.multi_head else None,
                    progress=dist.is_main and not args.no_progress and sys.stderr.isatty())
    finally:
        cleanup()
    if dist.is_main:
        mine = f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""
        print(f"tada extract: {len(s.extracted)} extracted ({s.clips} clips, {s.clips_per_s:.2f} clips/s), "
              f"{len(s.skipped)} already there{mine}; {s.total_videos} videos with features, "
              f"{s.total_unreadable} unreadable -> {s.manifest}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tada extract``; returns the exit code (2: a bad option, path or value, with a one-line message)."""
    from .commands import run_command

    return run_command("tada extract", lambda a: _run(build_parser().parse_intermixed_args(a)), argv,
                       interrupted="interrupted (run the same command again to resume)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
