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

import math

import torch

from .sde import SDE, Time
from .stats import empirical_moments, gaussian_w2_moments, psd_sqrt

__all__ = ["Gaussian", "GaussianMixture", "AffineMap", "gaussian_w2", "random_rotation"]


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

    def score(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        """grad_x log p_t(x) = -(m^2 Sigma + v I)^{-1} (x - m mu)."""
        m, V = self._m_V(sde, t)
        y = (x - m * self.mean) @ self.eigvecs
        return -(y / V) @ self.eigvecs.T

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

    def _component_terms(self, x: torch.Tensor, m: torch.Tensor, V: torch.Tensor):
        """log w_k N(x; m mu_k, U_k diag(V_k) U_k^T) (shape (B, K)) and the component scores
        (shape (B, K, d)); V (K, d) or per sample (B, K, d)."""
        diff = x.unsqueeze(1) - m * self.means  # (B, K, d)
        y = torch.einsum("bkd,kde->bke", diff, self.eigvecs)  # eigen-coordinates
        quad = (y**2 / V).sum(-1)
        logdet = torch.log(V).sum(-1)
        log_norm = self.dim * math.log(2 * math.pi)
        log_joint = torch.log(self.weights) - 0.5 * (quad + logdet + log_norm)
        comp_scores = -torch.einsum("bke,kde->bkd", y / V, self.eigvecs)
        return log_joint, comp_scores

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), dtype=self.means.dtype, device=self.means.device)
        return torch.logsumexp(self._component_terms(x, one, self.eigvals)[0], dim=1)

    def marginal_log_prob(self, x: torch.Tensor, t: Time, sde: SDE) -> torch.Tensor:
        return torch.logsumexp(self._component_terms(x, *self._diffused(sde, t))[0], dim=1)

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
        log_joint, comp_scores = self._component_terms(x, *self._diffused(sde, t))
        if allowed is not None:
            log_joint = log_joint.masked_fill(~allowed, -math.inf)
        resp = torch.softmax(log_joint, dim=1)
        return (resp.unsqueeze(-1) * comp_scores).sum(1)

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
        terms = self._component_terms(x, *self._diffused(sde, t)) if t is not None else \
            self._component_terms(x, torch.ones((), dtype=self.means.dtype,
                                                device=self.means.device), self.eigvals)
        return torch.softmax(terms[0], dim=1)

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
