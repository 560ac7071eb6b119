"""The trainer's optimizers: SGD with momentum (the paper's) or Adam, fused where torch can.

torch's fused SGD/Adam kernels update each parameter in one pass (weight decay, momentum and
the step together, no temporary tensor the size of the weights); for VGG-11's 75M-weight
first head layer that saves a few hundred MB of fresh memory per step. They compute what
the default implementations compute; where a torch build or device has no fused kernel
the default implementation is used.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``sgd`` (momentum, L2 weight decay) or ``adam`` (L2 weight decay) over ``params``."""
    params = list(params)
    if name == "adam":
        make = lambda **kw: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)  # noqa: E731
    elif name == "sgd":
        make = lambda **kw: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)  # noqa: E731
    else:
        raise ValueError(f"optimizer {name!r} is unknown; expected one of {', '.join(OPTIMIZERS)}")
    try:
        return make(fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device, dtype or torch
        return make()
