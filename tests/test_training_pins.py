"""Pins of the training side that no theory check runs (issue 10): the objective's targets, every
sampler's one step against the exact reverse kernel of Gaussian data, classifier-free guidance
with a network whose outputs differ by label, and time-conditioned rdm gates that ignore the
label.  Each is held against its definition written out here, independently of the code.

Distributional pins use n = 200_000 draws of one step from one fixed x_t and z-scores of the
sample moments (stats.moment_z_scores, exact Gaussian moment variances) with a Bonferroni bound
at family-wise false-alarm rate 1e-4 per test.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from rdm_dynamics.laws import Gaussian
from rdm_dynamics.models import build_model
from rdm_dynamics.models.gates import RDMGate
from rdm_dynamics.sde import VESDE, VPSDE, SubVPSDE
from rdm_dynamics.stats import empirical_moments, moment_z_scores
from rdm_dynamics.training.diffusion import (
    DiffusionObjective,
    ScoreModel,
    ddpm_ancestral,
    euler_maruyama,
    pf_ode,
)

F64 = torch.float64
N_DRAWS = 200_000
FALSE_ALARM = 1e-4


def vp_coefficients(t: float, b0: float = 0.1, b1: float = 20.0) -> tuple[float, float]:
    """a(t) = exp(-t^2 (b1 - b0) / 4 - t b0 / 2) and s(t) = sqrt(1 - a^2), written out."""
    a = math.exp(-t * t * (b1 - b0) / 4 - t * b0 / 2)
    return a, math.sqrt(1 - a * a)


# ------------------------------------------------------------------------------------------------
# The objective's targets
# ------------------------------------------------------------------------------------------------

def test_eps_and_v_targets_are_their_definitions():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=F64)
    a = torch.tensor([vp_coefficients(float(s))[0] for s in t], dtype=F64)[:, None]
    s = torch.tensor([vp_coefficients(float(s))[1] for s in t], dtype=F64)[:, None]
    eps_obj, v_obj = DiffusionObjective(prediction="eps"), DiffusionObjective(prediction="v")
    torch.testing.assert_close(eps_obj.perturb(x0, t, noise), a * x0 + s * noise)
    torch.testing.assert_close(eps_obj.target(x0, t, noise), noise)
    torch.testing.assert_close(v_obj.target(x0, t, noise), a * noise - s * x0)
    # v = d x_t / d phi with x_t = cos(phi) x0 + sin(phi) eps (VP: a = cos phi, s = sin phi)
    phi = torch.atan2(s, a)
    torch.testing.assert_close(v_obj.target(x0, t, noise),
                               -torch.sin(phi) * x0 + torch.cos(phi) * noise)


class Oracle(torch.nn.Module):
    """For the point-mass data law at c, the exact eps = (x_t - a c) / s or v = a eps - s c."""

    def __init__(self, c: torch.Tensor, prediction: str):
        super().__init__()
        self.c, self.prediction, self.sde = c, prediction, VPSDE()

    def forward(self, x, t, y=None):
        a = self.sde.mean_coef(t)[:, None]
        s = self.sde.marginal_std(t)[:, None]
        eps = (x - a * self.c) / s
        return eps if self.prediction == "eps" else a * eps - s * self.c


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_exact_predictor_has_zero_loss_and_the_exact_score(prediction):
    """Data at one point c: the exact predictor's loss is 0, and ScoreModel turns its output
    into the exact score of p_t = N(a c, s^2 I), -(x - a c) / s^2."""
    c = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    objective = DiffusionObjective(prediction=prediction)
    net = Oracle(c, prediction)
    x0 = c.expand(64, 3)
    loss = objective.loss(net, x0, None, generator=torch.Generator().manual_seed(1))
    assert float(loss) < 1e-20
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for t in (0.05, 0.5, 0.95):
        a, s = vp_coefficients(t)
        score = ScoreModel(net, VPSDE(), prediction)(x, t)
        torch.testing.assert_close(score, -(x - a * c) / s**2)


# ------------------------------------------------------------------------------------------------
# One sampler step against the exact reverse kernel of Gaussian data
# ------------------------------------------------------------------------------------------------

def gaussian_law() -> Gaussian:
    g = torch.Generator().manual_seed(3)
    return Gaussian.random(3, eigen_range=(0.3, 1.5), generator=g)


def one_step(sampler, law, sde, t: float, s: float, x: torch.Tensor, **kwargs) -> torch.Tensor:
    times = torch.tensor([t, s], dtype=F64)
    return sampler(lambda z, tt: law.score(z, tt, sde), x, times, sde=sde, disable=True,
                   **kwargs)


def assert_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """Sample moments of ``samples`` are those of N(mean, cov) within the Bonferroni bound."""
    m, S = empirical_moments(samples)
    z = moment_z_scores(m, S, samples.shape[0], mean, cov)
    bound = norm.isf(FALSE_ALARM / (2 * z.numel()))
    assert float(z.abs().max()) < bound, (z, bound)


def posterior_given_x0_variance(sde, s: float, t: float) -> float:
    """v_s k^2 / v_t with k^2 = v_t - r^2 v_s, r = m(t) / m(s): the variance of x_s given x_t
    and x_0, written from the marginal coefficients."""
    ts, tt = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
    r = float(sde.mean_coef(tt) / sde.mean_coef(ts))
    v_s, v_t = float(sde.marginal_var(ts)), float(sde.marginal_var(tt))
    return v_s * (v_t - r * r * v_s) / v_t


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_ddpm_step_has_the_exact_kernel_mean_and_the_ancestral_variance(sde):
    """For Gaussian data and the exact score, one DDPM ancestral step t -> s from a fixed x_t
    draws from N(exact reverse-kernel mean, v_s k^2 / v_t I): the mean is the exact
    E[x_s | x_t] (laws.Gaussian.reverse_kernel), the variance the posterior given x_0."""
    law, (t, s) = gaussian_law(), (0.5, 0.45)
    x_t = law.marginal(sde, t).sample(1, torch.Generator().manual_seed(4))
    out = one_step(ddpm_ancestral, law, sde, t, s, x_t.expand(N_DRAWS, 3),
                   generator=torch.Generator().manual_seed(5))
    kernel = law.reverse_kernel(sde, s, t)
    var = posterior_given_x0_variance(sde, s, t)
    assert_moments(out, kernel(x_t)[0], var * torch.eye(3, dtype=F64))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_euler_maruyama_step_is_the_reverse_kernel_to_first_order(sde):
    """One Euler-Maruyama step of size dt from a fixed x_t: mean x + (g^2 s - f x) dt and
    covariance g^2 dt I (its definition), both within O(dt^2) resp. O(dt) of the exact reverse
    kernel; n draws resolve the noise scale (a noise g dt or g without sqrt(dt) fails)."""
    law, t, dt = gaussian_law(), 0.5, 1e-3
    x_t = law.marginal(sde, t).sample(1, torch.Generator().manual_seed(6))
    out = one_step(euler_maruyama, law, sde, t, t - dt, x_t.expand(N_DRAWS, 3),
                   generator=torch.Generator().manual_seed(7))
    tt = torch.tensor(t, dtype=F64)
    f, g = float(sde.drift_coef(tt)), float(sde.diffusion_coef(tt))
    mean = x_t[0] + (g * g * law.score(x_t, t, sde)[0] - f * x_t[0]) * dt
    assert_moments(out, mean, g * g * dt * torch.eye(3, dtype=F64))
    kernel = law.reverse_kernel(sde, t - dt, t)
    assert float((kernel(x_t)[0] - mean).norm()) < 50 * dt**2 * (1 + float(x_t.norm()))
    assert float((kernel.cov - g * g * dt * torch.eye(3, dtype=F64)).norm()) < 50 * dt**2 * g**2


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_pf_ode_step_is_the_exact_flow_and_carries_p_t_to_p_s(sde):
    """The PF-ODE sampler from t to s is the exact Gaussian flow map (laws.Gaussian.pf_ode_map,
    closed form) at tight tolerances, so it carries samples of p_t to the moments of p_s."""
    law, (t, s) = gaussian_law(), (0.6, 0.3)
    x_t = law.marginal(sde, t).sample(20_000, torch.Generator().manual_seed(8))
    out = one_step(pf_ode, law, sde, t, s, x_t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, law.pf_ode_map(sde, t, s)(x_t), rtol=1e-6, atol=1e-6)
    p_s = law.marginal(sde, s)
    assert_moments(out, p_s.mean, p_s.cov)


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance and label-free time gates
# ------------------------------------------------------------------------------------------------

class LabelNet(torch.nn.Module):
    """out(x, t, y) = x * 0 + table[y] + t: outputs that differ by label (null label K)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(9)
        self.table = torch.randn(num_classes + 1, dim, generator=g, dtype=F64)
        self.config = {"num_classes": num_classes}

    def forward(self, x, t, y):
        return 0 * x + self.table[y] + t[:, None]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, 4.0])
