"""One face per stage: the CLI options, the pipeline keys and the stage ``Config`` are one list."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from dvsguard import stages
from dvsguard.cli import app
from dvsguard.errors import ConfigError
from dvsguard.pipeline import load_pipeline, plan
from dvsguard.pipeline.config import OWN_KEYS, SECTION_STAGES, stage_keys
from dvsguard.stages.base import build, config_from_json, config_to_json, fields

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def parse(command: str, args: list[str]):
    """The ``Config`` the CLI builds from ``dvsguard COMMAND ARGS`` (parsed by Typer, not run)."""
    ctx = COMMANDS[command].make_context(command, list(args))
    values = {k: v for k, v in ctx.params.items() if k != "as_json" and v is not None}
    return build(stages.STAGES[command].Config, values)


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_cli_options_are_the_config_fields(name: str) -> None:
    module = stages.STAGES[name]
    params = {p.name: p for p in COMMANDS[name].params}
    assert set(params) == {f.name for f, _, _ in fields(module.Config)} | {"as_json"}
    for f, opt, _ in fields(module.Config):
        param = params[f.name]
        assert param.param_type_name == ("argument" if opt.argument else "option"), f.name
        assert param.required == (f.default is dataclasses.MISSING), f.name
        if not opt.argument:
            assert (opt.flag or "--" + f.name.replace("_", "-")) in param.opts, f.name
            assert param.help == opt.help


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_cli_defaults_build_the_config_defaults(name: str) -> None:
    """Typer's defaults (ε and lists shown as text) parse back to exactly the Config's defaults."""
    module = stages.STAGES[name]
    required = {f.name: f for f, _, _ in fields(module.Config) if f.default is dataclasses.MISSING}
    args = []
    for f, opt, tp in fields(module.Config):
        if f.name in required:
            example = "vanilla" if f.name == "defense" else "x" if tp is str else "some/path"
            args += [example] if opt.argument else [opt.flag or "--" + f.name.replace("_", "-"), example]
    parsed = parse(name, args)
    for f, _, _ in fields(module.Config):
        if f.name not in required:
            assert getattr(parsed, f.name) == f.default, f.name


def test_train_defaults_equal_the_trainers() -> None:
    from dvsguard.train.trainer import TrainConfig

    stage = {f.name: f.default for f, _, _ in fields(stages.train.Config)}
    for f in dataclasses.fields(TrainConfig):
        if stage[f.name] is not dataclasses.MISSING:  # defense is required on the command line
            assert stage[f.name] == f.default, f.name
    config = parse("train", ["--cache", "c.h5", "--defense", "sr", "--out", "o"])
    assert config.train_config() == TrainConfig(cache="c.h5", defense="sr")


@pytest.mark.parametrize("section", [s for s in SECTION_STAGES if SECTION_STAGES[s]])
def test_every_stage_option_is_a_pipeline_key(section: str) -> None:
    keys = stage_keys(section)
    for stage in SECTION_STAGES[section]:
        for f, opt, _ in fields(stages.STAGES[stage].Config):
            assert (f.name in keys) != (opt.wired or f.name in OWN_KEYS[section]), (stage, f.name)


def test_pipeline_sets_options_that_once_had_no_key(tmp_path: Path) -> None:
    text = (ROOT / "pipelines" / "quickstart.toml").read_text()
    sr_star = text.index('name = "sr-star"\n')
    end = text.index("\n\n[[train]]", sr_star)
    text = (text[:end].replace("robust_limit = 100\n", "").replace("robust_limit = 100", "")
            + '\nweight_decay = 0.0\namp = true\nh = "1/255"\nrobust_limit = 0\npgd_alpha = "1/255"' + text[end:])
    assert text.count("black_box = true") == 1
    text = text.replace("black_box = true", 'black_box = true\nalpha = "1/255"')
    path = tmp_path / "p.toml"
    path.write_text(text.replace('run_dir = "runs/quickstart"', f'run_dir = "{tmp_path / "run"}"'))
    rows = {r["stage"]: r for r in plan(load_pipeline(path))}
    train = rows["train:sr-star"]["config"]
    assert (train["weight_decay"], train["amp"], train["h"], train["robust_limit"], train["pgd_alpha"]) == (
        0.0, True, 1 / 255, 0, 1 / 255)
    assert rows["attack:vanilla"]["config"]["alpha"] == 1 / 255


def test_plan_command_lines_rebuild_the_same_configs() -> None:
    """The command line shown for each planned stage, given to the CLI, builds the Config the runner runs."""
    for row in plan(load_pipeline(ROOT / "pipelines" / "quickstart.toml")):
        command, *args = row["command"][1:]
        assert config_to_json(parse(command, args)) == config_to_json(
            build(stages.STAGES[command].Config, row["config"])), row["stage"]


def test_config_json_round_trip() -> None:
    config = stages.attack.Config(checkpoint=Path("a.pt"), cache=Path("c.h5"), eps=(2 / 255, 8 / 255),
                                  modes=("rga",), alpha=0.01)
    again = config_from_json(stages.attack.Config, config_to_json(config))
    assert again == config and isinstance(again.checkpoint, Path) and again.eps == (2 / 255, 8 / 255)


@pytest.mark.parametrize("values, message", [
    ({"eps": "8/0"}, "p.toml: [attack] key 'eps': expected a number"),
    ({"eps": True}, "p.toml: [attack] key 'eps': expected a number"),
    ({"batch": 0}, "p.toml: [attack] key 'batch': must be >= 1"),
    ({"split": "val"}, "p.toml: [attack] key 'split': expected one of train, test"),
    ({"bogus": 1}, "p.toml: [attack]: unknown option 'bogus'"),
])
def test_bad_values_name_the_option(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build(stages.attack.Config, {"checkpoint": "a.pt", "cache": "c.h5", **values}, "p.toml: [attack]")


def test_train_states_its_budgets_in_events(digits_cache: Path) -> None:
    """train logs ε and h in events per frame pixel and sensor pixel and in the paper protocol's unit."""
    from dvsguard.stages import train

    notes = train.budget_notes(train.Config(cache=digits_cache, defense="sr-star", out=Path("unused")))
    assert [n.split(" = ")[0] for n in notes] == ["training ε", "SR step h"]
    # 16×16 sensor framed at 16×16: one sensor pixel per frame pixel, k = count_cap = 15
    assert "0.118 events per frame pixel; 0.118 events per sensor pixel" in notes[0] and "30/255 in paper" in notes[0]
    assert train.budget_notes(train.Config(cache=digits_cache, defense="vanilla", out=Path("unused"))) == []
