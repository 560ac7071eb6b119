"""An embedded event dataset: a simulated DVS watching handwritten digits move in small saccades.

CIFAR10-DVS was recorded by a DVS128 looking at CIFAR-10 images moving on a monitor. This
module does the same in simulation with scikit-learn's 8×8 handwritten digits (which ship
with scikit-learn), so the whole pipeline runs offline:

1. each recording draws one digit image of its class, upscales it (cubic spline, random
   scale, rotation and position) onto a ``size × size`` monitor with random background
   and ink brightness, and optionally puts a static occluder over part of it;
2. the image moves along a random path of three smooth saccades of a few pixels each,
   sampled on a fine time grid (``n_steps`` steps over ``duration_us``);
3. every sensor pixel keeps the log intensity at its last event and emits an ON (OFF) event
   each time the present log intensity rises (falls) by its contrast threshold; thresholds
   vary per pixel and per recording, the log intensity carries temporal noise, and the
   event time is interpolated linearly inside the step;
4. background-activity noise events (``noise`` events per pixel per second, random
   polarity) and a few hot pixels are added.

Output: ``OUT_DIR/<class>/<class>_<nnnn>.npz`` (read back by
:func:`dvsguard.data.events.read_events`), ``OUT_DIR/labels.csv`` (``path,label``, paths
relative to OUT_DIR) and ``OUT_DIR/synth.json`` (the settings and each recording's source
image). scikit-learn has 174-183 images per class, so above that many recordings per class
some images are used twice, each time with other placement, motion, contrast and noise. Everything is a
deterministic function of the settings: recordings are generated in fixed batches, each
with its own generator seeded by (seed, batch index).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsguard.atomic import write_text
from dvsguard.data.events import EVENT_DTYPE, write_npz
from dvsguard.errors import ConfigError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = tuple(f"digit{i}" for i in range(10))
"""Class folder names; label i is digit i (names sort in label order)."""

FORMAT = "dvsguard-synth/1"
_BATCH = 50  # recordings per vectorised batch (fixed: the output must not depend on it changing)


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the simulated recordings.

    Attributes:
        per_class: recordings per class (10 classes).
        seed: seed of every random choice.
        size: sensor width = height in pixels; sensor_size is (size, size, 2).
        noise: background-activity rate, events per pixel per second (0 disables it).
        duration_us: length of a recording in µs.
        n_steps: time steps of the sensor simulation over ``duration_us``.
        threshold: mean contrast threshold in log-intensity units (per recording it is
            drawn in [0.75, 1.25] × this, per pixel with a 10 % spread).
        log_noise: std of the temporal noise on the log intensity per step.
        occlusion: probability that a static occluder covers part of the digit.
    """

    per_class: int = 200
    seed: int = 0
    size: int = 48
    noise: float = 2.0
    duration_us: int = 300_000
    n_steps: int = 60
    threshold: float = 0.25
    log_noise: float = 0.03
    occlusion: float = 0.3

    def validate(self) -> None:
        checks = {
            "per_class": self.per_class >= 1,
            "size": 16 <= self.size <= 512,
            "noise": self.noise >= 0,
            "duration_us": self.duration_us >= 1000,
            "n_steps": 3 <= self.n_steps <= 10_000,
            "threshold": self.threshold > 0,
            "log_noise": self.log_noise >= 0,
            "occlusion": 0.0 <= self.occlusion <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"synth: invalid setting(s) {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


# --------------------------------------------------------------------------- sensor model


def dvs_events(
    log_frames: np.ndarray,
    times_us: np.ndarray,
    thresholds: np.ndarray,
    max_per_step: int = 8,
) -> tuple[np.ndarray, ...]:
    """Simulate DVS pixels on a sequence of log-intensity frames.

    Args:
        log_frames: [S+1, B, H, W] float log intensity at ``times_us`` (step 0 sets the
            pixels' reference levels and emits nothing).
        times_us: [S+1] float, increasing times of the frames in µs.
        thresholds: [2, B, H, W] contrast thresholds (ON, OFF) in log units, > 0.
        max_per_step: at most this many events per pixel and step (refractoriness).

    Returns:
        (b, x, y, t, p) int arrays over all events: batch index, column, row, time in µs
        (interpolated linearly inside the step where the level was crossed), polarity
        1 = ON (brighter), 0 = OFF. Unsorted.
    """
    ref = log_frames[0].copy()
    c_on, c_off = thresholds
    out: list[tuple[np.ndarray, ...]] = []
    for s in range(1, log_frames.shape[0]):
        prev, cur = log_frames[s - 1], log_frames[s]
        diff = cur - ref
        n_on = np.minimum(np.floor(diff / c_on), max_per_step).clip(min=0).astype(np.int32)
        n_off = np.minimum(np.floor(-diff / c_off), max_per_step).clip(min=0).astype(np.int32)
        for counts, sign, c in ((n_on, 1.0, c_on), (n_off, -1.0, c_off)):
            idx = np.nonzero(counts)
            if not idx[0].size:
                continue
            k = counts[idx]
            rep = np.repeat(np.arange(k.size), k)
            # j-th crossing (1..k) of this pixel in this step
            j = np.arange(rep.size) - np.repeat(np.cumsum(k) - k, k) + 1
            level = ref[idx][rep] + sign * j * c[idx][rep]
            p0, p1 = prev[idx][rep], cur[idx][rep]
            span = p1 - p0
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(np.abs(span) > 1e-9, (level - p0) / span, 1.0)
            frac = np.clip(frac, 0.0, 1.0)
            t = times_us[s - 1] + frac * (times_us[s] - times_us[s - 1])
            out.append((idx[0][rep], idx[2][rep], idx[1][rep], t, np.full(rep.size, sign > 0)))
            ref[idx] += sign * k * c[idx]
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty.astype(float), empty.astype(bool)
    return tuple(np.concatenate(parts) for parts in zip(*out))


# --------------------------------------------------------------------------- scene


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits: images [N, 8, 8] float32 in [0, 1], labels [N].

    Read straight from the data file scikit-learn ships (importing sklearn.datasets takes
    seconds); falls back to ``sklearn.datasets.load_digits`` where that file is elsewhere.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("synth: scikit-learn is not installed (its handwritten digits are the images)")
    data_file = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(data_file, delimiter=",", dtype=np.float32)
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    except (OSError, ValueError):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images.astype(np.float32), digits.target.astype(np.int64)
    if images.shape[1:] != (8, 8) or images.shape[0] != target.shape[0] or len(np.unique(target)) != 10:
        raise ConfigError(f"synth: unexpected digits data in {data_file}")
    return images / 16.0, target


def _render(image: np.ndarray, canvas: int, scale: float, angle: float, offset: np.ndarray) -> np.ndarray:
    """Draw an 8×8 image ([0, 1]) upscaled by ``scale`` and rotated by ``angle`` (rad), centred
    at the canvas centre + offset (px), on a ``canvas × canvas`` float32 array in [0, 1]."""
    from scipy.ndimage import affine_transform

    src = np.pad(image, 2)
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) / scale
    out_centre = np.array([(canvas - 1) / 2 + offset[1], (canvas - 1) / 2 + offset[0]])
    src_centre = np.array([(src.shape[0] - 1) / 2, (src.shape[1] - 1) / 2])
    shift = src_centre - matrix @ out_centre
    drawn = affine_transform(src, matrix, offset=shift, output_shape=(canvas, canvas), order=3, mode="constant")
    return np.clip(drawn, 0.0, 1.0).astype(np.float32)


