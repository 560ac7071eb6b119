"""Integrate-and-fire neuron with hard reset, simulated over all time steps at once.

Dynamics (θ = 1, reset to 0), for input current I of shape ``[T, B, ...]``::

    u[t] = u[t−1] · (1 − s[t−1]) + I[t],   u[−1] = 0, s[−1] = 0
    s[t] = H(u[t] − θ)                      (a spike when u[t] ≥ θ)

``u[t]`` is the membrane potential *before* the reset of step t.

Backward (BPTT) is a custom ``torch.autograd.Function`` over the whole time loop. Its
forward saves one tensor: the pre-spike membrane ``u`` (float32, ``[T, B, ...]``); spikes
are recomputed from it as ``u ≥ θ``. The reset path is **not** detached, as in the
authors' released code (``mem = (1 − spike) · mem`` with a surrogate spike): gradient
flows from the post-reset membrane m[t] = u[t]·(1 − s[t]) into both u[t] and s[t]::

    gm[t]  = ∂L/∂u[t+1]                        (gm[T−1] = 0)
    gs[t]  = ∂L/∂s[t] (from later layers) − gm[t] · u[t]
    ∂L/∂u[t] = gs[t] · σ'(u[t] − θ) + gm[t] · (1 − s[t])
    ∂L/∂I[t] = ∂L/∂u[t]

In ``rga`` mode the forward is identical, but the neuron is differentiated as its rate
r = mean_t s[t] ≈ f(ī), ī = mean_t I[t], with slope g(ī) (:func:`surrogate.rate_grad`)::

    ∂L/∂I[t] = Σ_t' ∂L/∂s[t'] · ∂r/∂I[t] = g(ī) · mean_t' ∂L/∂s[t']

(every s[t'] is replaced by r, and ∂ī/∂I[t] = 1/T). This mode saves only ī (``[B, ...]``).
The authors' released code multiplies g(ī) by the per-step ∂L/∂s[t] instead of its time
mean; the two agree whenever ∂L/∂s is the same at every step, which holds in this network
in eval mode (logits are a time mean and every other layer is time-invariant and affine),
i.e. whenever an attack uses RGA.

On CPU, float32 and bfloat16 tensors run through the compiled one-pass loops of
:mod:`dvsguard.snn.kernels` (numba); other dtypes/devices, or ``USE_KERNELS = False``,
use torch ops. Both give identical spikes and gradients equal to float rounding.

:func:`if_reference` is the plain per-step autograd version of the same maths, kept as
the test oracle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.snn import kernels
from dvsguard.snn.surrogate import TRIANGLE, GradientMode, rate_grad, surrogate_grad

THRESHOLD = 1.0


USE_KERNELS = True
"""Use the compiled one-pass loops of :mod:`dvsguard.snn.kernels` for float32/bfloat16 CPU
tensors when numba is available (False: always the torch-op loops; same spikes)."""


def _use_kernels(x: torch.Tensor) -> bool:
    return (
        USE_KERNELS and x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu" and kernels.available()
    )


def _forward_loop(x: torch.Tensor, threshold: float, keep_u: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the IF dynamics with torch ops. x: current ``[T, B, ...]``. Returns (spikes, u or None)."""
    u_all = torch.empty_like(x)
    m = None
    for t in range(x.shape[0]):
        u_t = u_all[t]
        if m is None:
            u_t.copy_(x[t])
        else:
            torch.add(x[t], m, out=u_t)
        m = u_t.masked_fill(u_t >= threshold, 0.0)
    spikes = (u_all >= threshold).to(x.dtype)
    return spikes, (u_all if keep_u else None)


def _memory_order(x: torch.Tensor) -> list[int]:
    """The dims of x from the largest stride to the smallest, time (dim 0) first.

    ``x.permute(order)`` is contiguous when x is dense in some dim order with time outermost
    (e.g. channels-last activations ``[T, B, C, H, W]`` give ``[0, 1, 3, 4, 2]``); otherwise
    the plain order, for which ``contiguous()`` copies.
    """
    rest = sorted(range(1, x.dim()), key=lambda d: (-x.stride(d), d))
    order = [0, *rest]
    return order if x.permute(order).is_contiguous() else list(range(x.dim()))


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for i, d in enumerate(order):
        inv[d] = i
    return inv


