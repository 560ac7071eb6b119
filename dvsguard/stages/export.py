"""export: a trained checkpoint → lava-dl netx HDF5 for Loihi 2 (integer weights, folded BN and
pooling) with a manifest and resource table, and/or a NIR graph of the float network; optionally
scored by the integer simulator and Lava (netx) and by Norse (NIR)."""

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
    out: Path = option(Path("export"), "Folder for NAME.net (netx HDF5) and NAME.json (manifest), NAME.nir.", wired=True)
    name: str | None = option(None, "File name stem (default: from the checkpoint's path).")
    format: str = option("netx", "netx (Loihi 2 via lava-dl), nir (the float network as a NIR graph: Norse, Sinabs, "
                                 "SpiNNaker2, …) or netx,nir.", choices=("netx", "nir", "netx,nir"))
    verify: int = option(0, "Run N test samples in Lava; compare with the integer simulator and PyTorch.", min=0)
    compare: bool = option(False, "Score the test split with the integer simulator (netx) and Norse (nir) against "
                                  "PyTorch.")
    limit: int | None = option(None, "--compare on the first N test samples only.", min=1)
    cache: Path | None = option(None, "Frame cache (.h5, any split; its test sibling is used) for --verify/--compare "
                                      "(default: the checkpoint's).", wired=True)
    build_lava: bool = option(False, "Build the Lava runtime if it is missing.")
    timeout: float | None = option(None, "Stop the Lava run after this many seconds.", min=1)


@dataclass
class ExportStageResult(Result):
    """The files written (netx and manifest, NIR), the resource totals, and the compare/verify figures."""

    net: str | None = None
    manifest: str | None = None
    fits_chip: bool | None = None
    resources: dict[str, Any] | None = None
    time_steps: int | None = None
    lag: int | None = None
    warnings: list[str] = field(default_factory=list)
    nir: str | None = None
    nir_primitives: list[str] | None = None
    compare: dict[str, Any] | None = None
    compare_nir: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    table: str = field(default="", repr=False)

    @property
    def exit_code(self) -> int:
        return 1 if self.verify is not None and not self.verify["identical"] else 0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_json().items() if k != "table"}
        return {k: v for k, v in out.items() if v is not None or k not in ("compare", "compare_nir", "verify")}

    def summary(self) -> str:
        lines = [self.table, f"netx: {self.net}", f"manifest: {self.manifest}"] if self.net is not None else []
        if self.nir is not None:
            lines.append(f"nir: {self.nir} ({', '.join(self.nir_primitives or [])})")
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
        if self.compare_nir is not None:
            c = self.compare_nir
            lines.append(
                f"Norse on the NIR graph vs PyTorch on {c['n']} test samples: agreement {c['agreement']:.4f}, max "
                f"|logit difference| {c['logit_max_abs_diff']:.3g}, spikes differing per IF layer {c['spike_mismatch']} "
                f"(of {c['spikes_compared']})"
            )
        if self.verify is not None:
            v = self.verify
            lines.append(
                f"Lava vs integer simulator on {v['n']} samples: "
                + ("identical (every spike, every layer, read-out voltages)" if v["identical"] else "DIFFERENT")
                + f"; Lava vs PyTorch agreement {v['agreement_torch']:.4f}; {v['lava_wall_seconds']:.0f} s"
            )
        return "\n".join(lines)


def check(config: Config) -> None:
    """Refuse --verify without netx, and an --out that is a file, before anything runs."""
    from dvsguard.errors import ConfigError

    if config.verify and "netx" not in config.format.split(","):
        raise ConfigError("--verify runs the netx file in Lava: add netx to --format")
    check_output(config.out, "--out", folder=True)


def run(config: Config) -> ExportStageResult:
    """Export, then (as asked) compare with the integer simulator and Norse, and verify in Lava."""
    from dvsguard.export.exporter import compare_export, default_name, export_checkpoint, lava_estimate, resolve_test_split, verify_export

    check(config)
    formats = config.format.split(",")
    result = ExportStageResult()
    if "netx" in formats:
        exported, model, payload = export_checkpoint(config.checkpoint, config.out, config.name)
        manifest = exported.manifest
        result = ExportStageResult(
            net=str(exported.net_path), manifest=str(exported.manifest_path), fits_chip=manifest["resources"]["fits_chip"],
            resources={**manifest["resources"]["totals"], "chips": manifest["resources"]["chips"],
                       "estimate": manifest["resources"]["estimate"]}, time_steps=manifest["time_steps"], lag=manifest["lag"],
            warnings=list(manifest["warnings"]), table=exported.table,
        )
    else:
        from dvsguard.snn.checkpoint import load_model

        model, payload = load_model(config.checkpoint)
    if "nir" in formats:
        _write_nir(config, model, result, config.name or default_name(Path(config.checkpoint)))
    if config.compare or config.verify:
        test_path = resolve_test_split(payload, config.cache)
        if config.compare and result.net is not None:
            result.compare = compare_export(model, Path(result.net), test_path, max_samples=config.limit)
        if config.compare and result.nir is not None:
            result.compare_nir = _compare_nir(model, Path(result.nir), test_path, config.limit)
        if config.verify and result.net is not None:
            n_run, eta = lava_estimate(Path(result.net), test_path, config.verify)
            log.info("Lava: running %d test sample(s) through %d layers in Lava's CPU simulator; estimated %.0f s",
                     n_run, len(manifest["layers"]), eta)
            result.verify = verify_export(model, Path(result.net), test_path, config.verify,
                                          timeout=config.timeout, build=config.build_lava)
    return result


def _write_nir(config: Config, model: Any, result: ExportStageResult, name: str) -> None:
    import nir

    from dvsguard.export.nir_graph import NIR_SUFFIX, primitives, write_nir

    cfg = model.cfg
    path = write_nir(model, (cfg.in_channels, cfg.input_size, cfg.input_size), Path(config.out) / f"{name}{NIR_SUFFIX}")
    result.nir = str(path)
    result.nir_primitives = primitives(nir.read(str(path)))


def _compare_nir(model: Any, nir_path: Path, test_path: Path, limit: int | None) -> dict[str, Any]:
    import torch

    from dvsguard.data.cache import open_cache
    from dvsguard.export.exporter import load_samples
    from dvsguard.export.nir_norse import compare_nir

    n = open_cache(test_path).n_samples if limit is None else limit
    _, x, labels = load_samples(test_path, n)
    return compare_nir(model, nir_path, torch.from_numpy(x), torch.from_numpy(labels))
