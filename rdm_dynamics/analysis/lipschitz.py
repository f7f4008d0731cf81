"""Certified Lipschitz constants: upper bounds that carry their certificate.

A Gronwall bound ``|delta_L| <= prod_i (1 + |alpha_i| Lip F_i) |delta_0| + ...`` is a bound only if
every Lip F_i in it is an upper bound.  An estimate from below (power iteration returns
|W v| / |v| <= ||W||_2 for every v) would make the "bound" smaller than the truth and could hide a
violation.  So Lipschitz constants are not bare numbers here: they are :class:`LipschitzBound`
values that say how they were obtained, and :func:`require_certified` (used by every bound in the
toolkit) rejects anything that is not a certified upper bound, raising
:class:`UncertifiedLipschitzError`.

Certified methods:

* ``spectral-norm``: sigma_max(W) from a float64 SVD (LAPACK, backward stable: the computed value
  is within p(d) u_64 ||W||_2 of the true one).  We add a relative margin of ``SVD_MARGIN``
  (1e-10), which covers p(d) up to about 10^5.
* ``sum`` and ``scale``: Lip(f + g) <= Lip f + Lip g and Lip(c f) = |c| Lip f, certified when their
  parts are.

A residual takes part in the bounds by providing ``lipschitz_bound(t) -> LipschitzBound``
(and optionally the batched ``lipschitz_bounds(times)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LipschitzBound", "UncertifiedLipschitzError", "require_certified",
           "certified_lipschitz", "stack_gains", "SVD_MARGIN"]

#: Relative margin added to an SVD's largest singular value to make it a certified upper bound.
SVD_MARGIN = 1e-10

#: Methods that give estimates, not bounds: a LipschitzBound made by them can never be certified.
ESTIMATE_METHODS = frozenset({"power-iteration"})


class UncertifiedLipschitzError(ValueError):
    """A Lipschitz constant that is not a certified upper bound was offered to a bound."""


@dataclass(frozen=True)
class LipschitzBound:
    """A Lipschitz constant ``value`` with the ``method`` that produced it.

    ``certified`` is True only for upper bounds; use the named constructors rather than building
    one by hand.  Estimates (power iteration) are representable, so that they can be compared,
    but :func:`require_certified` refuses them.
    """

    value: float
    method: str
    certified: bool

    def __post_init__(self):
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value)
                and self.value >= 0):
            raise ValueError(f"a Lipschitz constant must be a finite number >= 0, "
                             f"got {self.value!r}")
        if self.certified and self.method in ESTIMATE_METHODS:
            raise UncertifiedLipschitzError(f"a {self.method} estimate is not an upper bound "
                                            "and cannot be certified")

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def spectral_norm(cls, W: torch.Tensor) -> LipschitzBound:
        """Certified Lip of z -> W z: the largest singular value (float64 SVD) plus margin."""
        sigma = float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2))
        return cls(sigma * (1 + SVD_MARGIN), "spectral-norm", True)

    @classmethod
    def spectral_norms(cls, W: torch.Tensor) -> list[LipschitzBound]:
        """:meth:`spectral_norm` of each matrix in a batch ``(n, d, d)``, in one batched SVD."""
        sigmas = torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2)
        return [cls(float(s) * (1 + SVD_MARGIN), "spectral-norm", True) for s in sigmas.cpu()]

    @classmethod
    def power_iteration(cls, W: torch.Tensor, iterations: int = 20,
                        generator: torch.Generator | None = None) -> LipschitzBound:
        """An ESTIMATE of ||W||_2 from below: |W v_k| / |v_k| after k power steps.  Never
        certified; offered to a bound it raises :class:`UncertifiedLipschitzError`."""
        W = W.detach().to(torch.float64)
        v = torch.randn(W.shape[1], generator=generator, dtype=W.dtype).to(W.device)
        for _ in range(iterations):
            v = W.T @ (W @ v)
            v = v / v.norm()
        return cls(float((W @ v).norm()), "power-iteration", False)

    @classmethod
    def constant(cls, value: float) -> LipschitzBound:
        """Lip of z -> value * z (exact)."""
        return cls(abs(float(value)), "scale", True)

    # --- combinations (triangle inequality) ---------------------------------------------------
    def __add__(self, other: LipschitzBound) -> LipschitzBound:
        if not isinstance(other, LipschitzBound):
            return NotImplemented
        return LipschitzBound(self.value + other.value, "sum",
                              self.certified and other.certified)

    def scaled(self, factor: float) -> LipschitzBound:
        return LipschitzBound(abs(float(factor)) * self.value,
                              "scale" if self.certified else self.method, self.certified)


def require_certified(bound, what: str = "Lipschitz constant") -> LipschitzBound:
    """Return ``bound`` if it is a certified :class:`LipschitzBound`; raise otherwise."""
    if not isinstance(bound, LipschitzBound):
        raise UncertifiedLipschitzError(
            f"{what} {bound!r} is a bare number, not a LipschitzBound: a bound needs a certified "
            "upper bound (e.g. LipschitzBound.spectral_norm)")
    if not bound.certified:
        raise UncertifiedLipschitzError(
            f"{what} {bound.value:.6g} comes from {bound.method}, which estimates from below; "
            "a bound needs a certified upper bound (e.g. LipschitzBound.spectral_norm)")
    return bound


def certified_lipschitz(residual, times: Sequence | torch.Tensor) -> list[LipschitzBound]:
    """Certified Lipschitz constants of z -> residual(z, t) at each time, checked one by one."""
    if hasattr(residual, "lipschitz_bounds"):
        bounds = residual.lipschitz_bounds(times)
    elif hasattr(residual, "lipschitz_bound"):
        bounds = [residual.lipschitz_bound(t) for t in times]
    else:
        raise UncertifiedLipschitzError(
            f"{type(residual).__name__} provides no lipschitz_bound(t): its Lipschitz constant "
            "is unknown, so no Gronwall bound can be given")
    return [require_certified(b, f"Lipschitz constant of {type(residual).__name__}")
            for b in bounds]


def stack_gains(stack) -> torch.Tensor:
    """g_i = max_c |alpha_{i,c}| * Lip F_i for each unit of a GatedResidualStack, shape (L,).

    Each unit is then Lipschitz with constant 1 + g_i:
    |x + alpha F(x) + beta - (y + alpha F(y) + beta)| <= (1 + g_i) |x - y|.
    """
    times = stack.times[:-1]
    if stack.shared_residual:
        lips = certified_lipschitz(stack.residuals[0], times)
    else:
        lips = [certified_lipschitz(r, [t])[0] for r, t in zip(stack.residuals, times, strict=True)]
    lip = torch.tensor([b.value for b in lips], dtype=torch.float64)
    alpha = stack.alpha.detach().to(torch.float64).cpu().abs()
    alpha_max = alpha.reshape(alpha.shape[0], -1).amax(dim=1)
    return alpha_max * lip