def _forward(x: torch.Tensor, threshold: float, keep_u: bool, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IF forward; spikes in ``out_dtype``, membrane u float32 (float64 for float64 x) or None.
    x is bfloat16 only when the compiled loops take it directly. The compiled loops keep x's
    memory layout: spikes (and u) have x's strides, so channels-last activations stay so."""
    if _use_kernels(x):
        order = _memory_order(x)
        inv = _inverse(order)
        spikes, u_all = kernels.forward(x.permute(order).contiguous(), threshold, keep_u, out_dtype)
        return spikes.permute(inv), (u_all.permute(inv) if u_all is not None else None)
    spikes, u_all = _forward_loop(x, threshold, keep_u)
    return spikes.to(out_dtype), u_all


class _IFSurrogate(torch.autograd.Function):
    """IF over all T with a per-step surrogate; saves only the pre-spike membrane u."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mode: GradientMode, threshold: float, out_dtype: torch.dtype) -> torch.Tensor:  # type: ignore[override]
        spikes, u_all = _forward(x, threshold, True, out_dtype)
        ctx.save_for_backward(u_all)
        ctx.order = _memory_order(x)  # u_all has x's layout
        ctx.mode = mode
        ctx.threshold = threshold
        return spikes

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):  # type: ignore[override]
        (u_all,) = ctx.saved_tensors
        mode, theta = ctx.mode, ctx.threshold
        if _use_kernels(u_all):
            order = ctx.order
            grad_x = kernels.backward(u_all.permute(order), grad_s.permute(order).contiguous(), theta, mode.kind, mode.gamma)
            return grad_x.permute(_inverse(order)), None, None, None
        grad_s = grad_s.to(u_all.dtype)
        grad_x = torch.empty_like(u_all)
        gm = None
        for t in range(u_all.shape[0] - 1, -1, -1):
            u = u_all[t]
            sg = surrogate_grad(u - theta, mode)
            if gm is None:
                gv = grad_s[t] * sg
            else:
                gs = grad_s[t] - gm * u
                gv = gs.mul_(sg).add_(gm.masked_fill_(u >= theta, 0.0))
            grad_x[t] = gv
            gm = gv
        return grad_x, None, None, None


class _IFRate(torch.autograd.Function):
    """IF over all T, differentiated as its firing rate (RGA); saves only ī = mean_t I[t]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: float, out_dtype: torch.dtype) -> torch.Tensor:  # type: ignore[override]
        spikes, _ = _forward(x, threshold, False, out_dtype)
        ctx.save_for_backward(x.mean(0, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))
        ctx.threshold = threshold
        ctx.in_dtype = x.dtype
        ctx.order = _memory_order(x)
        return spikes

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):  # type: ignore[override]
        (i_mean,) = ctx.saved_tensors
        g = rate_grad(i_mean, ctx.threshold) * grad_s.to(i_mean.dtype).mean(0)
        order = ctx.order  # the gradient in x's memory layout (e.g. channels-last)
        grad_x = grad_s.new_empty([grad_s.shape[d] for d in order], dtype=ctx.in_dtype).permute(_inverse(order))
        return grad_x.copy_(g.unsqueeze(0).expand_as(grad_x)), None, None


def if_spikes(x: torch.Tensor, mode: GradientMode = TRIANGLE, threshold: float = THRESHOLD) -> torch.Tensor:
    """Spikes ``[T, B, ...]`` (0/1, float32) of IF neurons driven by current x ``[T, B, ...]``.

    Differentiable with the fused BPTT backward of ``mode``. The membrane state is float32
    (float64 for float64 input); a bfloat16 input (from bf16 autocast) gives bfloat16
    spikes, which are exact, so the next layer needs no cast.
    """
    if x.dim() < 2:
        raise ValueError(f"IF neuron input must be [T, B, ...], got shape {tuple(x.shape)}")
    out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else (torch.float64 if x.dtype == torch.float64 else torch.float32)
    if x.dtype != torch.float64 and not (x.dtype == torch.bfloat16 and _use_kernels(x)):
        x = x.float()
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _forward(x, threshold, False, out_dtype)[0]
    if not mode.surrogate.per_step:
        return _IFRate.apply(x, threshold, out_dtype)
    return _IFSurrogate.apply(x, mode, threshold, out_dtype)


