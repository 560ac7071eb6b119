"""The whole paper protocol once, as a GPU user would run it: every step of the shipped
``cifar10dvs_table2.toml`` on a tiny CIFAR10-DVS in its original AEDAT 2.0 release layout
(1 epoch, a tiny model, a handful of samples)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data.aedat2 import write_aedat2_dvs128
from dvsguard.data.cifar10dvs import CIFAR10DVS_CLASSES
from dvsguard.data.events import EVENT_DTYPE

ROOT = Path(__file__).resolve().parents[2]


def write_release(root: Path, per_class: int) -> None:
    """<class>/cifar10_<class>_<n>.aedat with 3000 events each on the 128×128 sensor; one bright blob per class."""
    for c, name in enumerate(CIFAR10DVS_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * c + i)
            n = 3000
            ev = np.empty(n, dtype=EVENT_DTYPE)
            cx, cy = 20 + 9 * c, 100 - 8 * c
            ev["x"] = np.clip(rng.normal(cx, 6, n), 0, 127).astype(int)
            ev["y"] = np.clip(rng.normal(cy, 6, n), 0, 127).astype(int)
            ev["t"] = np.cumsum(rng.integers(1, 200, n))
            ev["p"] = rng.integers(0, 2, n)
            write_aedat2_dvs128(root / name / f"cifar10_{name}_{i}.aedat", ev)


@pytest.mark.slow
def test_every_step_of_the_table2_pipeline_runs(tmp_path: Path) -> None:
    write_release(tmp_path / "cifar10dvs", per_class=6)
    text = (ROOT / "pipelines" / "cifar10dvs_table2.toml").read_text()
    for old, new in [
        ('run_dir = "runs/cifar10dvs_table2"', f'run_dir = "{tmp_path / "run"}"'),
        ('root = "data/cifar10dvs"', f'root = "{tmp_path / "cifar10dvs"}"\ncache_dir = "{tmp_path / "cache"}"'),
        ('preset = "vgg11"', 'preset = "tiny"'),
        ("epochs = 200", "epochs = 1\nbatch = 8\nrobust_limit = 4"),
        ('eps = ["8/255"]', 'eps = ["8/255"]\nlimit = 4'),
        ('models = ["vanilla", "fgsm-at", "sr", "sr-star"]\n\n[report]', 'models = ["vanilla", "sr-star"]\nlimit = 4\n\n[report]'),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    pipeline = tmp_path / "table2.toml"
    pipeline.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "dvsguard", "run", str(pipeline), "--json"],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["stages"].values()) == {"ran"}
    results = result["results"]
    assert results["preprocess"]["protocol"] == "paper"
    assert (results["preprocess"]["n_train"], results["preprocess"]["n_test"]) == (54, 6)
    source = results["train:black-box-source"]["best"]
    for name in ("vanilla", "fgsm-at", "sr", "sr-star"):
        table = json.loads((tmp_path / "run" / "attack" / name / "attack.json").read_text())
        assert table["protocol"] == "paper" and table["clamp"] == "unit", table
        assert table["source"] == source
        assert {r["setting"] for r in table["results"] if r["attack"] != "clean"} == {"white", "black"}
    assert (tmp_path / "run" / "report.html").is_file()
