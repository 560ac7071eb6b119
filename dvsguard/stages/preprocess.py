"""preprocess: recordings → a train and a test HDF5 frame cache (9:1 per class or the authors' random_split,
or a dataset's official split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsguard.data.frames import DEFAULT_COUNT_CAP, FRAME_MODES
from dvsguard.protocol import DEFAULT_PROTOCOL, PROTOCOLS
from dvsguard.stages.base import Result, check_output, option


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard preprocess``."""

    source: str = option(help="'cifar10dvs', 'dvsgesture', 'nmnist', 'ncaltech101', or a folder of recordings "
                              "(labels.csv or class sub-folders).",
                         argument=True, wired=True)
    cache_dir: Path = option(Path("data_cache"), "Folder of the frame caches.")
    frames: int = option(10, "Frames T per recording.", min=1)
    mode: str = option("events", "events: equal event counts per frame; time: equal time spans.", choices=FRAME_MODES)
    size: int = option(48, "Frame height and width in pixels.", min=1)
    count_cap: int = option(DEFAULT_COUNT_CAP, "Clip event counts per pixel at N (frames = count/N in [0, 1]; "
                                               "events protocol only).", min=1, max=255)
    protocol: str = option(DEFAULT_PROTOCOL, "events: tonic Downsample, counts/count_cap, 9:1 per class; paper: the "
                                             "authors' SpikingJelly frames resized bilinearly (raw counts) and their "
                                             "seeded random_split.", choices=PROTOCOLS,
                           wired=True)
    workers: int = option(2, "Processes reading and framing recordings.", min=1)
    root: Path | None = option(None, "cifar10dvs, dvsgesture, nmnist, ncaltech101: folder holding (or to receive) "
                                     "the recordings (default: data, resp. data/<name>).")
    download: bool = option(False, "cifar10dvs, dvsgesture, nmnist, ncaltech101: download/extract when not on disk.")
    labels: Path | None = option(None, "CSV of path,class for a folder (default: its labels.csv).")


@dataclass
class PreprocessStageResult(Result):
    """The two caches (paths) and what went into them; ``failed`` lists unreadable recordings."""

    train: str
    test: str
    classes: list[str]
    n_train: int
    n_test: int
    failed: list[dict[str, Any]]
    seconds: float
    reused: bool
    protocol: str

    def summary(self) -> str:
        return (f"protocol: {self.protocol}\n"
                f"train: {self.train} ({self.n_train} samples)\ntest:  {self.test} ({self.n_test} samples)\n"
                f"classes: {', '.join(self.classes)}\nunreadable recordings skipped: {len(self.failed)}")


def run(config: Config) -> PreprocessStageResult:
    """Frame ``source`` into ``cache_dir`` (reusing finished caches, resuming partial ones)."""
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.protocol import get

    check_output(config.cache_dir, "--cache-dir", folder=True)
    method = get(config.protocol, "--protocol").framing
    framing = FramingConfig(n_frames=config.frames, mode=config.mode, height=config.size, width=config.size,
                            count_cap=config.count_cap if method == "downsample" else None, method=method)
    done = preprocess(config.source, config.cache_dir, framing, workers=config.workers, root=config.root,
                      download=config.download, labels_file=config.labels, protocol=config.protocol)
    return PreprocessStageResult(**done.to_json())
