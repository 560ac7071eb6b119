"""The sparsity regularizer against a by-hand computation, and where its gradient goes."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from dvsguard.train.losses import (
    cross_entropy,
    sparsity_regularizer,
    true_vs_strongest_wrong,
)


def test_true_vs_strongest_wrong_picks_the_largest_other_logit():
    logits = torch.tensor([[3.0, 5.0, 1.0], [0.0, 2.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    wrong, f = true_vs_strongest_wrong(logits, y)
    assert wrong.tolist() == [0, 1]
    expected = torch.tensor([1 / (1 + torch.exp(torch.tensor(-2.0))), 1 / (1 + torch.exp(torch.tensor(-2.0)))])
    assert f.dtype == torch.float64
    torch.testing.assert_close(f, expected.double())


@pytest.mark.parametrize("form", ["sq", "abs"])
def test_sr_term_equals_hand_computation_on_a_linear_network(form, frames, linear_net, tiny_net):
    x, y = (frames[0].double(), frames[1])
    torch.manual_seed(1)
    model = linear_net(2 * 8 * 8, 4).double()
    h = 0.01
    t = x.shape[0]
    w, b = model.fc.weight.detach(), model.fc.bias.detach()

    # by hand: z = W·mean_T(x) + b, f = σ(z_y − z_ỹ), ∇ₓ f = f(1−f)(W_y − W_ỹ)/T on every frame
    z = x.mean(0).flatten(1) @ w.t() + b
    masked = z.clone()
    masked[torch.arange(len(y)), y] = -float("inf")
    wrong = masked.argmax(1)
    f = torch.sigmoid(z[torch.arange(len(y)), y] - z[torch.arange(len(y)), wrong])
    grad = (f * (1 - f))[:, None] * (w[y] - w[wrong]) / t  # [B, 2·8·8]
    d = grad.sign().view(1, len(y), 2, 8, 8).expand_as(x)
    z2 = (x + h * d).mean(0).flatten(1) @ w.t() + b
    f2 = torch.sigmoid(z2[torch.arange(len(y)), y] - z2[torch.arange(len(y)), wrong])
    q = (f2 - f) / h
    expected = q.pow(2).mean() if form == "sq" else q.abs().mean()

    reg, logits = sparsity_regularizer(model, x, y, h=h, form=form)
    torch.testing.assert_close(logits, z)
    torch.testing.assert_close(reg, expected)
    # for a linear model the difference quotient is the ℓ1 norm of the gradient up to O(h)
    assert torch.allclose(q, t * grad.abs().sum(1), rtol=0.05)  # the same gradient on each of T frames


def test_strongest_wrong_class_is_kept_for_the_shifted_input(frames, linear_net, tiny_net):
    """With a large h the shifted input's own strongest wrong class may differ; ỹ must not."""
    x, y = frames[0].double(), frames[1]
    torch.manual_seed(3)
    model = linear_net(2 * 8 * 8, 4).double()
    reg, logits = sparsity_regularizer(model, x, y, h=0.5, form="abs")
    wrong, f_x = true_vs_strongest_wrong(logits, y)
    # recompute f at the shifted input with the class fixed at x
    x0 = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(true_vs_strongest_wrong(model(x0), y)[1].sum(), x0)
    z2 = model(x + 0.5 * g.sign())
    f2 = torch.sigmoid(z2.gather(1, y[:, None]).squeeze(1) - z2.gather(1, wrong[:, None]).squeeze(1))
    torch.testing.assert_close(reg, ((f2 - f_x) / 0.5).abs().mean())


def _grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)


@pytest.mark.parametrize("form", ["sq", "abs"])
def test_sr_gradient_reaches_the_weights_through_both_passes(form, frames, linear_net, tiny_net):
    x, y = frames[0].double(), frames[1]
    torch.manual_seed(0)
    model = tiny_net().double().eval()  # eval: both passes see the same BN statistics
    params = dict(model.named_parameters())
    frozen = {k: v.detach() for k, v in params.items()}

    def cutting(pass_to_cut: int):
        calls = {"n": 0}

        def run(inp):
            calls["n"] += 1
            p = frozen if calls["n"] == pass_to_cut else params
            return functional_call(model, p, (inp,))

        return run, calls

    full, _ = sparsity_regularizer(model, x, y, h=0.01, form=form)
    g_full = _grads(model, full)
    run1, calls1 = cutting(2)  # weights seen only through the first pass
    g_first = _grads(model, sparsity_regularizer(run1, x, y, h=0.01, form=form)[0])
    run2, calls2 = cutting(1)  # weights seen only through the shifted pass
    g_second = _grads(model, sparsity_regularizer(run2, x, y, h=0.01, form=form)[0])
    assert calls1["n"] == calls2["n"] == 2  # two forward passes, no third
    for a, b1, b2 in zip(g_full, g_first, g_second):
        torch.testing.assert_close(a, b1 + b2)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert flat(g_first).abs().sum() > 0
    assert flat(g_second).abs().sum() > 0
    # the two contributions are of opposite sign: the term is a difference
    assert torch.dot(flat(g_first), flat(g_second)) < 0


def test_sr_direction_is_a_constant_and_input_is_untouched(frames, linear_net, tiny_net):
    x, y = frames
    model = tiny_net().train()
    x_before = x.clone()
    reg, logits = sparsity_regularizer(model, x, y)
    reg.backward()
    assert torch.equal(x, x_before)
    assert x.grad is None
    assert logits.shape == (6, 4)
    assert torch.isfinite(reg)


def test_unknown_form_is_rejected(frames, linear_net, tiny_net):
    x, y = frames
    with pytest.raises(ValueError, match="form"):
        sparsity_regularizer(tiny_net(), x, y, form="l2")


def test_cross_entropy_matches_torch():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    y = torch.tensor([1])
    torch.testing.assert_close(cross_entropy(logits, y), torch.nn.functional.cross_entropy(logits, y))
