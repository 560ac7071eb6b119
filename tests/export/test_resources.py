"""The Loihi 2 core estimate against Lava's compiler on lava-dl's own PilotNet SNN."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvsguard.export.resources import SYNMEM_WORDS, estimate, specs_from_netx

PILOTNET = Path("/work/shared/netx/pilotnet_snn.net")
# The compiler's per-layer cores (lava-dl's pilotnet_snn/benchmark.ipynb), by netx layer index.
COMPILER_CORES = {"0": 13, "1": 25, "2": 13, "3": 3, "4": 3, "5": 2, "7": 12, "8": 1, "9": 1, "10": 1}


@pytest.mark.skipif(not PILOTNET.is_file(), reason=f"{PILOTNET} (lava-dl's PilotNet netx file) is absent")
def test_estimate_matches_the_compiler_on_pilotnet() -> None:
    est = estimate(specs_from_netx(PILOTNET))
    rows = {r["name"]: r for r in est["rows"]}
    assert set(rows) == set(COMPILER_CORES)
    for name, cores in COMPILER_CORES.items():
        print(f"layer {name:>2} {rows[name]['kind']:<6} predicted {rows[name]['cores']:>3}  compiler {cores:>3}")
        assert abs(rows[name]["cores"] - cores) <= 0.3 * cores, name
        assert rows[name]["words_per_core"] <= SYNMEM_WORDS
    print(f"total predicted {est['cores']}  compiler 74")
    assert abs(est["cores"] - 74) <= 0.15 * 74
    assert est["chips"] == 1 and not est["problems"]
