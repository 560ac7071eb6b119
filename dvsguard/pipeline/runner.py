"""Run a pipeline: plan the stages, skip the unchanged ones, resume a killed run.

Each stage is a :mod:`dvsguard.stages` module run in this process with the ``Config`` built
from its pipeline section and earlier stages' results. Its result is stored in
``RUN_DIR/pipeline_state.json`` with a fingerprint (hash of the ``Config`` and of the content of
its input files). A stage whose fingerprint matches a finished record is skipped; a training
stage that was started with the same fingerprint but not finished resumes from its last
end-of-epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dvsguard import stages
from dvsguard.atomic import write_text
from dvsguard.errors import ConfigError, DvsguardError
from dvsguard.pipeline.config import PipelineConfig
from dvsguard.stages.base import build, command_line, config_to_json, fields

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
HASH_LIMIT = 256 * 2**20  # files above this are fingerprinted by size and mtime, not content

Results = dict[str, dict[str, Any]]


@dataclass
class Stage:
    """One step of a pipeline: ``values`` builds its ``Config`` values from earlier stages' results."""

    name: str
    group: str
    module: ModuleType
    values: Callable[[Results], dict[str, Any]]
    inputs: Callable[[Results], list[str]] = field(default=lambda results: [])
    out_dir: Path | None = None
    resumable: bool = False

    @property
    def command(self) -> str:
        """The CLI command of this stage's module (``train`` for ``train:vanilla``)."""
        return self.module.__name__.rsplit(".", 1)[-1]

    def config(self, results: Results) -> Any:
        return build(self.module.Config, self.values(results))


def _options(section: dict[str, Any], module: ModuleType, seed: int) -> dict[str, Any]:
    """The options of ``module``'s stage that a section sets; ``seed`` defaults to the pipeline's."""
    names = {f.name for f, opt, _ in fields(module.Config) if not opt.wired}
    values = {k: v for k, v in section.items() if k in names}
    if "seed" in names:
        values.setdefault("seed", seed)
    return values


EVENT_THREAT_KEYS = ("event_attacks", "budget", "per_bin_cap", "insert_only", "step_events", "netx", "write_recordings")
"""Attack options that only the events threat reads."""


def _frame_attack_options(section: dict[str, Any], seed: int) -> dict[str, Any]:
    """The attack stage's options of an ``[attack]`` section; unless it sets ``threat = "events"``, the
    event-threat keys (there the deployed stages' settings) are left out, so they neither appear in
    the float-frame attack's command line nor change its fingerprint."""
    values = _options(section, stages.attack, seed)
    if values.get("threat", "frames") != "events":
        values = {k: v for k, v in values.items() if k not in EVENT_THREAT_KEYS}
    return values


def _checkpoint(result: dict[str, Any], out_dir: Path) -> str:
    for key in ("best", "checkpoint", "last"):
        if key in result:
            return str(result[key])
    return str(out_dir / "best.pt")


def _data_stages(cfg: PipelineConfig) -> list[Stage]:
    data = cfg.data
    out: list[Stage] = []
    source = data["source"]
    if source == "synth":
        rec_dir = cfg.run_dir / "recordings"
        out.append(Stage("synth", "data", stages.synth,
                         lambda r: {"out_dir": rec_dir, **_options(data, stages.synth, cfg.seed),
                                    **({"size": data["sensor_size"]} if data.get("sensor_size") else {})}))
        source = str(rec_dir)
    out.append(Stage("preprocess", "data", stages.preprocess,
                     lambda r: {"source": source, "protocol": cfg.protocol,
                                **_options(data, stages.preprocess, cfg.seed)},
                     inputs=lambda r: [r["synth"]["out_dir"]] if "synth" in r else []))
    return out


def _black_box_source(attack: dict[str, Any], names: list[str], i: int) -> str | None:
    """The source of model ``names[i]``'s black-box rows: the named source, else the next model, else none."""
    if not attack["black_box"]:
        return None
    if attack["black_box_source"] is not None:
        return attack["black_box_source"] if attack["black_box_source"] != names[i] else None
    return names[(i + 1) % len(names)] if len(names) > 1 else None


