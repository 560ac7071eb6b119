"""Run a pipeline: plan the stages, skip the unchanged ones, resume a killed run.

Each stage is one ``dvsguard`` command run as a subprocess with ``--json``; its JSON result is
stored in ``RUN_DIR/pipeline_state.json`` with a fingerprint (hash of its arguments and of the
content of its input files). A stage whose fingerprint matches a finished record is skipped; a
training stage that was started with the same fingerprint but not finished resumes (``--resume``)
from its last end-of-epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvsguard.atomic import write_text
from dvsguard.errors import ConfigError, DvsguardError
from dvsguard.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
HASH_LIMIT = 256 * 2**20  # files above this are fingerprinted by size and mtime, not content


@dataclass
class Stage:
    """One step of a pipeline: ``args`` builds the command line from earlier stages' results."""

    name: str
    group: str
    args: Callable[[dict[str, dict[str, Any]]], list[str]]
    inputs: Callable[[dict[str, dict[str, Any]]], list[str]] = field(default=lambda results: [])
    out_dir: Path | None = None
    resumable: bool = False


def _fmt(value: float) -> str:
    return repr(float(value))


def _opt(flag: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag] if value else [f"--no-{flag[2:]}"]
    if isinstance(value, list):
        return [flag, ",".join(_fmt(v) if isinstance(v, float) else str(v) for v in value)]
    if isinstance(value, float):
        return [flag, _fmt(value)]
    return [flag, str(value)]


