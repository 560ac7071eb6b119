"""Training-step time and peak memory: dvsguard's spiking VGG-11 against two peers, and its defenses.

One run measures, on the same batch (default B = 24, T = 10, 48×48, 2 polarities, the
paper's VGG-11, 10 classes), one SGD step (forward, backward, optimizer step) of:

* ``dvsguard``        vanilla cross-entropy, float32 (fused IF neuron)
* ``dvsguard-bf16``   the same with bf16 autocast for conv/linear (membrane state float32)
* ``spikingjelly``    SpikingJelly's multi-step ``IFNode`` VGG-11 (torch backend, its
                      default sigmoid surrogate), float32, as its users run it on CPU
* ``loop``            a per-timestep Python-loop IF network like the authors' code: conv/BN
                      on the merged T·B batch, then a loop over t with a surrogate spike
                      autograd function that saves its input and output, float32
* ``dvsguard:<defense>``  each defense step of ``dvsguard.train`` (sr, fgsm-at, sr-star, rat),
                      float32, reported as a ratio to the vanilla step

Each configuration runs in its own subprocess, so its peak memory is that process's peak
resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``), which includes the Python/torch
runtime, the weights, gradients and optimizer state; ``act`` is the peak minus the resident
size just before the first step (activations plus gradient and momentum buffers).
The step time is the median over ``--steps`` timed steps after ``--warmup`` untimed ones,
both as wall time and as the process's CPU time (steadier when other work shares the CPUs).

    .venv/bin/python benchmarks/train_step.py                 # full size: several minutes
    .venv/bin/python benchmarks/train_step.py --batch 8 --steps 2
    .venv/bin/python benchmarks/train_step.py --preset small --batch 24 --only dvsguard,loop

SpikingJelly is a benchmark-only dependency: ``pip install --no-deps spikingjelly``
(the ``bench`` extra); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("dvsguard", "dvsguard-bf16", "spikingjelly", "loop")
DEFENSES = ("sr", "fgsm-at", "sr-star", "rat")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _batch(args: argparse.Namespace, cfg) -> tuple:
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (args.timesteps, args.batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    # DVS-like frames in [0, 1]: ~15 % of pixels active with counts / count_cap
    active = torch.rand(shape, generator=g) < 0.15
    x = active * torch.randint(1, 9, shape, generator=g).float() / 8.0
    y = torch.randint(0, cfg.num_classes, (args.batch,), generator=g)
    return x, y


def _spikingjelly_vgg(cfg):
    """The same VGG shape built from SpikingJelly layers (multi-step mode, IFNode)."""
    from spikingjelly.activation_based import functional, layer, neuron
    from torch import nn

    mods: list[nn.Module] = []
    c_in = cfg.in_channels
    for c in cfg.channels:
        if c == "A":
            mods.append(layer.AvgPool2d(2))
        else:
            mods += [layer.Conv2d(c_in, c, 3, padding=1, bias=False), layer.BatchNorm2d(c), neuron.IFNode()]
            c_in = c
    mods.append(layer.Flatten())
    width = cfg.flat_features
    for h in cfg.head:
        mods += [layer.Linear(width, h), neuron.IFNode()]
        width = h
    mods.append(layer.Linear(width, cfg.num_classes))
    body = nn.Sequential(*mods)
    functional.set_step_mode(body, "m")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            functional.reset_net(self.body)
            return self.body(x).mean(0)

    return Net()


def _loop_vgg(cfg):
    """SpikingVGG whose IF layers are a plain per-timestep loop (authors' style)."""
    import torch
    from torch import nn

    from dvsguard.snn.neuron import IFNeuron
    from dvsguard.snn.vgg import SpikingVGG

    class ZIF(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma):
            out = (x >= 0).float()
            ctx.save_for_backward(x, out)
            ctx.gamma = gamma
            return out

        @staticmethod
        def backward(ctx, grad):
            x, _ = ctx.saved_tensors
            g = ctx.gamma
            return grad * (g - x.abs()).clamp(min=0) / (g * g), None

    class LoopIF(IFNeuron):
        def forward(self, x):
            mem, out = 0.0, []
            for t in range(x.shape[0]):
                mem = mem + x[t]
                spike = ZIF.apply(mem - self.threshold, 1.0)
                mem = (1 - spike) * mem
                out.append(spike)
            return torch.stack(out)

    class LoopVGG(SpikingVGG):
        """Activations in torch's default (contiguous) layout, as in the authors' code."""

        def forward(self, x):
            T, B = x.shape[:2]
            h = x.flatten(0, 1)
            for m in (*self.features, *self.classifier):
                h = m(h.view(T, B, *h.shape[1:])).flatten(0, 1) if isinstance(m, LoopIF) else m(h)
            return h.view(T, B, -1).mean(0)

    model = LoopVGG(cfg)

    def swap(seq: nn.Sequential) -> None:
        for i, m in enumerate(seq):
            if isinstance(m, IFNeuron):
                seq[i] = LoopIF()

    swap(model.features)
    swap(model.classifier)
    return model


def worker(args: argparse.Namespace) -> dict:
    """Measure one configuration in this process; returns a dict of figures."""
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig, count_macs

    cfg = VGGConfig.preset(args.preset)
    name = args.worker
    defense = None
    if name == "spikingjelly":
        model = _spikingjelly_vgg(cfg)
    elif name == "loop":
        model = _loop_vgg(cfg)
    else:
        base, _, defense_name = name.partition(":")
        model = SpikingVGG(cfg, autocast_bf16=(base == "dvsguard-bf16"))
        if defense_name:
            from dvsguard.train.defenses import make_defense

            defense = make_defense(defense_name)
    model.train()
    decay = 5e-4 if defense is None or defense.weight_decay_allowed else 0.0
    if name in ("spikingjelly", "loop"):  # as their users run them
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=decay)
    else:  # what `dvsguard train` uses
        from dvsguard.train.optimizer import make_optimizer

        opt = make_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=decay)
    x, y = _batch(args, cfg)

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        if defense is None:
            loss = nn.functional.cross_entropy(model(x), y)
        else:
            loss, _ = defense.loss(model, x, y)
        loss.backward()
        opt.step()
        if defense is not None:
            defense.after_step(model)
        return time.perf_counter() - t0, time.process_time() - c0

    base_rss = _rss_mb()
    for _ in range(args.warmup):
        step()
    measured = [step() for _ in range(args.steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = [w for w, _ in measured]
    med = statistics.median(times)
    cpu = statistics.median(c for _, c in measured)
    gmacs = 3 * count_macs(cfg) * args.timesteps * args.batch / 1e9  # forward + ~2× backward
    return {
        "name": name, "step_s": med, "min_s": min(times), "cpu_s": cpu, "samples_per_s": args.batch / med,
        "peak_mb": peak, "act_mb": peak - base_rss, "gflops": 2 * gmacs / med,
    }


def _run(name: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--preset", args.preset, "--threads", str(args.threads),
           "--timesteps", str(args.timesteps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {name}: failed ({last})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available(name: str) -> bool:
    if name == "spikingjelly":
        try:
            import spikingjelly  # noqa: F401
        except ImportError:
            print("  spikingjelly: not installed (pip install --no-deps spikingjelly); skipped", file=sys.stderr)
            return False
    if ":" in name:
        try:
            import dvsguard.train.defenses  # noqa: F401
        except ImportError:
            print(f"  {name}: dvsguard.train is not available; skipped", file=sys.stderr)
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--preset", default="vgg11")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    p.add_argument("--no-defenses", action="store_true", help="skip the dvsguard:<defense> rows")
    p.add_argument("--json", action="store_true", help="print all results as one JSON line at the end")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    names = list(PEERS) + ([] if args.no_defenses else [f"dvsguard:{d}" for d in DEFENSES])
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        names = [n for n in wanted]
    print(f"train step: preset {args.preset}, B={args.batch}, T={args.timesteps}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps", file=sys.stderr)
    results: dict[str, dict] = {}
    for name in names:
        if not _available(name):
            continue
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        r = _run(name, args)
        if r is not None:
            results[name] = r

    print("\n| configuration | step (s) | CPU (s) | samples/s | GFLOP/s | peak RSS (MB) | act (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['step_s']:.2f} | {r['cpu_s']:.2f} | {r['samples_per_s']:.2f} | {r['gflops']:.0f} | "
              f"{r['peak_mb']:.0f} | {r['act_mb']:.0f} |")
    load = os.getloadavg()[0]
    if load > args.threads + 0.5:
        print(f"\nnote: load average {load:.1f} on {os.cpu_count()} CPUs: wall times include waiting for the CPU; "
              "the CPU column (process CPU time per step) is the steadier basis for ratios")
    peers = [results[n] for n in ("spikingjelly", "loop") if n in results]
    ratios: dict[str, float] = {}
    if peers:
        fastest = min(peers, key=lambda r: r["step_s"])
        print(f"\nfaster peer: {fastest['name']}")
        for ours in ("dvsguard", "dvsguard-bf16"):
            if ours in results:
                r = results[ours]
                ratios[f"{ours}_throughput_vs_peer"] = fastest["step_s"] / r["step_s"]
                ratios[f"{ours}_cpu_throughput_vs_peer"] = fastest["cpu_s"] / r["cpu_s"]
                ratios[f"{ours}_peak_mem_vs_peer"] = r["peak_mb"] / fastest["peak_mb"]
                print(f"{ours}: throughput {fastest['step_s'] / r['step_s']:.2f}× the faster peer by wall time, "
                      f"{fastest['cpu_s'] / r['cpu_s']:.2f}× by CPU time (target ≥ 2); peak memory "
                      f"{r['peak_mb'] / fastest['peak_mb']:.2f}× (target ≤ 0.7)")
    if "dvsguard" in results:
        v = results["dvsguard"]
        for d in DEFENSES:
            r = results.get(f"dvsguard:{d}")
            if r:
                ratios[f"{d}_time_vs_vanilla"] = r["step_s"] / v["step_s"]
                ratios[f"{d}_cpu_vs_vanilla"] = r["cpu_s"] / v["cpu_s"]
                ratios[f"{d}_peak_mem_vs_vanilla"] = r["peak_mb"] / v["peak_mb"]
                print(f"{d}: step {r['step_s'] / v['step_s']:.2f}× vanilla by wall time, "
                      f"{r['cpu_s'] / v['cpu_s']:.2f}× by CPU time; peak memory {r['peak_mb'] / v['peak_mb']:.2f}×")
    if args.json:
        print(json.dumps({"args": vars(args), "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
