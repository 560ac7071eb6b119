"""The Loihi 2 core estimate against Lava's compiler on lava-dl's own PilotNet SNN."""

from __future__ import annotations

import pytest
import torch

from dvsguard.export.netx import resource_table
from dvsguard.export.quantize import quantize_model
from dvsguard.export.resources import CORES_PER_CHIP, SYNMEM_WORDS, estimate, specs_from_netx
from dvsguard.snn.vgg import SpikingVGG, VGGConfig

from .conftest import LAVA_DL_NETX

PILOTNET = LAVA_DL_NETX / "pilotnet_snn.net"
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


def _preset_cores(preset: str, seed: int, size: int = 48) -> dict:
    torch.manual_seed(seed)
    cfg = VGGConfig.preset(preset, input_size=size)
    net = quantize_model(SpikingVGG(cfg).eval(), (cfg.in_channels, size, size), input_scale=15, time_steps=10)
    return resource_table(net)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_one_chip_preset_fits_one_chip_and_the_paper_width_does_not(seed: int) -> None:
    chip = _preset_cores("vgg11-chip", seed)
    print(f"vgg11-chip seed {seed}: {chip['totals']['cores']} cores", [r["cores"] for r in chip["rows"]])
    assert chip["chips"] == 1 and chip["fits_chip"], chip["problems"]
    assert chip["totals"]["cores"] <= CORES_PER_CHIP
    if seed == 0:
        wide = _preset_cores("vgg11-loihi", seed)
        assert wide["chips"] > 1 and not wide["fits_chip"]
        assert any("Loihi 2 chips" in p for p in wide["problems"])
