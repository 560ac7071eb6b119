"""Sizes a file claims are checked against :mod:`dvsguard.limits` before memory is allocated.

Each command runs in a subprocess whose address space is capped at 3 GiB (``RLIMIT_AS``), so a
regression that allocates what the file claims fails fast (MemoryError) instead of swapping,
and the test asserts the one-line error naming the file, the claim and the limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from dvsguard.errors import ConfigError
from dvsguard.limits import MAX_EVENTS, MAX_FRAMES
from export.conftest import make_test_cache, save_model_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[1]
CAP_BYTES = 3 << 30  # address space of the capped subprocesses


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def run_capped(args: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python args...`` under the address-space cap, with this checkout first on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=full_env, preexec_fn=_cap_memory)


def cli_capped(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_capped(["-c", "from dvsguard.cli import main; main()", *args], env)


def read_capped(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``read_events(path)`` in a capped subprocess; prints the DvsguardError message on stdout."""
    code = ("import sys\nfrom dvsguard.data.events import read_events\nfrom dvsguard.errors import DvsguardError\n"
            "try:\n    print(len(read_events(sys.argv[1]).events))\nexcept DvsguardError as e:\n    print(e)\n")
    return run_capped(["-c", code, path], env)


def assert_refused(proc: subprocess.CompletedProcess[str], path: Path, *parts: str) -> None:
    text = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in text and "MemoryError" not in text, text
    assert str(path) in text and all(p in text for p in parts), text


# --------------------------------------------------------------------------- recordings


