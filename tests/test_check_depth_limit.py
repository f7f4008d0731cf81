"""C1 `depth-limit`: passes with ODE-consistent gates, fails under its negative controls."""

import pytest

from rdm_dynamics.checks import CheckConfig, depth_limit, run_claim


@pytest.mark.parametrize("schedule", ["rdm", "euler"])
def test_consistent_gates_converge_at_order_one(schedule):
    r = run_claim(depth_limit, CheckConfig(depth=128, schedule=schedule))
    assert r.passed, r.summary
    assert abs(r.metrics["order"] - 1) < 0.1
    assert r.metrics["iid_order"] < 0.5  # the i.i.d. control does not converge
    assert r.metrics["iid_error"] > 10 * r.metrics["error"]


@pytest.mark.parametrize("schedule", ["plain", "inv-sqrt"])
def test_negative_controls_fail(schedule):
    r = run_claim(depth_limit, CheckConfig(depth=64, schedule=schedule, quick=True))
    assert not r.passed
    assert r.metrics["order"] < 0  # the error grows with depth


def test_reproducible_and_seed_dependent():
    a = run_claim(depth_limit, CheckConfig(depth=32, seed=3, quick=True))
    b = run_claim(depth_limit, CheckConfig(depth=32, seed=3, quick=True))
    c = run_claim(depth_limit, CheckConfig(depth=32, seed=4, quick=True))
    assert a.metrics == b.metrics
    assert a.metrics["error"] != c.metrics["error"]


def test_float32_still_measures_order_one():
    import torch

    r = run_claim(depth_limit, CheckConfig(depth=64, dtype=torch.float32, quick=True))
    assert r.passed, r.summary
