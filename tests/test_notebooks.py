"""The notebooks run end to end against artefacts a tiny run made, and are stored clean."""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


_kernel: dict[str, KernelManager] = {}  # this pytest process's kernel, started on first use


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook run cell by cell, as a fresh kernel started with ``env`` added to this
    process's environment would run it.

    One kernel serves every notebook of a pytest process: starting one imported the suite again
    (~6 s of a core for each of five notebooks). Before each notebook its namespace is cleared and
    its working directory and AVSAC_* variables (the only ones the notebooks read) set again; what
    stays is what imports cached. A kernel that failed a notebook is not used again."""
    environment = {k: v for k, v in os.environ.items() if k.startswith("AVSAC_")} | env
    prepare = nbformat.v4.new_code_cell(
        "import os\n"
        f"os.chdir({str(NOTEBOOKS)!r})\n"
        "for name in [n for n in os.environ if n.startswith('AVSAC_')]:\n"
        "    del os.environ[name]\n"
        f"os.environ.update({environment!r})\n"
        "%reset -f"  # last: the notebook starts from an empty namespace
    )  # fmt: skip
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.insert(0, prepare)
    if "manager" not in _kernel:
        _kernel["manager"] = KernelManager(kernel_name="python3")
        _kernel["manager"].start_kernel(cwd=str(NOTEBOOKS), env=os.environ | environment)
        atexit.register(_kernel["manager"].shutdown_kernel, now=True)
    client = NotebookClient(notebook, km=_kernel["manager"], timeout=300, kernel_name="python3")
    try:
        client.execute()
    except BaseException:
        manager = _kernel.pop("manager")
        atexit.unregister(manager.shutdown_kernel)
        manager.shutdown_kernel(now=True)
        raise
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    notebook.cells.pop(0)
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
def test_dataset_explorer_shows_a_clip_of_each_layout(task, synth_trees):
    env = {"AVSAC_TASK": task, "AVSAC_DATA_ROOT": str(synth_trees[task]), "AVSAC_SPLIT": "test"}
    notebook = execute("dataset_explorer.ipynb", env)
    assert len(outputs(notebook, "image/png")) == 2  # the clip grid and the area histogram
    assert any("audio/wav" in html for html in outputs(notebook, "text/html"))  # the player
    printed = "".join(outputs(notebook, "stream"))
    assert f"{task.upper()} test:" in printed
    if task == "avss":
        assert "frames" in printed.split("Hz")[-1]  # class counts were listed
    else:
        assert "Binary masks" in printed


def test_results_notebook_shows_predictions_audio_share_and_the_report(trained_runs):
    env = {"AVSAC_RUN_DIR": str(trained_runs / "0"), "AVSAC_MULTIRUN_DIR": str(trained_runs)}
    notebook = execute("results.ipynb", env)
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
