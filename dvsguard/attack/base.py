"""What every attack shares: input checks, L∞ projection, eval mode, gradient modes, seeded noise.

Shapes: frames ``x`` are ``[T, B, C, H, W]`` (time first), labels ``y`` are ``[B]`` int64.
ε is in frame units (the cache's value scale, frames in ``value_range``, (0.0, 1.0) by default).

Clamp: ``"data"`` keeps adversarial examples in the data's ``value_range`` (L∞ projection by
:func:`project`); ``"unit"`` clamps them to [0, 1] whatever the data's range, with torchattacks'
arithmetic (``clamp(x + clamp(x_adv − x, −ε, ε), 0, 1)`` after a PGD step, ``clamp(·, 0, 1)``
after a random start or a single step), so on raw counts every count above 1 saturates.

Randomness is per sample: the noise for sample ``i`` is drawn from a generator seeded from
``(seed, salt, sample_ids[i], restart)``, so an attack's result on one sample never depends on
which other samples share its batch (the early-exit ensemble relies on this). An attack given a
``generator`` (adversarial training) draws the whole batch's noise from it instead.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.errors import AttackError

ValueRange = tuple[float, float]
CLAMPS = ("data", "unit")
UNIT: ValueRange = (0.0, 1.0)
LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits [B, K], y [B]) -> per-sample loss [B]`` (a scalar is accepted too)."""


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``[B]`` (the attacks ascend its sum)."""
    return nn.functional.cross_entropy(logits, y, reduction="none")


def check_inputs(x: Tensor, y: Tensor, eps: float, value_range: ValueRange) -> None:
    """Raise ``AttackError`` unless ``x`` is ``[T, B, ...]`` float, ``y`` is ``[B]`` and ε ≥ 0."""
    if x.dim() < 3 or not x.is_floating_point():
        raise AttackError(f"frames must be a float tensor [T, B, C, H, W], got {tuple(x.shape)} {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[1]:
        raise AttackError(f"labels must be [B] with B = {x.shape[1]} (frames are [T, B, ...]), got {tuple(y.shape)}")
    if not eps >= 0.0:
        raise AttackError(f"eps must be >= 0 (frame units), got {eps}")
    lo, hi = value_range
    if not lo < hi:
        raise AttackError(f"value_range must be (low, high) with low < high, got {value_range}")


def project(x_adv: Tensor, x: Tensor, eps: float, value_range: ValueRange) -> Tensor:
    """Clamp ``x_adv`` into the L∞ ball of radius ε around ``x``, then into ``value_range``.

    When ``x`` lies in ``value_range`` the result lies in both sets.
    """
    lo, hi = value_range
    x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    return x_adv.clamp(lo, hi)


def project_delta(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """torchattacks' PGD projection: ``clamp(x + clamp(x_adv − x, −ε, ε), 0, 1)`` (frames ``[T, B, ...]``).

    The same set as ``project(x_adv, x, eps, (0, 1))`` but rounded as torchattacks rounds it.
    """
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0.0, max=1.0)


def forward(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` (logits ``[B, K]``); a ValueError the model raises on its input becomes an AttackError.

    The message names the model's class and the frames' shape and keeps the model's own reason
    (a SpikingVGG states the shape it expects, e.g. ``[T, B, 2, 16, 16]``).
    """
    try:
        return model(x)
    except ValueError as e:
        shape = str(tuple(x.shape))
        cause = str(e) if shape in str(e) else f"{e} (frames {shape})"
        raise AttackError(f"{type(model).__name__} rejected the attack's frames: {cause}") from e


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of the summed per-sample loss with respect to ``x``.

    Returns ``(grad [T, B, ...], loss [B], logits [B, K])``, all detached. Only ``x``'s gradient is
    computed (not the weights'). A loss that does not depend on ``x`` gives a zero gradient.
    """
    fn = loss_fn or cross_entropy
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(model, x)
        loss = fn(logits, y)
        if loss.dim() == 0:
            loss = loss.expand(y.shape[0])
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return grad.detach(), loss.detach(), logits.detach()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Predicted classes ``[B]`` of frames ``x`` ``[T, B, ...]`` (AttackError if the model rejects them)."""
    return forward(model, x).argmax(dim=1)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards, even on error."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def attack_mode(model: nn.Module, grad_mode: Any = None, *, evaluate: bool = True) -> Iterator[nn.Module]:
    """Eval mode (when ``evaluate``) and, if given, a gradient mode for the model's IF neurons.

    ``grad_mode`` is a ``dvsguard.snn.surrogate.GradientMode`` (or its string, e.g. ``"sigmoid:4"``);
    ``None`` leaves the neurons as they are. Both are restored on exit, even on error.
    """
    with ExitStack() as stack:
        if evaluate:
            stack.enter_context(eval_mode(model))
        if grad_mode is not None:
            from dvsguard.snn.neuron import gradient_mode

            stack.enter_context(gradient_mode(model, parse_mode(grad_mode)))
        yield model


def parse_mode(mode: Any) -> Any:
    """A ``GradientMode`` from itself or its string form (``"triangle:1"``, ``"rga"``)."""
    if isinstance(mode, str):
        from dvsguard.snn.surrogate import GradientMode

        return GradientMode.parse(mode)
    return mode


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def default_ids(x: Tensor, sample_ids: Tensor | Sequence[int] | None) -> list[int]:
    """The batch's sample ids as ints (``0..B-1`` when not given)."""
    n = x.shape[1]
    if sample_ids is None:
        return list(range(n))
    ids = [int(i) for i in (sample_ids.tolist() if isinstance(sample_ids, Tensor) else sample_ids)]
    if len(ids) != n:
        raise AttackError(f"sample_ids has {len(ids)} entries for a batch of {n}")
    return ids


def sample_noise(
    x: Tensor,
    kind: str,
    *,
    seed: int = 0,
    salt: str = "",
    sample_ids: Tensor | Sequence[int] | None = None,
    restart: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise shaped like ``x`` ``[T, B, ...]``: ``kind`` "uniform" in [-1, 1] or "normal" N(0, 1).

    With ``generator`` the whole batch is drawn from it (training). Otherwise sample ``i``'s noise
    comes from its own generator seeded from ``(seed, salt, sample_ids[i], restart)``.
    """
    per_sample = (x.shape[0],) + tuple(x.shape[2:])

    def draw(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        if kind == "uniform":
            return torch.rand(shape, generator=gen, dtype=x.dtype) * 2.0 - 1.0
        if kind == "normal":
            return torch.randn(shape, generator=gen, dtype=x.dtype)
        raise AttackError(f"unknown noise kind {kind!r} (expected 'uniform' or 'normal')")

    if generator is not None:
        return draw(tuple(x.shape), generator).to(x.device)
    ids = default_ids(x, sample_ids)
    gen = torch.Generator()
    parts = []
    for sid in ids:
        gen.manual_seed(_seed(seed, salt, sid, restart))
        parts.append(draw(per_sample, gen))
    if not parts:
        return torch.zeros_like(x)
    return torch.stack(parts, dim=1).to(x.device)


class Attack:
    """An L∞ attack: ``attack(model, x, y) -> x_adv`` with ``‖x_adv − x‖∞ ≤ ε`` and x_adv in range.

    ``clamp`` is ``"data"`` (examples stay in ``value_range``) or ``"unit"`` (clamped to [0, 1] as
    torchattacks does; see the module docstring); :attr:`bounds` is the resulting range.
    Subclasses set ``name`` and implement ``perturb``. During the call the model is in eval mode
    and, when ``grad_mode`` is set, its IF neurons use that gradient; both are restored afterwards.
    ``sample_ids`` ``[B]`` (global indices of the batch's samples) key the per-sample noise, drawn
    with :meth:`noise` from ``(seed, salt, sample id)``; with a ``generator`` the noise of the
    whole batch is drawn from it instead (and ``seed``/``sample_ids`` do not matter).
    """

    name = "attack"
    uses_gradient = True

    def __init__(
        self,
        eps: float,
        *,
        value_range: ValueRange = (0.0, 1.0),
        grad_mode: Any = None,
        loss_fn: LossFn | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        clamp: str = "data",
    ) -> None:
        if not eps >= 0.0:
            raise AttackError(f"eps must be >= 0 (frame units), got {eps}")
        if clamp not in CLAMPS:
            raise AttackError(f"clamp must be one of {', '.join(CLAMPS)}, got {clamp!r}")
        self.eps = float(eps)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.grad_mode = grad_mode
        self.loss_fn = loss_fn
        self.seed = int(seed)
        self.generator = generator
        self.clamp = clamp

    @property
    def bounds(self) -> ValueRange:
        """The range adversarial examples end in: ``value_range`` (clamp ``data``) or (0, 1) (``unit``)."""
        return self.value_range if self.clamp == "data" else UNIT

    def step_project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` after a gradient step, back into the ε-ball around ``x`` and into :attr:`bounds`:
        :func:`project` (clamp ``data``) or torchattacks' :func:`project_delta` (``unit``)."""
        if self.clamp == "data":
            return project(x_adv, x, self.eps, self.value_range)
        return project_delta(x_adv, x, self.eps)

    def with_mode(self, grad_mode: Any) -> Attack:
        """A copy of this attack that uses another gradient mode."""
        other = copy.copy(self)
        other.grad_mode = grad_mode
        return other

    @property
    def salt(self) -> str:
        """Keys this attack's noise (so members of an ensemble draw different starts)."""
        return f"{self.name}|{self.grad_mode}"

    def noise(
        self, x: Tensor, kind: str, sample_ids: Tensor | Sequence[int] | None, restart: int = 0
    ) -> Tensor:
        """This attack's noise shaped like ``x`` ``[T, B, ...]`` (see :func:`sample_noise`), keyed by
        ``(seed, salt, sample_ids[i], restart)``, or drawn from ``generator`` when it is set."""
        return sample_noise(
            x, kind, seed=self.seed, salt=self.salt, sample_ids=sample_ids, restart=restart, generator=self.generator
        )

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None = None) -> Tensor:
        check_inputs(x, y, self.eps, self.value_range)
        x = x.detach()
        if x.shape[1] == 0:
            return x.clone()
        with attack_mode(model, self.grad_mode if self.uses_gradient else None):
            x_adv = self.perturb(model, x, y, sample_ids)
        return project(x_adv.detach(), x, self.eps, self.bounds)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = f", grad_mode={self.grad_mode}" if self.grad_mode is not None else ""
        extra += ", clamp=unit" if self.clamp == "unit" else ""
        return f"{type(self).__name__}(eps={self.eps:.5g}{extra})"
