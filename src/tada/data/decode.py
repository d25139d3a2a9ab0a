"""Video decoding: pick frames by index from a video file or a folder of images.

Everything returns uint8 ``(T, H, W, 3)`` RGB tensors (the decoder's natural layout; the transforms
in :mod:`tada.data.transforms` take it from there).

**Frame index rule.** Index ``k`` names the frame *on screen* at time ``t0 + k / fps``, where ``t0``
is the stream's first timestamp and ``fps`` its nominal rate (``VideoInfo.fps``). Timestamps are
snapped to that grid first: a frame with presentation time ``pts`` occupies slot
``round((pts - t0) * fps)``, and index ``k`` returns the *last* frame whose slot is ``<= k``. For
constant-frame-rate video this is exactly "the k-th frame in presentation order" (the rounding
absorbs millisecond timestamps such as WebM's); for variable-frame-rate video it selects by time,
holding a frame until the next one is due, and when two frames fall in one slot the later one wins.
Indices past the end are clamped to the last frame; negative indices are an error.

**Seeking.** :func:`read_frames` seeks to the keyframe at or before the first needed timestamp and
decodes forward only until the last needed one, so a clip near the end of a long video costs one GOP
plus the clip, not the whole file. Only frames that are returned are converted to RGB.

**Backends.** ``"pyav"`` (default, always present), ``"torchcodec"`` and ``"decord"`` when importable
(these two index frames by decode order as their libraries do, which equals the rule above for
constant-frame-rate video), and ``"frames"``: a directory of images (``00001.jpg``,
``img_00001.jpg``, …, sorted naturally by the numbers in their names). A directory is always read as
a frame folder, whatever ``backend`` says. A frame folder has no clock: its ``fps`` is the ``fps``
argument, default :data:`DEFAULT_FOLDER_FPS` (30). For video files ``fps=`` overrides the nominal rate
used for the index grid (e.g. to read a variable-frame-rate phone video on a 30 fps grid).

Broken input raises :class:`VideoDecodeError` (a missing, empty, truncated or undecodable file); the
dataset layer decides whether to log and replace the sample.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "DecodeStats",
    "probe",
    "read_frames",
    "read_time_range",
    "available_backends",
    "list_frame_files",
    "DEFAULT_FOLDER_FPS",
    "IMAGE_EXTENSIONS",
]

DEFAULT_FOLDER_FPS = 30.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# A video that ends this many frames (or this fraction of its announced length, whichever is larger)
# before the container said it would is reported as truncated. Real files are often off by a frame
# or two between header and stream; a half-written download is off by far more.
_TRUNCATION_SLACK_FRAMES = 4
_TRUNCATION_SLACK_FRACTION = 0.05


class VideoDecodeError(RuntimeError):
    """A video could not be read. ``.path`` is the offending file, ``.reason`` a short explanation."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    duration: float  # seconds
    width: int
    height: int


@dataclass
class DecodeStats:
    """Instrumentation filled in by :func:`read_frames` when passed as ``stats=``: how many frames the
    decoder produced, how many were converted to RGB, how many seeks were issued."""

    decoded: int = 0
    converted: int = 0
    seeks: int = 0
    backend: str = ""


