"""Classify every recording under a folder with a trained model (or its exported netx network).

Recordings are read and framed in DataLoader worker processes (both cores, bounded prefetch)
with the framing stored in the checkpoint, then classified in batches. One row per file:
path, predicted class index and name, confidence (softmax of the mean logits), input event
count and the network's total spike count; a file that cannot be read is listed with its error
and the rest go on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dvsguard.atomic import write_text
from dvsguard.data.events import read_events
from dvsguard.data.frames import FramingConfig, events_to_frames, frames_to_float
from dvsguard.data.preprocess import find_recordings, read_labels
from dvsguard.errors import CheckpointError, ConfigError, DvsguardError, RecordingError
from dvsguard.progress import make_progress
from dvsguard.snn.checkpoint import load_model
from dvsguard.snn.neuron import IFNeuron

if TYPE_CHECKING:  # pragma: no cover
    from dvsguard.attack import Attack
    from dvsguard.export.verify import LavaPredictor

log = logging.getLogger(__name__)

FIELDS = ("path", "predicted", "class_name", "confidence", "events", "spikes", "label", "correct",
          "robust_correct", "error")

Item = tuple[int, np.ndarray | None, int, str]
"""One recording from the loader: (file index, uint8 frames ``[T, 2, H, W]`` or None, event count, error)."""


class _RecordingFrames(Dataset):
    """Item i: an :data:`Item` (index, uint8 frames [T, 2, H, W] or None, event count, error message)."""

    def __init__(self, files: Sequence[Path], framing: FramingConfig) -> None:
        self.files = list(files)
        self.framing = framing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        try:
            rec = read_events(self.files[i])
            return i, events_to_frames(rec, self.framing), int(len(rec.events)), ""
        except DvsguardError as exc:
            return i, None, 0, str(exc)
        except Exception as exc:  # a reader's unexpected failure stays this file's error
            return i, None, 0, f"{self.files[i]}: {type(exc).__name__}: {exc}"


def _collate(items: list[Item]) -> list[Item]:
    return items


@dataclass
class PredictResult:
    """What ``predict`` wrote and measured."""

    out: Path
    n_files: int
    n_failed: int
    accuracy: float | None = None
    robust_accuracy: float | None = None
    attack: str | None = None
    eps: float | None = None
    backend: str = "torch"
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "n_files": self.n_files, "n_failed": self.n_failed,
            "accuracy": self.accuracy, "robust_accuracy": self.robust_accuracy, "attack": self.attack,
            "eps": self.eps, "backend": self.backend, "failed": self.failed,
        }


class _SpikeCounter:
    """Forward hooks summing every IF layer's spikes per sample (outputs are [T, B, ...])."""

    def __init__(self, model: nn.Module) -> None:
        self.total: torch.Tensor | None = None
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, IFNeuron)]

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        counts = output.detach().transpose(0, 1).reshape(output.shape[1], -1).sum(1)
        self.total = counts if self.total is None else self.total + counts

    def take(self) -> torch.Tensor:
        total, self.total = self.total, None
        assert total is not None
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _labels_for(files: Sequence[Path], root: Path, labels: str | None, classes: Sequence[str]) -> dict[Path, int]:
    """Map each file to a class index of the model: from a labels CSV or (``"folders"``) sub-folder names."""
    index = {c: i for i, c in enumerate(classes)}
    if labels is None:
        return {}
    if labels == "folders":
        pairs = [(f, f.relative_to(root).parts[0]) for f in files if len(f.relative_to(root).parts) > 1]
    else:
        items, names = read_labels(Path(labels), root)
        pairs = [(p, names[i]) for p, i in items]
    unknown = sorted({name for _, name in pairs if name not in index})
    if unknown:
        raise ConfigError(f"labels: class {unknown[0]!r} is not one of the model's classes ({', '.join(classes)})")
    return {Path(os.path.normpath(p)): index[name] for p, name in pairs}


def _writer(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv",):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ConfigError(f"{path}: output must end in .csv or .jsonl")


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    kind = _writer(path)
    buf = io.StringIO()
    if kind == "csv":
        w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})
    else:
        for row in rows:
            buf.write(json.dumps({k: row.get(k) for k in FIELDS}) + "\n")
    write_text(path, buf.getvalue())


