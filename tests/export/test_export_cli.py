"""``dvsguard export``: files, manifest, resource table, --compare, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dvsguard.cli import main
from dvsguard.data.dataset import FrameDataset
from dvsguard.export.intsim import load_netx, simulate
from dvsguard.export.netx import sha256_file
from dvsguard.snn import SpikingVGG, VGGConfig
from dvsguard.snn.checkpoint import model_payload, save_checkpoint

from .conftest import make_test_cache, save_model_checkpoint, tiny_model


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_cache(tmp_path_factory.mktemp("cache"))


def test_export_writes_netx_and_manifest(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model()
    ckpt = save_model_checkpoint(tmp_path / "run" / "best.pt", model, cache)
    code, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "exp"), "--compare", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    net = Path(result["net"])
    assert net == tmp_path / "exp" / "run-best.net" and net.is_file()
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["net_sha256"] == sha256_file(net)
    assert manifest["source"]["sha256"] == sha256_file(ckpt)
    assert manifest["source"]["protocol"] == "events"
    assert manifest["time_steps"] == 4 and manifest["lag"] == 4 and manifest["reset_interval"] == 4
    assert manifest["input"]["scale"] == 3 and manifest["framing"]["count_cap"] == 3
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert [la["kind"] for la in manifest["layers"]] == ["conv", "conv", "dense", "dense"]
    assert manifest["resources"]["fits_chip"] and len(manifest["resources"]["rows"]) == 4
    assert result["resources"]["chips"] == 1 and "PilotNet" in result["resources"]["estimate"]
    # --compare recomputed here: the integer simulator on the cache's counts vs the float model
    ds = FrameDataset(cache)
    counts = np.stack([np.asarray(ds.counts(i)) for i in range(len(ds))]).astype(np.int64)
    x = torch.stack([ds[i][0] for i in range(len(ds))], dim=1)
    labels = np.array([ds[i][1] for i in range(len(ds))])
    ds.close()
    with torch.no_grad():
        pred_float = model.eval()(x).argmax(1).numpy()
    pred_int = simulate(load_netx(net), counts).v_out.argmax(1)
    assert result["compare"]["n"] == 10
    assert result["compare"]["agreement"] == pytest.approx(float((pred_float == pred_int).mean()))
    assert result["compare"]["accuracy_float"] == pytest.approx(float((pred_float == labels).mean()))
    assert result["compare"]["accuracy_int"] == pytest.approx(float((pred_int == labels).mean()))
    with h5py.File(net) as f:  # the netx schema
        assert [f["layer"][str(i)]["type"][0] for i in range(6)] == [b"input", b"conv", b"conv", b"flatten", b"dense", b"dense"]
        assert list(f["layer/0/shape"][()]) == [2, 16, 16]
        assert list(f["layer/2/shape"][()]) == [16, 8, 8] and f["layer/2/weight"].shape == (16, 8, 6, 6)
        assert f["layer/1/neuron/iDecay"][()] == 4096 and f["layer/1/neuron/vDecay"][()] == 0
        assert f["layer/1/neuron/type"][0] == b"CUBA"
    # the same checkpoint always gives the same bytes
    code, out, _ = run_cli(["export", str(ckpt), "--out", str(tmp_path / "again"), "--name", "x"], capsys)
    assert code == 0 and sha256_file(tmp_path / "again" / "x.net") == sha256_file(net)
    assert "fits one Loihi 2 chip" in out and "features.0" in out  # the resource table


def test_checkpoint_of_another_architecture_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = model_payload(SpikingVGG(VGGConfig.preset("tiny")))
    payload["state_dict"] = model_payload(SpikingVGG(VGGConfig.preset("tiny", channels=(4, "A", 16, "A"))))["state_dict"]
    ckpt = save_checkpoint(tmp_path / "other.pt", {"model": payload, "data": {}})
    code, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert err.startswith("dvsguard: error: ") and "features.0.weight" in err and len(err.strip().splitlines()) == 1


def test_nan_weights_and_missing_framing_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.classifier[1].weight[0, 0] = float("nan")
    ckpt = save_model_checkpoint(tmp_path / "nan.pt", model)
    code, _, err = run_cli(["export", str(ckpt), "--out", str(tmp_path)], capsys)
    assert code == 1 and "classifier.1.weight" in err and "NaN" in err
    ckpt = save_checkpoint(tmp_path / "nodata.pt", {"model": model_payload(tiny_model())})
    code, _, err = run_cli(["export", str(ckpt), "--out", str(tmp_path)], capsys)
    assert code == 1 and "no framing" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code, _, err = run_cli(["export", str(tmp_path / "junk.pt")], capsys)
    assert code == 1 and "junk.pt" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.net"))


@pytest.mark.parametrize(
    ("n_frames", "count_cap", "message"),
    [
        (10**8, 3, "n_frames claims 100,000,000 frames, above the limit of 10,000"),
        (10_001, 3, "n_frames claims 10,001 frames"),
        (0, 3, "'data.framing' is invalid: framing: n_frames must be a positive integer, got 0"),
        (4.5, 3, "'data.framing' is invalid: framing: n_frames must be a positive integer, got 4.5"),
        (4, float("nan"), "'data.framing' is invalid: framing: count_cap must be a positive integer, got nan"),
    ],
)
def test_implausible_framing_in_the_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          n_frames: object, count_cap: object, message: str) -> None:
    model = tiny_model()
    s = model.cfg.input_size
    data = {"framing": {"n_frames": n_frames, "mode": "events", "height": s, "width": s, "count_cap": count_cap},
            "classes": [str(i) for i in range(model.cfg.num_classes)], "value_range": [0.0, 1.0]}
    ckpt = save_checkpoint(tmp_path / "claims.pt", {"model": model_payload(model), "data": data})
    code, out, err = run_cli(["export", str(ckpt), "--out", str(tmp_path / "exp")], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"dvsguard: error: {ckpt}: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("exp/*.net"))


def test_export_model_bounds_time_steps(tmp_path: Path) -> None:
    from dvsguard.errors import ExportError
    from dvsguard.export.exporter import MAX_TIME_STEPS, export_model

    with pytest.raises(ExportError, match=f"time steps T must be an integer 1..{MAX_TIME_STEPS}, got 100000000"):
        export_model(tiny_model(), tmp_path, "x", input_shape=(2, 16, 16), input_scale=3, time_steps=10**8)
    assert not list(tmp_path.iterdir())


def test_compare_limit_reads_only_the_samples_it_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsguard.data.dataset import FrameDataset
    from dvsguard.export.exporter import compare_export, export_checkpoint

    cache = make_test_cache(tmp_path / "c", n=40)
    exported, model, _ = export_checkpoint(save_model_checkpoint(tmp_path / "m.pt", tiny_model()), tmp_path / "exp")
    reads: list[int] = []
    getitem = FrameDataset.__getitem__
    monkeypatch.setattr(FrameDataset, "__getitem__", lambda self, i: (reads.append(i), getitem(self, i))[1])
    assert compare_export(model, exported.net_path, cache, max_samples=2)["n"] == 2
    assert reads == [0, 1]
    reads.clear()
    assert compare_export(model, exported.net_path, cache, max_samples=None, batch_size=16)["n"] == 40
    assert sorted(reads) == list(range(40))
