"""The export stage: checkpoint → ``NAME.net`` (netx) + ``NAME.json`` (manifest), and the
checks that run on the test split (integer simulator vs PyTorch; Lava vs both).

Only h5py, numpy and torch are needed to export; Lava is needed only for :func:`verify_export`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsguard.errors import ExportError
from dvsguard.export.netx import (
    build_manifest,
    format_resource_table,
    resource_table,
    sha256_file,
    write_json,
    write_netx,
)
from dvsguard.export.quantize import QuantizedNet, quantize_model
from dvsguard.protocol import DEFAULT_PROTOCOL

log = logging.getLogger(__name__)

GENERIC_STEMS = {"last", "best", "final", "checkpoint", "model"}
MAX_TIME_STEPS = 10_000
"""Most frames T per sample an export takes: Loihi runs one time step per frame (and resets
every T steps); a larger T in a checkpoint is a damaged or foreign framing record."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the ``.net`` file, its manifest and the resource table."""

    net_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    table: str
    quantized: QuantizedNet


def export_model(
    model: Any,
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    input_shape: tuple[int, int, int],
    input_scale: float,
    time_steps: int,
    source: dict[str, Any] | None = None,
    framing: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    scales: dict[str, float] | None = None,
) -> ExportResult:
    """Quantize ``model`` (read only) and write ``out_dir/name.net`` and ``out_dir/name.json``.

    input_shape: ``(C, H, W)`` of one frame; input_scale: count_cap (counts per model-input
    unit); time_steps: T frames per sample; scales: the per-layer scales recorded by
    fixed-point training (None: the scale rule). Logs the resource table and warns when
    the network cannot fit one Loihi 2 chip.
    """
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid export name {name!r}")
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)) or not 1 <= time_steps <= MAX_TIME_STEPS:
        raise ExportError(f"time steps T must be an integer 1..{MAX_TIME_STEPS}, got {time_steps!r}")
    out = Path(out_dir)
    q = quantize_model(model, input_shape, input_scale, time_steps, scales)
    table = resource_table(q)
    text = format_resource_table(table)
    if not table["fits_chip"]:
        msg = "network does not fit one Loihi 2 chip: " + "; ".join(table["problems"])
        log.warning("export: %s", msg)
        q.warnings.append(msg)
    net_path = write_netx(q, out / f"{name}.net")
    manifest = build_manifest(
        q, net_path, source=source or {}, framing=framing, classes=classes, resources=table,
        scales_from="fixed-point record" if scales is not None else "scale rule",
    )
    manifest_path = write_json(out / f"{name}.json", manifest)
    return ExportResult(net_path=net_path, manifest_path=manifest_path, manifest=manifest, table=text, quantized=q)


def default_name(ckpt: Path) -> str:
    """``runs/small/best.pt`` → ``small-best``; ``model_a.pt`` → ``model_a``."""
    stem = ckpt.stem
    if stem in GENERIC_STEMS and ckpt.parent.name:
        return f"{ckpt.parent.name}-{stem}"
    return stem


def export_checkpoint(ckpt: str | os.PathLike[str], out_dir: str | os.PathLike[str] = "export", name: str | None = None) -> tuple[ExportResult, Any, dict[str, Any]]:
    """Export a training checkpoint. Returns (result, model, payload).

    A checkpoint written by fixed-point training (``"fixed_point"`` entry) is exported with
    its recorded per-layer scales, which reproduce its on-grid weights as integers exactly.
    Raises CheckpointError for unreadable checkpoints or another architecture, and
    ExportError when the checkpoint lacks the framing, its fixed-point record does not
    match, or it holds values netx cannot take.
    """
    from dvsguard.snn.checkpoint import load_model

    ckpt = Path(ckpt)
    model, payload = load_model(ckpt)
    data = payload.get("data") or {}
    framing = data.get("framing")
    if not isinstance(framing, dict) or "count_cap" not in framing or "n_frames" not in framing:
        raise ExportError(f"{ckpt}: no framing (count_cap, n_frames) recorded in the checkpoint's data entry")
    _check_framing(ckpt, framing)
    cfg = model.cfg
    h, w = int(framing.get("height", cfg.input_size)), int(framing.get("width", cfg.input_size))
    if (h, w) != (cfg.input_size, cfg.input_size):
        raise ExportError(f"{ckpt}: framing is {h}×{w} but the model takes {cfg.input_size}×{cfg.input_size}")
    scales = _recorded_scales(ckpt, payload, float(framing["count_cap"]), int(framing["n_frames"]))
    source = {
        "checkpoint": str(ckpt.resolve()),
        "sha256": sha256_file(ckpt),
        "model_config": cfg.to_dict(),
        "epoch": payload.get("epoch"),
        "metrics": payload.get("metrics"),
        "value_range": data.get("value_range"),
        "protocol": data.get("protocol", DEFAULT_PROTOCOL),
    }
    result = export_model(
        model,
        out_dir,
        name or default_name(ckpt),
        input_shape=(cfg.in_channels, h, w),
        input_scale=float(framing["count_cap"]),
        time_steps=int(framing["n_frames"]),
        source=source,
        framing=framing,
        classes=data.get("classes"),
        scales=scales,
    )
    return result, model, payload


