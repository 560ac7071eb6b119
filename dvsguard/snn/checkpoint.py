"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), model rebuild with checks.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "dvsguard-checkpoint/1",
     "model": {"config": VGGConfig.to_dict(), "state_dict": {...}},
     "data": {"framing", "classes", "value_range", "cache", "protocol"},
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
from dvsguard.protocol import DEFAULT_PROTOCOL, PROTOCOLS
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
    another shape than the config implies (naming the first such tensor), a tensor
    holds NaN/inf, or the ``data`` entry (framing, class list) is inconsistent with the model.
    """
    payload = load_checkpoint(path, map_location)
    entry = payload.get("model")
    if not isinstance(entry, dict) or "config" not in entry or "state_dict" not in entry:
        raise CheckpointError(f"{path}: no 'model' entry with 'config' and 'state_dict'")
    if not isinstance(entry["config"], dict):
        raise CheckpointError(f"{path}: model config is a {type(entry['config']).__name__}, expected a dict")
    try:
        cfg = VGGConfig.from_dict(entry["config"])
        model = SpikingVGG(cfg)
    except (ConfigError, TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: invalid model config: {' '.join(str(e).split()) or type(e).__name__}") from e
    check_data_entry(payload.get("data"), cfg, str(path))
    check_state_dict(model, entry["state_dict"], str(path))
    model.load_state_dict(entry["state_dict"])
    model.to(map_location)
    model.eval()
    return model, payload


def checkpoint_protocol(payload: dict[str, Any]) -> str:
    """The protocol a checkpoint was trained under (``data.protocol``); ``events`` for a checkpoint
    from before protocols were recorded."""
    data = payload.get("data")
    protocol = data.get("protocol") if isinstance(data, dict) else None
    return DEFAULT_PROTOCOL if protocol is None else protocol


def check_data_entry(data: Any, cfg: VGGConfig, where: str) -> None:
    """Raise CheckpointError unless the checkpoint's ``data`` entry (optional) agrees with the model.

    ``classes`` must be a list of ``num_classes`` strings; ``framing`` a dict whose ``height`` and
    ``width`` (when given) are the model's input size and it is a valid framing; ``value_range`` two numbers, low < high;
    ``protocol`` one of :data:`dvsguard.protocol.PROTOCOLS` (absent: ``events``).
    """
    if data is None:
        return
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: 'data' entry is a {type(data).__name__}, expected a dict")
    classes = data.get("classes")
    if classes is not None:
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise CheckpointError(f"{where}: 'data.classes' must be a list of class names, got {classes!r:.80}")
        if len(classes) != cfg.num_classes:
            raise CheckpointError(f"{where}: 'data.classes' lists {len(classes)} classes but the model has "
                                  f"{cfg.num_classes} outputs")
    framing = data.get("framing")
    if framing is not None:
        if not isinstance(framing, dict):
            raise CheckpointError(f"{where}: 'data.framing' is a {type(framing).__name__}, expected a dict")
        for key in ("height", "width"):
            value = framing.get(key)
            if value is not None and value != cfg.input_size:
                raise CheckpointError(f"{where}: 'data.framing.{key}' is {value!r} but the model takes "
                                      f"{cfg.input_size}x{cfg.input_size} frames")
        from dvsguard.data.frames import FramingConfig

        try:
            FramingConfig.from_dict(framing)
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: 'data.framing' is invalid: {' '.join(str(e).split())}") from e
    value_range = data.get("value_range")
    if value_range is not None:
        ok = (isinstance(value_range, (list, tuple)) and len(value_range) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
              and value_range[0] < value_range[1])
        if not ok:
            raise CheckpointError(f"{where}: 'data.value_range' is {value_range!r:.80}, expected [low, high] "
                                  f"with low < high")
    protocol = data.get("protocol")
    if protocol is not None and (not isinstance(protocol, str) or protocol not in PROTOCOLS):
        raise CheckpointError(f"{where}: 'data.protocol' is {protocol!r:.80}, expected one of {', '.join(PROTOCOLS)}")


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
