"""``dvsguard attack --threat events``: robust accuracy against event budgets, judged on the integer network.

The event threat model and its attacks are :mod:`dvsguard.attack.events`; this module runs them
on a cache split, judges success on the exported integer network (:func:`dvsguard.export.intsim.simulate`)
when ``--netx`` is given (else on the float model), and with ``--write-recordings`` writes every
adversarial sample back as an event recording (:mod:`dvsguard.attack.writeback`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dvsguard.stages.base import Result

log = logging.getLogger(__name__)


class IntegerNet(nn.Module):
    """The exported netx network as a classifier of frames ``x`` ``[T, B, 2, H, W] = counts / count_cap``.

    ``forward`` gives the read-out voltages ``[B, classes]`` (float64) of :func:`simulate` on the
    counts ``round(x · input_scale)``; their argmax is the integer network's prediction.
    """

    def __init__(self, netx: Path, count_cap: int, shape: tuple[int, ...]) -> None:
        from dvsguard.errors import AttackError
        from dvsguard.export.intsim import load_netx

        super().__init__()
        self.net = load_netx(netx)
        scale = float(self.net.attrs.get("input_scale", 1.0))
        if scale != count_cap:
            raise AttackError(f"{netx}: exported for input_scale {scale:g}, the cache's count_cap is {count_cap}")
        t, *chw = shape
        if tuple(self.net.input_shape) != tuple(chw) or self.net.time_steps not in (None, t):
            raise AttackError(f"{netx}: takes {self.net.time_steps} frames of {self.net.input_shape}, the cache "
                              f"holds {t} frames of {tuple(chw)}")
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        from dvsguard.export.intsim import simulate

        counts = np.rint(x.detach().double().cpu().numpy() * self.scale).astype(np.int64).swapaxes(0, 1)
        return torch.from_numpy(simulate(self.net, counts).v_out.astype(np.float64))


@dataclass
class EventAttackResult(Result):
    """Robust accuracy per (attack, event budget), the events spent, and the files written.

    ``results`` rows: attack, budget, correct, total, accuracy (0..1), events_inserted and
    events_deleted (frame counts, summed over the samples), events_per_attacked_sample (only the
    samples the judge classifies correctly when clean are attacked), and with ``--netx``
    float_disagreement: the share of samples whose adversarial frames the float model and the
    integer network classify differently. ``recordings``: folder, files written and the events the
    recordings gained and lost (more deletions than the frames count where a bin was clipped).
    """

    checkpoint: str
    cache: str
    split: str
    threat: str
    judge: str
    n_samples: int
    seed: int
    members: list[str]
    attacks: list[str]
    budgets: list[int]
    per_bin_cap: int | None
    insert_only: bool
    step_events: int
    count_cap: int
    unit: str
    results: list[dict[str, Any]]
    clean_accuracy: float | None
    recordings: dict[str, Any] | None
    seconds: float
    table: str
    paths: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if k != "table"}

    def summary(self) -> str:
        return f"{self.table}\n\n{self.n_samples} samples, judged on {self.judge}; written: {', '.join(self.paths.values())}"


@dataclass
class _Row:
    correct: int = 0
    inserted: int = 0
    deleted: int = 0
    disagree: int = 0


def run(config: Any) -> EventAttackResult:
    """Attack the ``split`` of ``config.cache`` with event budgets (``config`` is an attack stage Config)."""
    from dvsguard.attack.base import eval_mode, predict
    from dvsguard.attack.ensemble import Ensemble, has_spiking_neurons, paper_modes
    from dvsguard.attack.evaluate import cache_batches, expand_modes, select_indices
    from dvsguard.attack.events import EventBudget, events_changed, make_event_attack, to_counts
    from dvsguard.attack.writeback import check_realisable
    from dvsguard.data.frames import FramingConfig
    from dvsguard.errors import AttackError
    from dvsguard.snn.checkpoint import load_model
    from dvsguard.stages.attack import checked_split

    t0 = time.perf_counter()
    target, payload = load_model(config.checkpoint)
    test_path, info, _ = checked_split(config, target, payload, None)
    if info.count_cap is None:
        raise AttackError(f"{test_path}: the event threat model needs integer counts (events protocol); this cache "
                          f"holds resized raw counts (paper protocol)")
    cap = int(info.count_cap)
    attacks = [a.strip().lower() for a in config.event_attacks]
    budgets = [int(b) for b in config.budget]
    makers = {name: (lambda b, name=name: make_event_attack(name, EventBudget(b, cap, config.per_bin_cap,
                                                                               config.insert_only),
                                                           step_events=config.step_events, seed=config.seed))
              for name in attacks if name != "clean"}
    for make in makers.values():
        for b in budgets:
            make(b)  # unknown names and bad budgets fail here, before any work
    framing = FramingConfig.from_dict(info.framing)
    writer = None
    if config.write_recordings is not None:
        check_realisable(framing)
        writer = _Writer(Path(config.write_recordings), test_path, framing, info.classes)
    judge: nn.Module = (IntegerNet(Path(config.netx), cap, (info.n_frames, 2, info.height, info.width))
                        if config.netx is not None else target)
    modes = expand_modes(config.modes) if config.modes is not None else None
    members = ([str(m) for m in (modes if modes is not None else paper_modes())]
               if config.ensemble and has_spiking_neurons(target) else [])

    indices = select_indices(info.n_samples, config.limit, config.seed)
    rows = {(a, b): _Row() for a in attacks if a != "clean" for b in budgets}
    clean_correct = total = 0
    for x, y, ids in cache_batches(test_path, indices, config.batch):
        counts0 = to_counts(x, cap)
        with eval_mode(judge):
            clean_correct += int((predict(judge, x) == y).sum())
        total += int(y.shape[0])
        for (name, budget), row in rows.items():
            attack = makers[name](budget)
            use_modes = modes if config.ensemble else (None,)
            result = Ensemble(attack, modes=use_modes).run(target, x, y, ids, target=judge)
            counts = to_counts(result.x_adv, cap)
            inserted, deleted = events_changed(counts, counts0)
            if bool(((inserted + deleted) > budget).any()):  # the attacks guarantee this; a breach is a bug
                raise AttackError(f"{name}: spent more than {budget} events on a sample")
            row.correct += int((~result.fooled).sum())
            row.inserted += int(inserted.sum())
            row.deleted += int(deleted.sum())
            if judge is not target:
                with eval_mode(target), eval_mode(judge):
                    row.disagree += int((predict(target, result.x_adv) != predict(judge, result.x_adv)).sum())
            if writer is not None:
                writer.write(f"{name}-{budget}", ids, y, counts0, counts)
    if total == 0:
        raise AttackError(f"{test_path}: no samples selected")
    records = [{"attack": "clean", "budget": 0, "correct": clean_correct, "total": total,
                "accuracy": clean_correct / total, "events_inserted": 0, "events_deleted": 0}]
    for (name, budget), row in rows.items():
        record = {"attack": name, "budget": budget, "correct": row.correct, "total": total,
                  "accuracy": row.correct / total, "events_inserted": row.inserted, "events_deleted": row.deleted,
                  "events_per_attacked_sample": (row.inserted + row.deleted) / clean_correct if clean_correct else 0.0}
        if judge is not target:
            record["float_disagreement"] = row.disagree / total
        records.append(record)
    result = EventAttackResult(
        checkpoint=str(config.checkpoint), cache=str(test_path), split=config.split, threat="events",
        judge=f"integer network {config.netx}" if config.netx is not None else "float model",
        n_samples=total, seed=config.seed, members=members, attacks=attacks, budgets=budgets,
        per_bin_cap=config.per_bin_cap, insert_only=config.insert_only, step_events=config.step_events,
        count_cap=cap, unit="events per sample (L1 of the change of the integer counts per frame bin)",
        results=records, clean_accuracy=clean_correct / total,
        recordings=writer.summary() if writer is not None else None,
        seconds=round(time.perf_counter() - t0, 3), table=markdown_table(records, budgets),
    )
    _write(result, Path(config.out) if config.out is not None else Path(config.checkpoint).parent)
    log.info("event attack on %d samples took %.1f s", total, result.seconds)
    return result


class _Writer:
    """Writes adversarial samples as recordings under ``root/<attack>-<budget>/<class>/``."""

    def __init__(self, root: Path, cache: Path, framing: Any, classes: list[str]) -> None:
        import h5py

        from dvsguard.errors import AttackError

        with h5py.File(cache, "r") as f:
            self.sources = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sources"][()]]
            base = f.attrs.get("source_root", "")
        base = base.decode() if isinstance(base, bytes) else str(base)
        self.base = Path(base) if base else None
        if not self.sources:
            raise AttackError(f"{cache}: lists no source recordings to write back")
        self.root, self.framing, self.classes = root, framing, classes
        self.written = 0
        self.inserted = 0
        self.deleted = 0

    def write(self, folder: str, ids: Tensor, y: Tensor, counts0: Tensor, counts: Tensor) -> None:
        from dvsguard.attack.writeback import adversarial_events, write_recording
        from dvsguard.data.events import read_events

        for k, (i, label) in enumerate(zip(ids.tolist(), y.tolist())):
            source = Path(self.sources[i])
            path = self.base / source if self.base is not None and not source.is_absolute() else source
            rec = read_events(path)
            edited = adversarial_events(rec, self.framing, counts0[:, k].numpy().astype(np.uint8),
                                        counts[:, k].numpy().astype(np.uint8), where=str(path))
            out = self.root / folder / self.classes[label] / f"{i:05d}-{source.stem}.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_recording(out, edited, rec.sensor_size)
            self.written += 1
            self.inserted += edited.inserted
            self.deleted += edited.deleted

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.root), "written": self.written, "events_inserted": self.inserted,
                "events_deleted": self.deleted}


def markdown_table(records: list[dict[str, Any]], budgets: list[int]) -> str:
    """Rows = attacks, columns = event budgets (accuracy %)."""
    head = ["Attack"] + [f"{b} events" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(budgets)) + "|"]
    acc = {(r["attack"], r["budget"]): r["accuracy"] for r in records}
    for name in dict.fromkeys(r["attack"] for r in records):
        cells = [f"{100 * acc[(name, 0 if name == 'clean' else b)]:.2f}" for b in budgets]
        lines.append("| " + " | ".join(["Clean" if name == "clean" else name] + cells) + " |")
    return "\n".join(lines)


def _write(result: EventAttackResult, out: Path) -> None:
    """attack_events.md (header + table) and attack_events.json (the result with its table)."""
    import json

    from dvsguard.atomic import write_text

    paths = {"json": out / "attack_events.json", "md": out / "attack_events.md"}
    result.paths = {k: str(v) for k, v in paths.items()}
    header = (f"# Robust accuracy (%) of {Path(result.checkpoint).name} against event budgets\n\n"
              f"{result.n_samples} samples of {Path(result.cache).name}, judged on the {result.judge}; budget in "
              f"{result.unit}, counts clipped at {result.count_cap}"
              f"{f', at most {result.per_bin_cap} per bin' if result.per_bin_cap is not None else ''}"
              f"{', insertions only' if result.insert_only else ''}; "
              f"{'ensemble over ' + ', '.join(result.members) if result.members else 'no ensemble'}; "
              f"seed {result.seed}.\n\n")
    write_text(paths["md"], header + result.table + "\n")
    write_text(paths["json"], json.dumps({**result.to_json(), "table": result.table}, indent=2, default=str) + "\n")
