"""The default job (``tada demo``): a per-frame model cannot tell time-reversed classes apart, TAda can.

Four steps, all on the CPU in about ten minutes on two cores:

1. write the synthetic temporal dataset (:mod:`tada.data.synth`: 10 classes in 5 time-reversal pairs,
   150 videos per class, 16 frames of 64x64; deterministic in ``seed``) under ``{out}/data`` (kept
   and reused when it is already there with the same settings);
2. train a TSN (``tsn_r_mini``: a 2D ResNet on every frame, frames averaged) and a TAda2D
   (``tada2d_r_mini``: the same network, same widths and depths, with TAdaConv + T-Pool) with the
   engine's :class:`~tada.engine.trainer.Trainer` from ``configs/synth/{tsn_mini,tada2d_mini}.yaml``;
3. evaluate both on the test split with multi-view testing (2 temporal clips x 3 spatial crops,
   softmax scores summed);
4. print and write a comparison (``{out}/summary.md``, ``{out}/summary.json``) next to each run's
   plots (curves, confusion matrix, per-class accuracy), and the two runs side by side with
   :func:`~tada.engine.compare.compare_runs` in ``{out}/compare`` (per-class gain, curves, table).

Accuracies in the table, for the test videos (percent):

* **top-1**: the predicted class is the true class (10-way);
* **pair**: the prediction falls in the true class's reversal pair (the 5-way task "which kind of
  motion", e.g. horizontal translation, whatever the direction);
* **within pair**: of the videos whose prediction falls in their pair, the share whose direction is
  right too (moving *left* rather than *right*). ``top-1 = pair x within pair``. A model that sees
  frames as an unordered set is at 50 % here by construction of the data; chance is 50 %.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["run_demo", "train_and_test", "make_demo_data", "demo_overrides", "pair_metrics", "format_table",
           "jsonable", "find_config_dir", "main", "DEMO_MODELS"]

#: (run name, config file in configs/synth, label in the table)
DEMO_MODELS = (("tsn_mini", "tsn_mini.yaml", "TSN"), ("tada2d_mini", "tada2d_mini.yaml", "TAda2D"))

#: Dataset of the full demo, and of ``quick=True`` (a smoke test: a few videos, one epoch).
DATA_FULL = dict(per_class=150, frames=16, size=64)
DATA_QUICK = dict(per_class=6, frames=16, size=64)
QUICK_OVERRIDES = ("optim.epochs=1", "optim.warmup_epochs=0.0", "data.batch_size=8", "data.num_workers=0",
                   "data.test_crops=1", "train.eval_every=1")


def find_config_dir() -> Path:
    """``configs/synth`` of the repository (the working directory's, else the one next to this package)."""
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "configs" / "synth"] + [p / "configs" / "synth" for p in here.parents]
    for c in candidates:
        if (c / "base.yaml").is_file():
            return c
    raise FileNotFoundError("configs/synth/base.yaml not found (looked in the working directory and above "
                            f"{here.parent}); run the demo from the repository root or pass config_dir=")


def pair_metrics(confusion, class_names: Sequence[str]) -> Dict[str, Any]:
    """Pair-collapsed and within-pair accuracy (percent) from a confusion matrix (rows: truth).

    Returns ``pair_acc``, ``within_pair_acc`` and ``per_pair`` (for every reversal pair present:
    its videos, its pair accuracy and its within-pair accuracy).
    """
    from ..data.synth import REVERSAL_PAIRS

    cm = [[int(v) for v in row] for row in confusion.tolist()]
    index = {n: i for i, n in enumerate(class_names)}
    total = sum(map(sum, cm))
    in_pair = right = 0
    per_pair = {}
    for a, b in REVERSAL_PAIRS:
        ids = [index[n] for n in (a, b) if n in index]
        if not ids:
            continue
        n = sum(sum(cm[i]) for i in ids)
        p = sum(cm[i][j] for i in ids for j in ids)
        r = sum(cm[i][i] for i in ids)
        in_pair, right = in_pair + p, right + r
        per_pair[f"{a}/{b}"] = {"videos": n, "pair_acc": _pct(p, n), "within_pair_acc": _pct(r, p)}
    return {"pair_acc": _pct(in_pair, total), "within_pair_acc": _pct(right, in_pair), "per_pair": per_pair}


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else float("nan")


