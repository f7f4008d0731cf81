"""The denoising risk of a network on data of known law, and its Bayes decomposition (C10).

With x_t = m(t) x_0 + s(t) eps, eps ~ N(0, I) independent of x_0 ~ p_0, and any predictor
eps_theta(x_t, t) (a function of x_t and t only), write eps* = E[eps | x_t] (the Bayes-optimal
predictor; for a Gaussian mixture eps* = -s(t) grad log p_t, ``laws.GaussianMixture.optimal_eps``).
Per sample (all norms squared, divided by the dimension d so that figures read like the training
loss):

    R     = |eps_theta - eps|^2 / d        the risk
    R*    = |eps* - eps|^2 / d             the Bayes risk
    E     = |eps_theta - eps*|^2 / d       the excess risk
    C     = R - R* - E = 2 <eps_theta - eps*, eps* - eps> / d

E[C | x_t] = 0 because E[eps* - eps | x_t] = 0, so E[R] = E[R*] + E[E] exactly, and
E[R] >= E[R*] (proof in proofs/C10_denoising-risk.md).  An eps* that is not E[eps | x_t] (a
wrong noise level, a wrong law) gives E[C] != 0: the identity residual tests the reference.
With labels the same holds conditionally on the label (eps* of the class's components).

:func:`risk_terms` returns the per-sample R, R*, E and C; :func:`binned_means` their means and
standard errors per time bin.  :func:`component_shares` and :func:`chi_square` compare the
components generated images fall in with the mixture weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..sde import SDE
from ..stats import mean_se

__all__ = ["RiskTerms", "risk_terms", "binned_means", "component_shares", "chi_square",
           "time_bins"]

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class RiskTerms:
    """Per-sample terms of the decomposition (module docstring), float64, shape (B,)."""

    risk: torch.Tensor
    bayes: torch.Tensor
    excess: torch.Tensor
    cross: torch.Tensor


def time_bins(t_min: float, T: float, bins: int) -> np.ndarray:
    """Edges of ``bins`` equal bins of [t_min, T]."""
    return np.linspace(t_min, T, bins + 1)


def risk_terms(eps_theta: EpsFn, eps_star: EpsFn, x0: torch.Tensor, y: torch.Tensor | None,
               t: torch.Tensor, noise: torch.Tensor, sde: SDE) -> RiskTerms:
    """R, R*, E and C per sample for clean data ``x0`` (B, ...), labels ``y``, times ``t`` (B,)
    and noise ``noise`` (like x0), float64; ``eps_theta`` and ``eps_star`` map (x_t, t, y) to
    noise predictions of x_t's shape."""
    x0, noise, t = x0.double(), noise.double(), t.double()
    x_t = sde.perturb(x0, t, noise)
    pred = eps_theta(x_t, t, y).double()
    best = eps_star(x_t, t, y).double()
    B = x0.shape[0]
    d = x0[0].numel()

    def sq(v):
        return v.reshape(B, -1).pow(2).sum(1) / d

    risk, bayes, excess = sq(pred - noise), sq(best - noise), sq(pred - best)
    cross = 2.0 * ((pred - best) * (best - noise)).reshape(B, -1).sum(1) / d
    return RiskTerms(risk, bayes, excess, cross)


def binned_means(values: torch.Tensor, t: torch.Tensor, edges: np.ndarray) -> list[tuple]:
    """(mean, standard error, n) of ``values`` in each time bin [edges[k], edges[k+1])."""
    t = t.detach().cpu().numpy()
    v = values.detach().cpu().double().numpy()
    out = []
    for k in range(len(edges) - 1):
        last = k == len(edges) - 2
        sel = (t >= edges[k]) & ((t <= edges[k + 1]) if last else (t < edges[k + 1]))
        out.append((*mean_se(v[sel]), int(sel.sum())))
    return out


def component_shares(responsibilities: torch.Tensor) -> np.ndarray:
    """Counts of images per component, each image assigned to its most probable component."""
    k = responsibilities.argmax(dim=1).cpu().numpy()
    return np.bincount(k, minlength=responsibilities.shape[1])


def chi_square(counts: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square of ``counts`` against the multinomial with ``weights``, and its
    p-value on K - 1 degrees of freedom (scipy.stats.chisquare)."""
    from scipy.stats import chisquare

    n = counts.sum()
    expected = n * np.asarray(weights, dtype=float) / np.sum(weights)
    if len(counts) < 2 or n == 0:
        return math.nan, math.nan
    stat, p = chisquare(counts, expected)
    return float(stat), float(p)
