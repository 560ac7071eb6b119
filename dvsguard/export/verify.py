"""Run an exported netx file in Lava (the separate environment) and check it against the
integer simulator and the PyTorch model.

:func:`run_lava` writes the input frames to an ``.npz``, starts
``<lava-env>/bin/python dvsguard/export/lava_run.py`` on it and reads back the ``.npz`` it
writes. :func:`verify_netx` compares Lava with :mod:`dvsguard.export.intsim` on every
spike of every layer — both over the frame-aligned window of each sample and over the
whole step-by-step Lava timeline, including the lag steps — and on the read-out voltages;
given the model's predictions it also reports the Lava-vs-PyTorch agreement.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dvsguard.errors import ExportError
from dvsguard.export.intsim import SimNet, frame_aligned, load_netx, simulate, stream
from dvsguard.export.lava_env import RUNNER, require_lava_python

log = logging.getLogger(__name__)

# Cost model of Lava's CPU simulation (lava-nc 0.10.0): start-up (imports, compilation,
# 7+ worker processes), a per-step cost per process, and scipy's convolve2d per (out, in)
# channel pair per step. The constants are rough wall-clock seconds on a two-core CPU: the
# estimate is only printed before a run and sets its default timeout (5× it + 300 s), for
# which its order of magnitude suffices.
LAVA_STARTUP_S = 18.0  # imports (torch among them), compilation, worker start
LAVA_STEP_PROCESS_S = 0.003  # per process per step
LAVA_CONV_PAIR_S = 2e-5  # per (out, in) channel pair per step
LAVA_CONV_MAC_S = 4.5e-8  # scipy convolve2d on int32 at full input resolution, per multiply-add


def estimate_lava_seconds(net: SimNet, n_samples: int, time_steps: int, probe: bool = True) -> float:
    """Rough wall time of :func:`run_lava` for ``n_samples`` samples (seconds)."""
    steps = n_samples * time_steps + len(net.layers) - 1 + net.input_delay
    per_step = 0.0
    processes = 2 + 2 * len(net.layers) + (len(net.layers) if probe else 0)
    per_step += processes * LAVA_STEP_PROCESS_S
    for layer in net.layers:
        if layer.kind == "conv":
            o, c, kh, kw = layer.weight.shape
            macs = int(np.prod(layer.in_shape[1:])) * kh * kw
            per_step += o * c * (LAVA_CONV_PAIR_S + macs * LAVA_CONV_MAC_S)
        elif layer.kind == "dense":
            per_step += layer.weight.size * 1e-9
    return LAVA_STARTUP_S + steps * per_step


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_lava_many(
    jobs: list[tuple[str | os.PathLike[str], np.ndarray]],
    *,
    time_steps: int | None = None,
    input_bits: int | None = None,
    probe: bool = True,
    timeout: float | None = None,
    build: bool = False,
) -> list[dict[str, Any]]:
    """Run several (netfile, frames int ``[N, T, *input_shape]``) jobs in ONE Lava process.

    Returns per job ``{"v_out": int64 [N, n_out], "spikes": [bool [steps, *shape] per
    layer] (with probe), "steps": int, "seconds": float (simulation)}``; each dict also
    gets ``wall_seconds`` of the whole process. Raises ExportError (with Lava's last
    error line) if the run fails or times out.
    """
    python = require_lava_python(build=build)
    started = time.time()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dvsguard-lava-") as tmp:
        cmd = [str(python), "-I", str(RUNNER)]  # -I: no script folder, user site or PYTHON* variables
        outs = []
        for i, (netfile, frames) in enumerate(jobs):
            frames = np.asarray(frames)
            if not np.issubdtype(frames.dtype, np.integer):
                raise ExportError("run_lava: frames must be integer counts")
            inputs, out = Path(tmp) / f"inputs{i}.npz", Path(tmp) / f"outputs{i}.npz"
            np.savez(inputs, frames=frames.astype(np.int32))
            cmd += ["--job", str(Path(netfile).resolve()), str(inputs), str(out)]
            outs.append(out)
        if time_steps is not None:
            cmd += ["--time-steps", str(time_steps)]
        if input_bits is not None:
            cmd += ["--input-bits", str(input_bits)]
        if probe:
            cmd.append("--probe")
        names = ", ".join(Path(j[0]).name for j in jobs)
        log.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=tmp)
        except subprocess.TimeoutExpired as e:
            raise ExportError(f"{names}: the Lava run took over {timeout:.0f} s and was stopped") from e
        if proc.returncode != 0 or not all(o.is_file() for o in outs):
            lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            cause = lines[-1] if lines else f"exit code {proc.returncode}"
            raise ExportError(f"{names}: the Lava run failed: {cause}")
        for out in outs:
            with np.load(out) as z:
                n_layers = len([k for k in z.files if k.startswith("spikes_")])
                results.append(
                    {
                        "v_out": np.asarray(z["v_out"]).astype(np.int64),
                        "steps": int(z["steps"]),
                        "seconds": float(z["seconds"]),
                        "spikes": [np.asarray(z[f"spikes_{k}"]) for k in range(n_layers)],
                    }
                )
    wall = time.time() - started
    for r in results:
        r["wall_seconds"] = wall
    return results


def run_lava(
    netfile: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    time_steps: int | None = None,
    input_bits: int | None = None,
    probe: bool = True,
    timeout: float | None = None,
    build: bool = False,
) -> dict[str, Any]:
    """Run ``frames`` (int ``[N, T, *input_shape]``) through ``netfile`` in Lava (see :func:`run_lava_many`)."""
    return run_lava_many(
        [(netfile, frames)], time_steps=time_steps, input_bits=input_bits, probe=probe, timeout=timeout, build=build
    )[0]


def compare_lava(net: SimNet, frames: np.ndarray, lava: dict[str, Any]) -> dict[str, Any]:
    """Lava's recordings vs the integer simulator: frame-aligned spikes, the whole timeline
    (:func:`intsim.stream`) and the read-out voltages. ``identical`` is True only when all match."""
    frames = np.asarray(frames).astype(np.int64)
    n, t = frames.shape[:2]
    sim = simulate(net, frames, record=True)
    timeline = stream(net, frames, t)
    assert sim.spikes is not None
    if len(lava["spikes"]) != len(net.layers):
        raise ExportError(f"Lava recorded {len(lava['spikes'])} layers, the file has {len(net.layers)}")
    per_layer = []
    for k, rec in enumerate(lava["spikes"]):
        aligned = frame_aligned(rec, k, n, t, net.input_delay)
        per_layer.append(
            {
                "layer": k,
                "spikes_lava": int(aligned.sum()),
                "spike_mismatches": int((aligned != sim.spikes[k]).sum()),
                "timeline_mismatches": int((rec != timeline["spikes"][k]).sum()),
            }
        )
    v_mismatch = int((lava["v_out"] != sim.v_out).sum()) + int((timeline["v_out"] != sim.v_out).sum())
    identical = v_mismatch == 0 and all(r["spike_mismatches"] == 0 and r["timeline_mismatches"] == 0 for r in per_layer)
    return {"identical": bool(identical), "v_out_mismatches": v_mismatch, "layers": per_layer, "events": sim.events}


def verify_netx(
    netfile: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    model_predictions: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    timeout: float | None = None,
    build: bool = False,
) -> dict[str, Any]:
    """Lava vs the integer simulator (every spike, every layer) and vs the model's predictions.

    frames: int ``[N, T, *input_shape]``. Returns a JSON-ready report: ``identical`` (True
    only when every recorded spike and every read-out voltage match), per-layer
    ``spike_mismatches`` (frame-aligned) and ``timeline_mismatches`` (whole run),
    ``v_out_mismatches``, ``agreement_torch`` (if predictions are given), and the timing.
    """
    net = load_netx(netfile)
    frames = np.asarray(frames).astype(np.int64)
    n, t = frames.shape[:2]
    lava = run_lava(netfile, frames, time_steps=t, probe=True, timeout=timeout, build=build)
    report: dict[str, Any] = {"n": int(n), "time_steps": int(t), **compare_lava(net, frames, lava)}
    report.update(
        predictions_lava=lava["v_out"].argmax(1).tolist(),
        lava_steps=lava["steps"],
        lava_seconds=lava["seconds"],
        lava_wall_seconds=lava["wall_seconds"],
    )
    if model_predictions is not None:
        report["agreement_torch"] = float((lava["v_out"].argmax(1) == np.asarray(model_predictions)).mean())
    if labels is not None:
        report["accuracy_lava"] = float((lava["v_out"].argmax(1) == np.asarray(labels)).mean())
    return report


def dumps(report: dict[str, Any]) -> str:
    """One-line JSON of a report."""
    return json.dumps(report, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))


class LavaPredictor:
    """Classify frames with an exported network in Lava's simulator.

    ``logits(x)`` takes the model's input, float ``[T, B, C, H, W]`` in [0, 1], turns it into
    counts = round(x · input_scale) (the file's ``input_scale``), runs the B samples in one
    Lava process and returns ``[B, classes]`` = read-out voltage / ``output_scale`` (the
    mean logits up to quantization). ``last_spikes`` is then the number of spikes of each
    sample over all layers (int64 ``[B]``).
    """

    def __init__(self, netfile: str | os.PathLike[str], timeout: float | None = None) -> None:
        self.netfile = Path(netfile)
        self.net = load_netx(self.netfile)
        self.timeout = timeout
        self.input_scale = float(self.net.attrs.get("input_scale", 1.0))
        scale = self.net.output_scale
        if scale is None:
            raise ExportError(f"{self.netfile}: no output_scale attribute (not written by dvsguard export)")
        self.output_scale = scale
        self.last_spikes = np.zeros(0, dtype=np.int64)
        require_lava_python()

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 + len(self.net.input_shape):
            raise ExportError(f"{self.netfile.name}: input must be [T, B, {', '.join(map(str, self.net.input_shape))}], got {x.shape}")
        counts = np.rint(x * self.input_scale).astype(np.int64).swapaxes(0, 1)
        n, t = counts.shape[:2]
        eta = estimate_lava_seconds(self.net, n, t)
        log.info("Lava: %d sample(s), estimated %.0f s", n, eta)
        res = run_lava(self.netfile, counts, time_steps=t, probe=True, timeout=self.timeout)
        spikes = np.zeros(n, dtype=np.int64)
        for k, rec in enumerate(res["spikes"]):
            spikes += frame_aligned(rec, k, n, t, self.net.input_delay).reshape(n, -1).sum(1)
        self.last_spikes = spikes
        return res["v_out"] / self.output_scale
