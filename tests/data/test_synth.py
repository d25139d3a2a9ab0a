"""The synthetic time-reversal benchmark: real files, determinism, and frame statistics per pair."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from tada.cli import main
from tada.data.synth import (
    DEFAULT_CLASSES, REVERSAL_PAIRS, SYNTH_CLASSES, make_synthetic_dataset, render_clip, resolve_classes,
)


def decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def read_list(path):
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    argv = ["synth", "--out", str(out), "--classes", "4", "--per-class", "5", "--frames", "8", "--size", "32",
            "--seed", "1", "--quiet"]
    assert main(argv) == 0
    return out


def test_cli_writes_real_videos_and_lists(tiny, capsys):
    classes = (tiny / "classes.txt").read_text().splitlines()
    assert classes == ["moving_right", "moving_left", "moving_down", "moving_up"]
    lists = {k: read_list(tiny / f"{k}.txt") for k in ("train", "val", "test")}
    # stratified 70/15/15 of 5 per class: 3/1/1 each
    for key, n in (("train", 3), ("val", 1), ("test", 1)):
        assert sorted(lab for _, lab in lists[key]) == sorted(list(range(4)) * n), key
    everything = [p for v in lists.values() for p, _ in v]
    assert len(set(everything)) == 20  # disjoint splits covering every video
    for path, label in lists["train"] + lists["val"] + lists["test"]:
        assert path.startswith(f"videos/{classes[label]}/")
        with av.open(str(tiny / path)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.name, s.width, s.height, s.format.name) == ("h264", 32, 32, "yuv420p")
            assert s.frames == 8 and float(s.average_rate) == 30.0
        assert decode(tiny / path).shape == (8, 32, 32, 3)
    meta = json.loads((tiny / "synth.json").read_text())
    assert meta["seed"] == 1 and meta["counts"] == {"train": 12, "val": 4, "test": 4}


def test_files_are_the_rendered_clips(tiny):
    """What is on disk is the documented rendering of (seed, class, index), up to H.264 loss."""
    for name in ("moving_right", "moving_up"):
        frames = decode(tiny / "videos" / name / f"{name}_0002.mp4").astype(np.float64)
        ref = render_clip(name, [1, SYNTH_CLASSES.index(name), 2], frames=8, size=32).frames
        psnr = 10 * np.log10(255.0**2 / np.mean((frames - ref) ** 2))
        # 32x32 yuv420p halves the chroma resolution: the edges of a saturated object cost several dB
        assert psnr > 25, psnr
        other = render_clip(name, [1, SYNTH_CLASSES.index(name), 3], frames=8, size=32).frames
        assert 10 * np.log10(255.0**2 / np.mean((frames - other) ** 2)) < 20


def test_same_seed_same_frames_different_seed_different(tiny, tmp_path):
    same = make_synthetic_dataset(tmp_path / "b", classes=4, per_class=5, frames=8, size=32, seed=1)
    other = make_synthetic_dataset(tmp_path / "c", classes=["moving_right", "moving_left"], per_class=5, frames=8,
                                   size=32, seed=2)
    for name in ("moving_right_0000", "moving_left_0004"):
        rel = f"videos/{name.rsplit('_', 1)[0]}/{name}.mp4"
        a, b, c = decode(tiny / rel), decode(same["root"] / rel), decode(other["root"] / rel)
        np.testing.assert_array_equal(a, b)
        assert (tiny / rel).read_bytes() == (same["root"] / rel).read_bytes()
        assert np.abs(a.astype(int) - c).mean() > 10
    for key in ("train", "val", "test", "classes"):
        assert (tiny / f"{key}.txt").read_text() == same[key].read_text()


def test_class_selection():
    assert resolve_classes(None) == list(DEFAULT_CLASSES) and len(DEFAULT_CLASSES) == 10
    assert "rotating_clockwise" not in DEFAULT_CLASSES and len(SYNTH_CLASSES) == 12
    assert resolve_classes(["6"]) == list(SYNTH_CLASSES[:6])
    assert resolve_classes(["12"]) == list(SYNTH_CLASSES)
    assert resolve_classes(["growing", "shrinking"]) == ["growing", "shrinking"]
    with pytest.raises(ValueError, match="unknown synthetic class"):
        resolve_classes(["jumping"])
    assert main(["synth", "--out", "/nonexistent/x", "--classes", "jumping"]) == 2


@pytest.mark.parametrize("fwd,rev", REVERSAL_PAIRS)
def test_reverse_class_is_the_reversed_rendering_of_a_forward_draw(fwd, rev):
    for seed in range(3):
        a = render_clip(fwd, seed, frames=8, size=32)
        b = render_clip(rev, seed, frames=8, size=32)
        np.testing.assert_array_equal(b.frames, a.frames[::-1])
        assert not np.array_equal(a.frames, b.frames)


N = 100  # videos per class for the distribution tests
# Two-sample KS critical value at alpha = 0.001 with N independent videos per class (frames of one
# video are dependent, so N, not N * T, is the sample size): 1.95 * sqrt(2 / N) = 0.28 for N = 100.
KS_TOL = 1.95 * np.sqrt(2 / N)


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    v = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, v, "right") / len(a) - np.searchsorted(b, v, "right") / len(b)).max())


def clip_stats(name: str, seed: int = 7):
    """Per video and frame: mask centroid (x, y), object area, the object's spread across / down (the
    ratio of the mask's standard deviations in x and y), opacity, mean colour; and the angle."""
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    out = {k: [] for k in ("x", "y", "area", "aspect", "alpha", "angle", "colour")}
    for i in range(N):  # independent draws, seeded as make_synthetic_dataset seeds them
        c = render_clip(name, [seed, SYNTH_CLASSES.index(name), i], frames=8, size=32)
        area = c.mask.sum(axis=(1, 2))
        out["x"].append((c.mask * xx).sum(axis=(1, 2)) / area)
        out["y"].append((c.mask * yy).sum(axis=(1, 2)) / area)
        out["area"].append(area)
        var_x = (c.mask * (xx - out["x"][-1][:, None, None]) ** 2).sum(axis=(1, 2)) / area
        var_y = (c.mask * (yy - out["y"][-1][:, None, None]) ** 2).sum(axis=(1, 2)) / area
        out["aspect"].append(np.sqrt(var_x / var_y))
        out["alpha"].append(c.alpha)
        out["angle"].append(c.angle)
        out["colour"].append(c.frames.reshape(8, -1, 3).mean(axis=1))
    return {k: np.stack(v) for k, v in out.items()}  # (N, T) or (N, T, 3)


