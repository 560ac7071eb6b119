"""Failures end in one line ``dvsguard: error: ...`` naming the file, never a traceback.

Real commands (a child process running ``dvsguard.cli.main``) on real files: a full disk (a
small tmpfs, where this process may mount one), outputs of the wrong kind, a symbolic link
loop, out-of-range options of every stage, malformed run files and checkpoints.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dvsguard import stages
from dvsguard.stages.base import base_type, fields

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", "from dvsguard.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The error line of a failed command, after checking it is the only line of its kind and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dvsguard: error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.returncode == code, proc.stderr
    return errors[0]


# ------------------------------------------------------------------------------ shared inputs


@pytest.fixture(scope="module")
def checkpoint(digits_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained one epoch on the digits cache (last.pt of a real run)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    proc = run_cli("train", "--cache", digits_cache, "--defense", "vanilla", "--out", out, "--preset", "tiny",
                   "--epochs", "1", "--batch", "16", "--robust-limit", "0", "--no-augment", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    return out / "last.pt"


def recordings(digits_cache: Path) -> Path:
    return digits_cache.parent.parent / "rec"


# ------------------------------------------------------------------------------ 1. a full disk


@pytest.fixture
def full_disk(tmp_path: Path):
    """A folder on a 256 KiB tmpfs filled to the last byte (skipped where mounting is not allowed)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for size in (4096, 1):
                while True:
                    os.write(fd, b"\0" * size)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial", ".lock")))


def test_disk_full_in_train_is_one_line_naming_the_path(digits_cache: Path, full_disk: Path) -> None:
    out = full_disk / "run"
    proc = run_cli("train", "--cache", digits_cache, "--defense", "vanilla", "--out", out, "--preset", "tiny",
                   "--epochs", "1", "--batch", "16", "--robust-limit", "0", "--threads", "1")
    line = one_line_error(proc)
    assert line.endswith(": no space left on device") and str(out) in line, line
    assert "inline_container" not in proc.stderr
    assert leftovers(full_disk) == [] and not (out / "last.pt").exists()


def test_disk_full_in_preprocess_leaves_no_partial_cache(digits_cache: Path, full_disk: Path) -> None:
    out = full_disk / "cache"
    proc = run_cli("preprocess", recordings(digits_cache), "--cache-dir", out, "--frames", "4", "--size", "16",
                   "--workers", "1")
    line = one_line_error(proc)
    assert line.endswith(": no space left on device") and str(out) in line, line
    assert leftovers(full_disk) == []


def test_disk_full_in_synth(full_disk: Path) -> None:
    proc = run_cli("synth", full_disk / "rec", "--per-class", "2", "--size", "16", "--workers", "1")
    line = one_line_error(proc)
    assert line.endswith(": no space left on device") and str(full_disk / "rec") in line, line
    assert leftovers(full_disk) == []


def test_disk_full_in_predict(digits_cache: Path, checkpoint: Path, full_disk: Path) -> None:
    out = full_disk / "predictions.csv"
    proc = run_cli("predict", recordings(digits_cache), "--model", checkpoint, "--out", out, "--workers", "0")
    assert one_line_error(proc) == f"dvsguard: error: {out}: no space left on device"
    assert leftovers(full_disk) == [] and not out.exists()


def test_disk_full_in_attack(digits_cache: Path, checkpoint: Path, full_disk: Path) -> None:
    out = full_disk / "attack"
    proc = run_cli("attack", checkpoint, "--cache", digits_cache, "--attacks", "clean,fgsm", "--limit", "4",
                   "--out", out)
    line = one_line_error(proc)
    assert line.endswith(": no space left on device") and str(out) in line, line
    assert leftovers(full_disk) == []


def test_disk_full_in_export(checkpoint: Path, full_disk: Path) -> None:
    out = full_disk / "export"
    proc = run_cli("export", checkpoint, "--out", out)
    line = one_line_error(proc)
    assert line.endswith(": no space left on device") and str(out) in line, line
    assert leftovers(full_disk) == []


