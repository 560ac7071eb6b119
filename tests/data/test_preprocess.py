"""``dvsguard preprocess`` end to end on tiny folders: labels, 9:1 split, reuse, bad recordings, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data.cache import open_cache, split_path
from dvsguard.data.dataset import FrameDataset
from dvsguard.data.events import EVENT_DTYPE, write_npz
from dvsguard.data.frames import FramingConfig
from dvsguard.data.preprocess import find_recordings, list_folder, preprocess, read_labels
from dvsguard.errors import ConfigError, RecordingError


def write_recording(path: Path, seed: int, n: int = 500) -> Path:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = rng.integers(0, 40, n)
    ev["y"] = rng.integers(0, 30, n)
    ev["t"] = np.sort(rng.integers(0, 50_000, n))
    ev["p"] = rng.integers(0, 2, n)
    return write_npz(path, ev, (40, 30, 2))


def class_folders(root: Path, per_class: int = 10, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    for c, name in enumerate(classes):
        for k in range(per_class):
            sub = root / name / ("deep" if k % 3 == 0 else "")  # recursion below the class folder
            write_recording(sub / f"{name}{k}.npz", seed=100 * c + k)
    return root


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dvsguard.cli import main; main()", *args],
        capture_output=True, text=True, timeout=180, cwd=cwd,
    )


def test_cli_end_to_end_on_a_folder(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "tiny")
    (src / "dog" / "broken.npz").write_bytes(b"\x00garbage\xff" * 20)
    args = ("preprocess", "tiny", "--cache-dir", "cache", "--frames", "5", "--size", "24", "--count-cap", "7", "--json")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["classes"] == ["cat", "dog"]
    assert (out["n_train"], out["n_test"]) == (18, 2)  # 9:1 per class of the 10 good ones; 'broken' skipped
    assert len(out["failed"]) == 1 and out["failed"][0]["file"].endswith("broken.npz")
    assert sum("broken.npz" in line for line in proc.stderr.splitlines()) == 1
    train, test = tmp_path / out["train"], tmp_path / out["test"]
    assert train.parent == tmp_path / "cache" and train.name.startswith("tiny-train-")
    info = open_cache(train)
    assert (info.n_frames, info.height, info.width, info.count_cap) == (5, 24, 24, 7)
    assert split_path(info, "test") == test and open_cache(test).n_samples == 2
    x, y = FrameDataset(train)[0]
    assert tuple(x.shape) == (5, 2, 24, 24)
    with open_h5(test) as f:
        test_sources = sorted(s.decode() for s in f["sources"][()])
    assert len({s.split("/")[0] for s in test_sources}) == 2  # one test recording per class

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0
    out2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert out2["reused"] and out2["train"] == out["train"]

    other = preprocess(str(src), tmp_path / "cache", FramingConfig(n_frames=6, height=24, width=24), workers=1, progress=False)
    assert other.train.name != train.name and not other.reused and other.n_train == 18


def open_h5(path: Path):  # noqa: ANN201
    import h5py

    return h5py.File(path, "r")


def test_cli_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "a.npz").write_bytes(b"")
    (bad / "b.npz").write_bytes(b"junk")
    proc = run_cli("preprocess", "bad", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dvsguard: error:") and "none of the 2 recordings could be read" in last
    assert not list((tmp_path / "cache").glob("*.h5"))

    proc = run_cli("preprocess", "nowhere", cwd=tmp_path)
    assert proc.returncode == 1 and "no such folder" in proc.stderr
    proc = run_cli("preprocess", "bad", "--mode", "space", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("preprocess", "bad", "--count-cap", "300", cwd=tmp_path)
    assert proc.returncode == 2


def test_labels_file_with_class_names(tmp_path: Path) -> None:
    for i in range(6):
        write_recording(tmp_path / "flat" / f"r{i}.npz", seed=i)
    rows = ["path,label"] + [f"r{i}.npz,{'zebra' if i % 2 else 'ant'}" for i in range(6)]
    (tmp_path / "flat" / "labels.csv").write_text("\n".join(rows) + "\n")
    items, classes = list_folder(tmp_path / "flat")
    assert classes == ["ant", "zebra"]
    assert [(p.name, y) for p, y in items] == [(f"r{i}.npz", i % 2) for i in range(6)]


def test_labels_file_with_indices_and_names(tmp_path: Path) -> None:
    labels = tmp_path / "my.csv"
    labels.write_text("file,class,label\na.npz,bee,1\nb.npz,ant,0\nc.npz,bee,1\n")
    items, classes = read_labels(labels, tmp_path)
    assert classes == ["ant", "bee"] and [y for _, y in items] == [1, 0, 1]
    labels.write_text("file,label\na.npz,2\nb.npz,0\n")
    with pytest.raises(ConfigError, match="0..K-1"):
        read_labels(labels, tmp_path)
    labels.write_text("name,colour\na.npz,red\n")
    with pytest.raises(ConfigError, match="path column"):
        read_labels(labels, tmp_path)


def test_listed_but_missing_recording_is_reported_not_fatal(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "src", per_class=4)
    rows = ["path,label"] + [f"{p.relative_to(src)},{p.relative_to(src).parts[0]}" for p in sorted(src.rglob("*.npz"))]
    rows.append("cat/ghost.npz,cat")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    result = preprocess(str(src), tmp_path / "cache", labels_file=labels, workers=1, progress=False)
    assert result.n_train + result.n_test == 8
    assert [Path(f).name for f, _ in result.failed] == ["ghost.npz"]


def test_loose_files_need_a_labels_file(tmp_path: Path) -> None:
    write_recording(tmp_path / "loose" / "a.npz", seed=0)
    with pytest.raises(ConfigError, match="outside class sub-folders"):
        list_folder(tmp_path / "loose")
    with pytest.raises(RecordingError, match="no recordings"):
        list_folder((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_cache_folder_inside_the_source_is_not_read_as_recordings(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "src", per_class=3)
    first = preprocess(str(src), src / "cache", workers=1, progress=False)
    assert first.classes == ["cat", "dog"]
    items, classes = list_folder(src, exclude=src / "cache")
    assert classes == ["cat", "dog"] and len(items) == 6
    again = preprocess(str(src), src / "cache", workers=1, progress=False)
    assert again.reused and again.train == first.train


def test_cifar10dvs_source_in_the_original_aedat2_layout(tmp_path: Path) -> None:
    from dvsguard.data.aedat2 import write_aedat2_dvs128
    from dvsguard.data.cifar10dvs import CIFAR10DVS_CLASSES

    root = tmp_path / "c10"
    rng = np.random.default_rng(0)
    for name in ("airplane", "cat"):
        (root / name).mkdir(parents=True)
        for k in range(5):
            n = 2000
            ev = np.empty(n, dtype=EVENT_DTYPE)
            ev["x"], ev["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
            ev["t"], ev["p"] = np.sort(rng.integers(0, 1_000_000, n)), rng.integers(0, 2, n)
            write_aedat2_dvs128(root / name / f"cifar10_{name}_{k}.aedat", ev)
    result = preprocess("cifar10dvs", tmp_path / "cache", root=root, workers=1, progress=False)
    assert result.classes == list(CIFAR10DVS_CLASSES)
    assert (result.n_train, result.n_test) == (8, 2) and not result.failed
    assert result.train.name.startswith("cifar10dvs-train-")
    ds = FrameDataset(result.train)
    assert sorted(set(ds.labels.tolist())) == [0, 3]  # airplane, cat
    assert tuple(ds[0][0].shape) == (10, 2, 48, 48)


@pytest.mark.parametrize("second", ["cat/cat1.npz,cat", "./cat/../cat/cat1.npz,dog"], ids=["same-class", "other-class"])
def test_labels_file_listing_a_recording_twice_is_refused(tmp_path: Path, second: str) -> None:
    src = class_folders(tmp_path / "src", per_class=10)
    rows = ["path,label"] + [f"{p.relative_to(src)},{p.relative_to(src).parts[0]}" for p in sorted(src.rglob("*.npz"))]
    rows.insert(4, "")  # a blank line does not shift the line numbers reported
    rows.append(second)
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    first = next(i for i, r in enumerate(rows, start=1) if r.startswith("cat/cat1.npz,"))
    pattern = rf"labels\.csv:{len(rows)}: .*cat1\.npz is listed again, first on line {first}"
    with pytest.raises(ConfigError, match=pattern):
        preprocess(str(src), tmp_path / "cache", workers=1, progress=False)
    proc = run_cli("preprocess", "src", "--cache-dir", "cache", cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dvsguard: error: ") and "src/labels.csv:" in last and "listed again" in last
    assert not list((tmp_path / "cache").glob("*.h5"))


@pytest.mark.parametrize("outside", ["../outside.npz", "cat/../../outside.npz", "ABS"])
def test_labels_file_path_leaving_the_folder_is_refused(tmp_path: Path, outside: str) -> None:
    src = class_folders(tmp_path / "src", per_class=3)
    write_recording(tmp_path / "outside.npz", seed=99)
    if outside == "ABS":
        outside = str(tmp_path / "outside.npz")
    rows = ["path,label"] + [f"{p.relative_to(src)},{p.relative_to(src).parts[0]}" for p in sorted(src.rglob("*.npz"))]
    rows.append(f"{outside},dog")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=rf"labels\.csv:{len(rows)}: .*outside\.npz lies outside the folder"):
        preprocess(str(src), tmp_path / "cache", workers=1, progress=False)
    # inside the folder, absolute or with '..' that stays inside, is fine
    rows[-1] = f"{src / 'cat' / 'deep' / '..' / 'cat1.npz'},cat"
    rows[1] = "dog/../" + rows[1]
    (src / "labels.csv").write_text("\n".join(rows[:1] + rows[2:]) + "\n")
    items, _ = read_labels(src / "labels.csv", src)
    assert len(items) == 6


def test_find_recordings_excludes_a_file_alone_or_a_whole_folder(tmp_path: Path) -> None:
    src = class_folders(tmp_path / "src", per_class=3)
    names = lambda files: sorted(str(f.relative_to(src)) for f in files)  # noqa: E731
    every = names(find_recordings(src))
    assert len(every) == 6
    assert names(find_recordings(src, exclude=src / "cat" / "cat1.npz")) == [n for n in every if n != "cat/cat1.npz"]
    assert names(find_recordings(src, exclude=src / "cat" / "preds.csv")) == every
    assert names(find_recordings(src, exclude=src / "cat")) == [n for n in every if n.startswith("dog/")]


def test_cache_records_the_sensor_size_or_none_when_recordings_differ(tmp_path: Path) -> None:
    from dvsguard.data.cache import open_cache

    root = class_folders(tmp_path / "rec", per_class=4)
    done = preprocess(str(root), tmp_path / "cache", FramingConfig(n_frames=4, height=16, width=16), workers=1)
    assert open_cache(done.train).sensor_size == (40, 30) and open_cache(done.test).sensor_size == (40, 30)
    # one recording from a larger sensor: the sizes differ, so no common sensor size is claimed
    ev = np.zeros(50, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(50)
    write_npz(root / "cat" / "big.npz", ev, (128, 128, 2))
    done = preprocess(str(root), tmp_path / "cache2", FramingConfig(n_frames=4, height=16, width=16), workers=1)
    sizes = {open_cache(done.train).sensor_size, open_cache(done.test).sensor_size}
    assert None in sizes and sizes <= {None, (40, 30)}
