"""IF neuron: forward against a plain loop, fused BPTT against per-step autograd, RGA, modes, memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.snn import kernels, neuron
from dvsguard.snn.neuron import (
    IFNeuron,
    gradient_mode,
    gradient_modes,
    if_reference,
    if_spikes,
    set_gradient_mode,
)
from dvsguard.snn.surrogate import ATAN, RGA, SIGMOID, TRIANGLE, GradientMode, rate_grad


def plain_if(x: list[list[float]]) -> list[list[float]]:
    """IF with hard reset in plain Python: x[t][i] currents → s[t][i] spikes (θ = 1)."""
    n = len(x[0])
    u, s_prev, out = [0.0] * n, [0.0] * n, []
    for row in x:
        u = [u[i] * (1.0 - s_prev[i]) + row[i] for i in range(n)]
        s_prev = [1.0 if u[i] >= 1.0 else 0.0 for i in range(n)]
        out.append(s_prev)
    return out


def test_forward_by_hand() -> None:
    x = torch.tensor([[0.5], [0.5], [0.5], [2.0], [-0.3], [1.2], [0.99]])
    # u: 0.5, 1.0 (spike, reset), 0.5, 2.5 (spike), -0.3, 0.9, 1.89 (spike)
    assert if_spikes(x)[:, 0].tolist() == [0, 1, 0, 1, 0, 0, 1]


@pytest.mark.parametrize("T", [1, 2, 5, 10])
def test_forward_equals_plain_loop(T: int) -> None:
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 200, generator=g) * 0.8 + 0.4
    # exact threshold hits: u = 1.0 must spike
    x[:, 0] = 0.5
    x[0, 1] = 1.0
    want = torch.tensor(plain_if(x.tolist()))
    got = if_spikes(x)
    assert torch.equal(got, want)
    got_grad = if_spikes(x.clone().requires_grad_())
    assert torch.equal(got_grad.detach(), want)
    assert got.dtype == torch.float32 and set(got.unique().tolist()) <= {0.0, 1.0}


def test_forward_same_in_every_mode() -> None:
    x = (torch.randn(8, 4, 3, 5, 5) + 0.3).requires_grad_()
    ref = if_spikes(x.detach())
    for mode in (TRIANGLE, SIGMOID, ATAN, RGA):
        assert torch.equal(if_spikes(x, mode), ref)


def test_rejects_input_without_time_axis() -> None:
    with pytest.raises(ValueError, match=r"\[T, B"):
        if_spikes(torch.zeros(5))


SHAPES = [(1, 64), (2, 40), (5, 2, 7), (10, 3, 4, 5, 5), (4, 2, 33)]
MODES = [TRIANGLE, SIGMOID, ATAN, GradientMode("triangle", 0.4), GradientMode("sigmoid", 1.0)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_fused_gradient_equals_naive_autograd(shape: tuple[int, ...], mode: GradientMode) -> None:
    g = torch.Generator().manual_seed(SHAPES.index(shape) * 10 + MODES.index(mode))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.9 + 0.5).requires_grad_()
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    s_fused = if_spikes(x, mode)
    s_naive = if_reference(x, mode)
    assert torch.equal(s_fused, s_naive)
    (g_fused,) = torch.autograd.grad((s_fused * w).sum(), x)
    (g_naive,) = torch.autograd.grad((s_naive * w).sum(), x)
    assert g_naive.abs().sum() > 0
    torch.testing.assert_close(g_fused, g_naive, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", [TRIANGLE, SIGMOID, ATAN], ids=str)
def test_fused_gradient_float32_through_layers(mode: GradientMode) -> None:
    """Two stacked IF layers with a linear map between them, float32, against the reference."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    x = (torch.randn(6, 5, 16) + 0.5).requires_grad_()

    def run(fn):
        h = fn(x, mode)
        h = fn(lin(h) * 2.0, mode)
        return (h * torch.arange(12.0)).sum()

    gf = torch.autograd.grad(run(if_spikes), [x, lin.weight])
    gn = torch.autograd.grad(run(if_reference), [x, lin.weight])
    for a, b in zip(gf, gn):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_reset_path_is_not_detached() -> None:
    """Gradient of s[1] w.r.t. I[0] goes through the reset of step 0 (u[0] ≥ θ)."""
    x = torch.tensor([[1.2], [0.5]], dtype=torch.float64, requires_grad=True)
    s = if_spikes(x, TRIANGLE)
    (g,) = torch.autograd.grad(s[1].sum(), x)
    # u0 = 1.2 (spike), m0 = u0·(1 − s0) = 0, u1 = 0.5.
    # ∂u1/∂I0 = ∂m0/∂u0 = (1 − s0) − u0·σ'(u0 − 1) = 0 − 1.2·0.8; ∂s1/∂u1 = σ'(−0.5) = 0.5
    assert g[0, 0].item() == pytest.approx(0.5 * (-1.2 * 0.8))
    assert g[1, 0].item() == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(1, 40), (4, 3, 6), (10, 2, 3, 4, 4)], ids=str)
