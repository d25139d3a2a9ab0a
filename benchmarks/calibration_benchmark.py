"""The paper's hypothesis on the CPU: which calibration gives temporal modelling (Tables 3a, A8, Fig. 4).

On the default job's synthetic time-reversal data (:mod:`tada.data.synth`: 5 pairs of classes that
differ only in the order of their frames) and its recipe (``configs/synth/tada2d_mini.yaml``, epochs
reduced so the study fits in 90 minutes on 2 cores), the same ``tada2d_r_mini`` network with the
TAdaConv's calibration taken from each generator of :mod:`tada.nn.calibration`:

* **Table 3a**: none (TSN), learnable (fixed / temporally varying), dynamic (fixed / varying), TAda
  (TAdaConv V1), each with "our init" (``init="ones"``: alpha exactly 1 at init) and without
  (``init="random"``: the last layer randomly initialised);
* **Table A8**: TAM's global branch, TAM local + global, TAdaConv without its global context;
* **Fig. 4**: TAdaConv in one stage only (res2 .. res5), and in every stage with a share of the
  channels calibrated (1/64 .. 1).

T-Pool is off in every row (``aggregation=false``): the study is about the calibration alone. Each
run is one subprocess; its result is cached in ``{out}/runs/{id}.json``, so a rerun continues where an
interrupted one stopped (delete a file to redo that run). Reported per row: test top-1, pair accuracy
(the prediction is in the true reversal pair) and within-pair accuracy (of those, the direction right
too; chance 50 %), params, train time; the paper's SSV2 top-1 beside it for the ordering.

    python benchmarks/calibration_benchmark.py [--epochs 12] [--seed 0] [--only ID ...] [--quick]
        [--out runs/calibration_benchmark] [--json results/calibration_benchmark.json]
        [--plot results/calibration_benchmark.png] [--jobs 1]

``--quick`` (a few videos, one epoch) checks the plumbing in a few minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: id -> (table, label, init, config file, overrides, paper SSV2 top-1 or None)
_TADA = "tada2d_mini.yaml"
_NOAGG = ("model.kwargs.aggregation=false",)


def _gen(name, init):
    return (f"model.kwargs.routing={name}", f"model.kwargs.routing_kwargs={{init: {init}}}")


RUNS = {
    "none": ("3a", "none (TSN)", "-", "tsn_mini.yaml", (), 32.0),
    "learnable_ones": ("3a", "learnable, fixed", "ours", _TADA, _gen("learnable", "ones"), 34.3),
    "learnable_random": ("3a", "learnable, fixed", "random", _TADA, _gen("learnable", "random"), 32.6),
    "learnable_t_ones": ("3a", "learnable, varying", "ours", _TADA, _gen("learnable_t", "ones"), 45.4),
    "learnable_t_random": ("3a", "learnable, varying", "random", _TADA, _gen("learnable_t", "random"), 43.8),
    "dynamic_ones": ("3a", "dynamic, fixed (DynamicFilter-like)", "ours", _TADA, _gen("dynamic", "ones"), 51.2),
    "dynamic_random": ("3a", "dynamic, fixed (DynamicFilter-like)", "random", _TADA, _gen("dynamic", "random"), 41.7),
    "dynamic_t_ones": ("3a", "dynamic, varying (DDF-like)", "ours", _TADA, _gen("dynamic_t", "ones"), 53.8),
    "dynamic_t_random": ("3a", "dynamic, varying (DDF-like)", "random", _TADA, _gen("dynamic_t", "random"), 49.8),
    "tada_ones": ("3a", "TAda (local + global)", "ours", _TADA, _gen("v1", "ones"), 59.2),
    "tada_random": ("3a", "TAda (local + global)", "random", _TADA, _gen("v1", "random"), 47.8),
    "tam_global_ones": ("A8", "TAM global branch", "ours", _TADA, _gen("tam_global", "ones"), 52.9),
    "tam_global_random": ("A8", "TAM global branch", "random", _TADA, _gen("tam_global", "random"), 39.7),
    "tam_lg_ones": ("A8", "TAM local + global", "ours", _TADA, _gen("tam_local_global", "ones"), 54.3),
    "tam_lg_random": ("A8", "TAM local + global", "random", _TADA, _gen("tam_local_global", "random"), 41.3),
    "tada_noglobal": ("A8", "TAdaConv w/o global context", "ours", _TADA,
                      ("model.kwargs.routing_kwargs={global_context: false}",), 57.9),
    **{f"stage{s}": ("fig4-stages", f"res{s} only", "ours", _TADA, (f"model.kwargs.tada_stages=[{s}]",), None)
       for s in (2, 3, 4, 5)},
    **{f"share{d}": ("fig4-share", f"1/{d} of the channels", "ours", _TADA,
                     (f"model.kwargs.cal_fraction={1 / d!r}",), None) for d in (64, 16, 4, 2)},
}
SHARES = {"share64": 1 / 64, "share16": 1 / 16, "share4": 1 / 4, "share2": 1 / 2, "tada_ones": 1.0}
METRICS = (("top1", "top-1 %"), ("pair_acc", "pair %"), ("within_pair_acc", "within pair %"))
KEEP = ("label", "model", "model_kwargs", "top1", "top5", "pair_acc", "within_pair_acc", "per_pair", "per_class_acc",
        "params_m", "gflops", "epochs", "train_time_s", "eval_time_s", "best_val_top1", "history", "test_videos",
        "views_per_video")


def run_one(run_id: str, out: Path, seed: int, epochs: int, quick: bool) -> dict:
    """Train and test one row in this process; write ``{out}/runs/{run_id}.json``."""
    from tada.engine.demo import demo_overrides, find_config_dir, jsonable, make_demo_data, train_and_test

    table, label, init, cfg_file, extra, _ = RUNS[run_id]
    data = make_demo_data(out, seed=seed, quick=quick, progress=False)
    ov = demo_overrides(data["root"], seed=seed, quick=quick, epochs=None if quick else epochs)
    ov += list(_NOAGG) + list(extra) + [f"train.output_dir={(out / 'models' / run_id).resolve()}",
                                         "train.eval_every=100"]
    t0 = time.perf_counter()
    row = train_and_test(find_config_dir() / cfg_file, ov, label=label, progress=False, seed=seed)
    res = {k: row[k] for k in KEEP if k in row}
    res.update(id=run_id, table=table, init=init, overrides=ov, seed=seed, quick=quick,
               wall_time_s=time.perf_counter() - t0)
    path = out / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(res), indent=1))
    return res


def _cached(path: Path, seed: int, epochs: int, quick: bool):
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except ValueError:
        return None
    if res.get("seed") != seed or res.get("quick") != quick or (not quick and res.get("epochs") != epochs):
        return None
    return res


def run_all(ids, out: Path, seed: int, epochs: int, quick: bool, jobs: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # the dataset once, before the runs start (the runs then find it and reuse it)
    from tada.engine.demo import make_demo_data
    make_demo_data(out, seed=seed, quick=quick, progress=False)
    results, todo = {}, []
    for rid in ids:
        hit = _cached(out / "runs" / f"{rid}.json", seed, epochs, quick)
        if hit is not None:
            results[rid] = hit
            print(f"  {rid}: cached ({hit['top1']:.1f} % top-1)", flush=True)
        else:
            todo.append(rid)
    threads = max(1, (os.cpu_count() or 2) // jobs)

    def launch(rid):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", rid, "--out", str(out), "--seed", str(seed),
               "--epochs", str(epochs), "--threads", str(threads)] + (["--quick"] if quick else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log = out / "logs" / f"{rid}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(f"  {rid}: FAILED (exit {proc.returncode}), see {log}", flush=True)
            return rid, None
        res = json.loads((out / "runs" / f"{rid}.json").read_text())
        print(f"  {rid}: top-1 {res['top1']:.1f}  pair {res['pair_acc']:.1f}  within {res['within_pair_acc']:.1f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        return rid, res

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for rid, res in pool.map(launch, todo):
            if res is not None:
                results[rid] = res
    return results


def _fmt(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


def tables(results: dict) -> str:
    lines = []
    for table, title in (("3a", "Table 3a: where the calibration comes from"),
                         ("A8", "Table A8: other dynamic filters as calibration generators")):
        lines += [f"**{title}**", "",
                  "| calibration | init | top-1 % | pair % | within pair % | params (M) | train (s) | paper SSV2 top-1 |",
                  "|---|---|---|---|---|---|---|---|"]
        ids = [r for r, spec in RUNS.items() if spec[0] == table]
        if table == "A8":
            ids = ["tada_ones"] + ids
        for rid in ids:
            spec, res = RUNS[rid], results.get(rid)
            if res is None:
                lines.append(f"| {spec[1]} | {spec[2]} | not run | | | | | {_fmt(spec[5])} |")
                continue
            lines.append(f"| {spec[1]} | {spec[2]} | {res['top1']:.1f} | {res['pair_acc']:.1f} | "
                         f"{res['within_pair_acc']:.1f} | {res['params_m']:.3f} | {res['train_time_s']:.0f} | "
                         f"{_fmt(spec[5])} |")
        lines.append("")
    lines += ["**Fig. 4: where to calibrate** (TAdaConv V1, our init)", "",
              "| TAdaConv in | calibrated channels | top-1 % | pair % | within pair % | params (M) |",
              "|---|---|---|---|---|---|"]
    for rid in ["none", "stage2", "stage3", "stage4", "stage5", "share64", "share16", "share4", "share2", "tada_ones"]:
        res = results.get(rid)
        where = {"none": "no stage (TSN)"}.get(rid, RUNS[rid][1] if rid.startswith("stage") else "res2–res5")
        share = {"none": "–"}.get(rid, RUNS[rid][1].split(" of")[0] if rid.startswith("share") else "all")
        if res is None:
            lines.append(f"| {where} | {share} | not run | | | |")
        else:
            lines.append(f"| {where} | {share} | {res['top1']:.1f} | {res['pair_acc']:.1f} | "
                         f"{res['within_pair_acc']:.1f} | {res['params_m']:.3f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    base = results.get("none", {}).get("top1")
    stage_ids = [r for r in ("stage2", "stage3", "stage4", "stage5", "tada_ones") if r in results]
    labels = [RUNS[r][1].replace(" only", "") if r != "tada_ones" else "all" for r in stage_ids]
    for i, (key, name) in enumerate(METRICS):
        ax1.bar([x + (i - 1) * 0.26 for x in range(len(stage_ids))], [results[r][key] for r in stage_ids], 0.26,
                label=name)
    if base is not None:
        ax1.axhline(base, color="k", ls=":", lw=1, label="TSN top-1")
    ax1.axhline(50, color="grey", ls="--", lw=0.8)
    ax1.set_xticks(range(len(stage_ids)), labels)
    ax1.set(ylim=(0, 105), ylabel="test accuracy (%)", title="TAdaConv in one stage only")
    ax1.legend(fontsize=7, loc="lower right")
    share_ids = [r for r in SHARES if r in results]
    xs = [SHARES[r] for r in share_ids]
    for key, name in METRICS:
        ax2.plot(xs, [results[r][key] for r in share_ids], marker="o", label=name)
    if base is not None:
        ax2.axhline(base, color="k", ls=":", lw=1, label="TSN top-1")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [f"1/{round(1 / x)}" if x < 1 else "1" for x in xs])
    ax2.set(ylim=(0, 105), xlabel="share of calibrated channels", title="calibrating a share of the channels")
    ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (the recipe has 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", default=None, choices=list(RUNS), metavar="ID", help="these rows only")
    p.add_argument("--quick", action="store_true", help="a few videos, one epoch: the plumbing only")
    p.add_argument("--out", default="runs/calibration_benchmark")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="Fig. 4 PNG (default: next to --json, else in --out)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (threads are split between them)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:  # a worker: one run
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run_one(args.one, Path(args.out), args.seed, args.epochs, args.quick)
        return 0
    sys.path.insert(0, str(HERE))
    from _common import machine_info  # noqa: PLC0415
    import torch

    from tada.engine.demo import jsonable

    t0 = time.perf_counter()
    ids = args.only or list(RUNS)
    results = run_all(ids, Path(args.out), args.seed, args.epochs, args.quick, max(1, args.jobs))
    total = time.perf_counter() - t0
    text = tables(results)
    print()
    print(text)
    png = Path(args.plot) if args.plot else (Path(args.json).with_suffix(".png") if args.json
                                             else Path(args.out) / "calibration_benchmark.png")
    plot(results, png)
    missing = [r for r in ids if r not in results]
    info = machine_info(torch.device("cpu"))
    summary = {"machine": info, "seed": args.seed, "epochs": args.epochs, "quick": args.quick, "jobs": args.jobs,
               "wall_time_s": total, "runs_wall_time_s": sum(r.get("wall_time_s", 0) for r in results.values()),
               "results": results, "table": text, "plot": str(png), "missing": missing}
    print(f"\n{len(results)} runs ({len(missing)} missing), {total / 60:.1f} min this call, "
          f"{summary['runs_wall_time_s'] / 60:.1f} min of runs; {info['device']}; plot: {png}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(jsonable(summary), indent=1))
        print(f"json: {args.json}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
