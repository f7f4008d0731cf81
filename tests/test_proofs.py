"""Every sympy script in proofs/ runs and confirms its symbolic steps.

Each script runs as ``__main__`` in this process (``runpy``: sympy is imported once per test
process, not once per script), with its folder first on ``sys.path`` as for a script; a script
that finds a step false exits with a non-zero code, which fails the test, and one that finishes
prints "all steps verified"."""

import runpy
from pathlib import Path

import pytest

PROOFS = sorted((Path(__file__).resolve().parents[1] / "proofs").glob("C*.py"))


def test_there_are_proof_scripts():
    assert PROOFS, "proofs/ holds no sympy scripts"


@pytest.mark.parametrize("script", PROOFS, ids=[p.name for p in PROOFS])
def test_proof_script_checks_out(script, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))  # as for a script: its folder first
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"{script.name} failed:\n{capsys.readouterr().out}"
    out = capsys.readouterr().out
    assert "all steps verified" in out and "FAILED" not in out, out
