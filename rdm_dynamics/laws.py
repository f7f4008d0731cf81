"""Data laws whose diffused marginals and scores are known exactly.

For a linear SDE (see ``sde.py``) with x_t = m(t) x_0 + sqrt(v(t)) eps:

* Gaussian data N(mu, Sigma) has p_t = N(m mu, m^2 Sigma + v I).  With Sigma = U diag(lam) U^T
  every time-t covariance is diagonal in the same basis, with eigenvalues V(t) = m(t)^2 lam + v(t),
  so all maps below are per-eigen-direction scalings.
* A Gaussian mixture sum_k w_k N(mu_k, Sigma_k) has p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + v I)
  and score  s = sum_k r_k(x) s_k(x),  with responsibilities r_k(x) = w_k N_k(x) / p_t(x).

Exact transports for Gaussian data (s < t are diffusion times):

* PF-ODE flow map from time a to time b (either order): in the eigenbasis,
  y_b = sqrt(V(b) / V(a)) y_a with y = x - m mu, because y' = (f + g^2 / (2V)) y and
  (sqrt V)' = (f + g^2 / (2V)) sqrt V.
* Reverse kernel x_s | x_t: Bayes with x_t | x_s ~ N(r x_s, k^2): in the eigenbasis,
  mean = m(s) mu + (r V(s) / V(t)) (x_t - m(t) mu),  var = V(s) k^2 / V(t).

Data are vectors: samples have shape ``(B, d)``.  Times may be a Python scalar or a 0-d tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from .sde import SDE, Time
from .stats import empirical_moments, gaussian_w2_moments, psd_sqrt

__all__ = ["Gaussian", "GaussianMixture", "DiffusedScore", "AffineMap", "gaussian_w2",
           "random_rotation"]


def _time(t: Time, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


class AffineMap:
    """x -> x @ A^T + c, optionally followed by Gaussian noise with covariance ``cov``."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, cov: torch.Tensor | None = None):
        self.A, self.c, self.cov = A, c, cov

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.c


