"""Training objective and samplers for diffusion models, built on the SDEs of ``sde.py``.

Forward process.  Any SDE of ``sde.py`` (VP by default) diffuses data x_0 to

    x_t = a(t) x_0 + s(t) eps,   eps ~ N(0, I),   a = ``sde.mean_coef``, s = ``sde.marginal_std``.

Nothing here re-derives a coefficient: a, s, the transition (r, k) and the reverse drift all come
from the SDE object, so checks, training and sampling share one definition of each process.

Predictions.  The network output is read as one of

* ``eps``: the noise eps (Ho et al. 2020);
* ``v``:   v = a(t) eps - s(t) x_0 (Salimans and Ho 2022).  For the VP SDE a^2 + s^2 = 1, so
  a = cos phi, s = sin phi with phi(t) = arctan(s(t) / a(t)), x_t = cos phi x_0 + sin phi eps and
  v = d x_t / d phi: the velocity of x_t in the angle phi with x_0 and eps held fixed.  For any
  SDE, (x_t, v) determine (x_0, eps) through the rotation-and-scaling
  x_0 = (a x_t - s v) / (a^2 + s^2),  eps = (s x_t + a v) / (a^2 + s^2)   (a^2 + s^2 = 1 for VP).

The objective is the mean squared error between the output and its target at times
t ~ U[t_min, T] (the "simple" loss).  The score of p_t follows from the epsilon prediction,
score(x, t) = -eps_hat / s(t), and Tweedie's formula gives E[x_0 | x_t] = (x_t - s eps_hat) / a.

Samplers.  Plain functions ``sampler(score_fn, x, times, *, sde, ..., callback=None,
disable=None)`` in the style of k-diffusion: ``score_fn(x, t)`` is any score (a trained network
wrapped by :class:`ScoreModel`, or an exact score from ``laws.py``), ``times`` a decreasing grid
from T to t_end, ``x`` a draw from the prior; each shows a tqdm bar (``disable`` turns it off) and
calls ``callback({"x", "i", "t", "t_next"})`` after every step.

* :func:`euler_maruyama`: the reverse SDE ``sde.reverse(score_fn)`` stepped by Euler-Maruyama.
* :func:`pf_ode`: the probability-flow ODE ``sde.reverse(score_fn, probability_flow=True)`` solved
  by torchdiffeq (adaptive dopri5 by default, or a fixed-grid method on ``times``).
* :func:`ddpm_ancestral`: DDPM's ancestral step, derived from the SDE's exact transition.  With
  x_t | x_s ~ N(r x_s, k^2) (``sde.transition_coefs``) and x_s | x_0 ~ N(a_s x_0, v_s), Bayes gives
  x_s | x_t, x_0 ~ N((k^2 a_s x_0 + r v_s x_t) / v_t, v_s k^2 / v_t), v_t = r^2 v_s + k^2;
  the sampler draws from it with x_0 replaced by Tweedie's estimate.  For a Gaussian data law and
  the exact score, its mean is the exact reverse-kernel mean (laws.Gaussian.reverse_kernel).

Classifier-free guidance (Ho and Salimans 2022) mixes the conditional and unconditional
predictions, eps = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)), with the null label
``num_classes``; w = 1 is the plain conditional model, w = 0 the unconditional one.  Guidance on v
is the same mixture, since eps is affine in v with coefficients that do not depend on the label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..sde import EPS, SDE, VPSDE, expand_as_batch
from ..solvers import is_adaptive, solve_ode

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]

PREDICTIONS = ("eps", "v")

#: The samplers' defaults, one place each (``sample``, ``sampling.generate``, the ``sample``
#: command and the training grids' setting read them): the sampler, the steps of the stepping
#: samplers and fixed-grid ODE methods, and the ODE method with its tolerances.
SAMPLER = "pf-ode"
STEPS = 100
ODE_METHOD = "dopri5"
ODE_RTOL = ODE_ATOL = 1e-4

__all__ = ["PREDICTIONS", "SAMPLERS", "DiffusionObjective", "TrainingDraws", "ScoreModel",
           "time_grid", "euler_maruyama", "pf_ode", "ddpm_ancestral", "tweedie_denoise",
           "sample", "get_sampler"]


def _coefs(sde: SDE, t: torch.Tensor, x: torch.Tensor):
    """a(t) and s(t), shaped to broadcast against x."""
    return (expand_as_batch(sde.mean_coef(t), x), expand_as_batch(sde.marginal_std(t), x))


def _batch_times(t, x: torch.Tensor) -> torch.Tensor:
    """A (B,) time tensor in x's dtype and device from a scalar, 0-d or (B,) time."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def prediction_to_eps(prediction: str, out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor,
                      s: torch.Tensor) -> torch.Tensor:
    """Read a network output as epsilon (see the module docstring for the v inversion)."""
    if prediction == "eps":
        return out
    return (s * x_t + a * out) / (a**2 + s**2)