def test_classifier_free_guidance_mixes_conditional_and_null_outputs(prediction, w):
    """eps = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)), on v before its inversion
    (eps is affine in v with label-free coefficients), for a network whose outputs differ by
    label."""
    K, dim = 4, 3
    net, sde = LabelNet(K, dim), VPSDE()
    y = torch.tensor([0, 1, 2, 3, 1])
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(10), dtype=F64)
    t = 0.4
    tb = torch.full((5,), t, dtype=F64)
    cond, null = net(x, tb, y), net(x, tb, torch.full_like(y, K))
    guided = null + w * (cond - null)
    if prediction == "v":
        a, s = vp_coefficients(t)
        guided = (s * x + a * guided) / (a * a + s * s)
    eps = ScoreModel(net, sde, prediction, y=y, guidance=w).eps(x, t)
    torch.testing.assert_close(eps, guided)
    assert not torch.allclose(cond, null)  # the labels matter, so the pin has teeth


@pytest.mark.parametrize("name", ["RDM-DiT-T/2", "RDM-UNet-T"])
def test_time_conditioned_rdm_gates_depend_on_time_not_on_the_label(name, monkeypatch):
    """The gates used in the forward pass (recorded from RDMGate.gates) change with the
    diffusion time and not with the label, while the model's output does change with the
    label."""
    torch.manual_seed(0)
    dims = {"RDM-DiT-T/2": {"depth": 2, "width": 32, "heads": 2},
            "RDM-UNet-T": {"width": 16, "heads": 2}}[name]
    model = build_model(name, gate="rdm", rdm_time_conditioned=True, num_classes=10, **dims)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    seen = []
    original = RDMGate.gates

    def recording(self, z, e):
        alpha, beta = original(self, z, e)
        seen.append((alpha.detach().clone(), beta.detach().clone()))
        return alpha, beta

    monkeypatch.setattr(RDMGate, "gates", recording)
    x = torch.randn((2, *model.sample_shape), generator=g)

    def gates_and_output(t, y):
        seen.clear()
        with torch.no_grad():
            out = model(x, torch.full((2,), t), torch.full((2,), y))
        return list(seen), out

    base, out = gates_and_output(0.3, 1)
    other_label, out_label = gates_and_output(0.3, 7)
    other_time, _ = gates_and_output(0.8, 1)
    assert base and len(base) == len(other_label)
    for (a0, b0), (a1, b1) in zip(base, other_label, strict=True):
        assert torch.equal(a0, a1) and torch.equal(b0, b1)
    assert any(not torch.allclose(a0, a2) for (a0, _), (a2, _) in zip(base, other_time,
                                                                     strict=True))
    assert not torch.allclose(out, out_label)
