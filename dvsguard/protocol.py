"""Experimental protocols: dvsguard's own (``events``) and the authors' CIFAR10-DVS one (``paper``).

A protocol is one word that fixes every choice around the maths (framing, split, augmentation,
initialisation, attack clamp and step) so that a figure always says how it was made. It is
chosen when the cache is built (``preprocess --protocol``), recorded in the cache, and inherited
from there by every later stage: ``train`` records it in the checkpoint, ``attack``, ``analyze``
and ``export`` read it from the checkpoint and write it into their results.

``events`` (the default): physical units. Events are binned into the frame size with tonic's
``Downsample``, counts are clipped at ``count_cap`` and divided by it, so frames lie in [0, 1]
and ε is a fraction of ``count_cap`` events per frame bin; attacks clamp to that data range.

``paper``: what the authors' code did (putshua/gradient_reg_defense at commit ce6d16c,
torchattacks 3.2.7): SpikingJelly's ``split_by='number'`` frames at the sensor resolution,
bilinearly resized to the frame size, raw (interpolated) counts as the model input, the seeded
9000/1000 ``random_split``, NDA augmentation, torch-default Linear initialisation, every
adversarial example clamped to [0, 1] (torchattacks; this saturates every count above 1),
PGD step α = 2.55/255 with a random start, PGD-AT step 0.01, RAT as in putshua/SNN-RAT, and a
black-box source attacked with the triangle surrogate γ = 1 only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dvsguard.errors import ConfigError

PROTOCOLS = ("events", "paper")
DEFAULT_PROTOCOL = "events"


@dataclass(frozen=True)
class Protocol:
    """The choices a protocol fixes.

    Attributes:
        name: ``events`` or ``paper``.
        framing: ``downsample`` (tonic ``Downsample`` to the frame size, counts clipped at
            ``count_cap`` and divided by it) or ``resize`` (SpikingJelly ``split_by='number'``
            count frames at the sensor size, bilinear resize to the frame size, raw counts).
        split: ``per-class`` (9:1 within each class, seeded) or ``random-split`` (torch
            ``random_split`` 0.9/0.1 with ``manual_seed(42)`` over SpikingJelly's listing order).
        augment: ``crop-flip`` (pad-4 random crop, horizontal flip) or ``nda`` (horizontal flip
            and one of roll ±5 px, rotation ±30°, 16×16 cutout per sample).
        linear_init: ``kaiming`` (kaiming-normal weights) or ``torch`` (torch's default, zero
            biases) for the classifier's Linear layers.
        clamp: ``data`` (adversarial examples stay in the data's value range) or ``unit``
            (clamped to [0, 1] as torchattacks does, whatever the data's range).
        pgd_alpha: PGD step α in frame units, or ``None`` for 2.5·ε/k.
        pgd_at_alpha: PGD-AT's training step α, or ``None`` for the trainer's default.
        rat: ``fgsm`` (FGSM-AT + Parseval retraction of every row of every layer) or ``paper``
            (PGD5 at 2/255, retraction of a random 30% of the rows of large Linear layers).
        black_box_modes: gradient modes of the black-box source, or ``None`` for the same
            ensemble as the white box.
    """

    name: str
    framing: str
    split: str
    augment: str
    linear_init: str
    clamp: str
    pgd_alpha: float | None
    pgd_at_alpha: float | None
    rat: str
    black_box_modes: tuple[str, ...] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (for caches, checkpoints and results)."""
        out = asdict(self)
        if self.black_box_modes is not None:
            out["black_box_modes"] = list(self.black_box_modes)
        return out


_PROTOCOLS = {
    "events": Protocol(name="events", framing="downsample", split="per-class", augment="crop-flip",
                       linear_init="kaiming", clamp="data", pgd_alpha=None, pgd_at_alpha=None, rat="fgsm",
                       black_box_modes=None),
    "paper": Protocol(name="paper", framing="resize", split="random-split", augment="nda", linear_init="torch",
                      clamp="unit", pgd_alpha=2.55 / 255, pgd_at_alpha=0.01, rat="paper",
                      black_box_modes=("triangle:1",)),
}


def get(name: str | None, where: str = "protocol") -> Protocol:
    """The protocol called ``name`` (``None`` → :data:`DEFAULT_PROTOCOL`); a ConfigError names ``where``."""
    if name is None:
        name = DEFAULT_PROTOCOL
    if not isinstance(name, str) or name not in _PROTOCOLS:
        raise ConfigError(f"{where}: unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return _PROTOCOLS[name]


def inherit(given: str | None, recorded: str | None, source: str) -> Protocol:
    """The protocol of a stage whose input (``source``, a path) recorded ``recorded``.

    ``given`` (the stage's own ``--protocol``) must agree with the input's when both are set;
    an input from before protocols were recorded is ``events``.
    """
    have = get(recorded if recorded is not None else DEFAULT_PROTOCOL, f"{source}: recorded protocol")
    if given is not None and get(given).name != have.name:
        raise ConfigError(f"{source}: was made under protocol {have.name!r}, not {given!r}; use an input made "
                          f"under {given!r} or drop --protocol")
    return have
