"""The depth limit of a residual stack whose weights are drawn i.i.d. across depth (C7).

The stack.  z_{i+1} = z_i + alpha_L F_i(z_i), F_i(z) = tanh(W_i z + b_i), with (W_i, b_i) drawn
independently at every layer i (and independently of the input z_0): W_i has i.i.d.
N(0, s_w^2 / d) entries, b_i i.i.d. N(0, s_b^2) entries (:class:`TanhWeightLaw`).

The diffusion coefficient.  Given z, the pre-activation u = W z + b is Gaussian with independent
coordinates u_j = sum_k W_jk z_k + b_j ~ N(0, q), q(z) = s_w^2 |z|^2 / d + s_b^2 (distinct rows of
W and distinct b_j are independent).  Hence, with xi ~ N(0, 1),

    E[F(z)] = 0                       (tanh is odd and the law of (W, b) is symmetric),
    E[F_j F_k] = E tanh(u_j) E tanh(u_k) = 0  (j != k),
    E[F_j^2] = K(q) := E tanh^2(sqrt(q) xi),

so Sigma(z) = E[F F^T] = kappa(|z|) I with kappa(r) = K(s_w^2 r^2 / d + s_b^2), a one-dimensional
Gaussian integral (:func:`tanh_square_mean`).  With alpha_L = 1/sqrt(L) one unit moves z by a
mean-zero increment of covariance Sigma(z) / L, and z_L converges in law to z(1) of the Ito SDE
dz = Sigma(z)^{1/2} dB = sqrt(kappa(|z|)) dB (proofs/C7_iid-depth-limit.md).

Quadrature. K is computed by a composite Gauss-Legendre rule on x in [-10, 10] (200 panels of 8
nodes, Gaussian weight folded in; the mass beyond |x| = 10 is 1.5e-23). Gauss-Hermite is not used:
tanh(sqrt(q) x) has poles at x = i pi / (2 sqrt(q)), which approach the real axis as q grows, and
64-node Gauss-Hermite is off by 3e-9 at q = 1 and 1e-4 at q = 4 (the composite rule: below 1e-13 up
to q = 64, tested against scipy's adaptive quad; beyond, K = 1 - E sech^2(sqrt(q) xi) is integrated
in y = sqrt(q) x, where sech^2 has a fixed width). The SDE solver evaluates K at every step for
every sample, so :class:`KappaTable` tabulates K and dK/ds on a grid of s = sqrt(q) and
interpolates by cubic Hermite polynomials (error below 1e-8), falling back to the quadrature itself
beyond the grid.

Coupled weight draws. To measure a weak error of order 1e-3 between the stack and the SDE, both are
driven by one Brownian path per sample (common random numbers). :meth:`TanhWeightLaw.draw_coupled`
draws (W_i, b_i) from their exact law *conditioned on* the standardised pre-activation at the
current state, xi_i = (W_i z_i + b_i) / sqrt(q(z_i)), being the Brownian increment of that layer
(normalised): with G = W sqrt(d) / s_w and g = b / s_b standard normal, xi = cos(t) G e + sin(t) g
(e = z / |z|, tan t = s_b sqrt(d) / (s_w |z|)) is a standard normal linear function of (G, g), and
(G, g) = (G', g') + (xi - xi') (cos(t) e^T, sin(t)) with (G', g') fresh and xi' their own
combination is an exact draw of (G, g) given xi. Since xi_i ~ N(0, I) is independent of the past,
so is (W_i, b_i): the weights are i.i.d. across depth and independent of z_0, exactly as in the
uncoupled stack, and the law of z_L is the same (tested). Only the joint law with the reference
path is chosen, which no expectation of z_L alone can see.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchsde

from ..noise import numpy_rng
from ..solvers import GridBrownian
from ..stack import GatedResidualStack
from .fields import tanh_residual

__all__ = ["TanhWeightLaw", "tanh_square_mean", "tanh_square_mean_slope", "KappaTable",
           "kappa_table", "IIDLimitSDE", "brownian_increments", "layer_noise",
           "iid_stack_output", "solve_limit_sde"]

# ------------------------------------------------------------------------------------------------
# kappa by quadrature
# ------------------------------------------------------------------------------------------------

_PANELS, _NODES, _X_MAX = 200, 8, 10.0


def _composite_rule(x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the composite Gauss-Legendre rule for int_{-x_max}^{x_max} dx."""
    gx, gw = np.polynomial.legendre.leggauss(_NODES)
    edges = np.linspace(-x_max, x_max, _PANELS + 1)
    half = 0.5 * (edges[1] - edges[0])
    return (0.5 * (edges[1:] + edges[:-1])[:, None] + half * gx).ravel(), np.tile(half * gw,
                                                                                  _PANELS)