def _saccade_path(rng: np.random.Generator, n: int, unit: float) -> np.ndarray:
    """[n, 2] (dx, dy) px: three smooth saccades of 1.5-3.5 ``unit`` px between random
    waypoints (kept within ±5 ``unit`` of the rest position), plus a small tremor."""
    waypoints = np.zeros((4, 2))
    for i in range(1, 4):
        angle = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(1.5, 3.5) * unit
        waypoints[i] = waypoints[i - 1] + amplitude * np.array([np.cos(angle), np.sin(angle)])
    waypoints -= waypoints.mean(axis=0) * rng.uniform(0.5, 1.0)  # start somewhere near the rest position
    waypoints = np.clip(waypoints, -5.0 * unit, 5.0 * unit)
    u = np.linspace(0.0, 3.0, n)
    seg = np.minimum(u.astype(int), 2)
    frac = u - seg
    ease = 0.5 - 0.5 * np.cos(np.pi * frac)  # smooth start and stop of each saccade
    path = waypoints[seg] + (waypoints[seg + 1] - waypoints[seg]) * ease[:, None]
    return path + rng.normal(0.0, 0.08, path.shape)  # fixational tremor


def _windows(padded: np.ndarray, path: np.ndarray, margin: int, size: int) -> np.ndarray:
    """Bilinearly shifted views [n, size, size] of ``padded`` following ``path`` [n, 2] (dx, dy)."""
    from numpy.lib.stride_tricks import sliding_window_view

    views = sliding_window_view(padded, (size, size))
    pos = margin - path  # the scene moves by +path: the sensor window moves by -path
    i0 = np.floor(pos).astype(int)
    f = (pos - i0).astype(np.float32)
    ix, iy = i0[:, 0], i0[:, 1]
    fx, fy = f[:, 0, None, None], f[:, 1, None, None]
    return (
        views[iy, ix] * (1 - fx) * (1 - fy)
        + views[iy, ix + 1] * fx * (1 - fy)
        + views[iy + 1, ix] * (1 - fx) * fy
        + views[iy + 1, ix + 1] * fx * fy
    )


