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


def test_sr_phase_benchmark_times_the_sr_defense() -> None:
    """benchmarks/sr_phases.py splits the sr step into phases; its loss and weight gradients are the defense's."""
    import importlib.util

    import torch

    from dvsguard.snn.vgg import SpikingVGG, VGGConfig
    from dvsguard.train.defenses import make_defense

    spec = importlib.util.spec_from_file_location("sr_phases", ROOT / "benchmarks" / "sr_phases.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("tiny")).train()
    x = (torch.rand(4, 3, 2, 16, 16) < 0.3).float() * 0.8
    y = torch.tensor([0, 3, 7])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0])  # a fake clock: each phase gets a distinct known length
    phases, loss = bench.sr_phases(model, x, y, lambda: next(ticks))
    grads = [p.grad.clone() for p in model.parameters()]
    assert phases == {"F1": 1.0, "Bx": 2.0, "F2": 3.0, "B12": 4.0}
    model.load_state_dict(state)  # BatchNorm running statistics as before the first call
    model.zero_grad(set_to_none=True)
    ref, _ = make_defense("sr").loss(model, x, y)
    ref.backward()
    assert torch.allclose(loss, ref.detach(), rtol=1e-6, atol=1e-7)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-5, atol=1e-7)
