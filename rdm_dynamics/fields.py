"""Random residual functions and gate coefficients for the theory checks.

``SmoothTanhField`` is F(z, tau) = tanh(W(tau) z + c(tau)) whose weights are smooth in the depth
time tau: W(tau) = sum_k phi_k(tau) W_k with the Fourier basis phi = (1, sin 2 pi tau,
cos 2 pi tau, sin 4 pi tau, ...).  Since |tanh'| <= 1, F(., tau) is Lipschitz with constant at
most the spectral norm ||W(tau)||_2, computed exactly by an SVD (a certified upper bound, never a
power-iteration estimate from below).

``iid_tanh_layers`` builds the control of Sander et al. (2022): the weights of layer i are
W(tau_i) plus an i.i.d. Gaussian perturbation, so they are not samples of a smooth function of
depth, and the 1/L-scaled stack does not converge to the ODE with weights W(tau).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["fourier_basis", "SmoothTanhField", "TanhLayer", "iid_tanh_layers",
           "SmoothCoefficient"]


def fourier_basis(t: torch.Tensor, modes: int) -> torch.Tensor:
    """phi_0..phi_{modes-1}(t) = 1, sin 2 pi t, cos 2 pi t, sin 4 pi t, ...; shape (modes,)."""
    out = [torch.ones_like(t)]
    for k in range(1, modes):
        freq = 2 * math.pi * ((k + 1) // 2)
        out.append(torch.sin(freq * t) if k % 2 else torch.cos(freq * t))
    return torch.stack(out)


class SmoothTanhField(nn.Module):
    """F(z, tau) = tanh(W(tau) z + c(tau)), weights smooth in tau.

    W_k has i.i.d. N(0, scale^2 / (d modes)) entries, so ||W(tau)||_2 is of order ``scale``.
    """

    def __init__(self, dim: int, *, modes: int = 3, scale: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.dim, self.modes = dim, modes
        std = scale / math.sqrt(dim * modes)
        self.W = nn.Parameter(std * torch.randn(modes, dim, dim, generator=generator, dtype=dtype))
        self.c = nn.Parameter(torch.randn(modes, dim, generator=generator, dtype=dtype)
                              / math.sqrt(modes))

    def weights(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """W(t) (d, d) and c(t) (d,)."""
        phi = fourier_basis(torch.as_tensor(t, dtype=self.W.dtype, device=self.W.device),
                            self.modes)
        return torch.einsum("k,kij->ij", phi, self.W), phi @ self.c

    def forward(self, z: torch.Tensor, t) -> torch.Tensor:
        W, c = self.weights(t)
        return torch.tanh(z @ W.T + c)

    def lipschitz(self, t) -> torch.Tensor:
        """Certified Lipschitz constant of z -> F(z, t): the exact spectral norm of W(t)."""
        return torch.linalg.matrix_norm(self.weights(t)[0], ord=2)


class TanhLayer(nn.Module):
    """F(z) = tanh(W z + c) with fixed weights (the time argument is ignored)."""

    def __init__(self, W: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.W, self.c = nn.Parameter(W), nn.Parameter(c)

    def forward(self, z: torch.Tensor, t=None) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + self.c)

    def lipschitz(self, t=None) -> torch.Tensor:
        return torch.linalg.matrix_norm(self.W, ord=2)


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
            layers.append(TanhLayer(W + dW.to(W.device), c + dc.to(W.device)))
    return layers


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