def _cache(r: Results) -> str:
    return str(r.get("preprocess", {}).get("train", "<preprocess.train>"))


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a pipeline; their ``Config`` values read earlier stages' results."""
    run = cfg.run_dir
    out = _data_stages(cfg)
    ckpts: dict[str, Callable[[Results], str]] = {}
    for t in cfg.train:
        folder = run / "train" / t["name"]

        def train_values(r: Results, t: dict[str, Any] = t, folder: Path = folder) -> dict[str, Any]:
            init = {"init": ckpts[t["init"]](r)} if t["init"] is not None else {}
            return {"cache": _cache(r), "out": folder, "protocol": cfg.protocol, **init,
                    **_options(t, stages.train, cfg.seed)}

        def train_inputs(r: Results, t: dict[str, Any] = t) -> list[str]:
            return [_cache(r)] + ([ckpts[t["init"]](r)] if t["init"] is not None else [])

        name = f"train:{t['name']}"
        out.append(Stage(name, "train", stages.train, train_values, train_inputs, out_dir=folder, resumable=True))
        ckpts[t["name"]] = lambda r, n=name, folder=folder: _checkpoint(r[n], folder) if n in r else f"<{n}.checkpoint>"

    if cfg.attack is not None:
        a = cfg.attack
        names = a["models"] or [n for n in cfg.train_names() if n != a["black_box_source"]]
        for i, model in enumerate(names):
            folder = run / "attack" / model
            source = _black_box_source(a, names, i)

            def attack_values(r: Results, model: str = model, folder: Path = folder, source: str | None = source) -> dict[str, Any]:
                black = {"source": ckpts[source](r)} if source is not None else {}
                return {"checkpoint": ckpts[model](r), "cache": _cache(r), "out": folder, "protocol": cfg.protocol,
                        **black,
                        **_frame_attack_options(a, cfg.seed)}

            def attack_inputs(r: Results, model: str = model, source: str | None = source) -> list[str]:
                return [ckpts[model](r)] + ([ckpts[source](r)] if source else [])

            out.append(Stage(f"attack:{model}", "attack", stages.attack, attack_values, attack_inputs, out_dir=folder))
        if "event_budgets" in a:
            out += [_deployed_stage(cfg, model, ckpts[model]) for model in a["event_models"] or names]

    if cfg.analyze is not None:
        z = cfg.analyze
        analyzed = z["models"] or cfg.train_names()
        out.append(Stage("analyze", "analyze", stages.analyze,
                         lambda r: {"checkpoints": [ckpts[n](r) for n in analyzed], "cache": _cache(r),
                                    "out": run / "analyze", **_options(z, stages.analyze, cfg.seed)},
                         inputs=lambda r: [ckpts[n](r) for n in analyzed], out_dir=run / "analyze"))

    if cfg.export is not None:
        e = cfg.export

        def export_values(r: Results) -> dict[str, Any]:
            values = {"checkpoint": ckpts[e["model"]](r), "out": run / "export", "name": e["model"],
                      **_options(e, stages.export, cfg.seed)}
            if values.get("verify") or values.get("compare"):
                values["cache"] = _cache(r)
            return values

        out.append(Stage("export", "export", stages.export, export_values,
                         inputs=lambda r: [ckpts[e["model"]](r)], out_dir=run / "export"))

    if cfg.report is not None and cfg.report["enabled"]:
        out.append(Stage("report", "report", stages.report, lambda r: {"run_dir": run}, inputs=_report_inputs))
    return out


def _deployed_stage(cfg: PipelineConfig, model: str, checkpoint: Callable[[Results], str]) -> Stage:
    """``deployed:<model>``: export ``model`` into ``RUN_DIR/deployed/<model>/`` and draw its event curve there."""
    folder = cfg.run_dir / "deployed" / model
    a = cfg.attack or {}

    def values(r: Results) -> dict[str, Any]:
        return {"checkpoint": checkpoint(r), "cache": _cache(r), "out": folder, "name": model,
                "protocol": cfg.protocol, **_options(a, stages.deployed, cfg.seed)}

    return Stage(f"deployed:{model}", "attack", stages.deployed, values, lambda r: [checkpoint(r)], out_dir=folder)


def _report_inputs(results: Results) -> list[str]:
    """The report depends on every other stage's result (not on the state file's timestamps)."""
    return [json.dumps({k: v for k, v in results.items() if k != "report"}, sort_keys=True, default=str)]