_RULE_X, _dx = _composite_rule(_X_MAX)
_RULE_W = _dx * np.exp(-0.5 * _RULE_X**2) / math.sqrt(2 * math.pi)  # for E phi(xi)


#: Beyond s = sqrt(q) = 8 the integrand varies on the scale 1/s, finer than the rule's panels:
#: there K = 1 - E sech^2(s xi) = 1 - (1/s) int sech^2(y) phi(y / s) dy, integrated in y.
_WIDE = 8.0
_Y_MAX = 40.0  # sech^2(40) = 7e-35


_Y, _DY = _composite_rule(_Y_MAX)


def _sech_square_mean_wide(s: np.ndarray) -> np.ndarray:
    y, w = _Y, _DY
    sech2 = 1.0 / np.cosh(y) ** 2
    phi = np.exp(-0.5 * (y / s[..., None]) ** 2) / math.sqrt(2 * math.pi)
    return (sech2 * phi) @ w / s


def tanh_square_mean(variance) -> np.ndarray:
    """K(q) = E tanh^2(sqrt(q) xi), xi ~ N(0, 1), for q >= 0 (array in, array out)."""
    s = np.sqrt(np.asarray(variance, dtype=np.float64))
    narrow = np.minimum(s, _WIDE)
    out = (np.tanh(narrow[..., None] * _RULE_X) ** 2) @ _RULE_W
    wide = s > _WIDE
    if np.any(wide):
        out = np.where(wide, 1.0 - _sech_square_mean_wide(np.maximum(s, _WIDE)), out)
    return out


def tanh_square_mean_slope(std) -> np.ndarray:
    """dK/ds at s = sqrt(q): E[2 tanh(s xi) sech^2(s xi) xi]."""
    s = np.asarray(std, dtype=np.float64)[..., None]
    t = np.tanh(s * _RULE_X)
    return (2 * t * (1 - t**2) * _RULE_X) @ _RULE_W


class KappaTable:
    """K(q) for tensors, by cubic Hermite interpolation in s = sqrt(q) on [0, s_max] (spacing
    ``step``), with the quadrature itself beyond s_max; float64 on ``device``."""

    def __init__(self, s_max: float = 8.0, step: float = 0.01, device=None):
        self.step, self.s_max = float(step), float(s_max)
        s = np.arange(0.0, s_max + step / 2, step)
        self.values = torch.as_tensor(tanh_square_mean(s**2), device=device)
        self.slopes = torch.as_tensor(tanh_square_mean_slope(s), device=device) * step

    def __call__(self, variance: torch.Tensor) -> torch.Tensor:
        """K(variance), elementwise; NaN where the variance is NaN (a diverged state is
        measured as such, not turned into an index error)."""
        s = variance.clamp(min=0).sqrt()
        pos = (s / self.step).clamp(max=len(self.values) - 1 - 1e-9).nan_to_num(nan=0.0)
        i = pos.floor().long()
        t = pos - i
        t2, t3 = t * t, t * t * t
        out = ((2 * t3 - 3 * t2 + 1) * self.values[i] + (t3 - 2 * t2 + t) * self.slopes[i]
               + (3 * t2 - 2 * t3) * self.values[i + 1] + (t3 - t2) * self.slopes[i + 1])
        beyond = s > self.s_max
        if bool(beyond.any()):
            exact = tanh_square_mean(variance[beyond].detach().cpu().numpy())
            out = out.clone()
            out[beyond] = torch.as_tensor(exact, dtype=out.dtype, device=out.device)
        return torch.where(variance.isnan(), variance, out)


