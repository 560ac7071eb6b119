"""Attack and training budgets ε: one parser, one labeller, one conversion to event counts.

ε is in *frame units*: frames at the model's door are ``count / count_cap`` in [0, 1] (see
:class:`dvsguard.data.frames.FramingConfig`), so ε = 8/255 with ``count_cap`` = 15 is
8·15/255 ≈ 0.47 events per pixel, polarity and frame bin.
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