def _checkpoint(result: dict[str, Any], out_dir: Path) -> str:
    for key in ("best", "checkpoint", "last"):
        if key in result:
            return str(result[key])
    return str(out_dir / "best.pt")


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a pipeline; argument builders read earlier stages' JSON results."""
    run = cfg.run_dir
    data = cfg.data
    stages: list[Stage] = []

    source = data["source"]
    if source == "synth":
        rec_dir = run / "recordings"
        stages.append(
            Stage(
                "synth",
                "data",
                lambda r: ["synth", str(rec_dir), *_opt("--per-class", data["per_class"]),
                           *_opt("--noise", data["noise"]), "--seed", str(cfg.seed), "--size", str(data["size"])],
            )
        )
        source = str(rec_dir)
    elif source == "cifar10dvs":
        pass

    def preprocess_args(r: dict[str, dict[str, Any]]) -> list[str]:
        args = ["preprocess", source, "--cache-dir", data["cache_dir"], "--frames", str(data["frames"]),
                "--mode", data["mode"], "--size", str(data["size"]), "--workers", str(data["workers"])]
        args += _opt("--count-cap", data["count_cap"])
        if data["source"] == "cifar10dvs":
            args += _opt("--root", data["root"]) + (["--download"] if data["download"] else [])
        return args

    stages.append(
        Stage("preprocess", "data", preprocess_args,
              inputs=lambda r: [r["synth"]["out_dir"]] if "synth" in r else [])
    )

    def cache(r: dict[str, dict[str, Any]]) -> str:
        return str(r.get("preprocess", {}).get("train", "<preprocess.train>"))

    ckpts: dict[str, Callable[[dict[str, dict[str, Any]]], str]] = {}
    for t in cfg.train:
        out = run / "train" / t["name"]

        def train_args(r: dict[str, dict[str, Any]], t: dict[str, Any] = t, out: Path = out) -> list[str]:
            args = ["train", "--cache", cache(r), "--defense", t["defense"], "--out", str(out)]
            for key in ("preset", "epochs", "batch", "lr", "optimizer", "lam", "sr_form", "eps", "attack",
                        "pgd_steps", "limit_train", "workers"):
                args += _opt("--" + key.replace("_", "-"), t[key])
            if t["augment"] is False:
                args.append("--no-augment")
            if t["init"] is not None:
                args += ["--init", ckpts[t["init"]](r)] + (["--fixed-point"] if t["fixed_point"] else [])
            args += ["--seed", str(t["seed"] if t["seed"] is not None else cfg.seed)]
            return args

        def train_inputs(r: dict[str, dict[str, Any]], t: dict[str, Any] = t) -> list[str]:
            return [cache(r)] + ([ckpts[t["init"]](r)] if t["init"] is not None else [])

        stage_name = f"train:{t['name']}"
        stages.append(Stage(stage_name, "train", train_args, inputs=train_inputs, out_dir=out, resumable=True))
        ckpts[t["name"]] = (
            lambda r, n=stage_name, out=out: _checkpoint(r[n], out) if n in r else f"<{n}.checkpoint>"
        )

    if cfg.attack is not None:
        a = cfg.attack
        names = a["models"] or cfg.train_names()
        for i, name in enumerate(names):
            out = run / "attack" / name
            source_name = names[(i + 1) % len(names)] if a["black_box"] and len(names) > 1 else None

            def attack_args(r: dict[str, dict[str, Any]], name: str = name, out: Path = out,
                            source_name: str | None = source_name) -> list[str]:
                args = ["attack", ckpts[name](r), "--cache", cache(r), "--out", str(out),
                        "--seed", str(cfg.seed)]
                args += _opt("--attacks", a["attacks"]) + _opt("--eps", a["eps"]) + _opt("--limit", a["limit"])
                args += _opt("--batch", a["batch"]) + _opt("--ensemble", a["ensemble"])
                if source_name is not None:
                    args += ["--source", ckpts[source_name](r)]
                return args

            def attack_inputs(r: dict[str, dict[str, Any]], name: str = name,
                              source_name: str | None = source_name) -> list[str]:
                return [ckpts[name](r)] + ([ckpts[source_name](r)] if source_name else [])

            stages.append(Stage(f"attack:{name}", "attack", attack_args, inputs=attack_inputs, out_dir=out))

    if cfg.analyze is not None:
        z = cfg.analyze
        analyzed = z["models"] or cfg.train_names()
        analyze_out = run / "analyze"

        def analyze_args(r: dict[str, dict[str, Any]]) -> list[str]:
            args = ["analyze", *[ckpts[n](r) for n in analyzed], "--cache", cache(r), "--split", z["split"],
                    "--out", str(analyze_out), "--seed", str(cfg.seed)]
            return args + _opt("--limit", z["limit"]) + _opt("--eps", z["eps"])

        stages.append(Stage("analyze", "analyze", analyze_args,
                            inputs=lambda r: [ckpts[n](r) for n in analyzed], out_dir=analyze_out))

    if cfg.export is not None:
        e = cfg.export
        export_out = run / "export"

        def export_args(r: dict[str, dict[str, Any]]) -> list[str]:
            args = ["export", ckpts[e["model"]](r), "--out", str(export_out), "--name", e["name"] or e["model"]]
            if e["verify"] or e["compare"]:
                args += ["--cache", cache(r)] + (["--verify", str(e["verify"])] if e["verify"] else [])
            return args + (["--compare"] if e["compare"] else [])

        stages.append(Stage("export", "export", export_args, inputs=lambda r: [ckpts[e["model"]](r)],
                            out_dir=export_out))

    if cfg.report is not None and cfg.report["enabled"]:
        stages.append(Stage("report", "report", lambda r: ["report", str(run)], inputs=_report_inputs))
    return stages


def _report_inputs(results: dict[str, dict[str, Any]]) -> list[str]:
    """The report depends on every other stage's result (not on the state file's timestamps)."""
    return [json.dumps({k: v for k, v in results.items() if k != "report"}, sort_keys=True, default=str)]


