"""report: one self-contained HTML page (images embedded) and a Markdown twin of a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dvsguard.stages.base import Result, option


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard report``."""

    run_dir: Path = option(help="A pipeline run folder (or a single training run folder).", argument=True, wired=True)


@dataclass
class ReportResult(Result):
    """The page and its Markdown twin, the sections they hold and the number of embedded images."""

    html: str
    markdown: str
    sections: list[str]
    images: int
    kind: str

    def summary(self) -> str:
        return f"report: {self.html}\nmarkdown: {self.markdown}\nsections: {', '.join(self.sections)}"


def run(config: Config) -> ReportResult:
    """Read what the stages wrote into ``run_dir`` and render it."""
    from dvsguard.analyze.report import build_report

    return ReportResult(**build_report(config.run_dir))
