"""Pipeline files: schema, validation and the resolved configuration.

A pipeline file is TOML with the sections below; every key is checked before anything runs, and
an error names the file, the key and what was expected. Fractions such as ``"8/255"`` are accepted
wherever an ε is asked for (ε in frame units, frames in [0, 1]).

```toml
[pipeline]               # name, run_dir (relative to the file's folder's parent or absolute), seed
[data]                   # source = "synth" | "cifar10dvs" | a folder; framing; cache_dir
[[train]]                # one table per training run: name, defense, preset, epochs, ...;
                         # init = an earlier run's name to start from, fixed_point = true to
                         # fine-tune it in Loihi 2 fixed point
[attack]                 # attacks, eps, limit, black_box (every trained model attacks every other)
[analyze]                # models (train names), split, limit
[export]                 # model (a train name), verify (samples checked in Lava)
[report]                 # enabled
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from dvsguard.errors import ConfigError

# key -> (type(s), default). A default of REQUIRED marks a mandatory key.
REQUIRED = object()
Number = (int, float)

SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "pipeline": {
        "name": (str, REQUIRED),
        "run_dir": (str, None),
        "seed": (int, 0),
    },
    "data": {
        "source": (str, REQUIRED),
        "per_class": (int, None),
        "noise": (Number, None),
        "root": (str, None),
        "download": (bool, False),
        "frames": (int, 10),
        "mode": (str, "events"),
        "size": (int, 48),
        "count_cap": (int, None),
        "cache_dir": (str, "data_cache"),
        "workers": (int, 2),
    },
    "train": {
        "name": (str, REQUIRED),
        "defense": (str, REQUIRED),
        "preset": (str, "small"),
        "epochs": (int, 200),
        "batch": (int, 24),
        "lr": (Number, None),
        "optimizer": (str, None),
        "augment": (bool, None),
        "lam": (Number, None),
        "sr_form": (str, None),
        "eps": ((str, int, float), None),
        "attack": (str, None),
        "pgd_steps": (int, None),
        "seed": (int, None),
        "limit_train": (int, None),
        "workers": (int, None),
        "init": (str, None),
        "fixed_point": (bool, False),
    },
    "attack": {
        "attacks": (list, None),
        "eps": (list, None),
        "limit": (int, None),
        "batch": (int, None),
        "ensemble": (bool, None),
        "black_box": (bool, True),
        "models": (list, None),
    },
    "analyze": {
        "models": (list, None),
        "split": (str, "test"),
        "limit": (int, None),
        "eps": (list, None),
    },
    "export": {
        "model": (str, REQUIRED),
        "verify": (int, 0),
        "compare": (bool, True),
        "name": (str, None),
    },
    "report": {
        "enabled": (bool, True),
    },
}

STAGE_SECTIONS = ("data", "train", "attack", "analyze", "export", "report")
DATA_MODES = ("events", "time")


def parse_eps(value: str | int | float, where: str) -> float:
    """An ε given as a number or a fraction string (``"8/255"``) → float in frame units."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number or a fraction like '8/255', got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(value.strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{where}: expected a number or a fraction like '8/255', got {value!r}") from None


@dataclass(frozen=True)
class PipelineConfig:
    """A validated pipeline file: ``sections`` holds each section with defaults filled in."""

    path: Path
    name: str
    run_dir: Path
    seed: int
    data: dict[str, Any]
    train: list[dict[str, Any]]
    attack: dict[str, Any] | None
    analyze: dict[str, Any] | None
    export: dict[str, Any] | None
    report: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def train_names(self) -> list[str]:
        return [t["name"] for t in self.train]


def _type_name(expected: Any) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list"}
    return " or ".join(sorted({names.get(k, k.__name__) for k in kinds}))