def test_rga_gradient_equals_rate_formula(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.6).requires_grad_()
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    s = if_spikes(x, RGA)
    (got,) = torch.autograd.grad((s * w).sum(), x)
    i_mean = x.detach().mean(0)
    want = (rate_grad(i_mean) * w.mean(0)).expand(shape)  # g(ī) · mean_t ∂L/∂s[t]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inside = (i_mean >= 0) & (i_mean <= 2)
    assert inside.any() and (~inside).any()  # both branches exercised
    assert torch.all(got[:, ~inside] == 0)


def test_rga_constant_upstream_gradient() -> None:
    """With ∂L/∂s = c for every step, RGA gives ∂L/∂I[t] = 0.5·c inside [0, 2]."""
    x = torch.tensor([[0.5, 3.0], [0.5, 3.0], [0.5, 3.0]], requires_grad=True)
    (g,) = torch.autograd.grad((if_spikes(x, RGA) * 2.0).sum(), x)
    assert g.tolist() == [[1.0, 0.0]] * 3


def test_bf16_input_gives_exact_bf16_spikes() -> None:
    """bf16 current (autocast) → float32 membrane inside, spikes returned as exact bf16 0/1."""
    x = (torch.rand(10, 64) * 0.45).to(torch.bfloat16).requires_grad_()
    s = if_spikes(x)
    assert s.dtype == torch.bfloat16
    assert torch.equal(s.float(), if_spikes(x.detach().float()))
    (g,) = torch.autograd.grad(s.float().sum(), x)
    assert g.dtype == torch.bfloat16 and g.abs().sum() > 0


@pytest.mark.parametrize("mode", [TRIANGLE, SIGMOID, ATAN, GradientMode("triangle", 0.3), RGA], ids=str)
@pytest.mark.parametrize("shape", [(1, 7), (3, 2, 1500), (2, 70_001), (6, 2, 8, 12, 12)], ids=str)
def test_compiled_loops_equal_torch_loops(monkeypatch: pytest.MonkeyPatch, mode: GradientMode, shape) -> None:
    """The numba kernels (several threads, ragged blocks) match the torch-op loops in float32."""
    if not kernels.available():
        pytest.skip("numba kernels unavailable")
    g = torch.Generator().manual_seed(len(shape))
    x = (torch.randn(shape, generator=g) * 0.9 + 0.5).requires_grad_()
    w = torch.randn(shape, generator=g)
    results = []
    for use in (True, False):
        monkeypatch.setattr(neuron, "USE_KERNELS", use)
        s = if_spikes(x, mode)
        (gx,) = torch.autograd.grad((s * w).sum(), x)
        results.append((s, gx))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", [TRIANGLE, SIGMOID, ATAN, RGA], ids=str)
@pytest.mark.parametrize("shape", [(4, 3, 700), (2, 70_001)], ids=str)
def test_compiled_loops_bf16_in_and_out(monkeypatch: pytest.MonkeyPatch, mode: GradientMode, shape) -> None:
    """bf16 current read directly by the kernels: same spikes and (bf16-rounded) gradients as
    promoting to float32 with torch ops."""
    if not kernels.available():
        pytest.skip("numba kernels unavailable")
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=g) * 0.9 + 0.5).to(torch.bfloat16).requires_grad_()
    w = torch.randn(shape, generator=g).to(torch.bfloat16)
    results = []
    for use in (True, False):
        monkeypatch.setattr(neuron, "USE_KERNELS", use)
        s = if_spikes(x, mode)
        (gx,) = torch.autograd.grad((s * w).sum(), x)
        assert s.dtype == torch.bfloat16 and gx.dtype == torch.bfloat16
        results.append((s, gx))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1].float(), results[1][1].float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", [TRIANGLE, RGA], ids=str)
def test_channels_last_current_keeps_its_layout(dtype: torch.dtype, mode: GradientMode) -> None:
    """Channels-last current ``[T, B, C, H, W]``: spikes come back in that layout (no copy into
    the plain one) and equal, with their gradients, those of the same values stored plainly."""
    g = torch.Generator().manual_seed(11)
    T, B, C, H, W = 4, 3, 5, 6, 7
    plain = (torch.randn(T, B, C, H, W, generator=g) * 0.9 + 0.5).to(dtype)
    merged = plain.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    cl = merged.view(T, B, C, H, W)
    assert not cl.is_contiguous()
    w = torch.randn(T, B, C, H, W, generator=g).to(dtype)
    results = []
    for x in (plain.clone(), cl.clone()):
        x.requires_grad_(True)
        s = if_spikes(x, mode)
        (gx,) = torch.autograd.grad((s * w).float().sum(), x)
        results.append((s, gx))
    (s_plain, g_plain), (s_cl, g_cl) = results
    assert s_cl.stride() == cl.stride() and g_cl.stride() == cl.stride()
    assert torch.equal(s_plain, s_cl)
    assert torch.equal(g_plain, g_cl)


