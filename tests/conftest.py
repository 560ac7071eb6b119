"""Shared fixtures: paths to the real recordings, the small embedded-digits cache, and small helpers."""

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


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train split of a small cache of the embedded digits, built once per session.

    100 simulated recordings (10 per digit, 16×16 sensor, seed 5) framed by the project's
    preprocessing into 4 frames of 16×16 (default count cap), 20 % held out: 80 train and
    20 test samples. Returns the train-split path; its ``test`` sibling is found with
    :func:`dvsguard.data.cache.split_path`.
    """
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.data.synth import SynthConfig, make_digits

    root = tmp_path_factory.mktemp("digits-cache")
    make_digits(root / "rec", SynthConfig(per_class=10, size=16, seed=5), workers=1)
    result = preprocess(str(root / "rec"), root / "cache", FramingConfig(n_frames=4, height=16, width=16),
                        workers=1, test_fraction=0.2, progress=False)
    return result.train
