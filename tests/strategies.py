"""Hypothesis strategies for random Gaussian laws, mixtures, SDEs and times."""

import torch
from hypothesis import strategies as st

from rdm_dynamics.laws import Gaussian, GaussianMixture
from rdm_dynamics.sde import VESDE, VPSDE, SubVPSDE

sdes = st.sampled_from([VPSDE(), SubVPSDE(), VESDE()])
times = st.floats(min_value=1e-3, max_value=1.0)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def random_spd(d: int, g: torch.Generator, lo: float = 0.05, hi: float = 3.0) -> torch.Tensor:
    """A random symmetric positive definite matrix with eigenvalues in [lo, hi]."""
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = lo + (hi - lo) * torch.rand(d, generator=g, dtype=torch.float64)
    return (Q * lam) @ Q.T


@st.composite
def gaussians(draw, max_dim: int = 5):
    d = draw(st.integers(1, max_dim))
    g = torch.Generator().manual_seed(draw(seeds))
    mean = 2 * torch.randn(d, generator=g, dtype=torch.float64)
    return Gaussian(mean, random_spd(d, g))


@st.composite
def mixtures(draw, max_dim: int = 4, max_components: int = 5):
    d = draw(st.integers(1, max_dim))
    K = draw(st.integers(1, max_components))
    g = torch.Generator().manual_seed(draw(seeds))
    weights = 0.2 + torch.rand(K, generator=g, dtype=torch.float64)
    means = 3 * torch.randn(K, d, generator=g, dtype=torch.float64)
    covs = torch.stack([random_spd(d, g, 0.05, 1.0) for _ in range(K)])
    return GaussianMixture(weights, means, covs)
