"""The localisation task end to end on tiny synthetic features: BMN trains through the engine's
Trainer (loss falls), its proposals are classified and scored by the ActivityNet protocol, and a
model trained on the real features beats the same pipeline trained on time-shuffled ones."""
import json

import numpy as np
import pytest
import torch

from tada.data.segments import Segment, UntrimmedVideo, load_activitynet_json, write_activitynet_json
from tada.engine.config import load_config
from tada.engine.tasks import build_task, task_class
from tada.engine.trainer import Trainer

CLASSES = ("jump", "wave")
DURATION, ROWS, CHANNELS = 30.0, 60, 8


def _videos(n: int, seed: int):
    """``n`` videos of 30 s with one or two segments of 4-9 s; features mark the segments (a ramp-up
    at the start, a plateau, a ramp-down at the end, plus the class in one channel), scores are
    uninformative so that the mAP measures localisation."""
    rng = np.random.default_rng(seed)
    videos, feats = {}, {}
    times = (np.arange(ROWS) + 0.5) * DURATION / ROWS
    for i in range(n):
        k = int(rng.integers(1, 3))
        segs, t = [], 1.0
        for _ in range(k):
            start = t + float(rng.uniform(0.5, 4.0))
            end = start + float(rng.uniform(4.0, 9.0))
            if end > DURATION - 0.5:
                break
            segs.append(Segment(round(start, 2), round(end, 2), CLASSES[int(rng.integers(2))]))
            t = end
        f = rng.normal(0, 0.3, size=(ROWS, CHANNELS)).astype(np.float32)
        for s in segs:
            inside = (times >= s.start) & (times <= s.end)
            f[inside, 0] += 1.5
            f[np.argmin(np.abs(times - s.start)), 1] += 2.0
            f[np.argmin(np.abs(times - s.end)), 2] += 2.0
            f[inside, 3 + CLASSES.index(s.label)] += 1.0
        vid = f"v{i:03d}"
        subset = "training" if i < int(0.7 * n) else "validation"
        videos[vid] = UntrimmedVideo(vid, DURATION, subset, tuple(segs))
        feats[vid] = f
    return videos, feats