def _check_table(file: Path, section: str, table: Any, schema: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [{section}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ConfigError(
            f"{file}: [{section}] unknown key '{unknown[0]}' (expected one of: {', '.join(sorted(schema))})"
        )
    out: dict[str, Any] = {}
    for key, (expected, default) in schema.items():
        if key not in table:
            if default is REQUIRED:
                raise ConfigError(f"{file}: [{section}] missing required key '{key}' ({_type_name(expected)})")
            out[key] = default
            continue
        value = table[key]
        kinds = expected if isinstance(expected, tuple) else (expected,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            raise ConfigError(
                f"{file}: [{section}] key '{key}': expected {_type_name(expected)}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; raise ConfigError naming the file, key and expectation."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: pipeline file not found")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{file}: unknown section [{unknown[0]}] (expected: {', '.join(SCHEMA)})")
    for needed in ("pipeline", "data"):
        if needed not in raw:
            raise ConfigError(f"{file}: missing section [{needed}]")
    head = _check_table(file, "pipeline", raw["pipeline"], SCHEMA["pipeline"])
    data = _check_table(file, "data", raw["data"], SCHEMA["data"])
    base = file.resolve().parent.parent if file.resolve().parent.name == "pipelines" else file.resolve().parent
    data = _resolve_data(file, data, base)

    trains_raw = raw.get("train", [])
    if isinstance(trains_raw, dict):
        trains_raw = [trains_raw]
    if not isinstance(trains_raw, list):
        raise ConfigError(f"{file}: [[train]] must be an array of tables")
    trains = [_check_table(file, f"train.{i}", t, SCHEMA["train"]) for i, t in enumerate(trains_raw)]
    names = [t["name"] for t in trains]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: [[train]] names must be unique, got {names}")
    for i, t in enumerate(trains):
        if t["eps"] is not None:
            t["eps"] = parse_eps(t["eps"], f"{file}: [train.{i}] key 'eps'")
        if t["epochs"] < 1 or t["batch"] < 1:
            raise ConfigError(f"{file}: [train.{i}] epochs and batch must be positive")
        if t["init"] is not None and t["init"] not in names[:i]:
            raise ConfigError(
                f"{file}: [train.{i}] key 'init': no earlier [[train]] run named {t['init']!r} "
                f"(have before it: {', '.join(names[:i]) or 'none'})"
            )
        if t["fixed_point"] and t["init"] is None:
            raise ConfigError(f"{file}: [train.{i}] key 'fixed_point' fine-tunes a trained model: set 'init' to an earlier run")

    sections: dict[str, dict[str, Any] | None] = {}
    for section in ("attack", "analyze", "export", "report"):
        sections[section] = (
            _check_table(file, section, raw[section], SCHEMA[section]) if section in raw else None
        )
    attack = sections["attack"]
    if attack is not None:
        if attack["eps"] is not None:
            attack["eps"] = [parse_eps(e, f"{file}: [attack] key 'eps'") for e in attack["eps"]]
        _check_names(file, "attack", "models", attack["models"], names)
    if sections["analyze"] is not None:
        analyze = sections["analyze"]
        _check_names(file, "analyze", "models", analyze["models"], names)
        if analyze["eps"] is not None:
            analyze["eps"] = [parse_eps(e, f"{file}: [analyze] key 'eps'") for e in analyze["eps"]]
    if sections["export"] is not None:
        _check_names(file, "export", "model", [sections["export"]["model"]], names)

    run_dir = Path(head["run_dir"]) if head["run_dir"] else Path("runs") / head["name"]
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    return PipelineConfig(
        path=file,
        name=head["name"],
        run_dir=run_dir,
        seed=head["seed"],
        data=data,
        train=trains,
        attack=sections["attack"],
        analyze=sections["analyze"],
        export=sections["export"],
        report=sections["report"],
        raw=raw,
    )


def _resolve_data(file: Path, data: dict[str, Any], base: Path) -> dict[str, Any]:
    if data["mode"] not in DATA_MODES:
        raise ConfigError(f"{file}: [data] key 'mode': expected one of {DATA_MODES}, got {data['mode']!r}")
    source = data["source"]
    if source not in ("synth", "cifar10dvs"):
        folder = Path(source) if Path(source).is_absolute() else base / source
        if not folder.is_dir():
            raise ConfigError(f"{file}: [data] key 'source': folder {folder} does not exist")
        data["source"] = str(folder)
    if data["root"] is not None:
        root = Path(data["root"])
        data["root"] = str(root if root.is_absolute() else base / root)
    cache_dir = Path(data["cache_dir"])
    data["cache_dir"] = str(cache_dir if cache_dir.is_absolute() else base / cache_dir)
    return data


def _check_names(file: Path, section: str, key: str, given: list[Any] | None, names: list[str]) -> None:
    for name in given or []:
        if name not in names:
            raise ConfigError(
                f"{file}: [{section}] key '{key}': no [[train]] run named {name!r} (have: {', '.join(names) or 'none'})"
            )
