"""Events to frames ``[T, 2, H, W]`` (time, polarity, rows, columns), by one of two methods.

``downsample`` (the ``events`` protocol): the frames of a recording are an ``uint8`` array
``[T, 2, H, W]`` of event counts per pixel, polarity and time bin, clipped at ``count_cap``.
At the model's door they become float32 ``count / count_cap`` (see :func:`frames_to_float`),
so every frame value lies in ``value_range = (0.0, 1.0)``; attack budgets ε are expressed in
that unit (with the default ``count_cap = 15``, ε = 8/255 ≈ 0.031 is 0.47 of one event count).

``resize`` (the ``paper`` protocol, see :func:`resize_frames`): SpikingJelly's
``split_by='number'`` count frames at the sensor size, bilinearly resized to ``H×W`` as
torchvision's tensor ``Resize`` did; the frames are float32 raw (interpolated, fractional)
event counts, neither clipped nor scaled, and they are the model input as stored. Their range
is the data's: a cache records ``(0, largest value)`` of each split.

Downsample framing follows tonic (``tonic.transforms.Downsample`` to the target size, then
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
FRAME_METHODS = ("downsample", "resize")
DEFAULT_METHOD = "downsample"
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
        mode: ``"events"`` (equal event counts per frame, tonic ``n_event_bins``, or
            SpikingJelly ``split_by='number'`` under ``resize``) or ``"time"`` (equal time
            spans, tonic ``n_time_bins``; ``downsample`` only).
        height, width: frame size in pixels. ``downsample`` rescales the events from the
            sensor size (``x' = floor(x * width / sensor_width)``, tonic's ``Downsample``);
            ``resize`` counts them at the sensor size and resizes the count frames bilinearly.
        count_cap: ``downsample``: event counts per pixel, polarity and frame are clipped at
            this (1..255, default :data:`DEFAULT_COUNT_CAP`); frames at the model's door are
            ``count / count_cap`` in [0, 1]. ``resize``: must be ``None`` (raw counts).
        method: ``"downsample"`` (uint8 clipped counts) or ``"resize"`` (float32 raw counts,
            see :func:`resize_frames`).
    """

    n_frames: int = 10
    mode: str = "events"
    height: int = 48
    width: int = 48
    count_cap: int | None = None
    method: str = DEFAULT_METHOD

    def __post_init__(self) -> None:
        for name in ("n_frames", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"framing: {name} must be a positive integer, got {value!r}")
        if self.method not in FRAME_METHODS:
            raise ConfigError(f"framing: method must be one of {', '.join(FRAME_METHODS)}, got {self.method!r}")
        if self.mode not in FRAME_MODES:
            raise ConfigError(f"framing: mode must be one of {', '.join(FRAME_MODES)}, got {self.mode!r}")
        if self.method == "resize":
            if self.count_cap is not None:
                raise ConfigError(f"framing: count_cap applies to downsample framing only (resize frames are "
                                  f"unclipped raw counts), got {self.count_cap!r}")
            if self.mode != "events":
                raise ConfigError("framing: resize framing integrates equal event counts per frame "
                                  f"(SpikingJelly split_by='number'): mode must be 'events', got {self.mode!r}")
        else:
            if self.count_cap is None:
                object.__setattr__(self, "count_cap", DEFAULT_COUNT_CAP)
            cap = self.count_cap
            if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
                raise ConfigError(f"framing: count_cap must be a positive integer, got {cap!r}")
            if cap > 255:
                raise ConfigError(f"framing: count_cap must be at most 255 (frames are stored as uint8), got {cap}")
        MAX_FRAMES.check(int(self.n_frames), "framing", "n_frames", ConfigError)
        sample_bytes = 4 * int(np.prod(self.shape, dtype=object))
        MAX_ARRAY_BYTES.check(sample_bytes, "framing", f"a float32 sample of {'x'.join(map(str, self.shape))}",
                              ConfigError)

    @property
    def dtype(self) -> np.dtype:
        """dtype of the stored frames: uint8 counts (downsample) or float32 raw counts (resize)."""
        return np.dtype(np.uint8 if self.method == "downsample" else np.float32)

    @property
    def input_scale(self) -> float:
        """Stored frame units per model-input unit: ``count_cap`` (downsample) or 1 (resize)."""
        return float(self.count_cap) if self.count_cap is not None else 1.0

    @property
    def value_range(self) -> tuple[float, float] | None:
        """Range of the float frames at the model's door: ``(0.0, 1.0)`` for downsample; ``None``
        for resize, whose range is the data's (``CacheInfo.value_range``)."""
        return VALUE_RANGE if self.method == "downsample" else None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of one recording's frames: ``(T, 2, H, W)``."""
        return (self.n_frames, 2, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (JSON-ready).

        ``method`` is left out when it is ``downsample``, so the dicts (and the cache keys and
        file names made from them) of downsample framings are those from before the field
        existed; :meth:`from_dict` reads a dict without it as downsample.
        """
        out = {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in asdict(self).items()}
        if self.method == DEFAULT_METHOD:
            del out["method"]
        return out

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
    """Frame one recording into ``[T, 2, H, W]``; channel 0 holds the ``p = 0`` events, channel 1 ``p = 1``.

    ``downsample``: ``uint8`` event counts clipped at ``cfg.count_cap``; events are sorted by
    time first where needed, and without clipping ``frames.sum() == len(rec.events)``.
    ``resize``: float32 raw counts, see :func:`resize_frames` (events in the recording's order).

    ``rec.events`` is a structured array (x, y, t in µs, p in {0, 1}); ``rec.sensor_size``
    is ``(W, H, P)``. Events outside the sensor raise ``RecordingError``.
    """
    events = rec.events
    sensor_w, sensor_h = int(rec.sensor_size[0]), int(rec.sensor_size[1])
    if len(events) == 0:
        # tonic returns float64 [T, P, W, H] here
        return np.zeros(cfg.shape, dtype=cfg.dtype)
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
    if cfg.method == "resize":
        return resize_frames(events, (sensor_w, sensor_h), cfg)
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


def frames_to_float(frames: np.ndarray, count_cap: int | None) -> np.ndarray:
    """Stored frames ``[..., H, W]`` → the float32 model input.

    uint8 counts with ``count_cap`` (downsample) → ``count / count_cap`` in [0, 1]; float32 raw
    counts with ``count_cap=None`` (resize) → the stored values, unchanged. Any other pairing
    is a ``ConfigError``.
    """
    if count_cap is None:
        if frames.dtype != np.float32:
            raise ConfigError(f"frames of {frames.dtype} need a count_cap; raw-count (resize) frames are float32")
        return np.asarray(frames)
    if frames.dtype.kind not in "iu":
        raise ConfigError(f"frames of {frames.dtype} are raw counts (resize framing): they take no count_cap")
    return frames.astype(np.float32) / np.float32(count_cap)


def resize_frames(events: np.ndarray, sensor_wh: tuple[int, int], cfg: FramingConfig) -> np.ndarray:
    """The authors' CIFAR10-DVS frames: float32 ``[T, 2, H, W]`` raw event counts, bilinearly resized.

    1. SpikingJelly's ``split_by='number'`` integration (``spikingjelly.datasets``
       ``cal_fixed_frames_number_segment_index`` and ``integrate_events_segment_to_frame``)
       at the sensor size ``(W_s, H_s)``: with ``N`` events in the recording's order and
       ``d = N // T``, frame ``j < T - 1`` counts the events ``[j·d, (j + 1)·d)`` and the last
       frame the events ``[(T - 1)·d, N)`` (the ``N % T`` remainder, or all events when
       ``N < T``); channel 0 counts the events with ``p == 0``, channel 1 the others.
    2. ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False,
       antialias=False)`` of the float32 counts ``[T, 2, H_s, W_s]`` to ``(H, W)``: what
       ``torchvision.transforms.Resize((H, W))`` did to a tensor up to torchvision 0.14 (its
       ``functional_tensor.resize`` set ``antialias=None`` to ``False`` and called
       ``interpolate`` with ``align_corners=False`` for bilinear; only PIL images were
       antialiased). The values are counts per pixel and polarity, fractional after the
       interpolation, never clipped or scaled.

    ``events`` must lie inside the sensor with ``p`` in {0, 1} (see :func:`events_to_frames`).
    """
    import torch
    import torch.nn.functional as F

    sensor_w, sensor_h = sensor_wh
    t_frames = cfg.n_frames
    MAX_ARRAY_BYTES.check(8 * t_frames * 2 * sensor_h * sensor_w, "framing",
                          f"count frames of {t_frames}x2x{sensor_h}x{sensor_w} at the sensor size", RecordingError)
    n = len(events)
    per_frame = n // t_frames
    if per_frame:
        frame = np.minimum(np.arange(n) // per_frame, t_frames - 1)
    else:
        frame = np.full(n, t_frames - 1)
    channel = (events["p"] != 0).astype(np.int64)
    flat = ((frame * 2 + channel) * sensor_h + events["y"].astype(np.int64)) * sensor_w + events["x"].astype(np.int64)
    counts = np.bincount(flat, minlength=t_frames * 2 * sensor_h * sensor_w).reshape(t_frames, 2, sensor_h, sensor_w)
    x = torch.from_numpy(counts.astype(np.float32))
    with torch.no_grad():
        out = F.interpolate(x, size=(cfg.height, cfg.width), mode="bilinear", align_corners=False, antialias=False)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)
