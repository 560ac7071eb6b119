"""One intra-op thread for these tests (tiny models; restored afterwards): on a loaded 2-core
machine two torch threads spin against each other and make each small forward pass ~30× slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
