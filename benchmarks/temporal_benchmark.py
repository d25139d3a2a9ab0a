"""Which part of TAda2D tells time-reversed classes apart: the paper's Table 3e in miniature, on the CPU.

On the synthetic time-reversal dataset (:mod:`tada.data.synth`, the default job's data and recipe,
``configs/synth``), for several seeds (data and training both seeded), four networks of the same
backbone (``*_r_mini``: one bottleneck per stage, widths 64..512):

* **TSN**: per-frame 2D ResNet, frames averaged (``tsn_r_mini``);
* **T-Pool only**: TSN + temporal aggregation, no TAdaConv (``tsn_r_mini``, ``aggregation=True``);
* **TAdaConv only**: TAda2D without T-Pool (``tada2d_r_mini``, ``aggregation=False``);
* **TAda2D**: TAdaConv + T-Pool (``tada2d_r_mini``).

TSN and TAda2D are trained by the default job itself (:func:`tada.engine.demo.run_demo`, whose wall
time is measured too); the two ablations by the same code on the same data. Reported: mean ± std
over seeds of test top-1, pair accuracy (prediction in the true reversal pair) and within-pair
accuracy (of those, the direction right too; chance 50 %). T-Pool averages over a symmetric window
of frames, so on its own it cannot see the order either: expect it near 50 % within pairs.

    python benchmarks/temporal_benchmark.py [--seeds 0 1 2] [--quick] [--out runs/temporal_benchmark]
        [--json results/temporal_benchmark.json] [--plot results/temporal_benchmark.png]

A full run is 3 x (demo + 2 trainings), 45 minutes on 2 cores (AMD EPYC); ``--quick`` (a few videos, one
epoch) checks the plumbing in a minute.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import machine_info
from tada.engine.demo import demo_overrides, find_config_dir, jsonable, make_demo_data, run_demo, train_and_test

#: (label, run folder, config file, extra overrides)
VARIANTS = (
    ("TSN", "tsn_mini", "tsn_mini.yaml", ()),
    ("T-Pool only", "tpool_only", "tsn_mini.yaml", ("model.kwargs.aggregation=true",)),
    ("TAdaConv only", "tadaconv_only", "tada2d_mini.yaml", ("model.kwargs.aggregation=false",)),
    ("TAda2D", "tada2d_mini", "tada2d_mini.yaml", ()),
)
METRICS = (("top1", "top-1 %"), ("pair_acc", "pair %"), ("within_pair_acc", "within pair %"))


def mean_std(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run(seeds, out: Path, quick: bool, epochs, progress: bool) -> dict:
    cfg_dir = find_config_dir()
    per_seed = []
    for seed in seeds:
        sdir = out / f"seed{seed}"
        print(f"=== seed {seed}: the default job (TSN + TAda2D) ===", flush=True)
        demo = run_demo(sdir, seed=seed, quick=quick, epochs=epochs, progress=progress)
        rows = {r["label"]: r for r in demo["models"]}
        data = make_demo_data(sdir, seed=seed, quick=quick, progress=False)  # reused, not rewritten
        common = demo_overrides(data["root"], seed=seed, quick=quick, epochs=epochs)
        for label, folder, cfg_file, extra in VARIANTS:
            if label in rows:
                continue
            print(f"=== seed {seed}: {label} ===", flush=True)
            ov = common + list(extra) + [f"train.output_dir={(sdir / folder).resolve()}"]
            rows[label] = train_and_test(cfg_dir / cfg_file, ov, label=label, progress=progress, seed=seed)
            r = rows[label]
            print(f"      {label}: test top-1 {r['top1']:.1f}%  pair {r['pair_acc']:.1f}%  within pair "
                  f"{r['within_pair_acc']:.1f}%  (trained in {r['train_time_s']:.0f} s)", flush=True)
        per_seed.append({"seed": seed, "demo_wall_time_s": demo["wall_time_s"],
                         "rows": {k: {m: v for m, v in r.items() if m not in ("config_resolved",)}
                                  for k, r in rows.items()}})
    summary = {}
    for label, _, _, extra in VARIANTS:
        rs = [s["rows"][label] for s in per_seed]
        entry = {"overrides": list(extra), "model": rs[0]["model"], "params_m": rs[0]["params_m"],
                 "gflops": rs[0]["gflops"]}
        for key, _ in METRICS + (("train_time_s", ""),):
            m, s = mean_std([r[key] for r in rs])
            entry[key] = {"mean": m, "std": s, "values": [r[key] for r in rs]}
        summary[label] = entry
    wall = mean_std([s["demo_wall_time_s"] for s in per_seed])
    return {"seeds": list(seeds), "quick": quick, "variants": summary, "per_seed": per_seed,
            "demo_wall_time_s": {"mean": wall[0], "std": wall[1], "values": [s["demo_wall_time_s"] for s in per_seed]},
            "machine": machine_info(torch.device("cpu"))}


def table(res: dict) -> str:
    head = ["variant", "network", "params (M)", "GFLOPs/view"] + [h for _, h in METRICS] + ["train time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, e in res["variants"].items():
        kw = f"{e['model']} {' '.join(o.replace('model.kwargs.', '') for o in e['overrides'])}".strip()
        cells = [label, kw, f"{e['params_m']:.3f}", f"{e['gflops']:.3f}"]
        cells += [f"{e[k]['mean']:.1f} ± {e[k]['std']:.1f}" for k, _ in METRICS]
        cells.append(f"{e['train_time_s']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    w = res["demo_wall_time_s"]
    lines.append("")
    lines.append(f"Seeds {res['seeds']} (mean ± std); default job (`tada demo`) wall time {w['mean']:.0f} ± "
                 f"{w['std']:.0f} s on {res['machine']['device']}, {res['machine']['threads']} threads.")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(res["variants"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.26
    for i, (key, name) in enumerate(METRICS):
        means = [res["variants"][v][key]["mean"] for v in labels]
        stds = [res["variants"][v][key]["std"] for v in labels]
        ax.bar([x + (i - 1) * width for x in range(len(labels))], means, width, yerr=stds, capsize=3, label=name)
    ax.axhline(50, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylim=(0, 105), ylabel="test accuracy (%)",
           title=f"synthetic time-reversal pairs, {len(res['seeds'])} seed(s): mean ± std")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="a few videos, one epoch: the plumbing only")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--out", default="runs/temporal_benchmark", help="runs folder (one sub-folder per seed)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="bar plot PNG (default: next to --json, else in --out)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = run(args.seeds, Path(args.out), args.quick, args.epochs, args.progress)
    res["total_time_s"] = time.perf_counter() - t0
    text = table(res)
    print()
    print(text)
    png = Path(args.plot) if args.plot else (Path(args.json).with_suffix(".png") if args.json
                                             else Path(args.out) / "temporal_benchmark.png")
    plot(res, png)
    res["table"], res["plot"] = text, str(png)
    print(f"plot: {png}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(jsonable(res), indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
