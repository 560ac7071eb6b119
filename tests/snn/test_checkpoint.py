"""Checkpoints: atomic save, safe load, model rebuild and its refusals."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from dvsguard.errors import CheckpointError
from dvsguard.snn.checkpoint import FORMAT, load_checkpoint, load_model, model_payload, save_checkpoint
from dvsguard.snn.vgg import SpikingVGG, VGGConfig


def _payload(model: SpikingVGG) -> dict:
    return {
        "format": FORMAT,
        "model": model_payload(model),
        "data": {"framing": {"n_frames": 10}, "classes": [str(i) for i in range(10)], "value_range": (0.0, 1.0),
                 "cache": "data_cache/x.h5"},
        "train": {"defense": "sr", "lr": 0.1},
        "epoch": 3,
        "metrics": {"test_acc": 0.5},
    }


@pytest.fixture
def model() -> SpikingVGG:
    torch.manual_seed(0)
    m = SpikingVGG(VGGConfig.preset("tiny"))
    m.train()
    m(torch.rand(3, 2, 2, 16, 16))  # move BN running statistics away from their init
    return m


def test_round_trip(tmp_path: Path, model: SpikingVGG) -> None:
    path = save_checkpoint(tmp_path / "sub" / "last.pt", _payload(model))
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    loaded, payload = load_model(path)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    assert payload["epoch"] == 3 and payload["train"]["defense"] == "sr"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    model.eval()
    x = torch.rand(4, 2, 2, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))


def test_save_adds_format_and_overwrites(tmp_path: Path, model: SpikingVGG) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": model_payload(model), "epoch": 1})
    save_checkpoint(path, {"model": model_payload(model), "epoch": 2})
    got = load_checkpoint(path)
    assert got["format"] == FORMAT and got["epoch"] == 2


def test_failed_save_keeps_previous_file(tmp_path: Path, model: SpikingVGG) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload(model))
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"model": model_payload(model), "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"]


def test_checkpoint_gets_the_usual_permissions(tmp_path: Path, model: SpikingVGG) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pt", _payload(model))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(path)


def test_truncated_file(tmp_path: Path, model: SpikingVGG) -> None:
    path = save_checkpoint(tmp_path / "c.pt", _payload(model))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": FORMAT, "x": _Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_wrong_format(tmp_path: Path, model: SpikingVGG) -> None:
    path = tmp_path / "c.pt"
    torch.save({"format": "other/2", "model": model_payload(model)}, path)
    with pytest.raises(CheckpointError, match="format 'other/2'"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint(path)


def test_other_architecture_names_first_mismatch(tmp_path: Path, model: SpikingVGG) -> None:
    payload = _payload(model)
    other = VGGConfig.preset("tiny", channels=(8, "A", 24, "A"))
    payload["model"]["config"] = other.to_dict()
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match=r"'features\.4\.weight' has shape \(16, 8, 3, 3\)"):
        load_model(path)


def test_missing_and_unexpected_tensors(tmp_path: Path, model: SpikingVGG) -> None:
    payload = _payload(model)
    del payload["model"]["state_dict"]["classifier.1.bias"]
    path = save_checkpoint(tmp_path / "a.pt", payload)
    with pytest.raises(CheckpointError, match="'classifier.1.bias' is missing"):
        load_model(path)
    payload = _payload(model)
    payload["model"]["state_dict"]["extra.weight"] = torch.zeros(2)
    path = save_checkpoint(tmp_path / "b.pt", payload)
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.weight'"):
        load_model(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path: Path, model: SpikingVGG, bad: float) -> None:
    payload = _payload(model)
    payload["model"]["state_dict"]["features.0.weight"][0, 0, 0, 0] = bad
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="'features.0.weight' contains NaN or infinite"):
        load_model(path)


def test_invalid_config_and_missing_model(tmp_path: Path, model: SpikingVGG) -> None:
    payload = _payload(model)
    payload["model"]["config"]["input_size"] = 15
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_model(path)
    path = save_checkpoint(tmp_path / "d.pt", {"epoch": 1})
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_model(path)
