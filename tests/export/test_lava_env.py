"""Finding the Lava environment's build script (package data) and where it builds, from a
checkout and from an installed package. The script runs with a stand-in Python 3.10 that
records where ``python -m venv`` was asked to build and then fails, so nothing is built."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from dvsguard.export import lava_env

FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-c" ]; then echo 3.10.13; exit 0; fi
printf '%s\\n' "$PWD" "$@" > "$VENV_LOG"
exit 1
"""


def test_script_ships_beside_the_module_as_package_data() -> None:
    assert lava_env.SCRIPT.is_file()
    assert Path(str(lava_env.SCRIPT)).parent == Path(lava_env.__file__).parent
    pyproject = tomllib.loads((lava_env.PROJECT_ROOT / "pyproject.toml").read_text())
    assert "lava_env.sh" in pyproject["tool"]["setuptools"]["package-data"]["dvsguard.export"]


def test_default_env_dir_is_the_checkout_root_else_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    monkeypatch.setattr(lava_env, "PROJECT_ROOT", tmp_path / "repo")
    assert lava_env.default_env_dir() == tmp_path / "repo" / ".lava-env"
    monkeypatch.setattr(lava_env, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert lava_env.default_env_dir() == tmp_path / "cache" / "dvsguard" / "lava-env"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lava_env.default_env_dir() == tmp_path / "home" / ".cache" / "dvsguard" / "lava-env"
    assert lava_env.candidates()[-1] == lava_env.default_env_dir()


def _build_folder(tmp_path: Path, root: Path, *, cwd: Path, env: dict[str, str]) -> Path:
    """Run a copy of the script at ``root/dvsguard/export/lava_env.sh``; the folder it would build."""
    script = root / "dvsguard" / "export" / "lava_env.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(str(lava_env.SCRIPT)), script)
    fake = tmp_path / "python3.10"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "venv.log"
    log.unlink(missing_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    # a minimal environment: no inherited DVSGUARD_LAVA_ENV, HOME or XDG_CACHE_HOME (the script removes the folder)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LAVA_PYTHON": str(fake), "VENV_LOG": str(log)}
    proc = subprocess.run(["bash", str(script)], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and log.is_file(), proc.stdout + proc.stderr
    pwd, *args = log.read_text().splitlines()
    assert args[:2] == ["-m", "venv"]
    folder = (Path(pwd) / args[2]).resolve()
    assert folder.is_relative_to(tmp_path.resolve())
    return folder


def test_script_in_a_checkout_builds_at_the_repository_root(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("")
    assert _build_folder(tmp_path, repo, cwd=tmp_path / "elsewhere", env={}) == (repo / ".lava-env").resolve()
    # a relative DVSGUARD_LAVA_ENV is taken from the repository root
    got = _build_folder(tmp_path, repo, cwd=tmp_path / "elsewhere", env={lava_env.ENV_VAR: "envs/lava"})
    assert got == (repo / "envs" / "lava").resolve()


def test_script_in_an_installed_package_builds_in_the_user_cache(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "site-packages"
    cwd = tmp_path / "work"
    got = _build_folder(tmp_path, site, cwd=cwd, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert got == (tmp_path / "cache" / "dvsguard" / "lava-env").resolve()
    assert _build_folder(tmp_path, site, cwd=cwd, env={}) == (tmp_path / "home" / ".cache" / "dvsguard" / "lava-env").resolve()
    got = _build_folder(tmp_path, site, cwd=cwd, env={lava_env.ENV_VAR: str(tmp_path / "mine")})
    assert got == (tmp_path / "mine").resolve()
