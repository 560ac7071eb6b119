"""benchmarks/table2_digits.py end to end at its tiny setting, two seeds (slow: minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_table2_has_every_cell_and_every_model_beats_chance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("table2_digits", ROOT / "benchmarks" / "table2_digits.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "table2_digits", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "table2.json"
    assert bench.main(["--tiny", "--seeds", "0,1", "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    setting = bench.Setting.tiny()
    assert doc["seeds"] == [0, 1] and len(doc["per_seed"]) == 2
    cells = ["clean", "white fgsm", "white pgd50", "black fgsm", "black pgd50",
             *(f"pgd10 {bench.eps_label(e)}" for e in setting.curve_eps)]
    for per_seed in doc["per_seed"]:
        assert set(per_seed["cells"]) == set(setting.defenses)
        for model, row in per_seed["cells"].items():
            assert set(cells) <= set(row), (model, row)
            assert all(0.0 <= v <= 100.0 for v in row.values())
            assert row["clean"] > 10.0, f"{model} is at or below chance (10 classes): {row['clean']}"
    table = doc["table"]
    for name in ("Vanilla", "AT (FGSM)", "SR", "SR*", "±", "paired t test", "Took"):
        assert name in table


def test_quickstart_event_curve_is_mean_and_sd_over_the_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("table2_digits", ROOT / "benchmarks" / "table2_digits.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "table2_digits", bench)
    spec.loader.exec_module(bench)
    curves: dict = {}
    for seed, (greedy, disagree) in enumerate(((0.5, 0.0), (0.7, 0.1))):
        folder = tmp_path / f"seed{seed}" / "deployed" / "vanilla"
        folder.mkdir(parents=True)
        rows = [{"attack": "clean", "budget": 0, "accuracy": 0.9},
                {"attack": "greedy", "budget": 32, "accuracy": greedy, "float_disagreement": disagree}]
        (folder / "attack_events.json").write_text(json.dumps({"results": rows}))
        bench.collect_event_curves(tmp_path / f"seed{seed}", ("vanilla", "sr-star"), curves)
    table = bench.event_curve_table(curves)
    assert "| vanilla | clean | 0 | 90.0 ± 0.0 | — | 2 |" in table
    assert "| vanilla | greedy | 32 | 60.0 ± 14.1 | 5.0 ± 7.1 | 2 |" in table
    assert "sr-star" not in table
