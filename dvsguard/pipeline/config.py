"""Pipeline files: sections, validation and the resolved configuration.

A pipeline file is TOML. Every option of a stage's ``Config`` (:mod:`dvsguard.stages`) is a key
of that stage's section, with the same name, type and default — except the inputs and output
folders the runner wires from earlier stages (``wired`` options). A few keys belong to the
pipeline itself (below). Every key is checked before anything runs, and an error names the
file, the key and what was expected; ε may be a number or a fraction such as ``"8/255"``
(frame units, frames in [0, 1]).

```toml
[pipeline]               # name, run_dir (relative to the file's folder's parent, or absolute), seed, protocol
[data]                   # source = "synth" | "cifar10dvs" | "dvsgesture" | "nmnist" | "ncaltech101" | a folder; the options of synth and preprocess
                         # (size is the frame size; sensor_size, synth's sensor side in pixels, defaults to it)
[[train]]                # name; init = an earlier run's name to start from; the options of train
[attack]                 # models (train names), black_box (each model is the next one's source), black_box_source
                         # (one train name: the source of every model's black-box rows); attack's options and
                         # deployed's: event_budgets = [8, 32, 128] adds, per model, the event curve of its
                         # exported integer network (event_attacks, event_limit, step_events, ...); event_models
                         # (train names) draws that curve for these models instead of the attacked ones
[analyze]                # models (train names); analyze's options
[export]                 # model (a train name); export's options
[report]                 # enabled
```
A stage's ``seed`` defaults to the pipeline's ``seed``. ``protocol`` (``events`` or ``paper``, see
:mod:`dvsguard.protocol`) is the data stage's choice; training and attacks inherit it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dvsguard import stages
from dvsguard.errors import ConfigError
from dvsguard.protocol import get as get_protocol
from dvsguard.stages.base import Option, coerce, fields

REQUIRED = object()
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A [[train]] name: one folder name inside the run directory (no separators, no '..')."""

OWN_KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "pipeline": {"name": (str, REQUIRED), "run_dir": (str, None), "seed": (int, 0), "protocol": (str, "events")},
    "data": {"source": (str, REQUIRED), "sensor_size": (int, None)},
    "train": {"name": (str, REQUIRED), "init": (str, None)},
    "attack": {"models": (list, None), "black_box": (bool, True), "black_box_source": (str, None),
               "event_models": (list, None)},
    "analyze": {"models": (list, None)},
    "export": {"model": (str, REQUIRED)},
    "report": {"enabled": (bool, True)},
}
"""Keys of the pipeline itself: (type, default); a default of REQUIRED marks a mandatory key."""

SECTION_STAGES: dict[str, tuple[str, ...]] = {
    "pipeline": (), "data": ("synth", "preprocess"), "train": ("train",), "attack": ("attack", "deployed"),
    "analyze": ("analyze",), "export": ("export",), "report": (),
}
"""The stages whose options a section sets."""

PATH_KEYS = ("cache_dir", "root", "labels")
"""[data] keys that are paths relative to the pipeline's base folder."""


def stage_keys(section: str) -> dict[str, list[tuple[ModuleType, Option, Any]]]:
    """Pipeline key → the (stage module, option, type) it sets, for every non-wired option of the section's stages."""
    keys: dict[str, list[tuple[ModuleType, Option, Any]]] = {}
    for name in SECTION_STAGES[section]:
        module = stages.STAGES[name]
        for f, opt, tp in fields(module.Config):
            if not opt.wired and f.name not in OWN_KEYS[section]:
                keys.setdefault(f.name, []).append((module, opt, tp))
    return keys


@dataclass(frozen=True)
class PipelineConfig:
    """A validated pipeline file: each section holds its own keys (defaults filled in) and the stage
    options it sets (coerced to the option's type; options not given are left to the ``Config`` default)."""

    path: Path
    name: str
    run_dir: Path
    seed: int
    protocol: str
    data: dict[str, Any]
    train: list[dict[str, Any]]
    attack: dict[str, Any] | None
    analyze: dict[str, Any] | None
    export: dict[str, Any] | None
    report: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def train_names(self) -> list[str]:
        return [t["name"] for t in self.train]


def _own_value(file: Path, where: str, key: str, value: Any, expected: type) -> Any:
    names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list"}
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ConfigError(f"{file}: [{where}] key '{key}': expected {names[expected]}, got {type(value).__name__} {value!r}")
    return value


