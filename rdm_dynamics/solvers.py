"""The ODE and SDE solvers the references use: thin wrappers over torchdiffeq and torchsde.

``solve_ode`` and ``solve_ode_adjoint`` (torchdiffeq, the dopri5 references at ``REFERENCE_RTOL``
and ``REFERENCE_ATOL``; ``ODE_METHODS`` and ``is_adaptive`` classify torchdiffeq's methods by their
own classes), ``TorchsdeReverse`` (a reverse SDE in the form ``torchsde.sdeint`` takes) and
``GridBrownian`` (given increments as the Brownian motion torchsde takes, so its solvers run on
the increments a stack runs on).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["solve_ode", "solve_ode_adjoint", "TorchsdeReverse", "GridBrownian", "REFERENCE_RTOL",
           "REFERENCE_ATOL",
           "ODE_METHODS",  # noqa: F822 (module __getattr__)
           "is_adaptive"]


def _torchdiffeq_solvers() -> tuple[dict, type, type]:
    """torchdiffeq's solver table and base classes: the one place the toolkit reads
    torchdiffeq's internals (it exports no public list of methods), so a method is classified
    by its class.  Imported on first use: torchdiffeq pulls in scipy.integrate (about half a
    second), which a command that solves no ODE (``train``, ``sample`` with a stochastic
    sampler) need not pay."""
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
    from torchdiffeq._impl.solvers import FixedGridODESolver

    return SOLVERS, RKAdaptiveStepsizeODESolver, FixedGridODESolver


@functools.cache
def _ode_methods() -> tuple[str, ...]:
    solvers, adaptive, fixed = _torchdiffeq_solvers()
    return tuple(sorted(name for name, solver in solvers.items()
                        if issubclass(solver, (adaptive, fixed))))


def __getattr__(name: str):
    """``ODE_METHODS``: the torchdiffeq methods ``solve_ode`` takes: the adaptive Runge-Kutta
    methods (which can be made to step onto every output time) and the fixed-grid methods (which
    step on the times).  Other torchdiffeq methods (``scipy_solver``) interpolate their outputs
    and are not offered.  Read from torchdiffeq on first access (PEP 562)."""
    if name == "ODE_METHODS":
        return _ode_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_adaptive(method: str) -> bool:
    """Whether a torchdiffeq method controls its step size by (rtol, atol): true for torchdiffeq's
    adaptive Runge-Kutta solver classes, false for its fixed-grid ones.  ValueError for a method
    that ``solve_ode`` does not take."""
    if method not in _ode_methods():
        raise ValueError(f"unknown ODE method {method!r}; choose one of "
                         f"{', '.join(_ode_methods())}")
    solvers, adaptive, _ = _torchdiffeq_solvers()
    return issubclass(solvers[method], adaptive)


#: Tolerances of every dopri5 reference solution in the theory checks (float64).
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12


def solve_ode(field, z0: torch.Tensor, times: torch.Tensor, *, method: str = "dopri5",
              rtol: float = REFERENCE_RTOL, atol: float = REFERENCE_ATOL) -> torch.Tensor:
    """Solve dz/dt = field(t, z) with torchdiffeq; returns z at every time, shape (len(times), ...).

    Adaptive methods use (rtol, atol) and integrate each interval [t_i, t_{i+1}] as its own
    initial-value problem that ends exactly at t_{i+1} (torchdiffeq's ``step_t`` at its end
    point; the first trial step is the whole interval, shrunk by the error control where the
    tolerances ask for it).  So no output is interpolated, and the solver never evaluates the
    field beyond the last time, where it may be undefined (the sub-VP diffusion at t < 0).
    One solve with every output time in ``step_t`` is not safe: torchdiffeq tests
    ``t0 < t_next < t0 + dt`` strictly, so a step that lands exactly on an output time leaves
    every later one unenforced and the solver steps past the end.  Fixed-grid methods step on
    ``times`` and ignore the tolerances.  ``method`` is one of :data:`ODE_METHODS`.
    """
    from torchdiffeq import odeint

    if not is_adaptive(method):
        return odeint(field, z0, times, method=method)
    states = [z0]
    for i in range(len(times) - 1):
        span = times[i:i + 2]
        options = {"step_t": span[1:], "first_step": (span[1] - span[0]).abs()}
        states.append(odeint(field, states[-1], span, method=method, rtol=rtol, atol=atol,
                             options=options)[-1])
    return torch.stack(states)


def solve_ode_adjoint(field, z0: torch.Tensor, times: torch.Tensor, *, params=None,
                      method: str = "dopri5", rtol: float = REFERENCE_RTOL,
                      atol: float = REFERENCE_ATOL, options: dict | None = None) -> torch.Tensor:
    """Solve dz/dt = field(t, z) with torchdiffeq.odeint_adjoint: gradients flow back by solving
    the adjoint ODE backwards (same method, tolerances and options), storing no forward graph,
    so memory does not grow with the number of steps.  ``field`` is an nn.Module; ``params`` are
    the tensors to differentiate (default: its parameters)."""
    from torchdiffeq import odeint_adjoint

    return odeint_adjoint(field, z0, times, method=method, rtol=rtol, atol=atol, options=options,
                          adjoint_rtol=rtol, adjoint_atol=atol,
                          adjoint_params=None if params is None else tuple(params))


class TorchsdeReverse(torch.nn.Module):
    """A reverse SDE in the form ``torchsde.sdeint`` takes, an independent reference solver.

    torchsde integrates forward in time, so the denoising direction runs on s = T - t, s from 0
    to T - eps:  dX = v(X, T - s) ds + g(T - s) dB_s,  v = ``ReverseSDE.denoising_field``.  The
    noise is additive (g depends on time only), declared as such so ``method="srk"`` has strong
    order 1.5; ``method="euler"`` is Euler-Maruyama, the scheme a stochastic gated stack runs.
    """

    sde_type = "ito"
    noise_type = "additive"

    def __init__(self, reverse):
        super().__init__()
        self.reverse, self.T = reverse, reverse.T

    def f(self, s, y):
        return self.reverse.denoising_field(y, self.T - s)

    def g(self, s, y):
        g = self.reverse.forward.diffusion_coef(torch.as_tensor(self.T - s, dtype=y.dtype,
                                                                device=y.device))
        eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
        return (g * eye).expand(y.shape[0], -1, -1)


class GridBrownian:
    """Given increments on a uniform grid of [0, span], the Brownian motion object
    ``torchsde.sdeint`` takes (``bm(ta, tb)`` = W(tb) - W(ta) for grid times ta <= tb), so that
    torchsde's fixed-step solvers run on exactly the increments a stack runs on.  A time off the
    grid, or a query for U or A (the Levy areas of higher-order schemes), is a ValueError: this
    path knows its increments only."""

    levy_area_approximation = "none"

    def __init__(self, increments: torch.Tensor, span: float = 1.0):
        self.steps, self.span = increments.shape[0], float(span)
        self.shape = tuple(increments.shape[1:])
        self.dtype, self.device = increments.dtype, increments.device
        self._cumulative = torch.cat([torch.zeros_like(increments[:1]),
                                      increments.cumsum(0)])

    def _index(self, t) -> int:
        x = float(t) / self.span * self.steps
        i = round(x)
        if abs(x - i) > 1e-6:
            raise ValueError(f"time {float(t)} is not on the grid of {self.steps} steps")
        return i

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("GridBrownian gives increments W(tb) - W(ta) only")
        if tb is None:
            ta, tb = 0.0, ta
        return self._cumulative[self._index(tb)] - self._cumulative[self._index(ta)]

    def __repr__(self):
        return f"GridBrownian(steps={self.steps}, span={self.span}, shape={self.shape})"
