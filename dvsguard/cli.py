"""The ``dvsguard`` command line: one command per stage; it only parses and delegates.

Every command takes ``--json``: its last line of stdout is then one JSON object with the
paths it wrote and the figures it measured. Library errors (``DvsguardError``) become a
one-line message and exit code 1; bad arguments a one-line message and exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import typer

from dvsguard.errors import DvsguardError

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
        app(args=args, prog_name="dvsguard", standalone_mode=False)
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
    except KeyboardInterrupt:
        sys.stderr.write("dvsguard: interrupted\n")
        sys.exit(130)


@app.command()
def version(as_json: bool = JsonOpt) -> None:
    """Print the dvsguard version."""
    from dvsguard import __version__

    _emit({"version": __version__}, as_json, lambda r: f"dvsguard {r['version']}")


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
