"""Pipeline files: the shipped ones plan cleanly; invalid ones give one error naming file and key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dvsguard.errors import ConfigError
from dvsguard.pipeline import load_pipeline, plan

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "pipelines").glob("*.toml"))

MINIMAL = """
[pipeline]
name = "t"
run_dir = "{run}"
[data]
source = "synth"
per_class = 2
[[train]]
name = "a"
defense = "vanilla"
epochs = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text.format(run=tmp_path / "run"))
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipelines_dry_run(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvsguard", "run", str(path), "--dry-run", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["plan"]
    stages = [r["stage"] for r in rows]
    assert "preprocess" in stages and any(s.startswith("train:") for s in stages)
    assert all(r["command"][0] == "dvsguard" for r in rows)


def test_shipped_names() -> None:
    assert {p.name for p in SHIPPED} >= {"quickstart.toml", "cifar10dvs_table2.toml", "cifar10dvs_robust.toml",
                                         "cifar10dvs_lambda_sweep.toml"}


def test_table2_plan_has_four_defenses_and_one_black_box_source() -> None:
    cfg = load_pipeline(ROOT / "pipelines" / "cifar10dvs_table2.toml")
    assert cfg.protocol == "paper"
    assert [t["defense"] for t in cfg.train] == ["vanilla", "fgsm-at", "sr", "sr-star", "vanilla"]
    assert cfg.attack is not None and cfg.attack["eps"] == (8 / 255,)
    rows = {r["stage"]: r["command"] for r in plan(cfg)}
    attacked = [s for s in rows if s.startswith("attack:")]
    assert attacked == ["attack:vanilla", "attack:fgsm-at", "attack:sr", "attack:sr-star"]
    assert {rows[s][rows[s].index("--source") + 1] for s in attacked} == {"<train:black-box-source.checkpoint>"}
    assert load_pipeline(ROOT / "pipelines" / "cifar10dvs_robust.toml").protocol == "events"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("epochs = 1", "epochz = 1"), "[train.0] unknown key 'epochz'"),
        (lambda t: t.replace("epochs = 1", 'epochs = "one"'), "[train.0] key 'epochs': expected an integer, got 'one'"),
        (lambda t: t.replace('source = "synth"', 'source = "no/such/folder"'), "[data] key 'source': folder"),
        (lambda t: t.replace('name = "t"', ""), "[pipeline] missing required key 'name'"),
        (lambda t: t + "\n[bogus]\nx = 1\n", "unknown section [bogus]"),
        (lambda t: t + "\n[export]\nmodel = 'zzz'\n", "[export] key 'model': no [[train]] run named 'zzz'"),
        (lambda t: t + "\n[attack]\neps = ['8/0']\n", "[attack] key 'eps'"),
        (lambda t: t.replace("per_class = 2", "per_class = true"), "[data] key 'per_class': expected an integer"),
        (lambda t: t + "\n[pipeline2\n", "not valid TOML"),
        (lambda t: t.replace('name = "a"', 'name = "/tmp/elsewhere"'), "[train.0] key 'name': '/tmp/elsewhere' is not a plain name"),
        (lambda t: t.replace('name = "a"', 'name = "../../x"'), "[train.0] key 'name': '../../x' is not a plain name"),
        (lambda t: t.replace("epochs = 1", "epochs = 1\nweight_decay = -1.0"), "[train.0] key 'weight_decay': must be >= 0"),
        (lambda t: t.replace('name = "t"', 'name = "t"\nprotocol = "authors"'),
         "[pipeline] key 'protocol': unknown protocol 'authors'; expected one of events, paper"),
        (lambda t: t + "\n[attack]\nblack_box_source = 'zzz'\n", "[attack] key 'black_box_source': no [[train]] run named 'zzz'"),
        (lambda t: t + "\n[attack]\nblack_box = false\nblack_box_source = 'a'\n", "'black_box' is false"),
    ],
)
def test_invalid_files_name_file_and_key(tmp_path: Path, edit, expected: str) -> None:
    path = write(tmp_path, edit(MINIMAL))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_missing_file_cli_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvsguard", "run", str(tmp_path / "none.toml")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"dvsguard: error: {tmp_path / 'none.toml'}: pipeline file not found"


