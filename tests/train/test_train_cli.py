"""``dvsguard train``: bad settings end in one line on stderr and exit code 1 before any training."""

from __future__ import annotations

import pytest

from dvsguard.cli import main


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--defense", "trades"], "defense 'trades' is unknown; expected one of vanilla, sr, fgsm-at, pgd-at, sr-star, rat"),
        (["--defense", "sr", "--eps", "two"], "eps: expected a number or a fraction like '2/255', got 'two'"),
        (["--defense", "sr", "--sr-form", "l2"], "sr_form 'l2' is unknown"),
        (["--defense", "sr-star", "--attack", "cw"], "attack 'cw' is unknown"),
        (["--defense", "sr", "--preset", "huge"], "unknown model preset 'huge'"),
    ],
)
def test_bad_settings_are_one_line_errors(extra, message, digits_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--cache", str(digits_cache), "--out", str(tmp_path / "run"), *extra])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dvsguard: error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_missing_cache_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--cache", str(tmp_path / "none.h5"), "--defense", "sr", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    assert "none.h5" in capsys.readouterr().err