def fingerprint(args: list[str], inputs: list[str]) -> str:
    """sha256 over a stage's arguments and the content (or size+mtime for huge files) of its inputs."""
    h = hashlib.sha256(json.dumps(args).encode())
    for item in inputs:
        h.update(item.encode())
        if item.startswith(("{", "<")) or len(item) > 4096:  # a value (or a placeholder), not a path
            continue
        p = Path(item)
        if p.is_file():
            st = p.stat()
            if st.st_size <= HASH_LIMIT:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(2**20), b""):
                        h.update(chunk)
            else:
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class State:
    """The run folder's record of started and finished stages (written atomically)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DvsguardError(f"{self.path}: run state is corrupt ({exc}); remove it to start over") from None

    def get(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def results(self) -> dict[str, dict[str, Any]]:
        return {k: v["result"] for k, v in self.data["stages"].items() if v.get("finished")}


def _selected(stages: list[Stage], start: str | None, only: str | None) -> set[str]:
    names = [s.name for s in stages]

    def matches(s: Stage, key: str) -> bool:
        return s.name == key or s.group == key

    for key in (start, only):
        if key is not None and not any(matches(s, key) for s in stages):
            raise ConfigError(f"no stage named {key!r} (stages: {', '.join(names)})")
    if only is not None:
        return {s.name for s in stages if matches(s, only)}
    if start is not None:
        first = next(i for i, s in enumerate(stages) if matches(s, start))
        return {s.name for s in stages[first:]}
    return set()


def plan(cfg: PipelineConfig, start: str | None = None, only: str | None = None) -> list[dict[str, Any]]:
    """What a run would do: per stage its name, action (run / resume / skip) and command line."""
    state = State(cfg.run_dir)
    results = state.results()
    forced = _selected(build_stages(cfg), start, only)
    rows = []
    for stage in build_stages(cfg):
        args = stage.args(results)
        record = state.get(stage.name)
        fp = fingerprint(args, stage.inputs(results))
        if only is not None and stage.name not in forced:
            action = "skip (not selected)"
        elif stage.name in forced:
            action = "run (forced)"
        elif record.get("finished") and record.get("fingerprint") == fp:
            action = "skip (unchanged)"
        elif stage.resumable and record.get("fingerprint") == fp and _has_resume_point(stage):
            action = "resume"
        else:
            action = "run"
        rows.append({"stage": stage.name, "action": action, "command": ["dvsguard", *args]})
    return rows


def _has_resume_point(stage: Stage) -> bool:
    return stage.out_dir is not None and (stage.out_dir / "last.pt").exists()


def _run_command(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dvsguard", *args, "--json"]
    log.info("$ dvsguard %s", " ".join(args))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            last = line
        sys.stderr.write(line)
    code = proc.wait()
    if code != 0:
        raise DvsguardError(f"stage command failed with exit code {code}: dvsguard {' '.join(args)}")
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        raise DvsguardError(f"stage command printed no JSON result: dvsguard {' '.join(args)}") from None
    if not isinstance(result, dict):
        raise DvsguardError(f"stage command's JSON result is not an object: dvsguard {' '.join(args)}")
    return result


def run_pipeline(cfg: PipelineConfig, start: str | None = None, only: str | None = None) -> dict[str, Any]:
    """Run the pipeline; return {"run_dir", "stages": {name: action}, "results": {...}, "seconds"}."""
    t0 = time.monotonic()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    state = State(cfg.run_dir)
    stages = build_stages(cfg)
    forced = _selected(stages, start, only)
    actions: dict[str, str] = {}
    for stage in stages:
        results = state.results()
        if only is not None and stage.name not in forced:
            actions[stage.name] = "skipped"
            continue
        args = stage.args(results)
        fp = fingerprint(args, stage.inputs(results))
        record = state.get(stage.name)
        if stage.name not in forced and record.get("finished") and record.get("fingerprint") == fp:
            log.info("stage %s: unchanged, skipped", stage.name)
            actions[stage.name] = "skipped"
            continue
        run_args = list(args)
        if stage.resumable and record.get("fingerprint") == fp and not record.get("finished") \
                and _has_resume_point(stage) and stage.name not in forced:
            run_args.append("--resume")
            actions[stage.name] = "resumed"
        else:
            if stage.out_dir is not None and stage.out_dir.exists():
                shutil.rmtree(stage.out_dir)
            actions[stage.name] = "ran"
        state.put(stage.name, {"fingerprint": fp, "started": time.time(), "finished": None, "result": None})
        result = _run_command(run_args)
        state.put(stage.name, {"fingerprint": fp, "started": record.get("started", time.time()),
                               "finished": time.time(), "result": result})
    return {
        "run_dir": str(cfg.run_dir),
        "state": str(state.path),
        "stages": actions,
        "results": state.results(),
        "seconds": round(time.monotonic() - t0, 2),
    }
