"""The simulated digit recordings: sensor model, files, labels, determinism, and the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data.events import EVENT_DTYPE, read_events
from dvsguard.data.synth import CLASSES, SynthConfig, dvs_events, make_digits
from dvsguard.errors import ConfigError


def test_dvs_pixel_emits_one_event_per_threshold_crossing_at_interpolated_times() -> None:
    # one pixel: log intensity ramps 0 -> 1 over the first step, back to 0 over the second, then rests
    frames = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32).reshape(4, 1, 1, 1)
    times = np.array([0.0, 1000.0, 2000.0, 3000.0])
    thresholds = np.full((2, 1, 1, 1), 0.25, dtype=np.float32)
    b, x, y, t, p = dvs_events(frames, times, thresholds)
    order = np.argsort(t)
    np.testing.assert_allclose(t[order], [250, 500, 750, 1000, 1250, 1500, 1750, 2000], atol=1e-3)
    np.testing.assert_array_equal(p[order], [1, 1, 1, 1, 0, 0, 0, 0])
    assert set(b) == {0} and set(x) == {0} and set(y) == {0}


def test_dvs_thresholds_per_polarity_and_pixel_and_the_reference_memory() -> None:
    # two pixels side by side; the left rises by 0.5 twice (ON threshold 0.3), the right never moves
    frames = np.zeros((3, 1, 1, 2), dtype=np.float32)
    frames[1, 0, 0, 0], frames[2, 0, 0, 0] = 0.5, 1.0
    thresholds = np.full((2, 1, 1, 2), 0.3, dtype=np.float32)
    b, x, y, t, p = dvs_events(frames, np.array([0.0, 10.0, 20.0]), thresholds)
    # crossings at 0.3, 0.6, 0.9: one in the first step (0.5 -> ref 0.3), two in the second
    assert len(t) == 3 and set(x) == {0} and set(p) == {1}
    np.testing.assert_allclose(np.sort(t), [6.0, 12.0, 18.0], atol=1e-4)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits")
    result = make_digits(out, SynthConfig(per_class=4, seed=3))
    return out, result


def test_files_labels_and_result(small_set: tuple[Path, dict]) -> None:
    out, result = small_set
    assert result["n_recordings"] == 40 and result["classes"] == list(CLASSES)
    assert result["out_dir"] == str(out)
    with (out / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40
    assert [row["label"] for row in rows].count("digit7") == 4  # balanced
    for row in rows:
        path = out / row["path"]
        assert path.is_file() and path.parent.name == row["label"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz"))
    assert files == sorted(row["path"] for row in rows), "labels.csv lists exactly the recordings"
    meta = json.loads((out / "synth.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["sensor_size"] == [48, 48, 2]
    assert len(meta["source_images"]) == 40 and len(set(meta["source_images"])) == 40
    from sklearn.datasets import load_digits

    digit_of = load_digits().target[meta["source_images"]]
    assert [f"digit{d}" for d in digit_of] == [row["label"] for row in rows], "each recording shows its class"


def test_recordings_read_back_with_plausible_events(small_set: tuple[Path, dict]) -> None:
    out, result = small_set
    total = 0
    for path in sorted(out.rglob("*.npz")):
        rec = read_events(path)
        ev = rec.events
        total += len(ev)
        assert rec.sensor_size == (48, 48, 2)
        assert ev.dtype == EVENT_DTYPE
        assert 800 < len(ev) < 30_000, (path, len(ev))
        assert np.all(np.diff(ev["t"]) >= 0)
        assert 0 <= ev["t"][0] and ev["t"][-1] < 300_000
        assert set(np.unique(ev["p"])) == {0, 1}
        assert ev["x"].max() < 48 and ev["y"].max() < 48
        # the moving digit, not the noise, makes most events: they concentrate on few pixels
        counts = np.bincount(ev["y"].astype(int) * 48 + ev["x"], minlength=48 * 48)
        top = np.sort(counts)[::-1][: 48 * 48 // 5].sum()
        assert top > 0.45 * len(ev), path
    assert total == result["n_events"]


def test_same_seed_same_recordings_other_seed_others(tmp_path: Path) -> None:
    cfg = SynthConfig(per_class=1, seed=11)
    make_digits(tmp_path / "a", cfg)
    make_digits(tmp_path / "b", cfg)
    make_digits(tmp_path / "c", SynthConfig(per_class=1, seed=12))
    for name in CLASSES[:3]:
        rel = f"{name}/{name}_0000.npz"
        a, b, c = (read_events(tmp_path / d / rel).events for d in "abc")
        assert np.array_equal(a, b)
        assert not (len(a) == len(c) and np.array_equal(a, c))


def test_worker_processes_write_the_same_files(tmp_path: Path) -> None:
    cfg = SynthConfig(per_class=6, size=24, n_steps=12)  # 60 recordings: two batches
    one = make_digits(tmp_path / "one", cfg, workers=1)
    two = make_digits(tmp_path / "two", cfg, workers=2)
    assert one["n_events"] == two["n_events"]
    assert (tmp_path / "one" / "labels.csv").read_text() == (tmp_path / "two" / "labels.csv").read_text()
    for path in sorted((tmp_path / "one").rglob("*.npz"))[::7]:
        twin = tmp_path / "two" / path.relative_to(tmp_path / "one")
        assert np.array_equal(read_events(path).events, read_events(twin).events)


def test_noise_rate_adds_events(tmp_path: Path) -> None:
    quiet = make_digits(tmp_path / "q", SynthConfig(per_class=1, noise=0.0))["n_events"]
    noisy = make_digits(tmp_path / "n", SynthConfig(per_class=1, noise=20.0))["n_events"]
    # 20 events/pixel/s over 48*48 pixels and 0.3 s is about 13,800 more per recording
    assert noisy - quiet > 10 * 10_000


def test_rerun_replaces_previous_output_and_refuses_foreign_folders(tmp_path: Path) -> None:
    make_digits(tmp_path / "d", SynthConfig(per_class=2))
    make_digits(tmp_path / "d", SynthConfig(per_class=1))
    assert len(list((tmp_path / "d").rglob("*.npz"))) == 10, "stale recordings of the earlier run were left"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_digits(tmp_path / "other", SynthConfig(per_class=1))
    with pytest.raises(ConfigError, match="per_class"):
        make_digits(tmp_path / "e", SynthConfig(per_class=0))


def test_cli_synth_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from dvsguard.cli import main; main()", "synth", str(tmp_path / "s"),
         "--per-class", "1", "--seed", "5", "--size", "32", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["out_dir"] == str(tmp_path / "s") and result["classes"] == list(CLASSES)
    assert result["n_recordings"] == 10 and result["sensor_size"] == [32, 32, 2]
    recs = [read_events(p) for p in sorted((tmp_path / "s").rglob("*.npz"))]
    assert len(recs) == 10 and all(r.sensor_size == (32, 32, 2) for r in recs)
    assert result["n_events"] == sum(len(r.events) for r in recs)


@pytest.mark.slow
def test_default_dataset_is_made_within_a_minute_on_two_workers(tmp_path: Path) -> None:
    result = make_digits(tmp_path / "digits", SynthConfig(), workers=2)
    assert result["n_recordings"] == 2000
    assert result["seconds"] < 60, result
    # each recording holds a few thousand events: enough for 10 frames, small on disk
    assert 2_000 < result["n_events"] / 2000 < 8_000
