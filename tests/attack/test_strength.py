"""Fast checks of attack strength on a tiny SpikingVGG trained on hand-made event patterns.

The patterns (``conftest.patterns``: a dense patch per quadrant over sparse noise) are not simulated
recordings; these tests only show, within a few seconds, that the attacks work on a trained spiking
network: FGSM and PGD lower accuracy far below clean while random noise of the same ε barely does,
and APGD-10 fools at least as many samples as PGD-10. The same claims on a model trained by the
project's trainer on the embedded digits (Observation 1 of the paper) are the slow tests in
``test_strength_digits.py``.
"""

from __future__ import annotations

from dvsguard.attack import make_attack
from dvsguard.attack.base import predict
from dvsguard.attack.ensemble import Ensemble

EPS = 16 / 255


def accuracy(model, x, y) -> float:
    return float((predict(model, x) == y).float().mean())


def test_observation_1_adversarial_vs_random(trained_snn, test_patterns) -> None:
    x, y = test_patterns
    clean = accuracy(trained_snn, x, y)
    assert clean >= 0.9
    noisy = accuracy(trained_snn, make_attack("random", EPS)(trained_snn, x, y), y)
    fgsm = accuracy(trained_snn, make_attack("fgsm", EPS)(trained_snn, x, y), y)
    pgd = accuracy(trained_snn, make_attack("pgd10", EPS)(trained_snn, x, y), y)
    assert noisy >= clean - 0.05  # random noise barely matters
    assert fgsm <= clean - 0.1
    assert pgd <= clean - 0.3 and pgd <= fgsm


def test_apgd_at_least_as_strong_as_pgd(trained_snn, test_patterns) -> None:
    x, y = test_patterns
    pgd = Ensemble(make_attack("pgd10", EPS), modes=[None]).run(trained_snn, x, y).fooled
    apgd = Ensemble(make_attack("apgd10", EPS), modes=[None]).run(trained_snn, x, y).fooled
    assert int(apgd.sum()) >= int(pgd.sum())
    assert apgd.float().mean() >= 0.3
