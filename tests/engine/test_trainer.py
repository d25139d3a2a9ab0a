"""The training engine end to end on tiny real data: learning, exact resume, DDP equivalence, NaN
stops, bad input, SIGTERM, and `tada predict` on real video files."""
import csv
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import tada
from tada.cli import main
import numpy as np

from tada.data.synth import write_video
from tada.engine.config import load_config
from tada.engine.trainer import Trainer, TrainingStopped, build_dataset

CLASSES = ["red", "green", "blue"]  # the classes of the `synth` fixture (conftest.py)


def _cfg(synth, out, *extra):
    return load_config(None, [
        "model.name=tsn_convnext_mini", "model.drop_rate=0.0", "data.format=kinetics", f"data.root={synth}",
        "data.train_list=train.txt", "data.val_list=val.txt", "data.test_list=test.txt", "data.frames=4",
        "data.sampling=segment", "data.crop_size=32", "data.train_scale=[0.7, 1.0]", "data.flip=false",
        "data.test_short_side=32", "data.test_crop_size=32", "data.test_clips=2", "data.batch_size=4",
        "data.num_workers=0", "optim.name=adamw", "optim.lr=2.0e-3", "optim.weight_decay=0.0",
        "optim.epochs=2", "optim.warmup_epochs=0", f"train.output_dir={out}", "train.seed=3",
        "train.deterministic=true", *extra])


