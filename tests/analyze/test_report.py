"""The run report: sections from whatever a run folder holds, images embedded, Markdown twin, headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

from dvsguard.analyze.figures import PNG_MAGIC, axis_labels, deployed_robustness_figure, save_png, vulnerability_figure
from dvsguard.analyze.report import build_report, discover, markdown_tables
from dvsguard.errors import ConfigError

TABLE = "| Attack | White box | Black box |\n|---|---:|---:|\n| Clean | 78.80 | — |\n| FGSM | 22.20 | 34.00 |\n| PGD50 | 4.40 | 20.70 |"


def _png(path: Path) -> Path:
    return save_png(vulnerability_figure({"m": {"eps": [0, 0.1], "random": [90, 80], "fgsm": [90, 10]}}), path)


@pytest.fixture()
def run_dir(tiny_run: dict, tmp_path: Path) -> Path:
    """A copy of the tiny pipeline run folder: what the stages really wrote (tests may add to it)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run_dir"], run)
    for stale in ("report.html", "report.md", "report_files"):
        path = run / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return run


def _stage_pngs(run: Path) -> list[Path]:
    """The figures the attack and analyze stages wrote."""
    return sorted(run.glob("attack/*/robust_vs_eps.png")) + sorted(run.glob("analyze/*.png"))


def _attack_rows(run: Path, model: str) -> list[str]:
    """The table rows (``| FGSM | 12.50 | ... |``) the attack stage wrote for ``model``."""
    return json.loads((run / "attack" / model / "attack.json").read_text())["table"].splitlines()[2:]


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_full_run_report_embeds_every_image(run_dir: Path) -> None:
    result = build_report(run_dir)
    assert result["sections"] == ["Run", "Training", "Robustness", "Deployed robustness against event budgets",
                                  "Analysis", "Export"]
    page = Path(result["html"]).read_text()
    srcs = _img_srcs(page)
    n_train = len(list(run_dir.glob("train/*/metrics.jsonl")))
    # one training-curve figure per run, the stages' own figures and the deployed-robustness figure
    assert len(srcs) == result["images"] == n_train + len(_stage_pngs(run_dir)) + 1
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in srcs if src.startswith("data:image/png;base64,")}
    assert len(embedded) == len(srcs)
    assert {p.read_bytes() for p in _stage_pngs(run_dir)} <= embedded  # the stages' own PNGs, byte for byte
    assert "<script" not in page
    state = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    agreement = state["export"]["result"]["compare"]["agreement"]
    for text in ("train:vanilla", "vanilla.net", f"{agreement:.4g}"):
        assert text in page, text
    md = Path(result["markdown"]).read_text()
    assert re.search(r"\|\s*protocol\s*\|\s*events\s*\|", md), "the data table names the protocol"
    for model in ("vanilla", "sr"):
        for row in _attack_rows(run_dir, model):
            assert row in md, row
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == len(srcs)
    for link in links:
        assert not Path(link).is_absolute()
        assert (run_dir / link).read_bytes()[:8] == PNG_MAGIC


def _event_rows(clean: float, greedy: list[float], random: list[float], disagree: list[float]) -> list[dict]:
    rows = [{"attack": "clean", "budget": 0, "accuracy": clean}]
    for name, accs in (("greedy", greedy), ("random", random)):
        rows += [{"attack": name, "budget": b, "accuracy": a, "float_disagreement": d}
                 for b, a, d in zip((8, 32, 128), accs, disagree)]
    return rows


