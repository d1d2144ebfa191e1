"""The example notebook runs (a tiny study through the Python API) and shows what it says:
the leaderboard, a figure, the final result, sampled names."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tiny_study.ipynb"

pytestmark = pytest.mark.slow


def test_the_example_notebook_runs_and_shows_the_leaderboard_and_names(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = [o.get("data", {}).get("text/plain", "") or o.get("text", "") for o in outputs]
    assert any("best_dev_loss" in t for t in texts)  # the leaderboard
    assert any("image/png" in o.get("data", {}) for o in outputs)  # a figure
    assert any(t.startswith("dev ") and "test" in t for t in texts)  # the final result
    names = eval(texts[-1])  # noqa: S307 - the notebook's own last output: a list of names
    assert isinstance(names, list) and len(names) == 8 and all(isinstance(n, str) for n in names)
    assert (tmp_path / "mlruns" / "studies" / "notebook" / "final.json").exists()
