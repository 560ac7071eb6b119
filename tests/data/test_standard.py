"""DVS Gesture, N-MNIST and N-Caltech101 sources: tiny files in each release layout, read by tonic,
framed end to end into caches with the official split; the offline message when the files are absent."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data.cache import open_cache
from dvsguard.data.dataset import FrameDataset
from dvsguard.data.preprocess import preprocess
from dvsguard.data.standard import DVSGESTURE_CLASSES, NMNIST_CLASSES, list_standard
from dvsguard.errors import RecordingError

# --------------------------------------------------------------------------- writers of the release formats


def write_atis_bin(path: Path, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> Path:
    """N-MNIST / N-Caltech101 ``.bin``: 40-bit events, bytes x, y, p<<7 | t[22:16], t[15:8], t[7:0]
    (23-bit µs timestamps; a y = 240 event marks an overflow, which recordings of ~0.3 s never need)."""
    assert int(t.max()) < 1 << 23
    out = bytearray()
    for xi, yi, ti, pi in zip(x.tolist(), y.tolist(), t.tolist(), p.tolist()):
        out += bytes((xi, yi, (pi << 7) | (ti >> 16), (ti >> 8) & 0xFF, ti & 0xFF))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def _random(n: int, w: int, h: int, span: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, w, n), rng.integers(0, h, n), np.sort(rng.integers(0, span, n)), rng.integers(0, 2, n)


def make_nmnist(root: Path, train: int = 3, test: int = 2, digits: range = range(10)) -> Path:
    """tonic's layout: NMNIST/Train/<digit>/NNNNN.bin, NMNIST/Test/<digit>/NNNNN.bin (34×34)."""
    k = 0
    for folder, per in (("Train", train), ("Test", test)):
        for d in digits:
            for _ in range(per):
                k += 1
                write_atis_bin(root / "NMNIST" / folder / str(d) / f"{k:05d}.bin", *_random(300, 34, 34, 300_000, k))
    return root


def make_ncaltech101(root: Path, per_class: dict[str, int]) -> Path:
    """tonic's layout: NCALTECH101/Caltech101/<class>/image_NNNN.bin (objects of varying size, offset)."""
    for c, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            x, y, t, p = _random(400, 60 + 10 * i, 40 + 5 * c, 300_000, 100 * c + i)
            write_atis_bin(root / "NCALTECH101" / "Caltech101" / name / f"image_{i + 1:04d}.bin", x + 20, y + 7, t, p)
    return root


def make_gesture_npy(root: Path, users: dict[str, list[int]], per_file: int = 500) -> Path:
    """tonic 1.7's copy: DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/<k>.npy, columns x, y, p, t (ms)."""
    for j, (folder, ids) in enumerate(users.items()):
        split = "ibmGestureTrain" if folder == "train" else "ibmGestureTest"
        for u in ids:
            for k in range(len(DVSGESTURE_CLASSES)):
                x, y, t, p = _random(per_file, 128, 128, 6000, 1000 * u + k)
                arr = np.stack([x, y, p, t], axis=1).astype(np.int64)
                path = root / "DVSGesture" / split / f"user{u:02d}_fluorescent" / f"{k}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, arr)
    return root


def write_aedat31(path: Path, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, packet: int = 1000) -> Path:
    """AEDAT 3.1 as IBM's DVS Gesture files: text header, then packets of a 28-byte header
    (type 1 = polarity, source, size 8, ts offset 4, overflow, capacity, number, valid) and
    8-byte events (data = x<<17 | y<<2 | p<<1 | valid, timestamp µs), little endian."""
    head = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    body = bytearray()
    for s in range(0, len(t), packet):
        sl = slice(s, s + packet)
        n = len(t[sl])
        body += struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, n, n, n)
        data = (x[sl].astype(np.uint32) << 17) | (y[sl].astype(np.uint32) << 2) | (p[sl].astype(np.uint32) << 1) | 1
        ev = np.empty(n, dtype=[("d", "<u4"), ("t", "<u4")])
        ev["d"], ev["t"] = data, t[sl]
        body += ev.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + bytes(body))
    return path


