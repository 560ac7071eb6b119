"""The paper's measurements on one or more checkpoints, as PNGs and one JSON.

For each model, on the same deterministic subset of a cache split (frames ``[T, N, 2, H, W]``):

1. accuracy under uniform random noise and under FGSM for a list of ε (Fig. 1);
2. per sample ``g = ∇ₓ f_y``, ‖g‖₁, ‖g‖₂, ‖g‖₀, the predicted ratio 3‖g‖₁²/‖g‖₂², and the
   measured ρ_rand (Monte-Carlo), ρ_adv (sign-gradient ascent) and their ratio at a small ε
   (Theorem 4.3);
3. the finite difference |f_y(x + h·sign g) − f_y(x)|/h for several h against ‖g‖₁ (Prop. 4.4);
4. the histogram of ``g_i / max|g|`` (Fig. 4); 5. |g| maps of a few samples (Fig. 5);
6. clean and PGD accuracy and mean ‖g‖₁, ‖g‖₂ against the training λ when models differ in λ (Fig. 3).

Every number behind a figure is in ``analysis.json``; :func:`analyze_models` returns a summary
(:mod:`dvsguard.stages.analyze` loads the checkpoints and the samples).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dvsguard.analyze import stats
from dvsguard.analyze.gradients import (
    DEFAULT_L0_TOL,
    GradientNorms,
    TrueLabelGradient,
    gradient_norms,
    true_label_gradient,
    within_bounds,
)
from dvsguard.analyze.vulnerability import finite_difference, rho_adv, rho_rand
from dvsguard.errors import CheckpointError, ConfigError
from dvsguard.units import eps_label

log = logging.getLogger(__name__)

FORMAT = "dvsguard-analysis/1"
LOG_RANGE = (-12.0, 2.0)  # log10 |g_i| histogram range (values outside are put in the end bins)
LOG_BINS = 140
DEFAULT_EPS = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)


@dataclass(frozen=True)
class AnalysisSettings:
    """What ``analyze`` measures; ε, h in frame units (frames in [0, 1]).

    Attributes:
        eps: ε list of the random-vs-FGSM accuracy curves (Fig. 1).
        theory_eps: the small ε at which ρ_rand, ρ_adv are measured (Theorem 4.3).
        mc_draws: uniform draws per sample for ρ_rand.
        adv_steps: sign-gradient ascent steps per start for ρ_adv (two starts: ±ε·sign g).
        fd_steps: the finite-difference steps h of Proposition 4.4.
        l0_tol: ‖g‖₀ counts components with |g_i| > l0_tol · max|g| (per sample).
        pgd_eps, pgd_steps: the PGD attack of the λ sweep (step 2.5·ε/k, random start).
        heatmaps: samples shown in the gradient heatmaps.
        hist_bins: bins of the gradient-component histogram over [−1, 1].
        batch: samples per forward pass.
        limit: samples analysed (a seeded random subset of the split; None = all).
        grad_mode: surrogate gradient of the IF neurons for every gradient taken (g, ρ_adv,
            FGSM, PGD), e.g. ``"sigmoid:4"`` or ``"rga"``; None keeps the model's own (training) mode.
    """

    eps: tuple[float, ...] = DEFAULT_EPS
    theory_eps: float = 2 / 255
    mc_draws: int = 32
    adv_steps: int = 5
    fd_steps: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    l0_tol: float = DEFAULT_L0_TOL
    pgd_eps: float = 8 / 255
    pgd_steps: int = 10
    heatmaps: int = 4
    hist_bins: int = 101
    batch: int = 32
    limit: int | None = 256
    grad_mode: str | None = None

    def __post_init__(self) -> None:
        if any(not e >= 0 for e in self.eps):
            raise ConfigError(f"analysis eps values must be >= 0 (frame units), got {list(self.eps)}")
        if not self.theory_eps > 0:
            raise ConfigError(f"analysis theory eps must be > 0, got {self.theory_eps}")
        if any(not h > 0 for h in self.fd_steps):
            raise ConfigError(f"finite-difference steps must be > 0, got {list(self.fd_steps)}")
        for name in ("mc_draws", "batch", "hist_bins", "pgd_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"analysis setting {name} must be >= 1, got {getattr(self, name)}")
        if self.adv_steps < 0 or self.heatmaps < 0 or self.l0_tol < 0:
            raise ConfigError("analysis settings adv_steps, heatmaps and l0_tol must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"analysis limit must be >= 1, got {self.limit}")


@dataclass
class Samples:
    """The analysed frames ``x`` ``[T, N, C, H, W]``, labels ``y`` ``[N]`` and their indices in the split."""

    x: Tensor
    y: Tensor
    index: list[int]
    classes: list[str] = field(default_factory=list)
    value_range: tuple[float, float] = (0.0, 1.0)
    source: str = ""


# ----------------------------------------------------------------------------- inputs


def load_samples(cache: str | os.PathLike[str], split: str, limit: int | None, seed: int) -> Samples:
    """A seeded random subset (``limit`` samples, in index order) of ``split`` of the cache at ``cache``.

    ``cache`` is any split's file; the ``split`` sibling is found through the cache's records.
    """
    from dvsguard.data.cache import open_cache, split_path
    from dvsguard.data.dataset import FrameDataset

    info = open_cache(cache)
    path = info.path if info.split == split else split_path(info, split)
    ds = FrameDataset(path)
    n = len(ds)
    if n == 0:
        raise ConfigError(f"{path}: the {split!r} split holds no samples")
    if limit is None or limit >= n:
        index = list(range(n))
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
        index = sorted(int(i) for i in perm)
    items = [ds[i] for i in index]
    ds.close()
    x = torch.stack([it[0] for it in items], dim=1)
    y = torch.tensor([it[1] for it in items], dtype=torch.int64)
    return Samples(x, y, index, list(ds.classes), tuple(ds.info.value_range), str(path))


def model_name(path: Path, taken: set[str]) -> str:
    """A short unique name: the run folder for ``best.pt``/``last.pt``, else the file stem."""
    base = path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def check_compatible(path: Path, model: nn.Module, payload: dict[str, Any], samples: Samples) -> None:
    """Raise CheckpointError when the model cannot classify these samples (classes or frame size)."""
    classes = (payload.get("data") or {}).get("classes")
    if classes and samples.classes and list(classes) != list(samples.classes):
        raise CheckpointError(f"{path}: trained on classes {list(classes)}, the cache has {samples.classes}")
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        size = tuple(samples.x.shape[-2:])
        if size != (cfg.input_size, cfg.input_size) or samples.x.shape[2] != cfg.in_channels:
            raise CheckpointError(
                f"{path}: the model takes [T, B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}] frames, "
                f"the cache holds [T, B, {samples.x.shape[2]}, {size[0]}, {size[1]}]"
            )
        if not samples.classes and cfg.num_classes <= int(samples.y.max()):
            raise CheckpointError(f"{path}: the model has {cfg.num_classes} classes, labels go to {int(samples.y.max())}")


# ----------------------------------------------------------------------------- one model


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


PER_SAMPLE_KEYS = ("label", "pred", "wrong", "f_y", "l1", "l2", "linf", "l0", "ratio_pred", "rho_rand", "rho_rand_se",
                   "rho_adv", "ratio_emp", "bounds_pred", "bounds_emp")
"""The per-sample lists of :func:`measure_model` (``per_sample``), in their JSON order."""


def _per_sample(model: nn.Module, x: Tensor, y: Tensor, res: TrueLabelGradient, norms: GradientNorms,
                settings: AnalysisSettings, gen: torch.Generator) -> dict[str, list[Any]]:
    """The :data:`PER_SAMPLE_KEYS` lists of one batch (``x`` ``[T, B, C, H, W]``, ``y`` ``[B]``; B entries each).

    ρ_rand (with its standard error) and ρ_adv are measured at ``settings.theory_eps`` (frame
    units), ρ_rand with draws from ``gen``.
    """
    eps = settings.theory_eps
    rr, rr_se = rho_rand(model, x, y, res.wrong, eps, settings.mc_draws, gen, chunk=max(1, 64 // x.shape[1]))
    ra = rho_adv(model, x, y, res.wrong, eps, res.g, steps=settings.adv_steps)
    ratio_emp = torch.where(rr > 0, ra / rr.clamp_min(1e-300), torch.full_like(rr, float("nan")))
    return {
        "label": y.tolist(),
        "pred": res.logits.argmax(dim=1).tolist(),
        "wrong": res.wrong.tolist(),
        "f_y": res.f_y.double().tolist(),
        "l1": norms.l1.tolist(),
        "l2": norms.l2.tolist(),
        "linf": norms.linf.tolist(),
        "l0": norms.l0.tolist(),
        "ratio_pred": norms.ratio.tolist(),
        "rho_rand": rr.tolist(),
        "rho_rand_se": rr_se.tolist(),
        "rho_adv": ra.tolist(),
        "ratio_emp": ratio_emp.tolist(),
        "bounds_pred": within_bounds(norms.ratio, norms.l0).tolist(),
        "bounds_emp": within_bounds(ratio_emp, norms.l0).tolist(),
    }


class _ComponentHistogram:
    """Histograms of the gradient components pooled over samples (Fig. 4).

    ``counts`` over ``edges`` (``bins`` bins on [−1, 1]) of ``g_i / max_j |g_j|`` per sample;
    ``log_counts`` over ``log_edges`` (:data:`LOG_BINS` bins on :data:`LOG_RANGE`) of log10 |g_i|
    of the non-zero components, values outside put in the end bins; ``zeros`` counts ``g_i = 0``.
    """

    def __init__(self, bins: int) -> None:
        self.edges = np.linspace(-1.0, 1.0, bins + 1)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.log_edges = np.linspace(LOG_RANGE[0], LOG_RANGE[1], LOG_BINS + 1)
        self.log_counts = np.zeros(LOG_BINS, dtype=np.int64)
        self.zeros = 0

    def add(self, g: Tensor) -> None:
        """Count the components of a batch's gradients ``g`` ``[T, B, C, H, W]``."""
        rows = g.transpose(0, 1).reshape(g.shape[1], -1).double()
        top = rows.abs().max(dim=1, keepdim=True).values
        normed = torch.where(top > 0, rows / top.clamp_min(1e-300), torch.zeros_like(rows))
        self.counts += np.histogram(normed.numpy().ravel(), bins=self.edges)[0]
        mags = rows.abs().numpy().ravel()
        nonzero = mags[mags > 0]
        self.zeros += int(mags.size - nonzero.size)
        self.log_counts += np.histogram(np.clip(np.log10(nonzero), LOG_RANGE[0], LOG_RANGE[1]), bins=self.log_edges)[0]

    def to_json(self) -> dict[str, Any]:
        """The ``histogram`` entry of :func:`measure_model`, with the density (per unit of g_i / max|g|)."""
        total = int(self.counts.sum())
        width = self.edges[1] - self.edges[0]
        density = self.counts / (total * width) if total else np.zeros_like(self.counts, dtype=float)
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(), "density": density.tolist(),
                "log10_edges": self.log_edges.tolist(), "log10_counts": self.log_counts.tolist(), "zeros": self.zeros,
                "fraction_per_bin": (self.log_counts / max(total, 1)).tolist()}


