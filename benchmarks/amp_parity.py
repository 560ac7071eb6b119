"""Accuracy of bf16 autocast (``--amp``) against float32 training on the embedded digits.

One run builds the quickstart's data recipe at a larger size (``synth``: 32×32, noise 0.5,
T = 10 frames; default 400 recordings per class, so the 9:1 split leaves 400 test samples),
then trains the ``small`` preset with the vanilla defense, augmentation off, for each seed in
float32 and in bf16 autocast (convolutions and linear layers in bf16, membrane state and
BatchNorm in float32), each run in its own ``dvsguard train`` process with one intra-op thread
(``--jobs`` of them at a time). It prints the clean accuracy of the last epoch on the whole
test split per seed, the mean ± sample standard deviation per precision, the difference of the
means, and each precision's mean training time per epoch. A bf16 model is evaluated in bf16,
as it would be used.

    .venv/bin/python benchmarks/amp_parity.py                       # 3 seeds × 10 epochs: ~20 min on 2 cores
    .venv/bin/python benchmarks/amp_parity.py --seeds 0 --epochs 2 --per-class 40   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bf16")


def _dvsguard(*args: str) -> dict:
    """Run one ``dvsguard`` command with ``--json`` in a subprocess; its last stdout line as a dict."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "dvsguard", *args, "--json"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"dvsguard {args[0]} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_data(work: Path, per_class: int) -> Path:
    """Simulate the digits and frame them; returns the train cache (the test cache lies beside it)."""
    rec = work / "recordings"
    _dvsguard("synth", str(rec), "--per-class", str(per_class), "--size", "32", "--noise", "0.5", "--seed", "0")
    out = _dvsguard("preprocess", str(rec), "--cache-dir", str(work / "cache"), "--frames", "10", "--size", "32")
    return Path(out["train"])


def train(work: Path, cache: Path, precision: str, seed: int, epochs: int) -> dict:
    """One vanilla training run: its last epoch's metrics, plus ``epoch_seconds`` (mean training
    time per epoch)."""
    out = work / f"{precision}-seed{seed}"
    args = ["train", "--cache", str(cache), "--defense", "vanilla", "--out", str(out), "--preset", "small",
            "--epochs", str(epochs), "--seed", str(seed), "--no-augment", "--robust-limit", "0", "--threads", "1"]
    if precision == "bf16":
        args.append("--amp")
    summary = _dvsguard(*args)
    epochs_logged = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines() if line.strip()]
    return {**summary["final"], "epoch_seconds": statistics.mean(e["train_seconds"] for e in epochs_logged)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--per-class", type=int, default=400, help="recordings per digit class (test split: 1/10)")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--work", type=Path, default=None, help="keep recordings, caches and runs here")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="amp-parity-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"building data in {work} ...", file=sys.stderr, flush=True)
        cache = build_data(work, args.per_class)
        runs = [(prec, seed) for seed in seeds for prec in PRECISIONS]
        print(f"training {len(runs)} runs, {args.jobs} at a time ...", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            finals = list(pool.map(lambda r: train(work, cache, r[0], r[1], args.epochs), runs))
    results = {run: final for run, final in zip(runs, finals)}

    test_n = finals[0]["test_n"]
    print(f"\nvanilla, preset small, {args.epochs} epochs, clean accuracy (%) of the last epoch on {test_n} test samples\n")
    print("| precision | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | train s/epoch |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    means: dict[str, float] = {}
    for prec in PRECISIONS:
        accs = [100 * results[(prec, s)]["test_acc"] for s in seeds]
        means[prec] = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        secs = statistics.mean(results[(prec, s)]["epoch_seconds"] for s in seeds)
        print(f"| {prec} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {means[prec]:.2f} ± {sd:.2f} | {secs:.1f} |")
    diff = means["bf16"] - means["float32"]
    verdict = "within" if abs(diff) <= 1.0 else "NOT within"
    print(f"\nbf16 − float32 mean accuracy: {diff:+.2f} points ({verdict} 1 point)")


if __name__ == "__main__":
    main()
