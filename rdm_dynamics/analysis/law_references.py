"""References for the diffused data laws that share no code with ``laws.py`` or the SDE's
closed-form marginal coefficients: they use only the SDE's coefficients f(t), g(t) and the data
law's parameters (weights, means, covariances).

* Marginal coefficients by quadrature: for dx = f(t) x dt + g(t) dW from x_0,

      m(t) = exp(int_0^t f),     v(t) = m(t)^2 int_0^t g(u)^2 / m(u)^2 du

  (scipy.integrate.quad), so x_t = m(t) x_0 + sqrt(v(t)) z and
  p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + v I) (:func:`independent_log_density`, built with
  ``torch.distributions``).
* The Fokker-Planck equation of p_t, dp/dt = -div(f x p) + (g^2 / 2) lap p, written for
  l = log p (d the dimension):

      dl/dt = -d f - f x . grad l + (g^2 / 2) (lap l + |grad l|^2),

  evaluated by autograd on any log-density (:func:`fokker_planck_residual`): it involves only
  the density and f, g, so a marginal inconsistent with its SDE fails it.
* Exact samples of p_t made by pushing data samples through the SDE's transition (no score):
  :func:`transition_samples`.
* Component shares: under X ~ p_t the mean posterior responsibility of component k,
  E[w_k N_k(X) / p_t(X)], equals w_k exactly (:func:`component_share_z`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.integrate import quad

__all__ = ["quadrature_coefficients", "independent_log_density", "fokker_planck_residual",
           "transition_samples", "component_share_z", "law_parameters"]


def _scalar(fn, t: float) -> float:
    return float(fn(torch.tensor(t, dtype=torch.float64)))


#: Gauss-Legendre nodes for int_0^s f (exact for polynomial drifts of degree < 60; f is linear
#: or zero here) and the outer adaptive quadrature's tolerance.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(30)
QUAD_RTOL = 1e-12


def _log_mean(sde, s: float) -> float:
    u = torch.as_tensor(0.5 * s * (_NODES + 1.0), dtype=torch.float64)
    return 0.5 * s * float((torch.as_tensor(_WEIGHTS) * sde.drift_coef(u)).sum())


@functools.lru_cache(maxsize=4096)
def _coefficients(sde, t: float) -> tuple[float, float]:
    lm = _log_mean(sde, t)

    def integrand(u: float) -> float:
        return _scalar(sde.diffusion_coef, u) ** 2 * math.exp(2.0 * (lm - _log_mean(sde, u)))

    # the integrand grows like exp(2 u log r) for VE: panels let quad resolve it
    knots = [t * k / 8 for k in range(9)]
    v = sum(quad(integrand, a, b, epsabs=0.0, epsrel=QUAD_RTOL)[0]
            for a, b in zip(knots[:-1], knots[1:], strict=True))
    return math.exp(lm), v


def quadrature_coefficients(sde, t: float) -> tuple[float, float]:
    """(m(t), v(t)) of the linear SDE from its drift and diffusion coefficients only:
    m = exp(int_0^t f) (Gauss-Legendre), v = int_0^t g(u)^2 exp(2 int_u^t f) du (scipy quad)."""
    return _coefficients(sde, float(t))


def law_parameters(law) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights (K,), means (K, d), covariances (K, d, d)) of a Gaussian (K = 1) or a mixture,
    read from the law's defining attributes."""
    if hasattr(law, "weights"):
        return law.weights, law.means, law.covs
    return (torch.ones(1, dtype=law.mean.dtype, device=law.mean.device), law.mean[None],
            law.cov[None])


def _distribution(law, m, v):
    weights, means, covs = law_parameters(law)
    eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
    components = torch.distributions.MultivariateNormal(m * means, m**2 * covs + v * eye)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=weights),
                                                 components)


def independent_log_density(law, sde, x: torch.Tensor, t: float) -> torch.Tensor:
    """log p_t(x) from ``torch.distributions`` with m(t), v(t) by quadrature."""
    m, v = quadrature_coefficients(sde, t)
    return _distribution(law, m, v).log_prob(x)


def fokker_planck_residual(log_density, sde, x: torch.Tensor, t: float) -> torch.Tensor:
    """|dl/dt - rhs| / (sum of the magnitudes of the terms) per point of ``x`` (B, d), for
    l = ``log_density(x, t)`` (see the module docstring), every derivative by reverse-mode
    autograd, exact up to rounding.  dl/dt at every point at once by the double-backward
    identity: with u a free (B,) vector, G(u) = sum_b u_b dl_b/dt = d(u . l)/dt is linear in u,
    so dG/du = (dl_b/dt)_b (two reverse passes; no forward-mode dual numbers, whose first use
    imports torch's compiler stack, seconds per process)."""
    x = x.detach().clone().requires_grad_(True)
    tt = torch.tensor(t, dtype=x.dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        logp = log_density(x, tt)
        (grad,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
        lap = sum(torch.autograd.grad(grad[:, j].sum(), x, retain_graph=True)[0][:, j]
                  for j in range(x.shape[1]))
        u = torch.zeros_like(logp, requires_grad=True)
        (du_dt,) = torch.autograd.grad(logp, tt, grad_outputs=u, create_graph=True)
        (dl_dt,) = torch.autograd.grad(du_dt, u)
    grad, lap = grad.detach(), lap.detach()
    f = _scalar(sde.drift_coef, t)
    g2 = _scalar(sde.diffusion_coef, t) ** 2
    d = x.shape[1]
    drift_term = f * (x.detach() * grad).sum(-1)
    diffusion = 0.5 * g2 * (lap + (grad**2).sum(-1))
    residual = dl_dt - (-d * f - drift_term + diffusion)
    scale = dl_dt.abs() + d * abs(f) + drift_term.abs() + diffusion.abs()
    return residual.abs() / scale


def transition_samples(law, sde, t: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n exact samples of p_t: x_t = m(t) x_0 + sqrt(v(t)) z with x_0 from the data law's
    parameters (component drawn by weight, then its Gaussian by Cholesky) and m, v by quadrature.
    No score and no marginal code are involved."""
    weights, means, covs = law_parameters(law)
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    chol = torch.linalg.cholesky(covs)
    e0 = torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)
    x0 = means[k] + (chol[k] @ e0.to(means.device).unsqueeze(-1)).squeeze(-1)
    m, v = quadrature_coefficients(sde, t)
    z = torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)
    return m * x0 + math.sqrt(v) * z.to(means.device)


def component_share_z(law, sde, x: torch.Tensor, t: float) -> torch.Tensor:
    """z-scores of the mean posterior responsibility of every component over the samples ``x``
    against its weight (exact under x ~ p_t): (mean_k - w_k) / se_k, shape (K,)."""
    m, v = quadrature_coefficients(sde, t)
    dist = _distribution(law, m, v)
    log_joint = dist.component_distribution.log_prob(x.unsqueeze(1)) + torch.log(
        dist.mixture_distribution.probs)
    resp = torch.softmax(log_joint, dim=1)
    mean = resp.mean(0)
    se = resp.std(0) / math.sqrt(x.shape[0])
    return (mean - dist.mixture_distribution.probs) / se
