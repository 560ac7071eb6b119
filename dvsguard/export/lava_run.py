"""Run a netx file in Lava's CPU simulator (``fixed_pt``) and save what it computed.

This script runs INSIDE the Lava environment (Python 3.10, lava-dl 0.6.0, lava-nc 0.10.0):
it imports only numpy, h5py and lava, never dvsguard. The main environment starts it as a
subprocess with file paths::

    .lava-env/bin/python lava_run.py --net NET --inputs IN.npz --out OUT.npz [--probe]
    .lava-env/bin/python lava_run.py --job NET IN.npz OUT.npz --job NET2 IN2.npz OUT2.npz [--probe]

(several jobs share one interpreter start-up, which is most of a small run's time).

IN.npz holds ``frames``: int ``[N, T, C, H, W]`` (or ``[N, T, n]``), the graded input
events of N samples. The samples are fed back to back through an ``io.source.RingBuffer``
into ``lava.lib.dl.netx.hdf5.Network(net, reset_interval=T, reset_offset=D,
input_message_bits=B)``, where D is the input delay: 1 when the first layer has a synapse
(the network's ``inp``; a synapse sends what it computed in the previous step), 0 when it
is an input neuron (lava-dl's ``Input`` block, whose ``inp`` leads nowhere: the frames go
straight into its neuron's ``a_in``, as lava-dl's own tutorials connect it). Layer k then
resets exactly when frame 0 of each sample reaches it, so samples do not leak into one
another and no idle steps are needed. The run lasts N·T + L − 1 + D steps (L layers, one
step of delay between layers). After step (s+1)·T + L − 1 + D the read-out layer's voltage
holds sample s's T frames and is read with ``Var.get()``.

OUT.npz holds ``v_out`` int64 ``[N, n_out]``; with ``--probe`` also ``spikes_<k>`` bool
``[steps, *shape]`` (C, H, W order; index t−1 = step t) recorded by an
``io.sink.RingBuffer`` on every layer; and ``steps``, ``seconds``. The last line on stdout
is a JSON summary. ``run.stop()`` is always called, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import h5py
import numpy as np


def _to_chw_steps(data: np.ndarray) -> np.ndarray:
    """Lava (W, H, C, steps) or (n, steps) → (steps, C, H, W) or (steps, n)."""
    return np.ascontiguousarray(np.moveaxis(data, -1, 0).transpose(0, *range(data.ndim - 1, 0, -1)))


def _save(path: str, **arrays: np.ndarray) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lava_run.", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def input_delay(net_path: str) -> int:
    """0 when the file's first layer is an input layer with a neuron, else 1 (module docstring)."""
    with h5py.File(net_path, "r") as f:
        first = f["layer/0"]
        kind = np.asarray(first["type"][()]).reshape(-1)[0]
        is_input = (kind.decode("ascii") if isinstance(kind, bytes) else str(kind)) == "input"
        return 0 if is_input and "neuron" in first else 1


def run(net_path: str, frames: np.ndarray, time_steps: int, input_bits: int, probe: bool) -> dict:
    """Run the samples; returns a dict of arrays (see the module docstring)."""
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    n, t = frames.shape[:2]
    if t != time_steps:
        raise SystemExit(f"lava_run: frames have T={t}, the network expects {time_steps}")
    delay = input_delay(net_path)
    net = netx.hdf5.Network(
        net_config=net_path,
        reset_interval=time_steps,
        reset_offset=delay,
        input_message_bits=input_bits,
    )
    if isinstance(net.in_layer, netx.blocks.process.Input) != (delay == 0):
        raise SystemExit(f"lava_run: {net_path}: netx built {type(net.in_layer).__name__} as the first layer")
    n_layers = len(net.layers)
    lag = n_layers - 1 + delay
    steps = n * t + lag
    seq = frames.reshape(n * t, *frames.shape[2:]).astype(np.int32)
    seq = np.concatenate([seq, np.zeros((lag, *seq.shape[1:]), dtype=np.int32)])
    # (steps, C, H, W) → Lava's (W, H, C, steps); (steps, n) → (n, steps)
    data = np.moveaxis(seq.transpose(0, *range(seq.ndim - 1, 0, -1)), 0, -1)
    if tuple(data.shape[:-1]) != tuple(net.inp.shape):
        raise SystemExit(f"lava_run: input shape {data.shape[:-1]} (W, H, C) does not match the network's {net.inp.shape}")
    source = io.source.RingBuffer(data=data)
    source.s_out.connect(net.inp if delay else net.in_layer.neuron.a_in)
    sinks = []
    if probe:
        for layer in net.layers:
            sink = io.sink.RingBuffer(shape=layer.out.shape, buffer=steps)
            layer.out.connect(sink.a_in)
            sinks.append(sink)
    out_neuron = net.layers[-1].neuron
    v_out = []
    run_cfg = Loihi2SimCfg(select_tag="fixed_pt")
    started = time.time()
    try:
        for s in range(n):
            chunk = t + lag if s == 0 else t
            net.run(condition=RunSteps(num_steps=chunk), run_cfg=run_cfg)
            v = np.asarray(out_neuron.v.get()).astype(np.int64)
            if v.ndim == 3:
                v = v.transpose(2, 1, 0)
            v_out.append(v.reshape(-1))
        result = {"v_out": np.stack(v_out), "steps": np.int64(steps)}
        for k, sink in enumerate(sinks):
            result[f"spikes_{k}"] = _to_chw_steps(np.asarray(sink.data.get())) != 0
    finally:
        net.stop()
    result["seconds"] = np.float64(time.time() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", help="netx HDF5 file")
    parser.add_argument("--inputs", help=".npz with frames [N, T, ...] (int)")
    parser.add_argument("--out", help=".npz to write")
    parser.add_argument("--job", nargs=3, action="append", default=[], metavar=("NET", "INPUTS", "OUT"), help="one run (repeatable)")
    parser.add_argument("--time-steps", type=int, default=None, help="T (default: the file's time_steps attribute)")
    parser.add_argument("--input-bits", type=int, default=None, help="graded input bits (default: the file's input_bits)")
    parser.add_argument("--probe", action="store_true", help="record the spikes of every layer")
    args = parser.parse_args(argv)
    jobs = [tuple(j) for j in args.job]
    if args.net or args.inputs or args.out:
        if not (args.net and args.inputs and args.out):
            parser.error("--net, --inputs and --out go together")
        jobs.append((args.net, args.inputs, args.out))
    if not jobs:
        parser.error("nothing to run: give --net/--inputs/--out or --job")
    summary = []
    for net_path, inputs, out in jobs:
        with h5py.File(net_path, "r") as f:
            attrs = dict(f.attrs)
        with np.load(inputs) as z:
            frames = np.asarray(z["frames"])
        time_steps = args.time_steps if args.time_steps is not None else int(attrs.get("time_steps", frames.shape[1]))
        input_bits = args.input_bits if args.input_bits is not None else int(attrs.get("input_bits", 0))
        result = run(net_path, frames, time_steps, input_bits, args.probe)
        _save(out, **result)
        summary.append({"samples": int(frames.shape[0]), "steps": int(result["steps"]), "seconds": float(result["seconds"]), "out": out})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
