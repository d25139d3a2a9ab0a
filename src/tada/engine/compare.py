"""Two finished runs side by side (``tada compare RUN_A RUN_B``): where B gains over A, class by class,
and how both trained (the paper's Fig. A1-A4 for any two runs).

A run folder is a ``train.output_dir``: the trainer's logs (``steps.csv``: step, epoch, loss, lr;
``epochs.csv``: epoch, train_loss, val_top1, ...) and the test report of the classification task
(``test_per_class.csv``: class_id, class_name, videos, accuracy; ``test_results.json``: top1, top5,
mean_class_acc, ...), which ``tada train`` writes when ``data.test_list`` is set and ``tada test``
writes for any checkpoint. Written into the output folder:

* ``per_class_gain.png``: per-class test accuracy B - A, sorted by gain (Fig. A1 / A2);
* ``curves.png``: both runs' training loss and validation top-1 (and a train accuracy if one is
  logged) over epochs, on shared axes (Fig. A3 / A4);
* ``compare.md``: top-1, top-5 and mean class accuracy of each run and the difference, then per class
  (sorted by gain) accuracy A, accuracy B, gain.

Accuracies are in percent, gains in percentage points. The two reports must cover the same classes.

    tada compare RUN_A RUN_B [--out DIR] [--names A B]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["REPORT_CSV", "REPORT_JSON", "OVERALL", "read_report", "read_logs", "compare_runs", "format_markdown",
           "build_parser", "main"]

REPORT_CSV = "test_per_class.csv"
REPORT_JSON = "test_results.json"
#: (key in the results JSON, label in the table)
OVERALL = (("top1", "top-1"), ("top5", "top-5"), ("mean_class_acc", "mean class acc"))


def _missing_report(run: Path, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{run} has no test report: {path.name} is missing. Write it with `tada test CONFIG --checkpoint "
        f"{run / 'best.pt'} train.output_dir={run}` (`tada train` writes it itself when data.test_list is set)")


def read_report(run) -> Dict[str, Any]:
    """A run's test report: ``per_class`` ``{class name: accuracy}`` (in class-id order), ``videos``
    ``{class name: test videos}`` and ``overall`` ``{top1, top5, mean_class_acc}``."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run} (give a train.output_dir of `tada train`)")
    csv_path, json_path = run / REPORT_CSV, run / REPORT_JSON
    for p in (csv_path, json_path):
        if not p.is_file():
            raise _missing_report(run, p)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"class_name", "accuracy"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{csv_path} is not a per-class report of the classification task (columns class_id, "
                         f"class_name, videos, accuracy)")
    names = [r["class_name"] for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{csv_path} names classes more than once: {twice}")
    summary = json.loads(json_path.read_text())
    missing = [k for k, _ in OVERALL if k not in summary]
    if missing:
        raise ValueError(f"{json_path} has no {missing}: it is not a classification test report")
    return {"per_class": {r["class_name"]: float(r["accuracy"]) for r in rows},
            "videos": {r["class_name"]: _count(r.get("videos")) for r in rows},
            "overall": {k: float(summary[k]) for k, _ in OVERALL}, "csv": str(csv_path), "json": str(json_path)}


def _rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_logs(run) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    """``(steps.csv rows, epochs.csv rows)`` of a run (empty lists for a file that is not there)."""
    run = Path(run)
    return _rows(run / "steps.csv"), _rows(run / "epochs.csv")


def _number(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _count(v) -> Optional[int]:
    n = _number(v)
    return int(n) if n is not None else None


def _gain_key(row: Dict[str, Any]):
    return (math.isnan(row["gain"]), -row["gain"] if not math.isnan(row["gain"]) else 0.0)


def _check_classes(a: Dict[str, Any], b: Dict[str, Any], names: Sequence[str], runs: Sequence[Path]) -> None:
    only_a = [c for c in a["per_class"] if c not in b["per_class"]]
    only_b = [c for c in b["per_class"] if c not in a["per_class"]]
    if only_a or only_b:
        raise ValueError(f"the runs were tested on different classes: only in {names[0]} ({runs[0]}): {only_a}; "
                         f"only in {names[1]} ({runs[1]}): {only_b}. Compare runs tested on the same classes")


def _default_names(run_a: Path, run_b: Path) -> Tuple[str, str]:
    a, b = run_a.resolve(), run_b.resolve()
    if a.name != b.name:
        return a.name, b.name
    return f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}"


def _signed(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.2f}"


def _cell(name: str) -> str:
    return name.replace("|", "\\|")


def format_markdown(result: Dict[str, Any]) -> str:
    """``compare.md`` of a :func:`compare_runs` result."""
    a, b = result["names"]
    lines = [f"# {a} vs {b}", "", f"A = {a}: `{result['runs'][0]}`  ", f"B = {b}: `{result['runs'][1]}`", "",
             "Test accuracy (%); gain = B − A (percentage points).", "",
             f"| metric | {_cell(a)} | {_cell(b)} | gain |", "|---|---|---|---|"]
    for key, label in OVERALL:
        o = result["overall"][key]
        lines.append(f"| {label} | {_pct(o['a'])} | {_pct(o['b'])} | {_signed(o['gain'])} |")
    lines += ["", f"Per class, sorted by gain ({len(result['per_class'])} classes):", "",
              f"| class | {_cell(a)} | {_cell(b)} | gain |", "|---|---|---|---|"]
    for r in result["per_class"]:
        lines.append(f"| {_cell(r['class'])} | {_pct(r['a'])} | {_pct(r['b'])} | {_signed(r['gain'])} |")
    if result["notes"]:
        lines += [""] + [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _plot_gain(plt, path: Path, per_class: List[Dict[str, Any]], names: Sequence[str]) -> str:
    n = len(per_class)
    gains = [0.0 if math.isnan(r["gain"]) else r["gain"] for r in per_class]
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.3 * n + 2)), 4.2), layout="constrained")
    ax.bar(range(n), gains, color=["C2" if g > 0 else ("C3" if g < 0 else "0.6") for g in gains])
    ax.axhline(0, color="k", lw=0.8)
    if n <= 60:
        ax.set_xticks(range(n), [r["class"] for r in per_class], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{n} classes, sorted by gain")
    ax.set(ylabel=f"{names[1]} − {names[0]} (points)",
           title=f"per-class test accuracy: {names[1]} − {names[0]}\n(sorted by gain)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _step_epochs(steps: List[Dict[str, str]]) -> List[float]:
    """Each logged step at its fractional epoch: step j of k in (0-based) epoch e -> e + j/k, so that the
    last step of an epoch meets ``epochs.csv``'s (1-based, end-of-epoch) row."""
    counts: Dict[int, int] = {}
    for r in steps:
        counts[int(r["epoch"])] = counts.get(int(r["epoch"]), 0) + 1
    seen: Dict[int, int] = {}
    out = []
    for r in steps:
        e = int(r["epoch"])
        seen[e] = seen.get(e, 0) + 1
        out.append(e + seen[e] / counts[e])
    return out


def _series(rows: List[Dict[str, str]], key: str) -> Tuple[List[float], List[float]]:
    pts = [(_number(r.get("epoch")), _number(r.get(key))) for r in rows]
    pts = [(e, v) for e, v in pts if e is not None and v is not None]
    return [e for e, _ in pts], [v for _, v in pts]


def _train_accuracy_keys(rows: List[Dict[str, str]]) -> List[str]:
    keys = rows[0].keys() if rows else ()
    return [k for k in keys if k.startswith("train_") and ("top1" in k or "acc" in k)]


def _plot_curves(plt, path: Path, logs: Sequence[Tuple[list, list]], names: Sequence[str]) -> str:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for i, ((steps, epochs), name) in enumerate(zip(logs, names)):
        colour = f"C{i}"
        if steps:
            loss_ax.plot(_step_epochs(steps), [float(r["loss"]) for r in steps], color=colour, lw=0.7, alpha=0.45,
                         label=f"{name} (per step)")
        x, y = _series(epochs, "train_loss")
        if x:
            loss_ax.plot(x, y, "o-", color=colour, label=f"{name} (epoch mean)")
        x, y = _series(epochs, "val_top1")
        if x:
            acc_ax.plot(x, y, "o-", color=colour, label=f"{name} val top-1")
        for key in _train_accuracy_keys(epochs):
            x, y = _series(epochs, key)
            if x:
                acc_ax.plot(x, y, "s--", color=colour, alpha=0.7, label=f"{name} {key.replace('_', ' ')}")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="accuracy (%)", xlabel="epoch", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def compare_runs(run_a, run_b, out_dir=None, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Compare run B with run A (see the module doc); files in ``out_dir`` (default:
    ``compare_{A folder}_vs_{B folder}`` beside run B). ``names``: the two runs' labels (default:
    their folder names). Returns ``names``, ``runs``, ``overall`` (``{metric: {a, b, gain}}``),
    ``per_class`` (``[{class, a, b, gain, videos_a, videos_b}]``, largest gain first, classes without
    test videos last), ``notes``, ``out_dir`` and ``files`` (``per_class_gain_png``, ``curves_png``,
    ``compare_md``)."""
    from .plots import _plt

    runs = (Path(run_a), Path(run_b))
    names = tuple(names) if names is not None else _default_names(*runs)
    if len(names) != 2 or not all(str(n).strip() for n in names):
        raise ValueError(f"names takes two non-empty labels, one per run, got {list(names)}")
    rep_a, rep_b = read_report(runs[0]), read_report(runs[1])
    _check_classes(rep_a, rep_b, names, runs)
    per_class = [{"class": c, "a": acc, "b": rep_b["per_class"][c], "gain": rep_b["per_class"][c] - acc,
                  "videos_a": rep_a["videos"][c], "videos_b": rep_b["videos"][c]}
                 for c, acc in rep_a["per_class"].items()]
    per_class.sort(key=_gain_key)  # stable: ties keep the class-id order
    overall = {k: {"a": rep_a["overall"][k], "b": rep_b["overall"][k],
                   "gain": rep_b["overall"][k] - rep_a["overall"][k]} for k, _ in OVERALL}
    notes = []
    differ = [r["class"] for r in per_class if r["videos_a"] != r["videos_b"]]
    if differ:
        notes.append(f"the runs were tested on different numbers of videos for {len(differ)} classes "
                     f"(e.g. {differ[0]}): their accuracies are not over the same videos")
    logs = [read_logs(r) for r in runs]
    for (steps, epochs), name, run in zip(logs, names, runs):
        if not steps and not epochs:
            notes.append(f"{name} ({run}) has no steps.csv / epochs.csv: no training curves for it")
    if out_dir is None:
        out_dir = runs[1].parent / f"compare_{runs[0].resolve().name}_vs_{runs[1].resolve().name}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {"names": list(names), "runs": [str(r) for r in runs], "overall": overall,
                              "per_class": per_class, "notes": notes, "out_dir": str(out)}
    plt = _plt()
    files = {"per_class_gain_png": _plot_gain(plt, out / "per_class_gain.png", per_class, names),
             "curves_png": _plot_curves(plt, out / "curves.png", logs, names)}
    (out / "compare.md").write_text(format_markdown(result))
    files["compare_md"] = str(out / "compare.md")
    result["files"] = files
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tada compare",
        description="Compare two finished runs (train.output_dir folders with a test report): per-class test "
                    "accuracy gain of B over A (per_class_gain.png), both runs' training curves (curves.png) and "
                    "a Markdown table (compare.md).")
    p.add_argument("run_a", metavar="RUN_A", help="the baseline run's folder")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    p.add_argument("--out", default=None, help="output folder (default: compare_<A>_vs_<B> beside RUN_B)")
    p.add_argument("--names", nargs=2, default=None, metavar=("A", "B"), help="labels of the runs "
                   "(default: their folder names)")
    return p


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    r = compare_runs(args.run_a, args.run_b, out_dir=args.out, names=args.names)
    a, b = r["names"]
    print(f"{b} vs {a} (test %, gain = {b} − {a}):")
    print(f"  {'':<15} {a[:7]:>7}  {b[:7]:>7}  {'gain':>7}")
    for key, label in OVERALL:
        o = r["overall"][key]
        print(f"  {label:<15} {_pct(o['a']):>7}  {_pct(o['b']):>7}  {_signed(o['gain']):>7}")
    gains = [c for c in r["per_class"] if c["gain"] > 0][:3]  # NaN compares False: left out
    losses = [c for c in r["per_class"][::-1] if c["gain"] < 0][:3]
    for label, shown in (("largest gains: ", gains), ("largest losses:", losses)):
        if shown:
            print(f"  {label} " + ", ".join(f"{c['class']} {_signed(c['gain'])}" for c in shown))
    for n in r["notes"]:
        print(f"  note: {n}")
    print(f"files: {', '.join(r['files'].values())}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tada compare``; returns the exit code (2: a bad option, path or value, with a one-line message)."""
    from .commands import run_command

    return run_command("tada compare", _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