class _SpikeFn(torch.autograd.Function):
    """Heaviside spike with a surrogate backward (used only by the per-step reference)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mode: GradientMode) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.mode = mode
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.mode), None


def if_reference(x: torch.Tensor, mode: GradientMode = TRIANGLE, threshold: float = THRESHOLD) -> torch.Tensor:
    """Per-step autograd IF (non-detached reset), the oracle for :func:`if_spikes`.

    Surrogate modes only; x ``[T, B, ...]`` → spikes ``[T, B, ...]``.
    """
    if not mode.surrogate.per_step:
        raise ConfigError("if_reference: rga has no per-step form; compare with surrogate.rate_grad")
    mem = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        mem = mem + x[t]
        spike = _SpikeFn.apply(mem - threshold, mode)
        mem = (1 - spike) * mem
        out.append(spike)
    return torch.stack(out)


class IFNeuron(nn.Module):
    """A layer of IF neurons (θ = 1, hard reset to 0): current ``[T, B, ...]`` → spikes ``[T, B, ...]``.

    Stateless between calls: every forward starts from u = 0. ``mode`` (a GradientMode)
    selects the backward and may be changed at any time, e.g. by an attack.
    """

    def __init__(self, mode: GradientMode = TRIANGLE, threshold: float = THRESHOLD) -> None:
        super().__init__()
        self.mode = mode
        self.threshold = float(threshold)

    @property
    def mode(self) -> GradientMode:
        return self._mode

    @mode.setter
    def mode(self, value: GradientMode | str) -> None:
        self._mode = GradientMode.parse(value) if isinstance(value, str) else value
        if not isinstance(self._mode, GradientMode):
            raise ConfigError(f"IFNeuron.mode must be a GradientMode, got {type(value).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return if_spikes(x, self._mode, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:g}, mode={self._mode}"


def gradient_modes(model: nn.Module) -> dict[str, GradientMode]:
    """The gradient mode of every IFNeuron in ``model``, by module name."""
    return {name: m.mode for name, m in model.named_modules() if isinstance(m, IFNeuron)}


def set_gradient_mode(model: nn.Module, mode: GradientMode | str | dict[str, GradientMode]) -> dict[str, GradientMode]:
    """Set the gradient mode of every IFNeuron (one mode, or a dict name → mode as returned by
    :func:`gradient_modes`). Returns the previous modes. Raises ConfigError if the model
    has no IFNeuron or a dict names an unknown neuron."""
    previous = gradient_modes(model)
    if not previous:
        raise ConfigError(f"{type(model).__name__} has no IFNeuron layers whose gradient mode could be set")
    neurons = {name: m for name, m in model.named_modules() if isinstance(m, IFNeuron)}
    if isinstance(mode, dict):
        unknown = sorted(set(mode) - set(neurons))
        if unknown:
            raise ConfigError(f"no IFNeuron named {unknown[0]!r} in {type(model).__name__}")
        for name, m in mode.items():
            neurons[name].mode = m
    else:
        parsed = GradientMode.parse(mode) if isinstance(mode, str) else mode
        for m in neurons.values():
            m.mode = parsed
    return previous


@contextlib.contextmanager
def gradient_mode(model: nn.Module, mode: GradientMode | str) -> Iterator[nn.Module]:
    """Context manager: use ``mode`` in every IFNeuron of ``model``, restore the previous
    modes on exit (also when the block raises)."""
    previous = set_gradient_mode(model, mode)
    try:
        yield model
    finally:
        set_gradient_mode(model, previous)
