"""A study recorded by an earlier harness (main at 0f364a5, before the floors) still opens:
its journal, MLflow store and final model give the same status, leaderboard and names. (The
leaderboard CSV's golden file is that version's table as the harness writes it now: numbers
to 6 significant digits, a schedule's own values empty where the schedule is another.)"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest

from harness.cli import main

LEGACY = Path(__file__).resolve().parent.parent / "data" / "legacy-main"


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mlruns"
    shutil.copytree(LEGACY / "mlruns", root)
    with gzip.open(root / "mlflow.db.gz") as src, open(root / "mlflow.db", "wb") as dst:
        shutil.copyfileobj(src, dst)
    monkeypatch.setenv("HARNESS_ROOT", str(root))
    shutil.copy(LEGACY / "legacy.yaml", tmp_path / "legacy.yaml")
    return tmp_path


def _expected(name: str, root: Path) -> str:
    return (LEGACY / name).read_text().replace("/tmp/legacy/mlruns", str(root))


def test_status_reads_the_earlier_record(legacy: Path, capsys) -> None:
    assert main(["status", "legacy.yaml"]) == 0
    out = capsys.readouterr().out
    # the minutes since the last improvement change with the clock
    ago = re.compile(r", \d+ min ago")
    assert ago.sub("", out) == ago.sub("", _expected("status.out", legacy / "mlruns"))


@pytest.mark.parametrize("fmt, golden", [("csv", "board.csv"), ("md", "board.md")])
def test_leaderboard_is_unchanged(legacy: Path, capsys, fmt: str, golden: str) -> None:
    assert main(["leaderboard", "legacy.yaml", "--format", fmt]) == 0
    captured = capsys.readouterr()
    expected = _expected(golden, legacy / "mlruns")
    assert captured.out == expected.split("note:")[0]
    if fmt == "md":  # the edge note goes to stderr
        assert "note:" + expected.split("note:")[1] == captured.err


def test_sample_from_the_earlier_model(legacy: Path, capsys) -> None:
    assert main(["sample", "legacy.yaml", "-n", "5", "--seed", "3"]) == 0
    assert capsys.readouterr().out == (LEGACY / "sample.out").read_text()


def test_finalize_refuses_and_names_the_earlier_result(legacy: Path, capsys) -> None:
    assert main(["finalize", "legacy.yaml"]) == 1
    err = capsys.readouterr().err
    assert "already finalized: test loss 2.5646 +- 0.0182 (trial 1)" in err
