"""The trainer: files it writes, exact resume after SIGKILL, NaN stop, DDP with two CPU processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dvsguard.data.cache import split_path
from dvsguard.data.dataset import FrameDataset
from dvsguard.errors import ConfigError, TrainError
from dvsguard.snn.checkpoint import load_checkpoint, load_model
from dvsguard.snn.vgg import SpikingVGG
from dvsguard.train import rng
from dvsguard.train import trainer as trainer_mod
from dvsguard.train.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cfg(cache, **kw) -> TrainConfig:
    base = dict(cache=str(cache), defense="vanilla", preset="tiny", epochs=2, batch=8, limit_train=24,
                limit_test=12, robust_limit=6, augment=False)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_metrics_and_config(digits_cache, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = _cfg(digits_cache, defense="sr", lam=0.01)
    result = train(cfg, run, device="cpu")
    assert result["epochs"] == 2 and result["world"] == 1
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["train_n"] == 24 and r["test_n"] == 12 and r["robust_n"] == 6
        # the logged loss is the sum of its logged terms: ce + λ·sr
        assert r["train_loss"] == pytest.approx(r["train_ce"] + 0.01 * r["train_sr"], rel=1e-5)
    assert rows[1]["lr"] < rows[0]["lr"] == 0.1  # cosine schedule
    # the last epoch's clean and FGSM accuracies, recomputed by hand from last.pt on the seeded
    # test subsets (first 12 / first 6 of a permutation seeded by cfg.seed, in index order)
    final, _ = load_model(run / "last.pt")
    ds = FrameDataset(split_path(digits_cache, "test"))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))
    clean_ok = robust_ok = 0
    for limit, robust in ((12, False), (6, True)):
        idx = perm[:limit].sort().values.tolist()
        for i in range(0, limit, cfg.batch):
            x = torch.stack([ds[j][0] for j in idx[i : i + cfg.batch]], dim=1)
            y = torch.tensor([ds[j][1] for j in idx[i : i + cfg.batch]])
            if robust:
                xg = x.clone().requires_grad_(True)
                torch.nn.functional.cross_entropy(final(xg), y).backward()
                x = (x + cfg.eps * xg.grad.sign()).clamp(0.0, 1.0)
            with torch.no_grad():
                ok = int((final(x).argmax(1) == y).sum())
            robust_ok, clean_ok = (robust_ok + ok, clean_ok) if robust else (robust_ok, clean_ok + ok)
    ds.close()
    assert rows[1]["test_acc"] == pytest.approx(clean_ok / 12)
    assert rows[1]["robust_acc"] == pytest.approx(robust_ok / 6)

    last = load_checkpoint(run / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 2 and last["train"]["defense"] == "sr"
    assert last["data"]["classes"] == [f"digit{i}" for i in range(10)]
    assert last["data"]["value_range"] == [0.0, 1.0]
    assert last["data"]["framing"]["n_frames"] == 4
    state = last["trainer"]
    assert set(state) >= {"optimizer", "scheduler", "rng", "history", "best_acc"}
    assert state["history"] == rows and state["best_acc"] == max(r["test_acc"] for r in rows)
    assert len(state["rng"]) == 1  # one entry per rank
    torch.Generator().set_state(state["rng"][0]["generators"]["attack"])  # a usable generator state
    before = torch.get_rng_state()
    torch.set_rng_state(state["rng"][0]["torch"])  # a usable global generator state
    torch.set_rng_state(before)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2

    model, best = load_model(run / "best.pt")
    assert best["epoch"] == result["best_epoch"]
    assert best["metrics"]["test_acc"] == result["best_test_acc"]
    assert "trainer" not in best
    assert model.cfg.num_classes == 10 and model.cfg.input_size == 16
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["defense"] == "sr" and config["train"]["weight_decay"] == 5e-4


def test_rat_trains_without_weight_decay(digits_cache, tmp_path, one_thread):
    cfg = _cfg(digits_cache, defense="rat", epochs=1)
    assert cfg.resolved_weight_decay == 0.0
    train(cfg, tmp_path / "rat", device="cpu")
    assert load_checkpoint(tmp_path / "rat" / "last.pt")["trainer"]["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="without weight decay"):
        train(_cfg(digits_cache, defense="rat", weight_decay=1e-4), tmp_path / "rat2", device="cpu")


def test_adam_optimizer_trains_and_is_checkpointed(digits_cache, tmp_path, one_thread):
    with pytest.raises(ConfigError, match="optimizer 'rmsprop' is unknown"):
        _cfg(digits_cache, optimizer="rmsprop")
    train(_cfg(digits_cache, optimizer="adam", lr=1e-3, epochs=1), tmp_path / "adam", device="cpu")
    state = load_checkpoint(tmp_path / "adam" / "last.pt")["trainer"]["optimizer"]
    assert state["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi)), abs=1e-12)
    assert any("exp_avg_sq" in s for s in state["state"].values())  # Adam's second moments, not SGD momentum


def test_resume_refuses_other_settings_and_skips_finished_runs(digits_cache, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=1), run, device="cpu")
    with pytest.raises(ConfigError, match="lr=0.05.*lr=0.1"):
        train(_cfg(digits_cache, epochs=1, lr=0.05), run, resume=True, device="cpu")
    done = train(_cfg(digits_cache, epochs=1), run, resume=True, device="cpu")
    assert done["resumed_from"] == 1 and done["epochs"] == 1
    assert len(_metrics(run)) == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits_cache, tmp_path, one_thread, monkeypatch):
    real = trainer_mod.make_defense
    calls = {"n": 0}

    class Poisoned:
        def __init__(self, inner):
            self.inner, self.name, self.weight_decay_allowed = inner, inner.name, inner.weight_decay_allowed

        def loss(self, model, x, y):
            calls["n"] += 1
            loss, logits = self.inner.loss(model, x, y)
            return (loss * float("nan") if calls["n"] == 5 else loss), logits  # epoch 2, step 2 (3 steps/epoch)

        def after_step(self, model):
            self.inner.after_step(model)

        @property
        def last_terms(self):
            return self.inner.last_terms

    monkeypatch.setattr(trainer_mod, "make_defense", lambda *a, **k: Poisoned(real(*a, **k)))
    run = tmp_path / "run"
    with pytest.raises(TrainError, match=r"epoch 2 step 2: loss is nan .*last good checkpoint .*last\.pt is kept"):
        train(_cfg(digits_cache, epochs=3), run, device="cpu")
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in _metrics(run)] == [1]
    _, best = load_model(run / "best.pt")
    assert best["epoch"] == 1


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dvsguard", "train", *args]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]["state_dict"]


def _kill_in_epoch_2(args: list[str], run: Path, fraction: float) -> bool:
    """Start a 2-epoch run, SIGKILL it ``fraction`` of epoch 1's time after epoch 1 is logged;
    whether the kill landed in epoch 2 (``last.pt`` still holds epoch 1)."""
    proc = subprocess.Popen(_cli([*args, "--out", str(run)]), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, "the run ended before its first epoch was logged"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(fraction * _metrics(run)[0]["train_seconds"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return load_checkpoint(run / "last.pt")["epoch"] == 1


def test_resume_after_sigkill_reaches_the_same_weights(digits_cache, tmp_path, one_thread):
    args = ["--cache", str(digits_cache), "--defense", "pgd-at", "--pgd-steps", "2", "--preset", "tiny",
            "--epochs", "2", "--batch", "4", "--limit-train", "64", "--robust-limit", "4", "--limit-test", "8",
            "--seed", "3"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    # the uninterrupted reference, in this process with the same single thread as the subprocesses
    train(_cfg(digits_cache, defense="pgd-at", pgd_steps=2, epochs=2, batch=4, limit_train=64, robust_limit=4,
               limit_test=8, seed=3, augment=True), ref, device="cpu")

    # Kill early in epoch 2's 16 steps. Epoch 1 includes warm-up, so its time only bounds epoch
    # 2's; when a fast machine finishes epoch 2 before the kill, start over with a shorter wait.
    for fraction in (0.05, 0.0):
        shutil.rmtree(run, ignore_errors=True)
        if _kill_in_epoch_2(args, run, fraction):
            break
    else:
        pytest.fail("every kill came after epoch 2 had finished")

    out = subprocess.run(_cli([*args, "--out", str(run), "--resume", "--json"]), env=ENV, check=True,
                         capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == 1 and result["epochs"] == 2
    a, b = _state(ref / "last.pt"), _state(run / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(_metrics(ref)) == strip(_metrics(run))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu_trains(digits_cache, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    run = tmp_path / "ddp"
    cmd = [torchrun, "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "dvsguard", "train", "--cache", str(digits_cache),
           "--defense", "sr", "--preset", "tiny", "--epochs", "2", "--batch", "8", "--limit-train", "16",
           "--robust-limit", "4", "--device", "cpu", "--out", str(run), "--json"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    result = json.loads(lines[0])
    assert result["world"] == 2 and result["epochs"] == 2
    rows = _metrics(run)
    assert [r["train_n"] for r in rows] == [16, 16]  # 8 per rank, summed
    assert rows[0]["test_n"] == 20  # the whole test split, shared between ranks
    last = load_checkpoint(run / "last.pt")
    assert last["trainer"]["world"] == 2 and len(last["trainer"]["rng"]) == 2
    assert not torch.equal(last["trainer"]["rng"][0]["torch"], last["trainer"]["rng"][1]["torch"])
    model, _ = load_model(run / "last.pt")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    rng.seed_everything(0)  # the trainer's initialisation
    init = SpikingVGG(model.cfg)
    moved = [not torch.equal(a, b) for a, b in zip(init.parameters(), model.parameters())]
    assert all(moved)


def test_bf16_autocast_run_trains_and_checkpoints_float32(digits_cache, tmp_path, one_thread):
    run = tmp_path / "amp"
    result = train(_cfg(digits_cache, defense="sr-star", lam=0.01, epochs=1, amp=True), run, device="cpu")
    assert result["epochs"] == 1
    model, payload = load_model(run / "last.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    m = payload["metrics"]
    assert math.isfinite(m["train_loss"])
    assert m["train_loss"] == pytest.approx(m["train_ce"] + 0.01 * m["train_sr"], rel=1e-5)


def test_train_leaves_torch_settings_as_it_found_them(digits_cache, tmp_path):
    """Training in-process (as the pipeline runner does) must not change how later stages compute."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    assert before[0] is False
    train(_cfg(digits_cache, epochs=1), tmp_path / "run", threads=1)
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_an_earlier_run_is_refused_without_resume_or_overwrite(digits_cache, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=1), run, device="cpu")
    before = _files(run)
    with pytest.raises(TrainError, match=r"run: holds an earlier run \(last\.pt, best\.pt, metrics\.jsonl, config\.json\); "
                                         r"pass --resume to continue it or --overwrite to replace it"):
        train(_cfg(digits_cache, epochs=1, lr=0.05), run, device="cpu")
    assert _files(run) == before


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_a_checkpoint(digits_cache, tmp_path, one_thread,
                                                                             monkeypatch):
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=1), run, device="cpu")
    before = _files(run)

    def fail_at_first_epoch(*args, **kwargs):
        raise TrainError("epoch 1 step 1: loss is nan")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", fail_at_first_epoch)
    with pytest.raises(TrainError, match="loss is nan"):
        train(_cfg(digits_cache, epochs=1, lr=0.05), run, device="cpu", overwrite=True)
    assert _files(run / "previous") == before  # nothing of the earlier run is lost
    with pytest.raises(TrainError, match="loss is nan"):  # a second failed attempt keeps it too
        train(_cfg(digits_cache, epochs=1, lr=0.05), run, device="cpu", overwrite=True)
    assert _files(run / "previous") == before
    monkeypatch.undo()
    done = train(_cfg(digits_cache, epochs=1, lr=0.05), run, device="cpu", overwrite=True)
    assert not (run / "previous").exists() and done["epochs"] == 1
    assert load_checkpoint(run / "last.pt")["train"]["lr"] == 0.05


def test_init_from_the_folder_being_overwritten_starts_from_its_weights(digits_cache, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=1), run, device="cpu")
    start = _state(run / "best.pt")
    done = train(_cfg(digits_cache, epochs=1, init=str(run / "best.pt"), lr=1e-9), run, device="cpu", overwrite=True)
    assert done["epochs"] == 1 and not (run / "previous").exists()
    after = _state(run / "last.pt")
    assert all(torch.allclose(after[k].float(), start[k].float(), atol=1e-4) for k in start if "running" not in k and "num_batches" not in k)  # BN statistics still move
