"""CIFAR10-DVS, DVS Gesture, N-MNIST, N-Caltech101 or a folder of recordings → a train and a test
frame cache (``dvsguard preprocess``).

A folder's labels come from a labels file (``labels.csv`` in the folder, or one given),
else from the name of each recording's top sub-folder (``root/<class>/.../file``). The
split is deterministic, 9:1: per class (:func:`split_train_test`) under the ``events``
protocol, or the authors' seeded ``random_split`` over SpikingJelly's listing order
(:func:`dvsguard.data.cifar10dvs.random_split_train_test`) under ``paper``, for CIFAR10-DVS,
N-Caltech101 and folders; DVS Gesture and N-MNIST keep their released train/test split
(:mod:`dvsguard.data.standard`) under both. Both caches share one key (framing, format
version, protocol, the listing of both splits) and name each other as siblings.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.atomic import disk_full
from dvsguard.data.cache import PARTIAL_SUFFIX, Item, build_cache, cache_key, cache_paths
from dvsguard.data.frames import FramingConfig
from dvsguard.errors import ConfigError, OutputError, RecordingError
from dvsguard.protocol import DEFAULT_PROTOCOL
from dvsguard.protocol import get as get_protocol

log = logging.getLogger(__name__)

CIFAR10DVS = "cifar10dvs"
LABELS_FILE = "labels.csv"
_PATH_COLUMNS = ("path", "file", "filename", "recording")
_NAME_COLUMNS = ("class", "class_name", "name")
_LABEL_COLUMNS = ("label", "target", "class_index")


@dataclass
class PreprocessResult:
    """Where the caches went and what went into them; ``failed`` lists (file, cause)."""

    train: Path
    test: Path
    classes: list[str]
    n_train: int
    n_test: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False
    protocol: str = DEFAULT_PROTOCOL

    def to_json(self) -> dict[str, Any]:
        return {
            "train": str(self.train),
            "test": str(self.test),
            "classes": self.classes,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "failed": [{"file": f, "cause": c} for f, c in self.failed],
            "seconds": round(self.seconds, 3),
            "reused": self.reused,
            "protocol": self.protocol,
        }


def _suffixes() -> tuple[str, ...]:
    from dvsguard.data.events import RECORDING_SUFFIXES

    return tuple(s.lower() for s in RECORDING_SUFFIXES)


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def find_recordings(root: Path, exclude: Path | None = None) -> list[Path]:
    """Recording files under ``root`` (recursive; hidden files/folders skipped).

    ``exclude`` is skipped: a folder with everything under it (a cache folder inside the
    source), or a single file (an output written among the recordings). A symbolic link that
    leads back to itself (a loop) is skipped with a warning; links into folders are not
    followed, so a folder loop is never walked.
    """
    suffixes = _suffixes()
    exclude_r = _resolve(exclude) if exclude is not None else None

    def excluded(path: Path) -> bool:
        return exclude_r is not None and path.name == exclude_r.name and _resolve(path) == exclude_r

    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not excluded(here / d))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes and not excluded(here / name):
                if _is_loop(here / name):
                    log.warning("%s: skipped, a symbolic link loop", here / name)
                    continue
                found.append(here / name)
    return sorted(found, key=lambda p: _natural(str(p.relative_to(root))))


def _resolve(path: Path) -> Path:
    """``path`` made absolute with links followed as far as they go (no error on a loop)."""
    return Path(os.path.realpath(path))


def _is_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _column(header: list[str], choices: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[c] for c in choices if c in lowered), None)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _check_listed_paths(labels_file: Path, root: Path, lines: list[int], rels: list[str], paths: list[Path]) -> None:
    """Refuse a labels file that lists a recording twice (it would land in both splits or carry
    two classes) or a path that leaves ``root`` (``../x.npz``, an absolute path elsewhere).

    Paths are compared normalised (``a/../b.npz`` is ``b.npz``) without following symbolic links,
    so a folder of links to recordings stored elsewhere still works, as it does without a labels file.
    """
    top = Path(os.path.normpath(os.path.abspath(root)))
    first: dict[Path, tuple[int, str]] = {}
    for line, rel, path in zip(lines, rels, paths):
        where = Path(os.path.normpath(os.path.abspath(path)))
        try:
            where.relative_to(top)
        except ValueError:
            raise ConfigError(f"{labels_file}:{line}: {rel} lies outside the folder {root}") from None
        if where == top:
            raise ConfigError(f"{labels_file}:{line}: {rel!r} names the folder {root} itself, not a recording")
        seen = first.setdefault(where, (line, rel))
        if seen[0] != line:
            also = f" (as {seen[1]})" if seen[1] != rel else ""
            raise ConfigError(f"{labels_file}:{line}: {rel} is listed again, first on line {seen[0]}{also}; "
                              "each recording needs exactly one row")


def read_labels(labels_file: Path, root: Path) -> tuple[list[Item], list[str]]:
    """Items and classes from a CSV with a header row.

    Columns: a path (``path``/``file``/``filename``/``recording``, relative to ``root``) and
    the class, as a name (``class``/``class_name``/``name``, or a ``label`` column of names)
    and/or an integer index 0..K-1 (``label``/``target``/``class_index``). Classes are
    ordered by integer index when there is one, else by name (natural order).
    """
    try:
        with open(labels_file, newline="") as fh:
            reader = csv.DictReader(fh)
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)  # blank lines are skipped: count the file's own lines
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{labels_file}: cannot read labels ({exc})") from None
    if not rows:
        raise ConfigError(f"{labels_file}: no rows")
    header = list(rows[0].keys())
    path_col = _column(header, _PATH_COLUMNS)
    name_col = _column(header, _NAME_COLUMNS)
    label_col = _column(header, _LABEL_COLUMNS)
    if path_col is None or (name_col is None and label_col is None):
        raise ConfigError(
            f"{labels_file}: needs a header with a path column ({'/'.join(_PATH_COLUMNS)}) and a class column "
            f"({'/'.join(_NAME_COLUMNS + _LABEL_COLUMNS)}); has {', '.join(str(h) for h in header)}"
        )
    raw = [
        ((row.get(path_col) or "").strip(),
         (row.get(name_col) or "").strip() if name_col else "",
         (row.get(label_col) or "").strip() if label_col else "")
        for row in rows
    ]
    for line, (rel, name, label) in zip(lines, raw):
        if not rel or not (name or label):
            raise ConfigError(f"{labels_file}:{line}: empty path or class")
    indices = [_int_or_none(label) for _, _, label in raw]
    paths = [Path(rel) if Path(rel).is_absolute() else root / rel for rel, _, _ in raw]
    _check_listed_paths(labels_file, root, lines, [rel for rel, _, _ in raw], paths)
    if label_col is not None and all(i is not None for i in indices):
        by_index: dict[int, str] = {}
        for (_, name, label), i in zip(raw, indices):
            assert i is not None
            if by_index.setdefault(i, name or label) != (name or label):
                raise ConfigError(f"{labels_file}: class index {i} is both {by_index[i]!r} and {name!r}")
        if sorted(by_index) != list(range(len(by_index))):
            raise ConfigError(f"{labels_file}: integer labels must be 0..K-1, found {sorted(by_index)}")
        classes = [by_index[i] for i in range(len(by_index))]
        return [(p, int(i)) for p, i in zip(paths, indices)], classes  # type: ignore[arg-type]
    names = [name or label for _, name, label in raw]
    classes = sorted(set(names), key=_natural)
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[n]) for p, n in zip(paths, names)], classes


def list_folder(root: Path, labels_file: Path | None = None, exclude: Path | None = None) -> tuple[list[Item], list[str]]:
    """Items (path, class index) and class names of a folder of recordings."""
    root = Path(root)
    if not root.is_dir():
        raise RecordingError(f"{root}: no such folder of recordings")
    if labels_file is None and (root / LABELS_FILE).is_file():
        labels_file = root / LABELS_FILE
    if labels_file is not None:
        items, classes = read_labels(Path(labels_file), root)
        log.info("%s: %d recordings labelled by %s", root, len(items), labels_file)
        return items, classes
    files = find_recordings(root, exclude)
    if not files:
        raise RecordingError(f"{root}: no recordings ({', '.join(_suffixes())}) found")
    loose = [f for f in files if f.parent == root]
    if loose:
        raise ConfigError(
            f"{root}: {len(loose)} recording(s) such as {loose[0].name} lie outside class sub-folders and there is "
            f"no {LABELS_FILE}; put them in <class>/ folders or pass --labels FILE"
        )
    classes = sorted({f.relative_to(root).parts[0] for f in files}, key=_natural)
    index = {c: i for i, c in enumerate(classes)}
    items = [(f, index[f.relative_to(root).parts[0]]) for f in files]
    log.info("%s: %d recordings in %d class folders", root, len(items), len(classes))
    return items, classes


def _source_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    return name or "recordings"


def _disk_full(exc: BaseException, path: Path) -> None:
    """On a full disk: remove the half-written ``.partial`` of the cache ``path`` (it takes the space,
    and a failed HDF5 write may have left it unreadable) and raise ``OutputError`` naming ``path``."""
    reason = disk_full(exc)
    if reason is None:
        return
    path.with_name(path.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
    if isinstance(exc, OutputError):
        raise exc
    raise OutputError(f"{path}: {reason}") from exc


def _split(items: list[Any], classes: list[str], paper: bool, test_fraction: float, seed: int) -> dict[str, list[Any]]:
    """The train/test split of (path, label, ...) items without an official split: the authors'
    ``random_split`` (``paper``) or the seeded per-class split."""
    from dvsguard.data.cifar10dvs import random_split_train_test, split_train_test

    if paper:
        return random_split_train_test(items, classes, test_fraction=test_fraction)
    return split_train_test(items, test_fraction=test_fraction, seed=seed)


def _standard_splits(
    source: str, root: str | os.PathLike | None, download: bool, cache_dir: Path, test_fraction: float, seed: int,
    workers: int, paper: bool,
) -> tuple[Path, dict[str, list[Item]], list[str], list[tuple[str, str]]]:
    """DVS Gesture / N-MNIST / N-Caltech101: its official split (N-Caltech101: seeded per class, or
    the authors' ``random_split`` when ``paper``),
    each sample written through tonic's reader to an ``.npz`` the cache reads (see :mod:`dvsguard.data.standard`).
    Returns the staging folder (the caches' source root), the splits, the classes and the samples tonic could not read."""
    from dvsguard.data import standard

    listing = standard.list_standard(source, Path(root) if root is not None else standard.default_root(source),
                                     download=download)
    if listing.splits is not None:
        chosen = listing.splits
    else:
        parts = _split([(s.path, s.label, s) for s in listing.unsplit], listing.classes, paper, test_fraction, seed)
        chosen = {k: [s for _, _, s in v] for k, v in parts.items()}
        listing.split_rule = (f"random_split, test fraction {test_fraction}, seed 42" if paper
                              else f"seeded per-class split, test fraction {test_fraction}, seed {seed}")
    log.info("%s: %s, %s; %s", listing.root, listing.layout, listing.split_rule,
             ", ".join(f"{len(v)} {k}" for k, v in chosen.items()))
    paths, failed = standard.stage(listing, [s for v in chosen.values() for s in v], cache_dir, workers=workers)
    splits = {k: [(paths[s.rel], s.label) for s in v if s.rel in paths] for k, v in chosen.items()}
    return standard.staging_dir(cache_dir, listing), splits, listing.classes, failed


def preprocess(
    source: str,
    cache_dir: str | os.PathLike = "data_cache",
    cfg: FramingConfig | None = None,
    *,
    workers: int = 2,
    root: str | os.PathLike | None = None,
    download: bool = False,
    labels_file: str | os.PathLike | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    protocol: str = DEFAULT_PROTOCOL,
) -> PreprocessResult:
    """Build (or reuse) the train and test caches of ``source``.

    ``source`` is ``"cifar10dvs"`` (recordings under ``root``, default ``data``; downloaded
    with ``download``), ``"dvsgesture"``, ``"nmnist"`` or ``"ncaltech101"`` (under ``root``,
    default ``data/<name>``; their official split, see :mod:`dvsguard.data.standard`) or a
    folder of recordings. Raises ``RecordingError`` when no recording could be read.

    ``protocol`` (:mod:`dvsguard.protocol`) fixes the split (``seed`` is that of the per-class
    split; ``paper`` uses the authors' seed 42) and must agree with ``cfg.method`` (default
    ``cfg``: the protocol's framing with default sizes).
    """
    start = time.perf_counter()
    chosen = get_protocol(protocol)
    cfg = cfg or FramingConfig(method=chosen.framing)
    if cfg.method != chosen.framing:
        raise ConfigError(f"protocol {chosen.name!r} frames by {chosen.framing!r}, not by {cfg.method!r}")
    paper = chosen.split == "random-split"
    cache_dir = Path(cache_dir)
    from dvsguard.data import standard

    staged_failed: list[tuple[str, str]] = []
    if source == CIFAR10DVS:  # a folder of that name is reached as ./cifar10dvs
        from dvsguard.data.cifar10dvs import CIFAR10DVS_CLASSES, list_cifar10dvs

        source_root = Path(root) if root is not None else Path("data")
        items = list_cifar10dvs(source_root, download=download)
        classes = list(CIFAR10DVS_CLASSES)
        name = CIFAR10DVS
    elif source in standard.SOURCES:  # likewise, a folder named dvsgesture is reached as ./dvsgesture
        source_root, splits, classes, staged_failed = _standard_splits(
            source, root, download, cache_dir, test_fraction, seed, workers, paper)
        name = source
        items = [item for split in splits.values() for item in split]
    else:
        source_root = Path(source)
        items, classes = list_folder(source_root, Path(labels_file) if labels_file else None, exclude=cache_dir)
        name = _source_name(source_root.resolve().name)
    if not items:
        raise RecordingError(f"{source}: no recordings to preprocess")

    if source not in standard.SOURCES:
        splits = _split(items, classes, paper, test_fraction, seed)
    paths = cache_paths(cache_dir, name, splits, cfg, classes, chosen.name)
    key = cache_key(splits, cfg, classes, chosen.name)
    siblings = {k: p.name for k, p in paths.items()}
    results = {}
    for split in ("train", "test"):
        try:
            results[split] = build_cache(
                paths[split], splits[split], classes=classes, cfg=cfg, split=split, source=name,
                protocol=chosen.name, siblings=siblings, source_root=source_root, key=key, workers=workers, progress=progress,
            )
        except (OSError, OutputError) as exc:
            _disk_full(exc, paths[split])
            raise
    failed = staged_failed + results["train"].failed + results["test"].failed
    n_train, n_test = results["train"].n_samples, results["test"].n_samples
    n_items = len(items) + len(staged_failed)
    if n_train + n_test == 0:
        for p in paths.values():
            p.unlink(missing_ok=True)
        first = f" (first: {failed[0][1]})" if failed else ""
        raise RecordingError(f"{source}: none of the {n_items} recordings could be read{first}")
    if failed:
        log.warning("%d of %d recordings could not be read and were skipped", len(failed), n_items)
    return PreprocessResult(
        train=paths["train"], test=paths["test"], classes=list(classes), n_train=n_train, n_test=n_test,
        failed=failed, seconds=time.perf_counter() - start,
        reused=results["train"].reused and results["test"].reused, protocol=chosen.name,
    )