def _losses(out):
    with open(out / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_short_training_lowers_loss_and_beats_chance(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "run", "optim.epochs=4", "model.name=tada2d_r_mini", "train.save_every=2")
    tr = Trainer(cfg, progress=False)
    out = tr.fit()
    hist = out["history"]
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    # last / best / every-N checkpoints: best.pt holds the epoch with the best validation top-1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "epoch_2.pt", "epoch_4.pt", "last.pt"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["metrics"]["val_top1"] == max(h["val_top1"] for h in hist)
    assert torch.load(run / "epoch_2.pt", weights_only=True)["epoch"] == 2
    test, _ = build_dataset(cfg, "test")
    res = tr.evaluate(test)
    assert res.num_videos == len(test) // 2 and res.num_views == len(test)
    assert res.top1 >= 80, res.summary()  # chance is 33 %
    paths = tr.write_report(res)
    for key in ("per_class_csv", "curves_png", "confusion_png", "per_class_png", "results_json"):
        assert os.path.getsize(paths[key]) > 0, key
    assert (tmp_path / "run" / "epochs.csv").exists() and (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_resume_mid_epoch_gives_the_same_losses(synth, tmp_path, amp):
    """fp16: autocast + loss scaling (the GPU path, run on the CPU) with clipping, whose scaler state
    must come back on resume too (its scale starts at 2^16 and backs off on overflowing steps)."""
    opts = ("optim.epochs=3", f"train.amp={amp}") + (("optim.clip_grad=1.0",) if amp == "fp16" else ())
    full = tmp_path / "full"
    Trainer(_cfg(synth, full, *opts), progress=False).fit()
    ref = _losses(full)
    assert len(ref) == 21  # 3 epochs x 7 steps (30 clips, batch 4, last partial batch dropped)
    assert all(math.isfinite(v) for v in ref)

    part = tmp_path / "part"
    with pytest.raises(TrainingStopped, match="stopped at step 4"):
        Trainer(_cfg(synth, part, *opts, "train.stop_after_steps=4"), progress=False).fit()
    assert _losses(part) == pytest.approx(ref[:4], rel=1e-6)
    if amp == "fp16":
        scaler = torch.load(part / "last.pt", weights_only=True)["scaler_state"]
        assert 0 < scaler["scale"] < 2.0**16, scaler  # it backed off at least once: the scaler is live
    resumed = Trainer(_cfg(synth, part, *opts), progress=False)
    resumed.fit()
    got = _losses(part)
    assert len(got) == len(ref)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    if amp == "fp16":
        assert resumed.scaler.state_dict() == torch.load(full / "last.pt", weights_only=True)["scaler_state"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# SGD: Adam's per-parameter normalisation would blow float summation-order noise in near-zero
# gradients up to full-size steps, which says nothing about the distributed training itself
DDP_ARGS = ("train.stop_after_steps=3", "data.val_list=null", "optim.name=sgd", "optim.lr=0.05")


def _ddp_worker(rank, world, port, synth, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = _cfg(synth, out, "data.batch_size=2", *DDP_ARGS)
    tr = Trainer(cfg, progress=False)
    try:
        tr.fit()
    except TrainingStopped:
        pass
    if rank == 0:
        torch.save(tr.model.state_dict(), os.path.join(out, "params.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(synth, tmp_path):
    # a model without BatchNorm (per-process batch statistics would differ by design)
    single = tmp_path / "single"
    cfg = _cfg(synth, single, "data.batch_size=4", *DDP_ARGS)
    tr = Trainer(cfg, progress=False)
    with pytest.raises(TrainingStopped):
        tr.fit()
    ref = tr.model.state_dict()
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(synth), str(ddp)), nprocs=2, join=True)
    got = torch.load(ddp / "params.pt", weights_only=True)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    init = Trainer(_cfg(synth, tmp_path / "init", "data.val_list=null"), progress=False).model.state_dict()
    assert any(not torch.allclose(init[k], ref[k]) for k in ref), "training did not change the weights"


class _NaNData(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        item["video"] = item["video"] * float("nan")
        return item


def test_nan_loss_stops_with_step_and_checkpoint(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "nan", "data.val_list=null")
    ds, names = build_dataset(cfg, "train")
    tr = Trainer(cfg, datasets={"train": (_NaNData(ds), names)}, progress=False)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 0 .*checkpoint saved to .*nan_step0.pt"):
        tr.fit()
    assert (tmp_path / "nan" / "nan_step0.pt").exists()


def test_bad_config_and_missing_checkpoint_give_clear_errors(synth, tmp_path, capsys):
    with pytest.raises(ValueError, match="train.sync_bn=true needs GPUs"):  # not at the first forward
        Trainer(_cfg(synth, tmp_path / "sbn", "train.sync_bn=true"), progress=False)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"model:\n  name: tsn_convnext_mini\ndata:\n  root: {synth}\n  train_list: train.txt\n"
                        f"  test_list: test.txt\ntrain:\n  output_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(cfg_file), "optim.lrr=0.1"]) == 2
    assert "unknown config key 'optim.lrr'; did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", str(cfg_file), "data.frames=eight"]) == 2
    assert "data.frames: expected an integer, got 'eight'" in capsys.readouterr().err
    assert main(["test", str(cfg_file), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", str(cfg_file), "model.name=tada2d_r5O"]) == 2
    assert "did you mean 'tada2d_r50'" in capsys.readouterr().err
    assert main(["train", str(cfg_file), "data.train_list=missing.txt"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_cli_then_test_and_predict_on_real_videos(synth, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["model.name=tsn_convnext_mini", f"data.root={synth}", "data.train_list=train.txt",
            "data.test_list=test.txt", "data.frames=4", "data.sampling=segment", "data.crop_size=32",
            "data.flip=false", "data.test_short_side=32", "data.test_crop_size=32", "data.batch_size=4",
            "data.num_workers=0", "optim.name=adamw", "optim.lr=1.0e-3", "optim.epochs=1", f"train.output_dir={out}"]
    assert main(["train", "--no-progress", str(_write_empty(tmp_path))] + args) == 0
    text = capsys.readouterr().out
    assert "test: top-1" in text and (out / "last.pt").exists()
    assert main(["test", "--no-progress", str(_write_empty(tmp_path)), "--checkpoint", str(out / "last.pt")] + args) == 0
    assert "test: top-1" in capsys.readouterr().out
    videos = sorted((synth / "videos").rglob("*.mp4"))[:2]
    assert main(["predict", *map(str, videos), str(tmp_path / "missing.mp4"), "--checkpoint", str(out / "last.pt"),
                 "--topk", "2"]) == 1  # one unreadable file: reported, others predicted
    lines = capsys.readouterr().out.splitlines()
    names = set(CLASSES)
    scored = [ln.split() for ln in lines if ln.startswith("  ")]
    assert len(scored) == 4 and all(s[1] in names and s[0].endswith("%") for s in scored)
    assert any("missing.mp4: cannot read" in ln for ln in lines)


def _write_empty(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("{}\n")
    return p


def test_sigterm_saves_and_exits_cleanly(synth, tmp_path):
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "tada.cli", "train", "--no-progress", str(_write_empty(tmp_path)),
           "model.name=tsn_convnext_mini", f"data.root={synth}", "data.train_list=train.txt", "data.frames=4",
           "data.sampling=segment", "data.crop_size=32", "data.flip=false", "data.batch_size=2",
           "data.num_workers=0", "optim.epochs=50", f"train.output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "steps.csv").exists():
        time.sleep(0.2)
    assert (out / "steps.csv").exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "no step"
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert "stopped at step" in text and "SIGTERM" in text
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] >= 1 and state["extra"]["batch_in_epoch"] >= 1


def test_training_options_run_together(synth, tmp_path):
    """bf16 autocast, gradient accumulation and clipping, mixup + label smoothing, EMA, channels-last
    input and activation checkpointing in one short run; EMA and model weights end up different."""
    cfg = _cfg(synth, tmp_path / "opts", "model.name=tada2d_r_mini", "train.amp=bf16", "optim.accum_steps=2",
               "optim.clip_grad=1.0", "train.mixup_alpha=0.2", "train.label_smoothing=0.1", "train.ema_decay=0.9",
               "train.channels_last=true", "train.grad_checkpoint=true", "data.val_list=null", "optim.epochs=1")
    tr = Trainer(cfg, progress=False)
    out = tr.fit()
    assert out["steps"] == 3  # 7 batches of 4 -> 3 optimiser steps of 2 accumulated batches
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in out["history"])
    ema, model = tr.ema.module.state_dict(), tr.model.state_dict()
    assert any(not torch.equal(ema[k], model[k]) for k in model if model[k].is_floating_point())
    state = torch.load(tmp_path / "opts" / "last.pt", weights_only=True)
    assert "model_ema_state" in state and state["step"] == 3


VERBS, NOUNS = ["take", "put", "open"], ["cup", "knife"]


@pytest.fixture(scope="module")
def epic(tmp_path_factory):
    """Epic-Kitchens-100 layout on real files: long videos ``P01/P01_0N.MP4`` cut into narrated
    segments by timestamps. A segment's verb is its dominant colour, its noun its brightness (dark or
    bright); every video holds all six (verb, noun) actions in a random order, 10 frames each."""
    from tada.data.datasets import EPIC_COLUMNS

    out = tmp_path_factory.mktemp("epic")
    (out / "P01").mkdir()
    rng = np.random.default_rng(1)
    rows = {"train": [], "validation": [], "test": []}
    actions = [(a, b) for a in range(3) for b in range(2)]

    def stamp(seconds):
        return f"00:00:{seconds:05.2f}"

    for v in range(8):
        vid = f"P01_{v + 1:02d}"
        split = "train" if v < 5 else ("validation" if v < 6 else "test")
        frames = []
        for k in rng.permutation(len(actions)):
            verb, noun = actions[k]
            clip = rng.integers(0, 50, size=(10, 32, 32, 3)).astype(np.uint8) + np.uint8(90 * noun)
            clip[..., verb] += np.uint8(100)
            frames.append(clip)
            start, stop = len(frames) - 1, len(frames)  # in units of 10 frames = 1/3 s
            rows[split].append({
                "narration_id": f"{vid}_{len(frames) - 1}", "participant_id": "P01", "video_id": vid,
                "narration_timestamp": stamp(start / 3), "start_timestamp": stamp(start / 3 + 0.04),
                "stop_timestamp": stamp(stop / 3 - 0.04), "start_frame": str(10 * start + 1),
                "stop_frame": str(10 * stop), "narration": f"{VERBS[verb]} {NOUNS[noun]}", "verb": VERBS[verb],
                "verb_class": str(verb), "noun": NOUNS[noun], "noun_class": str(noun),
                "all_nouns": f"['{NOUNS[noun]}']", "all_noun_classes": f"[{noun}]"})
        write_video(out / "P01" / f"{vid}.MP4", np.concatenate(frames), fps=30)
    for split, split_rows in rows.items():
        with open(out / f"EPIC_100_{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=EPIC_COLUMNS)
            w.writeheader()
            w.writerows(split_rows)
    return out


def test_epic_kitchens_verb_noun_action_end_to_end(epic, tmp_path):
    """EK100 through the Trainer: one head over verbs + nouns, a loss per head, and verb / noun / action
    accuracy at test (an action is right when both its verb and its noun are)."""
    cfg = _cfg(epic, tmp_path / "ek", "data.format=epic", "data.train_list=EPIC_100_train.csv",
               "data.val_list=EPIC_100_validation.csv", "data.test_list=EPIC_100_test.csv", "optim.epochs=6",
               "data.train_scale=null", "data.short_side_range=[32, 36]", "data.test_crops=1")
    tr = Trainer(cfg, progress=False)
    assert [list(c) for c in tr.class_names] == [VERBS, NOUNS]
    assert tr.model.num_classes == len(VERBS) + len(NOUNS)
    out = tr.fit()
    hist = out["history"]
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"], hist
    test, _ = build_dataset(cfg, "test")
    assert len(test) == 12 * 2 and all(s.start_sec is not None for s in test.samples)  # 2 clips per segment
    res = tr.evaluate(test)
    assert res.num_videos == 12 and res.num_views == 24
    assert set(res.extra) >= {"verb_top1", "noun_top1", "action_top1"}, res.extra
    # chance: verb 33 %, noun 50 %, action 17 %
    assert res.extra["verb_top1"] >= 75 and res.extra["noun_top1"] >= 75, res.summary()
    assert res.extra["action_top1"] >= 50, res.summary()
    assert res.extra["action_top1"] <= min(res.extra["verb_top1"], res.extra["noun_top1"])
    paths = tr.write_report(res)
    assert os.path.getsize(paths["results_json"]) > 0


def test_ema_starts_from_the_pretrained_weights(synth, tmp_path):
    """The EMA copy is made after ``model.pretrained`` is loaded: at step 0 it holds those weights
    (made before, it would hold the random init and drag the average towards it for thousands of steps)."""
    torch.manual_seed(5)
    donor = tada.create_model("tsn_convnext_mini", num_classes=3)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn_like(p))
    torch.save(donor.state_dict(), tmp_path / "pretrained.pt")
    cfg = _cfg(synth, tmp_path / "ema", f"model.pretrained={tmp_path / 'pretrained.pt'}", "train.ema_decay=0.99")
    tr = Trainer(cfg, progress=False)
    want, got = donor.state_dict(), tr.ema.module.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)


def test_torch_compile_computes_what_eager_mode_does(synth, tmp_path):
    """``train.compile=true`` (inductor, C++ on the CPU; about a minute to compile): on one batch, the compiled
    TAda2D gives eager mode's logits and gradients; then it trains (fused kernels round differently, so
    whole loss curves drift apart after a few AdamW steps and are not compared), and its checkpoints
    load into an eager model."""
    cfg = _cfg(synth, tmp_path / "compiled", "optim.epochs=1", "data.val_list=null", "model.name=tada2d_r_mini",
               "train.compile=true")
    tr = Trainer(cfg, progress=False)
    assert tr.forward_model is not tr.ddp
    batch = next(iter(tr._loader(tr.datasets["train"][0], train=True)))
    results = []
    for fn in (tr.model, tr.forward_model):
        torch.manual_seed(0)  # drop-out draws alike
        tr.model.zero_grad(set_to_none=True)
        logits = fn(batch["video"])
        logits.logsumexp(1).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for n, g in eager_grads.items():  # float32 sums in another order: tolerance relative to the largest entry
        torch.testing.assert_close(compiled_grads[n], g, rtol=1e-3, atol=1e-3 * float(g.abs().max()) + 1e-8)
    tr.model.zero_grad(set_to_none=True)
    tr.fit()
    losses = _losses(tmp_path / "compiled")
    assert len(losses) == 7 and sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    state = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model_state"]
    assert not any(k.startswith("_orig_mod.") for k in state)
    tada.create_model("tada2d_r_mini", num_classes=3).load_state_dict(state)
