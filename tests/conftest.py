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


TINY_PIPELINE = """
[pipeline]
name = "tiny"
run_dir = "{run}"
seed = 0

[data]
source = "synth"
per_class = 6
size = 16
frames = 4
cache_dir = "{cache}"
workers = 1

[[train]]
name = "vanilla"
defense = "vanilla"
preset = "tiny"
epochs = 1
batch = 8
augment = false
robust_limit = 0

[[train]]
name = "sr"
defense = "sr"
preset = "tiny"
epochs = 1
batch = 8
lam = 0.01
augment = false
robust_limit = 0

[attack]
attacks = ["clean", "fgsm", "pgd2"]
eps = ["8/255", "16/255"]
limit = 20
batch = 4
black_box = true
event_budgets = [4, 16]
event_limit = 10
step_events = 4

[analyze]
limit = 4
eps = [0, "8/255"]
mc_draws = 2
adv_steps = 1
fd_steps = [0.1]
pgd_steps = 1
batch = 4

[export]
model = "vanilla"
compare = true

[report]
enabled = true
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny pipeline run in this process through every stage the runner chains (synth → preprocess →
    train ×2 → attack white and black box → deployed (netx export and event curve) ×2 → analyze → export with
    compare → report), once per session.

    Returns ``run_pipeline``'s result (``run_dir``, ``stages``, ``results`` per stage).
    """
    from dvsguard.pipeline import load_pipeline, run_pipeline

    root = tmp_path_factory.mktemp("tiny-run")
    path = root / "tiny.toml"
    path.write_text(TINY_PIPELINE.format(run=root / "run", cache=root / "cache"))
    return run_pipeline(load_pipeline(path))
