"""The solver wrappers: ``solve_ode`` ends on every output time, ``ODE_METHODS`` from
torchdiffeq's own classes."""

import pytest
import torch

from rdm_dynamics.solvers import ODE_METHODS, is_adaptive, solve_ode


@pytest.mark.parametrize("steps", [4, 16, 64])
def test_solve_ode_stops_on_every_output_time_and_never_evaluates_beyond(steps):
    """dz/dt = z / (t - 0.5) on t from 1 down to 0.5 + 1e-3: the field blows up at t = 0.5, just
    past the last time.  Every output matches the exact solution z(t) = z(1) (t - 0.5) / 0.5 at
    the tolerances, and no evaluation lies outside [t_end, t_start]."""
    seen = []

    def field(t, z):
        seen.append(float(t))
        return z / (t - 0.5)

    times = torch.linspace(1.0, 0.501, steps + 1, dtype=torch.float64)
    z0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    z = solve_ode(field, z0, times, rtol=1e-10, atol=1e-12)
    exact = z0 * ((times - 0.5) / 0.5)[:, None]
    assert torch.allclose(z, exact, rtol=1e-8, atol=1e-10)
    assert min(seen) >= float(times[-1]) and max(seen) <= float(times[0])


def test_ode_methods_come_from_torchdiffeq_solver_classes():
    assert {"dopri5", "dopri8", "bosh3", "euler", "rk4"} <= set(ODE_METHODS)
    assert is_adaptive("dopri5") and is_adaptive("bosh3") and not is_adaptive("rk4")
    assert "scipy_solver" not in ODE_METHODS  # interpolates its outputs: not offered
    with pytest.raises(ValueError, match="unknown ODE method"):
        is_adaptive("nope")
