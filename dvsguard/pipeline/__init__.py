"""Pipelines: a TOML file names the stages and their settings; the runner chains the CLI stages.

Each stage runs as ``dvsguard <command> ... --json`` in a subprocess; its last stdout line (one
JSON object) is recorded in the run folder's ``pipeline_state.json`` with a fingerprint of its
arguments and input files, so an unchanged stage is skipped and a killed run resumes.
"""

from dvsguard.pipeline.config import PipelineConfig, load_pipeline
from dvsguard.pipeline.runner import plan, run_pipeline

__all__ = ["PipelineConfig", "load_pipeline", "plan", "run_pipeline"]
