"""Gates of a gated residual stack for Gaussian data, in the eigenbasis of the data covariance.

Coordinates.  With Sigma = U diag(lam) U^T, the stack works on y = U^T x (``to_eigen``) and maps
back with x = U y (``from_eigen``).  Every diffused law p_t, every exact transport of
``laws.Gaussian`` and the (affine) denoising field are diagonal in this basis, so units that act
per channel,

    z_{i+1} = z_i + alpha_i * F(z_i) + beta_i [+ gamma_i * xi_i],    F(z) = z,

can represent them with vector gates.  We use eigen-coordinates (not matrix gates in the original
basis): the stack's gates stay the per-channel gates of ``stack.GatedResidualStack``.

Closed-form gates of the unit from t_i to t_{i+1} (t_{i+1} < t_i, the denoising direction), read
off the exact maps of ``laws.py`` (no formula is repeated here):

* PF-ODE: the flow map y -> C y + c (``Gaussian.pf_ode_map``) gives
  alpha_i = C - 1, beta_i = c = mu_{i+1} - C mu_i (mu_t = m(t) U^T mu).
* reverse SDE: the kernel y_{t_{i+1}} | y_{t_i} ~ N(A y + c, diag(S)) (``Gaussian.reverse_kernel``)
  gives alpha_i = A - 1, beta_i = c, gamma_i = sqrt(S).

Euler gates are h times the coefficients of the denoising field, which is affine for Gaussian
data: v(y, t) = a(t) y + b(t) in eigen-coordinates (``DenoisingCoefficients`` reads a and b off
``sde.reverse(score).denoising_field``), with noise coefficient g(t) for the reverse SDE.  The
rdm schedule initialises its learnable gates there; ``install_gates`` then replaces them.

Layer laws.  Where every unit is affine (the stacks above; a denoising stack of Gaussian data
with the exact score, C2 and C3), the law of every layer started from a Gaussian is Gaussian and
is propagated exactly: ``layer_laws`` carries it from the input law through the stack and holds
it against the exact laws (mean and covariance errors, W2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..laws import Gaussian
from ..sde import SDE
from ..stack import GatedResidualStack
from ..stats import gaussian_w2_moments

__all__ = ["identity", "to_eigen", "from_eigen", "eigen_law", "closed_form_gates",
           "DenoisingCoefficients", "eigen_stack", "install_gates", "LayerLaws", "layer_laws"]


def identity(z: torch.Tensor, t=None) -> torch.Tensor:
    """F(z, t) = z: the residual function of a unit whose gates carry the whole transport."""
    return z


def to_eigen(law: Gaussian, x: torch.Tensor) -> torch.Tensor:
    """y = U^T x for samples x of shape (..., d)."""
    return x @ law.eigvecs.to(x)


def from_eigen(law: Gaussian, y: torch.Tensor) -> torch.Tensor:
    """x = U y for eigen-coordinates y of shape (..., d)."""
    return y @ law.eigvecs.to(y).T


def eigen_law(law: Gaussian, p: Gaussian) -> Gaussian:
    """A law p on the original coordinates, written in the eigen-coordinates of ``law``."""
    return p.pushforward(law.eigvecs.T, torch.zeros_like(p.mean))


def _eigen_diagonal(law: Gaussian, M: torch.Tensor) -> torch.Tensor:
    """diag(U^T M U): the per-channel factor of a matrix that is diagonal in the eigenbasis."""
    return torch.einsum("ij,ik,kj->j", law.eigvecs, M, law.eigvecs)


def closed_form_gates(law: Gaussian, sde: SDE, times: Sequence[float] | torch.Tensor, *,
                      stochastic: bool = False) -> dict[str, torch.Tensor]:
    """The gates that make every unit t_i -> t_{i+1} of the grid ``times`` the exact transport.

    Returns alpha, beta (and gamma when ``stochastic``), each of shape (L, d), in eigen-coordinates
    and in the law's dtype: the PF-ODE map for deterministic units, the reverse-SDE kernel for
    stochastic ones.
    """
    times = [float(t) for t in torch.as_tensor(times, dtype=torch.float64).flatten()]
    if len(times) < 2:
        raise ValueError("a grid needs at least two times")
    if min(times) < 0:
        raise ValueError(f"diffusion times must be >= 0, got {min(times)}")
    out: dict[str, list[torch.Tensor]] = {"alpha": [], "beta": []}
    if stochastic:
        out["gamma"] = []
    for t_now, t_next in zip(times[:-1], times[1:], strict=True):
        if stochastic:
            if not t_next < t_now:
                raise ValueError("stochastic units run the reverse SDE: times must decrease")
            step = law.reverse_kernel(sde, t_next, t_now)
            out["gamma"].append(_eigen_diagonal(law, step.cov).clamp(min=0).sqrt())
        else:
            step = law.pf_ode_map(sde, t_now, t_next)
        out["alpha"].append(_eigen_diagonal(law, step.A) - 1.0)
        out["beta"].append(to_eigen(law, step.c))
    return {name: torch.stack(values) for name, values in out.items()}


class DenoisingCoefficients:
    """a(t), b(t) (and g(t)) with v(y, t) = a(t) y + b(t) the denoising field in eigen-coordinates.

    v is minus the drift of the reverse SDE (``stochastic``) or of the PF-ODE, with the exact score
    of ``law``; it is affine in x, so a(t)_j = u_j . (v(u_j, t) - v(0, t)) for the eigenvectors
    u_j and b(t) = U^T v(0, t).  The noise coefficient is g(t) in every channel.  ``gain``,
    ``bias`` and ``noise`` take a 0-d time tensor and return a (d,) tensor, as
    ``GatedResidualStack`` expects; values are memoised by time, since the stacks of a nested
    depth ladder share their grid points.
    """

    def __init__(self, law: Gaussian, sde: SDE, *, stochastic: bool = False):
        self.law, self.sde, self.stochastic = law, sde, stochastic
        self.field = sde.reverse(lambda x, t: law.score(x, t, sde),
                                 probability_flow=not stochastic).denoising_field
        self._cache: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _values(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = float(t)
        if key not in self._cache:
            law = self.law
            t = torch.as_tensor(key, dtype=law.mean.dtype)
            points = torch.cat([torch.zeros_like(law.mean).unsqueeze(0), law.eigvecs.T])
            v = self.field(points, t)
            self._cache[key] = (((v[1:] - v[0]) @ law.eigvecs).diagonal(), to_eigen(law, v[0]),
                                self.sde.diffusion_coef(t).expand(law.dim).clone())
        return self._cache[key]

    def gain(self, t) -> torch.Tensor:
        return self._values(t)[0]

    def bias(self, t) -> torch.Tensor:
        return self._values(t)[1]

    def noise(self, t) -> torch.Tensor:
        return self._values(t)[2]

    def stack(self, depth: int, *, schedule: str = "rdm", span: tuple[float, float],
              dtype: torch.dtype = torch.float64, device=None) -> GatedResidualStack:
        """The stack with F(z) = z whose gates start at the Euler step of the denoising field
        (Euler-Maruyama of the reverse SDE when ``stochastic``), scaled by ``schedule``."""
        return GatedResidualStack(identity, depth, schedule=schedule, span=span, gain=self.gain,
                                  bias=self.bias, noise=self.noise if self.stochastic else None,
                                  dtype=dtype, device=device)


def eigen_stack(law: Gaussian, sde: SDE, depth: int, *, schedule: str = "rdm",
                stochastic: bool = False, span: tuple[float, float],
                dtype: torch.dtype = torch.float64, device=None) -> GatedResidualStack:
    """``DenoisingCoefficients(law, sde, stochastic=...).stack(depth, ...)``."""
    return DenoisingCoefficients(law, sde, stochastic=stochastic).stack(
        depth, schedule=schedule, span=span, dtype=dtype, device=device)


def install_gates(stack: GatedResidualStack, gates: dict[str, torch.Tensor]) -> bool:
    """Copy ``gates`` into a stack whose schedule has learnable gates; returns whether it did.

    A schedule with fixed gates (euler, plain, inv-sqrt) keeps its own: that is the point of the
    negative controls.
    """
    if not stack.schedule.learnable:
        return False
    with torch.no_grad():
        for name, param in stack.gates().items():
            param.copy_(gates[name].to(param))
    return True


@dataclass(frozen=True)
class LayerLaws:
    """The exact laws of a stack's layers beside the laws they should equal.

    ``means`` (L + 1, d) and ``covs`` (L + 1, d, d): Law(z_i), i = 0..L, as propagated (inf or
    NaN where the stack diverges); ``exact_means`` and ``exact_covs``: the laws the ``layers``
    (an index or a slice of 0..L) are compared with.  The errors are those of the compared layers.
    """

    means: torch.Tensor
    covs: torch.Tensor
    exact_means: torch.Tensor
    exact_covs: torch.Tensor
    layers: int | slice

    @property
    def proper(self) -> bool:
        """Whether every layer's law is a proper Gaussian: finite moments and a positive definite
        covariance (gates that are not ODE-consistent, such as ``plain``, blow the law up or
        lose its positivity to rounding)."""
        if not (torch.isfinite(self.means).all() and torch.isfinite(self.covs).all()):
            return False
        symmetric = 0.5 * (self.covs + self.covs.mT)
        return bool((torch.linalg.eigh(symmetric).eigenvalues.amin(-1) > 0).all())

    @property
    def mean_error(self) -> torch.Tensor:
        """|m_i - m*_i| of the compared layers."""
        return (self.means[self.layers] - self.exact_means).norm(dim=-1)

    @property
    def cov_error(self) -> torch.Tensor:
        """|S_i - S*_i|_F of the compared layers."""
        return torch.linalg.matrix_norm(self.covs[self.layers] - self.exact_covs)

    @property
    def w2(self) -> torch.Tensor:
        """W2(N(m_i, S_i), N(m*_i, S*_i)) of the compared layers (NaN where not finite)."""
        return gaussian_w2_moments(self.means[self.layers], self.covs[self.layers],
                                   self.exact_means, self.exact_covs)


def layer_laws(stack: GatedResidualStack, law_in: Gaussian, exact_means: torch.Tensor,
               exact_covs: torch.Tensor, *, layers: int | slice = slice(None)) -> LayerLaws:
    """Law(z_i), i = 0..L, of a stack whose units are affine, started from z_0 ~ ``law_in``,
    against the exact laws ``exact_means``, ``exact_covs`` of its ``layers``.

    Unit i is z -> A_i z + c_i + gamma_i xi, so Law(z_{i+1}) is the Gaussian pushforward of
    Law(z_i) (``GatedResidualStack.propagate_moments``): propagated exactly, in the stack's dtype
    and device, and compared in ``law_in``'s.
    """
    with torch.no_grad():
        means, covs = stack.propagate_moments(law_in.mean.to(stack.times),
                                              law_in.cov.to(stack.times))
    return LayerLaws(means.to(law_in.mean), covs.to(law_in.mean), exact_means, exact_covs, layers)
