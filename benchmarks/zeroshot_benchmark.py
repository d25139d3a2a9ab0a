"""Compositional zero-shot on synthetic videos: TSN vs TAda2D video towers with a text tower.

Classes are sentences of words that combine -- colour x shape x motion, "a red square moving left"
(``tada synth --compositional``: 4 colours x 3 shapes x 6 motions = 72 classes). A video tower and a
tiny text tower, both from scratch, train on 48 *seen* sentences (``configs/zeroshot/synth_*.yaml``,
the ``video_text`` task); zero-shot is evaluated on the 24 *held-out* sentences, each of whose words
was seen. Half of the held-out sentences differ from a seen one only by the direction of the motion
("moving left" held out, "moving right" seen with the same colour and shape): naming them needs the
order of the frames.

    python benchmarks/zeroshot_benchmark.py [--out runs/zeroshot_benchmark] [--json results/zeroshot_benchmark.json]
        [--per-class 30] [--quick]

Reported per tower: seen-class top-1 (``tada test`` on held-back videos of the seen classes), held-out
zero-shot top-1 (``tada zeroshot`` over the 24 held-out sentences), its mean over the direction-only
classes and over the others, and chance (1/24); and the same held-out videos ranked among all 72
sentences (generalised zero-shot), where a direction-only class competes with its seen mirror, so
only the order of the frames names it (chance 1/72). Each step is cached in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch
from _common import machine_info

from tada.cli import main as tada

TOWERS = (("TSN", "tsn"), ("TAda2D", "tada2d"))


def _run(args, what):
    code = tada([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"{what} failed (exit code {code}): tada {' '.join(map(str, args))}")


def _per_class(path: Path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if "acc" in k.lower())
    return {r["class_name"]: float(r[key]) for r in rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/zeroshot_benchmark")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="a smoke test: few videos, one epoch")
    args = p.parse_args(argv)
    out = Path(args.out)
    t_start = time.perf_counter()
    info = machine_info(torch.device("cpu"))
    print(f"# Zero-shot benchmark: {info['device']}, torch {info['torch']}", flush=True)
    data = out / "data"
    if not (data / "compositional.json").is_file():
        extra = ["--frames", "8", "--size", "32"] if args.quick else []
        _run(["synth", "--compositional", "--out", data, "--per-class", 3 if args.quick else args.per_class,
              "--quiet", *extra], "tada synth --compositional")
    meta = json.loads((data / "compositional.json").read_text())
    direction = set(meta["direction_only"])
    heldout = list(meta["heldout"])
    timings, rows = {}, []
    for label, name in TOWERS:
        run = out / name
        cfg = f"configs/zeroshot/synth_{name}.yaml"
        common = [f"data.root={data.resolve()}", f"train.output_dir={run}"]
        if args.quick:
            common += ["optim.epochs=1", "optim.warmup_epochs=0", "train.eval_every=1", "data.num_workers=0",
                       "data.test_crops=1"]
        if not (run / "test_results.json").is_file():
            t0 = time.perf_counter()
            _run(["train", cfg, *common, "--no-progress"], f"training ({label})")  # then tests on seen/test.txt
            timings[f"train_{name}_s"] = time.perf_counter() - t0
        seen = json.loads((run / "test_results.json").read_text())
        zs_dir = run / "zeroshot"
        if not list(zs_dir.glob("zeroshot_*.json")):
            t0 = time.perf_counter()
            _run(["zeroshot", cfg, "--checkpoint", run / "last.pt", "--list", data / "heldout" / "test.txt",
                  "--class-names", data / "heldout" / "classes.txt", "--splits", 1, "--no-progress", *common,
                  f"train.output_dir={zs_dir}"], f"zero-shot ({label})")
            timings[f"zeroshot_{name}_s"] = time.perf_counter() - t0
        zs = json.loads(next(zs_dir.glob("zeroshot_*.json")).read_text())
        per_class = _per_class(next(zs_dir.glob("zeroshot_*_per_class.csv")))
        # generalised zero-shot: the held-out videos ranked among all sentences, seen ones included -- the
        # mirror of a direction-only class is then a candidate, so only the frame order tells them apart
        gz_dir = run / "zeroshot_all"
        if not list(gz_dir.glob("zeroshot_*.json")):
            t0 = time.perf_counter()
            gz_dir.mkdir(parents=True, exist_ok=True)
            names_all = [n for n in (data / "classes.txt").read_text().splitlines() if n]
            names_held = [n for n in (data / "heldout" / "classes.txt").read_text().splitlines() if n]
            lines = []
            for line in (data / "heldout" / "test.txt").read_text().splitlines():
                path, lab = line.rsplit(" ", 1)
                lines.append(f"{path} {names_all.index(names_held[int(lab)])}")
            (gz_dir / "heldout_all.txt").write_text("".join(x + "\n" for x in lines))
            _run(["zeroshot", cfg, "--checkpoint", run / "last.pt", "--list", gz_dir / "heldout_all.txt",
                  "--class-names", data / "classes.txt", "--splits", 1, "--no-progress", *common,
                  f"train.output_dir={gz_dir}"], f"generalised zero-shot ({label})")
            timings[f"zeroshot_all_{name}_s"] = time.perf_counter() - t0
        g_class = _per_class(next(gz_dir.glob("zeroshot_*_per_class.csv")))
        g_d = [g_class[c] for c in heldout if c in direction]
        g_o = [g_class[c] for c in heldout if c not in direction]
        d_acc = [per_class[c] for c in heldout if c in direction]
        o_acc = [per_class[c] for c in heldout if c not in direction]
        split = zs["splits"][0]
        rows.append({"tower": label, "seen_top1": seen["top1"], "heldout_top1": split["top1"],
                     "heldout_top5": split.get("top5"), "direction_only_top1": sum(d_acc) / max(len(d_acc), 1),
                     "other_heldout_top1": sum(o_acc) / max(len(o_acc), 1), "chance": 100.0 / len(heldout),
                     "all_heldout_top1": (sum(g_d) + sum(g_o)) / max(len(g_d) + len(g_o), 1),
                     "all_direction_only_top1": sum(g_d) / max(len(g_d), 1),
                     "all_other_heldout_top1": sum(g_o) / max(len(g_o), 1),
                     "all_chance": 100.0 / len(meta["seen"] + heldout),
                     "heldout_classes": len(heldout), "direction_only_classes": len(d_acc)})
    total = time.perf_counter() - t_start
    head = ("| video tower | seen top-1 | held-out top-1 (among 24 held-out) | direction-only | other | chance | "
            "held-out top-1 (among all 72) | direction-only | other | chance |\n|---|---|---|---|---|---|---|---|---|---|")
    table = "\n".join([head] + [
        f"| {r['tower']} | {r['seen_top1']:.1f} | {r['heldout_top1']:.1f} | {r['direction_only_top1']:.1f} | "
        f"{r['other_heldout_top1']:.1f} | {r['chance']:.1f} | {r['all_heldout_top1']:.1f} | "
        f"{r['all_direction_only_top1']:.1f} | {r['all_other_heldout_top1']:.1f} | {r['all_chance']:.1f} |"
        for r in rows])
    print(f"\n{table}\n\n{len(meta['seen'])} seen / {len(heldout)} held-out classes ({len(direction)} direction-only); "
          f"total {total / 60:.1f} min")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "timings_s": timings, "total_s": total,
                                               "args": vars(args), "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