class Gaussian:
    """N(mean, cov) in R^d with full covariance; exact diffused marginals, scores and transports."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        mean = torch.as_tensor(mean)
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError("mean must have shape (d,) and cov shape (d, d)")
        self.mean = mean
        self.cov = 0.5 * (cov + cov.T)
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.cov)
        if self.eigvals.min() <= 0:
            raise ValueError("cov must be positive definite")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def to(self, dtype=None, device=None) -> Gaussian:
        return Gaussian(self.mean.to(dtype=dtype, device=device),
                        self.cov.to(dtype=dtype, device=device))

    # --- the law at time 0 ----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype,
                          device=self.mean.device)
        return self.mean + (eps * self.eigvals.sqrt()) @ self.eigvecs.T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.mean) @ self.eigvecs
        quad = (y**2 / self.eigvals).sum(-1)
        logdet = torch.log(self.eigvals).sum()
        return -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))

    # --- diffused laws --------------------------------------------------------------------------
    def _m_V(self, sde: SDE, t: Time):
        """m(t) and the eigenvalues V(t) = m^2 lam + v of the time-t covariance."""
        t = _time(t, self.mean)
        m = sde.mean_coef(t)
        return m, m**2 * self.eigvals + sde.marginal_var(t)

    def marginal(self, sde: SDE, t: Time) -> Gaussian:
        """p_t: N(m mu, m^2 Sigma + v I)."""
        m, V = self._m_V(sde, t)
        return Gaussian(m * self.mean, (self.eigvecs * V) @ self.eigvecs.T)

    def _score_coefficients(self, m: torch.Tensor, V: torch.Tensor):
        """The x-free part of the score at a time, from ``_m_V``: the centre m mu and minus the
        precision, -(m^2 Sigma + v I)^{-1} = U diag(-1 / V) U^T (symmetric; each with a leading
        axis for a grid of times)."""
        return m * self.mean, (self.eigvecs * (-1.0 / V).unsqueeze(-2)) @ self.eigvecs.T

    @staticmethod
    def _score_given(x: torch.Tensor, centre: torch.Tensor,
                     neg_precision: torch.Tensor) -> torch.Tensor:
        """-(m^2 Sigma + v I)^{-1} (x - m mu) given ``_score_coefficients`` (rows of x)."""
        return (x - centre) @ neg_precision

    def score(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        """grad_x log p_t(x) = -(m^2 Sigma + v I)^{-1} (x - m mu)."""
        return self._score_given(x, *self._score_coefficients(*self._m_V(sde, t)))

    def score_on_grid(self, sde: SDE, times: torch.Tensor) -> list[Callable]:
        """x -> score(x, t_i, sde) for every time of a 1-d ``times``: the same arithmetic, with
        its coefficients computed for the whole grid in vectorised calls of ``_m_V`` and
        ``_score_coefficients``."""
        centres, neg_precisions = self._score_coefficients(*self._m_V(sde, times.unsqueeze(-1)))
        return [functools.partial(self._score_given, centre=c, neg_precision=p)
                for c, p in zip(centres.unbind(0), neg_precisions.unbind(0), strict=True)]

    def marginal_log_prob(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        return self.marginal(sde, t).log_prob(x)

    def pushforward(self, A: torch.Tensor, c: torch.Tensor,
                    noise_cov: torch.Tensor | None = None) -> Gaussian:
        """Law of A x + c + e for x ~ this law and independent e ~ N(0, noise_cov):
        N(A mu + c, A Sigma A^T + noise_cov).  Exact moment propagation through an affine unit."""
        cov = A @ self.cov @ A.T
        if noise_cov is not None:
            cov = cov + noise_cov
        return Gaussian(A @ self.mean + c, cov)

    @staticmethod
    def fit(samples: torch.Tensor) -> Gaussian:
        """The Gaussian with the sample mean and unbiased sample covariance of (n, d) samples."""
        return Gaussian(*empirical_moments(samples))

    # --- exact transports -----------------------------------------------------------------------
    def pf_ode_map(self, sde: SDE, a: Time, b: Time) -> AffineMap:
        """The PF-ODE flow map from time a to time b, as x_b = A x_a + c (exact)."""
        ma, Va = self._m_V(sde, a)
        mb, Vb = self._m_V(sde, b)
        scale = torch.sqrt(Vb / Va)
        A = (self.eigvecs * scale) @ self.eigvecs.T
        c = mb * self.mean - A @ (ma * self.mean)
        return AffineMap(A, c)

    def reverse_kernel(self, sde: SDE, s: Time, t: Time) -> AffineMap:
        """Law of x_s given x_t (s < t) under the forward process: N(A x_t + c, cov)."""
        ms, Vs = self._m_V(sde, s)
        mt, Vt = self._m_V(sde, t)
        r, k = sde.transition_coefs(s, t, like=self.mean)
        gain = r * Vs / Vt
        A = (self.eigvecs * gain) @ self.eigvecs.T
        c = ms * self.mean - A @ (mt * self.mean)
        cov = (self.eigvecs * (Vs * k**2 / Vt)) @ self.eigvecs.T
        return AffineMap(A, c, cov)

    def marginal_moments(self, sde: SDE, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of p_t at every time of a 1-d ``times``: shapes (n, d), (n, d, d).

        The batched form of ``marginal``: m(t) mu and U diag(m(t)^2 lam + v(t)) U^T.
        """
        times = times.to(dtype=self.mean.dtype, device=self.mean.device)
        m = sde.mean_coef(times).unsqueeze(-1)  # (n, 1)
        V = m**2 * self.eigvals + sde.marginal_var(times).unsqueeze(-1)  # (n, d)
        return m * self.mean, torch.einsum("de,ne,fe->ndf", self.eigvecs, V, self.eigvecs)

    def reverse_chain(self, sde: SDE, times: torch.Tensor, x: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """Exact samples of the forward process at decreasing ``times`` t_0 > t_1 > ... given
        x = x_{t_0}: each step draws x_{t_{i+1}} from ``reverse_kernel`` (t_{i+1} given t_i) with
        the standard normal ``noise[i]`` (shape (len(times) - 1, B, d)).  If x ~ p_{t_0}, every
        state is an exact sample of p_{t_i}; with the noise of a stochastic stack it is that
        stack's exact counterpart on the same noise.  Returns all states, (len(times), B, d)."""
        states = [x]
        for i in range(len(times) - 1):
            kernel = self.reverse_kernel(sde, times[i + 1], times[i])
            states.append(kernel(states[-1]) + noise[i] @ psd_sqrt(kernel.cov))
        return torch.stack(states)

    @classmethod
    def random(cls, dim: int, *, eigen_range: tuple[float, float] = (0.25, 2.0),
               mean_scale: float = 1.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> Gaussian:
        """N(mu, Q diag(lam) Q^T) with mu ~ N(0, mean_scale^2 I), lam uniform on ``eigen_range``
        and Q a uniformly random rotation: a test law with a non-diagonal covariance."""
        lo, hi = eigen_range
        mean = mean_scale * torch.randn(dim, generator=generator, dtype=dtype)
        lam = lo + (hi - lo) * torch.rand(dim, generator=generator, dtype=dtype)
        return cls.rotated(mean, lam, random_rotation(dim, generator=generator, dtype=dtype))

    @classmethod
    def rotated(cls, mean: torch.Tensor, eigenvalues: torch.Tensor,
                rotation: torch.Tensor) -> Gaussian:
        """N(mean, Q diag(eigenvalues) Q^T) for an orthogonal Q = ``rotation``."""
        return cls(mean, (rotation * eigenvalues) @ rotation.T)


class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in R^d; exact diffused marginals and scores."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor):
        means = torch.as_tensor(means)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        covs = torch.as_tensor(covs, dtype=means.dtype, device=means.device)
        K, d = means.shape
        if weights.shape != (K,) or covs.shape != (K, d, d):
            raise ValueError("weights (K,), means (K, d) and covs (K, d, d) must agree")
        if (weights <= 0).any():
            raise ValueError("mixture weights must be positive")
        self.weights = weights / weights.sum()
        self.components = [Gaussian(means[k], covs[k]) for k in range(K)]
        self.means = means
        self.covs = torch.stack([c.cov for c in self.components])
        self.eigvals = torch.stack([c.eigvals for c in self.components])  # (K, d)
        self.eigvecs = torch.stack([c.eigvecs for c in self.components])  # (K, d, d)
        self._ones = torch.ones(d, dtype=means.dtype, device=means.device)  # sums over axes

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, dtype=None, device=None) -> GaussianMixture:
        return GaussianMixture(self.weights.to(dtype=dtype, device=device),
                               self.means.to(dtype=dtype, device=device),
                               self.covs.to(dtype=dtype, device=device))

    def sample(self, n: int, generator: torch.Generator | None = None,
               with_components: bool = False):
        """n draws (n, d); with ``with_components`` also the component of each draw (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype,
                          device=self.means.device)
        L = self.eigvecs[k] * self.eigvals[k].sqrt().unsqueeze(-2)  # (n, d, d): U diag(sqrt lam)
        x = self.means[k] + (L @ eps.unsqueeze(-1)).squeeze(-1)
        return (x, k) if with_components else x

    def _diffused(self, sde: SDE, t: Time):
        """m(t) and the eigenvalues V = m^2 lam + v of every component at time t: V (K, d) for
        one time, (B, K, d) for a (B,) tensor of per-sample times (m then (B, 1, 1))."""
        t = _time(t, self.means)
        if t.ndim:
            t = t.reshape(-1, 1, 1)
        m = sde.mean_coef(t)
        return m, m**2 * self.eigvals + sde.marginal_var(t)

    def _time_terms(self, m: torch.Tensor, V: torch.Tensor):
        """The part of every component's log-density and score that does not depend on x, from
        the coefficients of ``_diffused``: the centres m mu_k, the eigenvalues V_k as given and
        log w_k - (log det + d log 2 pi) / 2, with log det = sum log V_k.  Shapes (K, d), (K, d),
        (K,) for one time; a leading axis for per-sample times (B, 1, 1) or a grid (n, 1, 1)."""
        log_norm = self.dim * math.log(2 * math.pi)
        log_coef = torch.log(self.weights) - 0.5 * (torch.log(V) @ self._ones + log_norm)
        return m * self.means, V, log_coef

    def _component_terms(self, x: torch.Tensor, centres: torch.Tensor, V: torch.Tensor,
                         log_coef: torch.Tensor):
        """log w_k N(x; m mu_k, U_k diag(V_k) U_k^T) and the component scores
        -U_k diag(1 / V_k) U_k^T (x - m mu_k), component-major: shapes (K, B) and (K, B, d),
        given ``_time_terms`` (for one time, or per sample with a leading B axis).  The
        eigen-coordinates y_k = (x - m mu_k) U_k are K batched matrix products, and the sum over
        coordinates a product with a vector of ones (a matrix-vector product: much faster than a
        reduction over a short last axis)."""
        diff = (x.unsqueeze(1) - centres).transpose(0, 1)  # (K, B, d)
        if V.ndim == 3:  # per sample
            V, log_coef = V.transpose(0, 1), log_coef.T  # (K, B, d), (K, B)
        else:
            V, log_coef = V.unsqueeze(1), log_coef.unsqueeze(1)  # (K, 1, d), (K, 1)
        y = torch.matmul(diff, self.eigvecs)  # eigen-coordinates
        y_over_V = y / V
        log_joint = log_coef - 0.5 * ((y * y_over_V) @ self._ones)
        comp_scores = -torch.matmul(y_over_V, self.eigvecs.transpose(-1, -2))
        return log_joint, comp_scores

    def _coefficients(self, sde: SDE | None = None, t: Time | None = None):
        """(m, V) of ``_diffused`` at t, or of the mixture itself (m = 1, V = its eigenvalues)
        when t is None."""
        if t is None:
            return (torch.ones((), dtype=self.means.dtype, device=self.means.device),
                    self.eigvals)
        return self._diffused(sde, t)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_joint = self._component_terms(x, *self._time_terms(*self._coefficients()))[0]
        return torch.logsumexp(log_joint, dim=0)

    def marginal_log_prob(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        terms = self._time_terms(*self._diffused(sde, t))
        return torch.logsumexp(self._component_terms(x, *terms)[0], dim=0)

    def marginal(self, sde: SDE, t: Time) -> GaussianMixture:
        m, V = self._diffused(sde, t)
        covs = torch.einsum("kde,ke,kfe->kdf", self.eigvecs, V, self.eigvecs)
        return GaussianMixture(self.weights, m * self.means, covs)

    def score(self, x: torch.Tensor, t: Time, sde: SDE,
              allowed: torch.Tensor | None = None) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) s_k(x).

        ``allowed`` (B, K) bool restricts sample b to the components allowed[b]: the score of
        the mixture conditioned on the component lying in that set (e.g. of one class), whose
        responsibilities are those of the full mixture renormalised over the set.
        """
        return self._score_given(x, self._time_terms(*self._diffused(sde, t)), allowed)

    def _score_given(self, x: torch.Tensor, terms: tuple,
                     allowed: torch.Tensor | None = None) -> torch.Tensor:
        """sum_k r_k(x) s_k(x) given the ``_time_terms`` of the time (see ``score``)."""
        log_joint, comp_scores = self._component_terms(x, *terms)  # (K, B), (K, B, d)
        if allowed is not None:
            log_joint = log_joint.masked_fill(~allowed.T, -math.inf)
        resp = torch.softmax(log_joint, dim=0)
        return (resp.unsqueeze(-1) * comp_scores).sum(0)

    def score_on_grid(self, sde: SDE, times: torch.Tensor) -> list[Callable]:
        """x -> score(x, t_i, sde) for every time of a 1-d ``times``: the same arithmetic, with
        m(t_i) and V(t_i) computed for the whole grid in one vectorised call of ``_diffused``."""
        terms = zip(*(a.unbind(0) for a in self._time_terms(*self._diffused(sde, times))),
                    strict=True)
        return [functools.partial(self._score_given, terms=terms_i) for terms_i in terms]

    def optimal_eps(self, x: torch.Tensor, t: Time, sde: SDE,
                    allowed: torch.Tensor | None = None) -> torch.Tensor:
        """The Bayes-optimal noise prediction eps*(x, t) = E[eps | x_t = x] = -s(t) score(x, t)
        for x_t = m(t) x_0 + s(t) eps, s = sqrt(v) (Tweedie); ``allowed`` as for ``score``."""
        std = torch.sqrt(sde.marginal_var(_time(t, self.means)))
        if std.ndim:
            std = std.reshape(-1, 1)
        return -std * self.score(x, t, sde, allowed)

    def responsibilities(self, x: torch.Tensor, t: Time | None = None,
                         sde: SDE | None = None) -> torch.Tensor:
        """r_k(x) = w_k N_k(x) / p(x) (B, K) under p_0 (t None) or under p_t."""
        log_joint = self._component_terms(x, *self._time_terms(*self._coefficients(sde, t)))[0]
        return torch.softmax(log_joint, dim=0).T

    def moment_matched(self) -> Gaussian:
        """The Gaussian with this mixture's mean and covariance:
        mean = sum_k w_k mu_k,  cov = sum_k w_k (Sigma_k + mu_k mu_k^T) - mean mean^T."""
        mean = self.weights @ self.means
        second = torch.einsum("k,kij->ij", self.weights,
                              self.covs + self.means.unsqueeze(-1) * self.means.unsqueeze(-2))
        return Gaussian(mean, second - torch.outer(mean, mean))

    @classmethod
    def random(cls, components: int, dim: int, *, radius: float = 2.0,
               eigen_range: tuple[float, float] = (0.1, 0.5),
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> GaussianMixture:
        """A test mixture: ``components`` means evenly spaced on a circle of ``radius`` in a
        random plane, weights uniform on [0.5, 1.5] (normalised), and each covariance a random
        rotation of a diagonal with entries uniform on ``eigen_range``."""
        if dim < 2:
            raise ValueError("a ring mixture needs dim >= 2")
        angles = 2 * math.pi * torch.arange(components, dtype=dtype) / components
        ring = torch.zeros(components, dim, dtype=dtype)
        ring[:, 0], ring[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
        means = ring @ random_rotation(dim, generator=generator, dtype=dtype).T
        weights = 0.5 + torch.rand(components, generator=generator, dtype=dtype)
        covs = torch.stack([Gaussian.random(dim, eigen_range=eigen_range, mean_scale=0.0,
                                            generator=generator, dtype=dtype).cov
                            for _ in range(components)])
        return cls(weights, means, covs)


class DiffusedScore:
    """The exact score of a law diffused by an SDE, (x, t) -> scale * grad_x log p_t(x), with
    ``on_grid(times)``: the same function at each time of a grid, its time coefficients computed
    once for the whole grid (``score_on_grid``), for the units of a stack (``sde.DenoisingField``).
    ``scale`` != 1 is a negative control (a score of the wrong sign or size)."""

    def __init__(self, law: Gaussian | GaussianMixture, sde: SDE, scale: float = 1.0):
        self.law, self.sde, self.scale = law, sde, float(scale)

    def _scaled(self, score: torch.Tensor) -> torch.Tensor:
        return score if self.scale == 1.0 else self.scale * score

    def __call__(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        return self._scaled(self.law.score(x, t, self.sde))

    def on_grid(self, times: torch.Tensor) -> list[Callable]:
        """x -> scale * score(x, t_i) for every time of a 1-d ``times``."""
        scores = self.law.score_on_grid(self.sde, times)
        return scores if self.scale == 1.0 else [lambda x, s=s: self.scale * s(x) for s in scores]


def gaussian_w2(p: Gaussian, q: Gaussian) -> torch.Tensor:
    """The 2-Wasserstein distance between two Gaussians:

    W2^2 = |mu_p - mu_q|^2 + tr(S_p + S_q - 2 (S_p^{1/2} S_q S_p^{1/2})^{1/2}).
    """
    return gaussian_w2_moments(p.mean, p.cov, q.mean, q.cov)


def random_rotation(dim: int, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal (dim, dim) matrix: QR of a Gaussian matrix, signs fixed by R."""
    Q, R = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))
