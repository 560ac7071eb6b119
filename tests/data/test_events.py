"""Event readers: round trips through every format, the real sensor files, and one clear error per bad file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data.aedat2 import decode_aedat2_dvs128, write_aedat2_dvs128
from dvsguard.data.events import EVENT_DTYPE, RECORDING_SUFFIXES, Recording, read_events, write_npz
from dvsguard.errors import RecordingError


def make_events(n: int = 500, width: int = 64, height: int = 48, seed: int = 0, t0: int = 0) -> np.ndarray:
    """Random events sorted by t (µs), strictly increasing timestamps, both polarities."""
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["t"] = t0 + np.cumsum(rng.integers(1, 50, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


def assert_same_events(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == EVENT_DTYPE
    assert len(got) == len(want)
    for f in ("x", "y", "t", "p"):
        np.testing.assert_array_equal(got[f], want[f], err_msg=f"field {f}")


# ----------------------------------------------------------------------------- numpy


@pytest.mark.parametrize("compress", [False, True])
def test_npz_round_trip_keeps_events_and_sensor_size(tmp_path: Path, compress: bool) -> None:
    ev = make_events()
    write_npz(tmp_path / "a.npz", ev, (64, 48, 2), compress=compress)
    rec = read_events(tmp_path / "a.npz")
    assert isinstance(rec, Recording)
    assert rec.sensor_size == (64, 48, 2)
    assert_same_events(rec.events, ev)
    assert not list(tmp_path.glob(".*tmp")), "the atomic writer left a temporary file"


def test_npz_with_separate_columns_float_timestamps_and_signed_polarity(tmp_path: Path) -> None:
    ev = make_events(100)
    order = np.random.default_rng(1).permutation(100)
    np.savez(tmp_path / "b.npz", x=ev["x"][order], y=ev["y"][order], t=ev["t"][order].astype(np.float64),
             p=np.where(ev["p"][order] > 0, 1, -1))
    rec = read_events(tmp_path / "b.npz")
    assert_same_events(rec.events, ev)  # sorted by t, p mapped from {-1, 1} to {0, 1}
    assert rec.sensor_size == (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1, 2)


def test_npy_structured_array_with_other_field_order_and_dtypes(tmp_path: Path) -> None:
    ev = make_events(50)
    other = np.empty(50, dtype=[("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    for f in ("x", "y", "t"):
        other[f] = ev[f]
    other["p"] = ev["p"].astype(bool)
    np.save(tmp_path / "c.npy", other)
    rec = read_events(tmp_path / "c.npy", sensor_size=(64, 48))
    assert rec.sensor_size == (64, 48, 2)
    assert_same_events(rec.events, ev)


# ----------------------------------------------------------------------------- HDF5


def test_hdf5_structured_events_dataset(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    ev = make_events()
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        ds = fh.create_dataset("events", data=ev)
        ds.attrs["sensor_size"] = (64, 48, 2)
    rec = read_events(tmp_path / "a.h5")
    assert rec.sensor_size == (64, 48, 2)
    assert_same_events(rec.events, ev)


def test_hdf5_column_datasets_in_events_group_with_width_height(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    ev = make_events()
    with h5py.File(tmp_path / "b.hdf5", "w") as fh:
        g = fh.create_group("events")
        for f in ("x", "y", "t", "p"):
            g.create_dataset(f, data=ev[f])
        fh.attrs["width"], fh.attrs["height"] = 640, 480
    rec = read_events(tmp_path / "b.hdf5")
    assert rec.sensor_size == (640, 480, 2)
    assert_same_events(rec.events, ev)


def test_hdf5_prophesee_cd_events_layout_with_geometry(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    ev = make_events()
    cd = np.empty(len(ev), dtype=[("x", "<u2"), ("y", "<u2"), ("p", "<i2"), ("t", "<i8")])
    for f in ("x", "y", "p", "t"):
        cd[f] = ev[f]
    with h5py.File(tmp_path / "c.hdf5", "w") as fh:
        fh.create_group("CD").create_dataset("events", data=cd)
        fh.attrs["geometry"] = "1280x720"
    rec = read_events(tmp_path / "c.hdf5")
    assert rec.sensor_size == (1280, 720, 2)
    assert_same_events(rec.events, ev)


# ----------------------------------------------------------------------------- AEDAT 2.0 (CIFAR10-DVS)


def test_aedat2_hand_written_cifar10dvs_layout_decodes_with_upright_orientation(tmp_path: Path) -> None:
    # Hand-packed DVS128 addresses: bit 0 raw polarity, bits 1-7 raw x, bits 8-14 raw y.
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Timestamps tick is 1 us\r\n"
    raw = np.array(
        [((5 << 8) | (7 << 1) | 0, 100), ((0 << 8) | (127 << 1) | 1, 250), ((127 << 8) | (0 << 1) | 1, 251)],
        dtype=[("a", ">u4"), ("t", ">u4")],
    )
    path = tmp_path / "cifar10_cat_0.aedat"
    path.write_bytes(header + raw.tobytes())
    rec = read_events(path)
    assert rec.sensor_size == (128, 128, 2)
    # upright coordinates: x = 127 - raw_y, y = 127 - raw_x; ON = 1 - raw polarity
    np.testing.assert_array_equal(rec.events["x"], [122, 127, 0])
    np.testing.assert_array_equal(rec.events["y"], [120, 0, 127])
    np.testing.assert_array_equal(rec.events["t"], [100, 250, 251])
    np.testing.assert_array_equal(rec.events["p"], [1, 0, 0])


def test_aedat2_writer_round_trip_and_timestamp_unwrap(tmp_path: Path) -> None:
    ev = make_events(300, 128, 128)
    write_aedat2_dvs128(tmp_path / "a.aedat", ev)
    assert_same_events(read_events(tmp_path / "a.aedat").events, ev)
    # timestamps that wrapped past 2**32 µs come back monotonic
    wrapped = ev.copy()
    wrapped["t"] = (np.arange(300) * 1000 + (1 << 32) - 150_000)
    stored = wrapped.copy()
    stored["t"] %= 1 << 32
    write_aedat2_dvs128(tmp_path / "w.aedat", stored)
    cols = decode_aedat2_dvs128(tmp_path / "w.aedat")
    np.testing.assert_array_equal(cols["t"] - cols["t"][0], wrapped["t"] - wrapped["t"][0])


def test_aedat2_external_events_dropped_and_davis_layout_rejected(tmp_path: Path) -> None:
    header = b"#!AER-DAT2.0\r\n"
    dt = [("a", ">u4"), ("t", ">u4")]
    addresses = [(3 << 8) | (4 << 1)] * 199 + [1 << 15]  # one external event among 200
    raw = np.array(list(zip(addresses, range(200))), dtype=dt)
    (tmp_path / "ext.aedat").write_bytes(header + raw.tobytes())
    rec = read_events(tmp_path / "ext.aedat")
    assert len(rec.events) == 199 and rec.events["t"][-1] == 198
    davis = np.array([((100 << 22) | (200 << 12) | (1 << 11), i) for i in range(50)], dtype=dt)
    (tmp_path / "davis.aedat").write_bytes(header + davis.tobytes())
    with pytest.raises(RecordingError, match="not a DVS128 recording"):
        read_events(tmp_path / "davis.aedat")


def test_tonic_read_dvs_128_still_cannot_read_aedat2(tmp_path: Path) -> None:
    """Why the project decodes AEDAT 2.0 itself: when tonic's reader works, switch to it."""
    tonic_io = pytest.importorskip("tonic.io")
    write_aedat2_dvs128(tmp_path / "a.aedat", make_events(10, 128, 128))
    with pytest.raises(ValueError):
        tonic_io.read_dvs_128(str(tmp_path / "a.aedat"))


