"""The self-test (``verify --self-test``): the verifier still has teeth.

The slow test runs ``verify --self-test --quick`` as CI does (every seeded fault of
``checks/faults.py`` must be caught and every negative control must fail).  The others test the
machinery: patches reach every caller and are restored, and a fault that survives, a control that
passes or a clean run that fails makes the self-test exit 1.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from rdm_dynamics import stats
from rdm_dynamics.checks import CheckConfig, depth_limit, faults, registry, run_claim, self_test
from rdm_dynamics.checks.faults import CONTROLS, FAULTS, Control, Fault, patched, resolve

QUICK = CheckConfig(depth=64, quick=True)


def test_every_fault_resolves_and_names_registered_checks():
    checks = set(registry()) | set(registry("checkpoint"))  # the self-test runs both kinds
    names = [f.name for f in FAULTS]
    assert len(names) == len(set(names))
    modules = {f.target.split(".")[1] for f in FAULTS}
    assert {"sde", "laws", "noise", "stack", "analysis", "stats", "training", "checks"} <= modules
    for f in FAULTS:
        resolve(f.target)
        assert f.checks and set(f.checks) <= checks, f.name
    controlled = {c.check for c in CONTROLS}
    assert controlled == checks and set(faults.CHECK_IDS) <= controlled  # a control per check
    assert {cid for f in FAULTS for cid in f.checks} == checks  # and a fault per check


def test_a_patch_reaches_names_imported_elsewhere_and_is_restored():
    fault = next(f for f in FAULTS if f.name == "fit-order-mixed-logs")
    original = stats.fit_order
    with patched(fault):
        assert stats.fit_order is not original
        assert depth_limit.fit_order is stats.fit_order  # ``from ..stats import fit_order``
        assert stats.fit_order([1, 2], [1.0, 0.5]).order == pytest.approx(1 / 2.302585, 1e-6)
    assert stats.fit_order is original and depth_limit.fit_order is original


def _self_test(monkeypatch, fault_list, control_list, quick_controls=None):
    monkeypatch.setattr(faults, "FAULTS", fault_list)
    monkeypatch.setattr(self_test, "FAULTS", fault_list)
    monkeypatch.setattr(self_test, "CONTROLS", control_list)
    monkeypatch.setattr(self_test, "QUICK_CONTROLS",
                        tuple(c.name for c in control_list) if quick_controls is None
                        else quick_controls)
    out = io.StringIO()
    rc = self_test.run_self_test(QUICK, jobs=1, out=out)
    return rc, out.getvalue()


def _plain_control():
    return Control("depth-limit:plain", "depth-limit", faults._scheduled("plain"))


def test_a_fault_that_survives_fails_the_self_test(monkeypatch):
    harmless = Fault("harmless", "rdm_dynamics.stats.mean_se", lambda original: original,
                     ("depth-limit",), "no change at all")
    rc, text = _self_test(monkeypatch, [harmless], [_plain_control()])
    assert rc == 1 and "SURVIVED" in text and "kill rate 0/1" in text


def test_a_caught_fault_and_a_failing_control_pass_the_self_test(monkeypatch):
    fault = next(f for f in FAULTS if f.name == "unit-forgets-beta")
    fault = Fault(fault.name, fault.target, fault.replacement, ("depth-limit",), "")
    rc, text = _self_test(monkeypatch, [fault], [_plain_control()])
    assert rc == 0, text
    assert "kill rate 1/1 (100%)" in text and "unit-forgets-beta" in text


def test_a_control_that_passes_fails_the_self_test(monkeypatch):
    fault = next(f for f in FAULTS if f.name == "unit-forgets-beta")
    fault = Fault(fault.name, fault.target, fault.replacement, ("depth-limit",), "")
    not_a_control = Control("depth-limit:euler", "depth-limit", faults._scheduled("euler"))
    rc, text = _self_test(monkeypatch, [fault], [not_a_control])
    assert rc == 1 and "PASSED (a control that passes!)" in text


#: The fast lane's sample of the fault library: one fault per check, each run against the check
#: that catches it first in the whole quick self-test (the slow test below runs them all).
FAULT_SAMPLE = {"depth-limit": "unit-forgets-beta",
                "pf-ode": "gaussian-score-basis-transposed",
                "reverse-sde": "brownian-bridge-siblings-equal",
                "gate-moments": "gate-basis-transposed",
                "error-propagation": "gronwall-skips-first-unit",
                "residual-sensitivity": "adjoints-reversed",
                "iid-depth-limit": "iid-preactivation-variance-missing-dim"}


@pytest.mark.parametrize("cid, name", FAULT_SAMPLE.items())
def test_a_real_fault_fails_the_check_that_relies_on_it(cid, name):
    """At the quick self-test's settings (--depth 256 --quick; the clean runs pass there:
    test_verdicts), the planted fault makes its check FAIL by measurement, not by a crash."""
    fault = next(f for f in FAULTS if f.name == name)
    assert cid in fault.checks
    with patched(fault):
        result = run_claim(registry()[cid], CheckConfig(depth=256, quick=True))
    assert not result.passed and result.verdict.failed and result.error is None, result.summary


@pytest.mark.slow  # about 77 check runs (quick settings, 2 processes; a small model trained first)
def test_verify_self_test_quick_catches_every_fault():
    """The whole library: ``python -m rdm_dynamics.verify --self-test --quick`` exits 0, every
    fault is caught by a measurement (none only by crashing a check) and every negative
    control fails."""
    proc = subprocess.run([sys.executable, "-m", "rdm_dynamics.verify", "--self-test", "--quick"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"kill rate {len(FAULTS)}/{len(FAULTS)} (100%)" in proc.stdout
    assert "SURVIVED" not in proc.stdout and "CLEAN RUN FAILED" not in proc.stdout
    assert "crashed:" not in proc.stdout, proc.stdout
