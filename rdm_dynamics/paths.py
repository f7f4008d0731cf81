"""Brownian paths shared across depths, and thin wrappers over torchdiffeq and torchsde.

``BrownianPath`` holds one Brownian path per sample on an interval of length ``span`` and hands
out its increments on uniform grids of ``base_steps * 2^k`` steps.  Finer grids are made from
coarser ones by the Levy (Brownian bridge) construction: an increment D over a step of length dt
splits into

    left = D / 2 + (sqrt(dt) / 2) Z,   right = D - left,     Z ~ N(0, I),

so the two halves are independent N(0, dt/2) given nothing, sum to D, and every rung of a depth
ladder sees the same path.  Levels are built in order, so the path is a function of the seed
alone, whatever order the levels are asked for in.  No Brownian tree is queried per step: each
level is one vectorised tensor operation.

The path's normals Z come from numpy's ``Generator(PCG64)`` (ziggurat sampling, float64), seeded
by one draw from the torch generator the path is given (``numpy_rng``): torch's CPU
generator makes float64 normals at about half that rate, and the noise is the largest cost of a
stochastic stack.  They are made in float64 on the CPU whatever the path's dtype and device, then
cast and moved: a float32 or CUDA path is the float64 CPU path, rounded.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["BrownianPath", "stream_generator", "numpy_rng", "standard_normal", "solve_ode",
           "solve_ode_adjoint", "TorchsdeReverse", "GridBrownian", "REFERENCE_RTOL",
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


def standard_normal(shape, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """N(0, I) draws of ``shape`` from ``generator``, made on the generator's own device and
    then moved to ``device``: a seeded CPU generator gives the same numbers whether the result
    lives on the CPU or on a GPU (and torch refuses a generator of another device anyway)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The CPU generator of random stream ``stream`` under run seed ``seed``, seeded with
    seed * 1_000_003 + stream: the one seeding formula of the toolkit (each check, each trained
    model's draws, each epoch's shuffle and each known-law image have their own stream, so
    running one alone gives the numbers it gives among the others)."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(stream)) % 2**63)
    return g


def numpy_rng(generator) -> np.random.Generator:
    """The numpy generator that draws bulk float64 normals (numpy's PCG64 with its ziggurat
    sampler, about twice as fast as ``torch.randn`` in float64 on a CPU): ``generator`` itself
    if it is one, else one seeded by a draw from the torch ``generator`` (None: torch's default
    stream), so every draw is reproducible from the torch seed and the torch stream moves on by
    one draw.  The one place the toolkit turns a torch generator into a numpy one (the Brownian
    path, C7's weights and paths)."""
    if isinstance(generator, np.random.Generator):
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator,
                         device=None if generator is None else generator.device).item()
    return np.random.default_rng(seed)


#: Tolerances of every dopri5 reference solution in the theory checks (float64).
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-12


class BrownianPath:
    """A Brownian path per sample, refined dyadically on demand.

    Args:
        span: length of the time interval the path covers (> 0).
        shape: shape of one increment, usually the batch shape (B, ...).
        base_steps: number of steps of the coarsest grid.
        generator: the random source; the path is reproducible from its seed.
    """

    def __init__(self, span: float, shape, *, base_steps: int = 1,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        if span <= 0 or base_steps < 1:
            raise ValueError("span must be positive and base_steps >= 1")
        self.span, self.shape, self.base_steps = float(span), tuple(shape), int(base_steps)
        self.dtype, self.device = dtype, device
        self._source = numpy_rng(generator)
        dt = self.span / self.base_steps
        self._levels = [math.sqrt(dt) * self._normal(self.base_steps)]

    def _normal(self, n: int) -> torch.Tensor:
        """n x shape N(0, 1) draws: float64 on the CPU from the path's source, then cast and
        moved to the path's dtype and device."""
        z = torch.from_numpy(self._source.standard_normal((n, *self.shape)))
        return z.to(device=self.device, dtype=self.dtype)

    def _refine(self, coarse: torch.Tensor) -> torch.Tensor:
        """The next level: left = D / 2 + (sqrt(dt) / 2) Z, right = D - left, interleaved.

        Written into one preallocated (n, 2, ...) tensor (no temporaries, no stack copy); the
        arithmetic is that of the formula, rounding for rounding (each product and sum rounded
        once, in this order), so the path is the same for a seed as with the plain formula."""
        n = coarse.shape[0]
        dt = self.span / n
        fine = torch.empty((n, 2, *self.shape), dtype=coarse.dtype, device=coarse.device)
        left, right = fine[:, 0], fine[:, 1]
        torch.mul(coarse, 0.5, out=right)  # D / 2, kept in `right` until right = D - left
        torch.add(right, self._normal(n).mul_(0.5 * math.sqrt(dt)), out=left)
        torch.sub(coarse, left, out=right)
        return fine.reshape(2 * n, *self.shape)

    def increments(self, steps: int) -> torch.Tensor:
        """Increments W(t_{i+1}) - W(t_i) on the grid of ``steps`` steps; (steps, *shape)."""
        ratio = steps // self.base_steps
        if steps < self.base_steps or ratio * self.base_steps != steps or ratio & (ratio - 1):
            raise ValueError(f"steps must be base_steps * 2^k (base_steps={self.base_steps}), "
                             f"got {steps}")
        level = ratio.bit_length() - 1
        while len(self._levels) <= level:
            self._levels.append(self._refine(self._levels[-1]))
        return self._levels[level]

    def normalised_increments(self, steps: int) -> torch.Tensor:
        """xi_i = dW_i / sqrt(dt): the standard normal noise a stochastic unit takes."""
        return self.increments(steps) / math.sqrt(self.span / steps)


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
