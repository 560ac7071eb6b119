"""[data] sensor_size: synth's sensor side, apart from the frame size the preprocess stage uses."""

from __future__ import annotations

from pathlib import Path

from dvsguard.pipeline import load_pipeline
from dvsguard.pipeline.runner import build_stages

PIPELINE = """
[pipeline]
name = "sensor"
run_dir = "{run}"

[data]
source = "synth"
per_class = 2
size = 32
{sensor}
"""


def _sizes(tmp_path: Path, sensor: str) -> tuple[int, int]:
    """(synth's sensor size, preprocess's frame size) of a pipeline, in pixels per side."""
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.format(run=tmp_path / "run", sensor=sensor))
    by_name = {s.name: s for s in build_stages(load_pipeline(path))}
    synth = by_name["synth"].config({})
    pre = by_name["preprocess"].config({"synth": {"out_dir": str(tmp_path / "run" / "recordings")}})
    return synth.size, pre.size


def test_sensor_size_sets_synth_only(tmp_path: Path) -> None:
    assert _sizes(tmp_path, "sensor_size = 64") == (64, 32)


def test_sensor_size_defaults_to_the_frame_size(tmp_path: Path) -> None:
    assert _sizes(tmp_path, "") == (32, 32)
