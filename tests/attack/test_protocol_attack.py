"""attack under the paper protocol: the checkpoint's protocol sets the clamp, the PGD step and
the black-box source's gradient modes, all written into attack.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvsguard", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, Path]:
    """A paper-protocol cache of the embedded digits and two tiny models trained on it (1 epoch each)."""
    root = tmp_path_factory.mktemp("paper-attack")
    assert _cli("synth", "rec", "--per-class", "4", "--size", "16", cwd=root).returncode == 0
    done = _cli("preprocess", "rec", "--cache-dir", "cache", "--protocol", "paper", "--size", "16", "--frames", "4",
                "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    cache = json.loads(done.stdout.strip().splitlines()[-1])["train"]
    ckpts = []
    for name, seed in (("target", "0"), ("source", "1")):
        run = _cli("train", "--cache", cache, "--defense", "vanilla", "--out", name, "--preset", "tiny", "--epochs", "1",
                   "--batch", "8", "--seed", seed, "--robust-limit", "0", cwd=root)
        assert run.returncode == 0, run.stderr
        ckpts.append(root / name / "best.pt")
    return root, cache, ckpts[0], ckpts[1]


def test_paper_checkpoint_attacks_with_the_authors_rules(paper_run: tuple[Path, str, Path, Path]) -> None:
    root, cache, target, source = paper_run
    out = _cli("attack", str(target), "--cache", cache, "--attacks", "clean,pgd5", "--eps", "8/255",
               "--source", str(source), "--out", "a", "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    doc = json.loads((root / "a" / "attack.json").read_text())
    assert (doc["protocol"], doc["clamp"]) == ("paper", "unit")
    assert doc["pgd_alpha"] == pytest.approx(2.55 / 255)
    assert doc["source_modes"] == ["triangle:1"]
    assert doc["budgets"][0].startswith("ε = 8/255 (paper protocol); 0.0314 events per sensor pixel")
    assert "protocol paper, clamp unit" in (root / "a" / "attack.md").read_text()
    # explicit settings override the protocol's
    out = _cli("attack", str(target), "--cache", cache, "--attacks", "pgd5", "--eps", "8/255", "--clamp", "data",
               "--alpha", "0.01", "--source", str(source), "--source-modes", "sigmoid:4,rga", "--out", "b", cwd=root)
    assert out.returncode == 0, out.stderr
    doc = json.loads((root / "b" / "attack.json").read_text())
    assert (doc["clamp"], doc["pgd_alpha"], doc["source_modes"]) == ("data", 0.01, ["sigmoid:4", "rga"])


def test_another_protocol_than_the_checkpoints_is_one_line(paper_run: tuple[Path, str, Path, Path]) -> None:
    root, cache, target, _ = paper_run
    out = _cli("attack", str(target), "--cache", cache, "--attacks", "clean", "--protocol", "events", cwd=root)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "was made under protocol 'paper', not 'events'" in lines[0], out.stderr
