"""Every notebook in notebooks/ executes top to bottom, with its small settings.

Notebooks read ``RDM_NOTEBOOK_QUICK=1`` (set here) and then use small depths and samples, and
``RDM_NOTEBOOK_DIR`` (the notebooks folder, for the data stored beside them).  Each notebook must
also print one result its claim is about (``PRINTED``), within the claim's band.  Each notebook's
code cells run in order in a fresh namespace of this process (the notebooks use no IPython
magics: checked), in a temporary working folder, with the Agg backend: a kernel per notebook
would cost its start and its imports, seconds each.  One notebook also runs in a real Jupyter
kernel (nbclient), so the kernel path is known to work.
"""

import math
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _within(lo, hi):
    return lambda *values: all(lo <= float(v) <= hi for v in values)


#: One printed result of each notebook that its claim is about, read from what the notebook
#: prints with its small settings: a pattern (its groups are the figures) and what the figures
#: must satisfy.  The claim-level pass rules of the checks are gated elsewhere; this makes sure
#: each notebook shows the claim holding where it should and failing under its control.
PRINTED = {
    "C1_": [(r"PASS - With rdm gates the error .*? falls: order (\S+) over", _within(0.85, 1.15)),
            (r"FAIL - With plain gates the error .*? grows with depth: order (\S+)",
             _within(-math.inf, 0.0))],
    "C2_": [(r"PASS - With rdm gates the PF-ODE stack's pathwise error .*? falls: orders "
             r"([\d.]+)\.\.([\d.]+)", _within(0.85, 1.15)),
            (r"no 1/2 in the PF drift\s+FAIL", None)],
    "C3_": [(r"PASS - With rdm gates the stochastic stack .*? strong error at eps falls "
             r"\(orders ([\d.]+)\.\.([\d.]+)", _within(0.85, 1.15)),
            (r"noise g h instead of g sqrt\(h\)\s+FAIL", None)],
    "C4_": [(r"closed form, PF\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
             _within(0.0, 1e-10)),
            (r"\[FAIL\] wrong times:", None)],
    "C5_": [(r"rdm\s+violations 0, amplification at L = \d+: \S+ \(bound \S+\), ratio to "
             r"L = \d+: ([\d.]+)", _within(0.5, 2.0)),
            (r"plain\s+violations 0, amplification at L = \d+: \S+ \(bound \S+\), ratio to "
             r"L = \d+: ([\d.]+)", _within(2.0, math.inf))],
    "C6_": [(r"PASS - With rdm gates the error of backpropagation .*? falls \(order ([\d.]+)\)",
             _within(0.85, 1.15)),
            (r"FAIL - With plain gates", None)],
    "C7_": [(r"PASS - With weights i\.i\.d\. .*? falls at order ([\d.]+) \+/- ([\d.]+)",
             lambda order, se: abs(float(order) - 1) <= 0.25 + 2 * float(se))],
    "C8_": [(r"relative residual of ([\d.]+) \+/- \S+ \(bfloat16\)", _within(0.0, 0.1)),
            (r"^FAIL ", None)],
    "C9_": [(r"equals each unit's own VJP step to (\S+) \(relative", _within(0.0, 1e-8)),
            (r"^FAIL ", None)],
    "C10_": [(r"PASS - Over \d+ time bins the risk of the trained denoiser splits into the exact "
              r"Bayes risk plus its excess", None),
             (r"^FAIL \['identity_residual", None)],
    "C11_": [(r"\[PASS\] with rdm gates and smooth initialisation .*? falls at order "
              r"([\d.]+) \+/- ([\d.]+)", lambda order, se: float(order) > 2 * float(se)),
             (r"different initial function per depth: FAIL", None)],
    "C12_": [(r"rdm holds, plain breaks\s+PASS", None), (r"rdm breaks\s+FAIL", None),
             (r"plain holds\s+FAIL", None)],
}


def check_printed(name: str, printed: str) -> None:
    """Every pattern of the notebook's ``PRINTED`` entry is found in what it printed, and its
    figures satisfy their condition."""
    expectations = next(v for k, v in PRINTED.items() if name.startswith(k))
    for pattern, holds in expectations:
        found = re.search(pattern, printed, re.MULTILINE)
        assert found, f"{name} did not print {pattern!r}:\n{printed}"
        if holds is not None:
            assert holds(*found.groups()), f"{name}: {found.group(0)!r}"


def test_every_notebook_has_a_printed_result_and_a_bad_one_is_caught():
    assert {p.name.split("_")[0] + "_" for p in NOTEBOOKS} == set(PRINTED)
    good = "PASS - With rdm gates the error against x falls: order 0.99 over L"
    check_printed("C1_x", good + "\nFAIL - With plain gates the error x grows with depth: order -1")
    with pytest.raises(AssertionError):  # an order off its band is caught
        check_printed("C1_x", good.replace("0.99", "0.5") + "\nFAIL - With plain gates the "
                      "error x grows with depth: order -1")


def _settings(monkeypatch, path: Path, cwd: Path) -> None:
    monkeypatch.setenv("RDM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("RDM_NOTEBOOK_DIR", str(path.parent))  # where stored data lie
    monkeypatch.chdir(cwd)


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_and_shows_its_claim(path, tmp_path, monkeypatch, capsys):
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
    check_printed(path.name, capsys.readouterr().out)


@pytest.mark.heavy
def test_a_notebook_runs_in_a_jupyter_kernel(tmp_path, monkeypatch):
    path = next(p for p in NOTEBOOKS if p.name.startswith("C1_"))
    _settings(monkeypatch, path, tmp_path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    check_printed(path.name, "".join(o.get("text", "") for o in outputs
                                     if o.get("output_type") == "stream"))