def test_hdf5_datasets_declared_at_a_billion_events_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        for name, dtype in (("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)):
            f.create_dataset(name, shape=(10**9,), dtype=dtype, chunks=(4096,))
    assert path.stat().st_size < 10_000
    proc = read_capped(path)
    assert_refused(proc, path, "'/x'", "1,000,000,000 events", "100,000,000", "DVSGUARD_MAX_EVENTS")


def test_hdf5_structured_events_dataset_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "huge.h5"
    dtype = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
    with h5py.File(path, "w") as f:
        f.create_dataset("CD/events", shape=(10**9,), dtype=dtype, chunks=(4096,))
    assert_refused(read_capped(path), path, "HDF5 dataset 'CD/events'", "1,000,000,000 events")


def _npy_member(shape: tuple[int, ...], dtype: str) -> bytes:
    """An npy header claiming ``shape`` followed by a little data: numpy allocates by the header."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(4096)


def test_deflate_bomb_npz_is_refused_by_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, dtype in (("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "|i1")):
            z.writestr(f"{name}.npy", _npy_member((800_000_000,), dtype))
    proc = read_capped(path)
    assert_refused(proc, path, "npz member", "800,000,000 events", "DVSGUARD_MAX_EVENTS")


def test_npz_member_of_too_many_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("events.npy", _npy_member((1000, 1_000_000), "<f8"))
    proc = read_capped(path, env={"DVSGUARD_MAX_EVENTS": "1e10"})
    assert_refused(proc, path, "npz member 'events'", "8,000,000,000 bytes", "DVSGUARD_MAX_ARRAY_BYTES")


def test_npy_header_claim_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_member((10**9,), "|V13"))
    assert_refused(read_capped(path), path, "npy array", "1,000,000,000 events")


def test_event_limit_can_be_raised_and_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsguard.data.events import EVENT_DTYPE, read_events, write_npz
    from dvsguard.errors import RecordingError

    ev = np.zeros(50, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(50)
    path = write_npz(tmp_path / "r.npz", ev, (4, 4, 2))
    monkeypatch.setenv("DVSGUARD_MAX_EVENTS", "49")
    with pytest.raises(RecordingError, match="50 events, above the limit of 49"):
        read_events(path)
    monkeypatch.setenv("DVSGUARD_MAX_EVENTS", "50")
    assert len(read_events(path).events) == 50
    monkeypatch.setenv("DVSGUARD_MAX_EVENTS", "lots")
    with pytest.raises(ConfigError, match="DVSGUARD_MAX_EVENTS='lots': expected a positive integer"):
        MAX_EVENTS.value()


def test_sparse_aedat2_file_is_refused_before_reading(tmp_path: Path) -> None:
    from dvsguard.data.aedat2 import _HEADER

    path = tmp_path / "sparse.aedat"
    with path.open("wb") as fh:
        fh.write(_HEADER)
        fh.truncate(len(_HEADER) + 8 * 10**9)  # 8 GB of holes: a billion events claimed by the size
    proc = read_capped(path)
    assert_refused(proc, path, "AEDAT 2.0 event block", "1,000,000,000 events", "DVSGUARD_MAX_EVENTS")


def test_aedat2_is_decoded_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked decoding gives the events of a whole-file decode, foreign events dropped, wraps unwrapped."""
    import dvsguard.data.aedat2 as aedat2
    from dvsguard.data.events import EVENT_DTYPE, read_events

    rng = np.random.default_rng(0)
    n = 1000
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    ev["t"] = np.sort(rng.integers(0, 2**32, n))
    path = aedat2.write_aedat2_dvs128(tmp_path / "r.aedat", ev)
    raw = np.fromfile(path, dtype=aedat2._RAW, offset=len(aedat2._HEADER))
    raw["address"][5] |= 1 << 15  # one external event
    raw["t"][600:] -= np.uint32(2**31)  # wrap the timestamps in the middle of a chunk
    path.write_bytes(aedat2._HEADER + raw.tobytes())
    whole = read_events(path).events
    monkeypatch.setattr(aedat2, "_CHUNK_EVENTS", 7)
    chunked = read_events(path).events
    assert len(chunked) == n - 1 and np.array_equal(whole, chunked)
    assert np.all(np.diff(chunked["t"]) >= 0) and chunked["t"][-1] > 2**32 - 2**31


# --------------------------------------------------------------------------- frame caches


def forge_cache(real: Path, out: Path, n_frames: int) -> Path:
    """A copy of the cache ``real`` whose framing and (unwritten, chunked) frames claim ``n_frames``."""
    with h5py.File(real, "r") as src, h5py.File(out, "w") as dst:
        n, _, c, h, w = src["frames"].shape
        dst.create_dataset("frames", shape=(n, n_frames, c, h, w), dtype=np.uint8, chunks=(1, 1000, c, h, w))
        for name in ("labels", "sources", "crc", "done"):
            src.copy(name, dst)
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        framing = json.loads(src.attrs["framing"])
        dst.attrs["framing"] = json.dumps({**framing, "n_frames": n_frames})
        dst.attrs["siblings"] = json.dumps({"train": out.name, "test": out.name})
    return out


@pytest.fixture(scope="module")
def forged_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("forged")
    real = make_test_cache(folder / "real", n=4)
    path = forge_cache(real, folder / "claims-train.h5", 2_000_000)
    assert path.stat().st_size < 100_000
    return path


def _assert_cli_refused(proc: subprocess.CompletedProcess[str], path: Path, *parts: str) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("dvsguard: error: ") and len(err.splitlines()) == 1, err[-2000:]
    assert str(path) in err and all(p in err for p in parts), err


def test_train_refuses_a_cache_claiming_two_million_frames(forged_cache: Path, tmp_path: Path) -> None:
    proc = cli_capped("train", "--cache", forged_cache, "--defense", "vanilla", "--preset", "tiny", "--epochs", "1",
                      "--out", tmp_path / "run")
    _assert_cli_refused(proc, forged_cache, "2,000,000 frames", "10,000", "DVSGUARD_MAX_FRAMES")


def test_attack_and_export_refuse_a_cache_claiming_two_million_frames(forged_cache: Path, tmp_path: Path) -> None:
    ckpt = save_model_checkpoint(tmp_path / "m.pt", tiny_model())
    proc = cli_capped("attack", ckpt, "--cache", forged_cache, "--split", "train")
    _assert_cli_refused(proc, forged_cache, "2,000,000 frames", "DVSGUARD_MAX_FRAMES")
    proc = cli_capped("export", ckpt, "--out", tmp_path / "exp", "--compare", "--cache", forged_cache)
    _assert_cli_refused(proc, forged_cache, "2,000,000 frames", "DVSGUARD_MAX_FRAMES")


def test_frame_limit_applies_to_framing_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsguard.data.frames import FramingConfig

    assert FramingConfig(n_frames=MAX_FRAMES.default).n_frames == 10_000
    with pytest.raises(ConfigError, match="n_frames claims 10,001 frames, above the limit of 10,000"):
        FramingConfig(n_frames=10_001)
    with pytest.raises(ConfigError, match="float32 sample of 10x2x30000x30000 claims 72,000,000,000 bytes"):
        FramingConfig(n_frames=10, height=30_000, width=30_000)
    monkeypatch.setenv("DVSGUARD_MAX_FRAMES", "20000")
    assert FramingConfig(n_frames=10_001).n_frames == 10_001


# --------------------------------------------------------------------------- checkpoints


def _forged_checkpoint(path: Path, **config: object) -> Path:
    """A checkpoint of the tiny model whose config is overridden by ``config`` (state dict unchanged)."""
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint

    payload = model_payload(tiny_model())
    payload["config"] = {**payload["config"], **config}
    return save_checkpoint(path, {"model": payload})


@pytest.mark.parametrize(
    ("config", "parts"),
    [
        ({"head": [5_000_000]}, ("head claims 5,000,000 channels or units", "65,536", "DVSGUARD_MAX_WIDTH")),
        ({"channels": [200_000, "A", 16, "A"]}, ("channels claims 200,000", "DVSGUARD_MAX_WIDTH")),
        ({"head": [60_000, 60_000, 60_000]},
         ("the network claims 7,216,141,354 parameters", "500,000,000", "DVSGUARD_MAX_PARAMETERS")),
    ],
)
def test_checkpoint_claiming_a_huge_model_is_refused_before_building(tmp_path: Path, config: dict[str, object],
                                                                     parts: tuple[str, ...]) -> None:
    ckpt = _forged_checkpoint(tmp_path / "huge.pt", **config)
    proc = cli_capped("export", ckpt, "--out", tmp_path / "exp")
    _assert_cli_refused(proc, ckpt, *parts)


def test_parameter_count_matches_the_built_model() -> None:
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig, count_parameters, num_parameters

    for name in ("tiny", "small"):
        cfg = VGGConfig.preset(name)
        assert count_parameters(cfg) == num_parameters(SpikingVGG(cfg))
    assert count_parameters(VGGConfig.preset("vgg11")) == 103_316_490


def test_predict_refuses_a_checkpoint_framing_of_1e8_frames(tmp_path: Path) -> None:
    from dvsguard.data.events import EVENT_DTYPE, write_npz
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint

    model = tiny_model()
    s = model.cfg.input_size
    data = {"framing": {"n_frames": 10**8, "mode": "events", "height": s, "width": s, "count_cap": 3},
            "classes": [str(i) for i in range(model.cfg.num_classes)], "value_range": [0.0, 1.0]}
    ckpt = save_checkpoint(tmp_path / "claims.pt", {"model": model_payload(model), "data": data})
    ev = np.zeros(100, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(100)
    (tmp_path / "rec").mkdir()
    write_npz(tmp_path / "rec" / "a.npz", ev, (s, s, 2))
    proc = cli_capped("predict", tmp_path / "rec", "--model", ckpt, "--out", tmp_path / "p.csv")
    _assert_cli_refused(proc, ckpt, "n_frames claims 100,000,000 frames", "DVSGUARD_MAX_FRAMES")
