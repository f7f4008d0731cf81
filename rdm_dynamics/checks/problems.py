"""The problems several checks share, each built in one place.

Smooth-in-depth problem (C1, C5, C6): a residual F(z, tau) = slope z + tanh(W(tau) z + c(tau))
with weights smooth in depth (``analysis.fields.SmoothTanhField``, three Fourier modes), per-channel
gate coefficients a(tau) = 1 + 0.5 sin(2 pi tau + phase), b(tau) = 0.5 sin(2 pi tau + phase') and
initial points z_0 ~ N(0, I), drawn in float64 on the CPU from the check's random stream.

Denoising problem (C2, C3): the test laws and the denoising stack.  A denoising stack runs on the
diffusion times t_i = T - i h, h = (T - eps) / L, with the residual function
F = ``sde.reverse(score, probability_flow).denoising_field`` (minus the reverse drift, the velocity
in the direction of travel), so its gates are positive:

    PF-ODE units:      z_{i+1} = z_i + alpha_i [-(f z_i - g^2 s(z_i, t_i) / 2)]
    reverse-SDE units: z_{i+1} = z_i + alpha_i [-(f z_i - g^2 s(z_i, t_i))] + gamma_i xi_i

with alpha_i = h and gamma_i = g(t_i) sqrt(h) under Euler (and initial rdm) gates.  The negative
controls enter through ``score_scale`` (a wrong sign, or a PF-ODE without its 1/2) and
``noise_power`` (gamma_i = g(t_i) h^noise_power instead of h^(1/2)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..analysis.fields import SmoothCoefficient, SmoothTanhField
from ..laws import DiffusedScore, Gaussian, GaussianMixture
from ..sde import EPS, SDE, SDES
from ..stack import GatedResidualStack
from . import CheckConfig

#: The linear part of F in C5 and C6: F = 0.5 z + tanh(W z + c) is expansive, so plain residual
#: stacks amplify perturbations geometrically.
EXPANSIVE_SLOPE = 0.5


@dataclass
class SmoothProblem:
    """The smooth-in-depth problem, in float64 on the CPU; ``generator`` continues its stream."""

    field: SmoothTanhField
    gain: SmoothCoefficient
    bias: SmoothCoefficient
    z0: torch.Tensor
    generator: torch.Generator

    @property
    def dim(self) -> int:
        return self.field.dim


def pathwise_error(states: torch.Tensor, reference: torch.Tensor) -> float:
    """max over layers and samples of the Euclidean distance between two trajectories (C1, C2)."""
    return float((states - reference).norm(dim=-1).amax())


def propagation_depths(depth: int, base: int = 16) -> list[int]:
    """The depths of the propagation and sensitivity experiments (C5, C6): base, 2 base,
    4 base, ... below ``depth``, then ``depth`` (just ``depth`` if < 2 base)."""
    depths, L = [], base
    while L < depth:
        depths.append(L)
        L *= 2
    return depths + [depth] if depths else [depth]


def smooth_problem(config: CheckConfig, *, stream: int, scale: float,
                   slope: float = 0.0) -> SmoothProblem:
    """F, a, b and z_0 (width 16, batch 32; 8 and 8 with --quick), drawn from the config's
    ``stream`` in this order, so a check's further draws continue the same stream.
    ``scale`` sets ||W(tau)||_2 (about), ``slope`` the linear part of F."""
    g = config.generator(stream=stream)
    dim, batch = (8, 8) if config.quick else (16, 32)
    field = SmoothTanhField(dim, modes=3, scale=scale, slope=slope, generator=g)
    gain = SmoothCoefficient(dim, mean=1.0, amplitude=0.5, generator=g)
    bias = SmoothCoefficient(dim, mean=0.0, amplitude=0.5, generator=g)
    z0 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return SmoothProblem(field, gain, bias, z0, g)

#: The SDE families of both checks (every SDE of ``sde.SDES``), and how the summaries name them.
SDE_NAMES = tuple(SDES)
NAMES = {"vp": "VP", "subvp": "sub-VP", "ve": "VE"}
#: The data laws of both checks (``data_laws``), in the order they are drawn.
LAW_NAMES = ("gaussian", "mixture")


def measured_sdes(metrics) -> list[str]:
    """The SDEs a denoising check measured, in the order it measured them: those with an
    output-law metric (``output_law_metrics``)."""
    return [name for key in metrics for name in SDE_NAMES if key == f"output_energy_{name}"]


def data_laws(config: CheckConfig, generator) -> dict[str, Gaussian | GaussianMixture]:
    """The data laws of the checks, drawn in float64 on the CPU from ``generator``.

    ``gaussian``: N(mu, Sigma) in R^4 (R^3 when quick), eigenvalues of Sigma in [0.25, 2];
    ``mixture``: 4 components on a ring of radius 2 in R^2 (neighbours 2.8 apart), component
    covariance eigenvalues in [0.3, 0.8] (standard deviations 0.55..0.9): clearly multimodal,
    yet no sample of p_T starts so close to a separatrix between modes that its Euler error is
    still pre-asymptotic at L = 16.  (With eigenvalues in [0.1, 0.5] some samples need
    L >~ 256 before their error falls at order 1: the constant of the O(h) bound grows with the
    flow's Lipschitz constant, which is large near separatrices.)
    """
    dim = 3 if config.quick else 4
    gaussian = Gaussian.random(dim, eigen_range=(0.25, 2.0), generator=generator)
    mixture = GaussianMixture.random(4, 2, radius=2.0, eigen_range=(0.3, 0.8),
                                     generator=generator)
    return dict(zip(LAW_NAMES, (gaussian, mixture), strict=True))


def score_fn(law, sde: SDE, scale: float = 1.0) -> DiffusedScore:
    """(x, t) -> scale * grad log p_t(x), the exact score of the diffused law (scale 1), which a
    stack tabulates on its grid (``laws.DiffusedScore``)."""
    return DiffusedScore(law, sde, scale)


def denoising_stack(sde: SDE, law, depth: int, config: CheckConfig, *, schedule: str | None = None,
                    probability_flow: bool, score_scale: float = 1.0,
                    noise_power: float = 0.5) -> GatedResidualStack:
    """The depth-L stack on [eps, T] whose units are Euler(-Maruyama) steps of the PF-ODE
    (``probability_flow``) or of the reverse SDE of ``sde`` for data ``law``.

    ``schedule`` defaults to the config's; reverse-SDE units get the noise coefficient
    c(t) = g(t) h^(noise_power - 1/2), so that gamma_i = sqrt(h) c(t_i) = g(t_i) h^noise_power
    under Euler gates (noise_power 1/2 is Euler-Maruyama).
    """
    reverse = sde.reverse(score_fn(law, sde, score_scale), probability_flow=probability_flow)
    noise = None
    if not probability_flow:
        h = (sde.T - EPS) / depth
        factor = h ** (noise_power - 0.5)

        def noise(t):
            return factor * sde.diffusion_coef(t)

    return GatedResidualStack(reverse.denoising_field, depth,
                              schedule=config.schedule if schedule is None else schedule,
                              span=(sde.T, EPS), noise=noise, **config.placement)


def sample_prior(law, sde: SDE, n: int, generator, config: CheckConfig) -> torch.Tensor:
    """n exact samples of p_T (the diffused data law at t = T, not the N(0, s^2 I) prior that
    stands in for it), drawn on the CPU and moved to the config's device, in float64: the
    references start from them as they are, the stack under test from a copy in config.dtype."""
    x = law.marginal(sde, sde.T).sample(n, generator=generator)
    return x.to(**config.reference_placement)


def reference_config(config: CheckConfig) -> CheckConfig:
    """The configuration the references run with: float64 and Euler gates, whatever the dtype
    and schedule of the stack under test (the theory is checked against exact references)."""
    return dataclasses.replace(config, dtype=torch.float64, schedule="euler")


# ------------------------------------------------------------------------------------------------
# Independent references for the denoising checks (C2, C3): no score, no laws.py marginal code
# ------------------------------------------------------------------------------------------------

#: Tolerances of the law references in float64 (all exact up to rounding):
#: the relative Fokker-Planck residual (derivatives by autograd), and the log-density and score
#: errors against torch.distributions with quadrature coefficients.
FOKKER_PLANCK_TOL = 1e-9
LAW_TOL = 1e-9
#: Family-wise false-alarm rate of the two-sample tests of a check's output law.
OUTPUT_FALSE_ALARM = 1e-3
#: Samples of the output-law comparison (by --quick), cut into OUTPUT_BLOCKS blocks for the
#: energy distance's block U-statistic.
OUTPUT_SAMPLES = {False: 1200, True: 600}
OUTPUT_BLOCKS = 12


def law_reference_metrics(laws: dict, sde: SDE, generator, *, times: int = 4,
                          points: int = 32) -> dict[str, float]:
    """Hold the code under test (``laws``' log-densities and scores of p_t) against references
    that use only the SDE's f, g and the data parameters (``analysis.law_references``), at
    ``times`` log-uniform random times in [eps, T] and ``points`` exact samples of p_t each:

    ``law_density_error_<sde>``: max |log p_t(x) - reference| (torch.distributions, quadrature);
    ``law_score_error_<sde>``: max relative |s(x, t) - grad log p_t(x)| (autograd of the reference);
    ``fokker_planck_residual_<sde>``: max relative residual of the Fokker-Planck equation of
    ``laws``' own log-density (autograd in x, difference in t, f and g only).
    """
    import math

    from ..analysis.law_references import (
        fokker_planck_residual,
        independent_log_density,
        transition_samples,
    )

    u = torch.rand(times, generator=generator, dtype=torch.float64)
    ts = [EPS * math.exp(float(x) * math.log(sde.T / EPS)) for x in u]
    density = score = fp = 0.0
    for law in laws.values():
        law = law.to(dtype=torch.float64, device="cpu")
        for t in ts:
            x = transition_samples(law, sde, t, points, generator)
            ref = independent_log_density(law, sde, x, t)
            density = max(density, float((law.marginal_log_prob(x, t, sde) - ref).abs().max()
                                         / (1.0 + ref.abs().max())))
            xr = x.clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(independent_log_density(law, sde, xr, t).sum(), xr)
            score = max(score, float(((law.score(x, t, sde) - grad).norm(dim=-1)
                                      / (1.0 + grad.norm(dim=-1))).max()))
            fp = max(fp, float(fokker_planck_residual(
                lambda y, tt, law=law: law.marginal_log_prob(y, tt, sde), sde, x, t).max()))
    name = sde.name
    return {f"law_density_error_{name}": _nan_as_inf(density),
            f"law_score_error_{name}": _nan_as_inf(score),
            f"fokker_planck_residual_{name}": _nan_as_inf(fp)}


def _nan_as_inf(x: float) -> float:
    return x if x == x else float("inf")


def law_reference_rules(sdes) -> list:
    """The pass rules of :func:`law_reference_metrics`."""
    from .rules import Rule

    out = []
    for s in sdes:
        out += [Rule(f"law_density_error_{s}", (0.0, LAW_TOL)),
                Rule(f"law_score_error_{s}", (0.0, LAW_TOL)),
                Rule(f"fokker_planck_residual_{s}", (0.0, FOKKER_PLANCK_TOL))]
    return out


def output_law_metrics(run_stack, law: GaussianMixture, sde: SDE, generator, n: int,
                       config: CheckConfig) -> dict[str, float]:
    """Compare the law of a stack's output with p_eps, for mixture data, by references that
    involve no score: x_T and the p_eps samples are pushed from data samples through the SDE's
    exact transition (``law_references.transition_samples``).  ``run_stack(x_T)`` returns the
    outputs (float64).

    ``output_energy_<sde>`` (with ``_se``): the energy distance (block U-statistic over
    ``OUTPUT_BLOCKS`` blocks, ``two_sample.energy_distance``) between n outputs and n exact
    samples of p_eps, 0 in law;
    ``output_share_z_<sde>``: the largest |z| of the components' mean posterior responsibilities
    over the outputs against the mixture weights (exact under p_eps).
    """
    from ..analysis.law_references import component_share_z, transition_samples
    from ..analysis.two_sample import energy_distance

    law = law.to(dtype=torch.float64, device="cpu")
    x_T = transition_samples(law, sde, sde.T, n, generator)
    out = run_stack(x_T.to(**config.reference_placement)).to("cpu", torch.float64)
    exact = transition_samples(law, sde, EPS, n, generator)
    finite = bool(torch.isfinite(out).all())
    energy, se = (energy_distance(out, exact, block=n // OUTPUT_BLOCKS) if finite
                  else (float("inf"), float("nan")))
    share = float(component_share_z(law, sde, out, EPS).abs().max()) if finite else float("inf")
    name = sde.name
    return {f"output_energy_{name}": energy, f"output_energy_{name}_se": se,
            f"output_share_z_{name}": _nan_as_inf(share)}


def output_law_bounds(sdes, components: int) -> dict[str, float]:
    """The critical values of the tests of :func:`output_law_metrics` for mixture data with
    ``components`` components, at family-wise false-alarm rate ``OUTPUT_FALSE_ALARM`` over the
    SDEs (Bonferroni): ``output_energy_k``, the one-sided Student-t quantile of the energy
    distance in standard errors (``OUTPUT_BLOCKS`` blocks), and ``output_share_z_bound``, the
    two-sided normal quantile of every component share."""
    from scipy.stats import norm
    from scipy.stats import t as student

    alpha = OUTPUT_FALSE_ALARM / (2 * len(sdes))
    return {"output_energy_k": float(student.isf(alpha, OUTPUT_BLOCKS - 1)),
            "output_share_z_bound": float(norm.isf(alpha / (2 * components)))}


def output_law_rules(metrics, sdes) -> list:
    """The rules of :func:`output_law_metrics`, with the critical values of
    :func:`output_law_bounds` (in ``metrics``): the energy distance at most ``output_energy_k``
    standard errors above 0, every component share within ``output_share_z_bound``."""
    from .rules import Rule

    out = []
    for s in sdes:
        out += [Rule(f"output_energy_{s}", (0.0, 0.0), margin=-metrics["output_energy_k"]),
                Rule(f"output_share_z_{s}", (0.0, metrics["output_share_z_bound"]))]
    return out
