"""The notebooks run end to end against artefacts a tiny run made, and are stored clean."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, kind: str) -> list:
    """Every output of ``kind`` (``image/png``, ``text/plain``, ``text/markdown``, ``stream``)."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.output_type == "stream":
                found.append(output.text)
            elif kind in output.get("data", {}):
                found.append(output.data[kind])
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_dataset_explorer_shows_a_clip_of_each_layout(task, synth_trees, monkeypatch):
    env = {"AVSAC_TASK": task, "AVSAC_DATA_ROOT": str(synth_trees[task]), "AVSAC_SPLIT": "test"}
    notebook = execute("dataset_explorer.ipynb", env, monkeypatch)
    assert len(outputs(notebook, "image/png")) == 2  # the clip grid and the area histogram
    assert any("audio/wav" in html for html in outputs(notebook, "text/html"))  # the player
    printed = "".join(outputs(notebook, "stream"))
    assert f"{task.upper()} test:" in printed
    if task == "avss":
        assert "frames" in printed.split("Hz")[-1]  # class counts were listed
    else:
        assert "Binary masks" in printed


def test_results_notebook_shows_predictions_audio_share_and_the_report(trained_runs, monkeypatch):
    env = {"AVSAC_RUN_DIR": str(trained_runs / "0"), "AVSAC_MULTIRUN_DIR": str(trained_runs)}
    notebook = execute("results.ipynb", env, monkeypatch)
    markdown = "\n".join(outputs(notebook, "text/markdown"))
    assert "`test/miou`" in markdown and "`val/audio_share`" in markdown
    assert "audio share" in markdown  # the report's column
    # The training curve, two test clips, and the report's figures.
    report_pngs = len(list(trained_runs.glob("report_*.png")))
    assert len(outputs(notebook, "image/png")) == 1 + 2 + report_pngs
    printed = "".join(outputs(notebook, "stream"))
    assert "audio share on 3 test clips:" in printed
    share = float(printed.split("audio share on 3 test clips: ")[1].split(";")[0])
    assert 0.0 < share < 1.0
    logged = json.loads((trained_runs / "0" / "metrics.json").read_text())["metrics"]
    assert f"{logged['test/audio_share']}" in printed or "test/audio_share" in printed
