"""The statistics every part of the toolkit shares, one implementation each.

* Fits on a depth ladder, with the standard error of the slope from the fit's residuals:
  the convergence order, log e(L) = c - p log L (:func:`fit_order`), and the geometric growth
  rate per layer, log v(L) = c + r L (:func:`fit_growth_rate`).  Both are the one least-squares
  line fit :func:`fit_line`; they differ only in what they do with a value that is not finite
  and positive (``missing``): an order is not measurable from a ladder with a hole in it (NaN),
  a growth rate is fitted on the depths before an overflow (the point is dropped).
* Sample means with their standard errors, std(ddof=1) / sqrt(n) (:func:`mean_se`).
* Sample moments and their z-scores against exact Gaussian moments.
* The symmetric PSD square root and the 2-Wasserstein distance between Gaussians,
  W2^2 = |mu_p - mu_q|^2 + tr(S_p + S_q - 2 (S_p^{1/2} S_q S_p^{1/2})^{1/2}); its square is the
  Frechet distance of sample-quality metrics (:func:`frechet_distance`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LineFit", "fit_line", "OrderFit", "fit_order", "two_point_order", "ladder_orders",
           "RateFit", "fit_growth_rate", "per_sample_growth_rates", "jackknife_se", "mean_se",
           "depth_trend_metrics", "empirical_moments", "moment_z_scores", "psd_sqrt",
           "gaussian_w2_moments", "frechet_distance"]


# ------------------------------------------------------------------------------------------------
# Line fits on a depth ladder
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LineFit:
    """Least-squares line y = intercept + slope x, with the standard error of the slope
    (0 for two points, NaN when the fit could not be made)."""

    slope: float
    intercept: float
    stderr: float


def fit_line(x: Sequence[float], values: Sequence[float], *, log_x: bool,
             missing: str) -> LineFit:
    """Fit log(value) = intercept + slope * x' by least squares, x' = log x if ``log_x`` else x.

    ``missing`` says what a value that is not finite and positive does: ``"nan"`` makes the whole
    fit NaN, ``"drop"`` leaves that point out.  NaN when fewer than two points remain.
    """
    if missing not in ("nan", "drop"):
        raise ValueError(f"missing must be 'nan' or 'drop', got {missing!r}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2 or (missing == "nan" and not ok.all()):
        return LineFit(math.nan, math.nan, math.nan)
    x, y = x[ok], np.log(y[ok])
    if log_x:
        x = np.log(x)
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    n, stderr = len(x), 0.0
    if n > 2:
        resid = y - A @ coef
        stderr = math.sqrt(float(resid @ resid) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    return LineFit(slope=float(coef[1]), intercept=float(coef[0]), stderr=stderr)


@dataclass(frozen=True)
class OrderFit:
    """Least-squares fit log(error) = intercept - order * log(depth)."""

    order: float
    intercept: float
    stderr: float  # standard error of the slope from the fit's residuals (0 for two points)

    def predict(self, depths) -> np.ndarray:
        return np.exp(self.intercept) * np.asarray(depths, dtype=float) ** (-self.order)


def fit_order(depths: Sequence[float], errors: Sequence[float]) -> OrderFit:
    """The convergence order: minus the slope of log(error) against log(depth).

    NaN when any error is not finite and positive: an order that cannot be measured on the
    whole ladder never passes.
    """
    line = fit_line(depths, errors, log_x=True, missing="nan")
    return OrderFit(order=-line.slope, intercept=line.intercept, stderr=line.stderr)


def two_point_order(depths: Sequence[float], errors: Sequence[float]) -> float:
    """The order between the first and the last rung, log(e_first / e_last) / log(L_last /
    L_first): the line through those two points (:func:`fit_order`); NaN unless both errors are
    finite and positive."""
    return fit_order([depths[0], depths[-1]], [errors[0], errors[-1]]).order


def ladder_orders(depths: Sequence[float], errors: Sequence[float]) -> tuple[float, float, float]:
    """The three orders every convergence statement is gated on: the least-squares order on the
    whole ladder, the end-to-end order between the coarsest and the deepest rung (``_span``) and
    the local order between the two deepest rungs (``_deep``)."""
    return (fit_order(depths, errors).order, two_point_order(depths, errors),
            two_point_order(depths[-2:], errors[-2:]))


@dataclass(frozen=True)
class RateFit:
    """Least-squares fit log(value) = intercept + rate * depth: geometric growth per layer."""

    rate: float
    intercept: float
    stderr: float

    def predict(self, depths) -> np.ndarray:
        return np.exp(self.intercept + self.rate * np.asarray(depths, dtype=float))


def fit_growth_rate(depths: Sequence[float], values: Sequence[float]) -> RateFit:
    """The growth rate per layer: the slope of log(value) against depth.

    Uses the points with a finite, positive value (a deep run that overflowed is left out);
    NaN when fewer than two remain.
    """
    line = fit_line(depths, values, log_x=False, missing="drop")
    return RateFit(rate=line.slope, intercept=line.intercept, stderr=line.stderr)


def per_sample_growth_rates(depths: Sequence[float], values) -> np.ndarray:
    """The fitted growth rate per layer (:func:`fit_growth_rate`) of each column of ``values``
    (rows: depths, columns: samples)."""
    values = np.asarray(values, dtype=float)
    return np.array([fit_growth_rate(depths, values[:, s]).rate for s in range(values.shape[1])])


# ------------------------------------------------------------------------------------------------
# Means with standard errors
# ------------------------------------------------------------------------------------------------

def mean_se(samples) -> tuple[float, float]:
    """Sample mean and its standard error std(ddof=1) / sqrt(n) of numbers, an array or a tensor.

    NaN for both if any sample is not finite (a diverged run has no mean); the standard error is
    NaN for a single sample.
    """
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(samples, dtype=float).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def depth_trend_metrics(depths: Sequence[float], values, *, value: str, ratio: str,
                        rate: str) -> dict[str, float]:
    """Summaries of a per-sample quantity measured at increasing depths (rows: depths, columns:
    samples), each a sample mean with its standard error ``<name>_se``: ``value`` its mean at the
    last depth, ``ratio`` the mean per-sample ratio of the last depth to the first, ``rate`` the
    mean per-sample growth rate per layer."""
    values = np.asarray(values, dtype=float)
    out = {}
    for name, samples in ((value, values[-1]), (ratio, values[-1] / values[0]),
                          (rate, per_sample_growth_rates(depths, values))):
        out[name], out[f"{name}_se"] = mean_se(samples)
    return out


def jackknife_se(samples: np.ndarray, statistic, batches: int = 20) -> float:
    """Standard error of statistic(mean of samples over axis 0) by the delete-one-batch
    jackknife over ``batches`` contiguous batches of the (i.i.d.) sample rows; NaN when the
    statistic is not finite on some batch."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[0]
    batches = min(batches, n)
    total = samples.sum(0)
    edges = np.linspace(0, n, batches + 1).astype(int)
    values = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        values.append(statistic((total - samples[a:b].sum(0)) / (n - (b - a))))
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        return math.nan
    return float(math.sqrt((batches - 1) / batches * ((values - values.mean()) ** 2).sum()))