# ----------------------------------------------------------------------------- Prophesee


@pytest.mark.parametrize(("encoding", "suffix"), [("evt2", ".raw"), ("evt3", ".raw"), ("dat", ".dat")])
def test_prophesee_round_trip_through_expelliarmus(tmp_path: Path, encoding: str, suffix: str) -> None:
    from expelliarmus import Wizard

    ev = make_events(2000, 300, 200, t0=10)
    arr = np.empty(len(ev), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    for f in ("t", "x", "y", "p"):
        arr[f] = ev[f]
    path = tmp_path / f"rec{suffix}"
    Wizard(encoding=encoding).save(path, arr)
    rec = read_events(path)
    assert_same_events(rec.events, ev)
    # expelliarmus headers carry no geometry: the typical sensor of the format holds these events
    assert rec.sensor_size == {"evt2": (640, 480, 2), "evt3": (1280, 720, 2), "dat": (304, 240, 2)}[encoding]


def test_raw_geometry_header_is_used(tmp_path: Path) -> None:
    from expelliarmus import Wizard

    ev = make_events(200, 100, 100, t0=10)
    arr = np.empty(len(ev), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    for f in ("t", "x", "y", "p"):
        arr[f] = ev[f]
    Wizard(encoding="evt3").save(tmp_path / "a.raw", arr)
    data = (tmp_path / "a.raw").read_bytes()
    (tmp_path / "b.raw").write_bytes(b"% format EVT3;height=320;width=320\n" + data)
    assert read_events(tmp_path / "b.raw").sensor_size == (320, 320, 2)


DAT_HEADER = b"% Date 2021-03-04 10:11:12\n% Version 2\n% Width 304\n% Height 240\n"


def _dat_words(ts: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> bytes:
    words = np.empty((len(ts), 2), dtype="<u4")
    words[:, 0] = ts
    words[:, 1] = x | (y << 14) | (p.astype(np.uint32) << 28)
    return words.tobytes()


def test_dat_header_followed_by_random_bytes_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 8 * 400, dtype=np.uint8).tobytes()
    cases = {
        # random where the event type/size bytes should be
        "noise.dat": (DAT_HEADER + bytes([0x9A, 0x31]) + noise, "declares 49-byte events, expected 8"),
        "type.dat": (DAT_HEADER + b"\x07\x08" + noise, "event type 0x07 is not CD events"),
        # a valid CD type/size, then random words
        "words.dat": (DAT_HEADER + b"\x00\x08" + noise, "polarity"),
        # random timestamps although every polarity is 0 or 1
        "times.dat": (DAT_HEADER + b"\x0c\x08" + _dat_words(
            rng.integers(0, 2**32, 400), rng.integers(0, 304, 400), rng.integers(0, 240, 400),
            rng.integers(0, 2, 400)), "timestamps go back from"),
    }
    for name, (data, cause) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RecordingError) as info:
            read_events(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: ") and cause in message, message


def test_dat_with_jitter_and_a_32_bit_wrap_is_still_read(tmp_path: Path) -> None:
    ts = np.array([2**32 - 300, 2**32 - 200, 2**32 - 250, 2**32 - 100, 50, 120], dtype=np.int64)
    n = len(ts)
    data = DAT_HEADER + b"\x00\x08" + _dat_words(ts, np.arange(n), np.full(n, 3), np.arange(n) % 2)
    (tmp_path / "ok.dat").write_bytes(data)
    rec = read_events(tmp_path / "ok.dat")
    assert len(rec.events) == n and sorted(rec.events["x"].tolist()) == list(range(n))


@pytest.mark.parametrize(
    ("field", "value", "cause"),
    [
        ("t", 1e300, "timestamps reach 1e+300 µs, beyond 64-bit microseconds"),
        ("t", np.inf, "non-finite timestamps (inf in field 't', first at event 3)"),
        ("p", np.nan, "non-finite polarity values (NaN in field 'p', first at event 3)"),
        ("x", np.nan, "non-finite pixel coordinates (NaN in field 'x', first at event 3)"),
        ("y", 2.5, "non-integer pixel coordinates in field 'y' (2.5 at event 3)"),
        ("x", 1e300, "pixel coordinates in field 'x' reach 1e+300, beyond any sensor"),
    ],
)
def test_float_fields_that_do_not_convert_are_refused(tmp_path: Path, field: str, value: float, cause: str) -> None:
    ev = make_events(10)
    cols = {f: ev[f].astype(np.float64) for f in ("x", "y", "t", "p")}
    cols[field][3] = value
    np.savez(tmp_path / "f.npz", **cols)
    with pytest.raises(RecordingError) as info:
        read_events(tmp_path / "f.npz")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'f.npz'}: ") and cause in message, message


# ----------------------------------------------------------------------------- real recordings


def test_real_davis346_aedat4(recordings_dir: Path) -> None:
    rec = read_events(recordings_dir / "davis346.aedat4")
    assert rec.sensor_size == (346, 260, 2)
    ev = rec.events
    assert ev.dtype == EVENT_DTYPE
    assert len(ev) == 78_830
    assert np.all(np.diff(ev["t"]) >= 0)
    assert set(np.unique(ev["p"])) == {0, 1}
    assert ev["x"].max() < 346 and ev["y"].max() < 260
    assert 2.0e6 < ev["t"][-1] - ev["t"][0] < 2.7e6  # 2.36 s of recording, in µs


def test_real_evt2_raw(recordings_dir: Path) -> None:
    rec = read_events(recordings_dir / "evt2.raw")
    assert rec.sensor_size == (640, 480, 2)  # from the header's gen3 plugin name
    ev = rec.events
    assert 500_000 < len(ev) < 540_000
    assert np.all(np.diff(ev["t"]) >= 0)
    assert set(np.unique(ev["p"])) == {0, 1}
    assert ev["x"].max() < 640 and ev["y"].max() < 480


def test_real_files_truncated_give_one_clear_error(recordings_dir: Path, tmp_path: Path) -> None:
    data = (recordings_dir / "davis346.aedat4").read_bytes()
    (tmp_path / "cut.aedat4").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match=r"cut\.aedat4: cannot decode AEDAT 4"):
        read_events(tmp_path / "cut.aedat4")
    data = (recordings_dir / "evt2.raw").read_bytes()
    header = data.index(b"% evt 2.0\n") + len(b"% evt 2.0\n")
    cut = header + 4 * ((len(data) - header) // 8) + 2  # half the 32-bit words, and half a word
    (tmp_path / "cut.raw").write_bytes(data[:cut])
    with pytest.raises(RecordingError, match=r"cut\.raw: truncated Prophesee EVT2"):
        read_events(tmp_path / "cut.raw")


# ----------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected cause pattern)."""
    ev = make_events(20)
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, cause: str) -> None:
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, cause)

    for suffix in RECORDING_SUFFIXES:
        put(f"empty{suffix}", b"", "file is empty")
    put("garbage.npz", b"\x00\x13garbage" * 40, "not a readable numpy file")
    put("garbage.npy", b"\x93NUMPYgarbage" * 40, "not a readable numpy file")
    put("garbage.h5", b"\x89HDF\r\n\x1a\ngarbage" * 40, "not a readable HDF5 file")
    put("garbage.aedat4", b"garbage" * 40, "cannot decode AEDAT 4")
    put("garbage.raw", b"garbage" * 40, "names no event encoding")
    put("garbage.evt3.raw", b"% evt 3.0\n" + bytes(range(256)) * 4, "cannot decode Prophesee EVT3")
    put("garbage.dat", b"garbage" * 40, "no Prophesee DAT header")
    put("unknown.txt", b"x,y,t,p\n1,2,3,1\n", "unknown recording format .txt")
    put("headeronly.aedat", b"#!AER-DAT2.0\r\n# nothing\r\n", "header but no events")
    put("cut.aedat", b"#!AER-DAT2.0\r\n" + bytes(8 * 5 + 3), "truncated AEDAT 2.0")
    put("v3.aedat", b"#!AER-DAT3.1\r\n" + bytes(16), "AEDAT version 3.1")

    np.save(tmp_path / "fields.npy", np.zeros(5, dtype=[("x", "i2"), ("y", "i2"), ("time", "i8")]))
    out["fields.npy"] = (tmp_path / "fields.npy", "lacks field")
    np.save(tmp_path / "plain.npy", np.zeros((5, 4)))
    out["plain.npy"] = (tmp_path / "plain.npy", "plain float64 array")
    np.savez(tmp_path / "nofields.npz", a=np.zeros(3))
    out["nofields.npz"] = (tmp_path / "nofields.npz", "lacks field")
    np.savez(tmp_path / "noevents.npz", events=ev[:0])
    out["noevents.npz"] = (tmp_path / "noevents.npz", "holds no events")
    np.savez(tmp_path / "ragged.npz", x=ev["x"], y=ev["y"][:3], t=ev["t"], p=ev["p"])
    out["ragged.npz"] = (tmp_path / "ragged.npz", "field 'y' has 3 values")
    write_npz(tmp_path / "outside.npz", ev, (4, 4, 2))
    out["outside.npz"] = (tmp_path / "outside.npz", "outside the sensor 4x4")
    good = (tmp_path / "outside.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    out["cut.npz"] = (tmp_path / "cut.npz", "not a readable numpy file")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh.create_dataset("frames", data=np.zeros((2, 2)))
    out["other.h5"] = (tmp_path / "other.h5", "holds no 'events' dataset")
    return out


def test_each_bad_file_gives_one_line_error_naming_file_and_cause(tmp_path: Path) -> None:
    for name, (path, cause) in _bad_files(tmp_path).items():
        with pytest.raises(RecordingError) as info:
            read_events(path)
        message = str(info.value)
        assert message.startswith(f"{path}: "), (name, message)
        assert cause in message, (name, message)
        assert "\n" not in message, (name, message)
    with pytest.raises(RecordingError, match="no such file"):
        read_events(tmp_path / "missing.npz")
    with pytest.raises(RecordingError, match="is a folder"):
        read_events(tmp_path)


def test_bad_file_does_not_stop_reading_the_others(tmp_path: Path) -> None:
    write_npz(tmp_path / "good1.npz", make_events(10), (64, 48, 2))
    (tmp_path / "bad.npz").write_bytes(b"junk")
    write_npz(tmp_path / "good2.npz", make_events(10, seed=2), (64, 48, 2))
    read, failed = [], []
    for path in sorted(tmp_path.glob("*.npz")):
        try:
            read.append(read_events(path))
        except RecordingError as exc:
            failed.append(str(exc))
    assert len(read) == 2 and len(failed) == 1 and "bad.npz" in failed[0]


def test_copy_of_real_aedat4_with_aedat_suffix_is_read_as_aedat4(recordings_dir: Path, tmp_path: Path) -> None:
    shutil.copy(recordings_dir / "davis346.aedat4", tmp_path / "same.aedat")
    assert len(read_events(tmp_path / "same.aedat").events) == 78_830
