"""Read a long video a window of clips at a time, never the whole of it (feature extraction).

A *clip* is a list of frame indices on some frame grid (for ``tada extract``: the target-fps grid,
read with ``read_frames(..., fps=target_fps)``; see :mod:`tada.data.decode` for how an index maps to
the frame on screen at that time). Consecutive clips of a dense protocol share most of their frames
(8 frames at interval 8, one clip every 8 frames: clip k+1 adds one new frame), so a *window* of
``batch`` consecutive clips is read as the sorted set of distinct indices its clips use, once each,
with one seek (:func:`tada.data.decode.read_frames` decodes forward from the keyframe before the first
one to the last one). Each clip is then a gather of positions into that set.

What one window holds is bounded by the batch, not by the video: at most ``batch * frames_per_clip``
distinct frames (``batch + frames_per_clip - 1`` for the dense protocol above), whatever the video's
length. :class:`StreamStats` records what was actually read (frames converted to RGB and held, and
frames the decoder went through to reach them), so that bound can be checked on real files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from .decode import DecodeStats, read_frames

__all__ = ["ClipWindow", "StreamStats", "make_window", "clip_windows", "read_window", "iter_windows"]


@dataclass(frozen=True)
class ClipWindow:
    """Clips ``first_clip … first_clip + len(positions) - 1`` of a video, read together.

    ``frames``: the distinct frame indices these clips use, ascending. ``positions[b][i]``: where
    frame ``i`` of the window's clip ``b`` is in ``frames``."""

    first_clip: int
    frames: Tuple[int, ...]
    positions: Tuple[Tuple[int, ...], ...]

    @property
    def num_clips(self) -> int:
        return len(self.positions)

    def positions_tensor(self) -> torch.Tensor:
        """``positions`` as a ``(num_clips, frames_per_clip)`` int64 tensor (clips of equal length)."""
        return torch.tensor(self.positions, dtype=torch.long)


@dataclass
class StreamStats:
    """What :func:`read_window` read: windows, frames handed out, the most frames held at once
    (converted to RGB for one window: what the reader keeps in memory), and the most frames the
    decoder produced for one window (including those between the keyframe and the first frame
    needed, which are dropped as they are decoded)."""

    windows: int = 0
    frames: int = 0
    peak_frames_held: int = 0
    peak_frames_decoded: int = 0

    def add(self, held: int, decoded: int) -> None:
        self.windows += 1
        self.frames += held
        self.peak_frames_held = max(self.peak_frames_held, held)
        self.peak_frames_decoded = max(self.peak_frames_decoded, decoded)

    def merge(self, other: "StreamStats") -> None:
        self.windows += other.windows
        self.frames += other.frames
        self.peak_frames_held = max(self.peak_frames_held, other.peak_frames_held)
        self.peak_frames_decoded = max(self.peak_frames_decoded, other.peak_frames_decoded)


def make_window(clips: Sequence[Sequence[int]], first_clip: int = 0) -> ClipWindow:
    """One window holding ``clips`` (each a list of frame indices), the first being clip ``first_clip``."""
    group = [tuple(int(i) for i in c) for c in clips]
    if not group or not all(group):
        raise ValueError("a window needs at least one clip of at least one frame")
    frames = tuple(sorted({i for c in group for i in c}))
    where = {f: p for p, f in enumerate(frames)}
    return ClipWindow(int(first_clip), frames, tuple(tuple(where[i] for i in c) for c in group))


def clip_windows(clips: Sequence[Sequence[int]], batch: int) -> List[ClipWindow]:
    """Cut ``clips`` into windows of ``batch`` consecutive clips (the last one may be shorter)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return [make_window(clips[first:first + batch], first) for first in range(0, len(clips), batch)]


def read_window(path, window: ClipWindow, *, fps: Optional[float] = None, backend: Optional[str] = None,
                num_threads: int = 0, stats: Optional[StreamStats] = None) -> torch.Tensor:
    """The window's distinct frames, uint8 ``(len(window.frames), H, W, 3)``, read with
    :func:`tada.data.decode.read_frames` on the ``fps`` grid (one seek, decoding forward).
    Raises :class:`tada.data.decode.VideoDecodeError` for a file that cannot be read there."""
    dstats = DecodeStats()
    frames = read_frames(os.fspath(path), window.frames, backend, fps=fps, num_threads=num_threads, stats=dstats)
    if stats is not None:
        # held: the RGB frames the decoder converted, or the stacked result, whichever is more
        stats.add(max(dstats.converted, len(window.frames)), dstats.decoded)
    return frames


def iter_windows(path, clips: Sequence[Sequence[int]], batch: int, *, fps: Optional[float] = None,
                 backend: Optional[str] = None, stats: Optional[StreamStats] = None
                 ) -> Iterator[Tuple[ClipWindow, torch.Tensor]]:
    """``(window, its distinct frames)`` for the windows of ``clips``, one window decoded at a time."""
    for w in clip_windows(clips, batch):
        yield w, read_window(path, w, fps=fps, backend=backend, stats=stats)
