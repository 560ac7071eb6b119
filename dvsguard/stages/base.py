"""What every stage shares: option fields, value coercion, and the Result base.

A stage is a module of this package with a frozen, keyword-only ``Config`` dataclass whose
fields are declared with :func:`option` (default, one-line help with units, CLI spelling) and a
``run(config) -> Result``. The command line (``dvsguard.cli``) and the pipeline runner
(``dvsguard.pipeline``) both build a ``Config`` through :func:`build`, so a value given as a CLI
string (``"8/255"``, ``"clean,fgsm"``) or as a TOML value (``"8/255"``, ``["clean", "fgsm"]``)
goes through the same checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dvsguard.errors import ConfigError, OutputError
from dvsguard.units import eps_label, parse_eps, parse_eps_list

Kind = Literal["value", "eps", "eps_list", "list"]
SEED_MAX = 2**32 - 1  # seeds are given to numpy and torch; every stage takes 0 … 2³²−1
META = "dvsguard"


@dataclass(frozen=True)
class Option:
    """How one ``Config`` field is given.

    Attributes:
        help: one line for ``--help`` (units included).
        flag: the CLI spelling (default ``--field-name``); unused for an argument.
        kind: ``eps`` / ``eps_list`` (ε in frame units, fractions accepted), ``list`` (comma list
            on the CLI, a TOML array in a pipeline) or ``value``.
        argument: a positional CLI argument instead of an option.
        min, max: inclusive bounds of a number.
        above: an exclusive lower bound (a learning rate must be > 0).
        wired: set by the pipeline runner from earlier stages' outputs (an input path, an output
            folder), so not a pipeline key.
        choices: the allowed values of a string.
        allow_zero: an ε list that may contain 0 (a curve's clean point).
    """

    help: str
    flag: str | None = None
    kind: Kind = "value"
    argument: bool = False
    min: float | None = None
    max: float | None = None
    above: float | None = None
    wired: bool = False
    choices: tuple[str, ...] | None = None
    allow_zero: bool = False


def option(default: Any = dataclasses.MISSING, help: str = "", **spec: Any) -> Any:
    """A ``Config`` field with its default (omit it for a required one) and its :class:`Option`."""
    return dataclasses.field(default=default, metadata={META: Option(help=help, **spec)})


def fields(config_cls: type) -> list[tuple[dataclasses.Field[Any], Option, Any]]:
    """(field, option, resolved type) of every field of a stage's ``Config``, in order."""
    hints = typing.get_type_hints(config_cls)
    return [(f, f.metadata[META], hints[f.name]) for f in dataclasses.fields(config_cls)]


def base_type(tp: Any) -> tuple[Any, bool]:
    """(type without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _number(value: Any, tp: type, where: str) -> int | float:
    """An int (no float, no boolean) or a float (int or float, not NaN) from a value or its text."""
    expected = "an integer" if tp is int else "a number"
    if isinstance(value, str):
        try:
            value = tp(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    allowed = (int,) if tp is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or value != value:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return tp(value)


def _scalar(value: Any, tp: Any, opt: Option, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        value = _number(value, tp, where)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if opt.choices is not None and value not in opt.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(opt.choices)}, got {value!r}")
    elif tp is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        value = Path(value)
    if opt.above is not None and value <= opt.above:
        raise ConfigError(f"{where}: must be > {opt.above:g}, got {value!r}")
    if opt.min is not None and value < opt.min:
        raise ConfigError(f"{where}: must be >= {opt.min:g}, got {value!r}")
    if opt.max is not None and value > opt.max:
        raise ConfigError(f"{where}: must be <= {opt.max:g}, got {value!r}")
    return value


def coerce(value: Any, tp: Any, opt: Option, where: str) -> Any:
    """A CLI string or TOML value → the field's type, or ``ConfigError`` naming ``where``."""
    base, nullable = base_type(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where}: a value is required")
    if opt.kind == "eps":
        return parse_eps(value, where)
    if opt.kind == "eps_list":
        return parse_eps_list(value, where, allow_zero=opt.allow_zero)
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        if isinstance(value, str):
            items: list[Any] = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_scalar(v, item_type, opt, where) for v in items)
    return _scalar(value, base, opt, where)


