"""Every claim module has the one shape ``checks.claim`` states: measure (no judging), rules
declared once, summary, headline, figure, theory; and the registry of the theory checks imports
none of the training code."""

import ast
import inspect
import subprocess
import sys

import pytest

from rdm_dynamics.checks import CLAIM_MODULES, KINDS, registry

MODULES = [(kind, cid, module) for kind in KINDS for cid, module in registry(kind).items()]


@pytest.mark.parametrize("kind, cid, module", MODULES, ids=[cid for _, cid, _ in MODULES])
def test_every_claim_module_has_the_claim_shape(kind, cid, module):
    for name in ("CLAIM", "ID", "TITLE", "measure", "summary", "headline", "figure"):
        assert hasattr(module, name), f"{cid} lacks {name}"
    assert hasattr(module, "RULES") or callable(getattr(module, "rules", None)), cid
    assert hasattr(module, "THEORY") or callable(getattr(module, "theory", None)), cid
    assert not hasattr(module, "run"), f"{cid} has its own run: claims run through run_claim"


def judging_names(function) -> set[str]:
    """The verdict machinery a function's body names (``judge``, ``Verdict``, ``Rule``,
    ``order_rules``)."""
    tree = ast.parse(inspect.getsource(function).lstrip())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return names & {"judge", "Verdict", "Rule", "order_rules"}


@pytest.mark.parametrize("kind, cid, module", MODULES, ids=[cid for _, cid, _ in MODULES])
def test_measure_does_not_judge(kind, cid, module):
    assert not judging_names(module.measure), cid


def test_the_judging_reader_sees_a_judge():
    """The negative control of the test above."""
    from rdm_dynamics.checks.rules import Rule, judge

    def judging_measure(config):
        return judge({"x": 1.0}, [Rule("x", (0, 2))])

    assert judging_names(judging_measure) == {"judge", "Rule"}


def test_the_kinds_are_listed_once():
    listed = [name for names in CLAIM_MODULES.values() for name in names]
    assert len(listed) == len(set(listed))
    assert [m.CLAIM for _, _, m in MODULES] == [f"C{i}" for i in range(1, len(MODULES) + 1)]


def test_listing_the_theory_checks_imports_no_training_code():
    code = ("import sys; from rdm_dynamics.checks import registry; registry(); "
            "print(sorted(m for m in sys.modules if m.startswith(('rdm_dynamics.training', "
            "'rdm_dynamics.models', 'rdm_dynamics.depth_study', 'yaml'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out


def test_verify_list_imports_no_training_code():
    """``python -m rdm_dynamics.verify --list`` as a command runs it, then the modules it left
    imported."""
    code = ("import runpy, sys\n"
            "sys.argv = ['verify', '--list']\n"
            "try:\n"
            "    runpy.run_module('rdm_dynamics.verify', run_name='__main__')\n"
            "except SystemExit as done:\n"
            "    assert done.code == 0\n"
            "print(sorted(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # the names printed
    assert "rdm_dynamics.checks.depth_limit" in imported  # the checks were listed
    assert not [m for m in imported if m.startswith(("rdm_dynamics.training",
                                                      "rdm_dynamics.models", "yaml"))]
