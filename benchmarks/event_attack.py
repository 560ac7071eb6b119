"""Event-attack throughput on the exported integer network against the float PGD's, on one model.

On one model and one set of test samples this measures samples per second of

* the greedy event attack (``dvsguard attack --threat events``) at one event budget (default 32
  events per sample, 8 per step), crafted through the float model's surrogate gradients and judged
  on the exported integer network (:func:`dvsguard.export.intsim.simulate`);
* the float PGD10 at ε = 8/255 (``dvsguard attack``), crafted and judged on the float model;

both as the paper's four-member ensemble (triangle γ=1, sigmoid γ=4, atan γ=2, RGA), run
exhaustively (every member attacks every sample: the cost of the attack itself) and with the
attack stage's early exit (a member attacks only the samples no earlier member fooled: what a run
costs, which depends on how robust the model is). It prints each throughput and the ratio event /
PGD for both, and the clean inference throughput of the float model and of the integer network
(each ensemble member's examples are judged once by the integer network).

Without ``--checkpoint`` it first trains a vanilla ``small`` model with ``dvsguard.train`` on the
embedded digits (``synth``: 20 recordings per class, 32×32 sensor and frames, T = 10, 4 epochs),
so that the checkpoint records its framing and exports.

    .venv/bin/python benchmarks/event_attack.py
    .venv/bin/python benchmarks/event_attack.py --checkpoint runs/quickstart/train/sr-star/best.pt \\
        --cache data_cache/x-train-k.h5 --budget 128
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvsguard.attack import make_attack  # noqa: E402
from dvsguard.attack.base import predict  # noqa: E402
from dvsguard.attack.ensemble import Ensemble  # noqa: E402
from dvsguard.attack.events import EventBudget, make_event_attack  # noqa: E402
from dvsguard.units import parse_eps  # noqa: E402

from attack_eval import build_vanilla  # noqa: E402  (the sibling benchmark's model builder)


def load_samples(cache: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """``n`` seeded test samples of ``cache``: frames ``[T, n, 2, H, W]``, labels, ids and the split's CacheInfo."""
    from dvsguard.attack.evaluate import cache_batches, select_indices
    from dvsguard.data.cache import open_cache, split_path

    test = Path(split_path(cache, "test"))
    info = open_cache(test)
    ids = select_indices(info.n_samples, n, seed)
    x, y, i = next(iter(cache_batches(test, ids, len(ids))))
    return x, y, i, info


def throughput(run: Any, n: int) -> tuple[Any, float]:
    """(result of ``run()``, samples per second of ``n`` samples)."""
    t0 = time.perf_counter()
    out = run()
    return out, n / (time.perf_counter() - t0)


def measure(model: Any, judge: Any, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, event_attack: Any,
            pgd: Any, early_exit: bool) -> dict[str, float]:
    """Samples/s and robust accuracy of the event ensemble (judged on ``judge``) and the PGD ensemble."""
    n = int(y.shape[0])
    events, event_sps = throughput(lambda: Ensemble(event_attack, early_exit=early_exit).run(model, x, y, ids,
                                                                                             target=judge), n)
    frames, pgd_sps = throughput(lambda: Ensemble(pgd, early_exit=early_exit).run(model, x, y, ids), n)
    return {"event_samples_per_s": round(event_sps, 3), "pgd_samples_per_s": round(pgd_sps, 3),
            "ratio": round(event_sps / pgd_sps, 3),
            "event_robust_accuracy": 1.0 - float(events.fooled.float().mean()),
            "pgd_robust_accuracy": 1.0 - float(frames.fooled.float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="target model (default: train a vanilla one)")
    ap.add_argument("--cache", type=Path, help="frame cache of the checkpoint's data (its test split is used)")
    ap.add_argument("--budget", type=int, default=32, help="events per sample of the greedy event attack")
    ap.add_argument("--step-events", type=int, default=8, help="events changed per greedy step")
    ap.add_argument("--eps", default="8/255", help="ε of the float PGD10 (frame units)")
    ap.add_argument("--n", type=int, default=32, help="test samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=20, help="synth recordings per class (no --checkpoint)")
    ap.add_argument("--epochs", type=int, default=4, help="vanilla training epochs (no --checkpoint)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from dvsguard.export.exporter import export_checkpoint
    from dvsguard.snn.checkpoint import load_model
    from dvsguard.stages.event_attack import IntegerNet

    with tempfile.TemporaryDirectory(prefix="event-bench-") as tmp:
        if args.checkpoint is None:
            checkpoint, cache = build_vanilla(Path(tmp), args.per_class, 32, 10, args.epochs, "small",
                                              optimizer="adam", lr=3e-3)
        elif args.cache is None:
            ap.error("--cache is required with --checkpoint")
        else:
            checkpoint, cache = args.checkpoint, args.cache
        model, _ = load_model(checkpoint)
        x, y, ids, info = load_samples(cache, args.n, args.seed)
        exported, _, _ = export_checkpoint(checkpoint, Path(tmp) / "export")
        judge = IntegerNet(exported.net_path, int(info.count_cap), tuple(x.shape[:1]) + tuple(x.shape[2:]))
        cap = int(info.count_cap)
        event_attack = make_event_attack("greedy", EventBudget(args.budget, cap), step_events=args.step_events,
                                         seed=args.seed)
        pgd = make_attack("pgd10", parse_eps(args.eps), seed=args.seed)
        event_attack(model, x[:, :2], y[:2], sample_ids=ids[:2])  # warm-up of every path
        pgd(model, x[:, :2], y[:2], sample_ids=ids[:2])
        predict(judge, x[:, :2])
        pred, float_sps = throughput(lambda: predict(model, x), int(y.shape[0]))
        pred_int, int_sps = throughput(lambda: predict(judge, x), int(y.shape[0]))
        clean, clean_int = float((pred == y).float().mean()), float((pred_int == y).float().mean())
        print(f"model {model.cfg.channels} head {model.cfg.head}, input [T={x.shape[0]}, B={x.shape[1]}, 2, "
              f"{x.shape[-2]}, {x.shape[-1]}], count cap {cap}; clean accuracy float {clean:.3f}, integer network "
              f"{clean_int:.3f}; torch threads {torch.get_num_threads()}")
        print(f"inference: float model {float_sps:.1f} samples/s, integer network (intsim) {int_sps:.1f} samples/s")
        results = {"budget_events": args.budget, "step_events": args.step_events, "eps": args.eps, "n": args.n,
                   "clean_accuracy": clean, "clean_accuracy_integer": clean_int,
                   "float_inference_samples_per_s": round(float_sps, 2), "integer_inference_samples_per_s": round(int_sps, 2)}
        for label, early in (("exhaustive", False), ("early_exit", True)):
            row = measure(model, judge, x, y, ids, event_attack, pgd, early)
            print(f"{label}: greedy events at {args.budget} on the integer network {row['event_samples_per_s']:.2f} "
                  f"samples/s (robust {row['event_robust_accuracy']:.3f}); PGD10 at {args.eps} on the float model "
                  f"{row['pgd_samples_per_s']:.2f} samples/s (robust {row['pgd_robust_accuracy']:.3f}); "
                  f"ratio event/PGD = {row['ratio']:.3f}")
            results[label] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
