"""CIFAR10-DVS: list its recordings with labels, and split any labelled listing 9:1 (per class, or
as the authors' ``random_split``).

Two on-disk layouts are recognised under ``root`` (at any depth):

- tonic's ``tonic.datasets.CIFAR10DVS`` re-encoding in AEDAT 4: ``CIFAR10DVS/<class>/*.aedat4``
  (what ``CIFAR10DVS(save_to=root)`` downloads and extracts);
- the original release in AEDAT 2.0: ``<class>/cifar10_<class>_<n>.aedat``.

A recording's label is the index of its parent folder's name in :data:`CIFAR10DVS_CLASSES`.
Nothing is downloaded unless asked (``download=True``); offline, the error says where to
get the files and where to put them.
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dvsguard.errors import RecordingError

log = logging.getLogger(__name__)

CIFAR10DVS_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""Class names in label order (label = index), as in CIFAR-10 and tonic."""

SENSOR_SIZE = (128, 128, 2)
"""DVS128, (W, H, 2)."""

TONIC_URL = "https://figshare.com/ndownloader/files/38023437"
ORIGINAL_URL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"

_INSTRUCTIONS = (
    "get tonic's AEDAT 4 copy (CIFAR10DVS.zip, {tonic}) and unzip it and the per-class zips "
    "inside into {root}/CIFAR10DVS/, or the original AEDAT 2.0 release ({orig}) with its class "
    "folders airplane/ ... truck/ under {root}; or point at the folder that already holds them"
)

_CLASS_INDEX = {name: i for i, name in enumerate(CIFAR10DVS_CLASSES)}
_NUMBER = re.compile(r"(\d+)")


def _natural_key(path: Path) -> tuple[Any, ...]:
    """Sort key that orders cifar10_cat_2 before cifar10_cat_10."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in _NUMBER.split(str(path)))


def _scan(root: Path, suffix: str) -> list[tuple[Path, int]]:
    items = [
        (path, _CLASS_INDEX[path.parent.name])
        for path in root.rglob(f"*{suffix}")
        if path.is_file() and path.parent.name in _CLASS_INDEX and path.suffix == suffix
    ]
    return sorted(items, key=lambda item: (item[1], _natural_key(item[0])))


SEARCH_PLACES: tuple[str, ...] = ("data", "datasets", "~/data", "~/datasets", "~/.cache/tonic", "/data", "/datasets")
"""Folders (relative to the working directory or absolute) checked for a copy elsewhere."""
_LAYOUT_DIRS = ("", "CIFAR10DVS", "CIFAR10-DVS", "cifar10dvs", "cifar10-dvs", "CIFAR10DVS/CIFAR10DVS")


def find_elsewhere(root: Path) -> Path | None:
    """A folder other than ``root`` among :data:`SEARCH_PLACES` that holds CIFAR10-DVS class folders."""
    for place in SEARCH_PLACES:
        for sub in _LAYOUT_DIRS:
            candidate = Path(place).expanduser() / sub
            try:
                if candidate.resolve() == root.resolve() or not (candidate / "airplane").is_dir():
                    continue
                if any((candidate / "airplane").glob("*.aedat*")):
                    return candidate
            except OSError:
                continue
    return None


def _class_zips(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.zip") if p.stem in _CLASS_INDEX or p.name == "CIFAR10DVS.zip")


def _extract(zips: list[Path]) -> None:
    """Unzip tonic's archives beside themselves, refusing members that would land outside."""
    for archive in zips:
        target = archive.parent
        log.info("extracting %s", archive)
        try:
            with zipfile.ZipFile(archive) as zf:
                base = target.resolve()
                for member in zf.namelist():
                    if not (base / member).resolve().is_relative_to(base):
                        raise RecordingError(f"{archive}: archive member {member!r} points outside {target}")
                zf.extractall(target)
        except zipfile.BadZipFile as exc:
            raise RecordingError(f"{archive}: not a readable zip archive ({exc})") from None
    # CIFAR10DVS.zip holds the per-class zips: extract those too.
    inner = [p for p in _class_zips(zips[0].parent) if p.stem in _CLASS_INDEX and p not in zips]
    if inner:
        _extract(inner)


def _download(root: Path) -> None:
    """Fetch and extract tonic's AEDAT 4 copy into ``root/CIFAR10DVS`` (needs the network)."""
    log.info("downloading CIFAR10-DVS (tonic's AEDAT 4 copy, about 2 GB) into %s", root / "CIFAR10DVS")
    try:
        from tonic.datasets import CIFAR10DVS

        CIFAR10DVS(save_to=str(root))
    except Exception as exc:  # URLError, socket errors, checksum failures...
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise RecordingError(
            f"{root}: downloading CIFAR10-DVS failed ({cause}); "
            + _INSTRUCTIONS.format(tonic=TONIC_URL, orig=ORIGINAL_URL, root=root)
        ) from None