def check_section(file: Path, section: str, where: str, table: Any) -> dict[str, Any]:
    """Validate one section's table: own keys (defaults filled in) and stage options (coerced)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [{where}] must be a table, got {type(table).__name__}")
    own = OWN_KEYS[section]
    options = stage_keys(section)
    unknown = sorted(set(table) - set(own) - set(options))
    if unknown:
        raise ConfigError(f"{file}: [{where}] unknown key '{unknown[0]}' "
                          f"(expected one of: {', '.join(sorted({*own, *options}))})")
    out: dict[str, Any] = {}
    for key, (expected, default) in own.items():
        if key in table:
            out[key] = _own_value(file, where, key, table[key], expected)
        elif default is REQUIRED:
            raise ConfigError(f"{file}: [{where}] missing required key '{key}'")
        else:
            out[key] = default
    for key, targets in options.items():
        if key in table:
            out[key] = [coerce(table[key], tp, opt, f"{file}: [{where}] key '{key}'") for _, opt, tp in targets][0]
    return out


def _train_tables(file: Path, raw: dict[str, Any]) -> list[dict[str, Any]]:
    tables = raw.get("train", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list):
        raise ConfigError(f"{file}: [[train]] must be an array of tables")
    trains = [check_section(file, "train", f"train.{i}", t) for i, t in enumerate(tables)]
    names = [t["name"] for t in trains]
    for i, name in enumerate(names):
        if not PLAIN_NAME.fullmatch(name):
            raise ConfigError(f"{file}: [train.{i}] key 'name': {name!r} is not a plain name (letters, digits, '.', "
                              f"'_', '-'; no path separators): runs are folders of the run directory")
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: [[train]] names must be unique, got {names}")
    for i, t in enumerate(trains):
        if t["init"] is not None and t["init"] not in names[:i]:
            raise ConfigError(
                f"{file}: [train.{i}] key 'init': no earlier [[train]] run named {t['init']!r} "
                f"(have before it: {', '.join(names[:i]) or 'none'})"
            )
        if t.get("fixed_point") and t["init"] is None:
            raise ConfigError(f"{file}: [train.{i}] key 'fixed_point' fine-tunes a trained model: set 'init' to an earlier run")
    return trains


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; raise ConfigError naming the file, key and expectation."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: pipeline file not found")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(OWN_KEYS))
    if unknown:
        raise ConfigError(f"{file}: unknown section [{unknown[0]}] (expected: {', '.join(OWN_KEYS)})")
    for needed in ("pipeline", "data"):
        if needed not in raw:
            raise ConfigError(f"{file}: missing section [{needed}]")
    head = check_section(file, "pipeline", "pipeline", raw["pipeline"])
    get_protocol(head["protocol"], f"{file}: [pipeline] key 'protocol'")
    base = file.resolve().parent.parent if file.resolve().parent.name == "pipelines" else file.resolve().parent
    data = _resolve_data(file, check_section(file, "data", "data", raw["data"]), base)
    trains = _train_tables(file, raw)
    names = [t["name"] for t in trains]

    sections: dict[str, dict[str, Any] | None] = {
        s: check_section(file, s, s, raw[s]) if s in raw else None for s in ("attack", "analyze", "export", "report")
    }
    for section in ("attack", "analyze"):
        if sections[section] is not None:
            _check_names(file, section, "models", sections[section]["models"], names)  # type: ignore[index]
    attack = sections["attack"]
    if attack is not None and attack["event_models"] is not None:
        _check_names(file, "attack", "event_models", attack["event_models"], names)
    if attack is not None and attack["black_box_source"] is not None:
        _check_names(file, "attack", "black_box_source", [attack["black_box_source"]], names)
        if not attack["black_box"]:
            raise ConfigError(f"{file}: [attack] key 'black_box_source' names a black-box source but 'black_box' is "
                              f"false: drop one of them")
    if attack is not None:
        _check_deployed(file, attack)
    if sections["export"] is not None:
        _check_names(file, "export", "model", [sections["export"]["model"]], names)

    run_dir = Path(head["run_dir"]) if head["run_dir"] else Path("runs") / head["name"]
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    return PipelineConfig(
        path=file, name=head["name"], run_dir=run_dir, seed=head["seed"], protocol=head["protocol"], data=data,
        train=trains,
        attack=sections["attack"], analyze=sections["analyze"], export=sections["export"],
        report=sections["report"], raw=raw,
    )


def _resolve_data(file: Path, data: dict[str, Any], base: Path) -> dict[str, Any]:
    from dvsguard.data.standard import SOURCES as STANDARD_SOURCES

    source = data["source"]
    if source not in ("synth", "cifar10dvs", *STANDARD_SOURCES):
        folder = Path(source) if Path(source).is_absolute() else base / source
        if not folder.is_dir():
            raise ConfigError(f"{file}: [data] key 'source': folder {folder} does not exist")
        data["source"] = str(folder)
    data.setdefault("cache_dir", stages.preprocess.Config.__dataclass_fields__["cache_dir"].default)
    for key in PATH_KEYS:
        if data.get(key) is not None:
            data[key] = data[key] if data[key].is_absolute() else base / data[key]
    return data


def _check_deployed(file: Path, attack: dict[str, Any]) -> None:
    """Options of the deployed curve alone (``event_limit``, ``event_models``) are refused without
    ``event_budgets``, which enables it."""
    if "event_budgets" in attack:
        return
    if attack["event_models"] is not None:
        raise ConfigError(f"{file}: [attack] key 'event_models' names the models of the deployed event curve: add "
                          f"'event_budgets' to draw it")
    frames = {f.name for f, _, _ in fields(stages.attack.Config)}
    alone = [f.name for f, opt, _ in fields(stages.deployed.Config)
             if not opt.wired and f.name not in frames and f.name in attack]
    if alone:
        raise ConfigError(f"{file}: [attack] key '{alone[0]}' sets the event curve of the deployed models: add "
                          f"'event_budgets' to draw it")


def _check_names(file: Path, section: str, key: str, given: list[Any] | None, names: list[str]) -> None:
    for name in given or []:
        if name not in names:
            raise ConfigError(
                f"{file}: [{section}] key '{key}': no [[train]] run named {name!r} (have: {', '.join(names) or 'none'})"
            )
