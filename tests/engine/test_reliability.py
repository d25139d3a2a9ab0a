"""What a week-long run is promised (README "Reliability"): a signal to one rank, to the process group
with data-loader workers, or Ctrl-C saves ``last.pt`` and stops every rank; a frozen or dead rank stops
the others within ``train.dist_timeout``; kill -9 resumes exactly; re-running a command never silently
throws work away; a full disk never costs the resume point; expected failures are one line.

Runs that need signals are real ``tada train`` processes (one or two gloo ranks, one thread each); every
wait is bounded, so a returning hang fails the test instead of holding it.
"""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tada.cli import main
from tada.engine import checkpoint as ckpt
from tada.engine.config import load_config
from tada.engine.trainer import Trainer, TrainingStopped

WAIT = 120  # seconds: the most any single wait below may take before the test fails


def _args(synth, out, *extra):
    return ["model.name=tsn_convnext_mini", "model.drop_rate=0.0", f"data.root={synth}", "data.train_list=train.txt",
            "data.frames=4", "data.sampling=segment", "data.crop_size=32", "data.train_scale=[0.7, 1.0]",
            "data.flip=false", "data.batch_size=2", "data.num_workers=0", "optim.name=sgd", "optim.lr=0.01",
            "optim.epochs=20", "optim.warmup_epochs=0", "train.seed=3", "train.deterministic=true",
            f"train.output_dir={out}", *extra]