# ------------------------------------------------------------------------------------------------
# Training objective
# ------------------------------------------------------------------------------------------------

@dataclass
class TrainingDraws:
    """The random draws of one training batch: times (B,), noise like x_0, label-drop mask (B,).

    Drawn for the global batch from one generator, so a data-parallel rank that takes its slice
    sees exactly the draws a single process would give those samples.
    """

    t: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor

    def slice(self, start: int, stop: int) -> TrainingDraws:
        return TrainingDraws(self.t[start:stop], self.noise[start:stop], self.drop[start:stop])


@dataclass
class DiffusionObjective:
    """Denoising score matching: MSE between the network output and the eps or v target.

    Args:
        sde: the forward SDE (``sde.py``); VP by default.
        prediction: ``eps`` or ``v`` (module docstring).
        t_min: training times are uniform on [t_min, T]; the score is singular at t = 0.
        label_dropout: probability of replacing a label by the null label (classifier-free
            guidance training).  Done here with the objective's generator, not inside the model,
            so the draws are reproducible and identical under data parallelism.
        num_classes: the null label is ``num_classes``; None for unconditional data.
    """

    sde: SDE = None  # type: ignore[assignment]
    prediction: str = "eps"
    t_min: float = EPS
    label_dropout: float = 0.1
    num_classes: int | None = None

    def __post_init__(self):
        if self.sde is None:
            self.sde = VPSDE()
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if not 0.0 < self.t_min < self.sde.T:
            raise ValueError(f"t_min must lie in (0, T={self.sde.T}), got {self.t_min}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1], got {self.label_dropout}")

    def draw(self, shape, generator: torch.Generator | None = None, device=None,
             dtype: torch.dtype = torch.float32) -> TrainingDraws:
        """Times t ~ U[t_min, T], noise eps ~ N(0, I) of ``shape`` = (B, ...) and the label-drop
        mask for a batch, in that order from ``generator``."""
        n = shape[0]
        t = self.sde.uniform_times(n, self.t_min, generator=generator, dtype=dtype, device=device)
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        drop = torch.rand(n, generator=generator, device=device) < self.label_dropout
        return TrainingDraws(t, noise, drop)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = a(t) x_0 + s(t) eps (``SDE.perturb``)."""
        return self.sde.perturb(x0, t, noise)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return noise
        a, s = _coefs(self.sde, t, x0)
        return a * noise - s * x0

    def labels(self, y: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor | None:
        """Labels with the dropped ones replaced by the null label ``num_classes``."""
        if y is None or self.num_classes is None:
            return None
        return torch.where(drop.to(y.device), torch.full_like(y, self.num_classes), y)

    def loss(self, net: nn.Module, x0: torch.Tensor, y: torch.Tensor | None,
             draws: TrainingDraws | None = None, generator: torch.Generator | None = None,
             autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
        """Mean squared error over every element of the batch (a 0-d float32 tensor)."""
        draws = self.draw(x0.shape, generator, x0.device, x0.dtype) if draws is None else draws
        x_t = self.perturb(x0, draws.t, draws.noise)
        with autocast or contextlib.nullcontext():
            out = net(x_t, draws.t, self.labels(y, draws.drop))
        target = self.target(x0, draws.t, draws.noise)
        return (out.float() - target.float()).pow(2).mean()


# ------------------------------------------------------------------------------------------------
# From a network to a score
# ------------------------------------------------------------------------------------------------

class ScoreModel:
    """The score of p_t given by a trained network, with classifier-free guidance.

    ``ScoreModel(net, sde, prediction, y=labels, guidance=w)(x, t)`` is grad log p_t(x | y)
    estimated as -eps_hat / s(t), with eps_hat the guided epsilon (module docstring).  ``t`` may
    be a scalar, a 0-d tensor or a (B,) tensor.  The network runs under ``autocast`` if given and
    its output is cast back to x's dtype.  ``nfe`` counts network evaluations (a guided
    evaluation with w not in {0, 1} is one batched call on 2B inputs).
    """

    def __init__(self, net: nn.Module, sde: SDE, prediction: str = "eps",
                 y: torch.Tensor | None = None, guidance: float = 1.0,
                 num_classes: int | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        self.net, self.sde, self.prediction = net, sde, prediction
        self.y, self.guidance = y, float(guidance)
        if num_classes is None:
            num_classes = getattr(net, "config", {}).get("num_classes")
        self.num_classes = num_classes
        self.autocast = autocast
        self.nfe = 0
        if y is not None and guidance != 1.0 and num_classes is None:
            raise ValueError("classifier-free guidance needs num_classes (the null label)")

    def _net(self, x, t, y):
        self.nfe += 1
        with self.autocast() if self.autocast else contextlib.nullcontext():
            out = self.net(x, t, y)
        return out.to(x.dtype)

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        tb = _batch_times(t, x)
        a, s = _coefs(self.sde, tb, x)
        y, w = self.y, self.guidance
        if y is None or w == 1.0:
            out = self._net(x, tb, y)
        elif w == 0.0:
            out = self._net(x, tb, torch.full_like(y, self.num_classes))
        else:
            null = torch.full_like(y, self.num_classes)
            both = self._net(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([y, null]))
            cond, uncond = both.chunk(2)
            out = uncond + w * (cond - uncond)
        return prediction_to_eps(self.prediction, out, x, a, s)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        tb = _batch_times(t, x)
        return -self.eps(x, tb) / expand_as_batch(self.sde.marginal_std(tb), x)


def tweedie_denoise(score_fn: ScoreFn, x: torch.Tensor, t, *, sde: SDE) -> torch.Tensor:
    """E[x_0 | x_t = x] = (x + v(t) score(x, t)) / a(t) (Tweedie's formula)."""
    tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    a = expand_as_batch(sde.mean_coef(tt), x)
    v = expand_as_batch(sde.marginal_var(tt), x)
    return (x + v * score_fn(x, tt)) / a


# ------------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------------

def time_grid(steps: int, *, t_end: float = EPS, T: float = 1.0, dtype=torch.float32,
              device=None) -> torch.Tensor:
    """The uniform decreasing grid T = t_0 > t_1 > ... > t_steps = t_end."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_end < T:
        raise ValueError(f"t_end must lie in [0, T), got {t_end}")
    return torch.linspace(T, t_end, steps + 1, dtype=dtype, device=device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@torch.no_grad()
def euler_maruyama(score_fn: ScoreFn, x: torch.Tensor, times: torch.Tensor, *, sde: SDE,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   disable: bool | None = None) -> torch.Tensor:
    """Reverse SDE dx = [f x - g^2 score] dt + g dW_bar by Euler-Maruyama on ``times`` (dt < 0):
    x <- x + drift(x, t) dt + g(t) sqrt(|dt|) z."""
    reverse = sde.reverse(score_fn)
    for i in tqdm(range(len(times) - 1), desc="euler-maruyama", disable=disable, leave=False):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t
        drift, g = reverse.sde(x, t)
        x = x + drift * dt + g * torch.sqrt(-dt) * _noise(x, generator)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": t_next})
    return x


@torch.no_grad()
def pf_ode(score_fn: ScoreFn, x: torch.Tensor, times: torch.Tensor, *, sde: SDE,
           method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-4,
           callback: Callback | None = None, disable: bool | None = None) -> torch.Tensor:
    """Probability-flow ODE dx/dt = f x - g^2 score / 2 from times[0] to times[-1] by torchdiffeq.

    Adaptive methods (``dopri5``, ...) control the local error with (rtol, atol) and step onto
    every time of ``times`` (pass ``time_grid(1)`` for the solver's own steps); fixed-grid methods
    (``euler``, ``midpoint``, ``rk4``, ...) step on ``times``.  The bar counts field evaluations.
    """
    flow = sde.reverse(score_fn, probability_flow=True)
    bar = tqdm(desc=f"pf-ode {method}", unit="nfe", disable=disable, leave=False)

    def field(t, z):
        bar.update()
        return flow.sde(z, t)[0]

    try:
        path = solve_ode(field, x, times, method=method, rtol=rtol, atol=atol)
    finally:
        bar.close()
    if callback is not None:
        for i in range(len(times) - 1):
            callback({"x": path[i + 1], "i": i, "t": times[i], "t_next": times[i + 1]})
    return path[-1]


@torch.no_grad()
def ddpm_ancestral(score_fn: ScoreFn, x: torch.Tensor, times: torch.Tensor, *, sde: SDE,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   disable: bool | None = None) -> torch.Tensor:
    """DDPM ancestral sampling: x_s ~ N((k^2 a_s x0_hat + r v_s x_t) / v_t, v_s k^2 / v_t) for each
    step t -> s of ``times``, (r, k) = ``sde.transition_coefs(s, t)``, x0_hat by Tweedie.

    A last time of 0 makes the last step deterministic: it returns x0_hat.
    """
    for i in tqdm(range(len(times) - 1), desc="ddpm", disable=disable, leave=False):
        t, s = times[i], times[i + 1]
        x0 = tweedie_denoise(score_fn, x, t, sde=sde)
        r, k = sde.transition_coefs(s, t, like=x)
        a_s, v_s, v_t = sde.mean_coef(s), sde.marginal_var(s), sde.marginal_var(t)
        mean = (k**2 * a_s * x0 + r * v_s * x) / v_t
        std = torch.sqrt(torch.clamp(v_s * k**2 / v_t, min=0.0))
        x = mean + std * _noise(x, generator) if float(std) > 0 else mean
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": s})
    return x


#: The samplers by name.
SAMPLER_FUNCTIONS = {"euler-maruyama": euler_maruyama, "pf-ode": pf_ode, "ddpm": ddpm_ancestral}
SAMPLERS = tuple(SAMPLER_FUNCTIONS)


def get_sampler(name: str):
    """The sampler function called ``name`` (one of :data:`SAMPLERS`)."""
    try:
        return SAMPLER_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def sample(score_fn: ScoreFn, shape, *, sde: SDE, sampler: str = SAMPLER, steps: int = STEPS,
           t_end: float = EPS, method: str = ODE_METHOD, rtol: float = ODE_RTOL,
           atol: float = ODE_ATOL,
           denoise: bool = True, generator: torch.Generator | None = None,
           dtype=torch.float32, device=None, callback: Callback | None = None,
           disable: bool | None = None) -> torch.Tensor:
    """Draw ``shape`` from the prior and run one sampler from T to ``t_end``.

    ``steps`` sets the grid of the stepping samplers and of fixed-grid ODE methods; adaptive ODE
    methods take the two-point grid (T, t_end).  With ``denoise`` the result is Tweedie's
    E[x_0 | x_{t_end}], which removes the noise of scale s(t_end) left at the last time.
    """
    fn = get_sampler(sampler)
    x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
    adaptive = sampler == "pf-ode" and is_adaptive(method)
    times = time_grid(1 if adaptive else steps, t_end=t_end, T=sde.T, dtype=dtype, device=device)
    kwargs = {"method": method, "rtol": rtol, "atol": atol} if sampler == "pf-ode" else \
        {"generator": generator}
    x = fn(score_fn, x, times, sde=sde, callback=callback, disable=disable, **kwargs)
    if denoise and t_end > 0:
        x = tweedie_denoise(score_fn, x, times[-1], sde=sde)
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"the {sampler} sampler produced non-finite values")
    return x

