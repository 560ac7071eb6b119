"""Shared fixtures: paths to the real recordings and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT.parent / "shared" / "recordings"


@pytest.fixture
def recordings_dir() -> Path:
    """The folder of real sensor recordings beside the project; skip where it is absent."""
    if not RECORDINGS.is_dir():
        pytest.skip(f"real recordings folder {RECORDINGS} is absent")
    return RECORDINGS