def _check_framing(ckpt: Path, framing: dict[str, Any]) -> None:
    """Refuse a framing whose T (``n_frames``) no Loihi run takes, or whose frames are not integer
    counts (``resize``: fractional raw counts; ``load_model`` has checked the framing's types and
    ranges already)."""
    method = framing.get("method", "downsample")
    if method != "downsample":
        raise ExportError(f"{ckpt}: framing method {method!r} feeds the model fractional raw counts; export "
                          "takes downsample framings (integer counts / count_cap) only")
    t = framing["n_frames"]
    if t > MAX_TIME_STEPS:
        raise ExportError(f"{ckpt}: framing claims T = {t} frames per sample; export takes at most "
                          f"{MAX_TIME_STEPS} (one Loihi time step per frame)")


def _recorded_scales(ckpt: Path, payload: dict[str, Any], count_cap: float, n_frames: int) -> dict[str, float] | None:
    """The per-layer scales of a fixed-point checkpoint (None for an ordinary one)."""
    from dvsguard.errors import ConfigError
    from dvsguard.snn.fixed_point import FixedPointSpec

    record = payload.get("fixed_point")
    if record is None:
        return None
    try:
        spec = FixedPointSpec.from_dict(record)
    except ConfigError as e:
        raise ExportError(f"{ckpt}: {e}") from None
    if spec.input_scale != count_cap or spec.time_steps != n_frames:
        raise ExportError(
            f"{ckpt}: fixed-point record is for count cap {spec.input_scale:g} and T={spec.time_steps}, "
            f"the framing has {count_cap:g} and T={n_frames}"
        )
    return spec.scales()


def resolve_test_split(payload: dict[str, Any], data: str | os.PathLike[str] | None = None) -> Path:
    """The test-split frame cache: ``data`` if given (a test cache, or any split's cache
    whose test sibling is used), else the test sibling of the checkpoint's training cache."""
    from dvsguard.data.cache import open_cache, split_path

    if data is not None:
        info = open_cache(data)
        return info.path if info.split == "test" else split_path(info, "test")
    cache = (payload.get("data") or {}).get("cache")
    if not cache:
        raise ExportError("the checkpoint records no frame cache; pass --cache PATH (a frame cache of the dataset)")
    return split_path(cache, "test")


def compare_export(model: Any, net_path: Path, test_path: Path, max_samples: int | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Integer simulator vs PyTorch on the test split (see :func:`intsim.compare`).

    Only the first ``max_samples`` samples (all when None) are read, in batches of at most
    ``batch_size``, so memory is bounded by one batch whatever the size of the split.
    """
    from torch.utils.data import DataLoader, Subset

    from dvsguard.data.dataset import FrameDataset, collate_time_first
    from dvsguard.export.intsim import compare

    dataset = FrameDataset(test_path)
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=max(1, min(batch_size, n)), shuffle=False,
                        collate_fn=collate_time_first)
    try:
        return compare(model, net_path, loader, max_samples=max_samples)
    finally:
        dataset.close()


def load_samples(test_path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n test samples: (counts int64 ``[n, T, C, H, W]``, model input float32
    ``[T, n, C, H, W]``, labels ``[n]``)."""
    from dvsguard.data.dataset import FrameDataset

    ds = FrameDataset(test_path)
    try:
        n = min(n, len(ds))
        if n < 1:
            raise ExportError(f"{test_path}: no test samples")
        counts = np.stack([np.asarray(ds.counts(i)) for i in range(n)]).astype(np.int64)
        x = np.stack([ds[i][0].numpy() for i in range(n)], axis=1)
        labels = np.asarray([ds[i][1] for i in range(n)])
    finally:
        ds.close()
    return counts, x, labels


def lava_estimate(net_path: Path, test_path: Path, n: int) -> tuple[int, float]:
    """(samples that --verify will run, estimated seconds of the Lava run)."""
    from dvsguard.data.cache import open_cache
    from dvsguard.export.intsim import load_netx
    from dvsguard.export.verify import estimate_lava_seconds

    info = open_cache(test_path)
    n = min(n, info.n_samples)
    return n, estimate_lava_seconds(load_netx(net_path), n, info.n_frames)


def verify_export(model: Any, net_path: Path, test_path: Path, n: int, timeout: float | None = None, build: bool = False) -> dict[str, Any]:
    """Run n test samples in Lava; compare with the integer simulator and the PyTorch model.

    Without ``timeout`` the Lava run is stopped after 5× its estimated time + 300 s.
    """
    import torch

    from dvsguard.export.intsim import load_netx
    from dvsguard.export.verify import estimate_lava_seconds, verify_netx

    counts, x, labels = load_samples(test_path, n)
    net = load_netx(net_path)
    eta = estimate_lava_seconds(net, len(labels), counts.shape[1])
    log.debug("Lava: %d sample(s) × %d steps through %d layers; estimated %.0f s", len(labels), counts.shape[1], len(net.layers), eta)
    if timeout is None:  # a hung simulator must not hang the caller
        timeout = 5 * eta + 300
    with torch.no_grad():
        preds = model(torch.from_numpy(x)).argmax(1).numpy()
    report = verify_netx(net_path, counts, model_predictions=preds, labels=labels, timeout=timeout, build=build)
    report["estimated_seconds"] = eta
    return report
