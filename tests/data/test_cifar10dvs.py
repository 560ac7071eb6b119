"""CIFAR10-DVS listing in tonic's and the original layout, offline messages, and the per-class split."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from dvsguard.data import cifar10dvs
from dvsguard.data.aedat2 import write_aedat2_dvs128
from dvsguard.data.cifar10dvs import CIFAR10DVS_CLASSES, list_cifar10dvs, split_train_test
from dvsguard.data.events import EVENT_DTYPE, read_events
from dvsguard.errors import RecordingError


@pytest.fixture(autouse=True)
def _no_copies_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the messages independent of datasets that happen to lie on this machine."""
    monkeypatch.setattr(cifar10dvs, "SEARCH_PLACES", ())


def _events(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
    ev["t"] = np.cumsum(rng.integers(1, 100, n))
    ev["p"] = rng.integers(0, 2, n)
    return ev


def make_original_layout(root: Path, per_class: int = 3) -> None:
    """The AEDAT 2.0 release: <class>/cifar10_<class>_<n>.aedat."""
    for name in CIFAR10DVS_CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_aedat2_dvs128(root / name / f"cifar10_{name}_{i}.aedat", _events(seed=i))


def make_tonic_layout(root: Path, per_class: int = 3, real_file: Path | None = None) -> None:
    """tonic's layout: CIFAR10DVS/<class>/*.aedat4 (the contents are not read by the listing)."""
    for name in CIFAR10DVS_CLASSES:
        folder = root / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            target = folder / f"cifar10_{name}_{i}.aedat4"
            if real_file is not None:
                target.symlink_to(real_file)
            else:
                target.write_bytes(b"#!AER-DAT4.0\r\n")


def test_original_layout_lists_labels_in_class_order_and_natural_file_order(tmp_path: Path) -> None:
    make_original_layout(tmp_path, per_class=12)
    items = list_cifar10dvs(tmp_path)
    assert len(items) == 120
    assert [label for _, label in items] == [c for c in range(10) for _ in range(12)]
    for path, label in items:
        assert path.parent.name == CIFAR10DVS_CLASSES[label]
    names = [p.name for p, label in items if label == 3]
    assert names[:3] == ["cifar10_cat_0.aedat", "cifar10_cat_1.aedat", "cifar10_cat_2.aedat"]
    assert names[-1] == "cifar10_cat_11.aedat"
    rec = read_events(items[0][0])
    assert rec.sensor_size == (128, 128, 2) and len(rec.events) == 40


def test_tonic_layout_is_found_below_root_and_preferred(tmp_path: Path) -> None:
    make_tonic_layout(tmp_path, per_class=2)
    (tmp_path / "airplane").mkdir()
    write_aedat2_dvs128(tmp_path / "airplane" / "cifar10_airplane_0.aedat", _events())
    items = list_cifar10dvs(tmp_path)
    assert len(items) == 20
    assert all(p.suffix == ".aedat4" for p, _ in items)
    assert sorted({label for _, label in items}) == list(range(10))


def test_tonic_layout_with_real_aedat4_reads(tmp_path: Path, recordings_dir: Path) -> None:
    make_tonic_layout(tmp_path, per_class=1, real_file=recordings_dir / "davis346.aedat4")
    path, label = list_cifar10dvs(tmp_path / "CIFAR10DVS")[0]
    assert label == 0 and len(read_events(path).events) == 78_830


def test_missing_dataset_without_download_explains_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RecordingError) as info:
        list_cifar10dvs(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path}: no CIFAR10-DVS recordings")
    assert "--download" in msg and "figshare" in msg and "\n" not in msg


def test_copy_elsewhere_is_named_in_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_original_layout(tmp_path / "store" / "CIFAR10-DVS", per_class=1)
    monkeypatch.setattr(cifar10dvs, "SEARCH_PLACES", (str(tmp_path / "nowhere"), str(tmp_path / "store")))
    with pytest.raises(RecordingError) as info:
        list_cifar10dvs(tmp_path / "empty")
    assert f"a copy is at {tmp_path / 'store' / 'CIFAR10-DVS'}" in str(info.value)


def test_offline_download_gives_one_line_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tonic.datasets

    class Offline:
        def __init__(self, save_to: str) -> None:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tonic.datasets, "CIFAR10DVS", Offline)
    with pytest.raises(RecordingError) as info:
        list_cifar10dvs(tmp_path / "c10", download=True)
    msg = str(info.value)
    assert "downloading CIFAR10-DVS failed" in msg and "name resolution" in msg
    assert "CIFAR10DVS.zip" in msg and "\n" not in msg


def test_local_class_zips_are_extracted_only_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_original_layout(src, per_class=2)
    dest = tmp_path / "CIFAR10DVS"
    dest.mkdir()
    for name in CIFAR10DVS_CLASSES:
        with zipfile.ZipFile(dest / f"{name}.zip", "w") as zf:
            for f in sorted((src / name).iterdir()):
                zf.write(f, f"{name}/{f.name}")
    with pytest.raises(RecordingError, match="unextracted zip"):
        list_cifar10dvs(dest)
    items = list_cifar10dvs(dest, download=True)
    assert len(items) == 20 and all(p.is_relative_to(dest) for p, _ in items)


def test_split_is_per_class_nine_to_one_and_deterministic(tmp_path: Path) -> None:
    items = [(tmp_path / CIFAR10DVS_CLASSES[c] / f"cifar10_{c}_{i}.aedat", c) for c in range(10) for i in range(50)]
    split = split_train_test(items)
    assert len(split["test"]) == 50 and len(split["train"]) == 450
    for c in range(10):
        assert sum(1 for _, label in split["test"] if label == c) == 5
    assert not {p for p, _ in split["test"]} & {p for p, _ in split["train"]}
    shuffled = [items[i] for i in np.random.default_rng(3).permutation(len(items))]
    assert split_train_test(shuffled) == split, "the split must not depend on listing order"
    other = split_train_test(items, seed=1)
    assert other["test"] != split["test"], "another seed picks other test recordings"
    assert len(other["test"]) == 50


def test_split_small_classes_and_string_labels() -> None:
    items = [(f"r{i}.npz", name) for name, n in (("a", 1), ("b", 2), ("c", 25)) for i in range(n)]
    split = split_train_test(items, test_fraction=0.1)
    test_labels = [label for _, label in split["test"]]
    assert test_labels.count("a") == 0  # one recording stays in train
    assert test_labels.count("b") == 1
    assert test_labels.count("c") == 2  # round(2.5) with banker's rounding
    assert split_train_test(items, test_fraction=0.0)["test"] == []
    with pytest.raises(ValueError):
        split_train_test(items, test_fraction=1.0)


def test_module_constants() -> None:
    assert CIFAR10DVS_CLASSES[0] == "airplane" and CIFAR10DVS_CLASSES[9] == "truck"
    assert cifar10dvs.SENSOR_SIZE == (128, 128, 2)
