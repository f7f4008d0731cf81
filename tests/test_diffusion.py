"""The training objective and the samplers, against exact Gaussian laws where possible."""

import pytest
import torch
from tiny_models import tiny_model

from rdm_dynamics.laws import Gaussian
from rdm_dynamics.sde import VESDE, VPSDE, SubVPSDE
from rdm_dynamics.training.diffusion import (
    DiffusionObjective,
    ScoreModel,
    ddpm_ancestral,
    euler_maruyama,
    pf_ode,
    prediction_to_eps,
    sample,
    time_grid,
    tweedie_denoise,
)
from rdm_dynamics.training.sampling import cycle_labels, generate

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = [s.name for s in SDES]


def gaussian_law(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return Gaussian(torch.randn(d, generator=g, dtype=torch.float64), A @ A.T / d + 0.1 * torch.eye(
        d, dtype=torch.float64))


def exact_score(law, sde):
    return lambda x, t: law.score(x, t, sde)


# ------------------------------------------------------------------------------------------------
# Objective
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_v_target_inverts_to_eps(sde):
    """x_t and the v target give back eps (and x_0) through prediction_to_eps, for any SDE."""
    obj = DiffusionObjective(sde, "v")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64)
    d = obj.draw(x0.shape, g, dtype=torch.float64)
    x_t = obj.perturb(x0, d.t, d.noise)
    v = obj.target(x0, d.t, d.noise)
    a = sde.mean_coef(d.t).reshape(-1, 1, 1, 1)
    s = sde.marginal_std(d.t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(prediction_to_eps("v", v, x_t, a, s), d.noise, rtol=1e-9,
                               atol=1e-9)


def test_vp_v_is_the_angular_velocity():
    """VP: a^2 + s^2 = 1 and v = d x_phi / d phi with phi = atan(s / a) (finite difference)."""
    sde = VPSDE()
    x0, eps = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    a, s = sde.mean_coef(t), sde.marginal_std(t)
    torch.testing.assert_close(a**2 + s**2, torch.tensor(1.0, dtype=torch.float64))
    phi, h = torch.atan2(s, a), 1e-6
    dx = ((torch.cos(phi + h) - torch.cos(phi - h)) * x0
          + (torch.sin(phi + h) - torch.sin(phi - h)) * eps) / (2 * h)
    torch.testing.assert_close(dx, a * eps - s * x0, rtol=1e-8, atol=1e-8)


def test_label_dropout_uses_the_null_label():
    obj = DiffusionObjective(label_dropout=1.0, num_classes=10)
    y = torch.arange(4)
    assert obj.labels(y, torch.ones(4, dtype=torch.bool)).tolist() == [10] * 4
    assert obj.labels(y, torch.zeros(4, dtype=torch.bool)).tolist() == y.tolist()
    assert DiffusionObjective(num_classes=None).labels(y, torch.ones(4, dtype=torch.bool)) is None


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(prediction):
    """Same batch, same draws: the loss after one small Adam step is lower than before."""
    torch.manual_seed(0)
    net = tiny_model(class_dropout_prob=0.0)
    obj = DiffusionObjective(prediction=prediction, num_classes=10)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 10, (16,), generator=g)
    draws = obj.draw(x0.shape, g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = obj.loss(net, x0, y, draws)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = obj.loss(net, x0, y, draws)
    assert float(after.detach()) < float(before.detach())


def test_objective_rejects_bad_settings():
    with pytest.raises(ValueError, match="prediction"):
        DiffusionObjective(prediction="x0")
    with pytest.raises(ValueError, match="t_min"):
        DiffusionObjective(t_min=0.0)


# ------------------------------------------------------------------------------------------------
# Score model and guidance
# ------------------------------------------------------------------------------------------------

def test_guidance_is_the_linear_mixture_and_score_is_minus_eps_over_std():
    torch.manual_seed(0)
    net = tiny_model().eval()
    sde = VPSDE()
    x = torch.randn(6, 1, 8, 8)
    y = torch.arange(6)
    t = torch.tensor(0.5)
    cond = ScoreModel(net, sde, y=y, guidance=1.0).eps(x, t)
    uncond = ScoreModel(net, sde, y=y, guidance=0.0).eps(x, t)
    guided = ScoreModel(net, sde, y=y, guidance=3.0).eps(x, t)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ScoreModel(net, sde, y=None).eps(x, t), uncond)
    score = ScoreModel(net, sde, y=y, guidance=3.0)(x, t)
    torch.testing.assert_close(score, -guided / sde.marginal_std(t), rtol=1e-5, atol=1e-5)


