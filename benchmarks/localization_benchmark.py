"""Temporal action localisation on synthetic untrimmed videos: TSN vs TAda2D features under BMN.

The paper's Table 12 pattern in miniature: the same localiser (BMN) on the features of a frame-
averaging 2D network (TSN) and of its temporally-adaptive twin (TAda2D). Actions come in time-
reversal pairs (moving left / right, growing / shrinking, ...), so a segment's class -- and, where two
instances of a pair follow each other, where one ends and the next begins -- is only visible in the
order of the frames.

1. the default job's trimmed data (``tada demo``'s: 10 classes x ``--per-class`` videos) and its two
   recipes (``configs/synth/{tsn,tada2d}_mini.yaml``) train the clip classifiers;
2. ``tada synth --untrimmed``: ``--videos`` videos of 20-40 s with 1-4 action instances on
   distracting backgrounds (60/20/20 % training / validation / testing);
3. ``tada extract`` with each classifier: 8-frame clips at interval 4 (about one action instance),
   one every 3 frames (0.3 s: about 100 rows for a 30 s video), with the clip scores (``--scores``);
4. ``tada train configs/localization/synth.yaml`` (BMN) on each feature set, one run per ``--seeds``
   seed, which then tests on the testing subset: AR@AN, AUC and mAP at tIoU 0.5:0.05:0.95.

Every step is cached in ``--out`` (a rerun continues). Writes ``--json`` and prints a Markdown table.

    python benchmarks/localization_benchmark.py [--out runs/localization_benchmark] [--seeds 0 1 2]
        [--json results/localization_benchmark.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import machine_info

from tada.cli import main as tada
from tada.engine.demo import demo_overrides, find_config_dir, make_demo_data, train_and_test

FEATURES = (("TSN", "tsn_mini"), ("TAda2D", "tada2d_mini"))
METRICS = ("ar@100", "auc", "map@0.50", "map@0.75", "map@0.95", "map")


def _run(args, what):
    code = tada([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"{what} failed (exit code {code}): tada {' '.join(map(str, args))}")


def classifiers(out: Path, per_class: int, epochs, quick: bool):
    data = make_demo_data(out / "trimmed", per_class=per_class, quick=quick, progress=False)
    cfg_dir = find_config_dir()
    ckpts = {}
    for label, name in FEATURES:
        run = out / f"cls_{name}"
        done = run / "done.json"
        if not done.is_file():
            t0 = time.perf_counter()
            row = train_and_test(cfg_dir / f"{name}.yaml", demo_overrides(data["root"], quick=quick, epochs=epochs)
                                 + [f"train.output_dir={run}"], label=label, progress=False)
            done.write_text(json.dumps({"top1": row["top1"], "within_pair_acc": row["within_pair_acc"],
                                        "time_s": time.perf_counter() - t0}))
        ckpts[name] = (run / "last.pt", json.loads(done.read_text()))
    return ckpts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/localization_benchmark")
    p.add_argument("--per-class", type=int, default=150, help="trimmed training videos per class (the demo's 150)")
    p.add_argument("--videos", type=int, default=80, help="untrimmed videos")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="BMN seeds per feature set")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny data, one epoch each")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = machine_info(torch.device("cpu"))
    print(f"# Localisation benchmark: {info['device']}, torch {info['torch']}", flush=True)

    timings = {}
    t0 = time.perf_counter()
    ckpts = classifiers(out, args.per_class, 1 if args.quick else None, args.quick)
    timings["classifiers_s"] = time.perf_counter() - t0

    data = out / "untrimmed"
    if not (data / "synth_untrimmed.json").is_file():
        n = 6 if args.quick else args.videos
        _run(["synth", "--untrimmed", "--out", data, "--videos", n, "--quiet"]
             + (["--duration", "12", "16", "--instances", "1", "2"] if args.quick else []), "tada synth --untrimmed")
    cfg_dir = find_config_dir()

    rows = []
    for label, name in FEATURES:
        ckpt, cls_info = ckpts[name]
        feats = data / f"features_{name}"
        t0 = time.perf_counter()
        _run(["extract", cfg_dir / f"{name}.yaml", "--checkpoint", ckpt, "--list", data / "videos.txt",
              "--root", data, "--out", feats, "--fps", 10, "--clip-frames", 8, "--interval", 4, "--stride", 3,
              "--short-side", 36, "--crop", "none", "--scores", "--batch-size", 32, "--workers", 1, "--no-progress",
              "data.normalize=imagenet"], f"tada extract ({label})")
        timings[f"extract_{name}_s"] = time.perf_counter() - t0
        runs = []
        for seed in args.seeds:
            run = out / f"bmn_{name}_seed{seed}"
            res_file = run / "test_detection.json"
            if not res_file.is_file():
                t0 = time.perf_counter()
                overrides = [f"data.root={data.resolve()}", f"task.kwargs.features={feats.name}",
                             f"train.output_dir={run}", f"train.seed={seed}"]
                if args.quick:
                    overrides += ["optim.epochs=2", "optim.milestones=[1]", "train.eval_every=1", "data.batch_size=2"]
                # tada train tests the trained model on data.test_list (the testing subset) into the run folder
                _run(["train", "configs/localization/synth.yaml", *overrides, "--no-progress"], f"BMN ({label})")
                timings[f"bmn_{name}_seed{seed}_s"] = time.perf_counter() - t0
            runs.append(json.loads(res_file.read_text())["metrics"])
        row = {"features": label, "classifier_top1": cls_info["top1"],
               "classifier_within_pair": cls_info["within_pair_acc"], "seeds": list(args.seeds)}
        for m in METRICS:
            vals = [100 * r[m] for r in runs]
            row[m] = statistics.mean(vals)
            row[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[m + "_runs"] = vals
        rows.append(row)

    total = time.perf_counter() - t_start
    head = ("| features | clip top-1 | AR@100 | AUC | mAP@0.5 | mAP@0.75 | mAP@0.95 | average mAP |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        cells = " | ".join(f"{r[m]:.1f} ± {r[m + '_std']:.1f}" for m in METRICS)
        lines.append(f"| {r['features']} | {r['classifier_top1']:.1f} | {cells} |")
    table = "\n".join(lines)
    print(f"\n{table}\n\nmean ± std over BMN seeds {args.seeds} (one feature extraction per classifier); "
          f"test subset of {args.videos if not args.quick else 6} untrimmed videos; total {total / 60:.1f} min")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "timings_s": timings,
                                               "total_s": total, "args": vars(args), "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
