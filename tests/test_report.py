"""Order fitting, pass intervals, the table, atomic writes."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdm_dynamics.checks import CheckConfig, depth_ladder, registry, resolve_ids
from rdm_dynamics.checks.report import CheckResult, Series, format_table, order_figure, save_figure
from rdm_dynamics.checks.rules import Rule, judge, within
from rdm_dynamics.files import atomic_write_json
from rdm_dynamics.stats import fit_order


@given(order=st.floats(-3, 3), c=st.floats(1e-6, 1e3), base=st.sampled_from([2, 4, 16]),
       rungs=st.integers(2, 8))
def test_fit_recovers_exact_power_laws(order, c, base, rungs):
    depths = [base * 2**k for k in range(rungs)]
    errors = [c * L ** (-order) for L in depths]
    fit = fit_order(depths, errors)
    assert math.isclose(fit.order, order, abs_tol=1e-9)
    assert math.isclose(math.exp(fit.intercept), c, rel_tol=1e-8)
    assert fit.stderr < 1e-8


@given(order=st.floats(0.5, 2.0), noise=st.floats(0.01, 0.1), seed=st.integers(0, 1000))
def test_fit_with_noise_reports_its_spread(order, noise, seed):
    rng = np.random.default_rng(seed)
    depths = [16, 32, 64, 128, 256, 512]
    errors = [L ** (-order) * math.exp(noise * rng.standard_normal()) for L in depths]
    fit = fit_order(depths, errors)
    assert abs(fit.order - order) <= 6 * max(fit.stderr, 1e-12) + 1e-9
    assert fit.stderr > 0


def test_unmeasurable_orders_are_nan_and_never_pass():
    for errors in ([1.0, 0.0, 0.5], [1.0, float("nan"), 0.1], [1.0]):
        fit = fit_order([16, 32, 64][: len(errors)], errors)
        assert math.isnan(fit.order)
        assert not within(fit.order, (0.85, 1.15))


def test_within():
    assert within(1.0, (0.85, 1.15)) and within(0.85, (0.85, 1.15))
    assert not within(1.2, (0.85, 1.15))
    assert within(5.0, (0, None)) and not within(-1.0, (0, None))
    assert not within(float("inf"), (None, None))


def test_ladder():
    assert depth_ladder(256) == [16, 32, 64, 128, 256]
    assert depth_ladder(100) == [25, 50, 100]
    assert depth_ladder(2) == [1, 2]
    assert depth_ladder(7) == [7]
    assert CheckConfig(depth=64).ladder == (4, 8, 16, 32, 64)


def test_registry_and_only():
    checks = registry()
    assert "depth-limit" in checks
    assert list(checks)[0] == "depth-limit"
    assert resolve_ids("C1", checks) == ["depth-limit"]
    with pytest.raises(ValueError, match="unknown check"):
        resolve_ids("depth-limit,nope", checks)


def test_result_json_contract_and_table(tmp_path):
    metrics = {"order": 1.0, "n": 3, "bad": float("nan")}
    verdict = judge(metrics, [Rule("order", (0.85, 1.15)), Rule("n", (0, None))])
    r = CheckResult(id="x", claim="C9", metrics=metrics, verdict=verdict, summary="s",
                    seconds=1.23456, measured_text="order 1", theory_text="1")
    js = r.to_json()
    assert list(js) == ["id", "claim", "passed", "seconds", "metrics", "expected", "failed",
                        "summary", "status"]
    assert js["status"] == "pass"
    assert js["passed"] is True and js["failed"] == []
    assert js["metrics"]["bad"] is None and js["expected"]["n"] == [0, None]
    path = tmp_path / "r.json"
    atomic_write_json(path, js)
    assert json.loads(path.read_text()) == js
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    table = format_table([r])
    assert "PASS" in table and "C9" in table
    fig = order_figure("t", [Series("a", [16, 32], [1.0, 0.5], fit_order([16, 32], [1.0, 0.5]))])
    save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_figure_is_replaced_only_if_the_toolkit_drew_it(tmp_path):
    """A PNG the toolkit rendered carries its tag; a user's file of a figure's name is refused,
    unless the toolkit's report in that folder names it (a report folder of an older version)."""
    from rdm_dynamics.checks.report import (
        check_report_targets,
        is_toolkit_figure,
        render_figure,
        versions,
    )
    from rdm_dynamics.cli import UsageError

    ours = tmp_path / "pf-ode.png"
    ours.write_bytes(render_figure(lambda fig: fig.add_subplot().plot([0, 1])).png)
    assert is_toolkit_figure(ours)
    check_report_targets(tmp_path, None, "verify", ["pf-ode.png"])
    ours.write_bytes(b"\x89PNG someone else's")
    assert not is_toolkit_figure(ours)
    with pytest.raises(UsageError, match="holds a pf-ode.png that verify did not draw"):
        check_report_targets(tmp_path, None, "verify", ["pf-ode.png"])
    check_report_targets(tmp_path, None, "verify", [])  # --no-figures: nothing to replace
    (tmp_path / "report.json").write_text(json.dumps(
        {"checks": [{"id": "pf-ode"}], "versions": versions(), "figures": ["pf-ode.png"]}))
    check_report_targets(tmp_path, None, "verify", ["pf-ode.png"])