def format_table(rows: List[Dict[str, Any]]) -> str:
    """A markdown table of the demo's rows."""
    head = ("model", "network", "top-1 %", "pair %", "within pair %", "params (M)", "GFLOPs/view", "train time (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = (r["label"], r["model"], f"{r['top1']:.1f}", f"{r['pair_acc']:.1f}", f"{r['within_pair_acc']:.1f}",
                 f"{r['params_m']:.3f}", f"{r['gflops']:.3f}", f"{r['train_time_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _dataset(root: Path, *, seed: int, settings: Dict[str, int], progress: bool) -> Dict[str, Any]:
    """Write the synthetic dataset under ``root`` unless the same one (same seed and settings) is there."""
    from ..data.synth import make_synthetic_dataset

    meta_path = root / "synth.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        same = meta.get("seed") == seed and all(meta.get(k) == v for k, v in settings.items())
        if same and all((root / f"{k}.txt").is_file() for k in ("train", "val", "test", "classes")):
            return {"generated": False, "time_s": 0.0, "counts": meta.get("counts", {})}
    t0 = time.perf_counter()
    make_synthetic_dataset(root, seed=seed, progress=progress, **settings)
    meta = json.loads(meta_path.read_text())
    return {"generated": True, "time_s": time.perf_counter() - t0, "counts": meta["counts"]}


def train_and_test(config: Union[str, os.PathLike], overrides: Sequence[str] = (), *, label: str = "",
                   progress: bool = True, seed: int = 0) -> Dict[str, Any]:
    """Train one recipe with the engine's Trainer, test it (multi-view) and write its report and plots.

    Returns one row of the comparison: accuracies (top-1, pair, within pair, per pair, per class),
    params, GFLOPs per view, train / test time, the training history and the report's files.
    """
    import torch

    from ..models.flops import profile_model
    from .config import load_config, to_dict
    from .trainer import Trainer, build_dataset

    cfg = load_config(config, list(overrides))
    for stale in ("last.pt", "best.pt", "steps.csv", "epochs.csv"):  # a fresh run in a reused folder
        p = Path(cfg.train.output_dir) / stale
        if p.exists():
            p.unlink()
    torch.manual_seed(seed)
    trainer = Trainer(cfg, progress=progress)
    fit = trainer.fit()
    test_ds, _ = build_dataset(cfg, "test")
    t_eval = time.perf_counter()
    res = trainer.evaluate(test_ds)
    eval_time = time.perf_counter() - t_eval
    files = trainer.write_report(res, "test")
    names = list(trainer.class_names)
    pairs = pair_metrics(res.confusion, names)
    d = cfg.data
    params_m, gflops = profile_model(trainer.model, d.frames, d.crop_size)
    return {
        "label": label or cfg.name, "model": cfg.model.name, "model_kwargs": dict(cfg.model.kwargs),
        "config": str(config), "top1": res.top1, "top5": res.top5, "mean_class_acc": res.mean_class_acc,
        "pair_acc": pairs["pair_acc"], "within_pair_acc": pairs["within_pair_acc"],
        "per_pair": pairs["per_pair"], "per_class_acc": dict(zip(names, res.per_class_acc)),
        "test_videos": res.num_videos, "test_views": res.num_views,
        "views_per_video": d.test_clips * d.test_crops, "params_m": params_m, "gflops": gflops,
        "frames": d.frames, "size": d.crop_size, "epochs": cfg.optim.epochs, "train_time_s": fit["time"],
        "eval_time_s": eval_time, "best_val_top1": fit["best_top1"], "history": fit["history"],
        "output_dir": cfg.train.output_dir, "files": files, "config_resolved": to_dict(cfg),
    }


def demo_overrides(data_root: Union[str, os.PathLike], *, seed: int = 0, quick: bool = False,
                   epochs: Optional[int] = None) -> List[str]:
    """The config overrides the demo applies to every recipe."""
    common = [f"data.root={Path(data_root).resolve()}", f"train.seed={seed}", "train.resume=false"]
    if quick:
        common += list(QUICK_OVERRIDES)
    if epochs is not None:
        common.append(f"optim.epochs={int(epochs)}")
    return common


def make_demo_data(out: Union[str, os.PathLike], *, seed: int = 0, quick: bool = False,
                   per_class: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Step 1: the dataset under ``{out}/data`` (reused when the same one is there)."""
    settings = dict(DATA_QUICK if quick else DATA_FULL)
    if per_class is not None:
        settings["per_class"] = int(per_class)
    root = Path(out) / "data"
    info = _dataset(root, seed=seed, settings=settings, progress=progress)
    return {**settings, **info, "root": str(root), "seed": seed}


def run_demo(
    out: Union[str, os.PathLike] = "runs/demo",
    *,
    seed: int = 0,
    quick: bool = False,
    epochs: Optional[int] = None,
    per_class: Optional[int] = None,
    overrides: Sequence[str] = (),
    config_dir: Optional[Union[str, os.PathLike]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run the default job (see the module doc) into ``out``; return the summary (also in ``summary.json``).

    Args:
        out: output folder: ``data/`` (the dataset), ``{tsn_mini,tada2d_mini}/`` (checkpoints, logs,
            plots), ``summary.md`` and ``summary.json``. Running again into the same folder reuses the
            dataset and trains afresh.
        seed: seed of the dataset and of the training runs.
        quick: a smoke test (6 videos per class, one epoch): checks the plumbing, not the accuracies.
        epochs, per_class: override the recipe's epochs and the videos per class.
        overrides: further ``key.sub=value`` config overrides for both models (e.g. ``optim.lr=0.001``).
        config_dir: folder with ``tsn_mini.yaml`` / ``tada2d_mini.yaml`` (default: ``configs/synth``).
        progress: progress bars and per-epoch lines.
    """
    import torch

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dir = Path(config_dir) if config_dir is not None else find_config_dir()
    total_steps = 2 + len(DEMO_MODELS)
    settings = dict(DATA_QUICK if quick else DATA_FULL)
    if per_class is not None:
        settings["per_class"] = int(per_class)

    _say(f"[1/{total_steps}] synthetic time-reversal dataset: 10 classes x {settings['per_class']} videos, "
         f"{settings['frames']} frames of {settings['size']}x{settings['size']} (seed {seed}) -> {out / 'data'}")
    data = make_demo_data(out, seed=seed, quick=quick, per_class=per_class, progress=progress)
    _say(f"      {'written in %.1f s' % data['time_s'] if data['generated'] else 'already there, reused'}: "
         + ", ".join(f"{k} {v}" for k, v in data["counts"].items()))
    common = demo_overrides(data["root"], seed=seed, quick=quick, epochs=epochs) + list(overrides)

    rows: List[Dict[str, Any]] = []
    for k, (run, cfg_file, label) in enumerate(DEMO_MODELS):
        from .config import load_config

        run_overrides = common + [f"train.output_dir={(out / run).resolve()}"]
        cfg = load_config(cfg_dir / cfg_file, run_overrides)  # fails here, before any training, on a bad key
        d = cfg.data
        _say(f"[{k + 2}/{total_steps}] train {label} ({cfg.model.name}): {cfg.optim.epochs} epochs, "
             f"{d.frames} frames at {d.crop_size}x{d.crop_size}, batch {d.batch_size}, {cfg.optim.name} "
             f"lr {cfg.optim.lr:g} -> {cfg.train.output_dir}")
        row = train_and_test(cfg_dir / cfg_file, run_overrides, label=label, progress=progress, seed=seed)
        rows.append(row)
        _say(f"      {label}: test top-1 {row['top1']:.1f}%  pair {row['pair_acc']:.1f}%  within pair "
             f"{row['within_pair_acc']:.1f}%  ({row['test_videos']} videos x {row['views_per_video']} views; "
             f"trained in {row['train_time_s']:.0f} s)")

    _say(f"[{total_steps}/{total_steps}] comparison")
    from .compare import compare_runs

    tsn, tada = rows  # per-class gain and both runs' curves, as `tada compare` writes them
    label_a, label_b = tsn["label"], tada["label"]
    compared = compare_runs(tsn["output_dir"], tada["output_dir"], out_dir=out / "compare", names=(label_a, label_b))
    compare_line = (f"Per-class gain {label_b} − {label_a} and both runs' training curves: "
                    + ", ".join(compared["files"].values()))
    table = format_table(rows)
    total = time.perf_counter() - t_start
    per_pair_lines = ["", "within-pair accuracy per pair (%):", ""]
    pair_names = list(rows[0]["per_pair"]) if rows else []
    per_pair_lines.append("| pair | " + " | ".join(r["label"] for r in rows) + " |")
    per_pair_lines.append("|---|" + "|".join("---" for _ in rows) + "|")
    for pn in pair_names:
        per_pair_lines.append(f"| {pn} | " + " | ".join(f"{r['per_pair'][pn]['within_pair_acc']:.1f}" for r in rows)
                              + " |")
    notes = [
        "",
        f"Test split: {rows[0]['test_videos'] if rows else 0} videos, {rows[0]['views_per_video'] if rows else 0} "
        "views each (temporal clips x spatial crops, softmax summed); GFLOPs per view.",
        "pair: the prediction is in the true class's time-reversal pair; within pair: of those, the direction "
        "is right too (chance 50%; a frame-order-blind model stays there); top-1 = pair x within pair.",
        f"Total wall time {total:.0f} s.",
    ]
    summary = {
        "seed": seed, "quick": quick, "out": str(out), "dataset": data, "models": rows, "wall_time_s": total,
        "table": table, "summary_md": str(out / "summary.md"), "summary_json": str(out / "summary.json"),
        "torch_threads": torch.get_num_threads(), "compare": compared["files"],
    }
    md = "\n".join(["# tada demo: TSN vs TAda2D on time-reversed classes", "", table] + per_pair_lines + notes
                   + ["", compare_line]) + "\n"
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1))
    _say("")
    _say(table)
    _say("\n".join(per_pair_lines[1:]))
    _say("\n".join(notes[1:]))
    _say("")
    for r in rows:
        plots = ", ".join(v for k, v in r["files"].items() if str(v).endswith(".png"))
        _say(f"{r['label']:>7} plots: {plots}")
    _say(compare_line)
    _say(f"summary: {out / 'summary.md'}, {out / 'summary.json'}")
    return summary


def jsonable(x):
    """``x`` with non-finite floats as None and anything unknown as its string (for json.dumps)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tada demo",
        description="The default job: write the synthetic time-reversal dataset, train a TSN and a TAda2D "
                    "of the same size on the CPU, test both (multi-view) and print a comparison table.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default 0)")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few videos, one epoch (seconds)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--per-class", type=int, default=None, help="videos per class (default 150)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides for both models, e.g. optim.lr=0.001")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_demo(args.out, seed=args.seed, quick=args.quick, epochs=args.epochs, per_class=args.per_class,
                 overrides=args.overrides, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"tada demo: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
