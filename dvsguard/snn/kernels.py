"""Compiled one-pass loops for the IF neuron (numba, float32), used by :mod:`dvsguard.snn.neuron`.

Each kernel works on ``[T, N]`` arrays (time first, all neurons flattened) and a column
range ``[lo, hi)``, walking time inside blocks of columns so that the membrane of a block
stays in cache and every tensor is read or written once. The kernels release the GIL and
are run on ``torch.get_num_threads()`` Python threads, one column range each.

The backward kernels are compiled once per surrogate kind, from the kind's float32 scalar
formula in :data:`dvsguard.snn.surrogate.SURROGATES` (so the formula is a compile-time constant
of its kernel, not a branch in the inner loop).

numba is a dependency of tonic (through librosa). If it cannot be imported, or
``DVSGUARD_NO_NUMBA=1`` is set, :func:`available` is False and the neuron uses torch ops.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from dvsguard.snn.surrogate import SURROGATES, ScalarGrad

log = logging.getLogger(__name__)

BF16_ONE = 0x3F80  # bit pattern of 1.0 in bfloat16
_BLOCK = 1024
_MIN_PARALLEL = 1 << 16  # columns below which one thread does all

_lock = threading.Lock()
_state: dict[str, object] = {}


def _build() -> dict[str, object] | None:
    if os.environ.get("DVSGUARD_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        import numba
    except Exception as e:  # pragma: no cover - numba ships with tonic's dependencies
        log.info("numba unavailable (%s); IF neuron uses torch ops", e)
        return None

    from numba.extending import register_jitable

    njit = numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")
    inline = register_jitable(inline="always")

    # Input row readers: ``load(row, bits, val, n)`` gives the first n values of a row ``[>= n]``
    # as float32; ``bits`` is a scratch ``[_BLOCK]`` uint32 buffer and ``val`` its float32 view.

    @inline
    def f32_load(row, bits, val, n):  # pragma: no cover - compiled
        """A float32 row is read as it is."""
        return row

    @inline
    def bf16_load(row, bits, val, n):  # pragma: no cover - compiled
        """A bf16 row (int16 bit view) widened exactly to float32 in ``val``."""
        for k in range(n):
            bits[k] = (np.uint32(row[k]) & np.uint32(0xFFFF)) << np.uint32(16)
        return val

    def forward_kernel(load: Callable[..., Any]) -> Any:
        """The IF forward kernel, reading its input rows with ``load`` (f32_load or bf16_load)."""

        @njit
        def fwd(x, s, u, theta, one, zero, keep_u, lo, hi):  # pragma: no cover - compiled
            """Input currents x ``[T, N]`` in (float32, or bf16 as int16 bits for bf16_load), spikes
            written to s ``[T, N]`` as ``one``/``zero`` of s's dtype, float32 pre-spike membrane to
            u ``[T, N]`` if keep_u, for the columns ``[lo, hi)``."""
            T = x.shape[0]
            m = np.zeros(_BLOCK, np.float32)
            bits = np.zeros(_BLOCK, np.uint32)
            val = bits.view(np.float32)
            f0 = np.float32(0.0)
            for j0 in range(lo, hi, _BLOCK):
                j1 = min(j0 + _BLOCK, hi)
                n = j1 - j0
                m[:] = f0
                for t in range(T):
                    xr, sr = load(x[t, j0:j1], bits, val, n), s[t, j0:j1]
                    if keep_u:
                        ur = u[t, j0:j1]
                        for k in range(n):
                            ur[k] = m[k] + xr[k]
                    for k in range(n):
                        v = m[k] + xr[k]
                        spike = v >= theta
                        sr[k] = one if spike else zero
                        m[k] = f0 if spike else v

        return fwd

    def backward_kernels(surrogate: ScalarGrad) -> tuple[object, object]:
        """(float32, bfloat16) BPTT kernels with the surrogate ``surrogate(d, g)`` built in."""

        @njit
        def bwd(u, gs, gx, theta, gamma, lo, hi):  # pragma: no cover - compiled
            """float32 membrane u and ∂L/∂s gs in, ∂L/∂I written to gx (all float32)."""
            T = u.shape[0]
            gm = np.zeros(_BLOCK, np.float32)
            f0 = np.float32(0.0)
            g = np.float32(gamma)
            for j0 in range(lo, hi, _BLOCK):
                j1 = min(j0 + _BLOCK, hi)
                n = j1 - j0
                gm[:] = f0
                for t in range(T - 1, -1, -1):
                    ur, gsr, gxr = u[t, j0:j1], gs[t, j0:j1], gx[t, j0:j1]
                    for k in range(n):
                        v = ur[k]
                        m = gm[k]
                        gv = (gsr[k] - m * v) * surrogate(v - theta, g) + (m if v < theta else f0)
                        gxr[k] = gv
                        gm[k] = gv

        @njit
        def bwd_bf16(u, gs16, gx16, theta, gamma, lo, hi):  # pragma: no cover - compiled
            """As bwd, with ∂L/∂s read and ∂L/∂I written as bf16 (round to nearest even)."""
            T = u.shape[0]
            gm = np.zeros(_BLOCK, np.float32)
            bits = np.zeros(_BLOCK, np.uint32)
            val = bits.view(np.float32)
            f0 = np.float32(0.0)
            g = np.float32(gamma)
            for j0 in range(lo, hi, _BLOCK):
                j1 = min(j0 + _BLOCK, hi)
                n = j1 - j0
                gm[:] = f0
                for t in range(T - 1, -1, -1):
                    ur, gsr, gxr = u[t, j0:j1], gs16[t, j0:j1], gx16[t, j0:j1]
                    for k in range(n):
                        bits[k] = (np.uint32(gsr[k]) & np.uint32(0xFFFF)) << np.uint32(16)
                    for k in range(n):
                        v = ur[k]
                        m = gm[k]
                        gv = (val[k] - m * v) * surrogate(v - theta, g) + (m if v < theta else f0)
                        gm[k] = gv
                        val[k] = gv
                    for k in range(n):
                        b = bits[k]
                        gxr[k] = np.int16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))

        return bwd, bwd_bf16

    bwd: dict[str, tuple[object, object]] = {}
    for name, spec in SURROGATES.items():
        if spec.scalar is not None:
            inline(spec.scalar)
            bwd[name] = backward_kernels(spec.scalar)

    return {"fwd": forward_kernel(f32_load), "fwd_bf16": forward_kernel(bf16_load), "bwd": bwd}


def available() -> bool:
    """True when the compiled kernels can be used."""
    with _lock:
        if "kernels" not in _state:
            _state["kernels"] = _build()
        return _state["kernels"] is not None


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool of n worker threads for this process (a forked child builds its own)."""
    with _lock:
        key = (n, os.getpid())
        pool = _state.get("pool")
        if pool is None or _state.get("pool_key") != key:
            pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dvsguard-if")
            _state["pool"], _state["pool_key"] = pool, key
        return pool  # type: ignore[return-value]


