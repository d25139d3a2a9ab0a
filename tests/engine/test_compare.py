"""`tada compare` on two finished tiny runs: the files, the table's numbers against the runs' own CSV
and JSON reports (read here independently), and the errors for other classes and a missing report."""
import csv
import json
import math
import shutil

import pytest
import torch

from tada.cli import main as tada_main
from tada.engine.compare import compare_runs
from tada.engine.config import load_config
from tada.engine.trainer import Trainer, build_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(synth, out, model, lr):
    """One finished run: 1 epoch on the `synth` colours (conftest.py), tested, its report written."""
    cfg = load_config(None, [
        f"model.name={model}", "model.drop_rate=0.0", "data.format=kinetics", f"data.root={synth}",
        "data.train_list=train.txt", "data.val_list=val.txt", "data.test_list=test.txt", "data.frames=4",
        "data.sampling=segment", "data.crop_size=32", "data.flip=false", "data.test_short_side=32",
        "data.test_crop_size=32", "data.batch_size=6", "data.num_workers=0", "optim.name=adamw", f"optim.lr={lr}",
        "optim.weight_decay=0.0", "optim.epochs=1", "optim.warmup_epochs=0", f"train.output_dir={out}",
        "train.seed=0"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    test, _ = build_dataset(cfg, "test")
    trainer.write_report(trainer.evaluate(test), "test")
    return out


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # a baseline held back by a tiny lr: the two runs differ class by class
        return _run(synth, root / "tsn", "tsn_r_mini", 1e-5), _run(synth, root / "tada2d", "tada2d_r_mini", 2e-3)
    finally:
        torch.set_num_threads(threads)


def _per_class(run):
    with open(run / "test_per_class.csv", newline="") as f:
        return {r["class_name"]: float(r["accuracy"]) for r in csv.DictReader(f)}


def _table(md, header):
    """The rows of the Markdown table under the line ``header``, as lists of cells."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header)) + 1
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows[2:]  # after the header and the |---| line


def test_compare_command_writes_plots_and_the_runs_numbers(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "cmp"
    assert tada_main(["compare", str(a), str(b), "--out", str(out), "--names", "TSN", "TAda2D"]) == 0
    printed = capsys.readouterr().out
    assert "TAda2D vs TSN" in printed and str(out / "compare.md") in printed
    for name in ("per_class_gain.png", "curves.png"):
        blob = (out / name).read_bytes()
        assert blob[:8] == PNG_MAGIC and len(blob) > 1000, name
    md = (out / "compare.md").read_text()
    assert "| metric | TSN | TAda2D | gain |" in md

    # overall: the runs' test_results.json
    res = [json.loads((r / "test_results.json").read_text()) for r in runs]
    overall = {row[0]: row[1:] for row in _table(md, "Test accuracy")}
    for key, label in (("top1", "top-1"), ("top5", "top-5"), ("mean_class_acc", "mean class acc")):
        va, vb = res[0][key], res[1][key]
        assert overall[label] == [f"{va:.2f}", f"{vb:.2f}", f"{vb - va:+.2f}"], label

    # per class: the runs' test_per_class.csv, sorted by gain (largest first)
    acc_a, acc_b = _per_class(a), _per_class(b)
    assert set(acc_a) == {"red", "green", "blue"}
    rows = _table(md, "Per class")
    assert sorted(r[0] for r in rows) == sorted(acc_a)
    gains = [acc_b[c] - acc_a[c] for c, *_ in rows]
    assert gains == sorted(gains, reverse=True)
    for c, ca, cb, g in rows:
        assert [ca, cb, g] == [f"{acc_a[c]:.2f}", f"{acc_b[c]:.2f}", f"{acc_b[c] - acc_a[c]:+.2f}"], c


def test_compare_runs_returns_the_numbers_and_a_default_folder(runs, tmp_path):
    a, b = runs
    for first, second in ((a, b), (b, a)):  # one of the two orders is not the class-id order
        gains = [row["gain"] for row in compare_runs(first, second, out_dir=tmp_path / "order")["per_class"]]
        assert gains == sorted(gains, reverse=True)
    r = compare_runs(a, b)
    assert r["names"] == ["tsn", "tada2d"] and r["out_dir"] == str(b.parent / "compare_tsn_vs_tada2d")
    assert set(r["files"]) == {"per_class_gain_png", "curves_png", "compare_md"}
    acc_a, acc_b = _per_class(a), _per_class(b)
    for row in r["per_class"]:
        assert (row["a"], row["b"]) == (acc_a[row["class"]], acc_b[row["class"]])
        assert row["gain"] == acc_b[row["class"]] - acc_a[row["class"]] and row["videos_a"] == row["videos_b"] == 3
    top1 = json.loads((b / "test_results.json").read_text())["top1"]
    assert r["overall"]["top1"]["b"] == top1 and not r["notes"]
    assert all(math.isfinite(v) for o in r["overall"].values() for v in o.values())


def test_other_classes_and_a_missing_report_are_clear_errors(runs, tmp_path, capsys):
    a, b = runs
    other = tmp_path / "other"
    shutil.copytree(b, other)
    text = (other / "test_per_class.csv").read_text()
    (other / "test_per_class.csv").write_text(text.replace(",blue,", ",purple,"))
    with pytest.raises(ValueError, match=r"different classes: only in tsn .*\['blue'\]; only in other .*\['purple'\]"):
        compare_runs(a, other, out_dir=tmp_path / "x")

    untested = tmp_path / "untested"
    shutil.copytree(a, untested)
    (untested / "test_per_class.csv").unlink()
    assert tada_main(["compare", str(untested), str(b), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tada compare: error: ") and "Traceback" not in err
    assert f"{untested} has no test report: test_per_class.csv is missing" in err and "tada test" in err
    assert tada_main(["compare", str(tmp_path / "nowhere"), str(b)]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