@pytest.fixture
def empty_yaml(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("{}\n")
    return p


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg_file, args, *, world=1, new_session=False):
    """``tada train`` as ``world`` processes (gloo ranks on 127.0.0.1 when world > 1)."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "tada.cli", "train", "--no-progress", str(cfg_file), *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      start_new_session=new_session))
    return procs


def _finish(procs, timeout=WAIT):
    """(return codes, outputs); kills every process and fails if one does not exit within ``timeout``."""
    deadline, outs = time.time() + timeout, []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        texts = [p.communicate()[0] for p in procs]
        pytest.fail(f"a process did not exit within {timeout} s:\n" + "\n---\n".join(t[-2000:] for t in texts))
    return [p.returncode for p in procs], outs


def _wait_for_steps(out, procs, n=1):
    deadline = time.time() + WAIT
    while time.time() < deadline:
        if len(_steps(out)) >= n:
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    rcs, outs = _finish(procs, 10)
    pytest.fail(f"no {n} steps logged (return codes {rcs}):\n" + "\n---\n".join(o[-2000:] for o in outs))


def _steps(out):
    path = Path(out) / "steps.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]


def _assert_resumes_exactly(cfg_file, synth, stopped, reference, world, extra=()):
    """Resume ``stopped`` for three more steps; an uninterrupted run to the same step logs the same losses,
    and the resumed log has each step once."""
    k = torch.load(Path(stopped) / "last.pt", weights_only=True)["step"]
    target = f"train.stop_after_steps={k + 3}"
    for out in (stopped, reference):
        rcs, outs = _finish(_launch(cfg_file, _args(synth, out, target, *extra), world=world))
        assert rcs == [0] * world and f"stopped at step {k + 3}" in outs[0], outs
    got, want = _steps(stopped), _steps(reference)
    assert [s for s, _ in got] == list(range(1, k + 4)), "duplicate or missing rows in steps.csv"
    assert [s for s, _ in want] == list(range(1, k + 4))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-6)
    a = torch.load(Path(stopped) / "last.pt", weights_only=True)["model_state"]
    b = torch.load(Path(reference) / "last.pt", weights_only=True)["model_state"]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


# -- signals -----------------------------------------------------------------------------------------

def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(synth, tmp_path, empty_yaml):
    """A scheduler preempting one node: SIGTERM to rank 0 only. The stop flag is all-reduced after each
    step, so both ranks stop after the same step and rank 0 writes last.pt once (it used to enter the
    checkpoint barrier while rank 1 entered the next all-reduce: a deadlock)."""
    out = tmp_path / "ddp"
    procs = _launch(empty_yaml, _args(synth, out), world=2)
    _wait_for_steps(out, procs)
    procs[0].send_signal(signal.SIGTERM)
    rcs, outs = _finish(procs, timeout=30)
    assert rcs == [0, 0], outs
    state = torch.load(out / "last.pt", weights_only=True)
    k = state["step"]
    assert f"stopped at step {k} (SIGTERM)" in outs[0], outs[0]
    assert f"stopped at step {k} (a signal to another rank)" in outs[1], outs[1]
    assert 1 <= k < 140 and state["extra"]["batch_in_epoch"] == k % 7
    _assert_resumes_exactly(empty_yaml, synth, out, tmp_path / "ref", world=2)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_with_workers_saves_and_resumes(synth, tmp_path, empty_yaml, sig):
    """SLURM / docker stop (SIGTERM) and Ctrl-C (SIGINT) reach the whole process group, data-loader
    workers included: the workers ignore them (they used to die, and the run saved nothing), the main
    process saves last.pt after the step and exits with one line."""
    out = tmp_path / "run"
    procs = _launch(empty_yaml, _args(synth, out, "data.num_workers=2"), new_session=True)
    _wait_for_steps(out, procs)
    os.killpg(procs[0].pid, getattr(signal, sig))
    rcs, outs = _finish(procs, timeout=60)
    assert rcs == [0 if sig == "SIGTERM" else 130], outs
    assert "Traceback" not in outs[0] and "killed by signal" not in outs[0], outs[0]
    k = torch.load(out / "last.pt", weights_only=True)["step"]
    assert f"stopped at step {k} ({sig}); checkpoint {out / 'last.pt'}. Run the same command again" in outs[0]
    _assert_resumes_exactly(empty_yaml, synth, out, tmp_path / "ref", world=1, extra=("data.num_workers=2",))


def test_kill_9_resumes_exactly_and_drops_the_rerun_steps_from_the_log(synth, tmp_path, empty_yaml):
    """kill -9 mid-epoch 2: last.pt is the end of epoch 1, steps.csv has rows past it. The resume re-runs
    those steps to the same losses and the log keeps each step once."""
    out = tmp_path / "killed"
    procs = _launch(empty_yaml, _args(synth, out))
    _wait_for_steps(out, procs, n=17)  # epoch 1 is 15 steps
    procs[0].kill()
    _finish(procs, 30)
    assert torch.load(out / "last.pt", weights_only=True)["step"] >= 15
    assert len(_steps(out)) > torch.load(out / "last.pt", weights_only=True)["step"]
    _assert_resumes_exactly(empty_yaml, synth, out, tmp_path / "ref", world=1)


@pytest.mark.parametrize("fault", ["frozen", "dead"])
def test_a_frozen_or_dead_rank_stops_the_others_within_the_timeout(synth, tmp_path, empty_yaml, fault):
    out = tmp_path / "ddp"
    procs = _launch(empty_yaml, _args(synth, out, "train.dist_timeout=5"), world=2)
    _wait_for_steps(out, procs)
    procs[1].send_signal(signal.SIGSTOP if fault == "frozen" else signal.SIGKILL)
    try:
        text = procs[0].communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].communicate()
        pytest.fail("rank 0 waited for the lost rank for more than 60 s with train.dist_timeout=5")
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2, text
    err = [ln for ln in text.splitlines() if ln.startswith("tada train: error:")]
    assert len(err) == 1 and "Traceback" not in text, text
    assert "rank 0 of 2:" in err[0] and "another rank died or did not answer within train.dist_timeout=5 s" in err[0]
    assert "; rank 1 stopped answering (heartbeat stopped)" in err[0], err[0]


# -- never silently throw work away ------------------------------------------------------------------

def _train(synth, out, *extra, capsys=None):
    cfg = _write(out.parent / "c.yaml")
    rc = main(["train", "--no-progress", str(cfg), *_args(synth, out, "optim.epochs=2", *extra)])
    return rc, (capsys.readouterr() if capsys else None)


def _write(p):
    p.write_text("{}\n")
    return p


def test_rerunning_a_command_resumes_refuses_another_config_and_overwrites_only_when_told(synth, tmp_path, capsys):
    out = tmp_path / "run"
    rc, io = _train(synth, out, "train.stop_after_steps=3", capsys=capsys)
    assert rc == 0 and "stopped at step 3" in io.out
    # the same command again (the stop is not part of what a run computes): continues at step 4
    rc, io = _train(synth, out, capsys=capsys)
    assert rc == 0 and "trained 30 steps" in io.out, io  # 2 epochs of 15
    assert [s for s, _ in _steps(out)] == list(range(1, 31))
    # another config: refused before anything is touched, naming the keys that differ
    before = (out / "last.pt").read_bytes()
    rc, io = _train(synth, out, "optim.lr=0.02", "model.name=tada2d_r_mini", capsys=capsys)
    assert rc == 2
    assert "optim.lr: 0.01 -> 0.02" in io.err and "model.name: 'tsn_convnext_mini' -> 'tada2d_r_mini'" in io.err
    assert "train.resume=false" in io.err and "--overwrite" in io.err and "Traceback" not in io.err
    assert (out / "last.pt").read_bytes() == before and len(_steps(out)) == 30
    # --overwrite: starts over with the new config
    cfg = _write(tmp_path / "c.yaml")
    assert main(["train", "--no-progress", "--overwrite", str(cfg),
                 *_args(synth, out, "optim.epochs=2", "optim.lr=0.02", "train.stop_after_steps=2")]) == 0
    assert [s for s, _ in _steps(out)] == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["config"]["optim"]["lr"] == 0.02


def test_resume_with_a_damaged_state_says_what_to_do(synth, tmp_path):
    """Same config, but the saved optimiser state does not fit (another code version, a damaged file):
    a message with what to do instead of KeyError: 'momentum' or raw load_state_dict key lists."""
    out = tmp_path / "run"
    cfg = load_config(None, _args(synth, out, "optim.epochs=1", "train.stop_after_steps=2"))
    with pytest.raises(TrainingStopped):
        Trainer(cfg, progress=False).fit()
    state = torch.load(out / "last.pt", weights_only=True)
    state["optimizer_state"]["param_groups"][0].pop("momentum")
    state["model_state"].pop(next(iter(state["model_state"])))
    torch.save(state, out / "last.pt")
    with pytest.raises(ValueError, match=r"last.pt matches this config but its state does not fit .*train.resume=false"):
        Trainer(load_config(None, _args(synth, out, "optim.epochs=1")), progress=False).fit()


def test_partial_checkpoint_files_are_removed_on_the_next_start(synth, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    partial = out / ".last.pt.k2j4x9.tmp"  # what atomic_save leaves when killed mid-write
    partial.write_bytes(b"PK\x03\x04 half a checkpoint")
    other = out / "notes.tmp"
    other.write_text("not ours")
    Trainer(load_config(None, _args(synth, out, "optim.epochs=1")), progress=False)
    assert not partial.exists() and other.exists()


def _dev_full(monkeypatch, only=None):
    """Writes of checkpoint ``only`` (or all) go to /dev/full: the kernel's real "no space left"."""
    real = ckpt.tempfile.mkstemp

    def mkstemp(prefix="", suffix="", dir=None):
        fd, tmp = real(prefix=prefix, suffix=suffix, dir=dir)
        if only is None or prefix.startswith(f".{only}."):
            os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, tmp

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_names_the_path_and_keeps_the_resume_point(synth, tmp_path, monkeypatch, capsys):
    target = tmp_path / "x.pt"
    ckpt.atomic_save({"a": torch.ones(3)}, target)
    _dev_full(monkeypatch)
    with pytest.raises(OSError, match=rf"cannot write checkpoint {target}: no space left on device .*previous x.pt is intact"):
        ckpt.atomic_save({"a": torch.zeros(1000)}, target)
    assert torch.load(target, weights_only=True)["a"].tolist() == [1, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no partial file left
    # in a run: last.pt is written before best.pt, so a disk that fills up on best.pt keeps the epoch
    monkeypatch.undo()
    _dev_full(monkeypatch, only="best.pt")
    out = tmp_path / "run"
    rc, io = _train(synth, out, "data.val_list=val.txt", capsys=capsys)
    assert rc == 2
    assert f"cannot write checkpoint {out / 'best.pt'}: no space left on device" in io.err
    assert len(io.err.strip().splitlines()) == 1, io.err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


# -- expected failures are one line; values are checked where they enter --------------------------------

def test_nan_stop_is_one_line_with_the_step(synth, tmp_path, capsys):
    rc, io = _train(synth, tmp_path / "nan", "optim.lr=1.0e+30", capsys=capsys)
    assert rc == 3
    err = io.err.strip()
    assert "loss is" in err and "checkpoint saved to" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_labels_outside_the_head_are_refused_when_the_trainer_is_built(synth, tmp_path):
    cfg = load_config(None, _args(synth, tmp_path / "run", "model.num_classes=2"))
    with pytest.raises(ValueError, match=r"label 2, outside the 2 classes of the model"):
        Trainer(cfg, progress=False)


def test_unreadable_training_videos_are_counted_at_the_end(synth, tmp_path, capsys):
    lst = tmp_path / "train.txt"
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    lst.write_text((synth / "train.txt").read_text() + f"{tmp_path / 'broken.mp4'} 1\n")
    rc, io = _train(synth, tmp_path / "run", f"data.train_list={lst}", "optim.epochs=1", capsys=capsys)
    assert rc == 0
    assert "; 1 unreadable training videos were replaced" in io.out, io.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_predict_on_cuda_without_cuda_is_refused_before_loading(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["predict", str(video), "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available here; use --device cpu" in capsys.readouterr().err


def test_help_config_comment_and_stop_message_agree_on_resuming(capsys):
    """`tada train --help` and the train.resume comment tell the story the stop message tells (tested with
    the signals above): the same command resumes; --overwrite / train.resume=false starts over."""
    import inspect

    from tada.cli import build_parser
    from tada.engine import config

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Running the same command again continues from train.output_dir/last.pt" in text
    assert "--overwrite (= train.resume=false) starts over" in text and "SIGTERM or Ctrl-C saves last.pt" in text
    src = inspect.getsource(config.TrainConfig)
    assert "true: continue from output_dir/last.pt" in src and "false (or `tada train --overwrite`): start over" in src
    assert config.TrainConfig().resume is True


def test_expected_failures_are_one_line_unless_tada_debug(tmp_path, monkeypatch, capsys):
    from tada.engine.config import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  accum_steps: 0\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tada train: error: optim.accum_steps=0: must be >= 1") and len(err.splitlines()) == 1
    monkeypatch.setenv("TADA_DEBUG", "1")
    with pytest.raises(ConfigError, match="optim.accum_steps=0"):
        main(["train", str(cfg)])


class _NaNOn(torch.utils.data.Dataset):
    def __init__(self, ds, poison):
        self.ds, self.poison = ds, poison

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        if self.poison:
            item["video"] = item["video"] * float("nan")
        return item


def _nan_worker(rank, world, port, synth, out):
    from tada.engine.trainer import build_dataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config(None, _args(synth, out, "train.dist_timeout=20"))
    ds, labels = build_dataset(cfg, "train")
    tr = Trainer(cfg, datasets={"train": (_NaNOn(ds, poison=rank == 1), labels)}, progress=False)
    try:
        tr.fit()
        what = "no error"
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        what = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.txt").write_text(what)
    torch.distributed.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(synth, tmp_path):
    """Rank 1's loss is NaN, rank 0's is not: both stop with FloatingPointError at step 0 (rank 0 would
    otherwise wait in the gradient all-reduce while rank 1 waits in the checkpoint barrier)."""
    import torch.multiprocessing as mp

    out = tmp_path / "nan"
    out.mkdir()
    mp.spawn(_nan_worker, args=(2, _free_port(), str(synth), str(out)), nprocs=2, join=True)
    r0, r1 = (out / "rank0.txt").read_text(), (out / "rank1.txt").read_text()
    assert r1.startswith("FloatingPointError: loss is nan at step 0"), r1
    assert r0.startswith("FloatingPointError: the loss of another rank is not finite at step 0"), r0
    assert (out / "nan_step0.pt").exists()
