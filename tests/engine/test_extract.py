"""`tada extract` on real H.264 files: features equal the model on hand-decoded clips, clip times on a
video whose rate differs from the target rate, resume after a kill, two gloo ranks, unreadable videos,
bounded memory on a long video, output formats, presets and bad options."""
from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tada import create_model
from tada.data import transforms as TF
from tada.data.decode import read_frames
from tada.data.synth import write_video
from tada.engine import extract as E
from tada.engine.checkpoint import save_checkpoint
from tada.engine.config import Config, DataConfig, ModelConfig, to_dict

CLASSES = ["a", "b", "c"]
# a small protocol for the tiny test videos: 30 fps timeline, 4 frames at interval 2, a clip every 3
SMALL = ["--fps", "30", "--clip-frames", "4", "--interval", "2", "--short-side", "32", "--batch-size", "4",
         "--workers", "0", "--no-progress"]
REPO = Path(__file__).resolve().parents[2]


def moving(seed: int, frames: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A random texture sliding 2 px per frame: every frame differs, so a wrong frame gives another feature."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    return np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Videos at 25 fps (extracted on a 30 or 60 fps timeline), checkpoints of two mini models, a config."""
    root = tmp_path_factory.mktemp("extract")
    (root / "videos").mkdir()
    lengths = {"a": 40, "b": 64, "c": 30}
    for i, (name, n) in enumerate(lengths.items()):
        write_video(root / "videos" / f"{name}.mp4", moving(i, n), fps=25)
    write_video(root / "videos" / "two_s.mp4", moving(7, 50), fps=25)  # exactly 2.0 s
    (root / "list.txt").write_text("videos/a.mp4\nvideos/b.mp4 1\n# a comment\nvideos/c.mp4\n")
    # twelve videos for the kill / ranks tests
    for i in range(12):
        write_video(root / "videos" / f"r{i:02d}.mp4", moving(100 + i, 60 + 5 * i), fps=25)
    (root / "many.txt").write_text("".join(f"videos/r{i:02d}.mp4\n" for i in range(12)))
    # broken files
    (root / "videos" / "garbage.mp4").write_bytes(os.urandom(3000))
    write_video(root / "full.mp4", moving(9, 120), fps=25, faststart=True)
    blob = (root / "full.mp4").read_bytes()
    (root / "videos" / "cut.mp4").write_bytes(blob[: len(blob) // 2])  # opens; decoding fails half way
    ckpts = {}
    for name in ("tsn_convnext_mini", "tada2d_r_mini"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=len(CLASSES))
        cfg = Config(model=ModelConfig(name=name, drop_rate=0.0))
        ckpts[name] = save_checkpoint(root / f"{name}.pt", model=model, config=to_dict(cfg), class_names=CLASSES)
    (root / "cfg.yaml").write_text("data:\n  normalize: imagenet\n  batch_size: 4\n")
    return root


def _run(data, out, *extra, ckpt="tsn_convnext_mini", lst="list.txt"):
    stride = [] if "--num-clips" in extra else ["--stride", "3"]
    return E.main([str(data / "cfg.yaml"), "--checkpoint", str(data / f"{ckpt}.pt"), "--list", str(data / lst),
                   "--out", str(out), *SMALL, *stride, *extra])


def _manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def _model(data, name):
    from tada.engine.predict import load_for_inference

    return load_for_inference(data / f"{name}.pt")[0]


def _by_hand(model, path, indices, fps, short_side=32, crops=("none",), scores=False):
    """Decode with read_frames at ``indices`` on the ``fps`` grid, resize the short side, crop,
    normalise, forward one clip per crop: (features concatenated over crops, mean softmax)."""
    clip = read_frames(path, indices, fps=fps)
    video = v2.Resize(short_side, antialias=True)(TF.ToVideo()(clip))
    feats, probs = [], []
    for c in crops:
        v = video
        if c == "centre" and len(crops) == 1:
            v = TF.SpatialCrop(short_side, 1)(video)
        elif c != "none":
            v = TF.SpatialCrop(short_side, 3, ("left", "centre", "right").index(c))(video)
        x = TF.ToModelLayout()(TF.ToFloatNormalize(TF.IMAGENET_MEAN, TF.IMAGENET_STD)(v))[None]
        with torch.no_grad():
            fmap = model.forward_features(x)
            feats.append(model.forward_head(fmap, pre_logits=True)[0])
            probs.append(torch.softmax(model.forward_head(fmap)[0], 0))
    return torch.cat(feats).numpy(), torch.stack(probs).mean(0).numpy()


def _expected_indices(k, n, clip=4, interval=2, stride=3, num_clips=None):
    """Target-grid frames of clip k of a video of n target frames, by the protocol's arithmetic."""
    if num_clips is None:
        start = k * stride
    else:
        max_start = max(0, n - 1 - (clip - 1) * interval)
        start = math.floor(max_start * (k + 0.5) / num_clips + 0.5)
    return [min(start + i * interval, n - 1) for i in range(clip)]


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name,extra", [
    ("tsn_convnext_mini", []),
    ("tada2d_r_mini", ["--scores", "--workers", "2"]),
    ("tsn_convnext_mini", ["--per-crop", "--scores"]),
    ("tada2d_r_mini", ["--crop", "centre", "--num-clips", "5"]),
])
def test_clip_feature_equals_the_model_on_that_clip_decoded_by_hand(data, tmp_path, model_name, extra):
    assert _run(data, tmp_path, *extra, ckpt=model_name) == 0
    model = _model(data, model_name)
    per_crop, scores = "--per-crop" in extra, "--scores" in extra
    crops = ("left", "centre", "right") if per_crop else (("centre",) if "--crop" in extra else ("none",))
    num_clips = 5 if "--num-clips" in extra else None
    path = str(data / "videos" / "b.mp4")
    n = round(64 / 25 * 30)  # 2.56 s on a 30 fps grid: 77 frames
    table = np.load(tmp_path / "b.npy")
    clips = num_clips or math.ceil(n / 3)
    width = (3 if per_crop else 1) * model.num_features
    assert table.shape == (clips, width + (len(CLASSES) if scores else 0))
    assert table.dtype == np.float32
    for k in sorted({0, 1, clips // 2, clips - 1}):  # the last clip runs past the end (clamped)
        idx = _expected_indices(k, n, num_clips=num_clips)
        feat, prob = _by_hand(model, path, idx, 30, crops=crops)
        np.testing.assert_allclose(table[k, :width], feat, rtol=0, atol=1e-5, err_msg=f"clip {k}")
        if scores:
            np.testing.assert_allclose(table[k, width:], prob, rtol=0, atol=1e-6)
    # the last stride-mode clip does repeat the last frame, so the clamp rule was exercised
    if num_clips is None:
        assert _expected_indices(clips - 1, n)[-1] == n - 1


def test_clip_centre_times_follow_the_protocol_on_a_25fps_video_at_60fps(data, tmp_path):
    (tmp_path / "l.txt").write_text(str(data / "videos" / "two_s.mp4") + "\n")
    base = [str(data / "cfg.yaml"), "--checkpoint", str(data / "tsn_convnext_mini.pt"), "--list",
            str(tmp_path / "l.txt"), "--short-side", "32", "--workers", "0", "--no-progress"]
    # epic: 60 fps, 8 frames at interval 8, a clip every 8 frames; 2.0 s at 60 fps = 120 frames
    assert E.main(base + ["--out", str(tmp_path / "epic"), "--preset", "epic"]) == 0
    m = _manifest(tmp_path / "epic")
    e = m["videos"][0]
    assert (m["protocol"]["fps"], m["protocol"]["stride"], m["protocol"]["clip_frames"],
            m["protocol"]["interval"]) == (60.0, 8, 8, 8)
    assert e["source_fps"] == 25.0 and e["num_frames"] == 120
    assert e["num_clips"] == 15  # ceil(120 / 8)
    assert e["first_centre"] == pytest.approx(28 / 60) and e["centre_step"] == pytest.approx(8 / 60)
    got = E.load_features(tmp_path / "epic", "two_s")
    assert got["feats"].shape[0] == 15
    np.testing.assert_allclose(got["centres"], (8 * np.arange(15) + 3.5 * 8) / 60, rtol=0, atol=1e-12)
    # anet-style: 7 clips spread over the valid starts 0..(119 - 56)
    assert E.main(base + ["--out", str(tmp_path / "anet"), "--preset", "anet", "--fps", "60", "--num-clips", "7"]) == 0
    e = _manifest(tmp_path / "anet")["videos"][0]
    starts = [math.floor(63 * (k + 0.5) / 7 + 0.5) for k in range(7)]
    assert e["starts"] == starts and e["num_clips"] == 7
    np.testing.assert_allclose(e["centres"], [(s + 28) / 60 for s in starts], rtol=0, atol=1e-12)
    # and on a 30 fps timeline the same file has 60 frames
    assert E.main(base + ["--out", str(tmp_path / "hacs"), "--preset", "hacs"]) == 0
    e = _manifest(tmp_path / "hacs")["videos"][0]
    assert e["num_frames"] == 60 and e["num_clips"] == 4 and e["centre_step"] == pytest.approx(16 / 30)


# -- subprocesses: kill and resume, two ranks --------------------------------------------------------


def _cmd(data, out):
    return [sys.executable, "-m", "tada.engine.extract", str(data / "cfg.yaml"), "--checkpoint",
            str(data / "tsn_convnext_mini.pt"), "--list", str(data / "many.txt"), "--out", str(out), *SMALL,
            "--stride", "3", "--format", "actionformer", "--scores"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env.pop("TADA_DEBUG", None)
    return env


def _files(out) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir())}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted single-process extraction of the twelve videos (ActionFormer .npz: zip files,
    whose bytes must not depend on the clock either)."""
    out = tmp_path_factory.mktemp("reference")
    r = subprocess.run(_cmd(data, out), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    files = _files(out)
    assert len(files) == 13  # 12 feature files + manifest.json
    return files


def test_a_killed_extraction_resumes_and_gives_byte_identical_files(data, reference, tmp_path):
    out = tmp_path / "part"
    proc = subprocess.Popen(_cmd(data, out), env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(out.glob("*.npz"))):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no output appeared within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = {p.name: p.stat() for p in out.glob("*.npz")}
    assert 1 <= len(before) < 12, f"the kill came too late to test a resume ({len(before)} of 12 files done)"
    assert not (out / "manifest.json").exists()

    r = subprocess.run(_cmd(data, out), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    got = _files(out)
    assert sorted(got) == sorted(reference)  # no leftover temporary or per-rank files
    for name, blob in reference.items():
        assert got[name] == blob, f"{name} differs from the uninterrupted run"
    # the videos finished before the kill were skipped, not written again (a file whose record the kill
    # cut off would be extracted again, so count what the rerun says it skipped)
    skipped = int(r.stdout.split(" already there")[0].rsplit(None, 1)[-1])
    unchanged = [n for n, st in before.items()
                 if ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)]
    assert skipped >= 1 and len(unchanged) == skipped, (skipped, unchanged, r.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_write_the_same_files_as_one(data, reference, tmp_path):
    out, port = tmp_path / "ranks", _free_port()
    procs = [subprocess.Popen(_cmd(data, out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in range(2)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err.decode()
    got = _files(out)
    assert sorted(got) == sorted(reference)
    for name, blob in reference.items():
        assert got[name] == blob, f"{name} differs between 2 ranks and 1"


# -- robustness, memory --------------------------------------------------------------------------------


def test_unreadable_videos_are_listed_and_the_rest_extracted(data, tmp_path, caplog):
    lst = tmp_path / "mixed.txt"
    lst.write_text(f"{data}/videos/a.mp4\n{data}/videos/garbage.mp4\n{data}/videos/missing.mp4\n"
                   f"{data}/videos/cut.mp4\n{data}/videos/c.mp4\n")
    with caplog.at_level("WARNING", logger="tada.extract"):
        assert E.main([str(data / "cfg.yaml"), "--checkpoint", str(data / "tsn_convnext_mini.pt"), "--list", str(lst),
                       "--out", str(tmp_path / "o"), *SMALL, "--stride", "3"]) == 0
    m = _manifest(tmp_path / "o")
    assert [e["video"] for e in m["videos"]] == ["a", "c"]
    bad = {e["video"]: e["error"] for e in m["unreadable"]}
    assert sorted(bad) == ["cut", "garbage", "missing"]
    assert "not found" in bad["missing"]
    assert "clips" in bad["cut"]  # it opened, then a window of clips failed to decode
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.npy", "c.npy", "manifest.json"]
    assert np.load(tmp_path / "o" / "a.npy").shape[0] == math.ceil(round(40 / 25 * 30) / 3)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("garbage.mp4", "missing.mp4", "cut.mp4"):
        assert name in warned


def _extract_traced(model, path, out, batch):
    protocol = E.Protocol(fps=30.0, clip_frames=4, interval=2, stride=3, short_side=32)
    tracemalloc.start()
    try:
        s = E.extract([(Path(path).stem, str(path))], out, model=model, protocol=protocol, batch_size=batch, workers=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return s, peak


def test_memory_stays_bounded_on_a_long_video(data, tmp_path):
    """A 24 s video and a 2.4 s one at the same batch size: the frames held for a window and the traced
    peak memory are the same (decoding the whole long video would hold 600 frames, 22 MB)."""
    short, long_ = tmp_path / "short.mp4", tmp_path / "long.mp4"
    write_video(short, moving(1, 60, 96, 128), fps=25)
    write_video(long_, moving(2, 600, 96, 128), fps=25)
    model = _model(data, "tsn_convnext_mini")
    E.extract([("w", str(short))], tmp_path / "warm", model=model, protocol=E.Protocol(30.0, 4, 2, 3, short_side=32),
              batch_size=4, workers=0)  # first-call allocations out of the way
    s_short, peak_short = _extract_traced(model, short, tmp_path / "s", 4)
    s_long, peak_long = _extract_traced(model, long_, tmp_path / "l", 4)
    assert s_long.clips == math.ceil(round(600 / 25 * 30) / 3) == 240 and s_short.clips == 24
    # a window of 4 clips (4 frames at interval 2, starts 3 apart) uses 14 distinct frames: 0, 2..13, 15
    assert s_long.peak_frames_held == s_short.peak_frames_held == 14
    assert s_long.peak_frames_decoded < 300  # from a keyframe to the window, never the whole video
    frame_bytes = 96 * 128 * 3
    assert peak_long < peak_short + 40 * frame_bytes, (peak_short, peak_long)


# -- formats, presets, options -------------------------------------------------------------------------


def test_output_formats(data, tmp_path):
    assert _run(data, tmp_path / "npy", "--scores") == 0
    ref = np.load(tmp_path / "npy" / "b.npy")
    feats, scores = ref[:, :256], ref[:, 256:]
    assert scores.shape[1] == 3 and np.allclose(scores.sum(1), 1, atol=1e-5)

    assert _run(data, tmp_path / "af", "--scores", "--format", "actionformer") == 0
    with np.load(tmp_path / "af" / "b.npz") as z:
        assert sorted(z.files) == ["feats", "scores"]
        assert z["feats"].dtype == np.float32 and z["feats"].shape == feats.shape == (26, 256)
        np.testing.assert_array_equal(z["feats"], feats)
        np.testing.assert_array_equal(z["scores"], scores)
    assert _run(data, tmp_path / "af2", "--format", "actionformer") == 0
    with np.load(tmp_path / "af2" / "b.npz") as z:
        assert z.files == ["feats"]
    assert zipfile.is_zipfile(tmp_path / "af2" / "b.npz")

    assert _run(data, tmp_path / "mm", "--format", "mmaction") == 0
    text = (tmp_path / "mm" / "b.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert header == [f"f{i}" for i in range(256)]
    table = np.loadtxt(io.StringIO(text), dtype=np.float32, delimiter=",", skiprows=1)  # MMAction2's BMN read
    assert table.shape == (26, 256)
    np.testing.assert_array_equal(table, feats)  # 9 significant digits round-trip float32
    assert _manifest(tmp_path / "mm")["columns"]["feature_dim"] == 256
    np.testing.assert_array_equal(E.load_features(tmp_path / "mm", "b")["feats"], feats)


def test_presets_and_their_overrides():
    d = DataConfig(target_fps=25.0, frames=16, rate=4, test_short_side=256)
    assert E.resolve_protocol(d, "epic") == E.Protocol(60.0, 8, 8, stride=8, short_side=224, crop="none")
    assert E.resolve_protocol(d, "hacs") == E.Protocol(30.0, 8, 8, stride=16, short_side=128)
    assert E.resolve_protocol(d, "hacs", clip_frames=16, interval=4) == \
        E.Protocol(30.0, 16, 4, stride=16, short_side=128)
    anet = E.resolve_protocol(d, "anet")
    assert (anet.num_clips, anet.stride, anet.fps, anet.short_side) == (100, None, 30.0, 256)
    assert E.resolve_protocol(d, "anet", stride=8).num_clips is None  # an explicit stride wins over the preset
    assert E.resolve_protocol(d, "epic", num_clips=50).stride is None
    assert E.resolve_protocol(d) == E.Protocol(25.0, 16, 4, stride=4, short_side=256)  # the config's values
    assert E.resolve_protocol(d, "epic", per_crop=True).crops == ("left", "centre", "right")
    with pytest.raises(ValueError, match="exclusive"):
        E.resolve_protocol(d, "epic", stride=4, num_clips=3)
    with pytest.raises(ValueError, match="preset"):
        E.resolve_protocol(d, "kinetics")


def test_rerun_skips_done_videos_and_a_new_protocol_replaces_them(data, tmp_path, capsys, caplog):
    out = tmp_path / "o"
    assert _run(data, out) == 0
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.npy")}
    capsys.readouterr()
    assert _run(data, out) == 0
    said = capsys.readouterr().out
    assert "0 extracted" in said and "3 already there" in said
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.npy")} == first
    with caplog.at_level("WARNING", logger="tada.extract"):
        assert _run(data, out, "--stride", "5") == 0
    assert "another protocol" in caplog.text
    assert _manifest(out)["protocol"]["stride"] == 5
    assert np.load(out / "b.npy").shape[0] == math.ceil(77 / 5)


@pytest.mark.parametrize("extra,needle", [
    (["--stride", "0"], "--stride"),
    (["--format", "hdf5"], "--format"),
    (["--crop", "diagonal"], "--crop"),
    (["--fps", "-3"], "--fps"),
    (["--stride", "4", "--num-clips", "3"], "exclusive"),
    (["--per-crop", "--crop", "centre"], "--per-crop"),
    (["data.no_such_key=1"], "no_such_key"),
    (["--backend", "nonexistent"], "backend"),
    (["--checkpoint", "/nonexistent/ck.pt"], "ck.pt"),
    (["--list", "/nonexistent/list.txt"], "list.txt"),
])
def test_a_bad_option_exits_2_with_one_line(data, tmp_path, capsys, extra, needle):
    assert _run(data, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tada extract: error:") and needle in err[0], err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_help_and_debug(data, tmp_path, monkeypatch, capsys):
    assert E.main(["--help"]) == 0
    assert "--num-clips" in capsys.readouterr().out
    monkeypatch.setenv("TADA_DEBUG", "1")
    with pytest.raises(ValueError):
        _run(data, tmp_path, "--stride", "4", "--num-clips", "3")


def test_verb_noun_checkpoint_scores_are_a_softmax_per_head(data, tmp_path):
    """An Epic-Kitchens checkpoint (one head over 2 verbs + 3 nouns, its label space saved beside the
    weights): features as for any model, scores a softmax per head, columns named head by head."""
    from tada.data.labels import LabelSpace

    labels = LabelSpace.verb_noun(["take", "put"], ["cup", "knife", "pan"])
    torch.manual_seed(0)
    model = create_model("tsn_convnext_mini", num_classes=labels.num_classes)
    cfg = Config(model=ModelConfig(name="tsn_convnext_mini", drop_rate=0.0))
    save_checkpoint(data / "ek.pt", model=model, config=to_dict(cfg), class_names=[list(n) for n in labels.names],
                    labels=labels.to_json())
    assert _run(data, tmp_path / "ek", "--scores", ckpt="ek") == 0
    table = np.load(tmp_path / "ek" / "b.npy")
    verbs, nouns = table[:, 256:258], table[:, 258:]
    assert table.shape[1] == 256 + 5
    assert np.allclose(verbs.sum(1), 1, atol=1e-5) and np.allclose(nouns.sum(1), 1, atol=1e-5)
    assert _manifest(tmp_path / "ek")["class_names"] == ["verb:take", "verb:put", "noun:cup", "noun:knife", "noun:pan"]


def test_tada_extract_through_the_tada_command(data, tmp_path):
    from tada.cli import main

    stride = ["--stride", "3"]
    assert main(["extract", str(data / "cfg.yaml"), "--checkpoint", str(data / "tsn_convnext_mini.pt"), "--list",
                 str(data / "list.txt"), "--out", str(tmp_path / "o"), *SMALL, *stride]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.npy")) == ["a.npy", "b.npy", "c.npy"]