class _AccuracyTally:
    """Correct predictions under uniform noise and FGSM per ε of ``settings.eps`` and under PGD.

    Noise and PGD starts are seeded from ``(seed, sample index)``; attacks stay in ``value_range``.
    """

    def __init__(self, settings: AnalysisSettings, value_range: tuple[float, float], seed: int) -> None:
        self.eps = [float(e) for e in settings.eps]
        self.settings = settings
        self.value_range = value_range
        self.seed = seed
        self.random = np.zeros(len(self.eps), dtype=np.int64)
        self.fgsm = np.zeros(len(self.eps), dtype=np.int64)
        self.pgd = 0

    def add(self, model: nn.Module, x: Tensor, y: Tensor, ids: list[int], logits: Tensor) -> None:
        """Attack a batch (``x`` ``[T, B, C, H, W]``, ``y`` ``[B]``, clean ``logits`` ``[B, K]``) and count."""
        from dvsguard.attack import PGD, RandomNoise, fgsm

        vr, seed = self.value_range, self.seed
        for i, e in enumerate(self.eps):
            if e == 0:
                ok = logits.argmax(dim=1) == y
                self.random[i] += int(ok.sum())
                self.fgsm[i] += int(ok.sum())
                continue
            noise = RandomNoise(e, value_range=vr, seed=seed)
            self.random[i] += _n_correct(model, noise(model, x, y, sample_ids=ids), y)
            self.fgsm[i] += _n_correct(model, fgsm(model, x, y, e, value_range=vr), y)
        pgd = PGD(self.settings.pgd_eps, steps=self.settings.pgd_steps, value_range=vr, seed=seed)
        self.pgd += _n_correct(model, pgd(model, x, y, sample_ids=ids), y)

    def curves(self, n: int) -> dict[str, list[float]]:
        """Accuracies (%) of ``n`` samples against ε: the ``curves`` entry of :func:`measure_model`."""
        return {"eps": self.eps, "random": (100.0 * self.random / max(n, 1)).tolist(),
                "fgsm": (100.0 * self.fgsm / max(n, 1)).tolist()}