def make_gesture_aedat(root: Path, users: list[int], classes: range = range(1, 12), trial_lists: bool = True) -> Path:
    """IBM's release: DvsGesture/userNN_<lighting>.aedat + userNN_<lighting>_labels.csv (+ trials_to_*.txt)."""
    base = root / "DvsGesture"
    names = []
    for u in users:
        trial = f"user{u:02d}_led"
        rows, xs, ys, ts, ps = [], [], [], [], []
        for i, c in enumerate(classes):
            start = 1_000_000 + i * 200_000
            x, y, t, p = _random(300, 128, 128, 150_000, 100 * u + c)
            xs.append(x), ys.append(y), ts.append(t + start), ps.append(p)
            rows.append(f"{c},{start},{start + 150_000}")
        noise = _random(50, 128, 128, 900_000, u)  # events before the first gesture belong to none
        write_aedat31(base / f"{trial}.aedat", *(np.concatenate([a, *b]) for a, b in zip(noise, (xs, ys, ts, ps))))
        (base / f"{trial}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + "\n".join(rows) + "\n")
        names.append(trial)
    if trial_lists:
        (base / "trials_to_train.txt").write_text("".join(f"{n}.aedat\n" for n in names if int(n[4:6]) <= 23))
        (base / "trials_to_test.txt").write_text("".join(f"{n}.aedat\n" for n in names if int(n[4:6]) > 23))
    return root


def _counts(path: Path, n_classes: int) -> list[int]:
    return np.bincount(FrameDataset(path).labels, minlength=n_classes).tolist()


# --------------------------------------------------------------------------- N-MNIST


def test_nmnist_end_to_end_official_split(tmp_path: Path) -> None:
    root = make_nmnist(tmp_path / "nm")
    result = preprocess("nmnist", tmp_path / "cache", root=root, workers=1, progress=False)
    assert result.classes == list(NMNIST_CLASSES)
    assert (result.n_train, result.n_test) == (30, 20) and not result.failed
    assert result.train.name.startswith("nmnist-train-") and result.test.name.startswith("nmnist-test-")
    assert _counts(result.train, 10) == [3] * 10 and _counts(result.test, 10) == [2] * 10
    info = open_cache(result.test)
    assert info.source == "nmnist" and info.split == "test" and (info.height, info.width) == (48, 48)
    import h5py

    with h5py.File(result.train, "r") as f:
        sources = [s.decode() for s in f["sources"][()]]
        assert f.attrs["source_root"].rsplit("/", 1)[-1].startswith("nmnist-events-")
    assert sources[0] == "Train/0/00001.npz" and all(s.startswith("Train/") for s in sources)
    frames, _ = FrameDataset(result.train)[0]
    assert float(frames.sum()) > 0
    manifest = json.loads(next((tmp_path / "cache").glob("nmnist-events-*/source.json")).read_text())
    assert manifest["dataset"] == "nmnist" and manifest["split"].startswith("official")
    again = preprocess("nmnist", tmp_path / "cache", root=root, workers=2, progress=False)
    assert again.reused and again.train == result.train


def test_nmnist_events_are_those_tonic_reads(tmp_path: Path) -> None:
    import tonic

    from dvsguard.data.events import read_events

    x, y, t, p = _random(200, 34, 34, 2_000_000, 5)  # recordings last about 0.3 s: no timestamp overflow
    bin_path = write_atis_bin(tmp_path / "NMNIST" / "Train" / "7" / "00001.bin", x, y, t, p)
    write_atis_bin(tmp_path / "NMNIST" / "Test" / "7" / "00002.bin", x, y, t, p)
    ours = tonic.io.read_mnist_file(str(bin_path), dtype=tonic.datasets.NMNIST.dtype)
    np.testing.assert_array_equal(ours["t"], t)
    listing = list_standard("nmnist", tmp_path)
    from dvsguard.data.standard import stage

    paths, failed = stage(listing, listing.splits["train"], tmp_path / "cache", workers=1)
    rec = read_events(paths["Train/7/00001.npz"])
    assert not failed and rec.sensor_size == (34, 34, 2)
    np.testing.assert_array_equal(rec.events["t"], t)
    np.testing.assert_array_equal(rec.events["x"], x)
    np.testing.assert_array_equal(rec.events["p"], p)


def test_nmnist_root_may_be_the_release_folder_itself(tmp_path: Path) -> None:
    make_nmnist(tmp_path, train=1, test=1, digits=range(2))
    listing = list_standard("nmnist", tmp_path / "NMNIST")
    assert [len(listing.splits[s]) for s in ("train", "test")] == [2, 2]


def test_nmnist_missing_test_folder_is_named(tmp_path: Path) -> None:
    make_nmnist(tmp_path, train=1, test=0, digits=range(2))  # no Test/ folder
    assert not (tmp_path / "NMNIST" / "Test").exists()
    with pytest.raises(RecordingError, match=r"NMNIST/Test is missing"):
        list_standard("nmnist", tmp_path)


def test_damaged_bin_is_reported_and_skipped(tmp_path: Path) -> None:
    root = make_nmnist(tmp_path / "nm", train=2, test=1, digits=range(2))
    (root / "NMNIST" / "Train" / "1" / "99999.bin").write_bytes(b"\x01\x02\x03")  # 3 bytes: not one 40-bit event
    result = preprocess("nmnist", tmp_path / "cache", root=root, workers=1, progress=False)
    assert (result.n_train, result.n_test) == (4, 2)
    assert len(result.failed) == 1 and result.failed[0][0].endswith("99999.bin")


# --------------------------------------------------------------------------- N-Caltech101


def test_ncaltech101_end_to_end_seeded_split(tmp_path: Path) -> None:
    per_class = {"BACKGROUND_Google": 3, "Faces_easy": 4, "accordion": 10, "airplanes": 2}
    root = make_ncaltech101(tmp_path / "nc", per_class)
    result = preprocess("ncaltech101", tmp_path / "cache", root=root, workers=2, progress=False)
    assert result.classes == sorted(per_class)  # tonic's folder names, in its sorted walk order
    # 9:1 per class, at least one test recording per class of two or more
    assert (result.n_train, result.n_test) == (15, 4) and not result.failed
    assert _counts(result.train, 4) == [2, 3, 9, 1] and _counts(result.test, 4) == [1, 1, 1, 1]
    assert open_cache(result.train).source == "ncaltech101"
    listing = list_standard("ncaltech101", root)
    from dvsguard.data.events import read_events
    from dvsguard.data.standard import stage

    paths, _ = stage(listing, listing.unsplit[:1], tmp_path / "cache", workers=1)
    rec = read_events(next(iter(paths.values())))
    assert rec.events["x"].min() == 0 and rec.events["y"].min() == 0  # tonic's shift to the origin
    assert rec.sensor_size[:2] == (int(rec.events["x"].max()) + 1, int(rec.events["y"].max()) + 1)


# --------------------------------------------------------------------------- DVS Gesture


def test_dvsgesture_tonic_npy_layout_end_to_end(tmp_path: Path) -> None:
    root = make_gesture_npy(tmp_path / "g", {"train": [1, 2], "test": [24]})
    result = preprocess("dvsgesture", tmp_path / "cache", root=root, workers=2, progress=False)
    assert result.classes == list(DVSGESTURE_CLASSES) and len(result.classes) == 11
    assert (result.n_train, result.n_test) == (22, 11) and not result.failed
    assert _counts(result.train, 11) == [2] * 11 and _counts(result.test, 11) == [1] * 11
    info = open_cache(result.train)
    assert info.source == "dvsgesture" and info.split == "train"


def test_dvsgesture_npy_timestamps_are_tonic_microseconds(tmp_path: Path) -> None:
    from dvsguard.data.events import read_events
    from dvsguard.data.standard import stage

    make_gesture_npy(tmp_path, {"train": [3], "test": [25]}, per_file=50)
    listing = list_standard("dvsgesture", tmp_path)
    sample = listing.splits["train"][4]
    paths, _ = stage(listing, [sample], tmp_path / "cache", workers=1)
    rec = read_events(paths[sample.rel])
    raw = np.load(sample.path)
    assert rec.sensor_size == (128, 128, 2) and sample.label == 4
    np.testing.assert_array_equal(rec.events["t"], raw[:, 3] * 1000)


@pytest.mark.parametrize("trial_lists", [True, False])
def test_dvsgesture_ibm_aedat_layout_end_to_end(tmp_path: Path, trial_lists: bool) -> None:
    root = make_gesture_aedat(tmp_path / "g", users=[1, 5, 27], trial_lists=trial_lists)
    result = preprocess("dvsgesture", tmp_path / "cache", root=root, workers=1, progress=False)
    assert (result.n_train, result.n_test) == (22, 11) and not result.failed
    assert _counts(result.train, 11) == [2] * 11 and _counts(result.test, 11) == [1] * 11


def test_dvsgesture_aedat_samples_are_the_labelled_windows(tmp_path: Path) -> None:
    from dvsguard.data.events import read_events
    from dvsguard.data.standard import stage

    make_gesture_aedat(tmp_path, users=[2, 26], classes=range(1, 4))
    listing = list_standard("dvsgesture", tmp_path)
    train = listing.splits["train"]
    assert [s.label for s in train] == [0, 1, 2] and [s.rel for s in train][0] == "user02_led/00.npz"
    paths, failed = stage(listing, train, tmp_path / "cache", workers=1)
    for s in train:
        rec = read_events(paths[s.rel])
        lo, hi = s.window
        assert len(rec.events) == 300 and lo <= rec.events["t"].min() and rec.events["t"].max() < hi


# --------------------------------------------------------------------------- files absent


@pytest.mark.parametrize("name, layout", [
    ("dvsgesture", "DVSGesture/ibmGestureTrain/userNN_<lighting>/<k>.npy"),
    ("nmnist", "NMNIST/Train/<digit>/\\*.bin"),
    ("ncaltech101", "NCALTECH101/Caltech101/<class>/\\*.bin"),
])
def test_absent_files_give_the_offline_message(tmp_path: Path, name: str, layout: str) -> None:
    root = tmp_path / "nothing"
    with pytest.raises(RecordingError) as err:
        preprocess(name, tmp_path / "cache", root=root, workers=1, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{root}: no ")
    assert re.search(layout, msg)
    assert "download the files elsewhere and place them there: get " in msg and str(root) in msg.split("get ", 1)[1]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.h5"))


def test_cli_absent_files_one_line_and_default_root(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from dvsguard.cli import main; main()", "preprocess", "nmnist"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "data/nmnist: no N-MNIST recordings" in lines[0], proc.stderr
