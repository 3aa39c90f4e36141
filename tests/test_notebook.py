"""The report notebook runs top to bottom on the tiny run's outputs (executed with nbclient)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.project import REPO

NOTEBOOK = REPO / "notebooks" / "compare_report.ipynb"


def test_report_notebook_executes_on_the_tiny_run(tiny_run: Path, monkeypatch):
    folder = tiny_run / "notebooks"
    folder.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    for key, value in {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}.items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # loss curves, delta, scatter
    texts = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
                    for o in outputs)
    assert "val_bpb" in texts and "reversed" in texts
