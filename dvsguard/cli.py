"""The ``dvsguard`` command line: one command per stage; it only parses and delegates.

Each stage command's options are generated from the fields of that stage's ``Config``
(:mod:`dvsguard.stages`): the CLI builds the ``Config`` and calls the stage's ``run``.

Every command takes ``--json``: its last line of stdout is then one JSON object with the
paths it wrote and the figures it measured. Library errors (``DvsguardError``) become a
one-line message and exit code 1; bad arguments a one-line message and exit code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import typer

from dvsguard import stages
from dvsguard.errors import ConfigError, DvsguardError
from dvsguard.stages.base import Option, base_type
from dvsguard.units import eps_label

app = typer.Typer(
    name="dvsguard",
    help="Event-camera recordings to adversarially robust spiking networks for Loihi.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object (paths written, figures measured) as the last line.")


def _emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print a command's result: a human summary, then (with ``--json``) one JSON line."""
    if human is not None and not as_json:
        typer.echo(human(result))
    if as_json:
        typer.echo(json.dumps(result, default=str))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    _setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps usage errors to exit 2 and library errors to exit 1, one line each."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--debug"]
    try:
        code = app(args=args, prog_name="dvsguard", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("dvsguard: aborted\n")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        message = " ".join(exc.format_message().split())
        sys.stderr.write(f"dvsguard: error: {message}\n")
        sys.exit(exc.exit_code)
    except DvsguardError as exc:
        if debug:
            raise
        sys.stderr.write(f"dvsguard: error: {exc}\n")
        sys.exit(1)
    except OSError as exc:  # a write or read the library did not expect to fail: one line naming the file
        if debug:
            raise
        sys.stderr.write(f"dvsguard: error: {_os_error(exc)}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("dvsguard: interrupted\n")
        sys.exit(130)


def _os_error(exc: OSError) -> str:
    """``<path>: no space left on device`` (or the system's reason) for an OSError, on one line."""
    from dvsguard.atomic import disk_full

    reason = disk_full(exc) or (exc.strerror or " ".join(str(exc).split()) or type(exc).__name__).lower()
    where = exc.filename if exc.filename is not None else _h5_filename(str(exc))
    return f"{where}: {reason}" if where else reason


def _h5_filename(text: str) -> str | None:
    """The file an HDF5 write error names (``filename = '...'``), or None."""
    import re

    found = re.search(r"filename = '([^']*)'", text)
    return found.group(1) if found else None


def _cli_type(tp: Any, opt: Option) -> Any:
    """The type Typer parses for a ``Config`` field: lists and ε are given as text (``8/255,4/255``)."""
    base, nullable = base_type(tp)
    if opt.argument and typing.get_origin(base) is tuple:
        return list[typing.get_args(base)[0]]  # type: ignore[misc]
    if opt.kind != "value" or typing.get_origin(base) is tuple:
        base = str
    return base | None if nullable else base


def _cli_default(value: Any, opt: Option) -> Any:
    if value is dataclasses.MISSING:
        return ...
    if opt.kind == "eps" and value is not None:
        return eps_label(value)
    if isinstance(value, tuple):
        return ",".join(eps_label(v) if opt.kind == "eps_list" else str(v) for v in value)
    return value


def _parameter(f: dataclasses.Field[Any], opt: Option, tp: Any) -> inspect.Parameter:
    default = _cli_default(f.default, opt)
    if opt.argument:
        info = typer.Argument(default, help=opt.help, show_default=default is not ...)
    else:
        flag = opt.flag or "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if base_type(tp)[0] is bool else [flag]
        info = typer.Option(default, *decls, help=opt.help)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_cli_type(tp, opt))


def stage_command(name: str, module: Any) -> Callable[..., None]:
    """A Typer command whose options are the fields of ``module.Config``; it builds the Config and calls ``run``."""

    def command(**values: Any) -> None:
        as_json = values.pop("as_json")
        try:
            config = stages.base.build(module.Config, {k: v for k, v in values.items() if v is not None})
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from None
        result = module.run(config)
        if getattr(result, "rank", 0) != 0:  # under torchrun only rank 0 reports
            return
        _emit(result.to_json(), as_json, lambda _: result.summary())
        if getattr(result, "exit_code", 0):
            raise typer.Exit(result.exit_code)

    params = [_parameter(f, opt, tp) for f, opt, tp in stages.base.fields(module.Config)]
    params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=JsonOpt, annotation=bool))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name
    about = (module.__doc__ or "").split(":", 1)[-1].strip()
    command.__doc__ = about[:1].upper() + about[1:]
    return command


for _name, _module in stages.STAGES.items():
    app.command(_name)(stage_command(_name, _module))


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline file (TOML), e.g. pipelines/quickstart.toml."),
    from_stage: str = typer.Option(None, "--from", help="Rerun from this stage (or group: data, train, attack, ...) on."),
    only: str = typer.Option(None, "--only", help="Rerun only this stage (or group)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a pipeline of stages; unchanged stages are skipped, a killed run resumes."""
    from dvsguard.pipeline import load_pipeline, plan, run_pipeline

    if from_stage and only:
        raise typer.BadParameter("give --from or --only, not both")
    cfg = load_pipeline(pipeline)
    if dry_run:
        rows = plan(cfg, start=from_stage, only=only)
        _emit(
            {"pipeline": str(cfg.path), "run_dir": str(cfg.run_dir), "plan": rows},
            as_json,
            lambda r: "\n".join(f"{row['action']:<20} {row['stage']:<22} {' '.join(row['command'])}" for row in r["plan"]),
        )
        return
    result = run_pipeline(cfg, start=from_stage, only=only)
    _emit(result, as_json, lambda r: "\n".join(f"{k:<22} {v}" for k, v in r["stages"].items()) + f"\nrun folder: {r['run_dir']}")


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print the dvsguard version."""
    from dvsguard import __version__

    _emit({"version": __version__}, as_json, lambda r: f"dvsguard {r['version']}")
