"""Locate (or build) the project's Lava environment: a separate Python 3.10 venv with
lava-dl 0.6.0 / lava-nc 0.10.0, made by ``lava_env.sh`` (package data beside this module).

Search order: ``$DVSGUARD_LAVA_ENV``, then ``.lava-env`` in the current folder, then the
folder the script builds in by default (:func:`default_env_dir`): ``.lava-env`` at the
repository root in a checkout, ``$XDG_CACHE_HOME/dvsguard/lava-env`` (``~/.cache/...``)
for an installed package. An environment counts only when its build finished (the script
writes ``.ok`` last).
"""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from dvsguard.errors import ExportError

log = logging.getLogger(__name__)

ENV_VAR = "DVSGUARD_LAVA_ENV"
# the folder holding the dvsguard package: the repository root in a checkout
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT: Traversable = resources.files("dvsguard.export") / "lava_env.sh"
RUNNER = Path(__file__).with_name("lava_run.py")


def default_env_dir() -> Path:
    """Where ``lava_env.sh`` builds without ``$DVSGUARD_LAVA_ENV`` (the same rule as the script).

    ``PROJECT_ROOT/.lava-env`` when ``PROJECT_ROOT`` is a checkout (holds ``pyproject.toml``),
    else ``$XDG_CACHE_HOME/dvsguard/lava-env`` (``~/.cache`` without the variable).
    """
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / ".lava-env"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dvsguard" / "lava-env"


def candidates() -> list[Path]:
    """Folders where a Lava environment may live, in search order."""
    found = []
    if os.environ.get(ENV_VAR):
        found.append(Path(os.environ[ENV_VAR]))
    found += [Path.cwd() / ".lava-env", default_env_dir()]
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique


def find_lava_python() -> Path | None:
    """The Python of a finished Lava environment, or None."""
    for folder in candidates():
        python = folder / "bin" / "python"
        if (folder / ".ok").is_file() and python.exists():
            return python
    return None


def build_lava_env(timeout: float = 3600.0) -> Path:
    """Run ``lava_env.sh`` (idempotent) and return the environment's Python.

    Raises ExportError with the script's last output line if the build fails.
    """
    if not SCRIPT.is_file():
        raise ExportError(f"{SCRIPT}: the Lava environment script is missing")
    log.info("building the Lava environment with %s (first time: several minutes)", SCRIPT)
    try:
        with resources.as_file(SCRIPT) as script:
            proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"{SCRIPT}: building the Lava environment took over {timeout:.0f} s") from e
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ExportError(f"{SCRIPT}: building the Lava environment failed: {lines[-1] if lines else proc.returncode}")
    python = find_lava_python()
    if python is None:
        raise ExportError(f"{SCRIPT} finished but no Lava environment was found in {', '.join(map(str, candidates()))}")
    return python


def require_lava_python(build: bool = False) -> Path:
    """The Lava environment's Python; builds it when ``build``, else raises ExportError saying how."""
    python = find_lava_python()
    if python is not None:
        return python
    if build:
        return build_lava_env()
    raise ExportError(
        "no Lava environment found (looked in " + ", ".join(str(p) for p in candidates()) + "); "
        f"create it with: bash {SCRIPT}"
    )
