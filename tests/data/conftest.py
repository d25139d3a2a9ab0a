"""Fixtures for the data tests: small real videos (H.264 via PyAV) and broken files beside them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tada.data.synth import write_video

SIZE = 32
FRAMES = 16


def textured_frames(seed: int, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A small moving pattern, distinct per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size, size, 3)).astype(np.float32)
    out = np.stack([np.roll(base, t, axis=1) for t in range(frames)])
    return out.astype(np.uint8)


def index_frames(frames: int, size: int = SIZE, step: int = 4) -> np.ndarray:
    """Flat grey frames whose level ``step * k`` encodes the frame index k."""
    levels = (np.arange(frames) * step).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, size, size, 3)).copy()


def decoded_index(video_uint8_or_float, step: int = 4) -> list:
    """Inverse of :func:`index_frames` for a decoded clip (T, H, W, 3) uint8 or (3, T, H, W) in [0, 1]."""
    import torch

    v = torch.as_tensor(video_uint8_or_float)
    if v.dtype == torch.uint8:
        levels = v.float().mean(dim=(1, 2, 3))
    else:
        levels = v.float().mean(dim=(0, 2, 3)) * 255.0
    return [int(round(x / step)) for x in levels.tolist()]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """``good/{a,b}_{i}.mp4`` (6 real videos, 16 frames of 32x32 at 30 fps) and broken files:
    ``bad/zero.mp4`` (0 bytes), ``bad/truncated.mp4`` (first 40% of a good file: no moov atom), ``bad/cut.mp4``
    (a faststart file cut inside its first frame: opens, cannot be decoded), ``bad/text.mp4`` (a text file), and
    ``bad/missing.mp4`` does not exist."""
    root = tmp_path_factory.mktemp("videos")
    (root / "good").mkdir()
    (root / "bad").mkdir()
    for i in range(6):
        write_video(root / "good" / f"{'ab'[i % 2]}_{i}.mp4", textured_frames(i))
    (root / "bad" / "zero.mp4").write_bytes(b"")
    data = (root / "good" / "a_0.mp4").read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    (root / "bad" / "text.mp4").write_text("this is not a video\n" * 20)
    # moov atom first (faststart), then the media data cut 64 bytes in, inside the first (key) frame: the
    # header opens and no frame decodes. (Cut at 40% of the file, as before, its first 9 frames still
    # decoded, so a random training clip sometimes read it and the worker test was flaky.)
    write_video(root / "cut.mp4", textured_frames(9, frames=60), faststart=True)
    data = (root / "cut.mp4").read_bytes()
    mdat = data.index(b"mdat")
    assert mdat > data.index(b"moov"), "write_video(faststart=True) must put the moov atom first"
    (root / "bad" / "cut.mp4").write_bytes(data[: mdat + 4 + 64])
    (root / "cut.mp4").unlink()
    return root


GOOD = [f"good/{'ab'[i % 2]}_{i}.mp4" for i in range(6)]
BAD = ["bad/missing.mp4", "bad/zero.mp4", "bad/truncated.mp4", "bad/text.mp4", "bad/cut.mp4"]


@pytest.fixture(scope="session")
def mixed_list(video_dir) -> Path:
    """A Kinetics-style list over good and bad files (bad ones interleaved), labels = i % 2."""
    names = [GOOD[0], BAD[0], GOOD[1], GOOD[2], BAD[1], GOOD[3], BAD[2], GOOD[4], BAD[3], GOOD[5], BAD[4]]
    lst = video_dir / "mixed.txt"
    lst.write_text("".join(f"{p} {0 if '/a_' in p else 1}\n" for p in names))
    return lst


@pytest.fixture(scope="session")
def h():
    """The helpers above, for test modules (tests/ is not a package, so they cannot import them)."""
    from types import SimpleNamespace

    return SimpleNamespace(GOOD=GOOD, BAD=BAD, SIZE=SIZE, FRAMES=FRAMES, textured_frames=textured_frames,
                           index_frames=index_frames, decoded_index=decoded_index)
