"""predict: classify every recording under a folder with a checkpoint's framing; one row per file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.stages.base import SEED_MAX, Result, check_output, option


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard predict``."""

    folder: Path = option(help="Folder of recordings (searched recursively, any known format).", argument=True,
                          wired=True)
    model: Path = option(help="Trained checkpoint (.pt); its framing is used.", wired=True)
    out: Path = option(Path("predictions.csv"), "Output rows: .csv or .jsonl.", wired=True)
    labels: str | None = option(None, "Labels CSV (path,class) or 'folders' (sub-folder names): adds accuracy.")
    attack: str | None = option(None, "Attack name (fgsm, pgd10, apgd, ...): adds robust accuracy.")
    eps: float | None = option(None, "Attack radius in frame units, e.g. 8/255.", kind="eps")
    netx: Path | None = option(None, "Predict with this exported netx network in Lava's simulator.", wired=True)
    batch: int = option(32, "Recordings per forward pass.", min=1)
    workers: int = option(2, "Reader/framing processes.", min=0)
    seed: int = option(0, "Seed of the attack's random starts.", min=0, max=SEED_MAX)


@dataclass
class PredictStageResult(Result):
    """The rows file written, the counts, and accuracy / robust accuracy (fractions) when labelled."""

    out: str
    n_files: int
    n_failed: int
    accuracy: float | None
    robust_accuracy: float | None
    attack: str | None
    eps: float | None
    backend: str
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0

    def summary(self) -> str:
        lines = [f"{self.n_files} files, {self.n_failed} failed → {self.out}"]
        if self.accuracy is not None:
            lines.append(f"accuracy {self.accuracy:.4f}")
        if self.robust_accuracy is not None:
            lines.append(f"robust accuracy ({self.attack}, ε={self.eps:.5g}) {self.robust_accuracy:.4f}")
        lines += [f"failed: {f['error']}" for f in self.failed]
        return "\n".join(lines)


def run(config: Config) -> PredictStageResult:
    """Predict every recording under ``folder`` and write the rows to ``out``."""
    from dvsguard.analyze.predict import predict

    check_output(config.out, "--out", folder=False)
    done = predict(config.folder, config.model, config.out, labels=config.labels, attack=config.attack,
                   eps=config.eps, netx=config.netx, batch_size=config.batch, workers=config.workers,
                   seed=config.seed)
    return PredictStageResult(**done.to_json())
