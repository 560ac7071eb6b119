"""Frame cache vs tonic's ``DiskCachedDataset``: build time and random-access read throughput.

Both sides frame the same recordings with the same function (``events_to_frames``, 10
frames of 2 x 48 x 48); tonic caches each sample in its own HDF5 file, dvsguard writes one
HDF5 file with a chunk per sample. Reads fetch samples in random order and turn them into
float32 tensors (``count / count_cap``), as training does.

    python benchmarks/cache_build_read.py                  # synthetic digits (dvsguard synth)
    python benchmarks/cache_build_read.py --events 150000  # CIFAR10-DVS-sized random recordings

Targets: random-access reads >= 3x tonic's, builds >= 2x (both cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_random(out: Path, n: int, n_events: int, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` recordings of ``n_events`` random events on a 128x128 sensor over 1.3 s, 10 classes."""
    from dvsguard.data.events import EVENT_DTYPE, write_npz

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        ev = np.empty(n_events, dtype=EVENT_DTYPE)
        ev["x"] = rng.integers(0, 128, n_events)
        ev["y"] = rng.integers(0, 128, n_events)
        ev["t"] = np.sort(rng.integers(0, 1_300_000, n_events))
        ev["p"] = rng.integers(0, 2, n_events)
        items.append((write_npz(out / f"c{i % 10}" / f"r{i:05d}.npz", ev, (128, 128, 2)), i % 10))
    return items


class FramedRecordings:
    """A tonic-style dataset: item i = (frames uint8 [T, 2, H, W], label), read and framed on demand."""

    def __init__(self, items: list[tuple[Path, int]], cfg) -> None:  # noqa: ANN001
        self.items, self.cfg = items, cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from dvsguard.data.events import read_events
        from dvsguard.data.frames import events_to_frames

        path, label = self.items[i]
        return events_to_frames(read_events(path), self.cfg), label


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_cpu(fn) -> tuple[float, float, object]:  # noqa: ANN001
    """(wall s, CPU s, result)."""
    cpu0 = cpu_seconds()
    wall, out = timed(fn)
    return wall, cpu_seconds() - cpu0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60, help="synthetic digit recordings per class (10 classes)")
    parser.add_argument("--events", type=int, default=0, help="use random recordings of this many events instead")
    parser.add_argument("--n", type=int, default=300, help="number of random recordings (with --events)")
    parser.add_argument("--reads", type=int, default=3, help="passes of random-order reads")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import tonic

    from dvsguard.data.cache import build_cache
    from dvsguard.data.dataset import FrameDataset
    from dvsguard.data.frames import FramingConfig, frames_to_float

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dvsguard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = FramingConfig()
    load0 = os.getloadavg()[0]
    try:
        rec = work / "recordings"
        if args.events:
            what = f"{args.n} random recordings of {args.events} events, 128x128 sensor"
            items = make_random(rec, args.n, args.events)
        else:
            from dvsguard.data.preprocess import list_folder
            from dvsguard.data.synth import SynthConfig, make_digits

            make_digits(rec, SynthConfig(per_class=args.per_class))
            items, _ = list_folder(rec)
            what = f"{len(items)} synthetic digit recordings (dvsguard synth), 48x48 sensor"
        n = len(items)
        classes = [str(c) for c in range(10)]
        FramedRecordings(items, cfg)[0]  # warm the page cache and imports for both sides

        # --- builds
        t_tonic, c_tonic, tonic_ds = timed_cpu(lambda: _build_tonic(tonic, FramedRecordings(items, cfg), work / "tonic"))
        builds = {}
        for label, workers, comp in (("dvsguard, 1 process", 1, "gzip"), ("dvsguard, 2 processes", 2, "gzip"),
                                     ("dvsguard, 2 processes, raw", 2, None)):
            path = work / f"cache-{workers}-{comp}.h5"
            wall, cpu, _ = timed_cpu(lambda: build_cache(path, items, classes=classes, cfg=cfg, split="train",
                                                         workers=workers, compression=comp, progress=False))
            builds[label] = (wall, cpu, path)

        # --- random-access reads (same order for everyone)
        order = np.concatenate([np.random.default_rng(k).permutation(n) for k in range(args.reads)])

        def read_tonic() -> None:
            for i in order:
                x, _ = tonic_ds[int(i)]
                torch.from_numpy(frames_to_float(np.asarray(x), cfg.count_cap))

        def read_ours(path: Path) -> None:
            ds = FrameDataset(path)
            for i in order:
                ds[int(i)]

        r_tonic, _ = timed(read_tonic)
        reads = {label: timed(lambda p=path: read_ours(p))[0] for label, (_, _, path) in builds.items()}

        size_tonic = sum(p.stat().st_size for p in (work / "tonic").iterdir())
        print(f"\n{what}; frames {cfg.n_frames}x2x{cfg.height}x{cfg.width}, {len(order)} random reads")
        print(f"{os.cpu_count()} CPUs; load average at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}\n")
        head = f"{'':30} {'build s':>8} {'x tonic':>8} {'CPU s':>7} {'reads/s':>9} {'x tonic':>8} {'MB':>6}"
        print(head)
        print("-" * len(head))
        print(f"{'tonic DiskCachedDataset':30} {t_tonic:8.2f} {1:8.2f} {c_tonic:7.2f} {len(order) / r_tonic:9.0f} {1:8.2f} "
              f"{size_tonic / 1e6:6.1f}")
        for label, (t_build, c_build, path) in builds.items():
            r = reads[label]
            print(f"{label:30} {t_build:8.2f} {t_tonic / t_build:8.2f} {c_build:7.2f} {len(order) / r:9.0f} "
                  f"{r_tonic / r:8.2f} {path.stat().st_size / 1e6:6.1f}")
        print("\nCPU s: user + system time of the build over all its processes; with both cores free, a build's"
              "\nwall time approaches CPU s / processes.")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _build_tonic(tonic, dataset: FramedRecordings, cache_path: Path):  # noqa: ANN001, ANN202
    ds = tonic.DiskCachedDataset(dataset, cache_path=str(cache_path), reset_cache=True)
    for i in range(len(ds)):
        ds[i]
    return ds


if __name__ == "__main__":
    main()
