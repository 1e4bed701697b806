"""The tutorial notebooks: committed without outputs, generated from their script, public API
only, and executed end to end (each asserts its own key numbers in its cells)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NAMES = ("quickstart", "probing", "similarity", "patching", "training")

CHECK_KERNEL = (
    "import json as _json, sys as _sys\n"
    "print(_json.dumps({'executable': _sys.executable, 'prefix': _sys.prefix}))"
)


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOK_DIR / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _python_source(cell_source: str) -> str:
    """A code cell's source with IPython magics removed (so that ``ast`` can parse it)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines()
    )


def test_the_notebook_folder_holds_exactly_the_generated_notebooks():
    builder = _builder()
    assert tuple(builder.NOTEBOOKS) == NAMES
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs_and_is_current(name):
    nb = _read(name)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{name}.ipynb has no code"
    for cell in code_cells:
        assert cell.outputs == [], f"{name}.ipynb cell {cell.id} has outputs"
        assert cell.execution_count is None, f"{name}.ipynb cell {cell.id} has an execution count"
        assert "execution" not in cell.metadata, f"{name}.ipynb cell {cell.id} has timings"
    assert nb.metadata.kernelspec.name == "python3"
    text = (NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8")
    assert text == _builder().render(name), (
        f"{name}.ipynb differs from notebooks/build_notebooks.py; run "
        "python notebooks/build_notebooks.py"
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_public_api_and_checks_its_numbers(name):
    nb = _read(name)
    asserts = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_python_source(cell.source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transferlens"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [p for p in node.module.split(".") if p.startswith("_")]
                assert not private, f"{name}: private import {private} from {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    assert not any(p.startswith("_") for p in parts[1:]), alias.name
            if isinstance(node, ast.Attribute):
                attr = node.attr
                assert not (attr.startswith("_") and not attr.startswith("__")), (
                    f"{name}: private attribute .{attr}"
                )
            asserts += isinstance(node, ast.Assert)
    assert asserts >= 3, f"{name} checks only {asserts} numbers"
    assert "plt.show" not in "".join(c.source for c in nb.cells)


def _execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = _read(name)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_KERNEL))
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,  # per cell; the notebooks take well under a minute in all
        startup_timeout=120,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell (asserts included)
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel's temporary folders go here
    nb = _execute(name, cwd)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    # the kernel is this interpreter (the project's environment), not another python3
    kernel = json.loads(nb.cells[-1].outputs[0]["text"])
    assert os.path.realpath(kernel["executable"]) == os.path.realpath(sys.executable)
    assert os.path.realpath(kernel["prefix"]) == os.path.realpath(sys.prefix)
    # the notebook cleans up after itself
    assert list(cwd.iterdir()) == []
    assert [p.name for p in tmp.iterdir() if p.name.startswith("transferlens-")] == []