def test_a_failed_fsync_with_a_full_disk_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no tmpfs can be mounted: ENOSPC from fsync (as NFS reports it) is an OutputError naming the file."""
    from dvsguard.atomic import write_text
    from dvsguard.errors import OutputError

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"out\.txt: no space left on device$"):
        write_text(tmp_path / "out.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_train_removes_stale_temporaries_of_its_run_folder_only(digits_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.k3j_x9q2.tmp", out / ".best.pt.a1b2c3d4.tmp", out / ".metrics.jsonl.zz00zz00.tmp"]
    kept = [out / ".notes.txt.a1b2c3d4.tmp", out / "last.pt.tmp", out / ".last.pt.keep.txt", out / "mine.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    proc = run_cli("train", "--cache", digits_cache, "--defense", "vanilla", "--out", out, "--preset", "tiny",
                   "--epochs", "1", "--batch", "16", "--robust-limit", "0", "--limit-train", "16", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert all(p.exists() for p in kept)


# ------------------------------------------------------------------------------ 2. outputs of the wrong kind


@pytest.mark.parametrize("command", ["train", "preprocess", "attack", "export", "analyze", "predict"])
def test_output_of_the_wrong_kind_is_refused_before_any_work(command: str, digits_cache: Path,
                                                             tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("mine\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    ck = tmp_path / "no-such.pt"  # never read: the output is refused first
    args = {
        "train": ["train", "--cache", digits_cache, "--defense", "vanilla", "--out", a_file],
        "preprocess": ["preprocess", recordings(digits_cache), "--cache-dir", a_file],
        "attack": ["attack", ck, "--cache", digits_cache, "--out", a_file],
        "export": ["export", ck, "--out", a_file],
        "analyze": ["analyze", ck, "--cache", digits_cache, "--out", a_file],
        "predict": ["predict", recordings(digits_cache), "--model", ck, "--out", folder],
    }[command]
    proc = run_cli(*args, cwd=tmp_path)
    line = one_line_error(proc)
    flag = "--cache-dir" if command == "preprocess" else "--out"
    wrong = folder if command == "predict" else a_file
    assert line.startswith(f"dvsguard: error: {wrong}: {flag} names"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "taken"]
    assert a_file.read_text() == "mine\n"


def test_output_below_a_file_is_refused(digits_cache: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("")
    proc = run_cli("train", "--cache", digits_cache, "--defense", "vanilla", "--out", a_file / "run")
    assert one_line_error(proc) == f"dvsguard: error: {a_file}: is a file, so --out {a_file / 'run'} cannot be created under it"


# ------------------------------------------------------------------------------ 3. a symbolic link loop


def test_symlink_loop_in_recordings_is_skipped_with_a_warning(digits_cache: Path, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    shutil.copytree(recordings(digits_cache), rec)
    (rec / "labels.csv").unlink()
    (rec / "digit0" / "a.npz").symlink_to("b.npz")
    (rec / "digit0" / "b.npz").symlink_to("a.npz")
    (rec / "digit1" / "up").symlink_to("..")
    proc = run_cli("preprocess", rec, "--cache-dir", tmp_path / "cache", "--frames", "4", "--size", "16",
                   "--workers", "1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{rec / 'digit0' / 'a.npz'}: skipped, a symbolic link loop" in proc.stderr


# ------------------------------------------------------------------------------ 4. ranges of numeric options


def _numeric_options() -> list[tuple[str, str, object, object]]:
    """(stage, field, option, type) of every int/float option of every stage."""
    found = []
    for name, module in stages.STAGES.items():
        for f, opt, tp in fields(module.Config):
            base = base_type(tp)[0]
            if typing.get_origin(base) is tuple:
                base = typing.get_args(base)[0]
            if base in (int, float):
                found.append((name, f.name, opt, base))
    return found


def _out_of_range(opt, tp) -> list[str]:
    if opt.kind in ("eps", "eps_list"):
        return ["-1"]
    values = []
    if getattr(opt, "above", None) is not None:
        values.append(str(tp(opt.above)))
    if opt.min is not None:
        values.append(str(tp(opt.min) - 1))
    if opt.max is not None:
        values.append(str(tp(opt.max) + 1))
    return values


def test_every_numeric_option_has_a_range() -> None:
    missing = [f"{s} --{n}" for s, n, opt, tp in _numeric_options() if not _out_of_range(opt, tp)]
    assert missing == []


@pytest.mark.parametrize("stage,name,opt,tp", _numeric_options(), ids=lambda v: v if isinstance(v, str) else "")
def test_out_of_range_option_exits_2_naming_the_flag(stage: str, name: str, opt, tp, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from dvsguard.cli import main

    monkeypatch.chdir(tmp_path)
    flag = opt.flag or "--" + name.replace("_", "-")
    required = []
    for f, o, _ in fields(stages.STAGES[stage].Config):
        if f.default is f.default_factory and f.name != name:  # both MISSING: a required field
            required += ["x"] if o.argument else [o.flag or "--" + f.name.replace("_", "-"), "x"]
    for value in _out_of_range(opt, tp):
        with pytest.raises(SystemExit) as exc:
            main([stage, *required, f"{flag}={value}"])
        err = capsys.readouterr().err
        assert exc.value.code == 2, (flag, value, err)
        assert flag in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ 5. malformed run files, checkpoints


@pytest.mark.parametrize("content,expect", [(b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "binary content, expected JSON"),
                                            (b"[1, 2]", "holds a JSON array, expected an object"),
                                            (b'{"stages": [1, 2]}', "unexpected content")])
def test_report_on_a_malformed_state_names_the_file(tmp_path: Path, content: bytes, expect: str) -> None:
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "pipeline_state.json").write_bytes(content)
    line = one_line_error(run_cli("report", run))
    assert line.startswith(f"dvsguard: error: {run / 'pipeline_state.json'}: {expect}"), line


@pytest.mark.parametrize("name,content,expect", [
    ("config.json", b"\xff\xfe\x00binary", "binary content, expected JSON"),
    ("config.json", b'"text"', "holds a JSON string, expected an object"),
    ("metrics.jsonl", b"\xff\xfe\x00binary", "binary content, expected JSON"),
])
def test_report_on_malformed_training_files_names_the_file(tmp_path: Path, name: str, content: bytes,
                                                           expect: str) -> None:
    run = tmp_path / "run"
    (run / "train" / "a").mkdir(parents=True)
    (run / "train" / "a" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "train" / "a" / name).write_bytes(content)
    line = one_line_error(run_cli("report", run))
    assert line.startswith(f"dvsguard: error: {run / 'train' / 'a' / name}: {expect}"), line


def _tampered(checkpoint: Path, tmp_path: Path, change) -> Path:
    import torch

    payload = torch.load(checkpoint, weights_only=True)
    change(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("change,expect", [
    (lambda p: p["data"].update(classes=["a", "b"]), "'data.classes' lists 2 classes but the model has 10 outputs"),
    (lambda p: p["data"].update(classes=7), "'data.classes' must be a list of class names"),
    (lambda p: p["data"]["framing"].update(height=32), "'data.framing.height' is 32 but the model takes 16x16"),
    (lambda p: p["data"].update(framing=[4, 16]), "'data.framing' is a list, expected a dict"),
    (lambda p: p["data"].update(value_range=[1.0]), "'data.value_range' is [1.0], expected [low, high]"),
    (lambda p: p["model"]["config"].update(channels=[]), "invalid model config"),
    (lambda p: p["model"].update(config=[1]), "model config is a list, expected a dict"),
])
def test_predict_with_an_inconsistent_checkpoint_names_the_file(change, expect: str, digits_cache: Path,
                                                                checkpoint: Path, tmp_path: Path) -> None:
    bad = _tampered(checkpoint, tmp_path, change)
    proc = run_cli("predict", recordings(digits_cache), "--model", bad, "--out", tmp_path / "p.csv", "--workers", "0")
    line = one_line_error(proc)
    assert line.startswith(f"dvsguard: error: {bad}: ") and expect in line, line
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------------ 6. messages name the file


def _cache_pair(folder: Path, n_train: int, n_test: int, size: int) -> Path:
    """A train and a test cache of random recordings (two classes) by the real builder; returns the train one."""
    import numpy as np

    from dvsguard.data.cache import build_cache
    from dvsguard.data.events import EVENT_DTYPE, write_npz
    from dvsguard.data.frames import FramingConfig

    rng = np.random.default_rng(0)
    items = []
    for i in range(n_train + n_test):
        ev = np.empty(500, dtype=EVENT_DTYPE)
        ev["x"], ev["y"] = rng.integers(0, size, 500), rng.integers(0, size, 500)
        ev["t"], ev["p"] = np.sort(rng.integers(0, 10_000, 500)), rng.integers(0, 2, 500)
        items.append((write_npz(folder / f"r{i}.npz", ev, (size, size, 2)), i % 2))
    cfg = FramingConfig(n_frames=4, height=size, width=size)
    siblings = {"train": "rec-train.h5", "test": "rec-test.h5"}
    for split, part in (("train", items[:n_train]), ("test", items[n_train:])):
        build_cache(folder / siblings[split], part, classes=["even", "odd"], cfg=cfg, split=split,
                    siblings=siblings, workers=1, progress=False)
    return folder / "rec-train.h5"


def test_attack_on_a_cache_of_another_frame_size_names_both(tmp_path: Path) -> None:
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    cache = _cache_pair(tmp_path, 2, 2, size=8)
    model = SpikingVGG(VGGConfig(**{**VGGConfig.preset("tiny").to_dict(), "input_size": 16, "num_classes": 2}))
    ck = save_checkpoint(tmp_path / "m.pt", {"model": model_payload(model), "data": {"classes": ["even", "odd"]}})
    line = one_line_error(run_cli("attack", ck, "--cache", cache, "--attacks", "clean", "--out", tmp_path / "o"))
    assert line == (f"dvsguard: error: {ck}: the model takes 16x16 frames but {tmp_path / 'rec-test.h5'} holds "
                    f"8x8 frames; expected a cache framed at the model's size")


def test_training_on_an_empty_test_split_names_the_file(tmp_path: Path) -> None:
    train = _cache_pair(tmp_path, 4, 0, size=16)
    proc = run_cli("train", "--cache", train, "--defense", "vanilla", "--out", tmp_path / "run", "--preset", "tiny",
                   "--epochs", "1", "--batch", "4", "--robust-limit", "0", "--threads", "1")
    line = one_line_error(proc)
    assert line == f"dvsguard: error: {tmp_path / 'rec-test.h5'}: holds no samples; expected at least one", line
