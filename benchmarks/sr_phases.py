"""Where an SR and an SR* training step spend their time, phase by phase, against a vanilla step.

Phases, timed as process CPU time (steadier than wall time on a shared machine), median over
``--steps`` steps after one warm-up, on the same batch (default: full VGG-11, B = 8, T = 10):

* vanilla:  ``F`` forward, ``B`` backward (input gradients of every layer ``Bd`` + weight gradients)
* sr:       ``F1`` forward at x; ``Bx`` input gradient ∇ₓ f_y on F1's graph (no weight gradients);
            ``F2`` forward at x + h·d; ``B12`` one backward through both graphs
* sr-star:  ``Fe`` + ``Bxe`` the FGSM example (eval-mode forward, input gradient of the CE), then
            the sr phases on the adversarial batch

Every SR step runs the vanilla step's work twice (F1 + F2, and B12 ≈ 2·B) plus ``Bx``, which
back-propagates through every layer to the input (each layer's input gradient, nothing else), so
``sr / vanilla ≥ 2 + Bx / (F + B)`` and ``sr-star / vanilla ≥ 2 + (Fe + Bxe + Bx) / (F + B)``.
The script prints each phase and these lower bounds beside the measured ratios.

    .venv/bin/python benchmarks/sr_phases.py                    # vgg11, B = 8, 2 threads: ~3 min
    .venv/bin/python benchmarks/sr_phases.py --preset small --batch 24
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dvsguard.attack import fgsm  # noqa: E402
from dvsguard.snn.vgg import SpikingVGG, VGGConfig  # noqa: E402
from dvsguard.train.defenses import DEFAULT_EPS, DEFAULT_H, DEFAULT_LAMBDA  # noqa: E402
from dvsguard.train.losses import (  # noqa: E402
    cross_entropy,
    finite_difference_penalty,
    margin_probability,
    true_vs_strongest_wrong,
)


def _batch(cfg: VGGConfig, batch: int, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DVS-like frames ``[T, B, 2, H, W]`` in [0, 1] (~15 % active pixels) and labels ``[B]``."""
    g = torch.Generator().manual_seed(0)
    shape = (timesteps, batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    x = (torch.rand(shape, generator=g) < 0.15) * torch.randint(1, 9, shape, generator=g).float() / 8.0
    return x, torch.randint(0, cfg.num_classes, (batch,), generator=g)


def sr_phases(model: SpikingVGG, x: torch.Tensor, y: torch.Tensor, clock) -> tuple[dict[str, float], torch.Tensor]:
    """The ``sr`` defense's loss (Algorithm 1, sq form, as ``dvsguard.train.losses`` computes it),
    back-propagated, with a clock reading per phase. Returns (phase → seconds, the loss)."""
    t0 = clock()
    x0 = x.detach().requires_grad_(True)
    logits = model(x0)
    t1 = clock()
    wrong, f_x = true_vs_strongest_wrong(logits, y)
    (grad_x,) = torch.autograd.grad(f_x.sum(), x0, retain_graph=True)
    t2 = clock()
    f_shift = margin_probability(model(x.detach() + DEFAULT_H * grad_x.sign()), y, wrong)
    t3 = clock()
    loss = cross_entropy(logits, y) + DEFAULT_LAMBDA * finite_difference_penalty(f_x, f_shift, DEFAULT_H, "sq")
    loss.backward()
    t4 = clock()
    return {"F1": t1 - t0, "Bx": t2 - t1, "F2": t3 - t2, "B12": t4 - t3}, loss.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vgg11")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed steps per phase set (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = VGGConfig.preset(args.preset)
    model = SpikingVGG(cfg).train()
    x, y = _batch(cfg, args.batch, args.timesteps)
    clock = time.process_time
    phases: dict[str, list[float]] = {}

    def record(prefix: str, d: dict[str, float]) -> None:
        for k, v in d.items():
            phases.setdefault(f"{prefix}{k}", []).append(v)

    for i in range(args.steps + 1):  # the three step kinds interleaved; step 0 is the warm-up
        model.zero_grad(set_to_none=True)
        t0 = clock()
        logits = model(x)
        t1 = clock()
        cross_entropy(logits, y).backward()
        van = {"F": t1 - t0, "B": clock() - t1}
        model.zero_grad(set_to_none=True)
        sr, _ = sr_phases(model, x, y, clock)
        model.zero_grad(set_to_none=True)
        t0 = clock()
        x_adv = fgsm(model, x, y, DEFAULT_EPS)  # eval-mode forward + input gradient
        star = {"FeBxe": clock() - t0, **sr_phases(model, x_adv, y, clock)[0]}
        if i:
            record("vanilla.", van)
            record("sr.", sr)
            record("sr-star.", star)
    m = {k: statistics.median(v) for k, v in phases.items()}
    vanilla = m["vanilla.F"] + m["vanilla.B"]
    sr = sum(m[f"sr.{k}"] for k in ("F1", "Bx", "F2", "B12"))
    star = sum(m[f"sr-star.{k}"] for k in ("FeBxe", "F1", "Bx", "F2", "B12"))
    print(f"preset {args.preset}, B={args.batch}, T={args.timesteps}, {args.threads} threads; "
          f"CPU seconds, median of {args.steps} steps\n")
    print("| step | phases (s) | total (s) | × vanilla | lower bound |")
    print("|---|---|---:|---:|---:|")
    print(f"| vanilla | F {m['vanilla.F']:.3f}, B {m['vanilla.B']:.3f} | {vanilla:.2f} | 1.00 | |")
    print(f"| sr | F1 {m['sr.F1']:.3f}, Bx {m['sr.Bx']:.3f}, F2 {m['sr.F2']:.3f}, B12 {m['sr.B12']:.3f} | "
          f"{sr:.2f} | {sr / vanilla:.2f} | {2 + m['sr.Bx'] / vanilla:.2f} |")
    print(f"| sr-star | Fe+Bxe {m['sr-star.FeBxe']:.3f}, F1 {m['sr-star.F1']:.3f}, Bx {m['sr-star.Bx']:.3f}, "
          f"F2 {m['sr-star.F2']:.3f}, B12 {m['sr-star.B12']:.3f} | {star:.2f} | {star / vanilla:.2f} | "
          f"{2 + (m['sr-star.FeBxe'] + m['sr-star.Bx']) / vanilla:.2f} |")
    print("\nlower bound: 2 × the vanilla step (both passes forward and backward) plus the extra input-gradient "
          "passes (Bx; for sr-star also Fe + Bxe), each in units of the vanilla step")


if __name__ == "__main__":
    main()
