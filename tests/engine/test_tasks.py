"""The loop is task-free: a third task defined here only (regressing the colour id of the engine's
colour clips as a number, with its own option) trains through the same Trainer with resume, AMP and
2-process DDP, and its evaluation goes through the same evaluator. Plus the task registry's errors."""
import csv
import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tada.engine.config import load_config
from tada.engine.tasks import Task, build_task, list_tasks, register_task
from tada.engine.trainer import Trainer, TrainingStopped


class _MeanAbsError:
    """Per video: the mean prediction over its views; the result is the mean absolute error."""

    def __init__(self, scale):
        self.scale, self.views = scale, {}

    def add(self, outputs, batch):
        for o, y, i, v, ok in zip(outputs[:, 0].tolist(), batch["label"].tolist(), batch["index"].tolist(),
                                  batch["view"].tolist(), batch["valid"].tolist()):
            if ok:
                self.views.setdefault((i, tuple(v)), (o / self.scale, y))

    def gather(self):
        if torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.views)
            for p in parts:
                for k, val in p.items():
                    self.views.setdefault(k, val)

    def result(self):
        per_video = {}
        for (i, _), (o, y) in self.views.items():
            per_video.setdefault(i, ([], y))[0].append(o)
        errors = [abs(sum(o) / len(o) - y) for o, y in per_video.values()]
        return {"mae": sum(errors) / len(errors), "videos": len(errors)}


@register_task
class ColourIdRegression(Task):
    name = "colour_id_regression"

    @dataclasses.dataclass
    class Options:
        scale: float = 1.0  # the target is label * scale

    def num_outputs(self):
        return 1

    def loss(self, outputs, batch):
        target = batch["label"].to(outputs.device).float() * self.options.scale
        return F.mse_loss(outputs[:, 0].float(), target)

    def accumulator(self):
        return _MeanAbsError(self.options.scale)

    def metrics(self, res):
        return {"mae": res["mae"]}

    def score(self, res):
        return -res["mae"]

    def write(self, res, out, name="test", history=()):
        path = os.path.join(out, f"{name}_mae.json")
        with open(path, "w") as f:
            json.dump(res, f)
        return {"mae_json": path}


def _cfg(synth, out, *extra):
    return load_config(None, [
        "task.name=colour_id_regression", "task.kwargs.scale=2.0", "model.name=tsn_convnext_mini",
        "model.drop_rate=0.0", f"data.root={synth}", "data.train_list=train.txt", "data.val_list=val.txt",
        "data.frames=4", "data.sampling=segment", "data.crop_size=32", "data.train_scale=[0.7, 1.0]", "data.flip=false",
        "data.test_short_side=32", "data.test_crop_size=32", "data.test_clips=2", "data.batch_size=4",
        "data.num_workers=0", "optim.name=adamw", "optim.lr=2.0e-3", "optim.weight_decay=0.0", "optim.epochs=3",
        f"train.output_dir={out}", "train.seed=3", "train.deterministic=true", *extra])


def _losses(out):
    with open(out / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_a_task_defined_in_a_test_file_trains_through_the_loop(synth, tmp_path):
    assert "colour_id_regression" in list_tasks()
    tr = Trainer(_cfg(synth, tmp_path / "run", "optim.epochs=6"), progress=False)
    assert type(tr.task) is ColourIdRegression and tr.task.options.scale == 2.0 and tr.model.num_classes == 1
    before = tr.evaluate(tr.datasets["val"][0])["mae"]
    out = tr.fit()
    hist = out["history"]
    assert [k for k in hist[0] if k.startswith("val")] == ["val_mae"]
    assert hist[-1]["val_mae"] < 0.5 * before and hist[-1]["val_mae"] < 0.5, (before, hist)  # labels are 0, 1, 2
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["metrics"]["val_mae"] == min(h["val_mae"] for h in hist)
    assert json.load(open(tr.write_report(tr.evaluate(tr.datasets["val"][0]), "val")["mae_json"]))["videos"] == 9


def test_the_third_task_resumes_exactly_under_bf16(synth, tmp_path):
    full = tmp_path / "full"
    Trainer(_cfg(synth, full, "train.amp=bf16"), progress=False).fit()
    part = tmp_path / "part"
    with pytest.raises(TrainingStopped, match="stopped at step 4"):
        Trainer(_cfg(synth, part, "train.amp=bf16", "train.stop_after_steps=4"), progress=False).fit()
    Trainer(_cfg(synth, part, "train.amp=bf16"), progress=False).fit()
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-5, abs=1e-6) and len(_losses(full)) == 21


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP = ("train.stop_after_steps=3", "optim.name=sgd", "optim.lr=0.01")


