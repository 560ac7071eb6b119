"""Every stage in-process on tiny inputs, as the pipeline runner chains them, judged on what they wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import pytest
import torch

from dvsguard import stages
from dvsguard.analyze.figures import PNG_MAGIC
from dvsguard.data.cache import open_cache


def test_every_stage_ran(tiny_run: dict) -> None:
    assert tiny_run["stages"] == {name: "ran" for name in (
        "synth", "preprocess", "train:vanilla", "train:sr", "attack:vanilla", "attack:sr", "deployed:vanilla",
        "deployed:sr", "analyze", "export", "report")}


def test_data_stages_wrote_recordings_and_caches(tiny_run: dict) -> None:
    r = tiny_run["results"]
    labels = list(csv.reader(Path(r["synth"]["labels"]).open()))[1:]
    assert r["synth"]["n_recordings"] == len(labels) == 60
    pre = r["preprocess"]
    assert (pre["n_train"], pre["n_test"]) == (50, 10)  # one test recording of the six per class
    for split in ("train", "test"):
        info = open_cache(pre[split])
        assert info.n_samples == pre[f"n_{split}"] and info.n_frames == 4
        with h5py.File(pre[split]) as fh:
            assert sorted(fh["labels"][:].tolist()) == sorted([i for i in range(10)] * (pre[f"n_{split}"] // 10))


def test_train_checkpoints_match_their_metrics(tiny_run: dict) -> None:
    for name in ("vanilla", "sr"):
        t = tiny_run["results"][f"train:{name}"]
        lines = [json.loads(line) for line in Path(t["metrics"]).read_text().splitlines()]
        assert len(lines) == 1 and t["best_test_acc"] == lines[0]["test_acc"]
        payload = torch.load(t["best"], weights_only=True)
        assert payload["epoch"] == 1 and payload["train"]["defense"] == name


def _clean_accuracy(checkpoint: str, cache: str) -> float:
    from dvsguard.data.cache import split_path
    from dvsguard.data.dataset import make_loader
    from dvsguard.snn.checkpoint import load_model

    model, _ = load_model(checkpoint)
    correct = total = 0
    with torch.no_grad():
        for x, y in make_loader(split_path(cache, "test"), batch_size=8, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def test_attack_tables_agree_with_the_models_and_the_files(tiny_run: dict) -> None:
    r = tiny_run["results"]
    for name, source in (("vanilla", "sr"), ("sr", "vanilla")):
        a = r[f"attack:{name}"]
        on_disk = json.loads(Path(a["paths"]["json"]).read_text())
        assert on_disk["results"] == a["results"] and a["source"] == r[f"train:{source}"]["best"]
        assert a["n_samples"] == r["preprocess"]["n_test"]  # the limit exceeds the split: every sample
        assert a["clean_accuracy"] == pytest.approx(_clean_accuracy(a["checkpoint"], r["preprocess"]["train"]))
        assert {(row["attack"], row["setting"]) for row in a["results"]} == {
            (attack, setting) for attack in ("clean", "fgsm", "pgd2") for setting in ("white", "black")}
        for row in a["results"]:
            assert row["accuracy"] == row["correct"] / row["total"] and row["total"] == a["n_samples"]
        assert Path(a["paths"]["png"]).read_bytes()[:8] == PNG_MAGIC
        assert on_disk["table"] in Path(a["paths"]["md"]).read_text()


def test_analysis_measured_both_models(tiny_run: dict) -> None:
    z = tiny_run["results"]["analyze"]
    doc = json.loads(Path(z["json"]).read_text())
    assert set(doc["models"]) == set(z["models"]) == {"vanilla", "sr"}
    assert doc["samples"]["n"] == 4 and doc["settings"]["eps"] == [0.0, 8 / 255]
    assert doc["models"]["sr"]["lam"] == 0.01 and doc["models"]["vanilla"]["defense"] == "vanilla"
    for path in z["figures"].values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_export_compare_scores_the_same_model_the_attack_scored(tiny_run: dict) -> None:
    r = tiny_run["results"]
    e = r["export"]
    assert Path(e["net"]).is_file() and json.loads(Path(e["manifest"]).read_text())["time_steps"] == 4
    c = e["compare"]
    assert c["n"] == r["preprocess"]["n_test"]
    assert c["accuracy_float"] == pytest.approx(r["attack:vanilla"]["clean_accuracy"])


def test_deployed_curves_are_judged_on_each_models_own_integer_network(tiny_run: dict) -> None:
    """Each deployed stage exported its model and scored the event attacks on that network, within the budgets."""
    import numpy as np

    from dvsguard.export.exporter import load_samples
    from dvsguard.export.intsim import load_netx, simulate

    r = tiny_run["results"]
    test = r["attack:vanilla"]["cache"]
    for name in ("vanilla", "sr"):
        d = r[f"deployed:{name}"]
        events = d["events"]
        assert Path(d["net"]).parent.name == name and events["checkpoint"] == r[f"train:{name}"]["best"]
        assert events["judge"] == f"integer network {d['net']}"
        assert json.loads(Path(events["paths"]["json"]).read_text())["results"] == events["results"]
        n = r["preprocess"]["n_test"]
        counts, _, labels = load_samples(Path(test), n)
        on_int = simulate(load_netx(d["net"]), counts).v_out.argmax(1)
        assert events["n_samples"] == n and events["clean_accuracy"] == pytest.approx(float(np.mean(on_int == labels)))
        rows = {(row["attack"], row["budget"]): row for row in events["results"]}
        assert set(rows) == {("clean", 0)} | {(a, b) for a in ("greedy", "random") for b in (4, 16)}
        clean = rows[("clean", 0)]
        for (attack, budget), row in rows.items():
            if attack == "clean":
                continue
            assert row["correct"] <= clean["correct"] and row["total"] == n
            assert row["events_inserted"] + row["events_deleted"] <= budget * clean["correct"]
            assert 0.0 <= row["float_disagreement"] <= 1.0
    assert r["deployed:vanilla"]["events"]["clean_accuracy"] == pytest.approx(r["export"]["compare"]["accuracy_int"])


def test_deployed_curves_rerun_alone_when_their_budgets_change(tiny_run: dict, tmp_path: Path) -> None:
    """A new event budget reruns the deployed stages, not the float-frame attacks (the report follows once they ran)."""
    import dataclasses

    from dvsguard.pipeline import load_pipeline, plan

    run = Path(tiny_run["run_dir"])
    original = run.parent / "tiny.toml"
    changed = tmp_path / "tiny.toml"
    changed.write_text(original.read_text().replace("event_budgets = [4, 16]", "event_budgets = [4, 8]"))
    rows = {row["stage"]: row for row in plan(dataclasses.replace(load_pipeline(changed), path=original))}
    ran = {stage for stage, row in rows.items() if row["action"] == "run"}
    assert ran == {"deployed:vanilla", "deployed:sr"}
    assert rows["deployed:sr"]["command"][:2] == ["dvsguard", "deployed"]
    assert "--event-budgets" in rows["deployed:sr"]["command"]
    assert all(row["action"] == "skip (unchanged)" for row in plan(load_pipeline(original)))


def test_report_shows_what_the_stages_wrote(tiny_run: dict) -> None:
    rep = tiny_run["results"]["report"]
    md = Path(rep["markdown"]).read_text()
    assert rep["sections"] == ["Run", "Training", "Robustness", "Deployed robustness against event budgets",
                               "Analysis", "Export"]
    deployed = md[md.index("## Deployed robustness"):md.index("## Analysis")]
    assert "report_files/deployed_robustness.png" in deployed
    for name in ("vanilla", "sr"):
        for row in tiny_run["results"][f"deployed:{name}"]["events"]["results"]:
            cells = [name, row["attack"], str(row["budget"]), f"{100 * row['accuracy']:.1f}"]
            assert "| " + " | ".join(cells) + " |" in deployed, cells
    table = json.loads(Path(tiny_run["results"]["attack:sr"]["paths"]["json"]).read_text())["table"]
    for line in table.splitlines()[2:]:  # the attack rows, with the figures the attack stage measured
        assert line in md
    assert rep["images"] >= len(tiny_run["results"]["analyze"]["figures"])


def test_predict_on_the_recordings_agrees_with_its_rows(tiny_run: dict, tmp_path: Path) -> None:
    r = tiny_run["results"]
    out = tmp_path / "pred.csv"
    result = stages.predict.run(stages.predict.Config(
        folder=Path(r["synth"]["out_dir"]), model=Path(r["train:vanilla"]["best"]), out=out,
        labels=r["synth"]["labels"], workers=0))
    rows = list(csv.DictReader(out.open()))
    assert result.n_files == len(rows) == 60 and result.n_failed == 0 and result.exit_code == 0
    assert result.accuracy == pytest.approx(sum(row["correct"] == "True" for row in rows) / 60, abs=1e-6)


def test_another_pipeline_cannot_take_over_a_finished_run_folder(tiny_run: dict, tmp_path: Path) -> None:
    from dvsguard.errors import ConfigError
    from dvsguard.pipeline import load_pipeline, plan, run_pipeline

    run = Path(tiny_run["run_dir"])
    state = json.loads((run / "pipeline_state.json").read_text())
    checkpoints = {p: p.read_bytes() for p in run.glob("train/*/*.pt")}
    original = Path(state["pipeline"]["file"]).read_text()
    for name, text in (("other", original.replace('name = "tiny"', 'name = "other"')), ("copy", original)):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        cfg = load_pipeline(path)
        for attempt in (lambda: plan(cfg), lambda: run_pipeline(cfg)):
            with pytest.raises(ConfigError, match=r"holds the run of pipeline 'tiny' .*give this pipeline a run_dir of its own"):
                attempt()
    assert {p: p.read_bytes() for p in run.glob("train/*/*.pt")} == checkpoints
    assert json.loads((run / "pipeline_state.json").read_text()) == state