def _loader(files: Sequence[Path], framing: FramingConfig, batch_size: int, workers: int) -> DataLoader:
    """Reads and frames ``files`` in ``workers`` processes (none: in this one), chunks of ``batch_size / workers``."""
    return DataLoader(_RecordingFrames(files, framing), batch_size=max(1, batch_size // max(workers, 1)),
                      num_workers=workers, collate_fn=_collate, prefetch_factor=2 if workers else None,
                      persistent_workers=False)


def _batches(loader: DataLoader, batch_size: int) -> Iterator[list[Item]]:
    pending: list[Item] = []
    for chunk in loader:
        pending.extend(chunk)
        while len(pending) >= batch_size:
            yield pending[:batch_size]
            pending = pending[batch_size:]
    if pending:
        yield pending


class _BatchPredictor:
    """Classifies the loader's batches and fills ``rows`` (one dict per file, in file order).

    Frames go through ``runner`` (the exported network in Lava) when given, else through
    ``model``; ``attacker`` (if any) attacks the labelled recordings of each batch in PyTorch.
    ``n_labelled``, ``n_correct`` and ``n_robust`` count the labelled, correctly classified and
    still correct after the attack recordings.
    """

    def __init__(self, model: nn.Module, framing: FramingConfig, classes: Sequence[str], files: Sequence[Path],
                 truth: dict[Path, int], attacker: Attack | None, runner: LavaPredictor | None) -> None:
        self.model = model
        self.framing = framing
        self.classes = classes
        self.files = files
        self.truth = truth
        self.attacker = attacker
        self.runner = runner
        self.rows: list[dict[str, Any]] = [{"path": str(f)} for f in files]
        self.counter = _SpikeCounter(model)
        self.n_labelled = self.n_correct = self.n_robust = 0

    def close(self) -> None:
        """Remove the spike-counting hooks from the model."""
        self.counter.close()

    def add(self, batch: Sequence[Item]) -> None:
        """Fill the rows of one batch: the error of each unreadable file, the prediction of the others."""
        good = [(i, fr, n) for i, fr, n, err in batch if fr is not None]
        for i, fr, _, err in batch:
            if fr is None:
                self.rows[i]["error"] = err
                log.warning("%s", err)
        if not good:
            return
        x = torch.from_numpy(np.stack([frames_to_float(fr, self.framing.count_cap) for _, fr, _ in good], 1))
        logits, spikes = self._forward(x)
        ys = [self.truth.get(Path(os.path.normpath(self.files[i]))) for i, _, _ in good]
        self._fill(good, logits, spikes, ys)
        if self.attacker is not None:
            self._attack(self.attacker, x, [i for i, _, _ in good], ys)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, K]`` and total spike counts ``[B]`` of float frames ``x`` ``[T, B, 2, H, W]``."""
        if self.runner is not None:
            logits = torch.as_tensor(self.runner.logits(x.numpy()), dtype=torch.float32)
            return logits, torch.as_tensor(self.runner.last_spikes, dtype=torch.float32)
        with torch.no_grad():
            logits = self.model(x)
        return logits, self.counter.take()

    def _fill(self, good: Sequence[tuple[int, np.ndarray, int]], logits: torch.Tensor, spikes: torch.Tensor,
              ys: Sequence[int | None]) -> None:
        """Write prediction, confidence (softmax of ``logits`` ``[B, K]``), events, spikes and correctness."""
        conf, pred = logits.softmax(1).max(1)
        for k, (i, _, n) in enumerate(good):
            self.rows[i].update(predicted=int(pred[k]), class_name=self.classes[int(pred[k])],
                                confidence=round(float(conf[k]), 6), events=n, spikes=int(spikes[k]))
            if ys[k] is not None:
                self.rows[i].update(label=ys[k], correct=int(pred[k]) == ys[k])
                self.n_labelled += 1
                self.n_correct += int(int(pred[k]) == ys[k])

    def _attack(self, attacker: Attack, x: torch.Tensor, index: Sequence[int], ys: Sequence[int | None]) -> None:
        """Attack the labelled samples of ``x`` ``[T, B, 2, H, W]`` (file indices ``index``, labels ``ys``)."""
        keep = [k for k, y in enumerate(ys) if y is not None]
        if not keep:
            return
        ids = [index[k] for k in keep]
        x_adv = attacker(self.model, x[:, keep], torch.tensor([ys[k] for k in keep]), sample_ids=ids)
        with torch.no_grad():
            adv_pred = self.model(x_adv).argmax(1)
            self.counter.take()
        for j, k in enumerate(keep):
            ok = int(adv_pred[j]) == ys[k]
            self.rows[index[k]]["robust_correct"] = ok
            self.n_robust += int(ok)

    def result(self, out: Path, attack: str | None, eps: float | None) -> PredictResult:
        """What ``predict`` returns for the rows filled so far (written to ``out``); accuracies to 6 digits."""
        failed = [{"path": r["path"], "error": r["error"]} for r in self.rows if r.get("error")]
        n = self.n_labelled
        return PredictResult(
            out=out,
            n_files=len(self.files),
            n_failed=len(failed),
            accuracy=round(self.n_correct / n, 6) if n else None,
            robust_accuracy=round(self.n_robust / n, 6) if (self.attacker is not None and n) else None,
            attack=attack,
            eps=eps,
            backend="lava" if self.runner is not None else "torch",
            failed=failed,
        )


def _check_options(root: Path, out: Path, labels: str | None, attack: str | None, eps: float | None,
                   netx: str | os.PathLike | None) -> None:
    """Raise ConfigError/RecordingError for an output name, folder or option combination ``predict`` refuses."""
    _writer(out)
    if not root.is_dir():
        raise RecordingError(f"{root}: no such folder of recordings")
    if attack is not None and (labels is None or eps is None):
        raise ConfigError("--attack needs --labels (robust accuracy needs true classes) and --eps")
    if attack is not None and netx is not None:
        raise ConfigError("--attack and --netx cannot be combined (attacks need PyTorch gradients)")


def _make_attacker(attack: str | None, eps: float | None, value_range: tuple[float, ...], seed: int) -> Attack | None:
    """The attack ``attack`` of radius ``eps`` (frame units) within ``value_range``, or None."""
    if attack is None:
        return None
    assert eps is not None, "_check_options requires eps with an attack"
    from dvsguard.attack import make_attack

    return make_attack(attack, float(eps), value_range=value_range, seed=seed)


def _lava_runner(netx: str | os.PathLike | None) -> LavaPredictor | None:
    """Lava's simulator of the exported network at ``netx``, or None."""
    if netx is None:
        return None
    from dvsguard.export.verify import LavaPredictor

    return LavaPredictor(Path(netx))


