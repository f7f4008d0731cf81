"""Every sympy script in proofs/ runs and confirms its symbolic steps (exit code 0)."""

import subprocess
import sys
from pathlib import Path

import pytest

PROOFS = sorted((Path(__file__).resolve().parents[1] / "proofs").glob("C*.py"))


def test_there_are_proof_scripts():
    assert PROOFS, "proofs/ holds no sympy scripts"


@pytest.mark.parametrize("script", PROOFS, ids=[p.name for p in PROOFS])
def test_proof_script_checks_out(script):
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout}\n{done.stderr}"
    assert "all steps verified" in done.stdout, done.stdout