# ------------------------------------------------------------------------------------------------
# Sample moments
# ------------------------------------------------------------------------------------------------

def empirical_moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and unbiased sample covariance over the sample axis of (..., n, d) samples:
    shapes (..., d) and (..., d, d)."""
    n = samples.shape[-2]
    if n < 2:
        raise ValueError("need at least two samples for a covariance")
    mean = samples.mean(-2)
    centred = samples - mean.unsqueeze(-2)
    return mean, centred.mT @ centred / (n - 1)


def moment_z_scores(sample_mean: torch.Tensor, sample_cov: torch.Tensor, n: int,
                    mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """z-scores of the sample moments of n i.i.d. draws from N(mean, cov) against those moments.

    Mean entries: (m_j - mean_j) / sqrt(cov_jj / n).  Covariance entries j <= k of the unbiased
    sample covariance S, whose variance for Gaussian draws is (cov_jk^2 + cov_jj cov_kk) / (n - 1)
    (Wishart): (S_jk - cov_jk) / sqrt((cov_jk^2 + cov_jj cov_kk) / (n - 1)).  Batched over leading
    dimensions; returns (..., d + d (d + 1) / 2), each approximately N(0, 1) for large n.
    """
    d = mean.shape[-1]
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    z_mean = (sample_mean - mean) / torch.sqrt(var / n)
    j, k = torch.triu_indices(d, d, device=cov.device)
    cov_var = (cov[..., j, k] ** 2 + var[..., j] * var[..., k]) / (n - 1)
    z_cov = (sample_cov[..., j, k] - cov[..., j, k]) / torch.sqrt(cov_var)
    return torch.cat([z_mean, z_cov], dim=-1)


# ------------------------------------------------------------------------------------------------
# Gaussian distances
# ------------------------------------------------------------------------------------------------

def psd_sqrt(S: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root of (a batch of) symmetric matrices (..., d, d).

    Negative round-off eigenvalues are clipped at 0.  Each matrix is scaled by its largest entry
    before the eigendecomposition (and the square root scaled back), so that finite matrices with
    huge entries, such as the moments of a diverging stack, do not overflow inside the solver.
    """
    S = 0.5 * S + 0.5 * S.mT  # not 0.5 (S + S^T): that overflows near the largest float
    scale = S.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lam, U = torch.linalg.eigh(S / scale)
    return (U * (lam.clamp(min=0) * scale[..., 0]).sqrt().unsqueeze(-2)) @ U.mT


