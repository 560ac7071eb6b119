"""Ensemble-attack cost: early exit against running every member on every sample; PGD speed.

On one model and one set of test samples this measures

* the paper's four-member ensemble (triangle γ=1, sigmoid γ=4, atan γ=2, RGA) of a base attack
  (default PGD10 at ε = 8/255), run exhaustively (every member attacks every sample) and with
  per-sample early exit (a member attacks only the samples no earlier member fooled); it checks
  that both give the same fooled flags and prints the time ratio early-exit / exhaustive;
* PGD iterations per second (one forward + backward of the batch per iteration, triangle
  surrogate) and sample-iterations per second.

Without ``--checkpoint`` it first trains a vanilla model (plain cross-entropy, Adam, 3 epochs;
clean accuracy 1.0, PGD10 at 8/255 fools it on every sample, uniform noise of the same ε on none)
on event-like patterns: 8 classes, a denser random patch in one of four quadrants on one polarity
over sparse background events, T = 10 frames of 32×32. ``--digits``
instead trains with ``dvsguard.train`` on the embedded digits (``synth``), which takes far longer
to reach a useful clean accuracy.

    .venv/bin/python benchmarks/attack_eval.py
    .venv/bin/python benchmarks/attack_eval.py --checkpoint runs/vanilla/best.pt --cache data_cache/x-train-k.h5 --n 128
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvsguard.attack import make_attack  # noqa: E402
from dvsguard.attack.base import predict  # noqa: E402
from dvsguard.attack.ensemble import Ensemble  # noqa: E402
from dvsguard.attack.evaluate import select_indices  # noqa: E402
from dvsguard.units import parse_eps  # noqa: E402


def build_vanilla(work: Path, per_class: int, size: int, frames: int, epochs: int, preset: str,
                  optimizer: str = "sgd", lr: float = 0.05) -> tuple[Path, Path]:
    """Synthesize digits, cache them, train a vanilla model (``optimizer`` at ``lr``); return (checkpoint, train cache)."""
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.data.synth import SynthConfig, make_digits
    from dvsguard.train.trainer import TrainConfig, train

    t0 = time.perf_counter()
    make_digits(work / "rec", SynthConfig(per_class=per_class, size=size))
    cache = preprocess(str(work / "rec"), work / "cache", FramingConfig(n_frames=frames, height=size, width=size),
                       workers=2, progress=False)
    cfg = TrainConfig(cache=str(cache.train), defense="vanilla", preset=preset, epochs=epochs, batch=24,
                      optimizer=optimizer, lr=lr, augment=False, robust_limit=0)
    result = train(cfg, work / "run", device="cpu")
    print(f"built a vanilla {preset} model in {time.perf_counter() - t0:.0f} s: "
          f"best clean test accuracy {result['best_test_acc']:.3f}")
    return Path(result["best"]), Path(cache.train)


def patterns(n: int, seed: int, frames: int = 10, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[T, n, 2, size, size]`` in [0, 1]: sparse background events (p = 0.08) of value 0.2;
    class c adds events (p = 0.35) of value 0.2 in a patch of quadrant c % 4 on polarity c // 4."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 8, (n,), generator=g)
    x = (torch.rand(frames, n, 2, size, size, generator=g) < 0.08).float() * 0.2
    h = size // 2
    for i in range(n):
        c = int(y[i])
        r0, c0 = (c % 4 // 2) * h, (c % 2) * h
        patch = (torch.rand(frames, h - 6, h - 6, generator=g) < 0.35).float() * 0.2
        x[:, i, c // 4, r0 + 3 : r0 + h - 3, c0 + 3 : c0 + h - 3] += patch
    return x.clamp(0.0, 1.0), y


def train_on_patterns(preset: str, epochs: int, n_test: int, seed: int):
    """A vanilla SpikingVGG trained on :func:`patterns`; returns (model, x_test, y_test, ids)."""
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x, y = patterns(512, seed=seed)
    model = SpikingVGG(VGGConfig.preset(preset, num_classes=8, input_size=32))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, x.shape[1], 32):
            loss = torch.nn.functional.cross_entropy(model(x[:, i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = patterns(n_test, seed=seed + 1)
    print(f"trained a vanilla {preset} model on patterns in {time.perf_counter() - t0:.0f} s")
    return model, xt, yt, torch.arange(n_test)


def load_samples(cache: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from dvsguard.data.cache import open_cache, split_path
    from dvsguard.data.dataset import FrameDataset

    test = Path(split_path(cache, "test"))
    ds = FrameDataset(test)
    ids = select_indices(len(ds), n, seed)
    items = [ds[i] for i in ids]
    x = torch.stack([it[0] for it in items], dim=1)
    y = torch.tensor([it[1] for it in items])
    assert open_cache(test).value_range == (0.0, 1.0)
    return x, y, torch.tensor(ids)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="target model (default: train a vanilla one)")
    ap.add_argument("--cache", type=Path, help="frame cache of the checkpoint's data (its test split is used)")
    ap.add_argument("--attack", default="pgd10", help="base attack of the ensemble")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--n", type=int, default=64, help="test samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digits", action="store_true", help="train on the embedded digits (no --checkpoint)")
    ap.add_argument("--per-class", type=int, default=30, help="synth recordings per class (--digits)")
    ap.add_argument("--size", type=int, default=32, help="synth sensor and frame size (--digits)")
    ap.add_argument("--frames", type=int, default=10, help="frames T (--digits)")
    ap.add_argument("--epochs", type=int, default=3, help="vanilla training epochs (no --checkpoint)")
    ap.add_argument("--preset", default="small", help="model preset (no --checkpoint)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from dvsguard.snn.checkpoint import load_model

    if args.checkpoint is None and not args.digits:
        model, x, y, ids = train_on_patterns(args.preset, args.epochs, args.n, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="attack-bench-") as tmp:
            if args.checkpoint is None:
                checkpoint, cache = build_vanilla(Path(tmp), args.per_class, args.size, args.frames, args.epochs,
                                                  args.preset)
            else:
                if args.cache is None:
                    ap.error("--cache is required with --checkpoint")
                checkpoint, cache = args.checkpoint, args.cache
            model, _ = load_model(checkpoint)
            x, y, ids = load_samples(cache, args.n, args.seed)

    eps = parse_eps(args.eps)
    attack = make_attack(args.attack, eps, seed=args.seed)
    clean = float((predict(model, x) == y).float().mean())
    print(f"model {model.cfg.channels} head {model.cfg.head}, input [T={x.shape[0]}, B={x.shape[1]}, 2, "
          f"{x.shape[-2]}, {x.shape[-1]}], clean accuracy {clean:.3f}, torch threads {torch.get_num_threads()}")

    full, t_full = timed(lambda: Ensemble(attack, early_exit=False).run(model, x, y, ids))
    fast, t_fast = timed(lambda: Ensemble(attack, early_exit=True).run(model, x, y, ids))
    same = bool(torch.equal(full.fooled, fast.fooled) and torch.equal(full.member, fast.member))
    robust = 1.0 - float(fast.fooled.float().mean())
    print(f"ensemble {attack!r} x4: exhaustive {t_full:.2f} s (attacked {full.attacked}), "
          f"early exit {t_fast:.2f} s (attacked {fast.attacked})")
    print(f"robust accuracy {robust:.3f}; identical result: {same}; time ratio early-exit/exhaustive = {t_fast / t_full:.3f}")

    steps = getattr(attack, "steps", 10)
    pgd = make_attack(f"pgd{steps}", eps, seed=args.seed, grad_mode="triangle:1")
    pgd(model, x[:, :2], y[:2])  # warm-up
    _, t_pgd = timed(lambda: pgd(model, x, y, sample_ids=ids))
    print(f"PGD{steps}: {t_pgd:.2f} s for a batch of {x.shape[1]}: {steps / t_pgd:.2f} iterations/s, "
          f"{steps * x.shape[1] / t_pgd:.1f} sample-iterations/s")
    print(json.dumps({
        "clean_accuracy": clean, "robust_accuracy": robust, "exhaustive_s": round(t_full, 3),
        "early_exit_s": round(t_fast, 3), "ratio": round(t_fast / t_full, 3), "identical": same,
        "pgd_iterations_per_s": round(steps / t_pgd, 3),
        "pgd_sample_iterations_per_s": round(steps * x.shape[1] / t_pgd, 2),
    }))


if __name__ == "__main__":
    main()
