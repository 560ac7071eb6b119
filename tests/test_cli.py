"""The CLI's contract: stage commands listed, one-line errors, --json last line."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dvsguard.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_option_is_one_line_exit_2() -> None:
    proc = run_cli("--no-such-option")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr
    assert "no-such-option" in proc.stderr


def test_version_json_last_line() -> None:
    proc = run_cli("version", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout.strip().splitlines()[-1])["version"]


def test_importing_cli_is_cheap() -> None:
    """Importing the CLI loads neither torch nor lava nor matplotlib."""
    code = "import sys, dvsguard.cli; print(sorted(m for m in ('torch','lava','matplotlib','h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
