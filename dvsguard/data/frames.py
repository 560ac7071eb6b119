"""Events to frames: tonic's ``ToFrame`` into ``T`` frames of 2 polarity channels, as small integers.

The frames of a recording are an ``uint8`` array ``[T, 2, H, W]`` of event counts per pixel,
polarity and time bin, clipped at ``count_cap``. At the model's door they become float32
``count / count_cap`` (see :func:`frames_to_float`), so every frame value lies in
``value_range = (0.0, 1.0)``; attack budgets ε are expressed in that unit (with the default
``count_cap = 15``, ε = 8/255 ≈ 0.031 is 0.47 of one event count).

Framing follows tonic (``tonic.transforms.Downsample`` to the target size, then
``tonic.transforms.ToFrame`` with ``n_event_bins`` — equal event counts per frame, the
paper's framing of CIFAR10-DVS — or ``n_time_bins`` — equal time spans), with these of
tonic 1.7.0's edge cases guarded:

* an empty recording comes back from ``ToFrame`` as float64 ``[T, P, W, H]`` (axes
  swapped): it becomes all-zero ``[T, 2, H, W]`` frames here;
* ``n_event_bins`` puts ``n // T`` events in each frame and drops the ``n % T`` tail
  events (all events when ``n < T``); ``n_time_bins`` uses a window of
  ``(t_last - t_first) // T`` µs, so the last event(s) fall after the last window (all
  events when the recording spans fewer than ``T`` µs): the dropped tail is added to the
  last frame here, so the frame counts always sum to the number of events (before
  clipping at ``count_cap``);
* ``ToFrame`` accumulates into int16, which would wrap above 32767 events per pixel:
  such counts are clipped at ``count_cap`` anyway, so they are accumulated safely here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from dvsguard.errors import ConfigError, RecordingError
from dvsguard.limits import MAX_ARRAY_BYTES, MAX_FRAMES

if TYPE_CHECKING:  # pragma: no cover
    from dvsguard.data.events import Recording

FRAME_MODES = ("events", "time")
VALUE_RANGE = (0.0, 1.0)
# counts per pixel/polarity/frame are clipped at this; 15 keeps ε = 8/255 below one event
DEFAULT_COUNT_CAP = 15


@dataclass(frozen=True)
class FramingConfig:
    """How recordings become frames.

    Sizes are bounded before anything is allocated: ``n_frames`` by
    :data:`dvsguard.limits.MAX_FRAMES`, the bytes of one sample's float32 frames
    ``4·T·2·H·W`` by :data:`dvsguard.limits.MAX_ARRAY_BYTES` (a ConfigError otherwise).

    Attributes:
        n_frames: number of frames ``T`` per recording.
        mode: ``"events"`` (equal event counts per frame, tonic ``n_event_bins``) or
            ``"time"`` (equal time spans, tonic ``n_time_bins``).
        height, width: frame size in pixels; events are rescaled from the sensor size
            (``x' = floor(x * width / sensor_width)``, tonic's ``Downsample``).
        count_cap: event counts per pixel, polarity and frame are clipped at this
            (1..255); frames at the model's door are ``count / count_cap`` in [0, 1].
    """

    n_frames: int = 10
    mode: str = "events"
    height: int = 48
    width: int = 48
    count_cap: int = DEFAULT_COUNT_CAP

    def __post_init__(self) -> None:
        for name in ("n_frames", "height", "width", "count_cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"framing: {name} must be a positive integer, got {value!r}")
        if self.count_cap > 255:
            raise ConfigError(f"framing: count_cap must be at most 255 (frames are stored as uint8), got {self.count_cap}")
        if self.mode not in FRAME_MODES:
            raise ConfigError(f"framing: mode must be one of {', '.join(FRAME_MODES)}, got {self.mode!r}")
        MAX_FRAMES.check(int(self.n_frames), "framing", "n_frames", ConfigError)
        sample_bytes = 4 * int(np.prod(self.shape, dtype=object))
        MAX_ARRAY_BYTES.check(sample_bytes, "framing", f"a float32 sample of {'x'.join(map(str, self.shape))}",
                              ConfigError)

    @property
    def value_range(self) -> tuple[float, float]:
        """Range of the float frames at the model's door: ``(0.0, 1.0)``."""
        return VALUE_RANGE

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of one recording's frames: ``(T, 2, H, W)``."""
        return (self.n_frames, 2, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (JSON-ready)."""
        return {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FramingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ConfigError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"framing: unknown setting(s) {', '.join(unknown)}")
        return cls(**{k: data[k] for k in known if k in data})


def _downsample(events: np.ndarray, sensor_wh: tuple[int, int], cfg: FramingConfig) -> np.ndarray:
    """Rescale x/y from the sensor size to ``(cfg.width, cfg.height)`` with tonic's Downsample."""
    if sensor_wh == (cfg.width, cfg.height):
        return events
    from tonic.transforms import Downsample

    out = Downsample(sensor_size=(*sensor_wh, 2), target_size=(cfg.width, cfg.height))(events)
    # Downsample truncates the scaled coordinates (floor for x, y >= 0); guard float round-off
    np.clip(out["x"], 0, cfg.width - 1, out=out["x"])
    np.clip(out["y"], 0, cfg.height - 1, out=out["y"])
    return out


def _slice_bounds(events: np.ndarray, cfg: FramingConfig) -> list[tuple[int, int]]:
    """Index ranges ``[start, end)`` of tonic's slicing, the dropped tail joined to the last bin."""
    from tonic.slicers import SliceByEventBins, SliceByTimeBins

    slicer = SliceByEventBins(cfg.n_frames) if cfg.mode == "events" else SliceByTimeBins(cfg.n_frames)
    bounds = [(int(a), int(b)) for a, b in slicer.get_slice_metadata(events, 0)]
    start, _ = bounds[-1]
    bounds[-1] = (start, len(events))
    return bounds


def events_to_frames(rec: Recording, cfg: FramingConfig) -> np.ndarray:
    """Frame one recording: ``uint8 [T, 2, H, W]`` event counts clipped at ``cfg.count_cap``.

    ``rec.events`` is a structured array (x, y, t in µs, p in {0, 1}); ``rec.sensor_size``
    is ``(W, H, P)``. Events are sorted by time first where needed. Without clipping,
    ``frames.sum() == len(rec.events)``. Events outside the sensor raise ``RecordingError``.
    """
    events = rec.events
    sensor_w, sensor_h = int(rec.sensor_size[0]), int(rec.sensor_size[1])
    if len(events) == 0:
        # tonic returns float64 [T, P, W, H] here
        return np.zeros(cfg.shape, dtype=np.uint8)
    for name in ("x", "y", "t", "p"):
        if events.dtype.names is None or name not in events.dtype.names:
            raise RecordingError(f"events lack the field {name!r} (have {events.dtype.names})")
    x, y, p = events["x"], events["y"], events["p"]
    if x.min() < 0 or y.min() < 0 or x.max() >= sensor_w or y.max() >= sensor_h:
        raise RecordingError(
            f"events outside the sensor size {sensor_w}x{sensor_h}: "
            f"x in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}]"
        )
    if p.min() < 0 or p.max() > 1:
        raise RecordingError(f"polarity must be 0 or 1, found values in [{p.min()}, {p.max()}]")
    if np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    events = _downsample(events, (sensor_w, sensor_h), cfg)

    from tonic.transforms import ToFrame

    n = len(events)
    bounds = _slice_bounds(events, cfg)
    if max(b - a for a, b in bounds) <= np.iinfo(np.int16).max:
        kwargs = {"n_event_bins": cfg.n_frames} if cfg.mode == "events" else {"n_time_bins": cfg.n_frames}
        counts = np.asarray(ToFrame(sensor_size=(cfg.width, cfg.height, 2), **kwargs)(events), dtype=np.int64)
        tail = events[bounds[-1][0] + int(counts[-1].sum()) :]  # what tonic left out of the last frame
        if len(tail):
            np.add.at(counts[-1], (tail["p"].astype(np.intp), tail["y"], tail["x"]), 1)
    else:  # ToFrame's int16 accumulator could wrap: same slicing, int64 counts
        counts = np.zeros((cfg.n_frames, 2, cfg.height, cfg.width), dtype=np.int64)
        for i, (a, b) in enumerate(bounds):
            s = events[a:b]
            np.add.at(counts[i], (s["p"].astype(np.intp), s["y"], s["x"]), 1)
    if counts.shape != cfg.shape or int(counts.sum()) != n:
        raise RecordingError(f"framing lost events: {int(counts.sum())} of {n} counted in frames of shape {counts.shape}")
    return np.minimum(counts, cfg.count_cap).astype(np.uint8)


def frames_to_float(frames: np.ndarray, count_cap: int) -> np.ndarray:
    """``uint8 [..., H, W]`` counts → float32 ``count / count_cap`` in [0, 1]."""
    return frames.astype(np.float32) / np.float32(count_cap)
