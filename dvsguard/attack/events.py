"""Event-realisable attacks: insert and delete events in integer count frames, within an event budget.

The threat model: frames are the stored integer event counts ``c`` ``[T, B, 2, H, W]`` per frame
bin (time bin, polarity, row, column), ``0 ≤ c ≤ count_cap``, and the model sees them as the data
stage does, float32 ``c / count_cap`` (:func:`dvsguard.data.frames.frames_to_float`). The
adversary inserts or deletes whole events: the adversarial counts ``c'`` stay integers in
``[0, count_cap]``, ``‖c' − c‖₁ ≤ budget`` events per sample, optionally ``|c' − c| ≤ per_bin``
in every bin and ``c' ≥ c`` (``insert_only``: the physically easiest attack, flicker).

Two attacks share one step (:func:`apply_step`): each step takes the ``k`` best feasible bins by
a signed score (positive: insert one event there; negative: delete one) and changes each by one
event, until the budget is spent or no bin scores. A bin once raised is only raised further and
once lowered only lowered, so every change spends one event of the budget.

* :class:`GreedyEvents`: the score is the input gradient of the loss through the model (under
  the attack's gradient mode, so the paper's surrogate/RGA ensemble applies unchanged).
* :class:`RandomEvents`: the score is seeded uniform noise per sample, the event analogue of the
  paper's random-noise baseline (Observation 1) at the same budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.attack.base import Attack, attack_mode, check_inputs, input_gradient
from dvsguard.errors import AttackError

DEFAULT_STEP_EVENTS = 8  # events changed per step (top-k bins)


@dataclass(frozen=True)
class EventBudget:
    """What the adversary may do to one sample.

    Attributes:
        events: L1 budget: events inserted plus deleted per sample (≥ 0).
        count_cap: the data's clip of counts per frame bin (counts stay in ``[0, count_cap]``).
        per_bin: at most this many events changed in any one frame bin (None: up to ``count_cap``).
        insert_only: only insert events.
    """

    events: int
    count_cap: int
    per_bin: int | None = None
    insert_only: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.events, bool) or not isinstance(self.events, int) or self.events < 0:
            raise AttackError(f"event budget must be a whole number of events >= 0, got {self.events!r}")
        if isinstance(self.count_cap, bool) or not isinstance(self.count_cap, int) or self.count_cap < 1:
            raise AttackError(f"count_cap must be a positive integer, got {self.count_cap!r}")
        if self.per_bin is not None and (isinstance(self.per_bin, bool) or not isinstance(self.per_bin, int)
                                         or self.per_bin < 1):
            raise AttackError(f"per-bin cap must be a positive whole number of events, got {self.per_bin!r}")

    @property
    def bin_limit(self) -> int:
        """Largest change of one frame bin, events."""
        return self.count_cap if self.per_bin is None else min(self.per_bin, self.count_cap)


def to_input(counts: Tensor, count_cap: int) -> Tensor:
    """Integer counts → the float32 model input ``counts / count_cap`` (as the data stage scales them)."""
    return counts.to(torch.float32) / torch.tensor(count_cap, dtype=torch.float32)


def to_counts(x: Tensor, count_cap: int) -> Tensor:
    """Model input ``counts / count_cap`` → int64 counts; ``AttackError`` unless it is such a frame."""
    scaled = x.detach().double() * count_cap
    counts = torch.round(scaled)
    if not torch.all((scaled - counts).abs() < 1e-3) or counts.min() < 0 or counts.max() > count_cap:
        raise AttackError(f"frames are not event counts / {count_cap} in [0, 1]; the event threat model needs "
                          f"downsample-framed (events protocol) frames")
    return counts.to(torch.int64)


def events_changed(counts: Tensor, counts0: Tensor) -> tuple[Tensor, Tensor]:
    """(inserted ``[B]``, deleted ``[B]``): events added and removed per sample (frames ``[T, B, ...]``)."""
    diff = (counts - counts0).transpose(0, 1).reshape(counts.shape[1], -1)
    return diff.clamp(min=0).sum(1), (-diff).clamp(min=0).sum(1)


def apply_step(counts: Tensor, counts0: Tensor, scores: Tensor, budget: EventBudget, k: int) -> Tensor:
    """One step: per sample, change the ``k`` best feasible bins by one event each.

    ``counts``/``counts0`` int64 and ``scores`` float, all ``[T, B, ...]``. A bin with a positive
    score gets one event inserted, a negative one deleted, best ``|score|`` first, where allowed:
    an insertion where ``counts0 ≤ c < count_cap``, a deletion where ``0 < c ≤ counts0`` (not
    with ``insert_only``), ``|c − counts0| < bin_limit``, at most the sample's remaining budget.
    Returns the new counts (a new tensor).
    """
    b = counts.shape[1]
    c = counts.transpose(0, 1).reshape(b, -1)
    c0 = counts0.transpose(0, 1).reshape(b, -1)
    s = scores.transpose(0, 1).reshape(b, -1)
    remaining = budget.events - (c - c0).abs().sum(1)
    room = (c - c0).abs() < budget.bin_limit
    can_insert = (s > 0) & (c >= c0) & (c < budget.count_cap) & room
    can_delete = (s < 0) & (c <= c0) & (c > 0) & room & (not budget.insert_only)
    gain = torch.where(can_insert | can_delete, s.abs(), torch.zeros_like(s))
    width = min(int(k), gain.shape[1])
    values, index = gain.topk(width, dim=1)
    rank = torch.arange(width).expand(b, width)
    take = (values > 0) & (rank < remaining.clamp(min=0).unsqueeze(1))
    sign = torch.where(s.gather(1, index) > 0, 1, -1).to(torch.int64)
    delta = torch.zeros_like(c).scatter_(1, index, sign * take.to(torch.int64))
    return (c + delta).reshape(b, *counts.shape[:1], *counts.shape[2:]).transpose(0, 1).contiguous()


class EventAttack(Attack):
    """Base of the event attacks: ``attack(model, x, y) -> x_adv`` with frames ``x = counts / count_cap``.

    ``x_adv`` is again ``counts' / count_cap`` for integer counts within the :class:`EventBudget`
    (no L∞ projection: the budget is enforced on the counts). Subclasses give :meth:`scores`.
    ``step_events`` bins change per step (top-k).
    """

    name = "events"

    def __init__(self, budget: EventBudget, *, step_events: int = DEFAULT_STEP_EVENTS, grad_mode: Any = None,
                 seed: int = 0) -> None:
        if step_events < 1:
            raise AttackError(f"events per step must be >= 1, got {step_events}")
        super().__init__(budget.bin_limit / budget.count_cap, grad_mode=grad_mode, seed=seed)
        self.budget = budget
        self.step_events = int(step_events)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None = None) -> Tensor:
        check_inputs(x, y, self.eps, self.value_range)
        counts0 = to_counts(x, self.budget.count_cap)
        if x.shape[1] == 0 or self.budget.events == 0:
            return x.detach().clone()
        with attack_mode(model, self.grad_mode if self.uses_gradient else None):
            counts = self.perturb_counts(model, counts0, y, sample_ids)
        return to_input(counts, self.budget.count_cap)

    def perturb_counts(self, model: nn.Module, counts0: Tensor, y: Tensor,
                       sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        """Steps of :func:`apply_step` until the budget is spent or a step changes nothing."""
        counts = counts0.clone()
        for step in range(-(-self.budget.events // self.step_events)):
            scores = self.scores(model, counts, y, sample_ids, step)
            new = apply_step(counts, counts0, scores, self.budget, self.step_events)
            if torch.equal(new, counts):
                break
            counts = new
        return counts

    def scores(self, model: nn.Module, counts: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None,
               step: int) -> Tensor:
        """Signed score per frame bin ``[T, B, ...]``: > 0 asks for an insertion, < 0 for a deletion."""
        raise NotImplementedError

    def __repr__(self) -> str:
        b = self.budget
        extra = f", per_bin={b.per_bin}" if b.per_bin is not None else ""
        extra += ", insert_only" if b.insert_only else ""
        extra += f", grad_mode={self.grad_mode}" if self.grad_mode is not None else ""
        return f"{type(self).__name__}(events={b.events}{extra})"


class GreedyEvents(EventAttack):
    """Gradient-guided greedy: per step, the ``k`` bins of largest ``|∂loss/∂x|`` in the feasible direction."""

    name = "greedy"

    def scores(self, model: nn.Module, counts: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None,
               step: int) -> Tensor:
        grad, _, _ = input_gradient(model, to_input(counts, self.budget.count_cap), y, self.loss_fn)
        return grad


class RandomEvents(EventAttack):
    """Random events at the same budget: seeded uniform scores per sample and step (no model run)."""

    name = "random"
    uses_gradient = False

    @property
    def salt(self) -> str:
        """Just the name: the noise does not depend on a gradient mode this attack never uses."""
        return self.name

    def scores(self, model: nn.Module, counts: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None,
               step: int) -> Tensor:
        noise = self.noise(counts.to(torch.float32), "uniform", sample_ids, restart=step)
        return noise.abs() if self.budget.insert_only else noise


EVENT_ATTACKS: dict[str, type[EventAttack]] = {"greedy": GreedyEvents, "random": RandomEvents}


def make_event_attack(name: str, budget: EventBudget, **kw: Any) -> EventAttack:
    """The event attack called ``name`` (``greedy`` or ``random``) with ``budget``."""
    key = name.strip().lower()
    if key not in EVENT_ATTACKS:
        raise AttackError(f"unknown event attack {name!r}; known: clean, {', '.join(EVENT_ATTACKS)}")
    return EVENT_ATTACKS[key](budget, **kw)
