"""The forward diffusion SDEs: one definition, shared by checks, models and samplers.

Every SDE here is linear with deterministic coefficients,

    dx = f(t) x dt + g(t) dW,        t in [0, T],  T = 1,

so the transition from time s to time t > s is Gaussian,

    x_t | x_s ~ N(r(s, t) x_s, k(s, t)^2 I),   r = m(t) / m(s),   k^2 = v(t) - r^2 v(s),

where m(t) = exp(int_0^t f) is the mean coefficient and v(t) = m(t)^2 int_0^t g^2 / m^2 the
variance of x_t given x_0 (``marginal_prob``).  Names and meanings follow score_sde (Song et al.
2021, ``sde_lib.py``): ``sde(x, t) -> (drift, diffusion)``, ``marginal_prob(x, t) -> (mean, std)``,
``prior_sampling``, ``prior_logp``, ``reverse(score_fn, probability_flow)``.  Unlike score_sde, the
coefficients broadcast over any data shape ``(B, ...)`` (vectors, images, videos), ``t`` may be a
Python scalar, a 0-d tensor or a ``(B,)`` tensor, and results keep the input's dtype and device.

One deliberate difference: for the VE SDE, score_sde's ``marginal_prob`` returns
``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` as the std, which is the law of the SDE started
from the data already blurred by N(0, sigma_min^2).  Here ``marginal_prob`` is the exact transition
of the SDE from the data at t = 0: std = sqrt(sigma(t)^2 - sigma_min^2).  The theory checks compare
against exact laws, so the exact transition is the one they need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

Time = float | torch.Tensor
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "DenoisingField", "SDES", "make_sde",
           "expand_as_batch", "EPS"]

#: Where the denoising direction stops, [eps, T]: the score of p_t is unbounded as t -> 0 for data
#: without a density.  The default of the checks' stacks, of training's t_min (training times are
#: uniform on [t_min, T]) and of the samplers' last time.
EPS = 1e-3


def expand_as_batch(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or ``(B,)`` coefficient to broadcast against ``x`` of shape ``(B, ...)``."""
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def _as_time(t: Time, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


class SDE:
    """A linear forward SDE ``dx = f(t) x dt + g(t) dW`` on ``[0, T]``.

    Subclasses give four scalar functions of a time tensor ``t`` (any shape, elementwise):
    ``drift_coef`` f(t), ``diffusion_coef`` g(t), ``log_mean_coef`` log m(t) and ``marginal_var``
    v(t) (variance of x_t given x_0).  Everything else is derived here once.
    """

    T: float = 1.0
    name: str = "sde"

    # --- the four scalar coefficient functions (elementwise in t) -------------------------------
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def marginal_var(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prior_std(self) -> float:
        """Std of the Gaussian prior N(0, prior_std^2 I) used at t = T."""
        raise NotImplementedError

    # --- derived scalar functions ---------------------------------------------------------------
    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        """m(t) = exp(int_0^t f(u) du)."""
        return torch.exp(self.log_mean_coef(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(v(t)): std of x_t given x_0."""
        return torch.sqrt(self.marginal_var(t))

    def transition_coefs(self, s: Time, t: Time, like: torch.Tensor | None = None):
        """(r, k) with x_t | x_s ~ N(r x_s, k^2 I), s <= t: r = m(t)/m(s), k^2 = v(t) - r^2 v(s)."""
        like = torch.zeros((), dtype=torch.float64) if like is None else like
        s, t = _as_time(s, like), _as_time(t, like)
        r = torch.exp(self.log_mean_coef(t) - self.log_mean_coef(s))
        k2 = self.marginal_var(t) - r**2 * self.marginal_var(s)
        return r, torch.sqrt(torch.clamp(k2, min=0.0))

    # --- score_sde interface ----------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(t) x and diffusion g(t) (the latter broadcastable against x)."""
        t = _as_time(t, x)
        drift = expand_as_batch(self.drift_coef(t), x) * x
        return drift, expand_as_batch(self.diffusion_coef(t), x)

    def marginal_prob(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean m(t) x_0 and std sqrt(v(t)) of x_t given x_0 = x."""
        t = _as_time(t, x)
        return expand_as_batch(self.mean_coef(t), x) * x, expand_as_batch(self.marginal_std(t), x)

    def perturb(self, x0: torch.Tensor, t: Time, noise: torch.Tensor) -> torch.Tensor:
        """x_t = m(t) x_0 + s(t) eps for standard normal ``noise`` eps: a draw of x_t given x_0
        (the forward process as training and the trained-model checks use it)."""
        mean, std = self.marginal_prob(x0, t)
        return mean + std * noise

    def uniform_times(self, n: int, t_min: float, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """``n`` times uniform on [t_min, T]: t_min + (T - t_min) u, u ~ U[0, 1)."""
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return t_min + (self.T - t_min) * u

    def prior_sampling(self, shape, *, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Draw from the prior N(0, prior_std^2 I) that stands in for p_T."""
        z = torch.randn(*shape, generator=generator, dtype=dtype, device=device)
        return z * self.prior_std()

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        sigma = self.prior_std()
        n = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * n * math.log(2 * math.pi * sigma**2) - sq / (2 * sigma**2)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (with ``probability_flow``: the PF-ODE) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time process of a forward SDE, in score_sde's convention (time runs from T to eps).

    ``sde(x, t)`` returns the drift and diffusion of

        reverse SDE:  dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dW_bar,
        PF-ODE:       dx = [f(t) x - g(t)^2 s(x, t) / 2] dt,

    to be integrated with dt < 0.  ``denoising_field`` (a :class:`DenoisingField`) is minus that
    drift: the vector field in the direction of travel (from T down to eps), which is what a
    residual unit adds with a positive step h.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.T = forward.T

    def _drift_coefficients(self, f: torch.Tensor, g2: torch.Tensor):
        """(f, w g^2), w = 1/2 for the PF-ODE and 1 for the reverse SDE: the reverse drift is
        f x - w g^2 s(x, t), given f = f(t) and g2 = g(t)^2 (the one place w enters)."""
        weight = 0.5 if self.probability_flow else 1.0
        return f, weight * g2

    def sde(self, x: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x)
        g = expand_as_batch(self.forward.diffusion_coef(t), x)
        c_x, c_s = self._drift_coefficients(expand_as_batch(self.forward.drift_coef(t), x),
                                            g**2)
        drift = c_x * x - c_s * self.score_fn(x, t)
        diffusion = torch.zeros_like(g) if self.probability_flow else g
        return drift, diffusion

    @functools.cached_property
    def denoising_field(self) -> DenoisingField:
        """-(reverse drift): the velocity of x as t decreases, F(x, t)."""
        return DenoisingField(self)


class DenoisingField:
    """F(x, t) = -(reverse drift of ``reverse``) = -(f(t) x - w g(t)^2 s(x, t)), the residual
    function of a denoising stack, and ``on_grid(times)``: F restricted to each time t_i of a
    grid, with f(t_i), g(t_i)^2 and (for a score that has ``on_grid``, such as
    ``laws.DiffusedScore``) the score's time coefficients computed once for the whole grid in
    vectorised calls.  A gated residual stack evaluates its units through ``on_grid`` (the same
    arithmetic per unit, up to the last bit of the vectorised coefficient functions), leaving
    only the operations on x in its loop."""

    def __init__(self, reverse: ReverseSDE):
        self.reverse = reverse

    def __call__(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        return -self.reverse.sde(x, t)[0]

    def on_grid(self, times: torch.Tensor) -> list[Callable]:
        """[F_0, ..., F_{n-1}] for a 1-d ``times``, F_i(x, t) = F(x, t_i) (``t`` is ignored: a
        stack passes t_i)."""
        reverse = self.reverse
        c_x, c_s = reverse._drift_coefficients(reverse.forward.drift_coef(times),
                                               reverse.forward.diffusion_coef(times) ** 2)
        on_grid = getattr(reverse.score_fn, "on_grid", None)
        scores = (on_grid(times) if on_grid is not None else
                  [lambda x, t=t: reverse.score_fn(x, t) for t in times.unbind(0)])
        return [functools.partial(_grid_unit, a, b, s_i)
                for a, b, s_i in zip(c_x.tolist(), c_s.tolist(), scores, strict=True)]


def _grid_unit(c_x: float, c_s: float, score, x: torch.Tensor, t: Time) -> torch.Tensor:
    """F(x, t_i) = c_s s(x, t_i) - c_x x = -(c_x x - c_s s): the denoising field from the
    tabulated drift coefficients at t_i (Python numbers) and the score at t_i (``t`` unused).
    The same numbers as -drift: a product is the same whatever its sign, and b - a = -(a - b)
    exactly in floating point."""
    return c_s * score(x) - c_x * x


class VPSDE(SDE):
    """Variance preserving: f = -beta(t)/2, g = sqrt(beta(t)), beta(t) = b0 + t (b1 - b0).

    log m(t) = -t^2 (b1 - b0)/4 - t b0/2,  v(t) = 1 - m(t)^2,  prior N(0, I).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t):
        return torch.sqrt(self.beta(t))

    def log_mean_coef(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal_var(self, t):
        return -torch.expm1(2.0 * self.log_mean_coef(t))

    def prior_std(self):
        return 1.0


class SubVPSDE(VPSDE):
    """Sub-VP: the VP drift with g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta)).

    v(t) = (1 - m(t)^2)^2, prior N(0, I).
    """

    name = "subvp"

    def diffusion_coef(self, t):
        discount = -torch.expm1(4.0 * self.log_mean_coef(t))  # 1 - exp(-2 int beta)
        return torch.sqrt(self.beta(t) * discount)

    def marginal_var(self, t):
        return torch.expm1(2.0 * self.log_mean_coef(t)) ** 2


class VESDE(SDE):
    """Variance exploding: f = 0, g(t) = sigma(t) sqrt(2 log(sigma_max/sigma_min)),
    sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    m(t) = 1, v(t) = sigma(t)^2 - sigma_min^2 (exact transition from t = 0), prior
    N(0, sigma_max^2 I).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion_coef(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def log_mean_coef(self, t):
        return torch.zeros_like(t)

    def marginal_var(self, t):
        return self.sigma_min**2 * torch.expm1(2.0 * t * self._log_ratio)

    def prior_std(self):
        return self.sigma_max


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name: ``vp``, ``subvp`` or ``ve``."""
    try:
        return SDES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(SDES)}") from None
