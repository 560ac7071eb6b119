"""The trainer's optimizers compute what torch's default implementations compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dvsguard.train.optimizer import make_optimizer


def _run(opt_factory, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = opt_factory(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 2, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_same_weights_as_the_default_optimizer(name: str) -> None:
    ours = _run(lambda ps: make_optimizer(ps, name, lr=0.05, momentum=0.9, weight_decay=5e-4))
    if name == "sgd":
        ref = _run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4))
    else:
        ref = _run(lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=5e-4))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_where_torch_has_the_kernel_and_unknown_names_refused() -> None:
    opt = make_optimizer([nn.Parameter(torch.zeros(3))], "sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    assert opt.param_groups[0]["fused"] is True  # torch ≥ 2.4 has CPU fused SGD
    with pytest.raises(ValueError, match="optimizer 'rmsprop' is unknown"):
        make_optimizer([nn.Parameter(torch.zeros(3))], "rmsprop", lr=0.1, momentum=0.9, weight_decay=0.0)