def build(config_cls: type, values: dict[str, Any], where: str = "") -> Any:
    """A stage's ``Config`` from raw values (CLI strings or TOML); unknown keys are a ``ConfigError``."""
    spec = {f.name: (o, tp) for f, o, tp in fields(config_cls)}
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise ConfigError(f"{prefix}unknown option {unknown[0]!r} (expected: {', '.join(spec)})")
    kwargs = {}
    for name, value in values.items():
        opt, tp = spec[name]
        label = f"{where} key {name!r}" if where else (opt.flag or "--" + name.replace("_", "-"))
        kwargs[name] = coerce(value, tp, opt, label)
    missing = [f.name for f, _, _ in fields(config_cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
    if missing:
        raise ConfigError(f"{prefix}missing required option {missing[0]!r}")
    return config_cls(**kwargs)


def jsonable(value: Any) -> Any:
    """Paths → str, tuples → lists, dataclasses → dicts, recursively (for JSON and fingerprints)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def config_to_json(config: Any) -> str:
    """A ``Config`` as JSON text (for a child process or a fingerprint)."""
    return json.dumps(jsonable(config), sort_keys=True)


def config_from_json(config_cls: type, text: str) -> Any:
    """Inverse of :func:`config_to_json`."""
    return build(config_cls, json.loads(text))


def _text(value: Any, opt: Option) -> str:
    """A value as typed on the command line: ε as ``k/255`` when that is exact, floats in full."""
    if opt.kind in ("eps", "eps_list") and isinstance(value, float) and parse_eps(eps_label(value), allow_zero=True) == value:
        return eps_label(value)
    return repr(value) if isinstance(value, float) else str(value)


def command_line(command: str, config: Any) -> list[str]:
    """The ``dvsguard`` arguments that build ``config`` (options at their default left out)."""
    args = [command]
    for f, opt, tp in fields(type(config)):
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if isinstance(value, (list, tuple)):
            text = [",".join(_text(v, opt) for v in value)]
        elif isinstance(value, bool):
            args.append(f"--{'' if value else 'no-'}{(opt.flag or '--' + f.name.replace('_', '-'))[2:]}")
            continue
        else:
            text = [_text(value, opt)]
        if opt.argument:
            args += [str(v) for v in value] if isinstance(value, (list, tuple)) else text
        elif value is not None:
            args += [opt.flag or "--" + f.name.replace("_", "-"), *text]
    return args


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path with none)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def check_output(path: Path | None, flag: str, *, folder: bool) -> None:
    """Refuse an output path of the wrong kind before a stage does any work (``OutputError``).

    ``folder``: the path must be a folder or not exist yet; otherwise a file (not a folder).
    Either way a file where one of its parent folders should be is refused too.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not folder:
        raise OutputError(f"{path}: {flag} names a folder; expected a file name")
    if os.path.lexists(path) and not path.is_dir() and folder:
        raise OutputError(f"{path}: {flag} names an existing file; expected a folder")
    above = _first_existing(path.parent)
    if not above.is_dir():
        raise OutputError(f"{above}: is a file, so {flag} {path} cannot be created under it")


@dataclass
class Result:
    """A stage's outcome: subclasses add the paths written and the figures measured.

    A subclass may carry ``rank`` (this process's rank under ``torchrun``: only rank 0 reports)
    and ``exit_code`` (non-zero when the stage ran but its outcome is a failure: files that
    failed to read, Lava disagreeing with the integer simulator).
    """

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return jsonable(self)

    def summary(self) -> str:
        """A few lines for a person at a terminal."""
        return json.dumps(self.to_json(), indent=2, default=str)
