"""The compositional zero-shot dataset: real files, consistent lists, the seen / held-out split, and
pixels that show the named colour and motion."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from tada.data.datasets import VideoClipDataset, load_annotations
from tada.data.decode import probe, read_frames
from tada.data.synth_compositional import (
    COLOURS, CompositionalClass, class_name, compositional_classes, make_compositional_dataset,
    render_compositional_clip, split_classes,
)

TINY = dict(colours=("red", "blue"), shapes=("square", "circle"),
            motions=("moving left", "moving right", "growing", "shrinking"), per_class=3, frames=8, size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_compositional_dataset(tmp_path_factory.mktemp("comp") / "a", seed=1, **TINY)


def meta_of(paths) -> dict:
    return json.loads(paths["meta"].read_text())


def lines(path):
    return path.read_text().splitlines()


def decode_all(path) -> np.ndarray:
    n = probe(path).num_frames
    return read_frames(path, list(range(n))).numpy()


# --------------------------------------------------------------------------------------------------
# files and lists


def test_lists_and_class_files_are_consistent(tiny):
    meta = meta_of(tiny)
    root = tiny["root"]
    seen, heldout = lines(tiny["classes_seen"]), lines(tiny["classes_heldout"])
    assert lines(root / "seen" / "classes.txt") == seen and lines(root / "heldout" / "classes.txt") == heldout
    assert len(seen) + len(heldout) == 16 and not set(seen) & set(heldout)
    assert sorted(lines(tiny["classes"])) == sorted(seen + heldout)
    assert (meta["seen"], meta["heldout"]) == (seen, heldout)
    folder = {c["name"]: c["dir"] for c in meta["classes"]}
    # Each list gets its own class names from the classes.txt beside it (no data.class_names needed).
    for key, names in (("train", seen), ("val", seen), ("test_seen", seen), ("test_heldout", heldout)):
        samples, labels = load_annotations(tiny[key], "kinetics")
        assert labels.class_names == names, key
        for s in samples:
            assert s.path.startswith(folder[names[s.label]] + "/"), (key, s.path, names[s.label])
            assert (root / s.path).is_file()
    per = {k: collections.Counter(s.label for s in load_annotations(tiny[k], "kinetics")[0])
           for k in ("train", "val", "test_seen", "test_heldout")}
    for key in ("train", "val", "test_seen"):  # 3 videos per seen class: 1 / 1 / 1
        assert per[key] == {i: 1 for i in range(len(seen))}, key
    assert per["test_heldout"] == {i: 3 for i in range(len(heldout))}
    paths = [line.rsplit(" ", 1)[0] for k in ("train", "val", "test_seen", "test_heldout") for line in lines(tiny[k])]
    assert len(paths) == len(set(paths)) == 48  # disjoint, every video listed once
    n, m = len(seen), len(heldout)
    assert meta["counts"] == {"train": n, "val": n, "test_seen": n, "test_heldout": 3 * m, "classes": 16,
                              "classes_seen": n, "classes_heldout": m, "direction_only": len(meta["direction_only"])}
    words = {c["name"]: (c["colour"], c["shape"], c["motion"]) for c in meta["classes"]}
    assert all(class_name(*w) == n for n, w in words.items()) and words["a red square moving left"] == (
        "red", "square", "moving left")


def test_videos_decode_with_tada_decode(tiny):
    samples, _ = load_annotations(tiny["test_heldout"], "kinetics")
    info = probe(tiny["root"] / samples[0].path)
    assert (info.num_frames, info.width, info.height, info.fps) == (8, 32, 32, 30.0)
    assert decode_all(tiny["root"] / samples[0].path).shape == (8, 32, 32, 3)
    ds = VideoClipDataset(samples, root=tiny["root"], frames=4, sampling="segment", train=False)
    item = ds[len(ds) - 1]
    assert item["video"].shape == (3, 4, 32, 32) and bool(item["valid"]) and item["label"] == samples[-1].label


# --------------------------------------------------------------------------------------------------
# the split


def check_split(classes, split):
    seen = set(split.seen)
    assert set(split.seen) | set(split.heldout) == set(classes) and not seen & set(split.heldout)
    for k in ("colour", "shape", "motion"):
        assert {getattr(c, k) for c in split.heldout} <= {getattr(c, k) for c in split.seen}, k
    for c in split.heldout:
        assert (c in split.direction_only) == (c.mirror in seen)


def test_default_split_is_balanced_and_every_heldout_word_seen():
    classes = compositional_classes()
    split = split_classes(classes, seed=0)
    check_split(classes, split)
    assert (len(split.seen), len(split.heldout), len(split.direction_only)) == (48, 24, 12)
    for k, n in (("colour", 6), ("shape", 8), ("motion", 4)):
        assert set(collections.Counter(getattr(c, k) for c in split.heldout).values()) == {n}, k
    # the other held-out classes are new combinations: their mirror is held out as well
    others = [c for c in split.heldout if c not in split.direction_only]
    assert len(others) == 12 and all(c.mirror in split.heldout for c in others)
    assert split_classes(classes, seed=0) == split and split_classes(classes, seed=1) != split


def test_tiny_split_has_direction_only_classes(tiny):
    meta = meta_of(tiny)
    classes = compositional_classes(TINY["colours"], TINY["shapes"], TINY["motions"])
    split = split_classes(classes, seed=1)
    check_split(classes, split)
    assert [c.name for c in split.heldout] == meta["heldout"] and len(split.heldout) == 5  # round(16 / 3)
    assert meta["direction_only"] == [c.name for c in split.direction_only] and len(split.direction_only) >= 2
    for entry in meta["classes"]:
        if entry["direction_only"]:
            assert entry["split"] == "heldout" and entry["mirror"] in meta["seen"]


def test_explicit_held_out_and_bad_splits():
    classes = compositional_classes(("red", "blue"), ("square",), ("moving left", "moving right"))
    split = split_classes(classes, held_out=["a red square moving left"])
    assert [c.name for c in split.direction_only] == ["a red square moving left"]
    with pytest.raises(ValueError, match="no seen class"):  # 'red' would be seen nowhere
        split_classes(classes, held_out=["a red square moving left", "a red square moving right"])
    with pytest.raises(ValueError, match="not in the dataset"):
        split_classes(classes, held_out=["a green square moving left"])
    with pytest.raises(ValueError, match="fraction"):
        split_classes(classes, held_out=1.5)
    one_word = compositional_classes(("red",), ("square",), ("growing",))
    with pytest.raises(ValueError, match="holds out 0"):
        split_classes(one_word)
    two = compositional_classes(("red", "blue"), ("square",), ("growing",))  # holding out one loses a colour
    with pytest.raises(ValueError, match="no split"):
        split_classes(two, held_out=0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(colours=("red", "pink")), "unknown colours"),
    (dict(shapes=("square", "square")), "duplicate shapes"),
    (dict(motions=("moving sideways",)), "unknown motions"),
    (dict(motions=("rotating clockwise",)), "rotating circle"),
    (dict(size=33), "even"),
    (dict(per_class=2), "per_class"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_compositional_dataset(tmp_path / "x", **{**TINY, **kwargs})
    assert not (tmp_path / "x" / "videos").exists()  # checked before anything is written


# --------------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_files_other_seed_other_frames(tiny, tmp_path):
    same = make_compositional_dataset(tmp_path / "b", seed=1, **TINY)
    other = make_compositional_dataset(tmp_path / "c", seed=2, **TINY)
    for key in ("train", "val", "test_seen", "test_heldout", "classes", "classes_seen", "classes_heldout", "meta"):
        assert tiny[key].read_text() == same[key].read_text(), key
    for rel in ("videos/red_square_moving_left/red_square_moving_left_0000.mp4",
                "videos/blue_circle_shrinking/blue_circle_shrinking_0002.mp4"):
        a, b, c = (decode_all(p["root"] / rel).astype(int) for p in (tiny, same, other))
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - c).mean() > 10
    # Video i of a class does not depend on the shapes, motions or per_class asked for.
    small = make_compositional_dataset(tmp_path / "d", seed=1, **{**TINY, "shapes": ("square",),
                                                                   "motions": ("moving left", "moving right"),
                                                                   "per_class": 4})
    rel = "videos/red_square_moving_left/red_square_moving_left_0001.mp4"
    np.testing.assert_array_equal(decode_all(tiny["root"] / rel), decode_all(small["root"] / rel))


# --------------------------------------------------------------------------------------------------
# the pixels show the words


def nearest_colour(rgb, names):
    return min(names, key=lambda n: np.linalg.norm(np.asarray(COLOURS[n], float) - rgb))


def object_track(frames: np.ndarray, colour: np.ndarray):
    """Per-frame centroid (x, y) and area of the pixels within 60 (RGB distance) of ``colour``."""
    near = np.linalg.norm(frames.astype(float) - colour, axis=-1) < 60
    yy, xx = np.mgrid[0:frames.shape[1], 0:frames.shape[2]] + 0.5
    area = near.sum(axis=(1, 2)).astype(float)
    x = (near * xx).sum(axis=(1, 2)) / np.maximum(area, 1)
    y = (near * yy).sum(axis=(1, 2)) / np.maximum(area, 1)
    return x, y, area


def trend(values: np.ndarray) -> float:
    """Correlation with time (+1: rises steadily, -1: falls steadily)."""
    return float(np.corrcoef(np.arange(len(values)), values)[0, 1])


EXPECTED = {  # motion -> (track index: 0 x, 1 y, 2 area; sign of its trend)
    "moving left": (0, -1), "moving right": (0, 1), "moving up": (1, -1), "moving down": (1, 1),
    "growing": (2, 1), "shrinking": (2, -1),
}


def check_motion(track, motion: str, size: int) -> None:
    k, sign = EXPECTED[motion]
    assert sign * trend(track[k]) > 0.95, (motion, track[k])
    if k < 2:  # translation: travels over a large share of the frame, the other axis and the area stay
        assert sign * (track[k][-1] - track[k][0]) > 0.25 * size
        assert np.ptp(track[1 - k]) < 2.0 and np.ptp(track[2]) < 0.3 * track[2].mean()
    else:
        ratio = track[2][-1] / track[2][0]
        assert (ratio if sign > 0 else 1 / ratio) > 2.0


def test_decoded_pixels_show_the_named_colour_and_motion(tiny):
    meta = meta_of(tiny)
    root, size = tiny["root"], TINY["size"]
    for entry in meta["classes"]:
        cls = CompositionalClass(entry["colour"], entry["shape"], entry["motion"])
        frames = decode_all(root / entry["dir"] / f"{cls.slug}_0000.mp4")
        ref = render_compositional_clip(cls, [1, list(COLOURS).index(cls.colour), _shape_id(cls), _motion_id(cls), 0],
                                        frames=8, size=size, colours=TINY["colours"])
        psnr = 10 * np.log10(255.0**2 / np.mean((frames.astype(float) - ref.frames) ** 2))
        assert psnr > 25, (cls.name, psnr)  # the file is this rendering, up to H.264 at 32x32
        inside, outside = ref.mask > 0.99, ref.mask < 0.01
        obj, bg = frames[inside].astype(float).mean(axis=0), frames[outside].astype(float)
        assert nearest_colour(obj, list(COLOURS)) == cls.colour, (cls.name, obj)
        # the background is far from every colour word of the dataset (so never mistaken for one)
        for name in TINY["colours"]:
            assert np.linalg.norm(bg - COLOURS[name], axis=1).mean() > 100, (cls.name, name)
        track = object_track(frames, obj)
        check_motion(track, cls.motion, size)
        # the decoded track follows the rendered ground truth
        if EXPECTED[cls.motion][0] < 2:
            np.testing.assert_allclose(np.stack(track[:2], 1), ref.centroid, atol=1.5)
        # control: the same check fails on the mirror class's video
        mirror = cls.mirror
        other = decode_all(root / f"videos/{mirror.slug}/{mirror.slug}_0000.mp4")
        with pytest.raises(AssertionError):
            check_motion(object_track(other, obj), cls.motion, size)


def _shape_id(cls):
    from tada.data.synth import SHAPES

    return SHAPES.index(cls.shape)


def _motion_id(cls):
    from tada.data.synth import SYNTH_CLASSES

    return SYNTH_CLASSES.index(cls.synth_motion)


def test_vertical_motions_and_other_shapes_render_as_named():
    """The motions and shapes the tiny dataset leaves out, on the rendered frames (no file)."""
    for colour, shape, motion in (("yellow", "triangle", "moving up"), ("green", "triangle", "moving down"),
                                  ("blue", "square", "moving down")):
        cls = CompositionalClass(colour, shape, motion)
        clip = render_compositional_clip(cls, [3, 1], frames=16, size=64)
        obj = clip.frames[clip.mask > 0.99].astype(float).mean(axis=0)
        assert nearest_colour(obj, list(COLOURS)) == colour
        check_motion(object_track(clip.frames, obj), motion, 64)
        np.testing.assert_allclose(np.stack(object_track(clip.frames, obj)[:2], 1), clip.centroid, atol=1.0)