def _ddp_worker(rank, world, port, synth, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tr = Trainer(_cfg(synth, out, "data.batch_size=2", *DDP), progress=False)
    with pytest.raises(TrainingStopped):
        tr.fit()
    res = tr.evaluate(tr.datasets["val"][0])  # the task's accumulator gathers across the ranks
    if rank == 0:
        torch.save({"params": tr.model.state_dict(), "mae": res["mae"], "videos": res["videos"]},
                   os.path.join(out, "result.pt"))
    torch.distributed.destroy_process_group()


def test_the_third_task_under_ddp_equals_one_process(synth, tmp_path):
    single = Trainer(_cfg(synth, tmp_path / "single", *DDP), progress=False)
    with pytest.raises(TrainingStopped):
        single.fit()
    ref_mae = single.evaluate(single.datasets["val"][0])["mae"]
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(synth), str(ddp)), nprocs=2, join=True)
    got = torch.load(ddp / "result.pt", weights_only=True)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(got["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert got["videos"] == 9 and got["mae"] == pytest.approx(ref_mae, rel=1e-4)


def test_task_registry_errors(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "x", "task.name=clasification")
    with pytest.raises(ValueError, match="did you mean 'classification'"):
        Trainer(cfg, progress=False)
    with pytest.raises(ValueError, match="unknown config key 'task.kwargs.bogus'|bogus"):
        Trainer(_cfg(synth, tmp_path / "y", "task.kwargs.bogus=1"), progress=False)
    from tada.data.labels import LabelSpace

    with pytest.raises(ValueError, match="takes no options"):
        build_task(load_config(None, ["task.name=classification", "task.kwargs.x=1"]), LabelSpace.single("ab"))
    with pytest.raises(ValueError, match="needs a label space with a verb and a noun head"):
        build_task(load_config(None, ["task.name=verb_noun"]), LabelSpace.single("ab"))


def test_tada_test_and_predict_never_construct_a_trainer(synth, tmp_path, monkeypatch, capsys):
    from tada.cli import main

    out = tmp_path / "run"
    args = ["model.name=tsn_convnext_mini", f"data.root={synth}", "data.train_list=train.txt",
            "data.test_list=test.txt", "data.frames=4", "data.sampling=segment", "data.crop_size=32",
            "data.test_short_side=32", "data.test_crop_size=32", "data.batch_size=4", "data.num_workers=0",
            "optim.epochs=1", "train.stop_after_steps=2", f"train.output_dir={out}"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    assert main(["train", "--no-progress", str(empty), *args]) == 0

    def refuse(*a, **k):
        raise AssertionError("a Trainer was constructed")

    monkeypatch.setattr(Trainer, "__init__", refuse)
    assert main(["test", "--no-progress", str(empty), "--checkpoint", str(out / "last.pt"), *args]) == 0
    assert "test: top-1" in capsys.readouterr().out
    video = sorted((synth / "videos").glob("*.mp4"))[0]
    assert main(["predict", str(video), "--checkpoint", str(out / "last.pt"), "--topk", "1"]) == 0
    assert "%" in capsys.readouterr().out