def test_compiled_loops_bf16_out() -> None:
    if not kernels.available():
        pytest.skip("numba kernels unavailable")
    x = torch.randn(5, 3000) + 0.5
    s16, _ = kernels.forward(x, 1.0, False, torch.bfloat16)
    s32, u = kernels.forward(x, 1.0, True, torch.float32)
    assert s16.dtype == torch.bfloat16 and torch.equal(s16.float(), s32)
    assert torch.equal(s32, if_reference(x))
    assert u is not None and torch.equal(u >= 1.0, s32.bool())


def test_module_mode_switching() -> None:
    net = nn.Sequential(nn.Linear(3, 3), IFNeuron(), nn.Linear(3, 2), IFNeuron())
    assert set(gradient_modes(net).values()) == {TRIANGLE}
    prev = set_gradient_mode(net, "atan")
    assert set(prev.values()) == {TRIANGLE}
    assert set(gradient_modes(net).values()) == {ATAN}
    set_gradient_mode(net, prev)
    assert set(gradient_modes(net).values()) == {TRIANGLE}
    net[1].mode = "sigmoid:2"
    assert net[1].mode == GradientMode("sigmoid", 2.0)
    with pytest.raises(ConfigError):
        set_gradient_mode(nn.Linear(2, 2), TRIANGLE)
    with pytest.raises(ConfigError):
        set_gradient_mode(net, {"nope": TRIANGLE})


def test_context_manager_restores_even_on_error() -> None:
    net = nn.Sequential(IFNeuron(SIGMOID), IFNeuron(ATAN))
    before = gradient_modes(net)
    with gradient_mode(net, RGA):
        assert set(gradient_modes(net).values()) == {RGA}
    assert gradient_modes(net) == before
    with pytest.raises(RuntimeError, match="boom"):
        with gradient_mode(net, "triangle:0.3"):
            raise RuntimeError("boom")
    assert gradient_modes(net) == before


def test_mode_changes_gradient_of_trained_module() -> None:
    neuron = IFNeuron()
    x = (torch.randn(5, 50) * 0.5 + 0.6).requires_grad_()
    grads = {}
    for mode in (TRIANGLE, SIGMOID, ATAN, RGA):
        with gradient_mode(neuron, mode):
            (grads[str(mode)],) = torch.autograd.grad(neuron(x).sum(), x)
    vals = list(grads.values())
    assert all(not torch.allclose(a, b) for i, a in enumerate(vals) for b in vals[i + 1 :])


def _saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd saves for backward while running fn(x)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(seen.values())


@pytest.mark.parametrize("T", [4, 10])
def test_fused_saves_less_than_naive(T: int) -> None:
    x = (torch.randn(T, 8, 16, 12, 12) + 0.5).requires_grad_()
    one = x[0].numel() * 4  # bytes of one float32 step
    fused = _saved_bytes(lambda v: if_spikes(v, TRIANGLE), x)
    naive = _saved_bytes(lambda v: if_reference(v, TRIANGLE), x)
    rga = _saved_bytes(lambda v: if_spikes(v, RGA), x)
    assert fused == T * one  # only the pre-spike membrane
    assert naive >= 2 * T * one  # at least membrane and spike per step
    assert rga == one  # only the mean current


_FORK_INPUT = torch.rand(3, 200_000, generator=torch.Generator().manual_seed(0))


def _child_runs_if(queue) -> None:  # runs in a forked child; avoids torch's OpenMP, which is not fork-safe
    queue.put(float(if_spikes(_FORK_INPUT).numpy().sum()))


def test_kernels_work_in_forked_child() -> None:
    """A DataLoader-style fork after the kernels' thread pool exists must not deadlock."""
    import multiprocessing as mp

    if not kernels.available():
        pytest.skip("numba kernels unavailable")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = float(if_spikes(_FORK_INPUT).numpy().sum())  # creates the pool in the parent
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_runs_if, args=(queue,))
        proc.start()
        proc.join(timeout=120)
        if proc.is_alive():
            proc.kill()
            pytest.fail("forked child hung in the IF kernels")
        assert proc.exitcode == 0 and queue.get(timeout=5) == want
    finally:
        torch.set_num_threads(threads)
