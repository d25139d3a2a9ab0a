"""Feature-extraction throughput (``tada extract``) against the same model's pure inference, clips/s.

For ``tada2d_r50`` and ``tadaconvnextv2_tiny`` (random init, eval mode), in one run:

* **extract**: :func:`tada.engine.extract.extract` end to end on a synthetic video written here
  (``data_speed.write_synthetic``: 568x320 H.264, 30 fps, keyframe every 60 frames, textured
  moving content), epic-like protocol: a 60 fps timeline, 8 frames at interval 8, one clip every 8
  frames, short side ``--short-side`` (224), whole frame (8 x 224 x 398 per clip), ``--batch``
  clips per model call, ``--workers`` decoding processes (default 2, the command's default);
  wall time from the call to the written manifest;
* **infer**: ``forward_head(forward_features(x), pre_logits=True)`` on pre-decoded random tensors of
  the same shape, the same batches (the last one partial too), after one warm-up batch; timed before
  and after the extraction, the faster of the two is the baseline (machine drift makes the ratio
  conservative, not flattering);
* **decode**: the same windows decoded and preprocessed in this process with no model (where the
  decoding time would go if it did not overlap the model).

Ratio = extract clips/s / infer clips/s (goal >= 0.8 with the default worker count).

    python benchmarks/extract_speed.py [--seconds 5] [--json results/extract_speed.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from _common import machine_info
from data_speed import write_synthetic
from tada import create_model
from tada.engine import extract as E

MODELS = ("tada2d_r50", "tadaconvnextv2_tiny")


def decode_only(path, protocol, batch):
    """Seconds to decode and preprocess every window of the video in this process (no model)."""
    job = E._probe_job("v", path, protocol, None, batch)
    ds = E._WindowDataset([job], E.FramePreprocess(protocol.short_side, protocol.crops, E.TF.IMAGENET_MEAN,
                                                    E.TF.IMAGENET_STD), protocol.fps, None)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        item = ds[i]
        assert "error" not in item, item["error"]
        E._gather_clips(item["frames"], item["positions"])
    return time.perf_counter() - t0, len(job.plan), tuple(item["frames"].shape[-2:])


@torch.inference_mode()
def pure_inference(model, clips, batch, shape):
    sizes = [min(batch, clips - i) for i in range(0, clips, batch)]
    xs = {b: torch.randn(b, 3, *shape) for b in set(sizes)}
    model.forward_head(model.forward_features(xs[sizes[0]]), pre_logits=True)  # warm-up
    t0 = time.perf_counter()
    for b in sizes:
        model.forward_head(model.forward_features(xs[b]), pre_logits=True)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="length of the synthetic 30 fps video")
    p.add_argument("--short-side", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    info = machine_info(torch.device("cpu"))
    protocol = E.Protocol(fps=60.0, clip_frames=8, interval=8, stride=8, short_side=args.short_side)
    print(f"# Extraction speed: {info['device']}, torch {info['torch']}, {info['threads']} threads; epic-like "
          f"protocol (60 fps, 8x8, stride 8, short side {args.short_side}, whole frame), batch {args.batch}, "
          f"{args.workers} workers")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = write_synthetic(os.path.join(tmp, "video.mp4"), seconds=args.seconds)
        dec_s, clips, (h, w) = decode_only(video, protocol, args.batch)
        print(f"  video: {args.seconds * 30} frames 568x320 at 30 fps -> {clips} clips of 8x{h}x{w}; "
              f"decode+preprocess alone {dec_s:.2f} s", file=sys.stderr, flush=True)
        for name in args.models:
            torch.manual_seed(0)
            model = create_model(name, num_classes=400).eval()
            inf_before = pure_inference(model, clips, args.batch, (8, h, w))
            print(f"  {name}: pure inference {clips / inf_before:.3f} clips/s", file=sys.stderr, flush=True)
            out = os.path.join(tmp, name)
            t0 = time.perf_counter()
            s = E.extract([("video", video)], out, model=model, protocol=protocol, batch_size=args.batch,
                          workers=args.workers, model_info={"name": name})
            ext_s = time.perf_counter() - t0
            assert s.clips == clips and not s.unreadable, s
            print(f"  {name}: extract {clips / ext_s:.3f} clips/s", file=sys.stderr, flush=True)
            inf_after = pure_inference(model, clips, args.batch, (8, h, w))
            print(f"  {name}: pure inference again {clips / inf_after:.3f} clips/s", file=sys.stderr, flush=True)
            inf_s = min(inf_before, inf_after)  # the faster baseline: a conservative ratio
            rows.append({"model": name, "clips": clips, "clip_shape": [8, h, w], "extract_s": ext_s, "infer_s": inf_s,
                         "infer_s_before_after": [inf_before, inf_after],
                         "extract_clips_per_s": clips / ext_s, "infer_clips_per_s": clips / inf_s,
                         "ratio": inf_s / ext_s, "decode_s": dec_s, "decode_share_of_infer": dec_s / inf_s})

    print()
    print("| model | clips | extract clips/s | pure inference clips/s | ratio | decode+preprocess s (alone) "
          "| decode / inference time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['clips']} | {r['extract_clips_per_s']:.3f} | {r['infer_clips_per_s']:.3f} "
              f"| {r['ratio']:.2f} | {r['decode_s']:.2f} | {r['decode_share_of_infer']:.3f} |")
    print("\nGoal: extract / pure inference >= 0.8 with the default worker count.")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "protocol": protocol.to_dict(), "batch": args.batch, "workers": args.workers,
                       "seconds": args.seconds, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