def predict(
    folder: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | None = None,
    attack: str | None = None,
    eps: float | None = None,
    netx: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 2,
    seed: int = 0,
) -> PredictResult:
    """Classify every recording under ``folder``; write one row per file to ``out`` (.csv/.jsonl).

    ``labels`` is a labels CSV or ``"folders"`` (sub-folder names) and adds accuracy;
    ``attack``/``eps`` (ε in frame units) add robust accuracy (needs labels); ``netx`` runs the
    exported Loihi network in Lava's simulator instead of PyTorch.
    """
    root = Path(folder)
    out_path = Path(out)
    _check_options(root, out_path, labels, attack, eps, netx)
    model, payload = load_model(checkpoint)
    data = payload.get("data", {})
    framing = FramingConfig.from_dict(data.get("framing") or {})
    classes = list(data.get("classes") or [str(i) for i in range(model.cfg.num_classes)])
    recorded_range = data.get("value_range") or framing.value_range
    if recorded_range is None:
        raise CheckpointError(f"{checkpoint}: its {framing.method} framing has no fixed value range and the "
                              "checkpoint records none (data.value_range)")
    value_range = tuple(recorded_range)
    files = find_recordings(root, exclude=out_path)  # only the output file, not its folder of recordings
    if not files:
        raise RecordingError(f"{root}: no recordings found")
    truth = _labels_for(files, root, labels, classes)
    attacker = _make_attacker(attack, eps, value_range, seed)
    runner = _lava_runner(netx)

    loader = _loader(files, framing, batch_size, workers)
    predictor = _BatchPredictor(model, framing, classes, files, truth, attacker, runner)
    try:
        with make_progress() as progress:
            task = progress.add_task("predict", total=len(files))
            for batch in _batches(loader, batch_size):
                predictor.add(batch)
                progress.advance(task, len(batch))
    finally:
        predictor.close()
    _write_rows(out_path, predictor.rows)
    return predictor.result(out_path, attack, eps)
