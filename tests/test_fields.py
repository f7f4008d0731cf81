"""Random residual functions: certified Lipschitz bounds, smoothness in depth."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from rdm_dynamics.analysis.fields import SmoothTanhField, fourier_basis, iid_tanh_layers


@given(d=st.integers(1, 8), seed=st.integers(0, 10_000), t=st.floats(0, 1))
def test_lipschitz_bound_holds(d, seed, t):
    g = torch.Generator().manual_seed(seed)
    field = SmoothTanhField(d, scale=2.0, generator=g)
    x = torch.randn(64, d, generator=g, dtype=torch.float64)
    y = x + 0.1 * torch.randn(64, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lhs = (field(x, t) - field(y, t)).norm(dim=1)
        assert (lhs <= field.lipschitz(t) * (x - y).norm(dim=1) * (1 + 1e-12)).all()
        # the bound is the spectral norm: attained by the top singular vector at the origin
        W, _ = field.weights(t)
        assert torch.isclose(field.lipschitz(t), torch.linalg.svdvals(W)[0])


def test_fourier_basis_and_smoothness():
    t = torch.tensor(0.3, dtype=torch.float64)
    phi = fourier_basis(t, 5)
    assert phi.shape == (5,) and phi[0] == 1
    g = torch.Generator().manual_seed(0)
    field = SmoothTanhField(4, generator=g)
    W0, _ = field.weights(0.3)
    W1, _ = field.weights(0.3 + 1e-6)
    assert (W1 - W0).abs().max() < 1e-4  # smooth in depth


def test_iid_layers_are_not_smooth_in_depth():
    g = torch.Generator().manual_seed(0)
    field = SmoothTanhField(6, generator=g)
    layers = iid_tanh_layers(field, 64, generator=g)
    jumps = torch.stack([(b.W - a.W).norm() for a, b in zip(layers[:-1], layers[1:], strict=True)])
    assert len(layers) == 64 and jumps.min() > 0.3
