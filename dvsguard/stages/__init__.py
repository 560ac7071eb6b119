"""The stages of dvsguard, one module each: a frozen ``Config`` (every option, its default and help)
and ``run(config) -> Result``. The CLI and the pipeline runner both go through them; the maths
stays in ``data``, ``snn``, ``train``, ``attack``, ``export`` and ``analyze``.

Importing this package imports no heavy library (torch, h5py, matplotlib, Lava): each ``run``
imports what it needs.
"""

from types import ModuleType

from dvsguard.stages import analyze, attack, deployed, export, predict, preprocess, report, synth, train

STAGES: dict[str, ModuleType] = {
    "synth": synth,
    "preprocess": preprocess,
    "train": train,
    "attack": attack,
    "deployed": deployed,
    "export": export,
    "predict": predict,
    "analyze": analyze,
    "report": report,
}

__all__ = ["STAGES"]
