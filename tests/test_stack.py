"""The gated residual stack: gates, identities, agreement with torchdiffeq, its limit."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchdiffeq import odeint

from rdm_dynamics.analysis.fields import SmoothCoefficient, SmoothTanhField, TanhLayer
from rdm_dynamics.stack import SCHEDULES, GatedResidualStack, get_schedule

F64 = torch.float64


def tanh_field(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SmoothTanhField(d, modes=3, scale=1.5, generator=g), g


@given(depth=st.integers(1, 40), d=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_zero_gates_are_the_identity(depth, d, seed):
    field, g = tanh_field(d, seed)
    zero = lambda t: torch.zeros(d, dtype=F64)  # noqa: E731
    stack = GatedResidualStack(field, depth, gain=zero, bias=zero)
    z0 = torch.randn(5, d, generator=g, dtype=F64)
    states = stack(z0, return_all=True)
    assert states.shape == (depth + 1, 5, d)
    assert torch.equal(states, z0.expand_as(states))


@given(depth=st.integers(1, 64), seed=st.integers(0, 10_000),
       span=st.sampled_from([(0.0, 1.0), (1.0, 1e-3), (0.2, 0.7)]))
def test_euler_gates_equal_torchdiffeq_euler(depth, seed, span):
    """z_{i+1} = z_i + h (a F + b) is torchdiffeq's fixed-grid euler on the same grid, to 1e-12."""
    field, g = tanh_field(4, seed)
    gain = SmoothCoefficient(4, mean=1.0, amplitude=0.5, generator=g)
    bias = SmoothCoefficient(4, mean=0.0, amplitude=0.5, generator=g)
    stack = GatedResidualStack(field, depth, schedule="euler", span=span, gain=gain, bias=bias)
    z0 = torch.randn(6, 4, generator=g, dtype=F64)
    with torch.no_grad():
        ours = stack(z0, return_all=True)
        theirs = odeint(stack.continuous_limit(), z0, stack.times, method="euler")
    assert (ours - theirs).abs().max() <= 1e-12


@pytest.mark.parametrize("name,scale", [("euler", lambda L, h: h), ("rdm", lambda L, h: h),
                                        ("plain", lambda L, h: 1.0),
                                        ("inv-sqrt", lambda L, h: 1 / math.sqrt(L))])
def test_gate_values_per_schedule(name, scale):
    L, span = 32, (1.0, 1e-3)
    h = (1.0 - 1e-3) / L
    gain = lambda t: 2.0 + t  # noqa: E731
    bias = lambda t: 3.0 * t  # noqa: E731
    noise = lambda t: 5.0 + 0 * t  # noqa: E731
    stack = GatedResidualStack(lambda z, t: z, L, schedule=name, span=span, gain=gain, bias=bias,
                               noise=noise)
    t = stack.times[:-1]
    s = scale(L, h)
    gates = stack.gates()
    assert torch.allclose(gates["alpha"], s * (2.0 + t))
    assert torch.allclose(gates["beta"], s * 3.0 * t)
    assert torch.allclose(gates["gamma"], math.sqrt(s) * torch.full_like(t, 5.0))
    learnable = isinstance(gates["alpha"], torch.nn.Parameter)
    assert learnable == (name == "rdm")
    assert get_schedule(name).ode_consistent == (name in ("euler", "rdm"))


def test_rdm_gates_are_trainable_and_start_at_euler():
    field, g = tanh_field()
    rdm = GatedResidualStack(field, 8, schedule="rdm")
    euler = GatedResidualStack(field, 8, schedule="euler")
    z0 = torch.randn(3, 4, generator=g, dtype=F64)
    assert torch.equal(rdm(z0), euler(z0))
    names = {n for n, _ in rdm.named_parameters()}
    assert {"alpha", "beta"} <= names
    rdm(z0).sum().backward()
    assert rdm.alpha.grad is not None and rdm.alpha.grad.abs().sum() > 0


def test_stochastic_units_use_the_given_noise():
    L, d = 16, 3
    stack = GatedResidualStack(lambda z, t: -z, L, noise=lambda t: 0.7 + 0 * t)
    z0 = torch.zeros(2, d, dtype=F64)
    xi = torch.randn(L, 2, d, dtype=F64)
    z = z0
    h = 1.0 / L
    for i in range(L):
        z = z + h * (-z) + 0.7 * math.sqrt(h) * xi[i]
    assert torch.allclose(stack(z0, xi=xi), z, atol=1e-14)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(stack(z0, generator=g1), stack(z0, generator=g2))
    with pytest.raises(ValueError, match="xi must have shape"):
        stack(z0, xi=xi[:-1])


def test_per_layer_residuals():
    d, L = 3, 5
    layers = [TanhLayer(torch.randn(d, d, dtype=F64), torch.randn(d, dtype=F64)) for _ in range(L)]
    stack = GatedResidualStack(layers, L, schedule="plain")
    z0 = torch.randn(4, d, dtype=F64)
    z = z0
    for layer in layers:
        z = z + layer(z)
    assert torch.allclose(stack(z0), z)
    assert len(list(stack.parameters())) == 2 * L
    with pytest.raises(ValueError, match="no continuous limit"):
        stack.continuous_limit()
    with pytest.raises(ValueError, match="residual functions for depth"):
        GatedResidualStack(layers, L + 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        GatedResidualStack(lambda z, t: z, 4, schedule="nope")
    with pytest.raises(ValueError, match="positive integer"):
        GatedResidualStack(lambda z, t: z, 0)
    assert set(SCHEDULES) == {"rdm", "euler", "plain", "inv-sqrt"}


def test_dtype_and_module_movement():
    field, _ = tanh_field()
    stack = GatedResidualStack(field, 4, schedule="rdm", dtype=torch.float32)
    assert stack.times.dtype == torch.float32 and stack.alpha.dtype == torch.float32
    stack = stack.to(F64)
    assert stack.alpha.dtype == F64 and stack.times.dtype == F64


def test_casting_a_stack_leaves_shared_coefficients_alone():
    """Two stacks share a gain module; casting one must not round the other's coefficients."""
    field, g = tanh_field()
    gain = SmoothCoefficient(4, mean=1.0, amplitude=0.5, generator=g)
    phase = gain.phase.clone()
    stack = GatedResidualStack(field, 8, gain=gain)
    stack.to(torch.float16)
    assert gain.phase.dtype == F64 and torch.equal(gain.phase, phase)
    assert not any(m is gain for m in stack.modules())