def gaussian_w2_moments(mean_p: torch.Tensor, cov_p: torch.Tensor, mean_q: torch.Tensor,
                        cov_q: torch.Tensor) -> torch.Tensor:
    """W2(N(mean_p, cov_p), N(mean_q, cov_q)), batched: means (..., d), covariances (..., d, d).

    Needs no positive definiteness (a degenerate covariance is fine; W2^2 is clipped at 0, since
    the roots of round-off eigenvalues can make it a hair negative) and returns NaN where a moment
    is not finite, so a diverged stack gives a NaN distance instead of an exception.
    """
    finite = (torch.isfinite(mean_p).all(-1) & torch.isfinite(mean_q).all(-1)
              & torch.isfinite(cov_p).all((-2, -1)) & torch.isfinite(cov_q).all((-2, -1)))
    safe = finite.unsqueeze(-1)
    mean_p, mean_q = torch.where(safe, mean_p, 0.0), torch.where(safe, mean_q, 0.0)
    cov_p = torch.where(safe.unsqueeze(-1), cov_p, 0.0)
    cov_q = torch.where(safe.unsqueeze(-1), cov_q, 0.0)
    root_p = psd_sqrt(cov_p)
    inner = root_p @ cov_q @ root_p
    finite = finite & torch.isfinite(inner).all((-2, -1))
    cross = psd_sqrt(torch.where(finite[..., None, None], inner, 0.0))
    trace = torch.diagonal(cov_p + cov_q - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    w2sq = ((mean_p - mean_q) ** 2).sum(-1) + trace
    w2 = torch.sqrt(torch.clamp(w2sq, min=0.0))
    return torch.where(finite & torch.isfinite(w2), w2, torch.nan)


def frechet_distance(mu1, S1, mu2, S2) -> float:
    """The Frechet distance of sample-quality metrics (FID's formula): W2^2 between N(mu1, S1)
    and N(mu2, S2), computed in float64 by :func:`gaussian_w2_moments`."""
    def as64(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float64))

    return float(gaussian_w2_moments(as64(mu1), as64(S1), as64(mu2), as64(S2)) ** 2)
