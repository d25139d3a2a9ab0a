"""The synthetic untrimmed benchmark: real decoded files, ActivityNet ground truth that matches the
pixels (objects exactly on the instance frames, moving the way the class says), determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tada.data.decode import probe, read_frames
from tada.data.segments import load_activitynet_json
from tada.data.synth import REVERSAL_PAIRS, render_clip
from tada.data.synth_untrimmed import ANET_SUBSETS, make_untrimmed_dataset, plan_untrimmed, render_untrimmed
from tada.engine.extract import read_video_list

SETTINGS = dict(classes=["moving_right", "moving_left"], num_videos=3, duration=(6.0, 8.0), instances=(1, 2),
                instance_seconds=(1.0, 2.0), min_gap=1.0, fps=10, size=32)
PLAN = {k: v for k, v in SETTINGS.items() if k != "num_videos"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("untrimmed") / "a"
    return make_untrimmed_dataset(out, seed=3, **SETTINGS)


def decode_all(path) -> np.ndarray:
    n = probe(path).num_frames
    return read_frames(path, range(n)).numpy()


def test_files_decode_and_lists_match_the_json(tiny):
    videos = load_activitynet_json(tiny["annotations"])
    listed = read_video_list(tiny["videos"])
    assert [vid for vid, _ in listed] == list(videos) == [f"untrimmed_{i:04d}" for i in range(3)]
    assert tiny["classes"].read_text().splitlines() == ["moving_right", "moving_left"]
    meta = json.loads(tiny["meta"].read_text())
    assert meta["seed"] == 3 and sum(meta["counts"].values()) == 3
    assert {v.subset for v in videos.values()} <= set(ANET_SUBSETS)
    # 60/20/20 of 3 videos: one each
    assert sorted(v.subset for v in videos.values()) == sorted(ANET_SUBSETS)
    for vid, path in listed:
        v = videos[vid]
        info = probe(path)
        n = round(v.duration * 10)
        assert abs(v.duration * 10 - n) < 1e-9 and 60 <= n <= 80  # a whole number of frames in 6-8 s
        assert info.num_frames == n and abs(info.fps - 10) < 1e-6 and abs(info.duration - v.duration) < 1e-6
        assert decode_all(path).shape == (n, 32, 32, 3)
        assert v.fps == 10.0


def test_segments_inside_non_overlapping_and_on_the_frame_grid(tiny):
    videos = load_activitynet_json(tiny["annotations"])
    for i, v in enumerate(videos.values()):
        assert 1 <= len(v.segments) <= 2
        assert v.segments == plan_untrimmed(i, seed=3, **PLAN).segments()
        prev_end = None
        for s in v.segments:
            assert s.label in ("moving_right", "moving_left")
            assert 0.5 - 1e-9 <= s.start < s.end <= v.duration - 0.5 + 1e-9  # min_gap / 2 from both ends
            assert 1.0 - 1e-9 <= s.end - s.start <= 2.0 + 1e-9
            for t in (s.start, s.end):
                assert abs(t * 10 - round(t * 10)) < 1e-9
            if prev_end is not None:
                assert s.start - prev_end >= 1.0 - 1e-9  # min_gap between instances
            prev_end = s.end


def _near_colour(decoded: np.ndarray, background: np.ndarray, color) -> np.ndarray:
    """Pixels of the decoded frames that lie much closer to ``color`` than the same video rendered
    without its instances does: where an object of that colour is (H.264 noise at 32x32 chroma
    resolution stays far from it)."""
    c = np.asarray(color)
    return np.linalg.norm(decoded - c, axis=-1) < 0.5 * np.linalg.norm(background - c, axis=-1)


def test_pixels_move_the_way_the_label_says_only_inside_the_segments(tiny):
    for i, (_, path) in enumerate(read_video_list(tiny["videos"])):
        plan = plan_untrimmed(i, seed=3, **PLAN)
        decoded = decode_all(path).astype(np.float64)
        bare = render_untrimmed(plan, actions=False).frames.astype(np.float64)
        inside = np.zeros(plan.num_frames, dtype=bool)
        for inst in plan.instances:
            inside[inst.start_frame:inst.end_frame] = True
        for inst in plan.instances:
            j0, j1 = inst.start_frame, inst.end_frame
            obj = _near_colour(decoded, bare, inst.color)
            area = obj[j0:j1].sum(axis=(1, 2))
            assert area.min() > 20, area  # the object is there on every instance frame, the first and the last
            xs = np.array([np.nonzero(m)[1].mean() for m in obj[j0:j1]])
            t = np.arange(len(xs))
            travel = np.polyfit(t, xs, 1)[0] * (len(xs) - 1)  # pixels travelled over the instance
            sign = 1 if inst.label == "moving_right" else -1
            assert sign * travel > 0.25 * plan.size, (inst.label, xs)
            assert np.corrcoef(t, xs)[0, 1] * sign > 0.95, (inst.label, xs)
            # outside the segments, nothing of that colour (the frame before and after included)
            assert obj[~inside].sum(axis=(1, 2)).max() <= 2


def test_instance_object_is_render_clips_object():
    plan = plan_untrimmed(5, seed=1, classes=["moving_up", "growing", "shrinking"], size=32)
    full = render_untrimmed(plan)
    for inst in plan.instances:
        ref = render_clip(inst.label, inst.seed, frames=inst.num_frames, size=32)
        np.testing.assert_allclose(full.action_mask[inst.start_frame:inst.end_frame],
                                   ref.mask * ref.alpha[:, None, None], atol=1e-6)
    # the instances touch only their own frames: without them, the other frames are identical
    bare = render_untrimmed(plan, actions=False)
    inside = np.zeros(plan.num_frames, dtype=bool)
    for inst in plan.instances:
        inside[inst.start_frame:inst.end_frame] = True
    np.testing.assert_array_equal(full.frames[~inside], bare.frames[~inside])
    assert np.abs(full.frames[inside].astype(int) - bare.frames[inside]).mean() > 3
    assert (full.action_mask[~inside] == 0).all()


def test_same_seed_same_json_and_frames_other_seed_differs(tiny, tmp_path):
    again = make_untrimmed_dataset(tmp_path / "b", seed=3, **SETTINGS)
    other = make_untrimmed_dataset(tmp_path / "c", seed=4, **SETTINGS)
    assert again["annotations"].read_text() == tiny["annotations"].read_text()
    assert other["annotations"].read_text() != tiny["annotations"].read_text()
    for name in ("videos.txt", "classes.txt", "synth_untrimmed.json"):
        assert (tiny["root"] / name).read_text() == (again["root"] / name).read_text()
    for vid in ("untrimmed_0000", "untrimmed_0002"):
        a = decode_all(tiny["root"] / "videos" / f"{vid}.mp4")
        np.testing.assert_array_equal(a, decode_all(again["root"] / "videos" / f"{vid}.mp4"))
        b = decode_all(other["root"] / "videos" / f"{vid}.mp4")
        assert a.shape != b.shape or np.abs(a.astype(int) - b).mean() > 5


def test_draws_cover_both_directions_counts_and_placement():
    """Over many (cheap, unrendered) plans of the default settings: instance counts span the range,
    segments never overlap, every class and both directions of a pair occur, sometimes in one video."""
    counts, labels, mixed = set(), set(), 0
    for i in range(150):
        plan = plan_untrimmed(i, seed=0)
        assert 200 <= plan.num_frames <= 400
        counts.add(len(plan.instances))
        names = [inst.label for inst in plan.instances]
        labels.update(names)
        mixed += any(a in names and b in names for a, b in REVERSAL_PAIRS)
        ends = [(inst.start_frame, inst.end_frame) for inst in plan.instances]
        assert ends[0][0] >= 5 and ends[-1][1] <= plan.num_frames - 5
        for (_, e0), (s1, _) in zip(ends, ends[1:]):
            assert s1 - e0 >= 10
        for s, e in ends:
            assert 20 <= e - s <= 40
        assert 1 <= len(plan.distractors) <= 2
    assert counts == {1, 2, 3, 4}
    assert len(labels) == 10
    assert mixed >= 20
    # a function of (seed, index) only
    assert plan_untrimmed(7, seed=0) == plan_untrimmed(7, seed=0)
    assert plan_untrimmed(7, seed=0) != plan_untrimmed(7, seed=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(instances=(1, 6)), "need"),
    (dict(duration=(5.0, 4.0)), "low <= high"),
    (dict(size=33), "even"),
    (dict(split=(0.5, 0.2, 0.2)), "summing to 1"),
    (dict(classes=["moving_sideways"]), "unknown synthetic class"),
    (dict(num_videos=0), "num_videos"),
])
def test_bad_settings_fail_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_untrimmed_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
