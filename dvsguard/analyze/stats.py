"""Small statistics for the analysis: correlations, JSON-safe numbers (pure numpy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length samples; None when undefined (n < 3 or constant)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); None when undefined."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) < 3:
        return None
    return pearson(_ranks(x), _ranks(y))


def agreement(pred: Sequence[float], meas: Sequence[float]) -> dict[str, Any]:
    """How well ``pred`` tracks ``meas`` over the pairs where both are finite and > 0.

    Returns ``n`` (pairs used), ``pearson_log`` (Pearson of log10 values), ``spearman``,
    ``median_log10_ratio`` (median of log10(meas/pred): 0 means no systematic bias).
    """
    p = np.asarray(pred, dtype=float)
    m = np.asarray(meas, dtype=float)
    ok = np.isfinite(p) & np.isfinite(m) & (p > 0) & (m > 0)
    p, m = p[ok], m[ok]
    return {
        "n": int(ok.sum()),
        "pearson_log": pearson(np.log10(p), np.log10(m)) if len(p) else None,
        "spearman": spearman(p, m) if len(p) else None,
        "median_log10_ratio": float(np.median(np.log10(m / p))) if len(p) else None,
    }


def mean(values: Sequence[float]) -> float | None:
    """Mean over the finite entries; None when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy/torch scalars and arrays turned into Python numbers and NaN/inf into None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