def test_plan_from_and_only(tmp_path: Path) -> None:
    cfg = load_pipeline(write(tmp_path, MINIMAL))
    actions = {r["stage"]: r["action"] for r in plan(cfg, only="train")}
    assert actions == {"synth": "skip (not selected)", "preprocess": "skip (not selected)", "train:a": "run (forced)"}
    actions = {r["stage"]: r["action"] for r in plan(cfg, start="preprocess")}
    assert actions == {"synth": "run", "preprocess": "run (forced)", "train:a": "run (forced)"}
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        plan(cfg, only="nope")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_each_stage_writes_its_own_folder(path: Path) -> None:
    outs = []
    for row in plan(load_pipeline(path)):
        cmd = row["command"]
        if "--out" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            assert out.name in (row["stage"].split(":")[-1], row["stage"]), (row["stage"], out)
            outs.append(out)
    assert len(outs) == len(set(outs))


# [[train]] runs that fine-tune an earlier run in fixed point


def test_fixed_point_run_starts_from_the_named_run(tmp_path: Path) -> None:
    cfg = load_pipeline(write(tmp_path, MINIMAL + '[[train]]\nname = "a-fp"\ndefense = "sr-star"\nepochs = 1\n'
                                                  'init = "a"\nfixed_point = true\n'))
    rows = {r["stage"]: r["command"] for r in plan(cfg)}
    cmd = rows["train:a-fp"]
    assert "--fixed-point" in cmd and cmd[cmd.index("--init") + 1] == "<train:a.checkpoint>"
    assert "--init" not in rows["train:a"] and "--fixed-point" not in rows["train:a"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ('[[train]]\nname = "b"\ndefense = "vanilla"\ninit = "c"\n', "key 'init': no earlier [[train]] run named 'c'"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\ninit = "b"\n', "key 'init': no earlier [[train]] run named 'b'"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\nfixed_point = true\n', "key 'fixed_point' fine-tunes a trained model"),
        ('[[train]]\nname = "b"\ndefense = "vanilla"\nfixed_point = "yes"\n', "key 'fixed_point': expected true or false"),
    ],
)
def test_bad_fine_tuning_keys_name_file_and_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match="p.toml") as info:
        load_pipeline(write(tmp_path, MINIMAL + extra))
    assert message in str(info.value)


@pytest.mark.parametrize("extra, message", [
    ('defense = "vanilla"', None),
    ('defense = "trades"', "stage train:b: defense 'trades' is unknown"),
    ('defense = "sr"\npreset = "huge"', "stage train:b: unknown model preset 'huge'"),
    ('defense = "sr"\noptimizer = "lion"', "[train.1] key 'optimizer': expected one of sgd, adam"),
    ('defense = "sr"\n[attack]\nattacks = ["clean", "deepfool"]', "stage attack:a: unknown attack 'deepfool'"),
    ('defense = "sr"\n[analyze]\ngrad_mode = "zigzag:1"', "stage analyze:"),
    ('defense = "sr"\n[export]\nmodel = "a"\nverify = -1', "[export] key 'verify': must be >= 0"),
    ('defense = "sr"\n[attack]\nevent_budgets = [8]\nevent_attacks = ["clean", "flicker"]', "stage deployed:a: "),
    ('defense = "sr"\n[attack]\nevent_budgets = []', "stage deployed:a: --event-budgets: give at least one"),
    ('defense = "sr"\n[attack]\nevent_budgets = [-1]', "[attack] key 'event_budgets': must be >= 0"),
    ('defense = "sr"\n[attack]\nevent_limit = 5', "[attack] key 'event_limit' sets the event curve of the deployed"),
    ('defense = "sr"\n[attack]\nevent_models = ["b"]', "[attack] key 'event_models' names the models of the deployed"),
    ('defense = "sr"\n[attack]\nevent_budgets = [8]\nevent_models = ["c"]',
     "[attack] key 'event_models': no [[train]] run named 'c'"),
    ('defense = "event-at"\nevent_budget = 0', "[train.1] key 'event_budget': must be >= 1"),
])
def test_every_setting_is_checked_before_anything_runs(tmp_path: Path, extra: str, message: str | None) -> None:
    """A bad setting of any stage stops the pipeline before the data stages run (nothing is written)."""
    from dvsguard.pipeline import run_pipeline

    path = write(tmp_path, MINIMAL + '[[train]]\nname = "b"\n' + extra + "\n")
    if message is None:
        assert [r["stage"] for r in plan(load_pipeline(path))] == ["synth", "preprocess", "train:a", "train:b"]
        return
    with pytest.raises(ConfigError) as info:
        cfg = load_pipeline(path)
        run_pipeline(cfg)
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_one_black_box_source_for_every_model(tmp_path: Path) -> None:
    """black_box_source: a separately trained run is the source of every model's black-box rows (and not attacked)."""
    runs = "".join(f'[[train]]\nname = "{n}"\ndefense = "vanilla"\nepochs = 1\n' for n in ("b", "src"))
    cfg = load_pipeline(write(tmp_path, MINIMAL + runs + '[attack]\nblack_box_source = "src"\n'))
    rows = {r["stage"]: r["command"] for r in plan(cfg)}
    attacked = sorted(s for s in rows if s.startswith("attack:"))
    assert attacked == ["attack:a", "attack:b"]
    for stage in attacked:
        cmd = rows[stage]
        assert cmd[cmd.index("--source") + 1] == "<train:src.checkpoint>"
    # without it, each model is the next one's source
    cfg = load_pipeline(write(tmp_path, MINIMAL + runs + "[attack]\n"))
    rows = {r["stage"]: r["command"] for r in plan(cfg)}
    assert rows["attack:a"][rows["attack:a"].index("--source") + 1] == "<train:b.checkpoint>"
    assert rows["attack:src"][rows["attack:src"].index("--source") + 1] == "<train:a.checkpoint>"


