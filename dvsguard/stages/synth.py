"""synth: the embedded dataset — a simulated DVS watching handwritten digits move in saccades."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dvsguard.stages.base import SEED_MAX, Result, option


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of ``dvsguard synth``."""

    out_dir: Path = option(help="Folder to write the recordings into (new, empty, or a previous synth output).",
                           argument=True, wired=True)
    per_class: int = option(200, "Recordings per class (10 digit classes).", min=1)
    seed: int = option(0, "Seed of every random choice (same seed, same files).", min=0, max=SEED_MAX)
    size: int = option(48, "Sensor width and height in pixels.", min=16, max=512)
    noise: float = option(2.0, "Background-activity noise, events per pixel per second.", min=0.0)
    workers: int = option(2, "Processes simulating recordings (the files do not depend on it).", min=1)


@dataclass
class SynthResult(Result):
    """The recordings written: ``out_dir`` holds class folders of ``.npz`` files and ``labels.csv``."""

    out_dir: str
    n_recordings: int
    classes: list[str]
    n_events: int
    sensor_size: list[int]
    seconds: float
    labels: str = field(default="")

    def summary(self) -> str:
        return (f"wrote {self.n_recordings} recordings ({self.n_events} events) of {len(self.classes)} classes "
                f"to {self.out_dir} in {self.seconds:.1f} s")


def run(config: Config) -> SynthResult:
    """Simulate ``per_class`` recordings of each digit into ``out_dir``."""
    from dvsguard.data.synth import SynthConfig, make_digits

    made = make_digits(config.out_dir, SynthConfig(per_class=config.per_class, seed=config.seed, size=config.size,
                                                   noise=config.noise), workers=config.workers)
    return SynthResult(**made, labels=str(Path(made["out_dir"]) / "labels.csv"))