def _batch(cfg: SynthConfig, images: np.ndarray, batch_index: int) -> list[np.ndarray]:
    """Simulate one batch of recordings; returns their EVENT_DTYPE arrays (sorted by t)."""
    rng = np.random.default_rng([cfg.seed, batch_index])
    n, size, steps = len(images), cfg.size, cfg.n_steps
    unit = size / 48.0  # motion scales with the sensor: a few pixels at 48×48
    margin = int(np.ceil(5.5 * unit)) + 2
    canvas = size + 2 * margin
    times = np.linspace(0.0, float(cfg.duration_us), steps + 1)
    log_frames = np.empty((steps + 1, n, size, size), dtype=np.float32)
    for b in range(n):
        scale = size / 8.0 * rng.uniform(0.55, 0.75)
        digit = _render(images[b], canvas, scale, rng.normal(0.0, 0.15), rng.uniform(-4, 4, 2) * unit)
        background, ink = rng.uniform(0.05, 0.3), rng.uniform(0.55, 1.0)
        scene = background + (ink - background) * digit
        frames = _windows(scene, _saccade_path(rng, steps + 1, unit), margin, size)
        if rng.random() < cfg.occlusion:  # a static card between monitor and sensor hides a part
            h, w = rng.integers(size // 5, size // 3, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            frames[:, y0:y0 + h, x0:x0 + w] = rng.uniform(0.05, 0.5)
        log_frames[:, b] = np.log(frames + 0.02)
    if cfg.log_noise > 0:
        noise = rng.standard_normal(log_frames.shape, dtype=np.float32)
        noise *= cfg.log_noise
        log_frames += noise
    mean = cfg.threshold * rng.uniform(0.75, 1.25, (2, n, 1, 1))
    thresholds = (mean * rng.normal(1.0, 0.1, (2, n, size, size))).clip(min=0.3 * cfg.threshold)
    b_idx, x, y, t, p = dvs_events(log_frames, times, thresholds.astype(np.float32))
    t = t + rng.exponential(100.0, t.shape)  # readout latency jitter, µs
    parts: list[np.ndarray] = []
    order = np.argsort(b_idx, kind="stable")
    bounds = np.searchsorted(b_idx[order], np.arange(n + 1))
    for b in range(n):
        sel = order[bounds[b]:bounds[b + 1]]
        signal = np.empty(sel.size, dtype=EVENT_DTYPE)
        signal["x"], signal["y"], signal["t"], signal["p"] = x[sel], y[sel], t[sel], p[sel]
        ev = np.concatenate([signal, _noise_events(rng, cfg)])
        ev["t"] = np.clip(ev["t"], 0, cfg.duration_us - 1)
        parts.append(ev[np.argsort(ev["t"], kind="stable")])
    return parts


def _noise_events(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Background activity (Poisson, ``cfg.noise`` per pixel per second) plus 0-3 hot pixels."""
    size, seconds = cfg.size, cfg.duration_us / 1e6
    count = rng.poisson(cfg.noise * size * size * seconds) if cfg.noise > 0 else 0
    n_hot = rng.integers(0, 4) if cfg.noise > 0 else 0
    hot_counts = rng.poisson(rng.uniform(50, 300, n_hot) * seconds)
    total = int(count + hot_counts.sum())
    ev = np.empty(total, dtype=EVENT_DTYPE)
    ev["x"][:count] = rng.integers(0, size, count)
    ev["y"][:count] = rng.integers(0, size, count)
    hot_xy = rng.integers(0, size, (n_hot, 2))
    ev["x"][count:] = np.repeat(hot_xy[:, 0], hot_counts)
    ev["y"][count:] = np.repeat(hot_xy[:, 1], hot_counts)
    ev["t"] = rng.integers(0, cfg.duration_us, total)
    ev["p"] = rng.integers(0, 2, total)
    return ev


# --------------------------------------------------------------------------- dataset


def _assign_images(cfg: SynthConfig, digit_labels: np.ndarray) -> np.ndarray:
    """Index into the digits for each recording, class-major: recording c*per_class + i."""
    rng = np.random.default_rng([cfg.seed, 1 << 20])
    picks = []
    for c in range(len(CLASSES)):
        pool = np.flatnonzero(digit_labels == c)
        reps = -(-cfg.per_class // pool.size)
        order = np.concatenate([rng.permutation(pool) for _ in range(reps)])
        picks.append(order[: cfg.per_class])
    return np.concatenate(picks)


def _simulate_batch(job: tuple[SynthConfig, np.ndarray, int, Path, list[str]]) -> list[int]:
    """Simulate one batch and write its recordings to ``out/rel`` (module level for process pools).

    Returns the event count of each recording.
    """
    cfg, images, batch_index, out, rels = job
    sensor = (cfg.size, cfg.size, 2)
    counts = []
    for rel, ev in zip(rels, _batch(cfg, images, batch_index)):
        write_npz(out / rel, ev, sensor, compress=True)
        counts.append(len(ev))
    return counts


def make_digits(out_dir: str | os.PathLike, cfg: SynthConfig | None = None, workers: int = 1) -> dict[str, Any]:
    """Write the simulated digit recordings into ``out_dir``, simulating batches in ``workers`` processes.

    The files do not depend on ``workers``: each batch of recordings has its own generator.

    Returns {"out_dir", "n_recordings", "classes", "n_events", "sensor_size", "seconds"}.
    Raises ConfigError on invalid settings or when ``out_dir`` exists and holds other files
    than a previous synth output.
    """
    from dvsguard.progress import make_progress

    cfg = cfg or SynthConfig()
    cfg.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise ConfigError(f"{out}: folder is not empty and holds no synth.json; choose a new or empty folder")
    start = time.perf_counter()
    images, digit_labels = _load_digits()
    picks = _assign_images(cfg, digit_labels)
    labels = np.repeat(np.arange(len(CLASSES)), cfg.per_class)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    total = len(picks)
    sensor = (cfg.size, cfg.size, 2)
    names = [CLASSES[label] for label in labels]
    rows = [(f"{name}/{name}_{i % cfg.per_class:04d}.npz", name) for i, name in enumerate(names)]
    starts = list(range(0, total, _BATCH))
    jobs = [
        (cfg, images[picks[lo:lo + _BATCH]], k, out, [rel for rel, _ in rows[lo:lo + _BATCH]])
        for k, lo in enumerate(starts)
    ]
    counts: list[int] = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(
                ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"))
            )
            results: Iterator[list[int]] = pool.map(_simulate_batch, jobs)
        else:
            results = map(_simulate_batch, jobs)
        progress = stack.enter_context(make_progress())
        task = progress.add_task("simulating recordings", total=total)
        for batch_counts in results:
            counts.extend(batch_counts)
            progress.advance(task, len(batch_counts))
    written = {out / rel for rel, _ in rows}
    for stale in sorted(out.glob("digit*/*.npz")):  # recordings of an earlier, larger run
        if stale not in written:
            stale.unlink()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "label"))
    writer.writerows(rows)
    write_text(out / "labels.csv", buf.getvalue())
    meta = {
        "format": FORMAT, "config": asdict(cfg), "classes": list(CLASSES), "sensor_size": list(sensor),
        # index into sklearn's digits of each recording's image, in labels.csv order
        "source_images": [int(i) for i in picks],
    }
    write_text(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    seconds = time.perf_counter() - start
    log.debug("wrote %d recordings (%.0f events each on average) to %s in %.1f s", total, np.mean(counts), out, seconds)
    return {
        "out_dir": str(out),
        "n_recordings": total,
        "classes": list(CLASSES),
        "n_events": int(np.sum(counts)),
        "sensor_size": list(sensor),
        "seconds": round(seconds, 2),
    }
