"""DVS Gesture, N-MNIST and N-Caltech101 as ``preprocess`` sources, read by tonic and split as released.

Each dataset is found under ``root`` in the layout its release (or tonic's copy of it) has
when extracted, read by tonic's own code, and split as follows:

``dvsgesture`` (11 classes, DVS128 128×128), two layouts:

- tonic 1.7's copy (``tonic.datasets.DVSGesture``): ``DVSGesture/ibmGestureTrain/userNN_<lighting>/<k>.npy``
  and ``.../ibmGestureTest/...``, one gesture per file, label ``k`` (0..10) from the file
  name; columns x, y, p, t in ms, converted by ``DVSGesture.__getitem__`` (t × 1000 → µs).
  Split: the two folders.
- IBM's original release (``DvsGesture.tar.gz``): ``DvsGesture/userNN_<lighting>.aedat``
  (AEDAT 3.1) with ``userNN_<lighting>_labels.csv`` (``class,startTime_usec,endTime_usec``,
  class 1..11) and ``trials_to_train.txt`` / ``trials_to_test.txt``. Events are read with
  ``tonic.io.read_aedat_header_from_file`` and ``tonic.io.get_aer_events_from_file`` and the
  addresses decoded as ``tonic.io.read_dvs_ibm`` does (which itself fails in tonic 1.7.0: it
  unpacks two of the header's three values); each labelled row ``start <= t < end`` is one
  sample of class ``class - 1``. Split: the two trial lists, or without them the paper's
  users 1–23 train / 24–29 test.

``nmnist`` (10 classes "0 - zero" ..., ATIS 34×34): ``NMNIST/Train/<digit>/*.bin`` and
``NMNIST/Test/<digit>/*.bin`` (``train.zip`` / ``test.zip`` of the release, where
``tonic.datasets.NMNIST`` extracts them), read by ``tonic.datasets.NMNIST.__getitem__``
(``tonic.io.read_mnist_file``; all three saccades, no stabilisation). Split: the two folders.

``ncaltech101`` (the class folders, ATIS): ``NCALTECH101/Caltech101/<class>/*.bin``, read by
``tonic.datasets.NCALTECH101.__getitem__`` (``read_mnist_file``, then x and y shifted to start
at 0). Recordings differ in size (tonic's ``sensor_size`` is None): each is framed from the
smallest sensor that holds its events, so every object fills the frame. The release has no
train/test split; a seeded 9:1 per-class split (:func:`~dvsguard.data.cifar10dvs.split_train_test`,
as for CIFAR10-DVS) is used. Classes are the folder names in tonic's (sorted) order,
``BACKGROUND_Google`` included when present.

For every layout, ``root`` may also be the folder one level down (``NMNIST/`` itself, or the
folder holding ``Train/`` and ``Test/``). The frame cache reads recordings one file each, so
every sample is first written through tonic's reader to an ``.npz`` under
``<cache_dir>/<name>-events-<root hash>/`` mirroring the release's relative paths (kept and
reused while newer than its source); the caches' ``sources`` name those paths and
``source.json`` in that folder records the dataset folder, layout, split rule and tonic version.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvsguard.errors import RecordingError

log = logging.getLogger(__name__)

DVSGESTURE_CLASSES: tuple[str, ...] = (
    "Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw", "Right arm ccw",
    "Left arm cw", "Left arm ccw", "Arm roll", "Air drums", "Air guitar", "Other gestures",
)
"""As ``tonic.datasets.DVSGesture.classes`` (label = index)."""

NMNIST_CLASSES: tuple[str, ...] = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)
"""As ``tonic.datasets.NMNIST.classes`` (label = digit)."""

DVSGESTURE_TRAIN_USERS = range(1, 24)
"""Users of the paper's training set when the release's trial lists are absent (24–29 test)."""


@dataclass(frozen=True)
class Sample:
    """One sample to stage: read by ``kind`` from ``path`` (rows ``rows`` of a labelled AEDAT file)."""

    rel: str  # where its .npz goes, relative to the staging folder
    label: int
    kind: str  # "nmnist", "ncaltech101", "dvsgesture-npy", "dvsgesture-aedat"
    path: Path
    window: tuple[int, int] | None = None  # [start, end) µs, for dvsgesture-aedat


@dataclass
class Listing:
    """What a dataset folder holds: per-split samples (or one list to split), classes, how it was found."""

    name: str
    root: Path
    layout: str
    classes: list[str]
    splits: dict[str, list[Sample]] | None = None
    unsplit: list[Sample] = field(default_factory=list)
    split_rule: str = ""


@dataclass(frozen=True)
class Spec:
    title: str
    tonic_class: str
    expected: str
    get: str


SPECS: dict[str, Spec] = {
    "dvsgesture": Spec(
        "DVS Gesture", "DVSGesture",
        "DVSGesture/ibmGestureTrain/userNN_<lighting>/<k>.npy and DVSGesture/ibmGestureTest/... (tonic's copy), "
        "or DvsGesture/userNN_<lighting>.aedat with userNN_<lighting>_labels.csv (IBM's release)",
        "ibmGestureTrain.tar.gz and ibmGestureTest.tar.gz (tonic's copy, https://figshare.com/ndownloader/files/38022171 "
        "and https://figshare.com/ndownloader/files/38020584) and extract them into {root}/DVSGesture/, or IBM's DvsGesture.tar.gz "
        "(https://research.ibm.com/interactive/dvsgesture/) extracted into {root}",
    ),
    "nmnist": Spec(
        "N-MNIST", "NMNIST",
        "NMNIST/Train/<digit>/*.bin and NMNIST/Test/<digit>/*.bin",
        "train.zip and test.zip (https://www.garrickorchard.com/datasets/n-mnist) and unzip them into {root}/NMNIST/",
    ),
    "ncaltech101": Spec(
        "N-Caltech101", "NCALTECH101",
        "NCALTECH101/Caltech101/<class>/*.bin",
        "N-Caltech101-archive.zip (https://www.garrickorchard.com/datasets/n-caltech101), unzip it and the "
        "Caltech101.zip inside into {root}/NCALTECH101/",
    ),
}
SOURCES: tuple[str, ...] = tuple(SPECS)
"""The source names ``preprocess`` accepts for these datasets."""


def default_root(name: str) -> Path:
    return Path("data") / name


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _absent(name: str, root: Path, detail: str = "") -> RecordingError:
    spec = SPECS[name]
    where = f"{detail}; " if detail else ""
    return RecordingError(
        f"{root}: no {spec.title} recordings ({where}expected {spec.expected}); download the files elsewhere "
        f"and place them there: get {spec.get.format(root=root)}; or pass --download to fetch them through "
        f"tonic when online"
    )


def _bases(root: Path, tonic_folder: str) -> list[Path]:
    """Folders to look in: ``root/<tonic folder>`` (tonic's save_to layout), then ``root`` itself."""
    return [root / tonic_folder, root]


# --------------------------------------------------------------------------- listing


def _files(folder: Path, suffix: str) -> list[Path]:
    return sorted((p for p in folder.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: _natural(str(p.relative_to(folder))))


def _list_nmnist(root: Path) -> Listing:
    for base in _bases(root, "NMNIST"):
        if (base / "Train").is_dir() or (base / "Test").is_dir():
            splits: dict[str, list[Sample]] = {}
            for split, folder in (("train", "Train"), ("test", "Test")):
                if not (base / folder).is_dir():
                    raise _absent("nmnist", root, f"{base / folder} is missing")
                samples = []
                for path in _files(base / folder, ".bin"):
                    digit = path.parent.name
                    if len(digit) != 1 or not digit.isdigit():  # tonic: label = int(path[-1])
                        continue
                    samples.append(Sample(str(path.relative_to(base).with_suffix(".npz")), int(digit), "nmnist", path))
                if not samples:
                    raise _absent("nmnist", root, f"no <digit>/*.bin under {base / folder}")
                splits[split] = samples
            return Listing("nmnist", base, "tonic NMNIST (Train/, Test/)", list(NMNIST_CLASSES), splits=splits,
                           split_rule="official: Train/ and Test/ folders")
    raise _absent("nmnist", root)


def _list_ncaltech101(root: Path) -> Listing:
    for base in [*_bases(root, "NCALTECH101/Caltech101"), root / "Caltech101"]:
        if not base.is_dir():
            continue
        files = [p for p in _files(base, ".bin") if p.parent.parent == base]
        if files:
            classes = sorted({p.parent.name for p in files})  # tonic walks the folders sorted
            index = {c: i for i, c in enumerate(classes)}
            samples = [Sample(str(p.relative_to(base).with_suffix(".npz")), index[p.parent.name], "ncaltech101", p)
                       for p in files]
            return Listing("ncaltech101", base, "tonic NCALTECH101 (Caltech101/<class>/)", classes, unsplit=samples,
                           split_rule="none released: seeded per-class split")
    raise _absent("ncaltech101", root)


_USER = re.compile(r"^user(\d+)_(.+)$")


def _list_dvsgesture(root: Path) -> Listing:
    for base in _bases(root, "DVSGesture"):
        if (base / "ibmGestureTrain").is_dir() or (base / "ibmGestureTest").is_dir():
            return _list_gesture_npy(root, base)
    for base in [root / "DvsGesture", root]:
        if base.is_dir() and any(base.glob("user*_labels.csv")):
            return _list_gesture_aedat(root, base)
    raise _absent("dvsgesture", root)


def _list_gesture_npy(root: Path, base: Path) -> Listing:
    splits: dict[str, list[Sample]] = {}
    for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest")):
        if not (base / folder).is_dir():
            raise _absent("dvsgesture", root, f"{base / folder} is missing")
        samples = []
        for path in _files(base / folder, ".npy"):
            if path.parent.parent != base / folder or not _USER.match(path.parent.name):
                continue
            try:
                label = int(path.stem)  # tonic: target = int(file[:-4])
            except ValueError:
                continue
            if 0 <= label < len(DVSGESTURE_CLASSES):
                samples.append(Sample(str(path.relative_to(base).with_suffix(".npz")), label, "dvsgesture-npy", path))
        if not samples:
            raise _absent("dvsgesture", root, f"no userNN_<lighting>/<k>.npy under {base / folder}")
        splits[split] = samples
    return Listing("dvsgesture", base, "tonic DVSGesture (ibmGestureTrain/, ibmGestureTest/ .npy)",
                   list(DVSGESTURE_CLASSES), splits=splits, split_rule="official: ibmGestureTrain/ and ibmGestureTest/")


def _trial_list(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {Path(line.strip()).name for line in path.read_text().splitlines() if line.strip()}


def _list_gesture_aedat(root: Path, base: Path) -> Listing:
    train_list, test_list = _trial_list(base / "trials_to_train.txt"), _trial_list(base / "trials_to_test.txt")
    use_lists = train_list is not None and test_list is not None
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for labels_csv in sorted(base.glob("user*_labels.csv"), key=lambda p: _natural(p.name)):
        trial = labels_csv.name[: -len("_labels.csv")]
        aedat = base / f"{trial}.aedat"
        m = _USER.match(trial)
        if not aedat.is_file() or m is None:
            log.warning("%s: no %s beside it; skipped", labels_csv, aedat.name)
            continue
        if use_lists:
            assert train_list is not None and test_list is not None
            if aedat.name in train_list:
                split = "train"
            elif aedat.name in test_list:
                split = "test"
            else:
                log.warning("%s: in neither trials_to_train.txt nor trials_to_test.txt; skipped", aedat)
                continue
        else:
            split = "train" if int(m.group(1)) in DVSGESTURE_TRAIN_USERS else "test"
        for row, (label, start, end) in enumerate(_gesture_rows(labels_csv)):
            splits[split].append(Sample(f"{trial}/{row:02d}.npz", label, "dvsgesture-aedat", aedat, (start, end)))
    for split, samples in splits.items():
        if not samples:
            raise _absent("dvsgesture", root, f"no labelled {split} recordings in {base}")
    rule = ("official: trials_to_train.txt and trials_to_test.txt" if use_lists
            else "the paper's users 1-23 train, 24-29 test (no trials_to_*.txt)")
    return Listing("dvsgesture", base, "IBM DvsGesture (AEDAT 3.1 + _labels.csv)", list(DVSGESTURE_CLASSES),
                   splits=splits, split_rule=rule)


def _gesture_rows(labels_csv: Path) -> list[tuple[int, int, int]]:
    try:
        with open(labels_csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for line, row in enumerate(rows, start=2):
            cls, start, end = int(row["class"]), int(row["startTime_usec"]), int(row["endTime_usec"])
            if not 1 <= cls <= len(DVSGESTURE_CLASSES) or end <= start:
                raise ValueError(f"line {line}: class {cls} (1..11 expected) from {start} to {end} µs")
            out.append((cls - 1, start, end))
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as exc:
        raise RecordingError(f"{labels_csv}: not a DVS Gesture labels file "
                             f"(class,startTime_usec,endTime_usec expected): {exc}") from None
    return out


def _download(name: str, root: Path) -> None:
    """Let tonic download and extract the dataset into ``root`` (needs the network)."""
    from tonic import datasets

    cls = getattr(datasets, SPECS[name].tonic_class)
    log.info("downloading %s through tonic into %s", SPECS[name].title, root / SPECS[name].tonic_class)
    try:
        if name == "ncaltech101":
            cls(save_to=str(root))
        else:
            cls(save_to=str(root), train=True)
            cls(save_to=str(root), train=False)
    except Exception as exc:  # URLError, socket errors, checksum failures...
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise RecordingError(f"{root}: downloading {SPECS[name].title} failed ({cause}); download the files "
                             f"elsewhere and place them there: get {SPECS[name].get.format(root=root)}") from None


def list_standard(name: str, root: str | os.PathLike, download: bool = False) -> Listing:
    """The samples of dataset ``name`` under ``root``; RecordingError (one line) when absent."""
    if name not in SPECS:
        raise RecordingError(f"unknown dataset {name!r}; expected one of {', '.join(SPECS)}")
    root = Path(root).expanduser()
    lister: Callable[[Path], Listing] = {"nmnist": _list_nmnist, "ncaltech101": _list_ncaltech101,
                                         "dvsgesture": _list_dvsgesture}[name]
    try:
        return lister(root)
    except RecordingError:
        if not download:
            raise
    root.mkdir(parents=True, exist_ok=True)
    _download(name, root)
    return lister(root)


# --------------------------------------------------------------------------- reading through tonic


def _tonic_getitem(class_name: str, path: Path, label: Any, **attrs: Any) -> np.ndarray:
    """Events of one file by the tonic dataset class's own ``__getitem__`` (its listing and download skipped)."""
    import numpy.lib.recfunctions  # noqa: F401  (DVSGesture.__getitem__ uses np.lib.recfunctions)
    from tonic import datasets

    cls = getattr(datasets, class_name)
    ds = cls.__new__(cls)
    ds.data, ds.targets = [str(path)], [label]
    ds.transform = ds.target_transform = ds.transforms = None
    for k, v in attrs.items():
        setattr(ds, k, v)
    events, _ = ds[0]
    return events


def _read_gesture_aedat(path: Path) -> np.ndarray:
    """x, y, t (µs), p of an IBM DVS Gesture AEDAT 3.1 file, as ``tonic.io.read_dvs_ibm`` decodes them."""
    from tonic.io import get_aer_events_from_file, make_structured_array, read_aedat_header_from_file

    version, start, _ = read_aedat_header_from_file(str(path))
    raw = get_aer_events_from_file(str(path), version, start)
    addr, t = raw["address"], raw["timeStamp"]
    return make_structured_array((addr >> 17) & 0x1FFF, (addr >> 2) & 0x1FFF, t, (addr >> 1) & 0x1)


def read_sample(sample: Sample, aedat: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(events with x, y, t µs, p; sensor (W, H) or None for the smallest holding them) of one sample."""
    if sample.kind == "nmnist":
        return _tonic_getitem("NMNIST", sample.path, sample.label, first_saccade_only=False, stabilize=False), (34, 34)
    if sample.kind == "ncaltech101":
        return _tonic_getitem("NCALTECH101", sample.path, sample.label), None
    if sample.kind == "dvsgesture-npy":
        return _tonic_getitem("DVSGesture", sample.path, sample.label), (128, 128)
    if sample.kind == "dvsgesture-aedat":
        events = _read_gesture_aedat(sample.path) if aedat is None else aedat
        assert sample.window is not None
        lo, hi = sample.window
        return events[(events["t"] >= lo) & (events["t"] < hi)], (128, 128)
    raise RecordingError(f"{sample.path}: unknown sample kind {sample.kind!r}")


# --------------------------------------------------------------------------- staging


def staging_dir(cache_dir: str | os.PathLike, listing: Listing) -> Path:
    digest = hashlib.sha256(os.path.realpath(listing.root).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{listing.name}-events-{digest}"


def _fresh(out: Path, source: Path) -> bool:
    try:
        return out.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        return False


def _write(out: Path, events: np.ndarray, size: tuple[int, int] | None) -> None:
    from dvsguard.data.events import write_npz

    if size is None:  # the smallest sensor that holds the events (at least 1×1)
        size = (int(events["x"].max()) + 1, int(events["y"].max()) + 1) if len(events) else (1, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(out, events, (*size, 2))


def _stage_group(job: tuple[Path, list[Sample]]) -> list[tuple[str, str]]:
    """Worker: write the samples of one job (one file's samples) → [(rel, error or "")]."""
    folder, samples = job
    results = []
    aedat = None
    for sample in samples:
        out = folder / sample.rel
        try:
            if not _fresh(out, sample.path):
                if sample.kind == "dvsgesture-aedat" and aedat is None:
                    aedat = _read_gesture_aedat(sample.path)
                events, size = read_sample(sample, aedat)
                _write(out, events, size)
            results.append((sample.rel, ""))
        except Exception as exc:  # tonic's readers raise assorted errors on damaged files
            from dvsguard.atomic import disk_full

            if disk_full(exc):  # not the recording's fault: stop
                raise
            msg = " ".join(str(exc).split()) or type(exc).__name__
            results.append((sample.rel, msg if str(sample.path) in msg else f"{sample.path}: {msg}"))
    return results


def stage(listing: Listing, samples: list[Sample], cache_dir: str | os.PathLike, workers: int = 2) -> tuple[
        dict[str, Path], list[tuple[str, str]]]:
    """Write ``samples`` as ``.npz`` under :func:`staging_dir` → ({rel: npz path}, [(file, cause)])."""
    folder = staging_dir(cache_dir, listing)
    folder.mkdir(parents=True, exist_ok=True)
    _write_manifest(folder, listing)
    groups: dict[Path, list[Sample]] = {}
    for s in samples:
        key = s.path if s.kind == "dvsgesture-aedat" else Path(s.rel)
        groups.setdefault(key, []).append(s)
    jobs = [(folder, g) for g in groups.values()]
    todo = sum(not _fresh(folder / s.rel, s.path) for s in samples)
    if todo:
        log.info("%s: writing %d of %d samples through tonic's reader into %s", listing.name, todo, len(samples), folder)
    if workers > 1 and todo > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            results = [r for part in pool.imap(_stage_group, jobs, chunksize=16) for r in part]
    else:
        results = [r for job in jobs for r in _stage_group(job)]
    by_rel = {s.rel: s for s in samples}
    paths = {rel: folder / rel for rel, err in results if not err}
    failed = [(str(by_rel[rel].path), err) for rel, err in results if err]
    for _, cause in failed:
        log.warning("%s", cause)
    return paths, failed


def _write_manifest(folder: Path, listing: Listing) -> None:
    from dvsguard.atomic import write_text

    try:
        import tonic

        version = getattr(tonic, "__version__", "")
    except ImportError:  # pragma: no cover
        version = ""
    text = json.dumps({"dataset": listing.name, "root": os.path.realpath(listing.root), "layout": listing.layout,
                       "split": listing.split_rule, "classes": listing.classes, "tonic": version}, indent=1)
    manifest = folder / "source.json"
    if not manifest.is_file() or manifest.read_text() != text:
        write_text(manifest, text)
