"""analyze: the paper's measurements on checkpoints — random vs FGSM accuracy, Theorem 4.3,
Proposition 4.4, gradient sparsity, heatmaps and the λ sweep — as PNGs and ``analysis.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsguard.stages.base import SEED_MAX, Result, check_output, option


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard analyze``."""

    checkpoints: tuple[Path, ...] = option(help="Checkpoints (.pt); several are compared in every figure.",
                                           argument=True, wired=True)
    cache: Path = option(help="Frame cache (.h5) of any split; --split picks its sibling.", wired=True)
    split: str = option("test", "Split analysed.", choices=("train", "test"))
    out: Path | None = option(None, "Output folder (default: analysis/ beside the first checkpoint).", wired=True)
    limit: int = option(256, "Samples analysed: a seeded random subset (0: all).", min=0)
    eps: tuple[float, ...] = option((0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255),
                                    "ε list of the random-vs-FGSM curves, frame units, e.g. 0,4/255,16/255.",
                                    kind="eps_list", allow_zero=True)
    theory_eps: float = option(2 / 255, "Small ε of the measured ρ_adv/ρ_rand (Theorem 4.3), frame units.",
                               kind="eps")
    mc_draws: int = option(32, "Uniform draws per sample for ρ_rand.", min=1)
    adv_steps: int = option(5, "Sign-gradient ascent steps per start for ρ_adv.", min=0)
    fd_steps: tuple[float, ...] = option((1e-3, 1e-2, 1e-1), "Finite-difference steps h (Proposition 4.4), "
                                         "frame units.", kind="eps_list")
    pgd_eps: float = option(8 / 255, "ε of the PGD accuracy (λ sweep), frame units.", kind="eps")
    pgd_steps: int = option(10, "Steps of that PGD attack.", min=1)
    batch: int = option(32, "Samples per forward pass.", min=1)
    grad_mode: str | None = option(None, "Surrogate gradient for g and the attacks, e.g. sigmoid:4 or rga "
                                         "(default: the model's).")
    seed: int = option(0, "Seed of the sample subset and of every random draw.", min=0, max=SEED_MAX)


@dataclass
class AnalyzeResult(Result):
    """Where analysis.json and the figures went, and each model's headline figures (accuracies in %)."""

    out_dir: str
    json: str
    figures: dict[str, str]
    models: dict[str, dict[str, Any]]
    lambda_sweep: bool

    def summary(self) -> str:
        def num(v: Any) -> str:
            return "n/a" if v is None else f"{v:.4g}"

        return "\n".join(
            f"{name:<20} clean {num(m['clean_acc'])}%  PGD {num(m['pgd_acc'])}%  mean ‖g‖₁ {num(m['mean_l1'])}  "
            f"‖g‖₂ {num(m['mean_l2'])}  median ρ_adv/ρ_rand predicted {num(m['median_ratio_pred'])} "
            f"measured {num(m['median_ratio_emp'])}"
            for name, m in self.models.items()
        ) + f"\nwritten to {self.out_dir}"


def check(config: Config) -> None:
    """Refuse settings the measurements would refuse (and a bad gradient mode) before anything runs."""
    from dvsguard.attack.base import parse_mode

    _settings(config)
    check_output(config.out, "--out", folder=True)
    if config.grad_mode is not None:
        parse_mode(config.grad_mode)


def _settings(config: Config) -> Any:
    from dvsguard.analyze.analysis import AnalysisSettings

    return AnalysisSettings(eps=config.eps, theory_eps=config.theory_eps, mc_draws=config.mc_draws,
                            adv_steps=config.adv_steps, fd_steps=config.fd_steps, pgd_eps=config.pgd_eps,
                            pgd_steps=config.pgd_steps, batch=config.batch, limit=config.limit or None,
                            grad_mode=config.grad_mode)


def run(config: Config) -> AnalyzeResult:
    """Load the checkpoints and the split's samples, measure every model, write the figures and JSON."""
    from dvsguard.analyze.analysis import analyze_models, check_compatible, load_samples, model_name
    from dvsguard.errors import ConfigError
    from dvsguard.snn.checkpoint import load_model

    if not config.checkpoints:
        raise ConfigError("analyze needs at least one checkpoint")
    settings = _settings(config)
    check_output(config.out, "--out", folder=True)
    samples = load_samples(config.cache, config.split, settings.limit, config.seed)
    taken: set[str] = set()
    models: dict[str, tuple[Any, dict[str, Any]]] = {}
    sources: dict[str, str] = {}
    for path in config.checkpoints:
        model, payload = load_model(path)
        check_compatible(path, model, payload, samples)
        name = model_name(path, taken)
        models[name] = (model, payload)
        sources[name] = str(path)
    out = config.out if config.out is not None else config.checkpoints[0].parent / "analysis"
    return AnalyzeResult(**analyze_models(models, samples, out, settings, config.seed, sources))