def list_cifar10dvs(root: Path, download: bool = False) -> list[tuple[Path, int]]:
    """List CIFAR10-DVS recordings under ``root`` as (path, label) sorted by label, then file number.

    Prefers tonic's AEDAT 4 files when both layouts are present. With ``download=True`` and
    no recordings on disk, class zips found under ``root`` are extracted, else tonic downloads
    the dataset. Raises RecordingError (one line, with instructions) when nothing is found.
    """
    root = Path(root).expanduser()
    if root.is_dir():
        for suffix in (".aedat4", ".aedat"):
            items = _scan(root, suffix)
            if items:
                _report(root, items, suffix)
                return items
    if not download:
        zips = _class_zips(root) if root.is_dir() else []
        other = find_elsewhere(root)
        if other is not None:
            hint = f"a copy is at {other}: point at that folder (--root {other}), or "
        elif zips:
            hint = f"found {len(zips)} unextracted zip(s) such as {zips[0].name}; pass download=True (--download) to extract them, or "
        else:
            hint = "pass download=True (--download) to fetch it when online, or "
        raise RecordingError(
            f"{root}: no CIFAR10-DVS recordings (<class>/*.aedat4 or <class>/*.aedat); "
            + hint + _INSTRUCTIONS.format(tonic=TONIC_URL, orig=ORIGINAL_URL, root=root)
        )
    root.mkdir(parents=True, exist_ok=True)
    zips = _class_zips(root)
    if zips:
        _extract(zips)
    else:
        _download(root)
    items = _scan(root, ".aedat4") or _scan(root, ".aedat")
    if not items:
        raise RecordingError(
            f"{root}: still no CIFAR10-DVS recordings after download/extraction; "
            + _INSTRUCTIONS.format(tonic=TONIC_URL, orig=ORIGINAL_URL, root=root)
        )
    return items


def _report(root: Path, items: list[tuple[Path, int]], suffix: str) -> None:
    counts = np.bincount([label for _, label in items], minlength=len(CIFAR10DVS_CLASSES))
    log.info("%s: %d CIFAR10-DVS recordings (%s)", root, len(items), suffix)
    missing = [CIFAR10DVS_CLASSES[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        log.warning("%s: no recordings for class(es) %s", root, ", ".join(missing))
    elif len(set(counts.tolist())) > 1:
        log.warning("%s: classes hold unequal numbers of recordings (%s)", root, ", ".join(map(str, counts)))


Item = TypeVar("Item", bound=Sequence[Any])


def split_train_test(items: Sequence[Item], test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[Item]]:
    """Split (path, label, ...) items into {"train": [...], "test": [...]}, per class.

    Deterministic: within each label, items are ordered by path, shuffled with a generator
    seeded by (seed, label), and the first ``round(n * test_fraction)`` (at least one when a
    class has two or more items and test_fraction > 0) go to test. The result does not
    depend on the order of ``items``; each split keeps the order of sorted (label, path).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_label: dict[Hashable, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    train: list[Item] = []
    test: list[Item] = []
    try:
        labels = sorted(by_label)
    except TypeError:  # labels of mixed types
        labels = sorted(by_label, key=str)
    for label in labels:
        group = sorted(by_label[label], key=lambda it: _natural_key(Path(it[0])))
        n = len(group)
        n_test = int(round(n * test_fraction))
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        rng = np.random.default_rng([seed, zlib.crc32(str(label).encode())])
        chosen = set(rng.permutation(n)[:n_test].tolist())
        for i, item in enumerate(group):
            (test if i in chosen else train).append(item)
    return {"train": train, "test": test}


PAPER_SPLIT_SEED = 42
"""Seed of the authors' ``torch.Generator().manual_seed(42)`` for ``random_split``."""


def random_split_train_test(items: Sequence[Item], classes: Sequence[str], test_fraction: float = 0.1,
                            seed: int = PAPER_SPLIT_SEED) -> dict[str, list[Item]]:
    """Split (path, label, ...) items as the authors did: ``torch.utils.data.random_split`` with
    the fractions ``[1 - test_fraction, test_fraction]`` and ``torch.Generator().manual_seed(seed)``
    over SpikingJelly's listing order.

    SpikingJelly's ``CIFAR10DVS`` is a torchvision ``DatasetFolder`` over its frame folder
    (one ``.npz`` per recording, named after it): ``make_dataset`` walks the class folders in
    sorted name order (airplane, automobile, ..., truck) and each one's files in sorted
    (plain string, not natural) order, so ``cifar10_cat_10`` comes before ``cifar10_cat_2``.
    Here the items are ordered by (``classes[label]``, path components), which is that order
    for CIFAR10-DVS and, for any folder of ``<class>/<file>`` recordings, DatasetFolder's.
    With 10000 recordings the fractions give the authors' ``[9000, 1000]``. Each split keeps
    ``random_split``'s order (a random permutation), which is the order the authors iterated.
    """
    import torch
    from torch.utils.data import random_split

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ordered = sorted(items, key=lambda it: (classes[it[1]], Path(it[0]).parts))
    train, test = random_split(range(len(ordered)), [1.0 - test_fraction, test_fraction],
                               generator=torch.Generator().manual_seed(seed))
    return {"train": [ordered[i] for i in train.indices], "test": [ordered[i] for i in test.indices]}
