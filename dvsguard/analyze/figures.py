"""The analysis figures as matplotlib ``Figure`` objects built from plain numbers.

Every function takes the same numbers that go into ``analysis.json`` (lists and dicts), returns
a ``matplotlib.figure.Figure`` (object API with the Agg canvas: no pyplot, no global state, no
display needed) and leaves saving to :func:`save_png`. matplotlib is imported only here, lazily.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    from dvsguard.atomic import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.35", wrap=True)


def _finite_positive(*arrays: Sequence[float]) -> np.ndarray:
    """Mask of entries finite and > 0 in every array."""
    mask = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        v = np.asarray(a, dtype=float)
        mask &= np.isfinite(v) & (v > 0)
    return mask


def _log_axes(ax: Any, x: bool = True, y: bool = True) -> None:
    """Log scale on the chosen axes."""
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")


def _diagonal(ax: Any, xs: np.ndarray, ys: np.ndarray, label: str = "y = x") -> None:
    if xs.size == 0:
        return
    lo = float(min(xs.min(), ys.min()))
    hi = float(max(xs.max(), ys.max()))
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label=label)


def _finish_scatter(ax: Any, all_x: Sequence[np.ndarray], all_y: Sequence[np.ndarray], labels: tuple[str, str, str],
                    empty: str) -> None:
    """Complete a log-log scatter panel of the drawn series ``all_x``/``all_y`` (1-D arrays, > 0).

    Adds the y = x diagonal over all points, log axes (or the note ``empty`` when no point was
    drawn), the (x label, y label, title) ``labels``, a grid and the legend.
    """
    xs = np.concatenate(all_x) if all_x else np.zeros(0)
    ys = np.concatenate(all_y) if all_y else np.zeros(0)
    _diagonal(ax, xs, ys)
    if xs.size:
        _log_axes(ax)
    else:
        _empty_note(ax, empty)
    xlabel, ylabel, title = labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def vulnerability_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Fig. 1: accuracy (%) against ε under uniform random noise (dashed) and FGSM (solid).

    ``curves[model] = {"eps": [...], "random": [...], "fgsm": [...]}`` (accuracies in %).
    """
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for color, (name, c) in zip(_colors(len(curves)), curves.items()):
        ax.plot(c["eps"], c["random"], color=color, linestyle="--", marker="o", label=f"{name}: random")
        ax.plot(c["eps"], c["fgsm"], color=color, linestyle="-", marker="s", label=f"{name}: FGSM")
    ax.set_xlabel("ε (frame units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Random vs adversarial perturbation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def theorem_figure(models: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Theorem 4.3 measured: three log-log scatters per model (one colour per model).

    ``models[name]`` holds per-sample lists ``ratio_pred`` (3‖g‖₁²/‖g‖₂²), ``ratio_emp``
    (ρ_adv/ρ_rand), ``rho_rand``, ``rho_rand_taylor`` (ε²‖g‖₂²/3), ``rho_adv``,
    ``rho_adv_taylor`` (ε²‖g‖₁²) and ``eps``. Non-positive or non-finite points are not drawn.
    """
    fig = _figure(15, 4.6)
    axes = fig.subplots(1, 3)
    panels = (
        ("ratio_pred", "ratio_emp", "predicted 3‖g‖₁²/‖g‖₂²", "measured ρ_adv/ρ_rand", "Theorem 4.3: vulnerability ratio"),
        ("rho_rand_taylor", "rho_rand", "Taylor ε²‖g‖₂²/3", "measured ρ_rand", "Random vulnerability"),
        ("rho_adv_taylor", "rho_adv", "Taylor ε²‖g‖₁²", "measured ρ_adv", "Adversarial vulnerability"),
    )
    for ax, (kx, ky, xl, yl, title) in zip(axes, panels):
        all_x, all_y = [], []
        for color, (name, m) in zip(_colors(len(models)), models.items()):
            ok = _finite_positive(m[kx], m[ky])
            xs = np.asarray(m[kx], dtype=float)[ok]
            ys = np.asarray(m[ky], dtype=float)[ok]
            ax.scatter(xs, ys, s=10, alpha=0.6, color=color, label=f"{name} (n={int(ok.sum())})")
            all_x.append(xs)
            all_y.append(ys)
        _finish_scatter(ax, all_x, all_y, (xl, yl, title),
                        "no sample with both values > 0\n(f_y did not change within ε: spikes are discrete)")
    return fig


def finite_difference_figure(models: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Proposition 4.4: |f_y(x+h·d) − f_y(x)|/h against ‖g‖₁, one panel per model, one colour per h.

    ``models[name] = {"l1": [...], "fd": {h_str: [...]}}`` (per-sample lists).
    """
    n = max(len(models), 1)
    fig = _figure(5.0 * n, 4.4)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (name, m) in zip(axes, models.items()):
        l1 = np.asarray(m["l1"], dtype=float)
        all_x, all_y = [], []
        for color, (h, fd) in zip(_colors(len(m["fd"])), m["fd"].items()):
            fd = np.asarray(fd, dtype=float)
            ok = _finite_positive(l1, fd)
            ax.scatter(l1[ok], fd[ok], s=10, alpha=0.6, color=color, label=f"h = {h}")
            all_x.append(l1[ok])
            all_y.append(fd[ok])
        _finish_scatter(ax, all_x, all_y, ("‖∇ₓ f_y‖₁ (surrogate gradient)", "|f_y(x + h·d) − f_y(x)| / h",
                                           f"Proposition 4.4: {name}"), "no sample with both values > 0")
    return fig


def sparsity_figure(hists: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Fig. 4: distribution of the gradient components, one line per model, two panels.

    ``hists[name]`` holds ``log10_edges``/``fraction_per_bin``/``zeros``/``counts`` (left: the
    magnitudes |g_i| on a log axis, as the fraction of all components per bin; exact zeros are
    given in the legend) and ``edges``/``density`` (right: ``g_i / max_j |g_j|`` per sample, pooled,
    as a probability density).
    """
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    for color, (name, h) in zip(_colors(len(hists)), hists.items()):
        total = float(np.sum(h["counts"])) or 1.0
        if "log10_edges" in h:
            edges = np.power(10.0, np.asarray(h["log10_edges"], dtype=float))
            ax1.stairs(np.asarray(h["fraction_per_bin"], dtype=float), edges, color=color, linewidth=1.5,
                       label=f"{name} ({100 * h.get('zeros', 0) / total:.1f}% exactly 0)")
        ax2.stairs(np.asarray(h["density"], dtype=float), np.asarray(h["edges"], dtype=float), color=color,
                   label=name, linewidth=1.5)
    ax1.set_xscale("log")
    ax1.set_xlabel("|g_i| = |∂f_y/∂x_i|")
    ax1.set_ylabel("fraction of components")
    ax1.set_title("Magnitude of ∇ₓ f_y components")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    _log_axes(ax2, x=False)
    ax2.set_xlabel("normalised gradient component g_i / max|g|")
    ax2.set_ylabel("density")
    ax2.set_title("Distribution of ∇ₓ f_y components")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return fig


def heatmap_figure(
    frames: Sequence[Any],
    grads: Mapping[str, Sequence[Any]],
    labels: Sequence[str] | None = None,
) -> Figure:
    """Fig. 5: each sample's events summed over time and polarity (top row) beside |g| summed the same way.

    ``frames``: per sample an ``[H, W]`` array; ``grads[model]``: per sample an ``[H, W]`` array.
    Each gradient map is scaled to its own maximum.
    """
    n = max(len(frames), 1)
    rows = 1 + len(grads)
    fig = _figure(2.2 * n + 0.6, 2.2 * rows + 0.3)
    axes = np.asarray(fig.subplots(rows, n, squeeze=False))
    for j in range(len(frames)):
        ax = axes[0, j]
        frame = np.asarray(frames[j], dtype=float)
        positive = frame[frame > 0]
        top = float(np.percentile(positive, 99)) if positive.size else 1.0  # hot pixels would wash out the rest
        ax.imshow(frame, cmap="gray_r", vmin=0, vmax=max(top, 1e-12), interpolation="nearest")
        ax.set_title(labels[j] if labels else f"sample {j}", fontsize=8)
        for i, (name, maps) in enumerate(grads.items(), start=1):
            axg = axes[i, j]
            m = np.asarray(maps[j], dtype=float)
            top = float(m.max()) if m.size and m.max() > 0 else 1.0
            axg.imshow(m / top, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
    for i, name in enumerate(["events"] + list(grads), start=0):
        axes[i, 0].set_ylabel(name if i == 0 else f"|∇ₓ f_y|: {name}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Events (summed over time and polarity) and |∇ₓ f_y|")
    return fig


def lambda_sweep_figure(points: Sequence[Mapping[str, float]], attack_label: str = "PGD") -> Figure:
    """Fig. 3: (a) clean and attacked accuracy (%) against λ, (b) mean ‖g‖₁ and ‖g‖₂ against λ.

    ``points``: one dict per checkpoint with ``lam``, ``clean``, ``attacked``, ``l1``, ``l2``.
    """
    pts = sorted(points, key=lambda p: p["lam"])
    lam = [p["lam"] for p in pts]
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(lam, [p["clean"] for p in pts], marker="o", label="clean")
    ax1.plot(lam, [p["attacked"] for p in pts], marker="s", label=attack_label)
    ax1.set_xlabel("λ")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_title("(a) accuracy against λ")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(lam, [p["l1"] for p in pts], marker="o", label="mean ‖∇ₓ f_y‖₁")
    ax2.plot(lam, [p["l2"] for p in pts], marker="s", label="mean ‖∇ₓ f_y‖₂")
    _log_axes(ax2, x=False)
    ax2.set_xlabel("λ")
    ax2.set_ylabel("gradient norm")
    ax2.set_title("(b) gradient norms against λ")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    return fig


def training_curves_figure(rows: Sequence[Mapping[str, Any]], title: str, x_key: str = "epoch") -> Figure:
    """Training curves: every numeric metric of ``rows`` (one dict per epoch) against ``x_key``.

    Metrics whose name mentions ``acc`` go to the right panel (accuracy), the rest (losses,
    regularizer, ...) to the left one; the learning rate, times and sample counts (``*_n``) are
    not drawn. Rows without ``x_key`` are numbered in order.
    """
    xs = [r.get(x_key, i) for i, r in enumerate(rows)]
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k != x_key and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    acc_keys = [k for k in keys if "acc" in k.lower()]
    skip = {"lr", "seconds", "time", "step", "samples"}
    other = [k for k in keys if k not in acc_keys and k.lower() not in skip
             and not k.lower().endswith(("seconds", "_n"))]
    fig = _figure(11, 4.0)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, group, ylabel in ((ax1, other, "value"), (ax2, acc_keys, "accuracy")):
        for k in group:
            pts = [(x, r[k]) for x, r in zip(xs, rows) if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
    ax1.set_title(f"{title}: losses")
    ax2.set_title(f"{title}: accuracy")
    return fig


def robust_vs_eps_figure(records: Sequence[Mapping[str, Any]], eps_list: Sequence[float]) -> Figure:
    """Robust accuracy (%) against ε (×1/255 of the frame range) per attack: white box solid, black box dashed.

    ``records`` are the attack stage's result rows (``attack``, ``eps``, ``setting``, ``accuracy`` in [0, 1]).
    """
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    xs = [e * 255 for e in eps_list]
    clean = next((r["accuracy"] for r in records if r["attack"] == "clean"), None)
    if clean is not None:
        ax.axhline(100 * clean, color="grey", linestyle=":", label="clean")
    attacks = [a for a in dict.fromkeys(r["attack"] for r in records) if a != "clean"]
    for i, name in enumerate(attacks):
        for setting, style in (("white", "-"), ("black", "--")):
            ys = [r["accuracy"] * 100 for e in eps_list for r in records
                  if r["attack"] == name and r["setting"] == setting and r["eps"] == e]
            if len(ys) == len(xs):
                ax.plot(xs, ys, style, marker="o", color=f"C{i}", label=f"{name.upper()} ({setting} box)")
    ax.set_xlabel("ε (×1/255 of the frame range)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _frame_panel(ax: Any, frames: Mapping[str, Sequence[Mapping[str, Any]]], colors: Sequence[Any]) -> None:
    """White-box robust accuracy (%) against ε·255 per model and attack, from ε = 0 (clean)."""
    styles = ("-", "--", ":", "-.")
    drawn = False
    for color, (model, records) in zip(colors, frames.items()):
        clean = next((r["accuracy"] for r in records if r["attack"] == "clean" and r["setting"] == "white"), None)
        attacks = [a for a in dict.fromkeys(r["attack"] for r in records) if a != "clean"]
        for i, name in enumerate(attacks):
            points = sorted((r["eps"], r["accuracy"]) for r in records
                            if r["attack"] == name and r["setting"] == "white")
            if clean is not None:
                points = [(0.0, clean), *points]
            ax.plot([255 * e for e, _ in points], [100 * a for _, a in points], styles[i % len(styles)], marker="o",
                    color=color, label=f"{model}: {name.upper()}")
            drawn = True
    if not drawn:
        _empty_note(ax, "no float-frame attack recorded")
    ax.set_xlabel("ε (×1/255 of the frame range)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Float model, float frames (white box)")


def _event_panel(ax: Any, events: Mapping[str, Sequence[Mapping[str, Any]]], colors: Sequence[Any]) -> None:
    """Integer-network robust accuracy (%) against the event budget per model and attack, from 0 (clean);
    each attacked point is labelled with the share (%) of samples the float model classifies differently."""
    styles = {"greedy": ("-", "o"), "random": ("--", "s")}
    budgets = [r["budget"] for rows in events.values() for r in rows if r["budget"] > 0]
    for color, (model, records) in zip(colors, events.items()):
        clean = next((r["accuracy"] for r in records if r["attack"] == "clean"), None)
        attacks = [a for a in dict.fromkeys(r["attack"] for r in records) if a != "clean"]
        for i, name in enumerate(attacks):
            rows = sorted((r for r in records if r["attack"] == name), key=lambda r: r["budget"])
            xs = ([0] if clean is not None else []) + [r["budget"] for r in rows]
            ys = ([100 * clean] if clean is not None else []) + [100 * r["accuracy"] for r in rows]
            line, marker = styles.get(name, ("-.", "^"))
            ax.plot(xs, ys, line, marker=marker, color=color, label=f"{model}: {name}")
            for r in rows:
                if r.get("float_disagreement") is not None:
                    ax.annotate(f"{100 * r['float_disagreement']:.0f}", (r["budget"], 100 * r["accuracy"]),
                                textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6, color=color)
    if budgets:
        from matplotlib.ticker import NullLocator

        ticks = sorted({0, *budgets})
        ax.set_xscale("symlog", linthresh=min(budgets))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        _empty_note(ax, "no event attack recorded")
    ax.set_xlabel("event budget (events inserted + deleted per sample)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Integer network, events (labels: float disagrees, %)")


def deployed_robustness_figure(frames: Mapping[str, Sequence[Mapping[str, Any]]],
                               events: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Float-frame robustness against ε beside the exported integer network's against the event budget.

    ``frames[model]``: the attack stage's result rows (``attack``, ``eps`` in frame units, ``setting``,
    ``accuracy`` in [0, 1]); ``events[model]``: the event attack's rows (``attack``, ``budget`` in events
    per sample, ``accuracy`` in [0, 1] on the integer network, ``float_disagreement`` in [0, 1]). One
    colour per model, in the order of ``events`` then ``frames``.
    """
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2, sharey=True)
    models = list(dict.fromkeys([*events, *frames]))
    color = dict(zip(models, _colors(len(models))))
    _frame_panel(left, frames, [color[m] for m in frames])
    _event_panel(right, events, [color[m] for m in events])
    for ax in (left, right):
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def axis_labels(fig: Figure) -> list[tuple[str, str]]:
    """``(xlabel, ylabel)`` of every axes of ``fig`` (for checks)."""
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
