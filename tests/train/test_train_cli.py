"""``dvsguard train``: bad settings end in one line on stderr before any training — exit code 2 for a
value the option itself rejects, 1 for a setting the trainer rejects."""

from __future__ import annotations

import pytest

from dvsguard.cli import main


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--defense", "trades"], 1,
         "defense 'trades' is unknown; expected one of vanilla, sr, fgsm-at, pgd-at, sr-star, rat, event-at"),
        (["--defense", "sr", "--eps", "two"], 2, "--eps: expected a number or a fraction such as 8/255, got 'two'"),
        (["--defense", "sr", "--sr-form", "l2"], 2, "--sr-form: expected one of sq, abs, got 'l2'"),
        (["--defense", "sr-star", "--attack", "cw"], 2, "--attack: expected one of fgsm, pgd, events, got 'cw'"),
        (["--defense", "event-at", "--event-budget", "0"], 2, "--event-budget: must be >= 1, got 0"),
        (["--defense", "sr", "--preset", "huge"], 1, "unknown model preset 'huge'"),
        (["--defense", "sr", "--epochs", "0"], 2, "--epochs: must be >= 1, got 0"),
        (["--defense", "sr", "--protocol", "cifar"], 2, "--protocol: expected one of events, paper, got 'cifar'"),
        (["--defense", "sr", "--protocol", "paper"], 1, "was made under protocol 'events', not 'paper'"),
    ],
)
def test_bad_settings_are_one_line_errors(extra, code, message, digits_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--cache", str(digits_cache), "--out", str(tmp_path / "run"), *extra])
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("dvsguard: error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_missing_cache_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--cache", str(tmp_path / "none.h5"), "--defense", "sr", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    assert "none.h5" in capsys.readouterr().err


def test_event_at_trains_from_the_command_line(digits_cache, tmp_path, capsys, caplog):
    """`dvsguard train --defense event-at` trains on event-realisable examples and records their budget."""
    import json

    import torch

    out = tmp_path / "run"
    caplog.set_level("INFO", logger="dvsguard")
    main(["train", "--cache", str(digits_cache), "--defense", "event-at", "--preset", "tiny", "--epochs", "1",
          "--batch", "8", "--limit-train", "16", "--limit-test", "8", "--robust-limit", "0", "--no-augment",
          "--event-budget", "8", "--step-events", "4", "--threads", "1", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out.strip().splitlines()[-1])
    assert doc["defense"] == "event-at" and doc["final"]["train_n"] == 16
    assert torch.isfinite(torch.tensor(doc["final"]["train_loss"]))
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["defense"] == "event-at" and train["event_budget"] == 8 and train["step_events"] == 4
    assert "training event budget = 8 events inserted plus deleted per example" in caplog.text
    assert "training ε" not in caplog.text  # event-at has no L∞ budget
