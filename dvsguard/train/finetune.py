"""Starting a run from a trained checkpoint (``init``), and fixed-point fine-tuning.

With ``fixed_point`` the trained model is put into the Loihi 2 fixed-point form of
:mod:`dvsguard.snn.fixed_point` before the optimizer is built: BatchNorm folded into the
conv weights and frozen, weights and folded biases fake-quantized onto each layer's integer
grid (straight-through gradient), so that the model trained and evaluated is the integer
network the exporter writes, up to float rounding that the tie-free thresholds absorb.
Its checkpoints hold the on-grid tensors under the plain SpikingVGG names (they load with
:func:`dvsguard.snn.checkpoint.load_model`) and the per-layer grids under ``"fixed_point"``;
the latent float weights the optimizer moves travel in the trainer state for ``--resume``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dvsguard.data.cache import CacheInfo
from dvsguard.errors import ConfigError
from dvsguard.snn.checkpoint import checkpoint_protocol, load_model, model_payload
from dvsguard.snn.fixed_point import FixedPointSpec, attach, baked_state_dict
from dvsguard.snn.vgg import SpikingVGG

log = logging.getLogger(__name__)


def load_init(model: SpikingVGG, path: str | Path, info: CacheInfo, protocol: str = "events") -> dict[str, Any]:
    """Load the weights of a trained checkpoint into ``model`` (built for ``info``'s cache).

    Returns the checkpoint's payload. ConfigError (one line naming the checkpoint) when it
    was trained under another protocol than the run's (``protocol``), holds another
    architecture than the run's preset on this cache, or was trained on other classes or
    another framing.
    """
    trained, payload = load_model(path)
    theirs = checkpoint_protocol(payload)
    if theirs != protocol:
        raise ConfigError(f"{path}: init checkpoint was trained under protocol {theirs!r}, this run is {protocol!r}")
    if trained.cfg != model.cfg:
        mine, theirs = model.cfg.to_dict(), trained.cfg.to_dict()
        diff = next(k for k in mine if theirs[k] != mine[k])
        raise ConfigError(
            f"{path}: init checkpoint holds another architecture ({diff} {theirs[diff]!r}, the run's "
            f"preset on this cache gives {mine[diff]!r}); pass the --preset it was trained with"
        )
    data = payload.get("data") or {}
    if data.get("classes") is not None and list(data["classes"]) != list(info.classes):
        raise ConfigError(f"{path}: init checkpoint was trained on other classes than {info.path}")
    framing = data.get("framing") or {}
    for key in ("count_cap", "n_frames"):
        if key in framing and framing[key] != info.framing.get(key):
            raise ConfigError(
                f"{path}: init checkpoint was trained with {key}={framing[key]}, {info.path} has {info.framing.get(key)}"
            )
    model.load_state_dict(trained.state_dict())
    log.info("starting from the weights of %s", path)
    return payload


def to_fixed_point(model: SpikingVGG, init_payload: dict[str, Any], info: CacheInfo) -> FixedPointSpec:
    """Put ``model`` (holding the init checkpoint's weights) into fixed-point form.

    Keeps the init checkpoint's grids when it was fixed-point trained already; otherwise
    folds BatchNorm and chooses each layer's scale by the exporter's rule.
    """
    if info.count_cap is None:
        raise ConfigError(f"{info.path}: fixed-point fine-tuning needs event-count frames (the events protocol); "
                          f"this cache holds the paper protocol's interpolated counts, which Loihi cannot take")
    record = init_payload.get("fixed_point")
    spec = None
    if record is not None:
        spec = FixedPointSpec.from_dict(record)
    return attach(model, input_scale=float(info.count_cap), time_steps=int(info.n_frames), spec=spec)


def checkpoint_entries(model: SpikingVGG, spec: FixedPointSpec) -> dict[str, Any]:
    """The ``"model"`` (on-grid tensors, plain names) and ``"fixed_point"`` entries of a
    fixed-point model's checkpoint."""
    return {
        "model": {"config": model.cfg.to_dict(), "state_dict": baked_state_dict(model)},
        "fixed_point": spec.to_dict(),
    }


def latent_state(model: SpikingVGG) -> dict[str, Any]:
    """The latent (off-grid) float tensors the optimizer moves, for exact resumption."""
    return model_payload(model)["state_dict"]
