"""Attack and training budgets ε: one parser, one labeller, conversions to events and between protocols.

ε is in *frame units*, whose meaning depends on the protocol (:mod:`dvsguard.protocol`). Under
``events`` frames at the model's door are ``count / count_cap`` in [0, 1] (see
:class:`dvsguard.data.frames.FramingConfig`), so ε = 8/255 with ``count_cap`` = 15 is
8·15/255 ≈ 0.47 events per frame pixel, polarity and frame bin — for CIFAR10-DVS at 48×48,
0.066 events per sensor pixel. Under ``paper`` frames are raw counts per sensor pixel, resized,
so ε = 8/255 is 0.031 events per sensor pixel: the same ε is 2.11× weaker there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from dvsguard.errors import ConfigError

EPS_HINT = "a number or a fraction such as 8/255"


def parse_eps(value: Any, where: str = "eps", *, allow_zero: bool = False) -> float:
    """``"8/255"``, ``"0.03"``, ``0.03`` or ``8`` → ε as a float in frame units.

    Raises ``ConfigError`` naming ``where`` for booleans, non-numbers, NaN/inf, negatives, and
    zero unless ``allow_zero`` (a curve's clean point).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected {EPS_HINT}, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}: expected {EPS_HINT}, got {value!r}") from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite ε, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{where}: ε must be {'>= 0' if allow_zero else '> 0'} (frame units), got {value!r}")
    return number


def parse_eps_list(value: Any, where: str = "eps", *, allow_zero: bool = False) -> tuple[float, ...]:
    """A comma list (``"8/255,4/255"``) or a sequence of ε values → tuple of floats (frame units)."""
    if isinstance(value, str):
        parts: Sequence[Any] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        parts = [value]
    if not parts:
        raise ConfigError(f"{where}: no ε given (expected {EPS_HINT}, or several separated by commas)")
    return tuple(parse_eps(p, where, allow_zero=allow_zero) for p in parts)


def eps_label(eps: float) -> str:
    """``8/255`` when ε is a whole number of 255ths, ``0`` for zero, else 4 significant digits."""
    if eps == 0:
        return "0"
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


def eps_to_events(eps: float, count_cap: int) -> float:
    """ε in frame units → events per pixel, polarity and frame bin for frames ``count / count_cap``."""
    return eps * count_cap


def events_to_eps(events: float, count_cap: int) -> float:
    """Events per pixel, polarity and frame bin → ε in frame units (inverse of :func:`eps_to_events`)."""
    return events / count_cap


def sensor_pixels_per_bin(sensor_wh: tuple[int, int], frame_hw: tuple[int, int]) -> float:
    """Average number of sensor pixels that fall into one frame pixel: ``(W_s·H_s) / (W·H)``.

    CIFAR10-DVS (128×128) framed at 48×48: 7.11 (tonic's ``Downsample`` bins are 3×3, 3×2 or 2×2).
    """
    (ws, hs), (h, w) = sensor_wh, frame_hw
    if min(ws, hs, h, w) < 1:
        raise ConfigError(f"sensor size {ws}x{hs} and frame size {w}x{h} must be positive")
    return (ws * hs) / (w * h)


def events_per_sensor_pixel(eps: float, protocol: str, count_cap: int | None, sensor_wh: tuple[int, int],
                            frame_hw: tuple[int, int]) -> float:
    """ε in a protocol's frame units → events per sensor pixel, polarity and frame bin.

    ``events`` frames are ``count / count_cap`` of events summed over a frame pixel's sensor pixels,
    so ε is ``ε·count_cap`` events spread over :func:`sensor_pixels_per_bin` sensor pixels.
    ``paper`` frames are counts per sensor pixel, bilinearly resampled (no antialiasing: each output
    value interpolates between neighbouring sensor pixels), so ε is already events per sensor pixel.
    """
    if protocol == "paper":
        return eps
    if count_cap is None:
        raise ConfigError("the events protocol needs the framing's count_cap to convert ε")
    return eps * count_cap / sensor_pixels_per_bin(sensor_wh, frame_hw)


def paper_units_per_events_unit(count_cap: int, sensor_wh: tuple[int, int], frame_hw: tuple[int, int]) -> float:
    """k: one ``events``-protocol frame unit in ``paper``-protocol units (2.11 for CIFAR10-DVS at 48×48, cap 15).

    The same physical perturbation is ``k``× larger in paper units; ε and h convert by ``k``, the SR
    weight λ by ``k²`` for the ``sq`` form and ``k`` for ``abs`` (the term is ‖∇ₓf_y‖₁² resp. ‖∇ₓf_y‖₁,
    and gradients w.r.t. a unit ``k``× larger are ``k``× larger).
    """
    return count_cap / sensor_pixels_per_bin(sensor_wh, frame_hw)


def convert_budget(value: float, what: str, k: float, to: str, sr_form: str = "sq") -> float:
    """Convert ε/h (``what`` = "eps" or "h") or λ (``what`` = "lam") between protocols.

    ``k`` is :func:`paper_units_per_events_unit`; ``to`` is the protocol converted to. The result
    describes the same physical perturbation (ε, h) or the same weight of the SR term (λ).
    """
    if to not in ("events", "paper"):
        raise ConfigError(f"unknown protocol {to!r} to convert to")
    powers = {"eps": 1.0, "h": 1.0, "lam": 2.0 if sr_form == "sq" else 1.0}
    if what not in powers:
        raise ConfigError(f"cannot convert {what!r}: expected eps, h or lam")
    # events → paper multiplies ε and h by k and λ by k^power: at equal λ the events term is k^power× the paper's
    factor = k ** powers[what]
    return value * factor if to == "paper" else value / factor


def budget_note(what: str, value: float, protocol: str, count_cap: int | None,
                sensor_wh: tuple[int, int] | None, frame_hw: tuple[int, int]) -> str:
    """One line stating a budget ``what`` (ε or h, frame units) in events and in the other protocol's unit.

    ``sensor_wh`` None (recordings of several sensor sizes) leaves out the per-sensor-pixel figures.
    """
    parts = [f"{what} = {eps_label(value)} ({protocol} protocol)"]
    if protocol == "events" and count_cap is not None:
        parts.append(f"{eps_to_events(value, count_cap):.3g} events per frame pixel")
    if sensor_wh is not None:
        parts.append(f"{events_per_sensor_pixel(value, protocol, count_cap, sensor_wh, frame_hw):.3g} events per "
                     f"sensor pixel and frame bin")
        if protocol == "events" and count_cap is not None:
            k = paper_units_per_events_unit(count_cap, sensor_wh, frame_hw)
            parts.append(f"{convert_budget(value, 'eps', k, 'paper') * 255:.3g}/255 in paper units")
        elif protocol == "paper":
            k = paper_units_per_events_unit(15, sensor_wh, frame_hw)
            parts.append(f"{convert_budget(value, 'eps', k, 'events') * 255:.3g}/255 in events units (count_cap 15)")
    return "; ".join(parts)
