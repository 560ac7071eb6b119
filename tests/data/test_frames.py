"""Framing: shapes, dtypes, conserved event counts, tonic's edge cases, clipping, downscaling."""

from __future__ import annotations

import numpy as np
import pytest
from tonic.transforms import ToFrame

from dvsguard.data.events import EVENT_DTYPE, Recording
from dvsguard.data.frames import FramingConfig, events_to_frames, frames_to_float
from dvsguard.errors import ConfigError, RecordingError


def random_events(n: int, width: int = 128, height: int = 128, duration: int = 1_000_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["t"] = np.sort(rng.integers(0, duration, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


@pytest.mark.parametrize("mode", ["events", "time"])
@pytest.mark.parametrize("n", [1, 3, 9, 10, 11, 12_345])
def test_shape_dtype_and_every_event_counted(mode: str, n: int) -> None:
    cfg = FramingConfig(n_frames=10, mode=mode, count_cap=255)
    frames = events_to_frames(Recording(random_events(n), (128, 128, 2)), cfg)
    assert frames.shape == (10, 2, 48, 48)
    assert frames.dtype == np.uint8
    assert int(frames.sum(dtype=np.int64)) == n  # nothing clipped at these densities


def test_event_bins_match_tonic_and_keep_its_dropped_tail() -> None:
    """Frames 0..T-2 are tonic's; tonic drops the n % T tail events, the last frame keeps them."""
    ev = random_events(10_007, 48, 48)
    tonic_frames = ToFrame(sensor_size=(48, 48, 2), n_event_bins=10)(ev.copy())
    assert tonic_frames.sum() == 10_000  # the tonic 1.7.0 behaviour this module corrects
    frames = events_to_frames(Recording(ev, (48, 48, 2)), FramingConfig(count_cap=255))
    np.testing.assert_array_equal(frames[:9], tonic_frames[:9])
    assert frames.reshape(10, -1).sum(1).tolist() == [1000] * 9 + [1007]
    tail = ev[10_000 - 1000 :]
    last = np.zeros((2, 48, 48), dtype=np.int64)
    np.add.at(last, (tail["p"].astype(int), tail["y"], tail["x"]), 1)
    np.testing.assert_array_equal(frames[9], last)


def test_time_bins_keep_the_last_event() -> None:
    ev = random_events(5_000, 48, 48)
    assert ToFrame(sensor_size=(48, 48, 2), n_time_bins=10)(ev.copy()).sum() < 5_000
    frames = events_to_frames(Recording(ev, (48, 48, 2)), FramingConfig(mode="time", count_cap=255))
    assert int(frames.sum(dtype=np.int64)) == 5_000
    # equal time spans: each frame holds the events of its tenth of the recording (±1 event at edges)
    per_frame = frames.reshape(10, -1).sum(1)
    t = ev["t"] - ev["t"][0]
    expected = np.bincount(np.minimum(t * 10 // (t[-1] + 1), 9), minlength=10)
    assert np.abs(per_frame - expected).max() <= 2


def test_time_bins_of_a_very_short_recording() -> None:
    ev = random_events(7, 48, 48, duration=3)  # spans < T µs: tonic's window is 0 µs
    frames = events_to_frames(Recording(ev, (48, 48, 2)), FramingConfig(mode="time"))
    assert int(frames.sum()) == 7


@pytest.mark.parametrize("mode", ["events", "time"])
def test_empty_recording_gives_zero_uint8_frames_in_the_right_layout(mode: str) -> None:
    empty = np.empty(0, dtype=EVENT_DTYPE)
    # tonic's own answer: float64, [T, P, W, H]
    raw = ToFrame(sensor_size=(64, 32, 2), n_event_bins=10)(empty)
    assert raw.dtype == np.float64 and raw.shape == (10, 2, 64, 32)
    cfg = FramingConfig(mode=mode, height=32, width=64)
    frames = events_to_frames(Recording(empty, (64, 32, 2)), cfg)
    assert frames.shape == (10, 2, 32, 64) and frames.dtype == np.uint8 and not frames.any()


def test_counts_are_clipped_at_the_cap_without_int16_wraparound() -> None:
    n = 40_000  # more than int16 holds, all at one pixel in one frame
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = 5, 7, np.arange(n), 1
    frames = events_to_frames(Recording(ev, (48, 48, 2)), FramingConfig(n_frames=1, count_cap=200))
    assert frames[0, 1, 7, 5] == 200
    assert int(frames.sum()) == 200
    frames = events_to_frames(Recording(ev[:100], (48, 48, 2)), FramingConfig(n_frames=1, count_cap=15))
    assert frames[0, 1, 7, 5] == 15


def test_downscale_128_to_48_floors_coordinates() -> None:
    ev = np.zeros(4, dtype=EVENT_DTYPE)
    ev["x"] = [0, 3, 127, 64]
    ev["y"] = [127, 0, 2, 64]
    ev["t"] = [0, 1, 2, 3]
    frames = events_to_frames(Recording(ev, (128, 128, 2)), FramingConfig(n_frames=1, count_cap=255))
    hits = {(int(y), int(x)) for _, y, x in zip(*np.nonzero(frames[0]))}
    # x' = floor(x * 48 / 128)
    assert hits == {(47, 0), (0, 1), (0, 47), (24, 24)}


def test_non_square_sensor_is_scaled_to_the_frame_size() -> None:
    ev = random_events(20_000, 346, 260)
    frames = events_to_frames(Recording(ev, (346, 260, 2)), FramingConfig(count_cap=255))
    assert frames.shape == (10, 2, 48, 48)
    assert int(frames.sum(dtype=np.int64)) == 20_000
    assert frames[:, :, -1, :].any() and frames[:, :, :, -1].any()


def test_unsorted_events_frame_like_sorted_ones() -> None:
    ev = random_events(3_000, 48, 48)
    shuffled = ev[np.random.default_rng(1).permutation(len(ev))]
    cfg = FramingConfig(count_cap=255)
    np.testing.assert_array_equal(
        events_to_frames(Recording(shuffled, (48, 48, 2)), cfg), events_to_frames(Recording(ev, (48, 48, 2)), cfg)
    )


def test_events_outside_the_sensor_are_an_error() -> None:
    ev = random_events(10, 48, 48)
    ev["x"][3] = 60
    with pytest.raises(RecordingError, match="outside the sensor"):
        events_to_frames(Recording(ev, (48, 48, 2)), FramingConfig())


def test_config_round_trip_and_validation() -> None:
    cfg = FramingConfig(n_frames=8, mode="time", height=32, width=40, count_cap=7)
    assert FramingConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.shape == (8, 2, 32, 40) and cfg.value_range == (0.0, 1.0)
    for bad in ({"mode": "space"}, {"n_frames": 0}, {"count_cap": 256}, {"height": 2.5}):
        with pytest.raises(ConfigError):
            FramingConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown"):
        FramingConfig.from_dict({"n_frames": 10, "colour": True})


def test_float_frames_lie_in_unit_range() -> None:
    counts = np.array([0, 1, 7, 15], dtype=np.uint8)
    out = frames_to_float(counts, 15)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 1 / 15, 7 / 15, 1])
