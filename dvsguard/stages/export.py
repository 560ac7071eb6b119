"""export: a trained checkpoint → lava-dl netx HDF5 for Loihi 2 (integer weights, folded BN and
pooling) with a manifest and resource table; optionally scored by the integer simulator and Lava."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.stages.base import Result, check_output, option

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard export``."""

    checkpoint: Path = option(help="Trained checkpoint (.pt).", argument=True, wired=True)
    out: Path = option(Path("export"), "Folder for NAME.net (netx HDF5) and NAME.json (manifest).", wired=True)
    name: str | None = option(None, "File name stem (default: from the checkpoint's path).")
    verify: int = option(0, "Run N test samples in Lava; compare with the integer simulator and PyTorch.", min=0)
    compare: bool = option(False, "Score the test split with the integer simulator against PyTorch.")
    limit: int | None = option(None, "--compare on the first N test samples only.", min=1)
    cache: Path | None = option(None, "Frame cache (.h5, any split; its test sibling is used) for --verify/--compare "
                                      "(default: the checkpoint's).", wired=True)
    build_lava: bool = option(False, "Build the Lava runtime if it is missing.")
    timeout: float | None = option(None, "Stop the Lava run after this many seconds.", min=1)


@dataclass
class ExportStageResult(Result):
    """The netx file and manifest written, the resource totals, and the compare/verify figures."""

    net: str
    manifest: str
    fits_chip: bool
    resources: dict[str, Any]
    time_steps: int
    lag: int
    warnings: list[str]
    compare: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    table: str = field(default="", repr=False)

    @property
    def exit_code(self) -> int:
        return 1 if self.verify is not None and not self.verify["identical"] else 0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_json().items() if k != "table"}
        return {k: v for k, v in out.items() if v is not None or k not in ("compare", "verify")}

    def summary(self) -> str:
        lines = [self.table, f"netx: {self.net}", f"manifest: {self.manifest}"]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.compare is not None:
            c = self.compare
            lines.append(
                f"integer simulator vs PyTorch on {c['n']} test samples: agreement {c['agreement']:.4f}, "
                f"accuracy {c['accuracy_int']:.4f} (PyTorch {c['accuracy_float']:.4f}), "
                f"mean |logit error| {c['logit_mean_abs_error']:.4g}"
            )
            if c["spike_mismatch"] is not None:
                lines.append(f"spikes differing from PyTorch per hidden layer: {c['spike_mismatch']} "
                             f"(of {c['spikes_compared']} compared)")
            sat = [f"layer {k}: " + ", ".join(f"{n} {e[n]}" for n in e) for k, e in enumerate(c["layer_events"]) if e]
            if sat:
                lines.append("saturation events (integer limits reached): " + "; ".join(sat)
                             + f"; {c['departures']} of them can change a spike or the read-out")
        if self.verify is not None:
            v = self.verify
            lines.append(
                f"Lava vs integer simulator on {v['n']} samples: "
                + ("identical (every spike, every layer, read-out voltages)" if v["identical"] else "DIFFERENT")
                + f"; Lava vs PyTorch agreement {v['agreement_torch']:.4f}; {v['lava_wall_seconds']:.0f} s"
            )
        return "\n".join(lines)


def run(config: Config) -> ExportStageResult:
    """Export, then (as asked) compare with the integer simulator and verify in Lava."""
    from dvsguard.export.exporter import compare_export, export_checkpoint, lava_estimate, resolve_test_split, verify_export

    check_output(config.out, "--out", folder=True)
    exported, model, payload = export_checkpoint(config.checkpoint, config.out, config.name)
    manifest = exported.manifest
    result = ExportStageResult(
        net=str(exported.net_path), manifest=str(exported.manifest_path), fits_chip=manifest["resources"]["fits_chip"],
        resources=manifest["resources"]["totals"], time_steps=manifest["time_steps"], lag=manifest["lag"],
        warnings=list(manifest["warnings"]), table=exported.table,
    )
    if config.compare or config.verify:
        test_path = resolve_test_split(payload, config.cache)
        if config.compare:
            result.compare = compare_export(model, exported.net_path, test_path, max_samples=config.limit)
        if config.verify:
            n_run, eta = lava_estimate(exported.net_path, test_path, config.verify)
            log.info("Lava: running %d test sample(s) through %d layers in Lava's CPU simulator; estimated %.0f s",
                     n_run, len(manifest["layers"]), eta)
            result.verify = verify_export(model, exported.net_path, test_path, config.verify,
                                          timeout=config.timeout, build=config.build_lava)
    return result
