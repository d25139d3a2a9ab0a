"""T-Pool alone: the native CPU kernels (``tada/nn/csrc/tpool.cpp``) against the PyTorch composition they
replace (``tada.nn._native.disabled()``: the fused autograd node when training, the plain ops otherwise),
at the shapes of the models that use them, batch 1, 8 frames:

* TAdaConvNeXtV2-T's four stages (channels-last LayerNorm T-Pool, with the depthwise TAdaConv's
  per-frame scale and shift), weighted by their block counts (3, 3, 9, 3) into a per-model total;
* TAdaFormer-B/16's branch (384 channels, 14², BatchNorm T-Pool on channels-last memory, batch statistics
  when training and frozen statistics at inference), times its 12 blocks.

Each row is the minimum over ``--repeats`` of inference, training forward, and forward + backward, with
``tada.utils.tune_cpu_allocator()`` (no page faults on fresh activations: what is left is the kernels').
Both engines run interleaved in one process.

    python benchmarks/tpool_speed.py [--repeats 30] [--json results/tpool_speed.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import machine_info
from tada.nn import TemporalAggregation, _native
from tada.utils import tune_cpu_allocator

# (label, norm, channels, size, blocks in the model)
SHAPES = [
    ("convnext s1", "ln", 96, 56, 3), ("convnext s2", "ln", 192, 28, 3), ("convnext s3", "ln", 384, 14, 9),
    ("convnext s4", "ln", 768, 7, 3), ("tadaformer branch", "bn", 384, 14, 12),
]


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(norm: str, c: int, size: int, repeats: int, frames: int = 8) -> dict:
    torch.manual_seed(0)
    agg = TemporalAggregation(c, norm=norm)
    y = torch.randn(1, frames, size, size, c)
    scale, shift = torch.randn(1, frames, 1, 1, c), torch.randn(1, frames, 1, 1, c)
    if norm == "bn":  # (B, C, T, H, W) in channels-last memory, as TAdaFormer's branch
        y, scale, shift = (t.permute(0, 4, 1, 2, 3) for t in (y, scale, shift))
    run = (lambda *a: agg.forward_channels_last(*a)) if norm == "ln" else (lambda *a: agg(*a))
    yg, sg, hg = (t.clone().requires_grad_() for t in (y, scale, shift))
    gz = torch.randn_like(run(y, scale, shift))

    def infer():
        agg.eval()
        with torch.no_grad():
            run(y, scale, shift)

    def forward():
        agg.train()
        run(yg, sg, hg)

    def step():
        agg.train()
        run(yg, sg, hg).backward(gz)

    out = {}
    for name, fn in (("infer", infer), ("train_fwd", forward), ("fwd_bwd", step)):
        native, plain = [], []
        for _ in range(3):  # interleaved rounds: drift hits both alike
            native.append(_best(fn, repeats))
            with _native.disabled():
                plain.append(_best(fn, repeats))
        out[name] = {"native_ms": min(native), "plain_ms": min(plain)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not _native.available():
        sys.exit("the native kernels are not available here (no C++ compiler, or TADA_NATIVE=0): nothing to compare")
    tune_cpu_allocator()
    info = machine_info(torch.device("cpu"))
    print(f"# T-Pool speed: {info['device']}, torch {info['torch']}, {info['threads']} threads, float32, batch 1, "
          "8 frames; min of repeats, ms (native / PyTorch composition)\n")
    print("| shape | inference | ratio | train forward | ratio | forward + backward | ratio |")
    print("|---|---|---|---|---|---|---|")
    rows, totals = [], {}
    for label, norm, c, size, blocks in SHAPES:
        r = measure(norm, c, size, args.repeats)
        rows.append({"shape": label, "norm": norm, "channels": c, "size": size, "blocks": blocks, **r})
        cells = []
        for k in ("infer", "train_fwd", "fwd_bwd"):
            n, pl = r[k]["native_ms"], r[k]["plain_ms"]
            cells.append(f"{n:.2f} / {pl:.2f} | {n / pl:.2f}")
            model = "tadaformer_b16" if norm == "bn" else "tadaconvnextv2_tiny"
            t = totals.setdefault(model, {}).setdefault(k, [0.0, 0.0])
            t[0] += blocks * n
            t[1] += blocks * pl
        print(f"| {label}, {c} ch, {size}² | " + " | ".join(cells) + " |", flush=True)
    print("\nPer model (x the blocks of each shape):\n")
    print("| model | inference ms | train forward ms | forward + backward ms |\n|---|---|---|---|")
    for model, t in totals.items():
        print(f"| {model} | " + " | ".join(f"{t[k][0]:.1f} / {t[k][1]:.1f}" for k in ("infer", "train_fwd", "fwd_bwd"))
              + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "totals": totals}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
