"""Frame sampling against hand-computed indices."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tada.data.sampling import clip_span, interval_indices, segment_indices, test_views


# ------------------------------------------------------------------ interval

def test_interval_test_views_exact():
    # 300 frames, 8x8 at 30 fps: span 56, valid starts 0..243
    one = interval_indices(300, 8, 8, train=False)
    assert one == [122, 130, 138, 146, 154, 162, 170, 178]  # start round(243 * 0.5) = 122
    starts = [interval_indices(300, 8, 8, train=False, clip_index=c, num_clips=4)[0] for c in range(4)]
    # round(243 * (c + 0.5) / 4) = round(30.375, 91.125, 151.875, 212.625)
    assert starts == [30, 91, 152, 213]
    for c, s in enumerate(starts):
        assert interval_indices(300, 8, 8, train=False, clip_index=c, num_clips=4) == [s + 8 * i for i in range(8)]
    # K400 16x5
    assert interval_indices(300, 16, 5, train=False) == [112 + 5 * i for i in range(16)]  # round(224 / 2)


def test_interval_train_within_bounds_and_spacing():
    rng = random.Random(0)
    starts = set()
    for _ in range(3000):
        idx = interval_indices(300, 8, 8, train=True, rng=rng)
        assert all(b - a == 8 for a, b in zip(idx, idx[1:]))
        assert 0 <= idx[0] and idx[-1] <= 299
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 243 and len(starts) > 200
    # numpy generators and the global random module work too, and seeding reproduces
    a = interval_indices(300, 8, 8, train=True, rng=np.random.default_rng(3))
    b = interval_indices(300, 8, 8, train=True, rng=np.random.default_rng(3))
    assert a == b and a[-1] - a[0] == 56
    random.seed(1)
    c = interval_indices(300, 8, 8, train=True)
    random.seed(1)
    assert interval_indices(300, 8, 8, train=True) == c


def test_interval_maps_target_fps_to_native_frames():
    # 60 fps video, 8x8 on a 30 fps clock: native step 16, span 112, valid starts 0..487
    assert interval_indices(600, 8, 8, video_fps=60, train=False) == [244 + 16 * i for i in range(8)]
    for _ in range(50):
        idx = interval_indices(600, 8, 8, video_fps=60, train=True)
        assert all(b - a == 16 for a, b in zip(idx, idx[1:])) and idx[-1] <= 599
    # 50 fps: step 40/3, offsets round(i * 13.33)
    idx = interval_indices(1000, 8, 8, video_fps=50, train=True, rng=random.Random(0))
    assert [i - idx[0] for i in idx] == [0, 13, 27, 40, 53, 67, 80, 93]
    assert clip_span(8, 8, video_fps=50) == pytest.approx(7 * 40 / 3)


def test_interval_short_video_clamps_to_last_frame():
    expected = [0, 8, 16, 24, 32, 39, 39, 39]  # 40 frames, span 56: start 0, tail clamped
    assert interval_indices(40, 8, 8, train=False) == expected
    assert interval_indices(40, 8, 8, train=False, clip_index=3, num_clips=4) == expected
    assert interval_indices(40, 8, 8, train=True, rng=random.Random(5)) == expected
    assert interval_indices(1, 4, 8, train=True) == [0, 0, 0, 0]
    # exactly fitting: one valid start only
    assert interval_indices(57, 8, 8, train=True) == [8 * i for i in range(8)]


def test_interval_rejects_bad_arguments():
    with pytest.raises(ValueError):
        interval_indices(0, 8, 8, train=True)
    with pytest.raises(ValueError):
        interval_indices(100, 8, 8, train=False, clip_index=4, num_clips=4)
    with pytest.raises(TypeError):
        interval_indices(100, 8, 8, train=True, rng=42)


# ------------------------------------------------------------------ segment

def test_segment_test_exact():
    # 10 frames, 4 segments of 2.5 frames: centres 1.25, 3.75, 6.25, 8.75
    assert segment_indices(10, 4, train=False) == [1, 3, 6, 8]
    # two views at 1/4 and 3/4 of each segment: 0.625, 3.125, 5.625, 8.125 | 1.875, 4.375, 6.875, 9.375
    assert segment_indices(10, 4, train=False, clip_index=0, num_clips=2) == [0, 3, 5, 8]
    assert segment_indices(10, 4, train=False, clip_index=1, num_clips=2) == [1, 4, 6, 9]
    assert segment_indices(16, 8, train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    # fewer frames than segments: frames repeat
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_segment_train_one_random_frame_per_segment():
    rng = random.Random(0)
    n, t = 100, 8  # segments of 12.5 frames
    seen = [set() for _ in range(t)]
    for _ in range(2000):
        idx = segment_indices(n, t, train=True, rng=rng)
        assert len(idx) == t and idx == sorted(idx)
        for i, f in enumerate(idx):
            # frame f is on screen during [f, f+1): it must overlap segment [12.5 i, 12.5 (i+1))
            assert math.floor(12.5 * i) <= f <= math.ceil(12.5 * (i + 1)) - 1
            seen[i].add(f)
    for i in range(t):
        assert seen[i] == set(range(math.floor(12.5 * i), math.ceil(12.5 * (i + 1))))
    short = segment_indices(3, 8, train=True, rng=rng)
    assert all(0 <= f <= 2 for f in short) and short == sorted(short)


def test_views_grid():
    assert test_views(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert test_views(4, 3)[-1] == (3, 2) and len(test_views(4, 3)) == 12
    assert test_views(1, 1) == [(0, 0)]
    with pytest.raises(ValueError):
        test_views(0, 3)
