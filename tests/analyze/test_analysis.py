"""The analyze stage on a tiny spiking VGG and on a hand-made model: JSON = direct recomputation, PNGs."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dvsguard.analyze.analysis import (
    AnalysisSettings,
    Samples,
    analyze_models,
    build_figures,
    training_lambda,
)
from dvsguard.analyze.figures import PNG_MAGIC, axis_labels
from dvsguard.analyze.gradients import gradient_norms, true_label_gradient, within_bounds
from dvsguard.analyze.vulnerability import finite_difference, rho_rand
from dvsguard.errors import CheckpointError, ConfigError
from dvsguard.snn import SpikingVGG, VGGConfig

from handmade import LinearLogits

SETTINGS = AnalysisSettings(eps=(0.0, 0.1), theory_eps=0.1, mc_draws=4, adv_steps=1, fd_steps=(0.01, 0.1),
                            pgd_eps=0.1, pgd_steps=1, heatmaps=2, hist_bins=21, batch=5, limit=None)
CLASSES = ["a", "b", "c"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _tiny(seed: int) -> SpikingVGG:
    torch.manual_seed(seed)
    model = SpikingVGG(VGGConfig.preset("tiny", num_classes=3))
    # BN in eval with running stats 0/1 and a larger weight scale so that neurons fire
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.fill_(2.0)
    return model.eval()


@pytest.fixture(scope="module")
def samples() -> Samples:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 8, 2, 16, 16, generator=gen) < 0.3).float()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return Samples(x, y, list(range(10, 18)), CLASSES, (0.0, 1.0), "memory")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, samples: Samples) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("analysis")
    models = {"vanilla": (_tiny(1), {"train": {"defense": "vanilla"}}),
              "sr": (_tiny(2), {"train": {"defense": "sr", "lam": 0.01}})}
    result = analyze_models(models, samples, out, SETTINGS, seed=3)
    doc = json.loads((out / "analysis.json").read_text())
    return {"out": out, "result": result, "doc": doc, "models": models}


def test_json_norms_equal_direct_recomputation(run: dict[str, Any], samples: Samples) -> None:
    for name, (model, _) in run["models"].items():
        per = run["doc"]["models"][name]["per_sample"]
        res = true_label_gradient(model, samples.x, samples.y)
        n = gradient_norms(res.g, SETTINGS.l0_tol)
        assert any(v > 0 for v in per["l1"]), "the tiny model must have a non-zero input gradient"
        np.testing.assert_allclose(per["l1"], n.l1.numpy(), rtol=1e-6)
        np.testing.assert_allclose(per["l2"], n.l2.numpy(), rtol=1e-6)
        assert per["l0"] == n.l0.tolist()
        np.testing.assert_allclose([np.nan if v is None else v for v in per["ratio_pred"]], n.ratio.numpy(), rtol=1e-6)
        assert per["bounds_pred"] == within_bounds(n.ratio, n.l0).tolist()
        assert per["wrong"] == res.wrong.tolist()
        for h in SETTINGS.fd_steps:
            fd = finite_difference(model, samples.x, samples.y, res.wrong, res.g, h)
            np.testing.assert_allclose(run["doc"]["models"][name]["finite_difference"]["values"][repr(h)], fd.numpy(),
                                       rtol=1e-6, atol=1e-12)


def test_json_rho_rand_and_accuracy_equal_direct_recomputation(run: dict[str, Any], samples: Samples) -> None:
    from dvsguard.attack import RandomNoise, fgsm

    model, _ = run["models"]["vanilla"]
    doc = run["doc"]["models"]["vanilla"]
    x, y, ids = samples.x[:, :5], samples.y[:5], samples.index[:5]  # the first batch (batch = 5)
    res = true_label_gradient(model, x, y)
    gen = torch.Generator().manual_seed(3 * 1_000_003 + ids[0])
    rr, _ = rho_rand(model, x, y, res.wrong, SETTINGS.theory_eps, SETTINGS.mc_draws, gen)
    np.testing.assert_allclose(doc["per_sample"]["rho_rand"][:5], rr.numpy(), rtol=1e-9, atol=1e-15)
    x_rand = RandomNoise(0.1, seed=3)(model, samples.x, samples.y, sample_ids=samples.index)
    x_adv = fgsm(model, samples.x, samples.y, 0.1)
    with torch.no_grad():
        clean = (model(samples.x).argmax(1) == samples.y).float().mean().item() * 100
        acc_rand = (model(x_rand).argmax(1) == samples.y).float().mean().item() * 100
        acc_fgsm = (model(x_adv).argmax(1) == samples.y).float().mean().item() * 100
    assert doc["curves"]["eps"] == [0.0, 0.1]
    assert doc["curves"]["random"] == pytest.approx([clean, acc_rand])
    assert doc["curves"]["fgsm"] == pytest.approx([clean, acc_fgsm])
    assert doc["summary"]["clean_acc"] == pytest.approx(clean)


def test_histogram_and_heatmaps(run: dict[str, Any], samples: Samples) -> None:
    model, _ = run["models"]["sr"]
    doc = run["doc"]["models"]["sr"]
    hist = doc["histogram"]
    assert len(hist["edges"]) == SETTINGS.hist_bins + 1
    assert sum(hist["counts"]) == samples.x[:, 0].numel() * samples.x.shape[1]
    res_all = true_label_gradient(model, samples.x, samples.y)
    g = res_all.g.double().abs().numpy().ravel()
    assert hist["zeros"] == int((g == 0).sum())
    assert sum(hist["log10_counts"]) + hist["zeros"] == g.size
    np.testing.assert_allclose(hist["log10_counts"], np.histogram(np.clip(np.log10(g[g > 0]), -12, 2),
                                                                  bins=np.asarray(hist["log10_edges"]))[0])
    widths = np.diff(hist["edges"])
    assert float(np.sum(np.asarray(hist["density"]) * widths)) == pytest.approx(1.0)
    res = true_label_gradient(model, samples.x[:, :2], samples.y[:2])
    maps = doc["heatmaps"]["grads"]
    assert len(maps) == 2
    np.testing.assert_allclose(maps[1], res.g[:, 1].abs().sum(dim=(0, 1)).numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(doc["heatmaps"]["frames"][0], samples.x[:, 0].sum(dim=(0, 1)).numpy())


def test_figures_are_pngs_with_expected_axes(run: dict[str, Any]) -> None:
    out: Path = run["out"]
    figs = build_figures(run["doc"])
    assert set(figs) == {"vulnerability.png", "theorem.png", "finite_difference.png", "sparsity.png",
                         "heatmaps.png", "lambda_sweep.png"}
    labels = {name: axis_labels(fig) for name, fig in figs.items()}
    assert labels["vulnerability.png"] == [("ε (frame units)", "accuracy (%)")]
    assert labels["theorem.png"][0] == ("predicted 3‖g‖₁²/‖g‖₂²", "measured ρ_adv/ρ_rand")
    assert labels["theorem.png"][1] == ("Taylor ε²‖g‖₂²/3", "measured ρ_rand")
    assert labels["theorem.png"][2] == ("Taylor ε²‖g‖₁²", "measured ρ_adv")
    assert all(lab == ("‖∇ₓ f_y‖₁ (surrogate gradient)", "|f_y(x + h·d) − f_y(x)| / h")
               for lab in labels["finite_difference.png"])
    assert len(labels["finite_difference.png"]) == 2  # one panel per model
    assert labels["sparsity.png"] == [("|g_i| = |∂f_y/∂x_i|", "fraction of components"),
                                      ("normalised gradient component g_i / max|g|", "density")]
    assert labels["lambda_sweep.png"] == [("λ", "accuracy (%)"), ("λ", "gradient norm")]
    assert len(figs["heatmaps.png"].axes) == 3 * 2  # events + two models, two samples
    assert [t.get_text() for t in figs["sparsity.png"].axes[1].get_legend().get_texts()] == ["vanilla", "sr"]
    for name in figs:
        w, h = png_size(out / name)
        assert w > 300 and h > 200
    assert set(run["result"]["figures"]) == {n.removesuffix(".png") for n in figs}


def test_lambda_sweep_and_summary(run: dict[str, Any]) -> None:
    sweep = run["doc"]["lambda_sweep"]
    assert [p["lam"] for p in sweep["points"]] == [0.0, 0.01]
    for p in sweep["points"]:
        s = run["doc"]["models"][p["model"]]["summary"]
        assert p["l1"] == pytest.approx(np.mean(run["doc"]["models"][p["model"]]["per_sample"]["l1"]))
        assert p["clean"] == s["clean_acc"] and p["attacked"] == s["pgd_acc"]
    assert run["result"]["models"]["sr"]["lam"] == 0.01
    assert run["result"]["models"]["sr"]["protocol"] == "events"  # recorded by the trainer; older payloads: events
    assert training_lambda({"defense": "pgd-at", "lam": 0.1}) is None
    assert training_lambda({"defense": "sr", "lam": None}) == pytest.approx(0.002)  # the trainer's default


def test_theorem_measured_on_a_smooth_model_tracks_the_prediction(tmp_path: Path) -> None:
    """On a linear-logit model (smooth, known g) the measured ρ_adv/ρ_rand follows 3‖g‖₁²/‖g‖₂²."""
    gen = torch.Generator().manual_seed(0)
    m = 2 * 2 * 3 * 3
    w = torch.randn(3, m, generator=gen, dtype=torch.float64) * 0.2
    w[:, ::3] = 0.0  # a third of the components carry no gradient
    model = LinearLogits(w, torch.zeros(3, dtype=torch.float64)).eval()
    x = torch.rand(2, 6, 2, 3, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    s = Samples(x, y, list(range(6)), [], (0.0, 1.0), "memory")
    settings = AnalysisSettings(eps=(0.0,), theory_eps=1e-3, mc_draws=400, adv_steps=1, fd_steps=(1e-4,),
                                pgd_eps=0.01, pgd_steps=1, heatmaps=0, l0_tol=0.0, batch=6, limit=None)
    result = analyze_models({"linear": (model, {})}, s, tmp_path, settings, write_figures=False)
    assert result["figures"] == {} and not list(tmp_path.glob("*.png"))
    doc = json.loads((tmp_path / "analysis.json").read_text())["models"]["linear"]
    per = doc["per_sample"]
    assert per["l0"] == [24] * 6
    wrong = torch.tensor(per["wrong"])
    d = w[y] - w[wrong]
    np.testing.assert_allclose(per["ratio_pred"], (3 * d.abs().sum(1) ** 2 / d.pow(2).sum(1)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(per["ratio_emp"], per["ratio_pred"], rtol=0.3)
    assert all(per["bounds_emp"])
    np.testing.assert_allclose(doc["finite_difference"]["values"]["0.0001"], per["l1"], rtol=1e-3)
    assert doc["summary"]["theorem"]["bounds_emp_rate"] == 1.0
    assert doc["summary"]["finite_difference"]["0.0001"]["pearson_log"] > 0.99


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        AnalysisSettings(theory_eps=0.0)
    with pytest.raises(ConfigError):
        AnalysisSettings(fd_steps=(0.0,))


# ----------------------------------------------------------------------------- the command on a real cache


@pytest.fixture(scope="module")
def cache_and_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from dvsguard.data.cache import build_cache
    from dvsguard.data.events import EVENT_DTYPE, write_npz
    from dvsguard.data.frames import FramingConfig
    from dvsguard.snn import model_payload, save_checkpoint

    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        n = 600
        ev = np.empty(n, dtype=EVENT_DTYPE)
        ev["x"] = rng.integers(0, 16, n)
        ev["y"] = rng.integers(0, 16, n)
        ev["t"] = np.sort(rng.integers(0, 10_000, n))
        ev["p"] = rng.integers(0, 2, n)
        items.append((write_npz(root / f"r{i}.npz", ev, (16, 16, 2)), i % 3))
    cfg = FramingConfig(n_frames=4, height=16, width=16, count_cap=3)
    path = root / "c-test.h5"
    build_cache(path, items, classes=CLASSES, cfg=cfg, split="test", workers=1, progress=False)
    ckpts = []
    for name, seed, train in (("vanilla", 1, {"defense": "vanilla"}), ("sr", 2, {"defense": "sr", "lam": 0.005})):
        ckpt = root / "train" / name / "best.pt"
        save_checkpoint(ckpt, {"model": model_payload(_tiny(seed)), "train": train,
                               "data": {"classes": CLASSES, "value_range": [0.0, 1.0], "framing": cfg.to_dict()}})
        ckpts.append(ckpt)
    return path, ckpts


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``dvsguard ARGS`` in this process; ``(exit code, stdout, stderr)``."""
    from dvsguard.cli import main

    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_command_writes_json_and_figures(cache_and_checkpoints: tuple[Path, list[Path]], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cache, ckpts = cache_and_checkpoints
    out = tmp_path / "an"
    code, stdout, stderr = _cli(capsys, "analyze", *map(str, ckpts), "--cache", str(cache), "--out", str(out),
                                "--limit", "4", "--eps", "0,0.2", "--theory-eps", "0.1", "--mc-draws", "2",
                                "--adv-steps", "1", "--fd-steps", "0.1", "--pgd-steps", "1", "--batch", "4", "--json")
    assert code == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert set(result["models"]) == {"vanilla", "sr"}
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["samples"]["n"] == 4 and len(doc["samples"]["index"]) == 4
    assert doc["settings"]["eps"] == [0.0, 0.2]
    assert result["lambda_sweep"] is True
    for name in ("vulnerability", "theorem", "finite_difference", "sparsity", "heatmaps", "lambda_sweep"):
        assert Path(result["figures"][name]).read_bytes()[:8] == PNG_MAGIC


def test_analyze_refuses_a_checkpoint_of_other_classes(cache_and_checkpoints: tuple[Path, list[Path]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dvsguard.snn import model_payload, save_checkpoint
    from dvsguard.stages import analyze

    cache, _ = cache_and_checkpoints
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {"model": model_payload(_tiny(0)), "data": {"classes": ["x", "y", "z"]}})
    with pytest.raises(CheckpointError, match="classes"):
        analyze.run(analyze.Config(checkpoints=(bad,), cache=cache, limit=4))
    code, _, stderr = _cli(capsys, "analyze", str(bad), "--cache", str(cache), "--out", str(tmp_path / "o"))
    assert code == 1
    assert stderr.strip().count("\n") == 0 and "classes" in stderr
    code, _, stderr = _cli(capsys, "analyze", str(bad), "--cache", str(cache), "--eps", "1/0")
    assert code == 2 and "--eps" in stderr and stderr.count("\n") == 1


def test_grad_mode_changes_g_and_is_restored(samples: Samples, tmp_path: Path) -> None:
    from dvsguard.snn import gradient_modes

    model = _tiny(1)
    before = gradient_modes(model)
    settings = AnalysisSettings(eps=(0.0,), theory_eps=0.1, mc_draws=1, adv_steps=0, fd_steps=(0.1,), pgd_steps=1,
                                heatmaps=0, batch=8, limit=None, grad_mode="sigmoid:4")
    analyze_models({"m": (model, {})}, samples, tmp_path, settings, write_figures=False)
    assert gradient_modes(model) == before
    doc = json.loads((tmp_path / "analysis.json").read_text())
    assert doc["settings"]["grad_mode"] == "sigmoid:4"
    default = gradient_norms(true_label_gradient(model, samples.x, samples.y).g)
    l1 = np.asarray(doc["models"]["m"]["per_sample"]["l1"])
    assert not np.allclose(l1, default.l1.numpy())
    from dvsguard.snn.neuron import gradient_mode

    with gradient_mode(model, "sigmoid:4"):
        np.testing.assert_allclose(l1, gradient_norms(true_label_gradient(model, samples.x, samples.y).g).l1.numpy(),
                                   rtol=1e-6)