def test_tweedie_is_exact_for_gaussian_data():
    """E[x_0 | x_t] for Gaussian data is affine; Tweedie with the exact score reproduces it."""
    sde, law = VPSDE(), gaussian_law()
    t = torch.tensor(0.3, dtype=torch.float64)
    x = law.marginal(sde, t).sample(5, torch.Generator().manual_seed(0))
    m, v = sde.mean_coef(t), sde.marginal_var(t)
    cov_t = m**2 * law.cov + v * torch.eye(3, dtype=torch.float64)
    gain = m * law.cov @ torch.linalg.inv(cov_t)
    expected = law.mean + (x - m * law.mean) @ gain.T
    torch.testing.assert_close(tweedie_denoise(exact_score(law, sde), x, t, sde=sde), expected)


# ------------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_pf_ode_dopri5_follows_the_exact_flow_map(sde):
    sde_law = gaussian_law()
    score = exact_score(sde_law, sde)
    g = torch.Generator().manual_seed(0)
    x = sde_law.marginal(sde, 1.0).sample(64, g)
    times = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
    out = pf_ode(score, x, times, sde=sde, rtol=1e-9, atol=1e-9, disable=True)
    torch.testing.assert_close(out, sde_law.pf_ode_map(sde, 1.0, 1e-3)(x), rtol=1e-6, atol=1e-6)


def test_pf_ode_fixed_step_converges_at_its_order():
    """rk4 on a uniform grid: the error against the exact map falls ~16x per halving of h."""
    sde, law = VPSDE(), gaussian_law()
    x = law.marginal(sde, 1.0).sample(16, torch.Generator().manual_seed(0))
    exact = law.pf_ode_map(sde, 1.0, 0.05)(x)
    errs = [float((pf_ode(exact_score(law, sde), x, time_grid(n, t_end=0.05, dtype=torch.float64),
                          sde=sde, method="rk4", disable=True) - exact).abs().max())
            for n in (16, 32)]
    assert 10 < errs[0] / errs[1] < 24, errs


def test_ddpm_step_mean_is_the_exact_reverse_kernel_mean(monkeypatch):
    """With the exact score of Gaussian data, the ancestral step's mean is the exact mean of
    x_s | x_t (laws.Gaussian.reverse_kernel), and its variance is not larger."""
    import rdm_dynamics.training.diffusion as diffusion

    sde, law = VPSDE(), gaussian_law()
    x = law.marginal(sde, 0.6).sample(8, torch.Generator().manual_seed(0))
    times = torch.tensor([0.6, 0.4], dtype=torch.float64)
    kernel = law.reverse_kernel(sde, 0.4, 0.6)
    noises = []
    monkeypatch.setattr(diffusion, "_noise", lambda x, g: noises.append(1) or torch.zeros_like(x))
    mean = ddpm_ancestral(exact_score(law, sde), x, times, sde=sde, disable=True)
    assert noises, "the step drew no noise"
    torch.testing.assert_close(mean, kernel(x))
    r, k = sde.transition_coefs(0.4, 0.6, like=x)
    step_var = sde.marginal_var(times[1]) * k**2 / sde.marginal_var(times[0])
    assert float(step_var) <= float(torch.linalg.eigvalsh(kernel.cov).min()) + 1e-12
    # a last time of 0 makes the step deterministic: Tweedie's estimate of x_0
    last = ddpm_ancestral(exact_score(law, sde), x, torch.tensor([0.6, 0.0], dtype=torch.float64),
                          sde=sde, disable=True)
    torch.testing.assert_close(last, tweedie_denoise(exact_score(law, sde), x, 0.6, sde=sde))