@functools.lru_cache(maxsize=4)
def kappa_table(device: str = "cpu") -> KappaTable:
    """The default :class:`KappaTable` on ``device``, built once per process."""
    return KappaTable(device=device)


# ------------------------------------------------------------------------------------------------
# The weights and the stack
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TanhWeightLaw:
    """W ~ N(0, weight_std^2 / dim) entries, b ~ N(0, bias_std^2) entries, in R^dim."""

    dim: int
    weight_std: float
    bias_std: float

    def preactivation_variance(self, sq_norm: torch.Tensor) -> torch.Tensor:
        """q = s_w^2 |z|^2 / d + s_b^2, the variance of each coordinate of W z + b given z."""
        return self.weight_std**2 * sq_norm / self.dim + self.bias_std**2

    def kappa(self, radius) -> np.ndarray:
        """kappa(r) = K(q(r)) by quadrature (numpy)."""
        r = np.asarray(radius, dtype=np.float64)
        return tanh_square_mean(self.weight_std**2 * r**2 / self.dim + self.bias_std**2)

    def _standard(self, n: int, generator, dtype, device):
        rng = numpy_rng(generator)
        G = torch.from_numpy(rng.standard_normal((n, self.dim, self.dim)))
        g = torch.from_numpy(rng.standard_normal((n, self.dim)))
        return G.to(dtype=dtype, device=device), g.to(dtype=dtype, device=device)

    def draw(self, n: int, generator=None, dtype=torch.float64, device=None):
        """n independent draws: W (n, d, d), b (n, d) (``generator``: torch or numpy)."""
        G, g = self._standard(n, generator, dtype, device)
        return self.weight_std / math.sqrt(self.dim) * G, self.bias_std * g

    def draw_coupled(self, z: torch.Tensor, xi: torch.Tensor, generator=None):
        """One draw of (W, b) per row of z (n, d), from the law conditioned on
        (W z + b) / sqrt(q(z)) = xi (n, d) (module docstring).  For xi ~ N(0, I) independent of
        z, the draws have the unconditional law and are independent of z."""
        G, g = self._standard(z.shape[0], generator, z.dtype, z.device)
        r = z.norm(dim=-1, keepdim=True)
        scale_w = self.weight_std * r / math.sqrt(self.dim)
        total = torch.sqrt(scale_w**2 + self.bias_std**2)
        cos, sin = scale_w / total, self.bias_std / total
        e = z / torch.where(r > 0, r, torch.ones_like(r))
        own = cos * (G @ e.unsqueeze(-1)).squeeze(-1) + sin * g
        gap = xi - own
        G = G + (cos * gap).unsqueeze(-1) * e.unsqueeze(-2)
        g = g + sin * gap
        return self.weight_std / math.sqrt(self.dim) * G, self.bias_std * g


class _SampledTanhUnit:
    """F_i(z) = tanh(W_i z + b_i) with one weight draw per sample, drawn when the unit is reached
    (coupled to ``xi`` when given); ``shared`` reuses the first draw at every layer (a fault)."""

    def __init__(self, law: TanhWeightLaw, xi, generator, shared: dict | None = None):
        self.law, self.xi, self.generator, self.shared = law, xi, generator, shared

    def __call__(self, z: torch.Tensor, t=None) -> torch.Tensor:
        if self.shared is not None and "W" in self.shared:
            W, b = self.shared["W"], self.shared["b"]
        elif self.xi is not None:
            W, b = self.law.draw_coupled(z, self.xi, self.generator)
        else:
            W, b = self.law.draw(z.shape[0], self.generator, z.dtype, z.device)
        if self.shared is not None:
            self.shared.update(W=W, b=b)
        return tanh_residual(z.unsqueeze(-2), W, b).squeeze(-2)


