"""The event threat model: budgets, the greedy and random event attacks, recordings written back, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dvsguard.attack.ensemble import Ensemble
from dvsguard.attack.events import (
    EventBudget,
    GreedyEvents,
    RandomEvents,
    apply_step,
    events_changed,
    to_counts,
    to_input,
)
from dvsguard.errors import AttackError

from .conftest import TinyNet

CAP = 3


def _counts(seed: int, shape: tuple[int, ...] = (4, 6, 2, 8, 8)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CAP + 1, shape, generator=g)


@pytest.mark.parametrize("attack_cls", [GreedyEvents, RandomEvents])
@pytest.mark.parametrize("events,per_bin,insert_only", [(0, None, False), (1, None, False), (13, None, False),
                                                         (40, 1, False), (40, 2, True), (200, None, True)])
def test_budget_is_spent_exactly_and_counts_stay_counts(attack_cls, events, per_bin, insert_only) -> None:
    torch.manual_seed(0)
    model = TinyNet(classes=4, size=8).eval()
    c0 = _counts(1)
    y = torch.arange(6) % 4
    budget = EventBudget(events, CAP, per_bin=per_bin, insert_only=insert_only)
    x_adv = attack_cls(budget, step_events=5, seed=3)(model, to_input(c0, CAP), y, sample_ids=list(range(6)))
    c = to_counts(x_adv, CAP)
    inserted, deleted = events_changed(c, c0)
    assert torch.equal(inserted + deleted, torch.full((6,), events))  # plenty of room: every event is spent
    assert int(c.min()) >= 0 and int(c.max()) <= CAP
    assert int((c - c0).abs().max()) <= (per_bin or CAP)
    if insert_only:
        assert int(deleted.sum()) == 0
    assert torch.equal(x_adv, to_input(c, CAP))  # the model input is exactly counts / cap


def test_step_respects_the_remaining_budget_and_never_undoes_a_change() -> None:
    c0 = torch.tensor([[[1, 1, 1, 0]]]).reshape(1, 1, 4)  # [T=1, B=1, 4 bins]
    budget = EventBudget(3, CAP)
    c = apply_step(c0, c0, torch.tensor([5.0, -4.0, 3.0, -2.0]).reshape(1, 1, 4), budget, k=4)
    # bin 3 (count 0) cannot lose an event; the best three feasible changes are made
    assert c.flatten().tolist() == [2, 0, 2, 0]
    again = apply_step(c, c0, torch.tensor([-9.0, 9.0, 1.0, 1.0]).reshape(1, 1, 4), budget, k=4)
    assert torch.equal(again, c)  # budget spent: reversing bins 0 and 1 would not be allowed either
    wider = EventBudget(5, CAP)
    step = apply_step(c, c0, torch.tensor([-9.0, 9.0, 1.0, 1.0]).reshape(1, 1, 4), wider, k=4)
    assert step.flatten().tolist() == [2, 0, 3, 1]  # only the bins not changed the other way


def test_frames_that_are_not_counts_are_refused() -> None:
    x = torch.full((2, 1, 2, 4, 4), 0.5 / CAP)
    with pytest.raises(AttackError, match="not event counts / 3"):
        GreedyEvents(EventBudget(4, CAP))(TinyNet(size=4), x, torch.zeros(1, dtype=torch.long))


def test_greedy_raises_the_loss_more_than_random_events() -> None:
    torch.manual_seed(0)
    model = TinyNet(classes=4, size=8).eval()
    c0 = _counts(2, (4, 16, 2, 8, 8))
    y = torch.arange(16) % 4
    x = to_input(c0, CAP)
    budget = EventBudget(24, CAP)
    loss = {}
    for cls in (GreedyEvents, RandomEvents):
        x_adv = cls(budget, step_events=4)(model, x, y, sample_ids=list(range(16)))
        with torch.no_grad():
            loss[cls.name] = torch.nn.functional.cross_entropy(model(x_adv), y).item()
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(x), y).item()
    assert loss["greedy"] > loss["random"] and loss["greedy"] > clean


# ----------------------------------------------------------------------------- recordings written back


@pytest.fixture(scope="module")
def time_cache(tmp_path_factory) -> Path:
    """A test split of 32×32 digits framed by time into 4 frames of 16×16 (count cap 3): downsampled 2×."""
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.data.synth import SynthConfig, make_digits

    root = tmp_path_factory.mktemp("time-cache")
    make_digits(root / "rec", SynthConfig(per_class=3, size=32, seed=2), workers=1)
    result = preprocess(str(root / "rec"), root / "cache",
                        FramingConfig(n_frames=4, height=16, width=16, mode="time", count_cap=CAP),
                        workers=1, test_fraction=0.34, progress=False)
    return Path(result.test)


@pytest.fixture(scope="module")
def time_checkpoint(tmp_path_factory, time_cache: Path) -> Path:
    """An untrained tiny SpikingVGG for ``time_cache``, with the cache's framing recorded (exportable)."""
    from dvsguard.data.cache import open_cache
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    info = open_cache(time_cache)
    torch.manual_seed(4)
    model = SpikingVGG(VGGConfig.preset("tiny", num_classes=10))
    data = {"framing": info.framing, "classes": info.classes, "protocol": info.protocol,
            "value_range": list(info.value_range)}
    return save_checkpoint(tmp_path_factory.mktemp("time-ckpt") / "model.pt",
                           {"model": model_payload(model), "data": data})


