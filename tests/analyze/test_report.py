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

from dvsguard.analyze.figures import PNG_MAGIC, save_png, vulnerability_figure
from dvsguard.analyze.report import build_report, discover, markdown_tables
from dvsguard.errors import ConfigError

TABLE = "| Attack | White box | Black box |\n|---|---:|---:|\n| Clean | 78.80 | — |\n| FGSM | 22.20 | 34.00 |\n| PGD50 | 4.40 | 20.70 |"


def _png(path: Path) -> Path:
    return save_png(vulnerability_figure({"m": {"eps": [0, 0.1], "random": [90, 80], "fgsm": [90, 10]}}), path)


def _metrics(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": i + 1, "lr": 0.1, "train_loss": 2.3 - 0.3 * i, "train_acc": 0.1 + 0.2 * i, "train_n": 540,
             "test_acc": 0.1 + 0.15 * i, "test_n": 60, "robust_acc": 0.05 * i, "seconds": 10.0, "best_test_acc": 0.1 + 0.15 * i}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for name, defense in (("vanilla", "vanilla"), ("sr", "sr")):
        _metrics(run / "train" / name / "metrics.jsonl", 3)
        (run / "train" / name / "config.json").write_text(json.dumps({
            "train": {"defense": defense, "preset": "small", "epochs": 3, "lam": 0.002 if defense == "sr" else None},
            "data": {"framing": {"n_frames": 8, "height": 32, "width": 32, "count_cap": 15},
                     "classes": ["digit0", "digit1"], "value_range": [0.0, 1.0], "cache": "c.h5"}}))
    att = run / "attack" / "vanilla"
    att.mkdir(parents=True)
    (att / "attack.json").write_text(json.dumps({"checkpoint": "train/vanilla/best.pt", "n_samples": 60, "seed": 0,
                                                 "eps": [8 / 255], "results": [], "table": TABLE}))
    (att / "attack.md").write_text("# Robust accuracy\n\n" + TABLE + "\n")
    _png(att / "robust_vs_eps.png")
    (run / "analyze").mkdir()
    (run / "analyze" / "analysis.json").write_text(json.dumps({
        "settings": {"theory_eps": 2 / 255, "mc_draws": 32, "adv_steps": 5, "l0_tol": 1e-6},
        "samples": {"n": 60, "source": "test.h5"},
        "models": {"vanilla": {"defense": "vanilla", "lam": 0.0, "summary": {
            "clean_acc": 80.0, "pgd_acc": 5.0, "mean_l1": 0.5, "mean_l2": 0.01, "median_ratio_pred": 900.0,
            "median_ratio_emp": 120.0, "theorem": {"bounds_emp_rate": 0.9, "ratio": {"spearman": 0.4}},
            "finite_difference": {"0.01": {"spearman": 0.7}, "0.001": {"spearman": 0.8}}}}}}))
    _png(run / "analyze" / "vulnerability.png")
    (run / "export").mkdir()
    (run / "export" / "vanilla.json").write_text(json.dumps({
        "format": "dvsguard-netx-manifest/1", "net": "vanilla.net", "time_steps": 8, "classes": ["digit0", "digit1"],
        "layers": [{"index": 0, "kind": "conv", "neurons": 4096}, {"index": 1, "kind": "dense", "neurons": 10}]}))
    (run / "pipeline_state.json").write_text(json.dumps({"stages": {
        "preprocess": {"fingerprint": "x", "started": 1.0, "finished": 4.5, "result": {"train": "c.h5"}},
        "train:vanilla": {"fingerprint": "y", "started": 5.0, "finished": 50.0, "result": {}},
        "export": {"fingerprint": "z", "started": 60.0, "finished": 70.0,
                   "result": {"compare": {"agreement": 1.0, "n": 60}, "verify": {"identical": True, "n": 2}}},
        "report": {"fingerprint": "w", "started": 80.0, "finished": None, "result": None}}}))
    return run


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_full_run_report_embeds_every_image(run_dir: Path) -> None:
    result = build_report(run_dir)
    assert result["sections"] == ["Run", "Training", "Robustness", "Analysis", "Export"]
    page = Path(result["html"]).read_text()
    srcs = _img_srcs(page)
    assert len(srcs) == result["images"] == 4  # 2 training curves, robust_vs_eps, vulnerability
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "<script" not in page
    for text in ("78.80", "PGD50", "train:vanilla", "vanilla.net", "Verification in Lava", "identical", "900"):
        assert text in page
    md = Path(result["markdown"]).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4
    for link in links:
        assert not Path(link).is_absolute()
        assert (run_dir / link).read_bytes()[:8] == PNG_MAGIC
    assert "| Clean | 78.80 | — |" in md


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
    _png(run_dir / "train" / "sr" / "analysis" / "theorem.png")
    result = build_report(run_dir)
    assert result["sections"] == ["Run", "Training", "Robustness", "Analysis", "Analysis: sr", "Export"]
    assert result["images"] == 5


def test_a_run_with_only_training(tmp_path: Path) -> None:
    _metrics(tmp_path / "run" / "train" / "a" / "metrics.jsonl", 2)
    (tmp_path / "run" / "train" / "a" / "metrics.jsonl").open("a").write('{"epoch": 3, "train_lo')  # a write in progress
    result = build_report(tmp_path / "run")
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
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "78.80" in dom.stdout
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
