"""Zero-shot evaluation throughput against classification evaluation, same video tower, same loader.

A video-text model with a frozen text tower encodes its class texts once per evaluation, so scoring a
batch costs one matrix product more than a linear head: its evaluation throughput should equal the
classification evaluation's. Both are run through the engine's evaluator (:func:`tada.engine.evaluate.evaluate`)
on the same dataset and loader, alternating, and the median of ``--repeats`` is compared.

    python benchmarks/zeroshot_speed.py --data runs/zeroshot_benchmark/data [--tower tsn_r_mini] [--json PATH]

``--data``: a folder written by ``tada synth --compositional`` (the zero-shot benchmark's).
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

from tada.engine.build import build_loader
from tada.engine.config import load_config
from tada.engine.evaluate import evaluate
from tada.engine.tasks import build_task, task_class
from tada.data.labels import LabelSpace


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="runs/zeroshot_benchmark/data")
    p.add_argument("--tower", default="tsn_r_mini")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    info = machine_info(torch.device("cpu"))
    common = [f"data.root={Path(args.data).resolve()}", f"model.name={args.tower}", "data.num_workers=2",
              "train.output_dir=runs/zeroshot_speed"]
    cfg_vt = load_config("configs/zeroshot/synth_base.yaml", common + ["task.kwargs.text_trainable=false"])
    cfg_cls = load_config("configs/zeroshot/synth_base.yaml", common + ["task.name=classification", "task.kwargs={}"])
    ds, names = task_class(cfg_vt).build_dataset(cfg_vt, "test")
    labels = LabelSpace.from_parser(names)
    runs = {}
    for key, cfg in (("classification", cfg_cls), ("zero-shot (frozen text)", cfg_vt)):
        task = build_task(cfg, labels)
        model = task.build_model(pretrained=False).eval()
        loader = build_loader(cfg, ds, train=False, collate_fn=task.collate)
        runs[key] = (task, model, loader)
    times = {k: [] for k in runs}
    for k, (task, model, loader) in runs.items():  # warm-up
        evaluate(model, loader, task, device=torch.device("cpu"))
    for _ in range(args.repeats):
        for k, (task, model, loader) in runs.items():
            t0 = time.perf_counter()
            res = evaluate(model, loader, task, device=torch.device("cpu"))
            times[k].append(time.perf_counter() - t0)
    views = res.num_views
    vt_task = runs["zero-shot (frozen text)"][0]
    out = {k: {"median_s": statistics.median(v), "views_per_s": views / statistics.median(v), "runs_s": v}
           for k, v in times.items()}
    ratio = out["zero-shot (frozen text)"]["views_per_s"] / out["classification"]["views_per_s"]
    print(f"# Evaluation throughput, {args.tower}, {views} views of {res.num_videos} videos; {info['device']}")
    print("| evaluation | views/s | median s |\n|---|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v['views_per_s']:.1f} | {v['median_s']:.2f} |")
    print(f"\nzero-shot / classification throughput: {ratio:.3f} (target >= 0.90); text encodings over "
          f"{args.repeats + 1} evaluations: {getattr(vt_task, 'text_encodes', 'n/a')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": out, "ratio": ratio, "views": views,
                                               "text_encodes": getattr(vt_task, "text_encodes", None)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