def _frames_by_source(folder: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """``preprocess`` of a folder of recordings (same framing as ``time_cache``): frames by file name."""
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess

    result = preprocess(str(folder), cache_dir, FramingConfig(n_frames=4, height=16, width=16, mode="time",
                                                               count_cap=CAP),
                        workers=1, test_fraction=0.5, progress=False)
    out = {}
    for path in (result.train, result.test):
        with h5py.File(path, "r") as f:
            for src, frames in zip(f["sources"][()], f["frames"][()]):
                out[Path(src.decode()).name] = frames
    return out


@pytest.mark.parametrize("insert_only", [False, True])
def test_written_recordings_preprocess_to_the_adversarial_frames(time_cache: Path, tmp_path: Path,
                                                                 insert_only: bool) -> None:
    from dvsguard.attack.writeback import adversarial_events, write_recording
    from dvsguard.data.events import read_events
    from dvsguard.data.frames import FramingConfig

    with h5py.File(time_cache, "r") as f:
        clean = f["frames"][()]
        sources = [s.decode() for s in f["sources"][()]]
        root = Path(f.attrs["source_root"])
        cfg = FramingConfig.from_dict(json.loads(f.attrs["framing"]))
        classes = json.loads(f.attrs["classes"])
        labels = f["labels"][()]
    c0 = torch.from_numpy(clean).long().transpose(0, 1)
    budget = EventBudget(40, CAP, insert_only=insert_only)
    x_adv = RandomEvents(budget, step_events=40, seed=1)(torch.nn.Identity(), to_input(c0, CAP),
                                                        torch.zeros(len(sources), dtype=torch.long))
    adversarial = to_counts(x_adv, CAP).transpose(0, 1).numpy().astype(np.uint8)
    assert not np.array_equal(adversarial, clean)
    written = {}
    for i, src in enumerate(sources):
        rec = read_events(root / src)
        edited = adversarial_events(rec, cfg, clean[i], adversarial[i], where=src)
        assert edited.inserted >= int(np.clip(adversarial[i].astype(int) - clean[i], 0, None).sum())
        name = f"{i:03d}.npz"
        write_recording(tmp_path / "adv" / classes[labels[i]] / name, edited, rec.sensor_size)
        written[name] = adversarial[i]
    framed = _frames_by_source(tmp_path / "adv", tmp_path / "cache")
    assert set(framed) == set(written)
    for name, frames in written.items():
        assert np.array_equal(framed[name], frames), name


def test_write_back_refuses_equal_count_frames(digits_cache: Path, digits_checkpoints, tmp_path: Path) -> None:
    from dvsguard.data.cache import split_path
    from dvsguard.stages import attack
    from dvsguard.stages.base import build

    config = build(attack.Config, {"checkpoint": str(digits_checkpoints[0]), "cache": str(split_path(digits_cache, "test")),
                                   "threat": "events", "write_recordings": str(tmp_path / "adv"),
                                   "out": str(tmp_path / "out"), "limit": 2, "ensemble": False})
    with pytest.raises(AttackError, match="time-binned frames"):
        attack.run(config)


def test_cli_event_attack_writes_recordings_that_score_its_robust_accuracy(time_cache: Path, time_checkpoint: Path,
                                                                            tmp_path: Path) -> None:
    """``attack --threat events --write-recordings``: JSON figures, budgets, and recordings that frame to
    examples the model classifies with exactly the reported robust accuracy."""
    from typer.testing import CliRunner

    from dvsguard.cli import app
    from dvsguard.data.dataset import FrameDataset
    from dvsguard.snn.checkpoint import load_model

    out, adv = tmp_path / "out", tmp_path / "adv"
    args = ["attack", str(time_checkpoint), "--cache", str(time_cache), "--threat", "events", "--budget", "0,12",
            "--step-events", "4", "--modes", "triangle:1,rga", "--write-recordings", str(adv), "--out", str(out),
            "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["threat"] == "events" and doc["budgets"] == [0, 12] and doc["judge"] == "float model"
    rows = {(r["attack"], r["budget"]): r for r in doc["results"]}
    n = doc["n_samples"]
    assert n == FrameDataset(time_cache).info.n_samples
    for name in ("greedy", "random"):
        assert rows[(name, 0)]["accuracy"] == rows[("clean", 0)]["accuracy"]
        assert rows[(name, 0)]["events_inserted"] + rows[(name, 0)]["events_deleted"] == 0
        spent = rows[(name, 12)]["events_inserted"] + rows[(name, 12)]["events_deleted"]
        assert 0 < spent <= 12 * rows[("clean", 0)]["correct"]
    assert json.loads((out / "attack_events.json").read_text())["results"] == doc["results"]
    assert doc["recordings"]["written"] == 4 * n

    model, _ = load_model(time_checkpoint)
    framed = _frames_by_source(adv / "greedy-12", tmp_path / "cache")
    clean = FrameDataset(time_cache)
    correct = 0
    for name, frames in framed.items():
        i = int(name.split("-")[0])
        diff = frames.astype(int) - clean.counts(i).astype(int)
        assert np.abs(diff).sum() <= 12 and frames.max() <= CAP
        x = torch.from_numpy(frames.astype(np.float32) / np.float32(CAP)).unsqueeze(1)
        with torch.no_grad():
            correct += int(model(x).argmax(1).item() == int(clean.labels[i]))
    assert correct == rows[("greedy", 12)]["correct"]


def test_success_on_the_integer_network_is_what_intsim_predicts_on_the_written_recordings(
        time_cache: Path, time_checkpoint: Path, tmp_path: Path) -> None:
    """With ``--netx`` the robust accuracy is the integer network's: simulating the recordings written
    back (framed by ``preprocess``) gives exactly the reported correct count."""
    from dvsguard.data.dataset import FrameDataset
    from dvsguard.export.exporter import export_checkpoint
    from dvsguard.export.intsim import load_netx, simulate
    from dvsguard.stages import attack
    from dvsguard.stages.base import build

    exported, _, _ = export_checkpoint(time_checkpoint, tmp_path / "export")
    config = build(attack.Config, {"checkpoint": str(time_checkpoint), "cache": str(time_cache), "threat": "events",
                                   "budget": "20", "event_attacks": "clean,greedy", "modes": "rga",
                                   "netx": str(exported.net_path), "write_recordings": str(tmp_path / "adv"),
                                   "out": str(tmp_path / "out")})
    result = attack.run(config)
    rows = {r["attack"]: r for r in result.results}
    assert result.judge.startswith("integer network") and 0 <= rows["greedy"]["float_disagreement"] <= 1
    framed = _frames_by_source(tmp_path / "adv" / "greedy-20", tmp_path / "cache")
    names = sorted(framed)
    clean = FrameDataset(time_cache)
    labels = np.array([clean.labels[int(n.split("-")[0])] for n in names])
    v_out = simulate(load_netx(exported.net_path), np.stack([framed[n] for n in names])).v_out
    assert int((v_out.argmax(1) == labels).sum()) == rows["greedy"]["correct"]
    assert rows["greedy"]["events_inserted"] + rows["greedy"]["events_deleted"] > 0


@pytest.mark.slow
def test_guided_events_hurt_a_trained_model_more_than_random_events(digits_snn) -> None:
    """On the trained small SpikingVGG (float model judge, the paper's four gradient modes), greedy
    event attacks fool at least as many test samples as random events of the same budget, and some."""
    from dvsguard.attack.evaluate import cache_batches

    from .conftest import single_thread

    x, y, ids = next(cache_batches(digits_snn.test_cache, list(range(48)), 48))
    fooled = {}
    with single_thread():
        for budget in (8, 32):
            for cls in (GreedyEvents, RandomEvents):
                attack = cls(EventBudget(budget, 15), step_events=8)
                fooled[(cls.name, budget)] = int(Ensemble(attack).run(digits_snn.model, x, y, ids).fooled.sum())
    clean = int((digits_snn.model(x).argmax(1) != y).sum())
    for budget in (8, 32):
        assert fooled[("greedy", budget)] >= fooled[("random", budget)]
    assert fooled[("greedy", 32)] > clean