def test_euler_maruyama_matches_the_exact_law_in_moments():
    """EM on 200 steps from p_T: sample mean within 5 standard errors of the exact p_eps mean
    (false alarm rate < 1e-5 per coordinate; the O(h) bias is far below the error bar)."""
    sde, law = VPSDE(), gaussian_law(d=2)
    g = torch.Generator().manual_seed(3)
    n = 4000
    x = law.marginal(sde, 1.0).sample(n, g)
    out = euler_maruyama(exact_score(law, sde), x, time_grid(200, t_end=0.05, dtype=torch.float64),
                         sde=sde, generator=g, disable=True)
    target = law.marginal(sde, 0.05)
    se = torch.sqrt(torch.diagonal(target.cov) / n)
    assert ((out.mean(0) - target.mean).abs() < 5 * se).all()
    cov = torch.cov(out.T)
    assert (cov - target.cov).abs().max() < 0.1 * target.cov.abs().max()


@pytest.mark.parametrize("sampler", ["euler-maruyama", "pf-ode", "ddpm"])
def test_samplers_return_the_right_shape_and_respect_seeds(sampler):
    torch.manual_seed(0)
    net = tiny_model(frames=3).eval()
    sde = VPSDE()
    score = ScoreModel(net, sde, y=torch.arange(4), guidance=2.0)
    kwargs = dict(sde=sde, sampler=sampler, steps=4, method="euler", disable=True)
    a = sample(score, (4, 3, 1, 8, 8), generator=torch.Generator().manual_seed(5), **kwargs)
    b = sample(score, (4, 3, 1, 8, 8), generator=torch.Generator().manual_seed(5), **kwargs)
    c = sample(score, (4, 3, 1, 8, 8), generator=torch.Generator().manual_seed(6), **kwargs)
    assert a.shape == (4, 3, 1, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_sampler_callback_and_grid():
    times = time_grid(5, t_end=0.01)
    assert times[0] == 1.0 and abs(float(times[-1]) - 0.01) < 1e-7 and len(times) == 6
    seen = []
    sde, law = VPSDE(), gaussian_law(d=2)
    x = torch.zeros(3, 2, dtype=torch.float64)
    euler_maruyama(exact_score(law, sde), x, times.double(), sde=sde, disable=True,
                   callback=lambda info: seen.append(info["i"]))
    assert seen == list(range(5))
    with pytest.raises(ValueError):
        time_grid(0)


def test_generate_samples_with_the_sde_prediction_and_t_min_it_is_given():
    """generate = ScoreModel + sample on the given SDE, prediction and last time, in batches."""
    torch.manual_seed(0)
    net, sde = tiny_model().eval(), VESDE()
    labels = cycle_labels(3, 10)
    kwargs = dict(sampler="ddpm", steps=3, disable=True)
    x = generate(net, 3, sde=sde, prediction="v", t_min=0.05, labels=labels, guidance=2.0,
                 seed=1, **kwargs)
    score = ScoreModel(net, sde, "v", y=labels, guidance=2.0)
    ref = sample(score, (3, 1, 8, 8), sde=sde, t_end=0.05,
                 generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    other = generate(net, 3, sde=sde, prediction="eps", t_min=0.05, labels=labels,
                     guidance=2.0, seed=1, **kwargs)
    assert not torch.equal(x, other)
    assert labels.tolist() == [0, 1, 2] and cycle_labels(2, 10, label=7).tolist() == [7, 7]
    assert cycle_labels(4, None) is None
