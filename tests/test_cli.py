import subprocess
import sys

import tada
from tada.cli import main


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"tada        {tada.__version__}" in out and "torch" in out
    assert "native      T-Pool CPU kernels " in out


def test_env_reports_native_kernels_switched_off(capsys, monkeypatch):
    monkeypatch.setenv("TADA_NATIVE", "0")
    assert main(["env"]) == 0
    assert "T-Pool CPU kernels switched off (TADA_NATIVE=0)" in capsys.readouterr().out


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "tada.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"tada {tada.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: tada" in capsys.readouterr().out


def test_flops_prints_paper_comparison(capsys):
    assert main(["flops", "tsn_r50", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "tsn_r50" and rows[0]["paper_gflops"] == 33.0
    assert abs(rows[0]["gflops_diff_pct"]) < 3
    assert main(["flops", "tada2d_r_mini", "--frames", "4", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "tada2d_r_mini" in out and "GFLOPs" in out


def test_flops_unknown_model(capsys):
    assert main(["flops", "tada2d_r5"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_models_lists_names(capsys):
    assert main(["models", "tada2d*"]) == 0
    assert "tada2d_r50" in capsys.readouterr().out.split()
