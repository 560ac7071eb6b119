"""L∞ attacks on frames ``[T, B, C, H, W]`` (ε in frame units) and robustness evaluation.

``make_attack("pgd10", eps=8/255)`` builds an attack by name; ``REGISTRY`` maps the standard names
to factories ``factory(eps, **kw) -> Attack``. ``pgd<k>`` and ``apgd<k>`` work for any ``k``.
The functions ``fgsm(model, x, y, eps, ...)`` and ``pgd(...)`` are one-call forms of ``FGSM`` and ``PGD``
(same arguments, same random start for the same seed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from dvsguard.attack.apgd import APGD
from dvsguard.attack.base import Attack, attack_mode, eval_mode, project
from dvsguard.attack.ensemble import Ensemble, EnsembleResult, gamma_grid, paper_modes
from dvsguard.attack.fgsm import FGSM, fgsm
from dvsguard.attack.noise import RandomNoise
from dvsguard.attack.pgd import PGD, pgd
from dvsguard.attack.rfgsm import RFGSM
from dvsguard.errors import AttackError

Factory = Callable[..., Attack]

REGISTRY: dict[str, Factory] = {
    "fgsm": FGSM,
    "rfgsm": RFGSM,
    "random": RandomNoise,
    "pgd": partial(PGD, steps=10),
    "pgd10": partial(PGD, steps=10),
    "pgd30": partial(PGD, steps=30),
    "pgd50": partial(PGD, steps=50),
    "apgd": partial(APGD, steps=100),
    "apgd10": partial(APGD, steps=10),
}

_ITERATIVE = re.compile(r"^(a?pgd)(\d+)$")


def attack_names() -> list[str]:
    """The names ``make_attack`` knows (besides ``pgd<k>``/``apgd<k>`` for any k)."""
    return sorted(REGISTRY)


def make_attack(name: str, eps: float, **kw: Any) -> Attack:
    """Build the attack called ``name`` (case-insensitive) with radius ε (frame units)."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key](eps, **kw)
    match = _ITERATIVE.match(key)
    if match and int(match.group(2)) > 0:
        cls = PGD if match.group(1) == "pgd" else APGD
        return cls(eps, steps=int(match.group(2)), **kw)
    raise AttackError(f"unknown attack {name!r}; known: {', '.join(attack_names())}, pgd<k>, apgd<k>")


__all__ = [
    "APGD",
    "Attack",
    "Ensemble",
    "EnsembleResult",
    "FGSM",
    "PGD",
    "RFGSM",
    "REGISTRY",
    "RandomNoise",
    "attack_mode",
    "attack_names",
    "eval_mode",
    "fgsm",
    "gamma_grid",
    "make_attack",
    "paper_modes",
    "pgd",
    "project",
]
