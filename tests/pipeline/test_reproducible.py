"""Same seed, same machine → the same checkpoints and the same attack results (slow: two runs).

Two short runs of the same pipeline (embedded digits, tiny preset, one training epoch each of
vanilla and SR*, white- and black-box attacks) in two run folders, each with its own frame
cache. Every tensor of every checkpoint's state_dict must be equal, and every attack.json must
hold the same results. Float rounding of convolutions differs between CPUs (oneDNN picks kernels
by instruction set), so this holds on one machine, not across machines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

PIPELINE = """
[pipeline]
name = "repro"
run_dir = "{run}"
seed = 3

[data]
source = "synth"
per_class = 4
size = 16
frames = 3
cache_dir = "{cache}"
workers = 1

[[train]]
name = "vanilla"
defense = "vanilla"
preset = "tiny"
epochs = 1
batch = 8
augment = false
robust_limit = 0

[[train]]
name = "sr-star"
defense = "sr-star"
preset = "tiny"
epochs = 1
batch = 8
eps = "8/255"
lam = 0.01
augment = false
robust_limit = 4

[attack]
attacks = ["clean", "fgsm", "pgd3"]
eps = ["8/255"]
batch = 4
black_box = true
"""


def _run(root: Path) -> Path:
    from dvsguard.pipeline import load_pipeline, run_pipeline

    root.mkdir()
    path = root / "repro.toml"
    path.write_text(PIPELINE.format(run=root / "run", cache=root / "cache"))
    result = run_pipeline(load_pipeline(path))
    assert set(result["stages"].values()) == {"ran"}
    return Path(result["run_dir"])


def _attack_results(run_dir: Path, model: str) -> dict[str, Any]:
    """The figures of attack.json (paths and timings differ between runs by design)."""
    doc = json.loads((run_dir / "attack" / model / "attack.json").read_text())
    return {k: doc[k] for k in ("n_samples", "seed", "members", "attacks", "eps", "results", "clean_accuracy", "table")}


@pytest.mark.slow  # about 30 s of CPU time for the two runs
def test_same_seed_gives_identical_checkpoints_and_attack_results(tmp_path: Path) -> None:
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    for model in ("vanilla", "sr-star"):
        for name in ("best.pt", "last.pt"):
            a = torch.load(first / "train" / model / name, map_location="cpu", weights_only=False)["model"]["state_dict"]
            b = torch.load(second / "train" / model / name, map_location="cpu", weights_only=False)["model"]["state_dict"]
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), f"{model}/{name}: {key} differs"
        assert _attack_results(first, model) == _attack_results(second, model)
        assert (first / "train" / model / "metrics.jsonl").read_text().count("\n") == 1
