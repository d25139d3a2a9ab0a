"""Localisation features: the four folder formats (a real ``tada extract`` run for the tada one),
rescaling on linear features, sliding windows and ground-truth cutting on hand cases, collation,
and errors for missing and bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tada import create_model
from tada.data.features import (
    FeatureStore, RescaledFeatureDataset, SlidingWindowFeatureDataset, collate_localization, rescale_features,
    uniform_times, window_starts,
)
from tada.data.segments import Segment, UntrimmedVideo
from tada.data.synth import write_video
from tada.engine import extract as E

CLASSES = ["a", "b", "c"]


def video(vid: str, duration: float, *segs, subset: str = "training") -> UntrimmedVideo:
    return UntrimmedVideo(vid, duration, subset, tuple(Segment(*s) for s in segs))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A real ``tada extract`` of a 3 s, 10 fps video with a mini TSN: stride mode with --scores (npy),
    and fixed-count mode (4 clips, actionformer npz)."""
    root = tmp_path_factory.mktemp("feats")
    base = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    write_video(root / "clip.mp4", np.stack([np.roll(base, 2 * t, axis=1) for t in range(30)]), fps=10)
    torch.manual_seed(0)
    model = create_model("tsn_convnext_mini", num_classes=len(CLASSES)).eval()
    common = dict(model=model, class_names=CLASSES, workers=0, batch_size=8, scores=True)
    E.extract([("clip", str(root / "clip.mp4"))], root / "stride", output_format="npy",
              protocol=E.Protocol(fps=10, clip_frames=4, interval=1, stride=5, short_side=32), **common)
    E.extract([("clip", str(root / "clip.mp4"))], root / "fixed", output_format="actionformer",
              protocol=E.Protocol(fps=10, clip_frames=4, interval=1, num_clips=4, short_side=32), **common)
    return root


# --------------------------------------------------------------------------------------------------
# formats


def test_tada_folder_gives_manifest_times_and_splits_the_score_columns(extracted):
    store = FeatureStore(extracted / "stride")
    assert store.fmt == "tada" and "clip" in store and "other" not in store
    feats, times = store.load("clip")
    ref = E.load_features(extracted / "stride", "clip")
    assert feats.dtype == np.float32 and feats.shape == (6, 256) == (6, store.feature_dim)
    np.testing.assert_array_equal(feats, ref["feats"])
    # stride mode: T = ceil(30 / 5) = 6 clips, centre of clip k = (5k + 3 / 2) / 10 s
    np.testing.assert_allclose(times, 0.15 + 0.5 * np.arange(6), atol=1e-12)
    scores = store.load_scores("clip")
    assert scores.shape == (6, 3) and store.score_names == CLASSES
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)  # softmax columns, not features
    np.testing.assert_array_equal(store.times("clip"), times)
    assert store.num_rows("clip") == 6 and store.video_ids == ["clip"]


def test_tada_fixed_count_folder_uses_the_listed_centres(extracted):
    store = FeatureStore(extracted / "fixed")
    feats, times = store.load("clip", duration=99.0)  # a tada folder has its own times; duration is ignored
    assert feats.shape == (4, 256)
    # starts round_half_up(26 * (k + 0.5) / 4) = 3, 10, 16, 23; centre = (start + 1.5) / 10
    np.testing.assert_allclose(times, [0.45, 1.15, 1.75, 2.45], atol=1e-12)
    assert store.load_scores("clip").shape == (4, 3)


@pytest.fixture
def plain(tmp_path):
    """The same 5 x 3 array in each plain format, in its own folder."""
    feats = (np.arange(15, dtype=np.float32).reshape(5, 3) * 0.25 - 1.0)
    scores = np.full((5, 2), 0.5, dtype=np.float32)
    dirs = {k: tmp_path / k for k in ("npy", "actionformer", "mmaction", "handcsv")}
    for d in dirs.values():
        d.mkdir()
    np.save(dirs["npy"] / "v.npy", feats)
    np.savez(dirs["actionformer"] / "v.npz", feats=feats, scores=scores)
    (dirs["mmaction"] / "v.csv").write_bytes(E.encode_features(feats, None, "mmaction"))
    lines = ["f0,f1,f2"] + [",".join(repr(float(x)) for x in row) for row in feats]
    (dirs["handcsv"] / "v.csv").write_text("\n".join(lines) + "\n")
    return feats, scores, dirs