# --------------------------------------------------------------------------------------------------
# backend selection


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends usable in this environment, default first. ``"frames"`` (image folders) is always
    available."""
    out = ["pyav"]
    if _importable("torchcodec"):
        out.append("torchcodec")
    if _importable("decord"):
        out.append("decord")
    out.append("frames")
    return out


_KNOWN_BACKENDS = ("pyav", "torchcodec", "decord", "frames")


def _resolve_backend(path: str, backend: str | None) -> str:
    if backend is not None and backend not in _KNOWN_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {list(_KNOWN_BACKENDS)}")
    if os.path.isdir(path):
        return "frames"
    if backend is None or backend == "frames":
        if backend == "frames":
            raise VideoDecodeError(path, "backend='frames' needs a directory of images")
        return "pyav"
    if backend in ("torchcodec", "decord") and not _importable(backend):
        raise ImportError(
            f"video backend {backend!r} was requested but the package {backend!r} is not installed; "
            f"available backends: {available_backends()}")
    return backend


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _check_indices(indices: Sequence[int]) -> list[int]:
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("read_frames needs at least one frame index")
    if min(idx) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(idx)}")
    return idx


# --------------------------------------------------------------------------------------------------
# public API


def probe(path, backend: str | None = None, *, fps: float | None = None) -> VideoInfo:
    """Frame count, nominal frame rate, duration and size of a video file or frame folder.

    ``num_frames`` is the number of valid frame indices: the container's frame count when it stores
    one (MP4), else ``round(duration * fps)`` (WebM/MKV), else a count of the stream's packets. Results
    are cached per (path, size, mtime), so probing the same file again is free."""
    path = os.fspath(path)
    kind = _resolve_backend(path, backend)
    _check_file(path)
    st = os.stat(path)
    return _probe_cached(path, kind, None if fps is None else float(fps), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _probe_cached(path: str, kind: str, fps: float | None, _size: int, _mtime: int) -> VideoInfo:
    if kind == "frames":
        return _probe_folder(path, fps)
    if kind == "torchcodec":
        return _probe_torchcodec(path, fps)
    if kind == "decord":
        return _probe_decord(path, fps)
    return _probe_pyav(path, fps)


def read_frames(path, indices: Sequence[int], backend: str | None = None, *, fps: float | None = None,
                num_threads: int = 0, stats: DecodeStats | None = None) -> torch.Tensor:
    """Frames ``indices`` (any order, repeats allowed) of a video as uint8 ``(len(indices), H, W, 3)``.

    See the module docstring for the index rule; indices past the end give the last frame.
    ``num_threads`` is the decoder's thread count (0: FFmpeg's choice); ``stats`` receives
    instrumentation counters."""
    path = os.fspath(path)
    idx = _check_indices(indices)
    kind = _resolve_backend(path, backend)
    _check_file(path)
    stats = stats if stats is not None else DecodeStats()
    stats.backend = kind
    if kind == "frames":
        return _read_folder(path, idx, stats)
    if kind == "torchcodec":
        return _read_torchcodec(path, idx, fps, stats)
    if kind == "decord":
        return _read_decord(path, idx, num_threads, stats)
    return _read_pyav(path, idx, fps, num_threads, stats)


def read_time_range(path, start_sec: float, end_sec: float, backend: str | None = None, *,
                    fps: float | None = None, num_threads: int = 0,
                    stats: DecodeStats | None = None) -> torch.Tensor:
    """All frames whose grid time lies in ``[start_sec, end_sec]`` (at least one), as
    :func:`read_frames` returns them. Times are relative to the start of the video."""
    if end_sec < start_sec:
        raise ValueError(f"end_sec ({end_sec}) < start_sec ({start_sec})")
    info = probe(path, backend, fps=fps)
    first = max(0, math.ceil(start_sec * info.fps - 1e-6))
    last = min(info.num_frames - 1, math.floor(end_sec * info.fps + 1e-6))
    last = max(first, last)
    return read_frames(path, range(first, last + 1), backend, fps=fps, num_threads=num_threads, stats=stats)


# --------------------------------------------------------------------------------------------------
# PyAV


def _open_pyav(path: str):
    import av

    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:  # InvalidDataError, "moov atom not found", …
        raise VideoDecodeError(path, f"FFmpeg could not open it ({e})") from None
    except (OSError, ValueError) as e:
        raise VideoDecodeError(path, f"could not open it ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container, container.streams.video[0]


def _stream_fps(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _stream_duration(container, stream) -> float:
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return 0.0


def _probe_pyav(path: str, fps_override: float | None) -> VideoInfo:
    container, stream = _open_pyav(path)
    try:
        fps = Fraction(fps_override).limit_denominator(1001000) if fps_override else _stream_fps(stream)
        duration = _stream_duration(container, stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        num = int(stream.frames or 0) if not fps_override else 0
        if num <= 0 and fps and duration > 0:
            num = int(round(duration * fps))
        if num <= 0:  # no header information: count packets (demux only, no decoding)
            import av

            try:
                num = sum(1 for p in container.demux(stream) if p.size > 0)
            except av.FFmpegError as e:
                raise VideoDecodeError(path, f"could not read packets ({e})") from None
        if num <= 0:
            raise VideoDecodeError(path, "the video stream has no frames")
        if not fps:
            fps = Fraction(num) / Fraction(duration) if duration > 0 else Fraction(DEFAULT_FOLDER_FPS)
        if duration <= 0:
            duration = float(num / fps)
        if not width or not height:
            raise VideoDecodeError(path, "the video stream has no frame size")
        return VideoInfo(path=path, num_frames=num, fps=float(fps), duration=duration, width=width,
                         height=height)
    finally:
        container.close()


def _read_pyav(path: str, idx: list[int], fps_override: float | None, num_threads: int,
               stats: DecodeStats) -> torch.Tensor:
    import av

    info = probe(path, "pyav", fps=fps_override)
    last_index = info.num_frames - 1
    # clamp to the announced length; the decode loop also copes with a stream shorter than announced
    want = sorted({min(i, last_index) for i in idx})
    fps = Fraction(info.fps).limit_denominator(1001000)

    container, stream = _open_pyav(path)
    try:
        stream.thread_type = "AUTO"
        if num_threads:
            stream.thread_count = int(num_threads)
        tb = stream.time_base
        t0 = stream.start_time if stream.start_time is not None else 0

        def slot_of(frame) -> int | None:
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                return None
            return math.floor((pts - t0) * tb * fps + Fraction(1, 2))

        got: dict[int, np.ndarray] = {}
        # Seek half a frame before the first needed slot (timestamps may be rounded down). If the
        # decoder then starts *after* that slot (the demuxer seeked by DTS, or the keyframe index is
        # coarse), back off by 1 s, then 4 s, then decode from the start.
        first_time = (Fraction(want[0]) - Fraction(1, 2)) / fps
        last_slot = None
        for attempt, margin in enumerate((0, 1, 4, None)):
            got.clear()
            target = None if margin is None else first_time - margin
            from_start = target is None or target <= 0 or want[0] == 0
            if from_start:
                if attempt:  # rewind after a seek that went too far
                    container.seek(t0, stream=stream, backward=True, any_frame=False)
                    stats.seeks += 1
            else:
                container.seek(int(math.floor(target / tb)) + t0, stream=stream, backward=True,
                               any_frame=False)
                stats.seeks += 1
            ok, last_slot, eos = _decode_forward(container, stream, want, got, slot_of, stats, from_start)
            if ok or from_start:
                break
        if not got:
            raise VideoDecodeError(
                path, "no frame could be decoded from the requested position (truncated or corrupt file?)")
        # The stream ended before a wanted index: fine (clamped to the last frame) when it ended about
        # where the container said; a file that ends far earlier than announced is truncated.
        slack = max(_TRUNCATION_SLACK_FRAMES, _TRUNCATION_SLACK_FRACTION * info.num_frames)
        if eos and last_index - last_slot > slack:
            raise VideoDecodeError(
                path, f"the stream ends at frame {last_slot} but {info.num_frames} frames were announced "
                      f"(truncated file?)")
    except av.FFmpegError as e:
        raise VideoDecodeError(path, f"decoding failed ({e})") from None
    finally:
        container.close()
    frames = [got[min(i, last_index)] for i in idx]
    return torch.from_numpy(np.stack(frames))


def _decode_forward(container, stream, want, got, slot_of, stats, from_start):
    """Decode from the current position, filling ``got[k]`` for every wanted k with the last frame
    whose slot is <= k. Indices before the first frame's slot get the first frame when decoding from
    the start; after a seek, a first frame later than ``want[0]`` means the seek went too far.

    Returns ``(ok, last_slot, eos)``: ok is False only when the seek went too far; ``last_slot`` is the
    slot of the last frame decoded; ``eos`` whether the stream ended before the last wanted index
    (remaining indices then get the last frame)."""
    pos = 0  # next wanted index to fill
    prev = None  # the last decoded frame with a timestamp
    prev_array = None  # its RGB array, converted on first use
    last_slot = None
    for frame in container.decode(stream):
        stats.decoded += 1
        s = slot_of(frame)
        if s is None:
            continue
        if prev is None and s > want[0]:
            if not from_start:
                return False, s, False
            prev = frame  # from the start: the first frame stands in for earlier indices
        # every wanted index before this frame's slot is shown by the previous frame
        while pos < len(want) and want[pos] < s:
            if prev_array is None:
                prev_array = prev.to_ndarray(format="rgb24")
                stats.converted += 1
            got[want[pos]] = prev_array
            pos += 1
        if pos >= len(want):
            return True, last_slot, False
        if prev is not frame:
            prev, prev_array = frame, None
        last_slot = s
    if prev is None:
        return True, None, True
    # end of stream: the last frame stays on screen for every remaining index
    if pos < len(want):
        if prev_array is None:
            prev_array = prev.to_ndarray(format="rgb24")
            stats.converted += 1
        for k in want[pos:]:
            got[k] = prev_array
    return True, last_slot, want[-1] > last_slot


# --------------------------------------------------------------------------------------------------
# frame folders

_NUM_RE = re.compile(r"(\d+)")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in _NUM_RE.split(name)]


@functools.lru_cache(maxsize=4096)
def _list_cached(path: str, _mtime: int) -> tuple[str, ...]:
    names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    names.sort(key=_natural_key)
    return tuple(os.path.join(path, n) for n in names)


def list_frame_files(path) -> list[str]:
    """Image files of a frame folder, sorted naturally (``img_2.jpg`` before ``img_10.jpg``)."""
    path = os.fspath(path)
    return list(_list_cached(path, os.stat(path).st_mtime_ns))


def _probe_folder(path: str, fps: float | None) -> VideoInfo:
    files = list_frame_files(path)
    if not files:
        raise VideoDecodeError(path, f"frame folder contains no images ({'/'.join(IMAGE_EXTENSIONS)})")
    h, w = _read_image(files[0]).shape[:2]
    fps = float(fps) if fps else DEFAULT_FOLDER_FPS
    return VideoInfo(path=path, num_frames=len(files), fps=fps, duration=len(files) / fps, width=w, height=h)


def _read_image(file: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001  (PIL raises many types for broken images)
        raise VideoDecodeError(file, f"cannot read image ({e})") from None


def _read_folder(path: str, idx: list[int], stats: DecodeStats) -> torch.Tensor:
    files = list_frame_files(path)
    if not files:
        raise VideoDecodeError(path, "frame folder contains no images")
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in idx:
        k = min(i, len(files) - 1)
        if k not in cache:
            cache[k] = _read_image(files[k])
            stats.decoded += 1
            stats.converted += 1
        out.append(cache[k])
    shapes = {a.shape for a in cache.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(path, f"images of different sizes in one frame folder: {sorted(shapes)}")
    return torch.from_numpy(np.stack(out))


# --------------------------------------------------------------------------------------------------
# optional backends (used only when installed)


def _probe_torchcodec(path: str, fps_override: float | None) -> VideoInfo:
    from torchcodec.decoders import VideoDecoder

    try:
        md = VideoDecoder(path, seek_mode="exact").metadata
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(path, f"torchcodec could not open it ({e})") from None
    fps = float(fps_override or md.average_fps or DEFAULT_FOLDER_FPS)
    num = int(md.num_frames or 0)
    dur = float(md.duration_seconds or (num / fps if num else 0.0))
    if fps_override or num <= 0:
        num = int(round(dur * fps))
    if num <= 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    return VideoInfo(path=path, num_frames=num, fps=fps, duration=dur, width=int(md.width), height=int(md.height))


def _read_torchcodec(path: str, idx: list[int], fps_override: float | None, stats: DecodeStats) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    info = probe(path, "torchcodec", fps=fps_override)
    want = sorted({min(i, info.num_frames - 1) for i in idx})
    try:
        dec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC")
        batch = dec.get_frames_at(indices=want).data
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(path, f"torchcodec failed ({e})") from None
    stats.converted += len(want)
    pos = {k: j for j, k in enumerate(want)}
    return batch[[pos[min(i, info.num_frames - 1)] for i in idx]].contiguous()


def _probe_decord(path: str, fps_override: float | None) -> VideoInfo:
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=1)
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(path, f"decord could not open it ({e})") from None
    num = len(vr)
    fps = float(fps_override or vr.get_avg_fps() or DEFAULT_FOLDER_FPS)
    h, w = vr[0].shape[:2]
    return VideoInfo(path=path, num_frames=num, fps=fps, duration=num / fps, width=int(w), height=int(h))


def _read_decord(path: str, idx: list[int], num_threads: int, stats: DecodeStats) -> torch.Tensor:
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=num_threads or 1)
        n = len(vr)
        want = sorted({min(i, n - 1) for i in idx})
        arr = vr.get_batch(want).asnumpy()
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(path, f"decord failed ({e})") from None
    stats.converted += len(want)
    pos = {k: j for j, k in enumerate(want)}
    return torch.from_numpy(arr[[pos[min(i, n - 1)] for i in idx]])