def iid_stack_output(law: TanhWeightLaw, z0: torch.Tensor, depth: int, schedule: str, *,
                     xi: torch.Tensor | None = None, generator=None,
                     weights: str = "iid") -> torch.Tensor:
    """z_L of the depth-L stack z_{i+1} = z_i + alpha_i tanh(W_i z_i + b_i), one weight sequence
    per row of z0 (n, d), run by :class:`~rdm_dynamics.stack.GatedResidualStack` with the gate
    schedule ``schedule`` (``inv-sqrt``: alpha = 1/sqrt(L); ``euler``: 1/L; ``plain``: 1).

    ``xi`` (L, n, d): the standard normal layer noises the draws are coupled to (None: fresh
    draws).  ``weights="shared"`` draws one (W, b) per sample and uses it at every layer (the
    negative control of the i.i.d. assumption)."""
    if weights not in ("iid", "shared"):
        raise ValueError(f"weights must be 'iid' or 'shared', got {weights!r}")
    if xi is not None and xi.shape != (depth, *z0.shape):
        raise ValueError(f"xi must have shape {(depth, *z0.shape)}, got {tuple(xi.shape)}")
    shared = {} if weights == "shared" else None
    rng = numpy_rng(generator)
    units = [_SampledTanhUnit(law, None if xi is None else xi[i], rng, shared)
             for i in range(depth)]
    stack = GatedResidualStack(units, depth, schedule=schedule, dtype=z0.dtype, device=z0.device)
    with torch.no_grad():
        return stack(z0)


# ------------------------------------------------------------------------------------------------
# Brownian paths and the limit SDE (torchsde)
# ------------------------------------------------------------------------------------------------

def brownian_increments(n: int, dim: int, steps: int, generator=None,
                        dtype=torch.float64, device=None) -> torch.Tensor:
    """Increments of n independent d-dimensional Brownian paths on the grid of ``steps`` uniform
    steps of [0, 1]: (steps, n, d), i.i.d. N(0, 1/steps)."""
    dB = torch.from_numpy(numpy_rng(generator).standard_normal((steps, n, dim)))
    return (dB / math.sqrt(steps)).to(dtype=dtype, device=device)


def layer_noise(increments: torch.Tensor, depth: int) -> torch.Tensor:
    """The normalised increments of the same paths on the coarser grid of ``depth`` steps,
    xi_i = (B(t_{i+1}) - B(t_i)) sqrt(depth): (depth, n, d), i.i.d. N(0, I).  ``depth`` must
    divide the number of fine steps."""
    steps = increments.shape[0]
    if steps % depth:
        raise ValueError(f"depth {depth} does not divide the {steps} fine steps")
    return increments.reshape(depth, steps // depth, *increments.shape[1:]).sum(1) \
        * math.sqrt(depth)


class IIDLimitSDE(torch.nn.Module):
    """dz = sigma(|z|^2) dB (Ito, diagonal noise, no drift) in torchsde's form; by default
    sigma = sqrt(kappa) with kappa of ``law`` (:class:`KappaTable`)."""

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(self, law: TanhWeightLaw,
                 diffusion: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 table: KappaTable | None = None):
        super().__init__()
        table = table or kappa_table()
        self.diffusion = diffusion or (
            lambda sq_norm: table(law.preactivation_variance(sq_norm)).sqrt())

    def f(self, t, y):
        return torch.zeros_like(y)

    def g(self, t, y):
        return self.diffusion((y * y).sum(-1, keepdim=True)).expand_as(y)


def solve_limit_sde(sde: IIDLimitSDE, z0: torch.Tensor, increments: torch.Tensor,
                    steps: int) -> torch.Tensor:
    """z(1) by torchsde's Euler-Maruyama with ``steps`` uniform steps on the Brownian paths whose
    fine increments are given ((M, n, d), ``steps`` dividing M)."""
    fine = increments.shape[0]
    if fine % steps:
        raise ValueError(f"{steps} steps do not divide the {fine} fine steps")
    coarse = increments.reshape(steps, fine // steps, *increments.shape[1:]).sum(1)
    ts = torch.tensor([0.0, 1.0], dtype=z0.dtype, device=z0.device)
    with torch.no_grad():
        return torchsde.sdeint(sde, z0, ts, bm=GridBrownian(coarse, 1.0), method="euler",
                               dt=1.0 / steps)[-1]