def test_event_budgets_add_a_deployed_stage_per_attacked_model(tmp_path: Path) -> None:
    """[attack] event_budgets: after the attacks, each attacked model is exported and its event curve drawn."""
    runs = '[[train]]\nname = "b"\ndefense = "vanilla"\nepochs = 1\n'
    keys = '[attack]\nevent_budgets = [4, 16]\nevent_limit = 5\nstep_events = 2\n'
    rows = {r["stage"]: r["command"] for r in plan(load_pipeline(write(tmp_path, MINIMAL + runs + keys)))}
    assert list(rows)[-4:] == ["attack:a", "attack:b", "deployed:a", "deployed:b"]
    for model in ("a", "b"):
        assert rows[f"deployed:{model}"] == [
            "dvsguard", "deployed", f"<train:{model}.checkpoint>", "--cache", "<preprocess.train>",
            "--event-budgets", "4,16", "--event-limit", "5", "--step-events", "2", "--protocol", "events",
            "--out", str(tmp_path / "run" / "deployed" / model), "--name", model]
        assert "--step-events" not in rows[f"attack:{model}"]  # the float-frame attack takes none of them
    without = {r["stage"]: r["command"] for r in plan(load_pipeline(write(tmp_path, MINIMAL + runs + "[attack]\n")))}
    assert rows["attack:a"] == without["attack:a"]  # so its Config, and its fingerprint, are unchanged
    rows = {r["stage"] for r in plan(load_pipeline(write(tmp_path, MINIMAL + runs + "[attack]\n")))}
    assert not any(stage.startswith("deployed:") for stage in rows)


def test_event_models_choose_the_deployed_models(tmp_path: Path) -> None:
    """[attack] event_models: the deployed curve of these runs, whether or not they are attacked on float frames."""
    runs = '[[train]]\nname = "b"\ndefense = "event-at"\ninit = "a"\nepochs = 1\n'
    keys = '[attack]\nmodels = ["a"]\nevent_budgets = [4, 16]\nevent_models = ["a", "b"]\n'
    rows = {r["stage"]: r["command"] for r in plan(load_pipeline(write(tmp_path, MINIMAL + runs + keys)))}
    assert list(rows)[-3:] == ["attack:a", "deployed:a", "deployed:b"]
    assert rows["deployed:b"][2] == "<train:b.checkpoint>"
    assert rows["train:b"][rows["train:b"].index("--defense") + 1] == "event-at"


def test_event_examples_refuse_the_paper_protocol_before_anything_runs(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "t"\n', 'name = "t"\nprotocol = "paper"\n', 1)
    for runs in ('defense = "event-at"', 'defense = "sr-star"\nattack = "events"'):
        path = write(tmp_path, text + '[[train]]\nname = "b"\n' + runs + "\n")
        with pytest.raises(ConfigError, match="stage train:b: .* needs frames of capped event counts"):
            plan(load_pipeline(path))
    assert not (tmp_path / "run").exists()


def test_the_event_curve_refuses_the_paper_protocol_before_anything_runs(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "t"\n', 'name = "t"\nprotocol = "paper"\n', 1) + "[attack]\nevent_budgets = [8]\n"
    with pytest.raises(ConfigError, match="stage deployed:a: --protocol paper: the paper protocol's frames"):
        plan(load_pipeline(write(tmp_path, text)))
