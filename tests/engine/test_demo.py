"""The default job end to end, in its quick form (a few videos, one epoch): files and well-formed numbers.

Accuracy targets are the full demo's business (``tada demo``; ``benchmarks/temporal_benchmark.py``):
one epoch on 40 videos says nothing about them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tada.engine.demo import format_table, main, pair_metrics, run_demo


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, progress=False)


def _pct(v):
    return isinstance(v, float) and (math.isnan(v) or 0.0 <= v <= 100.0)


def test_quick_demo_writes_table_json_and_plots(quick, capsys):
    out, summary = quick
    assert (out / "data" / "synth.json").is_file() and (out / "data" / "test.txt").is_file()
    md = (out / "summary.md").read_text()
    assert "| TSN | tsn_r_mini |" in md and "| TAda2D | tada2d_r_mini |" in md and "within pair" in md
    saved = json.loads((out / "summary.json").read_text())
    assert [m["label"] for m in saved["models"]] == ["TSN", "TAda2D"]
    for m in summary["models"]:
        for key in ("top1", "pair_acc", "within_pair_acc", "mean_class_acc"):
            assert _pct(m[key]), (key, m[key])
        assert m["test_videos"] == 10 and m["views_per_video"] == 2 and m["test_views"] == 20
        assert m["params_m"] > 0.1 and m["gflops"] > 0 and m["train_time_s"] >= 0 and m["epochs"] == 1
        assert len(m["per_pair"]) == 5 and len(m["per_class_acc"]) == 10
        pngs = [Path(v) for v in m["files"].values() if str(v).endswith(".png")]
        assert len(pngs) >= 2 and all(p.is_file() and p.stat().st_size > 1000 for p in pngs)
        assert Path(m["files"]["results_json"]).is_file()
    tsn, tada = summary["models"]
    # same backbone (widths, depths); TAda adds only its routing functions and T-Pool norms
    assert tsn["params_m"] < tada["params_m"] < 1.2 * tsn["params_m"]
    assert abs(tada["gflops"] - tsn["gflops"]) < 0.03 * tsn["gflops"]  # routing: ~1% at 8x32x32
    assert summary["wall_time_s"] > 0 and saved["table"] == summary["table"]


def test_second_run_into_the_same_folder_reuses_the_data(quick, capsys):
    out, first = quick
    before = (out / "data" / "train.txt").stat().st_mtime_ns
    from tada.cli import main as tada_main

    assert tada_main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0  # the `tada demo` command
    again = json.loads((out / "summary.json").read_text())
    assert again["dataset"]["generated"] is False
    assert (out / "data" / "train.txt").stat().st_mtime_ns == before
    # trained afresh (no resume from the first run's last.pt): one epoch of history, not two
    assert all(len(m["history"]) == 1 for m in again["models"])
    assert "already there, reused" in capsys.readouterr().out


def test_pair_metrics():
    names = ["moving_right", "moving_left", "growing", "shrinking"]
    cm = torch.tensor([[3, 1, 0, 0],   # right: 3 right, 1 direction wrong
                       [2, 2, 0, 0],   # left: 2 right, 2 direction wrong
                       [0, 0, 4, 0],
                       [1, 0, 0, 3]])  # shrinking: 1 outside its pair
    m = pair_metrics(cm, names)
    assert m["pair_acc"] == pytest.approx(100 * 15 / 16)
    assert m["within_pair_acc"] == pytest.approx(100 * 12 / 15)
    assert m["per_pair"]["moving_right/moving_left"] == {"videos": 8, "pair_acc": 100.0, "within_pair_acc": 62.5}
    assert m["per_pair"]["growing/shrinking"]["pair_acc"] == pytest.approx(87.5)
    assert len(m["per_pair"]) == 2  # pairs absent from the classes are left out
    top1 = 100 * cm.diag().sum().item() / cm.sum().item()
    assert top1 == pytest.approx(m["pair_acc"] * m["within_pair_acc"] / 100)


def test_table_and_cli_arguments(tmp_path, capsys):
    row = dict(label="TSN", model="tsn_r_mini", top1=40.0, pair_acc=80.0, within_pair_acc=50.0, params_m=0.5,
               gflops=0.025, train_time_s=100.0)
    table = format_table([row])
    assert table.splitlines()[2] == "| TSN | tsn_r_mini | 40.0 | 80.0 | 50.0 | 0.500 | 0.025 | 100 |"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--quick" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "x"), "--quick", "--no-progress", "model.nme=x"]) == 2
    assert "did you mean 'name'" in capsys.readouterr().err