def _n_correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """How many of the frames ``x`` ``[T, B, C, H, W]`` the model classifies as ``y`` ``[B]``."""
    with torch.no_grad():
        return int((model(x).argmax(dim=1) == y).sum())


def _heatmaps(x: Tensor, g: Tensor, room: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(event map, |g| map) ``[H, W]`` of the first ``room`` samples of a batch: ``x``, ``|g|`` summed over T and C."""
    return [(x[:, b].sum(dim=(0, 1)).numpy(), g[:, b].abs().sum(dim=(0, 1)).numpy())
            for b in range(min(room, x.shape[1]))]


def measure_model(model: nn.Module, samples: Samples, settings: AnalysisSettings, seed: int = 0) -> dict[str, Any]:
    """All per-sample and aggregate measurements of one model (eval mode) on ``samples``.

    Random draws are seeded from ``(seed, first sample of the batch)`` so the numbers do not depend
    on anything but the settings, the samples and the seed.
    """
    from dvsguard.progress import track

    model.eval()
    n = samples.x.shape[1]
    per: dict[str, list[Any]] = {k: [] for k in PER_SAMPLE_KEYS}
    fd: dict[str, list[float]] = {repr(h): [] for h in settings.fd_steps}
    tally = _AccuracyTally(settings, samples.value_range, seed)
    hist = _ComponentHistogram(settings.hist_bins)
    heat: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0
    for sl in track(_batches(n, settings.batch), "analysing"):
        x, y = samples.x[:, sl], samples.y[sl]
        ids = samples.index[sl]
        res = true_label_gradient(model, x, y)
        norms = gradient_norms(res.g, settings.l0_tol, relative=True)
        size = norms.size
        gen = torch.Generator().manual_seed(seed * 1_000_003 + ids[0])
        for key, values in _per_sample(model, x, y, res, norms, settings, gen).items():
            per[key] += values
        for h in settings.fd_steps:
            fd[repr(h)] += finite_difference(model, x, y, res.wrong, res.g, h).tolist()
        hist.add(res.g)
        heat += _heatmaps(x, res.g, settings.heatmaps - len(heat))
        tally.add(model, x, y, ids, res.logits)
    clean = 100.0 * float(np.mean(np.asarray(per["pred"]) == np.asarray(per["label"]))) if n else 0.0
    return {
        "n": n,
        "components": size,
        "per_sample": per,
        "finite_difference": {"h": list(settings.fd_steps), "values": fd},
        "curves": tally.curves(n),
        "accuracy": {"clean": clean, "pgd": 100.0 * tally.pgd / max(n, 1)},
        "histogram": hist.to_json(),
        "heatmaps": {"frames": [f.tolist() for f, _ in heat], "grads": [g.tolist() for _, g in heat]},
    }


def summarize(m: dict[str, Any], eps: float) -> dict[str, Any]:
    """The aggregate numbers of one model's measurements (means, bound rates, correlations)."""
    p = m["per_sample"]
    l1 = np.asarray(p["l1"], dtype=float)
    l2 = np.asarray(p["l2"], dtype=float)
    rr = np.asarray(p["rho_rand"], dtype=float)
    ra = np.asarray(p["rho_adv"], dtype=float)
    valid = rr > 0
    n_valid = int(valid.sum())
    nonzero_g = l2 > 0
    ratio_pred = np.asarray(p["ratio_pred"], dtype=float)
    ratio_emp = np.asarray(p["ratio_emp"], dtype=float)
    hist = m["histogram"]
    edges = np.asarray(hist["edges"])
    counts = np.asarray(hist["counts"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    near_zero = float(counts[np.abs(centers) < 0.01].sum() / counts.sum()) if counts.sum() else None
    exact_zero = float(hist.get("zeros", 0) / counts.sum()) if counts.sum() else None
    fd_agree = {h: {**stats.agreement(l1, vals), "median_fd_over_l1": _median_ratio(vals, l1)}
                for h, vals in m["finite_difference"]["values"].items()}
    return {
        "n": m["n"],
        "components": m["components"],
        "clean_acc": m["accuracy"]["clean"],
        "pgd_acc": m["accuracy"]["pgd"],
        "mean_l1": stats.mean(l1),
        "mean_l2": stats.mean(l2),
        "mean_l0": stats.mean(p["l0"]),
        "mean_l0_fraction": stats.mean(np.asarray(p["l0"], dtype=float) / max(m["components"], 1)),
        "median_ratio_pred": _median(ratio_pred),
        "median_ratio_emp": _median(ratio_emp),
        "theorem": {
            "eps": eps,
            "samples_with_rho_rand_zero": int(len(rr) - n_valid),
            "samples_with_zero_gradient": int(len(l2) - nonzero_g.sum()),
            "bounds_pred_rate": float(np.mean(np.asarray(p["bounds_pred"])[nonzero_g])) if nonzero_g.any() else None,
            "bounds_emp_rate": float(np.mean(np.asarray(p["bounds_emp"])[valid])) if n_valid else None,
            "ratio": stats.agreement(ratio_pred, ratio_emp),
            "rho_rand": stats.agreement(eps**2 * l2**2 / 3.0, rr),
            "rho_adv": stats.agreement(eps**2 * l1**2, ra),
        },
        "finite_difference": fd_agree,
        "fraction_components_near_zero": near_zero,
        "fraction_components_zero": exact_zero,
        "curves": m["curves"],
    }


def _median(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else None


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float | None:
    a_ = np.asarray(a, dtype=float)
    b_ = np.asarray(b, dtype=float)
    ok = np.isfinite(a_) & np.isfinite(b_) & (b_ > 0)
    return float(np.median(a_[ok] / b_[ok])) if ok.any() else None


# ----------------------------------------------------------------------------- figures


def build_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """``{file name: matplotlib Figure}`` for an analysis document (as written to analysis.json)."""
    from dvsguard.analyze import figures

    models = doc["models"]
    eps = doc["settings"]["theory_eps"]
    figs: dict[str, Any] = {}
    figs["vulnerability.png"] = figures.vulnerability_figure({k: v["curves"] for k, v in models.items()})
    theorem = {}
    for name, m in models.items():
        p = m["per_sample"]
        l1 = np.asarray(p["l1"], dtype=float)
        l2 = np.asarray(p["l2"], dtype=float)
        theorem[name] = {
            "ratio_pred": p["ratio_pred"], "ratio_emp": _nan(p["ratio_emp"]),
            "rho_rand": p["rho_rand"], "rho_rand_taylor": (eps**2 * l2**2 / 3).tolist(),
            "rho_adv": p["rho_adv"], "rho_adv_taylor": (eps**2 * l1**2).tolist(),
        }
    figs["theorem.png"] = figures.theorem_figure(theorem)
    figs["finite_difference.png"] = figures.finite_difference_figure(
        {k: {"l1": v["per_sample"]["l1"], "fd": {h: _nan(vals) for h, vals in v["finite_difference"]["values"].items()}}
         for k, v in models.items()}
    )
    figs["sparsity.png"] = figures.sparsity_figure({k: v["histogram"] for k, v in models.items()})
    first = next(iter(models.values()))
    frames = first["heatmaps"]["frames"]
    if frames:
        labels = [f"#{i} ({c})" for i, c in zip(doc["samples"]["index"], doc["samples"]["label_names"])]
        figs["heatmaps.png"] = figures.heatmap_figure(
            [np.asarray(f) for f in frames], {k: [np.asarray(g) for g in v["heatmaps"]["grads"]] for k, v in models.items()},
            labels[: len(frames)],
        )
    sweep = doc.get("lambda_sweep")
    if sweep:
        figs["lambda_sweep.png"] = figures.lambda_sweep_figure(sweep["points"], sweep["attack"])
    return figs


def _nan(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def training_lambda(train: dict[str, Any]) -> float | None:
    """The SR weight λ a model was trained with: ``train["lam"]`` for SR defenses, 0 for vanilla, else None."""
    defense = train.get("defense")
    if defense in ("sr", "sr-star"):
        if train.get("lam") is not None:
            return float(train["lam"])
        from dvsguard.train.defenses import DEFAULT_LAMBDA

        return float(DEFAULT_LAMBDA)
    if defense == "vanilla":
        return 0.0
    return None


def lambda_sweep(models: dict[str, dict[str, Any]], attack: str) -> dict[str, Any] | None:
    """The Fig. 3 points when the models were trained with at least two different λ, else None."""
    points = []
    for name, m in models.items():
        lam = m.get("lam")
        if lam is None:
            continue
        s = m["summary"]
        points.append({"model": name, "lam": float(lam), "clean": s["clean_acc"], "attacked": s["pgd_acc"],
                       "l1": s["mean_l1"], "l2": s["mean_l2"]})
    if len({p["lam"] for p in points}) < 2:
        return None
    return {"attack": attack, "points": sorted(points, key=lambda p: p["lam"])}


# ----------------------------------------------------------------------------- the stage


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from dvsguard.atomic import write_text

    write_text(path, json.dumps(stats.jsonable(doc), indent=1, allow_nan=False))


def analyze_models(
    models: dict[str, tuple[nn.Module, dict[str, Any]]],
    samples: Samples,
    out_dir: str | os.PathLike[str],
    settings: AnalysisSettings = AnalysisSettings(),
    seed: int = 0,
    sources: dict[str, str] | None = None,
    write_figures: bool = True,
) -> dict[str, Any]:
    """Measure ``models`` (name → (model, checkpoint payload)) on ``samples``; write figures and JSON.

    ``write_figures=False`` writes analysis.json only (the figures can be drawn later from it with
    :func:`build_figures`).

    Returns ``{"out_dir", "json", "figures": {name: path}, "models": {name: summary}, "lambda_sweep"}``.
    """
    from dvsguard.analyze.figures import save_png

    out = Path(out_dir)
    per_model: dict[str, dict[str, Any]] = {}
    for name, (model, payload) in models.items():
        log.info("analysing %s on %d samples", name, samples.x.shape[1])
        if settings.grad_mode is not None:
            from dvsguard.snn.neuron import gradient_mode

            with gradient_mode(model, settings.grad_mode):
                m = measure_model(model, samples, settings, seed)
        else:
            m = measure_model(model, samples, settings, seed)
        train = payload.get("train") or {}
        m["defense"] = train.get("defense")
        m["protocol"] = (payload.get("data") or {}).get("protocol", "events")
        m["lam"] = training_lambda(train)
        m["checkpoint"] = (sources or {}).get(name)
        m["summary"] = summarize(m, settings.theory_eps)
        per_model[name] = m
    names = samples.classes
    doc: dict[str, Any] = {
        "format": FORMAT,
        "settings": {**asdict(settings), "l0_tolerance": {"value": settings.l0_tol, "kind": "relative to max |g_i| per sample"},
                     "clipping": "perturbations of ρ_rand, ρ_adv and the finite differences are not clipped to the value range"},
        "seed": seed,
        "samples": {
            "source": samples.source, "n": int(samples.x.shape[1]), "index": samples.index,
            "labels": samples.y.tolist(),
            "label_names": [names[int(c)] if int(c) < len(names) else str(int(c)) for c in samples.y.tolist()],
            "value_range": list(samples.value_range),
        },
        "definitions": {
            "f_y": "sigmoid(z_y - z_wrong), wrong = strongest wrong class at the clean input",
            "g": "gradient of f_y with respect to the input frames (surrogate gradients)",
            "ratio_pred": "3 * ||g||_1^2 / ||g||_2^2 (Taylor prediction of rho_adv / rho_rand)",
            "rho_rand": "Monte-Carlo mean of (f_y(x + d) - f_y(x))^2, d uniform in the theory_eps cube",
            "rho_adv": "largest (f_y(x + d) - f_y(x))^2 found by projected sign-gradient ascent, ||d||_inf <= theory_eps",
            "bounds": "3 <= ratio <= 3 * ||g||_0",
            "finite_difference": "|f_y(x + h * sign(g)) - f_y(x)| / h",
            "histogram": "g_i / max_j |g_j| per sample, pooled over samples and components (density); "
                         "log10 |g_i| of the non-zero components (fraction of all components per bin) and the zero count",
        },
        "models": per_model,
    }
    sweep = lambda_sweep(per_model, f"PGD{settings.pgd_steps} ε={eps_label(settings.pgd_eps)}")
    doc["lambda_sweep"] = sweep
    doc = stats.jsonable(doc)
    json_path = out / "analysis.json"
    _write_json(json_path, doc)
    written = {}
    for fname, fig in (build_figures(doc) if write_figures else {}).items():
        written[fname.removesuffix(".png")] = str(save_png(fig, out / fname))
    return {
        "out_dir": str(out),
        "json": str(json_path),
        "figures": written,
        "models": {k: {key: v["summary"][key] for key in ("n", "clean_acc", "pgd_acc", "mean_l1", "mean_l2", "mean_l0",
                                                            "median_ratio_pred", "median_ratio_emp")}
                   | {"bounds_pred_rate": v["summary"]["theorem"]["bounds_pred_rate"],
                      "bounds_emp_rate": v["summary"]["theorem"]["bounds_emp_rate"],
                      "defense": v["defense"], "lam": v["lam"], "protocol": v["protocol"]}
                   for k, v in doc["models"].items()},
        "lambda_sweep": sweep is not None,
    }
