import subprocess
import sys

import tada
from tada.cli import main


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"tada        {tada.__version__}" in out and "torch" in out


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "tada.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"tada {tada.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: tada" in capsys.readouterr().out
