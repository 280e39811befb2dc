"""The example notebook runs clean in a real Jupyter kernel, and is stored without outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
KERNEL_NAME = "safeinfer-test-kernel"
CELL_TIMEOUT_S = 300
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
INTERPRETER_PROBE = "import sys; print(sys.executable)"

_EMBEDDED_IMAGE = re.compile(r'src="data:image/png;base64,')


def _code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _html_outputs(cell: Any) -> list[str]:
    return [
        output["data"]["text/html"]
        for output in cell.outputs
        if output.get("output_type") in ("execute_result", "display_data")
        and "text/html" in output.get("data", {})
    ]


def _cell_containing(notebook: Any, source_text: str) -> Any:
    matches = [cell for cell in _code_cells(notebook) if source_text in cell.source]
    assert len(matches) == 1, f"expected one code cell containing {source_text!r}"
    return matches[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run the notebook once in a kernel that uses this interpreter, in an empty directory."""
    root = tmp_path_factory.mktemp("notebook")
    # A kernelspec of our own, so the kernel runs this venv's Python and not whatever
    # "python3" kernel the machine has installed.
    spec_dir = root / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "safeinfer test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    workdir = root / "work"
    workdir.mkdir()

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root / "jupyter"))
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        # One extra cell, not part of the example, reports the kernel's interpreter.
        notebook.cells.append(nbformat.v4.new_code_cell(INTERPRETER_PROBE))
        client = NotebookClient(
            notebook,
            kernel_name=KERNEL_NAME,
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    return notebook, workdir


def test_notebook_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in _code_cells(notebook):
        assert cell.outputs == [], cell.source
        assert cell.execution_count is None, cell.source


def test_notebook_runs_without_errors(executed: tuple[Any, Path]) -> None:
    notebook, _ = executed
    for cell in _code_cells(notebook):
        errors = [output for output in cell.outputs if output.get("output_type") == "error"]
        assert errors == [], cell.source
        streams = [
            output.get("text", "")
            for output in cell.outputs
            if output.get("output_type") == "stream" and output.get("name") == "stderr"
        ]
        assert not any("Traceback" in text for text in streams), cell.source


def test_notebook_uses_venv_interpreter(executed: tuple[Any, Path]) -> None:
    notebook, _ = executed
    probe = _cell_containing(notebook, INTERPRETER_PROBE)
    (output,) = probe.outputs
    assert output["text"].strip() == sys.executable


def test_notebook_shows_grid_inline(executed: tuple[Any, Path]) -> None:
    notebook, workdir = executed
    grid_cell = _cell_containing(notebook, "safeinfer.show_grid(results")
    (markup,) = _html_outputs(grid_cell)

    assert "safeinfer-grid" in markup
    assert len(_EMBEDDED_IMAGE.findall(markup)) == 8
    assert "seed 103" in markup
    assert "<b>three</b>" in markup

    directory_cell = _cell_containing(notebook, "safeinfer.show_grid(output_dir")
    (directory_markup,) = _html_outputs(directory_cell)
    assert len(_EMBEDDED_IMAGE.findall(directory_markup)) == 8

    images = sorted((workdir / "outputs" / "notebook").glob("*.png"))
    assert len(images) == 8


def test_notebook_progress_is_widget(executed: tuple[Any, Path]) -> None:
    notebook, _ = executed
    generate_cell = _cell_containing(notebook, "results = pipe(")
    widget_outputs = [
        output for output in generate_cell.outputs if WIDGET_VIEW in output.get("data", {})
    ]
    assert widget_outputs, "generation showed no notebook progress bar (tqdm.auto widget)"


def test_notebook_shows_report_tables(executed: tuple[Any, Path]) -> None:
    notebook, _ = executed
    verify_cell = _cell_containing(notebook, "safeinfer.verify_png(")
    (markup,) = _html_outputs(verify_cell)
    scan_cell = _cell_containing(notebook, "safeinfer.show_reports(")
    (scan_markup,) = _html_outputs(scan_cell)

    assert "<table>" in markup
    assert "ok" in markup
    assert "<b>8 files</b>: 8 ok, 0 with problems" in scan_markup