def _write(root, videos, feats, *, shuffle_time: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    (root / "features").mkdir(parents=True, exist_ok=True)
    for vid, f in feats.items():
        if shuffle_time:
            f = f[rng.permutation(len(f))]
        scores = np.full((len(f), len(CLASSES)), 0.5, dtype=np.float32)
        np.savez(root / "features" / f"{vid}.npz", feats=f, scores=scores)
    write_activitynet_json(videos, root / "annotations.json")


def _cfg(root, out, epochs=14):
    return load_config(None, [
        "task.name=localization", f"data.root={root}", "data.train_list=annotations.json",
        "data.val_list=annotations.json", "data.test_list=annotations.json", "data.batch_size=4",
        "data.num_workers=0", "model.name=bmn",
        "model.kwargs={temporal_scale: 32, hidden_1d: 32, hidden_2d: 16, hidden_3d: 32, num_samples: 8}",
        "task.kwargs={features: features, temporal_scale: 32, classify: clips, "
        "subsets: {train: training, val: validation, test: validation}}",
        "optim.name=adam", "optim.lr=3e-3", "optim.weight_decay=1e-4", f"optim.epochs={epochs}",
        "optim.schedule=step", f"optim.milestones=[{max(1, epochs - 2)}]", f"train.eval_every={epochs}",
        f"train.output_dir={out}", "train.seed=0",
    ])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    videos, feats = _videos(28, seed=1)
    real, shuffled = tmp_path_factory.mktemp("real"), tmp_path_factory.mktemp("shuffled")
    _write(real, videos, feats)
    _write(shuffled, videos, feats, shuffle_time=True)
    return videos, real, shuffled


def _train(root, out):
    cfg = _cfg(root, out)
    trainer = Trainer(cfg, progress=False)
    fit = trainer.fit()
    ds = type(trainer.task).build_dataset(cfg, "val")[0]
    return trainer, fit, trainer.evaluate(ds)


def test_bmn_learns_to_localise_and_beats_shuffled_features(data, tmp_path):
    videos, real, shuffled = data
    trainer, fit, res = _train(real, tmp_path / "real")
    losses = [r["train_loss"] for r in fit["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    _, _, res_shuffled = _train(shuffled, tmp_path / "shuffled")
    m, ms = res.metrics, res_shuffled.metrics
    assert m["map"] > ms["map"] + 0.05, (m, ms)
    assert m["auc"] > ms["auc"], (m, ms)
    assert m["ar@100"] > 0.5
    # every validation video has proposals in seconds inside the video, classified with known labels
    val = {v for v, x in videos.items() if x.subset == "validation"}
    assert set(res.proposals) == val
    for vid, dets in res.detections.items():
        assert dets and all(0 <= d["segment"][0] < d["segment"][1] <= DURATION for d in dets)
        assert {d["label"] for d in dets} <= set(CLASSES)
    # the report: predictions in the ActivityNet results layout, the table and the timeline plot
    files = trainer.task.write(res, tmp_path / "report", "test", fit["history"])
    pred = json.loads(open(files["predictions_json"]).read())
    assert set(pred["results"]) == val
    assert open(files["table_md"]).read().startswith("| metric |")
    assert open(files["timeline_png"], "rb").read(4) == b"\x89PNG"


def test_tada_test_and_eval_detection_agree(data, tmp_path):
    # `tada test` on the trained checkpoint writes predictions whose mAP `tada eval-detection` recomputes
    from tada.cli import main

    _, real, _ = data
    cfg = _cfg(real, tmp_path / "run", epochs=2)
    Trainer(cfg, progress=False).fit()
    args = ["test", "-", "--checkpoint", str(tmp_path / "run" / "last.pt")]
    overrides = [
        "task.name=localization", f"data.root={real}", "data.train_list=annotations.json",
        "data.val_list=annotations.json", "data.test_list=annotations.json", "data.batch_size=4",
        "data.num_workers=0", "model.name=bmn",
        "model.kwargs={temporal_scale: 32, hidden_1d: 32, hidden_2d: 16, hidden_3d: 32, num_samples: 8}",
        "task.kwargs={features: features, temporal_scale: 32, classify: clips, "
        "subsets: {train: training, val: validation, test: validation}}", f"train.output_dir={tmp_path / 'test'}",
    ]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("name: t\n")
    args[1] = str(cfg_path)
    assert main(args + ["--no-progress"] + overrides) == 0
    summary = json.loads((tmp_path / "test" / "test_detection.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["eval-detection", str(real / "annotations.json"), str(tmp_path / "test" / "test_predictions.json"),
                 "--subset", "validation", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["detection"]["average_map"] == pytest.approx(summary["metrics"]["map"], abs=1e-9)
    assert again["detection"]["average_map"] > 0  # trained for 2 epochs: some detections are right


def test_task_builds_its_own_datasets_and_model(data, tmp_path):
    _, real, _ = data
    cfg = _cfg(real, tmp_path / "x")
    cls = task_class(cfg)
    ds, labels = cls.build_dataset(cfg, "train")
    task = build_task(cfg, labels)
    assert labels.class_names == list(CLASSES)
    assert task.inputs(task.collate([ds[0], ds[1]])).shape == (2, CHANNELS, 32)
    model = task.build_model()
    out = model(torch.randn(2, CHANNELS, 32))
    assert out["confidence"].shape[-2:] == (32, 32) and out["start"].shape == (2, 32)


def test_bad_localisation_options_are_refused(data, tmp_path):
    _, real, _ = data
    cfg = _cfg(real, tmp_path / "x")
    cfg.task.kwargs = dict(cfg.task.kwargs, protocol="sliding")
    with pytest.raises(ValueError, match="protocol"):
        task_class(cfg).build_dataset(cfg, "train")
    cfg.task.kwargs = dict(cfg.task.kwargs, protocol="rescale", features="nowhere")
    with pytest.raises((ValueError, FileNotFoundError), match="nowhere"):
        task_class(cfg).build_dataset(cfg, "train")


def test_ground_truth_round_trip(data):
    videos, real, _ = data
    assert load_activitynet_json(real / "annotations.json") == videos
