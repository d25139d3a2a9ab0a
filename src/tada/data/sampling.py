"""Which frames of a video make a clip: *interval* and *segment* sampling, and the test-view grid.

All functions return native frame indices of the video (``0 … num_frames-1``, clamped there), ready
for :func:`tada.data.decode.read_frames`. Randomness comes from ``rng``: a :class:`random.Random`, a
:class:`numpy.random.Generator`, or ``None`` for Python's global :mod:`random` (which PyTorch's
DataLoader seeds differently in every worker).

**Interval sampling** (Kinetics, EK100; ``frames × rate``, e.g. 8×8, 16×5). Sample ``i`` of a clip
is taken at ``i * rate`` frames of a ``target_fps`` clock. In native frames of a video at
``video_fps`` the step is ``step = rate * video_fps / target_fps`` (60 fps video: twice the native
frames), and the clip spans ``span = (frames - 1) * step`` frames from first to last sample. Valid
starts are ``0 … max_start`` with ``max_start = max(0, num_frames - 1 - span)``.

* training: ``start`` uniform over the integers ``0 … floor(max_start)``;
* test: view ``clip_index`` of ``num_clips`` starts at ``round(max_start * (clip_index + 0.5) / num_clips)``,
  the centres of ``num_clips`` equal parts of the valid range (1 clip: the centre of the video);
* index ``i`` = ``start + round(i * step)``, clamped to ``num_frames - 1`` (a video shorter than the
  clip repeats its last frame). Rounding is half-up throughout.

**Segment sampling** (SSV2, TAdaFormer; TSN-style). Frame ``f`` is on screen during ``[f, f+1)``;
the video ``[0, num_frames)`` is cut into ``frames`` equal segments ``[i*L, (i+1)*L)``,
``L = num_frames / frames``, and sample ``i`` is the frame on screen at a time inside segment ``i``:

* training: a uniform random time, ``floor((i + u_i) * L)`` with ``u_i ~ U[0, 1)`` per segment;
* test: a fixed time, view ``clip_index`` of ``num_clips`` at fraction ``(clip_index + 0.5) / num_clips``
  of every segment: ``floor((i + (clip_index + 0.5) / num_clips) * L)`` (computed exactly in integers).
  One view is the segment centres; two views sample at 1/4 and 3/4 of each segment.

Videos with fewer frames than ``frames`` repeat frames.
"""
from __future__ import annotations

import math
import random
from typing import Union

import numpy as np

__all__ = ["interval_indices", "segment_indices", "test_views", "clip_span"]

RNG = Union[random.Random, np.random.Generator, None]


def _randint(rng: RNG, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    if hi <= lo:
        return lo
    if rng is None:
        return random.randint(lo, hi)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(lo, hi + 1))
    if isinstance(rng, random.Random):
        return rng.randint(lo, hi)
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or None, not {type(rng).__name__}")


def _uniform01(rng: RNG) -> float:
    if rng is None:
        return random.random()
    if isinstance(rng, (random.Random, np.random.Generator)):
        return float(rng.random())
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or None, not {type(rng).__name__}")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_common(num_frames: int, frames: int, clip_index: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in [0, {num_clips}), got {clip_index}")


def clip_span(frames: int, rate: int, *, video_fps: float = 30.0, target_fps: float = 30.0) -> float:
    """Native frames from the first to the last sample of an interval-sampled clip."""
    return (frames - 1) * rate * video_fps / target_fps


def interval_indices(num_frames: int, frames: int, rate: int, *, video_fps: float = 30.0,
                     target_fps: float = 30.0, train: bool, clip_index: int = 0, num_clips: int = 1,
                     rng: RNG = None) -> list[int]:
    """``frames`` indices spaced ``rate`` frames apart on a ``target_fps`` clock (see module doc)."""
    _check_common(num_frames, frames, clip_index, num_clips)
    if rate < 1:
        raise ValueError(f"rate must be >= 1, got {rate}")
    if video_fps <= 0 or target_fps <= 0:
        raise ValueError(f"fps must be positive, got video_fps={video_fps}, target_fps={target_fps}")
    step = rate * video_fps / target_fps
    max_start = max(0.0, num_frames - 1 - (frames - 1) * step)
    if train:
        start = _randint(rng, 0, int(math.floor(max_start + 1e-9)))
    else:
        start = _round_half_up(max_start * (clip_index + 0.5) / num_clips)
    last = num_frames - 1
    return [min(start + _round_half_up(i * step), last) for i in range(frames)]


def segment_indices(num_frames: int, frames: int, *, train: bool, clip_index: int = 0,
                    num_clips: int = 1, rng: RNG = None) -> list[int]:
    """One index per each of ``frames`` equal segments of the video (see module doc)."""
    _check_common(num_frames, frames, clip_index, num_clips)
    last = num_frames - 1
    if train:
        return [min(int(math.floor((i + _uniform01(rng)) * num_frames / frames)), last) for i in range(frames)]
    # floor((i + (c + 0.5) / n) * N / T) = floor((2 n i + 2 c + 1) * N / (2 n T)), exactly
    den = 2 * num_clips * frames
    return [min((2 * num_clips * i + 2 * clip_index + 1) * num_frames // den, last) for i in range(frames)]


def test_views(num_clips: int, num_crops: int) -> list[tuple[int, int]]:
    """All ``(clip_index, crop_index)`` test views, clip-major: ``[(0, 0), (0, 1), …, (1, 0), …]``."""
    if num_clips < 1 or num_crops < 1:
        raise ValueError(f"num_clips and num_crops must be >= 1, got {num_clips}, {num_crops}")
    return [(c, s) for c in range(num_clips) for s in range(num_crops)]


test_views.__test__ = False  # not a pytest test, despite the name