def _run(fn, n_cols: int, *args) -> None:
    threads = max(1, torch.get_num_threads())
    if threads == 1 or n_cols < _MIN_PARALLEL:
        fn(*args, 0, n_cols)
        return
    step = -(-n_cols // threads)
    step = -(-step // _BLOCK) * _BLOCK
    bounds = [(lo, min(lo + step, n_cols)) for lo in range(0, n_cols, step)]
    pool = _pool(threads)
    futures = [pool.submit(fn, *args, lo, hi) for lo, hi in bounds[1:]]
    fn(*args, *bounds[0])  # the calling thread takes the first range
    for f in futures:
        f.result()


def forward(x: torch.Tensor, threshold: float, keep_u: bool, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IF forward. x: float32 or bfloat16 contiguous ``[T, ...]``. Returns (spikes of ``out_dtype``
    (float32 or bfloat16; bfloat16 when x is), pre-spike membrane float32 or None)."""
    kernels = _state["kernels"]
    T = x.shape[0]
    if x.dtype == torch.bfloat16:
        n = x[0].numel()
        fwd, x_np, out_dtype = kernels["fwd_bf16"], x.view(torch.int16).reshape(T, n).numpy(), torch.bfloat16  # type: ignore[index]
    else:
        x_np = x.reshape(T, -1).numpy()
        fwd, n = kernels["fwd"], x_np.shape[1]  # type: ignore[index]
    spikes = torch.empty(x.shape, dtype=out_dtype)
    if out_dtype == torch.bfloat16:
        s_np, one = spikes.view(torch.int16).reshape(T, n).numpy(), BF16_ONE
    else:
        s_np, one = spikes.reshape(T, n).numpy(), 1.0
    one_t, zero_t = s_np.dtype.type(one), s_np.dtype.type(0)
    u = torch.empty(x.shape, dtype=torch.float32) if keep_u else torch.empty(1, 1)
    u_np = u.reshape(T, n).numpy() if keep_u else u.numpy()
    _run(fwd, n, x_np, s_np, u_np, np.float32(threshold), one_t, zero_t, keep_u)
    return spikes, (u if keep_u else None)


def backward(u: torch.Tensor, grad_s: torch.Tensor, threshold: float, kind: str, gamma: float) -> torch.Tensor:
    """Fused BPTT: ∂L/∂I ``[T, ...]`` from the saved float32 membrane u and ∂L/∂s (both ``[T, ...]``),
    with the surrogate of ``kind`` (a per-step kind of :data:`SURROGATES`) of width ``gamma``. With a
    bfloat16 ∂L/∂s the result is bfloat16 (computed in float32, rounded once), else float32."""
    bwd, bwd_bf16 = _state["kernels"]["bwd"][kind]  # type: ignore[index]
    T = u.shape[0]
    if grad_s.dtype == torch.bfloat16:
        n = u[0].numel()
        gs16 = grad_s.contiguous()
        gx16 = torch.empty(u.shape, dtype=torch.bfloat16)
        _run(bwd_bf16, n, u.reshape(T, n).numpy(), gs16.view(torch.int16).reshape(T, n).numpy(),
             gx16.view(torch.int16).reshape(T, n).numpy(), np.float32(threshold), np.float32(gamma))
        return gx16
    gs = grad_s.float().contiguous()
    gx = torch.empty_like(u)
    _run(bwd, u[0].numel(), u.reshape(T, -1).numpy(), gs.reshape(T, -1).numpy(),
         gx.reshape(T, -1).numpy(), np.float32(threshold), np.float32(gamma))
    return gx
