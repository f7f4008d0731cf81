"""Random residual functions and gate coefficients for the theory checks.

``SmoothTanhField`` is F(z, tau) = tanh(W(tau) z + c(tau)) whose weights are smooth in the depth
time tau: W(tau) = sum_k phi_k(tau) W_k with the Fourier basis phi = (1, sin 2 pi tau,
cos 2 pi tau, sin 4 pi tau, ...).  Since |tanh'| <= 1, F(., tau) is Lipschitz with constant at
most the spectral norm ||W(tau)||_2, computed exactly by an SVD (a certified upper bound, never a
power-iteration estimate from below).  ``lipschitz_bound`` returns it as a certified
:class:`~rdm_dynamics.lipschitz.LipschitzBound`.

With ``slope = s`` the field is F(z, tau) = s z + tanh(W(tau) z + c(tau)), Lipschitz with constant
at most |s| + ||W(tau)||_2; for s > ||W(tau)||_2 it is expansive (strongly monotone:
(F(x) - F(y)) . (x - y) >= (s - ||W||_2) |x - y|^2), the setting in which plain residual stacks
amplify perturbations geometrically (C5, C6).  ``frozen_layers`` turns the field into one
``TanhLayer`` per unit with the weights W(tau_i), c(tau_i) stored, so a stack can be cast to low
precision weight by weight; ``TanhLayer.rounding_bound`` bounds its rounding error.

``iid_tanh_layers`` builds the control of Sander et al. (2022): the weights of layer i are
W(tau_i) plus an i.i.d. Gaussian perturbation, so they are not samples of a smooth function of
depth, and the 1/L-scaled stack does not converge to the ODE with weights W(tau).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lipschitz import LipschitzBound
from .rounding import RoundingModel, tanh_layer_error_bound

__all__ = ["fourier_basis", "tanh_residual", "SmoothTanhField", "TanhLayer", "iid_tanh_layers",
           "frozen_layers", "SmoothCoefficient"]


def fourier_basis(t: torch.Tensor, modes: int) -> torch.Tensor:
    """phi_0..phi_{modes-1}(t) = 1, sin 2 pi t, cos 2 pi t, sin 4 pi t, ...; shape (modes,)."""
    out = [torch.ones_like(t)]
    for k in range(1, modes):
        freq = 2 * math.pi * ((k + 1) // 2)
        out.append(torch.sin(freq * t) if k % 2 else torch.cos(freq * t))
    return torch.stack(out)


def tanh_residual(z: torch.Tensor, W: torch.Tensor, c: torch.Tensor,
                  slope: float = 0.0) -> torch.Tensor:
    """slope z + tanh(W z + c) for z (..., B, d), W (..., d, d), c (..., d), batched on ``...``."""
    out = torch.tanh(z @ W.mT + c.unsqueeze(-2))
    return slope * z + out if slope else out


class SmoothTanhField(nn.Module):
    """F(z, tau) = slope z + tanh(W(tau) z + c(tau)), weights smooth in tau (slope 0 by default).

    W_k has i.i.d. N(0, scale^2 / (d modes)) entries, so ||W(tau)||_2 is of order ``scale``.
    """

    def __init__(self, dim: int, *, modes: int = 3, scale: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                 slope: float = 0.0):
        super().__init__()
        self.dim, self.modes, self.slope = dim, modes, float(slope)
        std = scale / math.sqrt(dim * modes)
        self.W = nn.Parameter(std * torch.randn(modes, dim, dim, generator=generator, dtype=dtype))
        self.c = nn.Parameter(torch.randn(modes, dim, generator=generator, dtype=dtype)
                              / math.sqrt(modes))

    def weights(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """W(t) (d, d) and c(t) (d,)."""
        phi = fourier_basis(torch.as_tensor(t, dtype=self.W.dtype, device=self.W.device),
                            self.modes)
        return torch.einsum("k,kij->ij", phi, self.W), phi @ self.c

    def weights_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        """W(t) and c(t) at many times at once: shapes (n, d, d) and (n, d)."""
        times = torch.as_tensor(times, dtype=self.W.dtype, device=self.W.device).reshape(-1)
        phi = fourier_basis(times, self.modes).T  # (n, modes)
        return torch.einsum("nk,kij->nij", phi, self.W), phi @ self.c

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        W, c = self.weights(t)
        return tanh_residual(z, W, c, self.slope)

    def lipschitz(self, t) -> torch.Tensor:
        """Certified Lipschitz constant of z -> F(z, t): |slope| + the spectral norm of W(t)."""
        return torch.linalg.matrix_norm(self.weights(t)[0], ord=2) + abs(self.slope)

    def lipschitz_bound(self, t) -> LipschitzBound:
        """:meth:`lipschitz` as a certified bound (SVD spectral norm, plus |slope|)."""
        return self.lipschitz_bounds([t])[0]

    def lipschitz_bounds(self, times) -> list[LipschitzBound]:
        """Certified Lipschitz bounds at many times (one batched SVD)."""
        with torch.no_grad():
            W, _ = self.weights_at(times)
        return [b + LipschitzBound.constant(self.slope) for b in LipschitzBound.spectral_norms(W)]


class TanhLayer(nn.Module):
    """F(z) = slope z + tanh(W z + c) with fixed weights (the time argument is ignored)."""

    def __init__(self, W: torch.Tensor, c: torch.Tensor, slope: float = 0.0):
        super().__init__()
        self.W, self.c = nn.Parameter(W), nn.Parameter(c)
        self.slope = float(slope)

    def forward(self, z: torch.Tensor, t=None) -> torch.Tensor:
        return tanh_residual(z, self.W, self.c, self.slope)

    def lipschitz(self, t=None) -> torch.Tensor:
        return torch.linalg.matrix_norm(self.W, ord=2) + abs(self.slope)

    def lipschitz_bound(self, t=None) -> LipschitzBound:
        """Certified: Lip F <= |slope| + ||W||_2 (|tanh'| <= 1, triangle inequality)."""
        return LipschitzBound.spectral_norm(self.W) + LipschitzBound.constant(self.slope)

    def rounding_bound(self, x: torch.Tensor, model: RoundingModel) -> torch.Tensor:
        """Componentwise bound on |F^(x) - F(x)| when this layer (weights rounded) runs in
        ``model``'s precision on an input x representable there (see rounding.py)."""
        return tanh_layer_error_bound(self.W, self.c, self.slope, x, model)

    @staticmethod
    def evaluate_layers(layers, xs: torch.Tensor, model: RoundingModel):
        """F_i(x_i) and rounding_bound for L layers at once: xs (L, B, d) -> two (L, B, d).

        Used by rounding.stack_error_bounds; requires a common slope."""
        slope = layers[0].slope
        if any(layer.slope != slope for layer in layers):
            raise ValueError("evaluate_layers needs layers with one common slope")
        with torch.no_grad():
            W = torch.stack([layer.W for layer in layers])
            c = torch.stack([layer.c for layer in layers])
            return (tanh_residual(xs, W, c, slope),
                    tanh_layer_error_bound(W, c.unsqueeze(-2), slope, xs, model))


def iid_tanh_layers(field: SmoothTanhField, depth: int, *, noise: float = 1.0,
                    generator: torch.Generator | None = None) -> list[TanhLayer]:
    """Layers i = 0..L-1 with weights W(tau_i) + noise * Z_i, Z_i i.i.d. N(0, 1/d) entries."""
    dim = field.dim
    layers = []
    with torch.no_grad():
        for i in range(depth):
            W, c = field.weights(i / depth)
            dW = torch.randn(dim, dim, generator=generator, dtype=W.dtype) * noise / math.sqrt(dim)
            dc = torch.randn(dim, generator=generator, dtype=W.dtype) * noise
            layers.append(TanhLayer(W + dW.to(W.device), c + dc.to(W.device), field.slope))
    return layers


def frozen_layers(field: SmoothTanhField, times) -> list[TanhLayer]:
    """One TanhLayer per time t_i with the field's weights W(t_i), c(t_i) stored: the same
    residual functions as ``field`` on the grid, as separate modules (castable to any dtype)."""
    with torch.no_grad():
        W, c = field.weights_at(times)
    return [TanhLayer(W[i].clone(), c[i].clone(), field.slope) for i in range(W.shape[0])]


class SmoothCoefficient(nn.Module):
    """A per-channel coefficient smooth in t: mean + amplitude * sin(2 pi t + phase)."""

    def __init__(self, dim: int, *, mean: float, amplitude: float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.mean, self.amplitude = mean, amplitude
        self.register_buffer("phase", 2 * math.pi * torch.rand(dim, generator=generator,
                                                                dtype=dtype))

    def forward(self, t) -> torch.Tensor:
        return self.mean + self.amplitude * torch.sin(2 * math.pi * t + self.phase)
