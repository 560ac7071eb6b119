"""The training-step benchmark runs end to end on a tiny model and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # three fresh Python processes: ~10 s on an idle machine, more under load
def test_benchmark_tiny_runs() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--preset", "tiny", "--batch", "2",
           "--timesteps", "3", "--steps", "1", "--warmup", "0", "--threads", "1", "--only", "dvsguard,loop", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| dvsguard |" in proc.stdout and "| loop |" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("dvsguard", "loop"):
        r = result["results"][name]
        assert r["step_s"] > 0 and r["cpu_s"] > 0 and r["peak_mb"] > 0
    assert result["ratios"]["dvsguard_throughput_vs_peer"] > 0
