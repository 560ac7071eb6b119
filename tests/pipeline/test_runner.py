"""The pipeline runner end to end on tiny inputs: stages chain, unchanged stages are skipped,
a run killed with SIGKILL during training resumes there and ends where an unkilled run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

PIPELINE = """
[pipeline]
name = "tiny"
run_dir = "{run}"
seed = 0

[data]
source = "synth"
per_class = 6
size = 16
frames = 4
cache_dir = "{cache}"

[[train]]
name = "a"
defense = "vanilla"
preset = "tiny"
epochs = {epochs}
batch = 8
"""


def write_pipeline(folder: Path, run: Path, epochs: int) -> Path:
    path = folder / f"{run.name}.toml"
    path.write_text(PIPELINE.format(run=run, cache=folder / "cache", epochs=epochs))
    return path


def dvsguard(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvsguard", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]["state_dict"]


def test_skip_unchanged_and_rerun_changed(tmp_path: Path) -> None:
    p = write_pipeline(tmp_path, tmp_path / "run", epochs=1)
    first = last_json(dvsguard("run", str(p), "--json"))
    assert first["stages"] == {"synth": "ran", "preprocess": "ran", "train:a": "ran"}
    ckpt = Path(first["results"]["train:a"]["best"])
    assert ckpt.is_file()
    second = last_json(dvsguard("run", str(p), "--json"))
    assert set(second["stages"].values()) == {"skipped"}
    plan = last_json(dvsguard("run", str(p), "--dry-run", "--json"))["plan"]
    assert {r["action"] for r in plan} == {"skip (unchanged)"}
    # a changed training setting reruns training only
    p.write_text(p.read_text().replace("batch = 8", "batch = 6"))
    third = last_json(dvsguard("run", str(p), "--json"))
    assert third["stages"] == {"synth": "skipped", "preprocess": "skipped", "train:a": "ran"}
    # --only forces one stage
    fourth = last_json(dvsguard("run", str(p), "--only", "preprocess", "--json"))
    assert fourth["stages"] == {"synth": "skipped", "preprocess": "ran", "train:a": "skipped"}


def test_kill_during_training_then_resume(tmp_path: Path) -> None:
    epochs = 4
    reference = write_pipeline(tmp_path, tmp_path / "ref", epochs)
    ref = last_json(dvsguard("run", str(reference), "--json"))

    p = write_pipeline(tmp_path, tmp_path / "killed", epochs)
    proc = subprocess.Popen([sys.executable, "-m", "dvsguard", "run", str(p), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "killed" / "train" / "a" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(metrics.read_text().splitlines())
    assert done_before < epochs

    state = json.loads((tmp_path / "killed" / "pipeline_state.json").read_text())["stages"]
    assert state["synth"]["finished"] and state["preprocess"]["finished"]
    assert not state["train:a"]["finished"]

    resumed = last_json(dvsguard("run", str(p), "--json"))
    assert resumed["stages"] == {"synth": "skipped", "preprocess": "skipped", "train:a": "resumed"}
    assert resumed["results"]["train:a"]["resumed_from"] is not None
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, epochs + 1))

    a = weights(Path(resumed["results"]["train:a"]["last"]))
    b = weights(Path(ref["results"]["train:a"]["last"]))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