def test_plain_formats_round_trip_with_uniform_times(plain):
    feats, scores, dirs = plain
    for name, d in dirs.items():
        store = FeatureStore(d)
        assert store.fmt == ("mmaction" if name == "handcsv" else name)
        got, times = store.load("v", duration=10.0)
        np.testing.assert_array_equal(got, feats)
        np.testing.assert_allclose(times, [1.0, 3.0, 5.0, 7.0, 9.0])  # (i + 0.5) * 10 / 5
        assert store.num_rows("v") == 5 and store.video_ids == ["v"]
        with pytest.raises(ValueError, match="duration"):
            store.load("v")
    np.testing.assert_array_equal(FeatureStore(dirs["actionformer"]).load_scores("v"), scores)
    assert FeatureStore(dirs["npy"]).load_scores("v") is None


def test_missing_video_names_the_video_and_the_folder(plain, extracted):
    _, _, dirs = plain
    for store in (FeatureStore(dirs["npy"]), FeatureStore(extracted / "stride")):
        with pytest.raises(FileNotFoundError, match=r"'absent'.*" + str(store.root.name)):
            store.load("absent", duration=3.0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureStore(dirs["npy"] / "nope")


@pytest.mark.parametrize("write, match", [
    (lambda p: np.save(p / "v.npy", np.array([[0.0, np.nan], [1.0, 2.0]])), "NaN/inf.*row 0"),
    (lambda p: np.save(p / "v.npy", np.array([[0.0, 1.0], [np.inf, 2.0]], dtype=np.float32)), "1 NaN/inf.*row 1"),
    (lambda p: np.save(p / "v.npy", np.arange(4.0)), r"T x C.*\(4,\)"),
    (lambda p: np.save(p / "v.npy", np.zeros((0, 3))), r"T x C.*\(0, 3\)"),
    (lambda p: np.save(p / "v.npy", np.array([["x", "y"]])), "numbers"),
    # a pickled object array is refused, not unpickled
    (lambda p: np.save(p / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable"),
    (lambda p: (p / "v.npy").write_bytes(b"\x93NUMPY garbage"), "not a readable"),
    (lambda p: np.savez(p / "v.npz", x=np.zeros((2, 2))), r"no array 'feats'.*\['x'\]"),
    (lambda p: (p / "v.npz").write_bytes(b"PK\x03\x04broken"), "not a readable .npz"),
    (lambda p: (p / "v.csv").write_text("f0,f1\n1.0,abc\n"), "not a feature CSV"),
    (lambda p: (p / "v.csv").write_text("f0,f1\n1.0,nan\n"), "NaN/inf"),
])
def test_bad_arrays_are_clear_errors(tmp_path, write, match):
    write(tmp_path)
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match=match) as e:
        store.load("v", duration=2.0)
    assert "v." in str(e.value)  # names the file


def test_folder_detection_errors(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        FeatureStore(tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    (tmp_path / "b.csv").write_text("f0\n1\n")
    with pytest.raises(ValueError, match="several formats"):
        FeatureStore(tmp_path)
    assert FeatureStore(tmp_path, fmt="npy").video_ids == ["a"]
    with pytest.raises(ValueError, match="unknown feature format"):
        FeatureStore(tmp_path, fmt="hdf5")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        FeatureStore(tmp_path, fmt="tada")


# --------------------------------------------------------------------------------------------------
# rescaling


def test_rescale_linear_features_is_exact_inside_and_clamped_outside():
    times = uniform_times(10, 20.0)  # 1, 3, ..., 19
    feats = np.stack([2.0 + 0.5 * times, np.full(10, 7.0)], axis=1)
    out = rescale_features(feats, times, 20.0, 4)  # bin centres 2.5, 7.5, 12.5, 17.5
    assert out.shape == (2, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 2.0 + 0.5 * np.array([2.5, 7.5, 12.5, 17.5]), atol=1e-6)
    np.testing.assert_allclose(out[1], 7.0)
    out = rescale_features(feats, times, 20.0, 20)  # centres 0.5 .. 19.5: the ends are held
    assert out[0, 0] == pytest.approx(2.5) and out[0, -1] == pytest.approx(11.5)
    np.testing.assert_allclose(out[0, 1:-1], 2.0 + 0.5 * (np.arange(1, 19) + 0.5), atol=1e-6)
    # the same number of uniformly placed rows comes back unchanged
    rnd = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_allclose(rescale_features(rnd, uniform_times(7, 3.5), 3.5, 7), rnd.T, atol=1e-6)


def test_rescale_uneven_times_by_hand():
    feats = np.array([[0.0], [10.0], [40.0]])
    out = rescale_features(feats, np.array([0.5, 1.0, 3.0]), 4.0, 2)  # centres 1.0 and 3.0
    np.testing.assert_allclose(out, [[10.0, 40.0]])
    out = rescale_features(feats, np.array([0.5, 1.0, 3.0]), 4.0, 4)  # centres 0.5, 1.5, 2.5, 3.5
    np.testing.assert_allclose(out, [[0.0, 17.5, 32.5, 40.0]])
    np.testing.assert_allclose(rescale_features(np.array([[3.0, 4.0]]), np.array([1.0]), 2.0, 3),
                               [[3.0] * 3, [4.0] * 3])
    with pytest.raises(ValueError, match="increasing"):
        rescale_features(feats, np.array([0.5, 0.5, 3.0]), 4.0)
    with pytest.raises(ValueError, match="one per feature row"):
        rescale_features(feats, np.array([0.5, 1.0]), 4.0)
    with pytest.raises(ValueError, match="duration"):
        rescale_features(feats, np.array([0.5, 1.0, 3.0]), 0.0)


def _store(tmp_path, arrays) -> FeatureStore:
    for vid, a in arrays.items():
        np.save(tmp_path / f"{vid}.npy", np.asarray(a, dtype=np.float32))
    return FeatureStore(tmp_path)


def test_rescaled_dataset_items_and_collate(tmp_path):
    store = _store(tmp_path, {"v1": np.ones((8, 4)), "v2": np.arange(20.0).reshape(5, 4)})
    videos = {"v1": video("v1", 40.0, (10.0, 20.0, "b"), (30.0, 44.0, "a")),
              "v2": video("v2", 5.0, (0.0, 2.5, "b"))}
    ds = RescaledFeatureDataset(videos, store, temporal_scale=16)
    assert len(ds) == 2 and ds.class_names == ["a", "b"]
    it = ds[0]
    assert it["features"].shape == (4, 16) and it["video_id"] == "v1" and it["window"] == (0.0, 40.0)
    torch.testing.assert_close(it["segments"], torch.tensor([[0.25, 0.5], [0.75, 1.0]]))  # end clipped to 1
    assert it["labels"].tolist() == [1, 0] and it["verbs"].tolist() == [-1, -1] and it["valid"] == 16
    ds3 = RescaledFeatureDataset(list(videos.values()), store, temporal_scale=16, class_names=CLASSES)
    assert ds3[0]["labels"].tolist() == [1, 0]
    batch = collate_localization([ds[0], ds[1]])
    assert batch["features"].shape == (2, 4, 16)
    assert batch["window"].dtype == torch.float64 and batch["window"].tolist() == [[0.0, 40.0], [0.0, 5.0]]
    assert batch["duration"].tolist() == [40.0, 5.0] and batch["valid"].tolist() == [16, 16]
    assert batch["video_id"] == ["v1", "v2"] and [s.shape for s in batch["segments"]] == [(2, 2), (1, 2)]
    assert [lab.tolist() for lab in batch["labels"]] == [[1, 0], [1]]


def test_datasets_check_labels_and_missing_features(tmp_path):
    store = _store(tmp_path, {"v1": np.ones((3, 2))})
    with pytest.raises(ValueError, match="'z' is not among"):
        RescaledFeatureDataset([video("v1", 4.0, (0.0, 1.0, "z"))], store, class_names=CLASSES)
    videos = [video("v1", 4.0, (0.0, 1.0, "a")), video("gone", 4.0, (0.0, 1.0, "a"))]
    with pytest.raises(FileNotFoundError, match="1 of 2 videos have no features.*gone"):
        RescaledFeatureDataset(videos, store)
    lax = FeatureStore(tmp_path, strict=False)
    assert [v.id for v in RescaledFeatureDataset(videos, lax).videos] == ["v1"]
    assert [w.video_id for w in SlidingWindowFeatureDataset(videos, lax, window=2, stride=1).windows] == ["v1"]


# --------------------------------------------------------------------------------------------------
# sliding windows


def test_window_starts():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 2) == [0, 2, 4, 6, 7]  # the last window aligned to the end
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 2) == [0] and window_starts(3, 4, 2) == [0]
    with pytest.raises(ValueError):
        window_starts(10, 0, 2)


def test_sliding_windows_cut_the_ground_truth(tmp_path):
    """10 rows over 10 s (row i centred at i + 0.5 s), windows of 4 rows every 2: [0,4], [2,6], [4,8],
    [6,10] s. A = [1, 3] s; B = [3.5, 9] s is longer than a window."""
    feats = np.stack([np.arange(10.0), -np.arange(10.0)], axis=1)
    store = _store(tmp_path, {"v": feats})
    v = video("v", 10.0, (1.0, 3.0, "a"), (3.5, 9.0, "b"))
    ev = SlidingWindowFeatureDataset([v], store, window=4, stride=2, train=False)
    assert [(w.first_row, w.valid, w.start_s, w.end_s) for w in ev.windows] == \
        [(0, 4, 0.0, 4.0), (2, 4, 2.0, 6.0), (4, 4, 4.0, 8.0), (6, 4, 6.0, 10.0)]
    items = [ev[i] for i in range(4)]
    torch.testing.assert_close(items[1]["features"], torch.tensor([[2.0, 3, 4, 5], [-2, -3, -4, -5]]))
    # default rule (inside the window, or covering all of it): A in window 0, B covers window 2
    torch.testing.assert_close(items[0]["segments"], torch.tensor([[0.25, 0.75]]))
    assert items[0]["labels"].tolist() == [0]
    assert items[1]["segments"].shape == (0, 2) and items[3]["segments"].shape == (0, 2)
    torch.testing.assert_close(items[2]["segments"], torch.tensor([[0.0, 1.0]]))
    assert items[2]["labels"].tolist() == [1] and items[2]["window"] == (4.0, 8.0)
    # training drops the windows without a segment
    tr = SlidingWindowFeatureDataset([v], store, window=4, stride=2, train=True)
    assert [w.first_row for w in tr.windows] == [0, 4]
    assert len(SlidingWindowFeatureDataset([v], store, window=4, stride=2, drop_empty=False)) == 4
    # min_overlap 0.5: window 1 keeps half of A (1 s of 2) clipped to [2, 3] s and B's 2.5 s of the
    # 4 s window (>= 2) clipped to [3.5, 6] s; window 0 does not keep B (0.5 s < 0.5 * 4 s)
    half = SlidingWindowFeatureDataset([v], store, window=4, stride=2, min_overlap=0.5, train=False)
    torch.testing.assert_close(half[1]["segments"], torch.tensor([[0.0, 0.25], [0.375, 1.0]]))
    assert half[1]["labels"].tolist() == [0, 1]
    torch.testing.assert_close(half[0]["segments"], torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(half[3]["segments"], torch.tensor([[0.0, 0.75]]))  # 3 s of B's 5.5 s in [6, 10]


def test_short_video_is_padded_and_last_window_is_aligned(tmp_path):
    store = _store(tmp_path, {"short": np.ones((3, 2)), "long": np.arange(22.0).reshape(11, 2)})
    videos = [video("short", 3.0, (0.5, 2.0, "a")), video("long", 11.0, (9.0, 10.5, "a"))]
    ds = SlidingWindowFeatureDataset(videos, store, window=4, stride=3, train=False)
    assert [(w.video_id, w.first_row, w.valid, w.start_s, w.end_s) for w in ds.windows] == [
        ("short", 0, 3, 0.0, 4.0),
        ("long", 0, 4, 0.0, 4.0), ("long", 3, 4, 3.0, 7.0), ("long", 6, 4, 6.0, 10.0), ("long", 7, 4, 7.0, 11.0)]
    it = ds[0]
    assert it["valid"] == 3 and it["features"].shape == (2, 4)
    torch.testing.assert_close(it["features"], torch.tensor([[1.0, 1, 1, 0], [1.0, 1, 1, 0]]))
    torch.testing.assert_close(it["segments"], torch.tensor([[0.125, 0.5]]))  # in units of the 4 s window
    last = ds[4]
    torch.testing.assert_close(last["features"], torch.arange(14.0, 22.0).reshape(4, 2).T)
    torch.testing.assert_close(last["segments"], torch.tensor([[0.5, 0.875]]))
    assert ds[3]["segments"].shape == (0, 2)  # [6, 10] holds only 1 s of [9, 10.5]
    batch = collate_localization([ds[i] for i in range(5)])
    assert batch["features"].shape == (5, 2, 4) and batch["valid"].tolist() == [3, 4, 4, 4, 4]
    assert batch["window"].tolist()[4] == [7.0, 11.0]
    with pytest.raises(ValueError, match="different shapes"):
        collate_localization([ds[0], {**ds[1], "features": torch.zeros(2, 5)}])


def test_windows_follow_the_tada_clip_times_and_carry_epic_classes(extracted):
    """Stride-mode clips of the real extract are centred at 0.15 + 0.5 k s: a row spans 0.5 s from
    centre - 0.25, so rows 0-3 cover [-0.1, 1.9] s and rows 2-5 [0.9, 2.9] s."""
    store = FeatureStore(extracted / "stride")
    v = UntrimmedVideo("clip", 3.0, "validation", (Segment(1.0, 1.8, "3,7", verb=3, noun=7),
                                                  Segment(2.0, 2.5, "1,2", verb=1, noun=2)))
    ds = SlidingWindowFeatureDataset([v], store, window=4, stride=2, train=False)
    got = [(w.first_row, round(w.start_s, 9), round(w.end_s, 9)) for w in ds.windows]
    assert got == [(0, -0.1, 1.9), (2, 0.9, 2.9)]
    it = ds[1]
    feats, _ = store.load("clip")
    torch.testing.assert_close(it["features"], torch.from_numpy(feats[2:6].T))
    torch.testing.assert_close(it["segments"], torch.tensor([[0.05, 0.45], [0.55, 0.8]]))
    assert it["labels"].tolist() == [1, 0] and it["verbs"].tolist() == [3, 1] and it["nouns"].tolist() == [7, 2]
    assert ds[0]["verbs"].tolist() == [3]  # [1.0, 1.8] lies inside [-0.1, 1.9]; [2.0, 2.5] does not


def test_windows_resampled_to_a_temporal_scale_with_aligned_ends(tmp_path):
    """The release's resampling: output k at row k (W - 1) / (S - 1) of the zero-padded window."""
    store = _store(tmp_path, {"v": np.arange(10.0)[:, None] * [1.0, 2.0], "s": np.full((3, 2), 6.0)})
    videos = [video("v", 10.0, (1.0, 3.0, "a")), video("s", 3.0, (0.5, 2.0, "a"))]
    ds = SlidingWindowFeatureDataset(videos, store, window=4, stride=2, temporal_scale=7, train=False)
    it = ds[1]  # rows 2..5 at positions 0, 0.5, ..., 3
    assert it["features"].shape == (2, 7) and it["valid"] == 7
    torch.testing.assert_close(it["features"][0], torch.arange(2.0, 5.01, 0.5))
    torch.testing.assert_close(it["features"][1], 2 * torch.arange(2.0, 5.01, 0.5))
    torch.testing.assert_close(ds[0]["segments"], torch.tensor([[0.25, 0.75]]))  # window units do not change
    short = ds[len(ds) - 1]  # 3 real rows of 4: positions 0 .. 2 are real (5 outputs), 2.5 and 3 padding
    assert short["video_id"] == "s" and short["valid"] == 5
    torch.testing.assert_close(short["features"][0], torch.tensor([6.0, 6, 6, 6, 6, 3, 0]))
    with pytest.raises(ValueError, match="temporal_scale"):
        SlidingWindowFeatureDataset(videos, store, window=4, stride=2, temporal_scale=0)