def fingerprint(config: Any, inputs: list[str]) -> str:
    """sha256 over a stage's ``Config`` and the content (or size+mtime for huge files) of its inputs."""
    h = hashlib.sha256(config_to_json(config).encode())
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
    """The run folder's record of its pipeline and of started and finished stages (written atomically).

    A run folder belongs to one pipeline (its name and file): another pipeline pointed at it is
    refused before anything runs, so it cannot retrain and replace that run's checkpoints.
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        self.path = cfg.run_dir / STATE_FILE
        self.identity = {"name": cfg.name, "file": str(cfg.path.resolve())}
        self.data: dict[str, Any] = {"pipeline": self.identity, "stages": {}}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DvsguardError(f"{self.path}: run state is corrupt ({exc}); remove it to start over") from None
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise DvsguardError(f"{self.path}: run state is not a record of stages; remove it to start over")
            owner = data.get("pipeline", self.identity)
            if owner != self.identity:
                raise ConfigError(
                    f"{cfg.path}: run_dir {cfg.run_dir} holds the run of pipeline {owner.get('name')!r} "
                    f"({owner.get('file')}); give this pipeline a run_dir of its own"
                )
            self.data = {**data, "pipeline": self.identity}

    def get(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def put(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def results(self) -> Results:
        return {k: v["result"] for k, v in self.data["stages"].items() if v.get("finished")}


def _selected(stages_: list[Stage], start: str | None, only: str | None) -> set[str]:
    names = [s.name for s in stages_]

    def matches(s: Stage, key: str) -> bool:
        return s.name == key or s.group == key

    for key in (start, only):
        if key is not None and not any(matches(s, key) for s in stages_):
            raise ConfigError(f"no stage named {key!r} (stages: {', '.join(names)})")
    if only is not None:
        return {s.name for s in stages_ if matches(s, only)}
    if start is not None:
        first = next(i for i, s in enumerate(stages_) if matches(s, start))
        return {s.name for s in stages_[first:]}
    return set()


@dataclass(frozen=True)
class Step:
    """What the runner does with one stage: ``action`` is unselected, unchanged, resume or run."""

    stage: Stage
    config: Any
    fingerprint: str
    action: str
    forced: bool


def decide(stage: Stage, record: dict[str, Any], results: Results, forced: set[str], only: str | None) -> Step:
    """The one place that decides whether a stage is skipped, resumed or run."""
    config = stage.config(results)
    fp = fingerprint(config, stage.inputs(results))
    is_forced = stage.name in forced
    if only is not None and not is_forced:
        action = "unselected"
    elif not is_forced and record.get("finished") and record.get("fingerprint") == fp:
        action = "unchanged"
    elif (not is_forced and stage.resumable and record.get("fingerprint") == fp and not record.get("finished")
          and stage.out_dir is not None and (stage.out_dir / "last.pt").exists()):
        action = "resume"
    else:
        action = "run"
    return Step(stage, config, fp, action, is_forced)


PLAN_LABELS = {"unselected": "skip (not selected)", "unchanged": "skip (unchanged)", "resume": "resume", "run": "run"}
RUN_LABELS = {"unselected": "skipped", "unchanged": "skipped", "resume": "resumed", "run": "ran"}


def check_stages(cfg: PipelineConfig, stages_: list[Stage], results: Results) -> None:
    """Build every stage's ``Config`` (earlier outputs as placeholders) and run the stage's own
    ``check`` where it has one, so that a bad setting stops the pipeline before anything runs."""
    from dvsguard.errors import AttackError

    for stage in stages_:
        try:
            config = stage.config(results)
            if hasattr(stage.module, "check"):
                stage.module.check(config)
        except (ConfigError, AttackError) as exc:
            raise ConfigError(f"{cfg.path}: stage {stage.name}: {exc}") from None


def plan(cfg: PipelineConfig, start: str | None = None, only: str | None = None) -> list[dict[str, Any]]:
    """What a run would do: per stage its name, action, ``Config`` and the equivalent command line."""
    state = State(cfg)
    results = state.results()
    stages_ = build_stages(cfg)
    check_stages(cfg, stages_, results)
    forced = _selected(stages_, start, only)
    rows = []
    for stage in stages_:
        step = decide(stage, state.get(stage.name), results, forced, only)
        label = "run (forced)" if step.action == "run" and step.forced else PLAN_LABELS[step.action]
        rows.append({"stage": stage.name, "action": label, "config": json.loads(config_to_json(step.config)),
                     "command": ["dvsguard", *command_line(stage.command, step.config)]})
    return rows


def run_pipeline(cfg: PipelineConfig, start: str | None = None, only: str | None = None) -> dict[str, Any]:
    """Run the pipeline; return {"run_dir", "state", "stages": {name: action}, "results": {...}, "seconds"}."""
    t0 = time.monotonic()
    state = State(cfg)
    stages_ = build_stages(cfg)
    check_stages(cfg, stages_, state.results())
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    forced = _selected(stages_, start, only)
    actions: dict[str, str] = {}
    for stage in stages_:
        step = decide(stage, state.get(stage.name), state.results(), forced, only)
        actions[stage.name] = RUN_LABELS[step.action]
        if step.action in ("unselected", "unchanged"):
            log.info("stage %s: %s, skipped", stage.name, step.action)
            continue
        config = step.config
        if step.action == "resume":
            config = dataclasses.replace(config, resume=True)
        elif stage.resumable:  # a training run replaces its folder only once it has written a checkpoint
            config = dataclasses.replace(config, overwrite=True)
        elif stage.out_dir is not None and stage.out_dir.exists():
            shutil.rmtree(stage.out_dir)
        log.info("stage %s: dvsguard %s", stage.name, " ".join(command_line(stage.command, config)))
        started = time.time()
        state.put(stage.name, {"fingerprint": step.fingerprint, "started": started, "finished": None, "result": None})
        result = stage.module.run(config)
        if getattr(result, "exit_code", 0):
            raise DvsguardError(f"stage {stage.name} failed: {result.summary().splitlines()[-1]}")
        state.put(stage.name, {"fingerprint": step.fingerprint, "started": started, "finished": time.time(),
                               "result": result.to_json()})
    return {
        "run_dir": str(cfg.run_dir),
        "state": str(state.path),
        "stages": actions,
        "results": state.results(),
        "seconds": round(time.monotonic() - t0, 2),
    }
