"""The gated residual stack and its continuous-time limit.

A depth-L stack on the grid t_i = t_start + i (t_end - t_start) / L, step h = |t_end - t_start| / L:

    z_{i+1} = z_i + alpha_i * F_i(z_i, t_i) + beta_i [+ gamma_i * xi_i],   xi_i ~ N(0, I),

with elementwise (per-channel) gates.  The gates come from continuous-time coefficients a(t)
(``gain``), b(t) (``bias``) and c(t) (``noise``) and a gate schedule's step scale s(L, h):

    alpha_i = s a(t_i),   beta_i = s b(t_i),   gamma_i = sqrt(s) c(t_i).

Schedules (DESIGN.md section 2): ``euler`` s = h (fixed); ``rdm`` s = h as the initial value of
learnable gates; ``plain`` s = 1 (the ordinary residual network); ``inv-sqrt`` s = 1/sqrt(L).
With s = h and a shared F, the stack is the explicit Euler (Euler-Maruyama with noise) scheme of

    dz = sign (a(t) F(z, t) + b(t)) dt [+ c(t) dW],   sign = +1 if t_end > t_start else -1,

integrated from t_start to t_end; ``continuous_limit`` returns that vector field in the form
``torchdiffeq.odeint`` takes.  The sign lets F be the velocity in the direction of travel, so a
denoising stack runs on the diffusion times from T down to eps with positive gates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .noise import standard_normal

Coefficient = Callable[[torch.Tensor], torch.Tensor]
Residual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["GateSchedule", "SCHEDULES", "GatedResidualStack", "ContinuousLimit", "get_schedule"]


class GateSchedule:
    """How a schedule turns the continuous coefficients into gates: one step scale s(L, h)."""

    name = "schedule"
    learnable = False  # gates are nn.Parameters initialised at the schedule's values
    ode_consistent = True  # alpha_i / h stays bounded as L grows, so the stack has an ODE limit

    def step_scale(self, depth: int, h: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<schedule {self.name}>"


class EulerGates(GateSchedule):
    """alpha_i = h a(t_i), beta_i = h b(t_i): the explicit Euler step of the limit ODE."""

    name = "euler"

    def step_scale(self, depth, h):
        return h


class RDMGates(EulerGates):
    """Neural-RDM: learnable gates, initialised at the ODE-consistent (Euler) step."""

    name = "rdm"
    learnable = True


class PlainGates(GateSchedule):
    """alpha_i = a(t_i), beta_i = b(t_i): an ordinary residual network, no step size."""

    name = "plain"
    ode_consistent = False

    def step_scale(self, depth, h):
        return 1.0


class InvSqrtGates(GateSchedule):
    """alpha_i = a(t_i) / sqrt(L): the 1/sqrt(depth) scaling used for deep residual nets."""

    name = "inv-sqrt"
    ode_consistent = False

    def step_scale(self, depth, h):
        return 1.0 / math.sqrt(depth)


SCHEDULES: dict[str, GateSchedule] = {g.name: g for g in
                                    (RDMGates(), EulerGates(), PlainGates(), InvSqrtGates())}


def get_schedule(schedule: str | GateSchedule) -> GateSchedule:
    """The schedule of that name (the one place schedule names are validated): ValueError for
    an unknown name."""
    if isinstance(schedule, GateSchedule):
        return schedule
    try:
        return SCHEDULES[schedule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown schedule {schedule!r}; choose one of "
                         f"{', '.join(SCHEDULES)}") from None


def _evaluate(coef: Coefficient | None, times: torch.Tensor, default: float) -> torch.Tensor:
    """Stack coef(t_i) over the grid: shape (L, *coef_shape); a constant when coef is None."""
    if coef is None:
        return torch.full((times.shape[0],), default, dtype=times.dtype, device=times.device)
    return torch.stack([torch.as_tensor(coef(t), dtype=times.dtype, device=times.device)
                        for t in times])


class GatedResidualStack(nn.Module):
    """A depth-L gated residual stack (see the module docstring for the equations).

    Args:
        residual: F(z, t), one callable (or nn.Module) shared by every unit, or a sequence of
            ``depth`` callables F_i(z, t), one per unit (weights that are not functions of t).
        depth: number of units L >= 1.
        schedule: ``rdm``, ``euler``, ``plain``, ``inv-sqrt`` or a :class:`GateSchedule`.
        span: (t_start, t_end) of the grid; default (0, 1), the depth time tau = i / L.
        gain, bias, noise: a(t), b(t), c(t) as callables of a 0-d time tensor, returning tensors
            that broadcast against one sample z[0] (scalars or per-channel vectors).  Defaults:
            a = 1, b = 0, no noise (deterministic units).
        dtype, device: of the grid and the gates.
    """

    def __init__(self, residual: Residual | Sequence[Residual], depth: int, *,
                 schedule: str | GateSchedule = "euler", span: tuple[float, float] = (0.0, 1.0),
                 gain: Coefficient | None = None, bias: Coefficient | None = None,
                 noise: Coefficient | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        super().__init__()
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self.depth = int(depth)
        self.schedule = get_schedule(schedule)
        self.span = (float(span[0]), float(span[1]))
        self.h = abs(self.span[1] - self.span[0]) / self.depth
        self.sign = 1.0 if self.span[1] >= self.span[0] else -1.0
        # The coefficient functions are only read here and by continuous_limit(); they are kept
        # out of the module tree so that casting or moving the stack never rewrites coefficient
        # modules shared with other stacks (the gates already hold their values).
        self._coefficients = (gain, bias, noise)

        if callable(residual) and not isinstance(residual, (list, tuple, nn.ModuleList)):
            self.shared_residual = True
            self.residuals: Sequence[Residual] = [residual] * self.depth
            if isinstance(residual, nn.Module):
                self.residual_module = residual
        else:
            residual = list(residual)
            if len(residual) != self.depth:
                raise ValueError(f"got {len(residual)} residual functions for depth {self.depth}")
            self.shared_residual = False
            self.residuals = residual
            modules = [r for r in residual if isinstance(r, nn.Module)]
            if modules:
                self.residual_modules = nn.ModuleList(modules)

        times = torch.linspace(*self.span, self.depth + 1, dtype=dtype, device=device)
        self.register_buffer("times", times)
        scale = self.schedule.step_scale(self.depth, self.h)
        a = _evaluate(gain, times[:-1], 1.0)
        gates = {"alpha": scale * a,
                 "beta": scale * (_evaluate(bias, times[:-1], 0.0) if bias is not None
                                  else torch.zeros_like(a))}
        if noise is not None:
            gates["gamma"] = math.sqrt(scale) * _evaluate(noise, times[:-1], 0.0)
        for name, value in gates.items():
            if self.schedule.learnable:
                self.register_parameter(name, nn.Parameter(value.clone()))
            else:
                self.register_buffer(name, value.clone())
        if noise is None:
            self.gamma = None

    @property
    def gain(self) -> Coefficient | None:
        """a(t), the gain coefficient the gates were built from (None: a = 1)."""
        return self._coefficients[0]

    @property
    def bias(self) -> Coefficient | None:
        """b(t), the bias coefficient (None: b = 0)."""
        return self._coefficients[1]

    @property
    def noise(self) -> Coefficient | None:
        """c(t), the noise coefficient (None: deterministic units)."""
        return self._coefficients[2]

    @property
    def stochastic(self) -> bool:
        return self.gamma is not None

    def gates(self) -> dict[str, torch.Tensor]:
        """The gate values alpha, beta (and gamma for stochastic units), each of shape (L, ...)."""
        out = {"alpha": self.alpha, "beta": self.beta}
        if self.stochastic:
            out["gamma"] = self.gamma
        return out

    @staticmethod
    def _step(z: torch.Tensor, alpha: torch.Tensor, residual: Residual, t: torch.Tensor,
              beta: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor:
        """The arithmetic of one unit, in this order: (z + alpha F(z, t)) [+ beta] [+ noise];
        ``beta`` is None where there is nothing to add (``_bias_terms``)."""
        z_next = z + alpha * residual(z, t)
        if beta is not None:
            z_next = z_next + beta
        return z_next if noise is None else z_next + noise

    @staticmethod
    def _bias_terms(beta: torch.Tensor) -> list[torch.Tensor | None]:
        """The beta_i a unit adds, for the gates ``beta`` of consecutive units (n, ...): None for
        a beta_i that is 0 and not being trained (a buffer, or a parameter without gradient),
        where adding it would change nothing.  Read from the values, so gates installed into
        the buffers later are never skipped."""
        terms = list(beta.unbind(0))
        if beta.requires_grad or beta.is_meta:
            return terms
        zero = (~beta.reshape(beta.shape[0], -1).any(1)).tolist()
        return [None if z else b for z, b in zip(zero, terms, strict=True)]

    @staticmethod
    def _noise(gamma: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The noise term of stochastic units, gamma * xi (gamma the per-unit std)."""
        return gamma * xi

    def unit_residuals(self) -> Sequence[Residual]:
        """F_0, ..., F_{L-1} as the units evaluate them.  A shared F with an ``on_grid(times)``
        method (a field whose time coefficients can be computed for a whole grid at once, such
        as ``sde.DenoisingField``) is evaluated through it: F restricted to each t_i, the same
        function with only its operations on z left per unit.  The tabulation is made once and
        kept while the grid is the same tensor, unmodified (moving or casting the stack makes a
        new one)."""
        on_grid = getattr(self.residuals[0], "on_grid", None) if self.shared_residual else None
        if on_grid is None:
            return self.residuals
        cached = self.__dict__.get("_tabulated")
        if cached is None or cached[0] is not self.times or cached[1] != self.times._version:
            cached = (self.times, self.times._version, on_grid(self.times[:-1]))
            self.__dict__["_tabulated"] = cached
        return cached[2]

    def __getstate__(self):
        """The module's state without the grid tabulation (``unit_residuals``), for copies and
        pickles: it belongs to this stack's grid tensor and is made again on first use."""
        state = dict(super().__getstate__())
        state.pop("_tabulated", None)
        return state

    def unit(self, i: int, z: torch.Tensor, xi: torch.Tensor | None = None) -> torch.Tensor:
        """One gated residual unit: z + alpha_i F_i(z, t_i) + beta_i [+ gamma_i xi]."""
        noise = None
        if self.stochastic:
            if xi is None:
                raise ValueError("a stochastic unit needs its noise xi")
            noise = self._noise(self.gamma[i], xi)
        return self._step(z, self.alpha[i], self.unit_residuals()[i], self.times[i],
                          self._bias_terms(self.beta[i:i + 1])[0], noise)

    def forward(self, z0: torch.Tensor, *, xi: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                return_all: bool = False,
                perturbations: torch.Tensor | None = None) -> torch.Tensor:
        """Run the stack from z0.

        Args:
            z0: input of shape (B, ...).
            xi: standard normal noise of shape (L, B, ...) for stochastic units; drawn from
                ``generator`` when omitted.  Ignored for deterministic units.
            return_all: return every layer's state, shape (L + 1, B, ...), instead of z_L.
            perturbations: e_i of shape (L, B, ...) added after each unit,
                z_{i+1} = unit_i(z_i) + e_i (to study how per-layer errors propagate).
        """
        if self.stochastic and xi is None:
            xi = standard_normal((self.depth, *z0.shape), generator=generator, dtype=z0.dtype,
                                 device=z0.device)
        if xi is not None and xi.shape != (self.depth, *z0.shape):
            raise ValueError(f"xi must have shape {(self.depth, *z0.shape)}, got {tuple(xi.shape)}")
        if perturbations is not None and perturbations.shape != (self.depth, *z0.shape):
            raise ValueError(f"perturbations must have shape {(self.depth, *z0.shape)}, "
                             f"got {tuple(perturbations.shape)}")
        # The units of ``unit``, with the per-unit values taken apart once (unbind: views, no
        # per-unit indexing) and the noise terms gamma_i xi_i formed in one product: the same
        # arithmetic, element for element, at a fraction of the per-unit overhead.
        alphas, times = self.alpha.unbind(0), self.times.unbind(0)
        betas = self._bias_terms(self.beta)
        if self.stochastic:
            gamma = self.gamma.reshape(self.depth, *(1,) * (xi.ndim - self.gamma.ndim),
                                       *self.gamma.shape[1:])
            noises = self._noise(gamma, xi).unbind(0)
        else:
            noises = (None,) * self.depth
        residuals = self.unit_residuals()
        z = z0
        states = [z0] if return_all else None
        for i in range(self.depth):
            z = self._step(z, alphas[i], residuals[i], times[i], betas[i], noises[i])
            if perturbations is not None:
                z = z + perturbations[i]
            if return_all:
                states.append(z)
        return torch.stack(states) if return_all else z

    def affine_units(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every unit as z -> A_i z + c_i + gamma_i xi, for vector states z in R^dim.

        Found by probing unit i (noise off) at 0 and at the basis vectors: c_i = unit(0),
        A_i e_j = unit(e_j) - c_i.  Exact up to rounding when every F_i is affine in z (the PF-ODE
        or reverse drift of Gaussian data with the exact score); meaningless otherwise.  Returns
        A (L, dim, dim), c (L, dim) and the noise covariances diag(gamma_i^2) (L, dim, dim), zero
        for deterministic units.
        """
        probes = torch.cat([torch.zeros(1, dim, dtype=self.times.dtype, device=self.times.device),
                            torch.eye(dim, dtype=self.times.dtype, device=self.times.device)])
        A, c, noise = [], [], []
        for i in range(self.depth):
            out = self.unit(i, probes, torch.zeros_like(probes) if self.stochastic else None)
            c.append(out[0])
            A.append((out[1:] - out[0]).T)
            gamma = self.gamma[i] if self.stochastic else torch.zeros((), dtype=probes.dtype,
                                                                      device=probes.device)
            noise.append(torch.diag_embed(torch.broadcast_to(gamma**2, (dim,))))
        return torch.stack(A), torch.stack(c), torch.stack(noise)

    def propagate_moments(self, mean: torch.Tensor,
                          cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and covariance of every layer z_0..z_L for z_0 ~ N(mean, cov) when every
        unit is affine (see ``affine_units``): each layer is Gaussian with

            m_{i+1} = A_i m_i + c_i,    S_{i+1} = A_i S_i A_i^T + diag(gamma_i^2).

        Returns means (L + 1, d) and covariances (L + 1, d, d); a diverging stack gives inf/NaN
        entries rather than an exception.
        """
        A, c, noise = self.affine_units(mean.shape[-1])
        means, covs = [mean], [cov]
        for i in range(self.depth):
            means.append(A[i] @ means[-1] + c[i])
            covs.append(A[i] @ covs[-1] @ A[i].T + noise[i])
        return torch.stack(means), torch.stack(covs)

    def continuous_limit(self) -> ContinuousLimit:
        """The limit ODE's vector field (t, z) -> sign (a(t) F(z, t) + b(t)), for odeint."""
        if not self.shared_residual:
            raise ValueError("a stack with a separate F_i per unit has no continuous limit")
        return ContinuousLimit(self.residuals[0], self.gain, self.bias, self.sign)


class ContinuousLimit(nn.Module):
    """dz/dt = sign (a(t) F(z, t) + b(t)): the ODE an ODE-consistent gated stack discretises."""

    def __init__(self, residual: Residual, gain: Coefficient | None = None,
                 bias: Coefficient | None = None, sign: float = 1.0):
        super().__init__()
        self.residual, self.gain, self.bias, self.sign = residual, gain, bias, sign

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v = self.residual(z, t)
        if self.gain is not None:
            v = self.gain(t) * v
        if self.bias is not None:
            v = v + self.bias(t)
        return self.sign * v
