"""Pipeline [[train]] runs that fine-tune an earlier run in fixed point: plan and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvsguard.errors import ConfigError
from dvsguard.pipeline import load_pipeline, plan

BASE = """
[pipeline]
name = "t"
run_dir = "{run}"
[data]
source = "synth"
per_class = 2
[[train]]
name = "a"
defense = "vanilla"
epochs = 1
"""


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(BASE.format(run=tmp_path / "run") + extra)
    return path


def test_fixed_point_run_starts_from_the_named_run(tmp_path: Path) -> None:
    cfg = load_pipeline(write(tmp_path, '[[train]]\nname = "a-fp"\ndefense = "sr-star"\nepochs = 1\n'
                                        'init = "a"\nfixed_point = true\n'))
    rows = {r["stage"]: r["command"] for r in plan(cfg)}
    cmd = rows["train:a-fp"]
    assert "--fixed-point" in cmd and cmd[cmd.index("--init") + 1] == "<train:a.checkpoint>"
    assert "--init" not in rows["train:a"] and "--fixed-point" not in rows["train:a"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[[train]]\nname = "b"\ndefense = "vanilla"\ninit = "c"\n', "key 'init': no earlier [[train]] run named 'c'"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\ninit = "b"\n', "key 'init': no earlier [[train]] run named 'b'"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\nfixed_point = true\n', "key 'fixed_point' fine-tunes a trained model"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\nfixed_point = "yes"\n', "key 'fixed_point': expected boolean"),
    ],
)
def test_bad_fine_tuning_keys_name_file_and_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match="p.toml") as info:
        load_pipeline(write(tmp_path, extra))
    assert message in str(info.value)
