"""C6 `residual-sensitivity`: backprop is the discrete adjoint, memory, and the check's verdicts."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdm_dynamics.analysis.adjoint import adjoint_gradients, backprop_adjoints, linear_loss
from rdm_dynamics.analysis.fields import SmoothCoefficient, SmoothTanhField, TanhLayer
from rdm_dynamics.analysis.lipschitz import stack_gains
from rdm_dynamics.analysis.memory import SavedTensorMeter, peak_memory
from rdm_dynamics.checks import CheckConfig, residual_sensitivity, run_claim
from rdm_dynamics.stack import GatedResidualStack


@given(dim=st.integers(1, 6), batch=st.integers(1, 4), seed=st.integers(0, 10_000),
       slope=st.sampled_from([0.0, 0.5, -1.0]), schedule=st.sampled_from(["rdm", "plain",
                                                                         "inv-sqrt"]))
def test_one_unit_backprop_is_the_analytic_vector_jacobian_product(dim, batch, seed, slope,
                                                                   schedule):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    c = torch.randn(dim, generator=g, dtype=torch.float64)
    a = 0.5 + torch.rand(dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    layer = TanhLayer(W, c, slope)
    stack = GatedResidualStack([layer], 1, schedule=schedule, gain=lambda t: a, bias=lambda t: b)
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    w = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    out = backprop_adjoints(stack, z, linear_loss(w), [layer.W, layer.c])

    alpha = stack.alpha[0].detach()
    sech2 = 1 - torch.tanh(z @ W.T + c) ** 2
    aw = alpha * w  # p_1 diag(alpha)
    p0 = w + slope * aw + (aw * sech2) @ W  # p_1 (I + diag(alpha) dF/dz)
    assert torch.allclose(out.adjoints[1], w)
    assert torch.allclose(out.adjoints[0], p0, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out.param_grads[0], (aw * sech2).T @ z, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out.param_grads[1], (aw * sech2).sum(0), rtol=1e-12, atol=1e-12)


def _problem(depth, schedule="euler", seed=0, dim=4, field=None):
    g = torch.Generator().manual_seed(seed)
    own = SmoothTanhField(dim, slope=0.5, generator=g)  # drawn always: same draws after it
    field = field or own
    gain = SmoothCoefficient(dim, mean=1.0, amplitude=0.5, generator=g)
    bias = SmoothCoefficient(dim, mean=0.0, amplitude=0.5, generator=g)
    stack = GatedResidualStack(field, depth, schedule=schedule, gain=gain, bias=bias)
    z0 = torch.randn(3, dim, generator=g, dtype=torch.float64)
    w = torch.randn(3, dim, generator=g, dtype=torch.float64)
    return stack, field, z0, linear_loss(w)


def test_backprop_adjoints_follow_the_discrete_adjoint_recursion():
    """p_i = p_(i+1) (I + diag(alpha_i) dF/dz(z_i)) at every layer (per-sample Jacobians)."""
    stack, field, z0, loss = _problem(8)
    out = backprop_adjoints(stack, z0, loss)
    for i in range(stack.depth):
        for s in range(z0.shape[0]):
            J = torch.autograd.functional.jacobian(lambda x, i=i: stack.unit(i, x[None])[0],
                                                   out.states[i, s])
            assert torch.allclose(out.adjoints[i, s], out.adjoints[i + 1, s] @ J, atol=1e-12)


@given(depth=st.integers(1, 40), schedule=st.sampled_from(["euler", "plain", "inv-sqrt"]),
       seed=st.integers(0, 10_000))
def test_sensitivity_obeys_the_gronwall_bounds(depth, schedule, seed):
    """exp(-sum g/(1-g)) <= |p_0|/|p_L| <= prod (1 + g_i) (lower bound only where all g_i < 1)."""
    stack, _, z0, loss = _problem(depth, schedule, seed)
    sens = backprop_adjoints(stack, z0, loss).sensitivity
    gains = stack_gains(stack)
    assert (sens <= torch.prod(1 + gains) * (1 + 1e-12)).all()
    if (gains < 1).all():
        assert (sens >= torch.prod(1 - gains) * (1 - 1e-12)).all()


def test_gradients_converge_to_odeint_adjoint_at_order_one():
    stack16, field, z0, loss = _problem(16)
    ref_z0, ref_theta = adjoint_gradients(stack16.continuous_limit(), z0, (0.0, 1.0), loss,
                                          [field.W, field.c], rtol=1e-8, atol=1e-10)
    errors = []
    for L in (16, 32, 64):
        stack, *_ = _problem(L, field=field)
        out = backprop_adjoints(stack, z0, loss, [field.W, field.c])
        errors.append(residual_sensitivity.relative_error([out.adjoints[0]] + out.param_grads,
                                                          [ref_z0] + ref_theta))
    ratios = [errors[k] / errors[k + 1] for k in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), errors


def test_memory_meter_counts_saved_tensors_and_releases_them():
    stack, _, z0, loss = _problem(64)
    with SavedTensorMeter() as meter:
        out = backprop_adjoints(stack, z0, loss)
    assert meter.live_bytes == 0 and meter.peak_bytes > 0
    assert out.adjoints.shape == (65, 3, 4)
    z = torch.zeros(3, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (z.exp() * z.exp()).sum()  # exp saves its output, mul its two inputs
        assert meter.live_bytes == 3 * 4 * 2  # two exp outputs (float32, 3 entries each)
        y.backward()
    assert meter.live_bytes == 0


def test_backprop_memory_grows_linearly_and_the_adjoint_stays_flat():
    stack_a, field, z0, loss = _problem(32)
    stack_b, *_ = _problem(128)
    params = [field.W, field.c]
    bp = [peak_memory(lambda s=s: backprop_adjoints(s, z0, loss, params))[0]
          for s in (stack_a, stack_b)]
    adj = [peak_memory(lambda L=L: adjoint_gradients(stack_a.continuous_limit(), z0, (0.0, 1.0),
                                                     loss, params, method="euler",
                                                     options={"step_size": 1 / L}))[0]
           for L in (32, 128)]
    assert bp[1] / bp[0] == pytest.approx(4, rel=0.05)
    assert adj[0] == adj[1] and adj[0] < bp[0]


def test_gated_check_passes():
    r = run_claim(residual_sensitivity, CheckConfig(depth=64, quick=True))
    assert r.passed, r.summary
    m = r.metrics
    assert abs(m["order"] - 1) < 0.1
    assert 0.5 < m["sensitivity_ratio_gated"] < 2
    assert m["sensitivity_gated"] == pytest.approx(m["sensitivity_continuous"], rel=0.05)
    assert m["sensitivity_rate_plain"] > 0.1
    assert m["memory_exponent_backprop"] > 0.9 and abs(m["memory_exponent_adjoint"]) < 0.05


@pytest.mark.parametrize("schedule", ["plain", "inv-sqrt"])
def test_negative_controls_fail(schedule):
    r = run_claim(residual_sensitivity, CheckConfig(depth=64, schedule=schedule, quick=True))
    assert not r.passed
    assert r.metrics["order"] < 0.5 or math.isnan(r.metrics["order"])
    assert not 0.5 < r.metrics["sensitivity_ratio_gated"] < 2


def test_float32_stacks_against_a_float64_reference():
    r = run_claim(residual_sensitivity, CheckConfig(depth=32, dtype=torch.float32, quick=True))
    assert r.passed, r.summary