@pytest.fixture(scope="module")
def stats():
    return {name: clip_stats(name) for name in SYNTH_CLASSES}


# The quantity whose order tells the two classes of a pair apart, and which class makes it grow.
ORDERED = {"moving_right": "x", "moving_down": "y", "growing": "area", "rotating_clockwise": "angle",
           "fading_in": "alpha", "widening": "aspect"}


@pytest.mark.parametrize("fwd,rev", REVERSAL_PAIRS)
def test_pair_frame_statistics_match_but_order_differs(stats, fwd, rev):
    a, b = stats[fwd], stats[rev]
    # The set of frames: distributions over all frames of all videos agree (KS statistic below the
    # critical value; an ordered or per-position statistic is far above it, see the end).
    for key in ("x", "y", "area", "aspect", "alpha"):
        assert ks(a[key], b[key]) < KS_TOL, (key, ks(a[key], b[key]))
    # Mean colour over all frames: equal within 4 standard errors (per channel, per-video means).
    ca, cb = a["colour"].mean(axis=1), b["colour"].mean(axis=1)  # (N, 3)
    se = np.sqrt(ca.var(axis=0, ddof=1) / N + cb.var(axis=0, ddof=1) / N)
    assert (np.abs(ca.mean(axis=0) - cb.mean(axis=0)) < 4 * se).all()
    # ... and so does the mean colour per frame position once the order is ignored (sorted curve).
    pa, pb = a["colour"].mean(axis=(0, 2)), b["colour"].mean(axis=(0, 2))  # (T,)
    assert np.abs(np.sort(pa) - np.sort(pb)).max() < 4 * se.max()
    # The ordered trajectory differs: the key quantity increases in every forward video and decreases
    # in every reversed one (for left vs right: the sign of the mean x displacement).
    key = ORDERED[fwd]
    assert (np.diff(a[key], axis=1) > 0).all() and (np.diff(b[key], axis=1) < 0).all()
    assert a[key][:, -1].mean() - a[key][:, 0].mean() > 0 > b[key][:, -1].mean() - b[key][:, 0].mean()
    if key != "angle":  # a single frame at a fixed position is informative (so the test has power)
        assert ks(a[key][:, 0], b[key][:, 0]) > 2 * KS_TOL


def test_within_pair_distribution_differs_across_pairs(stats):
    """Control: the same set-level statistics do tell different pairs apart."""
    assert ks(stats["moving_right"]["area"], stats["rotating_clockwise"]["area"]) > KS_TOL
    assert ks(stats["fading_in"]["alpha"], stats["moving_right"]["alpha"]) > 2 * KS_TOL
