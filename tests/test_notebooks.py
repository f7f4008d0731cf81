"""Every notebook in notebooks/ executes top to bottom, with its small settings.

Notebooks read ``RDM_NOTEBOOK_QUICK=1`` (set here) and then use small depths and samples, and
``RDM_NOTEBOOK_DIR`` (the notebooks folder, for the data stored beside them).  Each notebook's
code cells run in order in a fresh namespace of this process (the notebooks use no IPython
magics: checked), in a temporary working folder, with the Agg backend: a kernel per notebook
would cost its start and its imports, seconds each.  One notebook also runs in a real Jupyter
kernel (nbclient), so the kernel path is known to work.
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _settings(monkeypatch, path: Path, cwd: Path) -> None:
    monkeypatch.setenv("RDM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("RDM_NOTEBOOK_DIR", str(path.parent))  # where stored data lie
    monkeypatch.chdir(cwd)


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    _settings(monkeypatch, path, tmp_path)
    nb = nbformat.read(path, as_version=4)
    namespace = {"__name__": "__main__"}
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), \
        torch.is_grad_enabled()
    try:
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            source = cell.source
            assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), \
                f"{path.name}: cell {i} uses IPython syntax"
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102
    finally:
        plt.close("all")
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)  # a notebook may switch autograd off for itself


@pytest.mark.heavy
def test_a_notebook_runs_in_a_jupyter_kernel(tmp_path, monkeypatch):
    path = next(p for p in NOTEBOOKS if p.name.startswith("C1_"))
    _settings(monkeypatch, path, tmp_path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert os.environ["RDM_NOTEBOOK_QUICK"] == "1"