def test_deployed_figure_draws_both_curves_from_the_clean_point() -> None:
    frames = {"vanilla": [{"attack": "clean", "eps": 0.0, "setting": "white", "accuracy": 0.9},
                          {"attack": "pgd10", "eps": 8 / 255, "setting": "white", "accuracy": 0.1},
                          {"attack": "pgd10", "eps": 8 / 255, "setting": "black", "accuracy": 0.5}]}
    events = {"vanilla": _event_rows(0.9, [0.5, 0.2, 0.0], [0.9, 0.8, 0.7], [0.0, 0.02, 0.1]),
              "sr-star": _event_rows(0.8, [0.7, 0.5, 0.3], [0.8, 0.8, 0.8], [0.0, 0.0, 0.04])}
    fig = deployed_robustness_figure(frames, events)
    left, right = fig.axes
    assert axis_labels(fig) == [("ε (×1/255 of the frame range)", "accuracy (%)"),
                                ("event budget (events inserted + deleted per sample)", "accuracy (%)")]
    (pgd,) = left.get_lines()  # the white box only, from the clean point
    assert list(pgd.get_xdata()) == [0.0, 8.0] and list(pgd.get_ydata()) == pytest.approx([90.0, 10.0])
    curves = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
    assert curves["vanilla: greedy"] == pytest.approx([90.0, 50.0, 20.0, 0.0])
    assert curves["sr-star: random"] == pytest.approx([80.0, 80.0, 80.0, 80.0])
    assert sorted(t.get_text() for t in right.texts) == sorted(["0", "2", "10", "0", "2", "10",
                                                               "0", "0", "4", "0", "0", "4"])
    colours = {line.get_label(): line.get_color() for line in [*left.get_lines(), *right.get_lines()]}
    assert colours["vanilla: PGD10"] == colours["vanilla: greedy"] != colours["sr-star: greedy"]
    alone, _ = deployed_robustness_figure({}, events).axes  # no float-frame attack recorded: said, not drawn
    assert not alone.get_lines() and [t.get_text() for t in alone.texts] == ["no float-frame attack recorded"]


def test_training_run_folder_alone(run_dir: Path) -> None:
    folder = run_dir / "train" / "vanilla"
    (folder / "analysis").mkdir()
    _png(folder / "analysis" / "sparsity.png")
    result = build_report(folder)
    assert result["kind"] == "train"
    assert result["sections"] == ["Run", "Training", "Analysis"]
    assert result["images"] == 2
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()


def test_analysis_beside_a_checkpoint_in_a_pipeline_run(run_dir: Path) -> None:
    before = build_report(run_dir)["images"]
    _png(run_dir / "train" / "sr" / "analysis" / "theorem.png")
    result = build_report(run_dir)
    assert result["sections"] == ["Run", "Training", "Robustness", "Deployed robustness against event budgets",
                                  "Analysis", "Analysis: sr", "Export"]
    assert result["images"] == before + 1


def test_a_run_with_only_training_and_a_metrics_line_being_written(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "only" / "train" / "a"
    folder.mkdir(parents=True)
    shutil.copy(run_dir / "train" / "vanilla" / "metrics.jsonl", folder / "metrics.jsonl")
    with (folder / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "train_lo')  # a write in progress
    result = build_report(tmp_path / "only")
    assert result["sections"] == ["Run", "Training"]
    assert result["images"] == 1


def test_not_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dvsguard.cli import main

    with pytest.raises(ConfigError, match="not a run folder"):
        discover(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "run folder not found" in err


def test_markdown_tables_parse() -> None:
    (t,) = markdown_tables("text\n\n" + TABLE + "\n\nmore")
    assert t.header == ["Attack", "White box", "Black box"]
    assert t.rows[1] == ["FGSM", "22.20", "34.00"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_opens_in_headless_chromium(run_dir: Path) -> None:
    browser = _chromium()
    if browser is None:
        msg = "chromium is not installed (apt-get install -y chromium): the browser check of the report is SKIPPED"
        warnings.warn(msg)
        pytest.skip(msg)
    html_path = Path(build_report(run_dir)["html"]).resolve()
    shot = run_dir / "report_screenshot.png"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([*base, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2000",
                               html_path.as_uri()], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    assert _console_errors(proc.stderr) == [], _console_errors(proc.stderr)
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([*base, f"--user-data-dir={profile}", "--dump-dom", html_path.as_uri()],
                             capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": profile})
    assert dom.returncode == 0, dom.stderr[-2000:]
    srcs = _img_srcs(dom.stdout)
    assert len(srcs) == len(_img_srcs(html_path.read_text())) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert _attack_rows(run_dir, "sr")[0].split(" | ")[1] in dom.stdout  # a figure of the attack table
    assert _console_errors(dom.stderr) == []
    # the same harness does see console errors and non-embedded images on a bad page
    bad = run_dir / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([*base, f"--user-data-dir={profile}", "--dump-dom", bad.as_uri()],
                             capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": profile})
    assert _console_errors(dom.stderr)
    assert not all(s.startswith("data:") for s in _img_srcs(dom.stdout))


def _console_errors(stderr: str) -> list[str]:
    """Chromium's log lines of page console messages, uncaught errors and refused local files."""
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
            or "Not allowed to load local resource" in ln or "ERR_FILE_NOT_FOUND" in ln]
