"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), model rebuild with checks.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "dvsguard-checkpoint/1",
     "model": {"config": VGGConfig.to_dict(), "state_dict": {...}},
     "data": {"framing", "classes", "value_range", "cache"},
     "train": {...}, "epoch": int, "metrics": {...},
     ... trainer state (optimizer, scheduler, rng) in training checkpoints}

Only ``format`` and ``model`` are required by :func:`load_model`. Everything must be
loadable with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists,
tuples and dicts (no numpy arrays or arbitrary objects).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsguard.atomic import atomic_open
from dvsguard.errors import CheckpointError, ConfigError
from dvsguard.snn.vgg import SpikingVGG, VGGConfig

log = logging.getLogger(__name__)

FORMAT = "dvsguard-checkpoint/1"


def model_payload(model: SpikingVGG) -> dict[str, Any]:
    """The ``"model"`` entry of a checkpoint: ``{"config": dict, "state_dict": dict}`` (CPU tensors)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"config": model.cfg.to_dict(), "state_dict": state}


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`dvsguard.atomic.atomic_path`).

    Adds ``"format"`` if absent. Creates the parent folder. Returns the path. A crash
    mid-write leaves the previous file (if any) intact; a full disk is an ``OutputError``
    naming ``path`` (torch writes through the Python file, so the OSError is not lost in a
    ``RuntimeError`` of torch's zip writer).
    """
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: checkpoint payload must be a dict, got {type(payload).__name__}")
    path = Path(path)
    data = payload if "format" in payload else {"format": FORMAT, **payload}
    with atomic_open(path, "wb") as fh:
        torch.save(data, fh)
    log.debug("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises CheckpointError (naming the file and the cause) if the file is missing, not a
    torch file, needs unsafe unpickling (code objects), or is not a dvsguard checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load (not plain tensors/containers): {first}") from e
    except Exception as e:  # torch raises RuntimeError/EOFError/zipfile errors on garbage
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(payload).__name__}, expected a dict")
    fmt = payload.get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r} is not {FORMAT!r}")
    return payload


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[SpikingVGG, dict[str, Any]]:
    """Rebuild the SpikingVGG stored in a checkpoint; returns ``(model in eval mode, payload)``.

    Raises CheckpointError if the config is invalid, a tensor is missing/unexpected or of
    another shape than the config implies (naming the first such tensor), or a tensor
    holds NaN/inf.
    """
    payload = load_checkpoint(path, map_location)
    entry = payload.get("model")
    if not isinstance(entry, dict) or "config" not in entry or "state_dict" not in entry:
        raise CheckpointError(f"{path}: no 'model' entry with 'config' and 'state_dict'")
    try:
        cfg = VGGConfig.from_dict(entry["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e
    model = SpikingVGG(cfg)
    check_state_dict(model, entry["state_dict"], str(path))
    model.load_state_dict(entry["state_dict"])
    model.to(map_location)
    model.eval()
    return model, payload


def check_state_dict(model: nn.Module, state: Any, where: str) -> None:
    """Raise CheckpointError unless ``state`` matches ``model``'s tensors (names, shapes) and is finite."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: state_dict is a {type(state).__name__}, expected a dict")
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}: tensor {name!r} is missing (checkpoint of another architecture?)")
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: {name!r} is a {type(t).__name__}, expected a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, the config implies {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name!r} contains NaN or infinite values")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]!r} (checkpoint of another architecture?)")
