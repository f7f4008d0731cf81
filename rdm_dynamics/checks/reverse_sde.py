"""C3 `reverse-sde`: the stack with stochastic units is Euler-Maruyama for the reverse SDE.

Setting: for VP, sub-VP and VE, a depth-L stack on t_i = T - i h, h = (T - eps) / L,
eps = 1e-3, residual F(z, t) = -(f(t) z - g(t)^2 s(z, t)) with the exact score, the config's gates
(alpha_i = h, gamma_i = g(t_i) sqrt(h) for euler/rdm) and xi_i the normalised increments of one
Brownian path per sample, refined dyadically so that every rung of the ladder sees the same path.
Inputs are exact samples of p_T.

Claim: strong order 1 (the noise is additive), weak order 1, and every layer's law within O(h)
of p_{t_i}.  Every order is gated fitted on the ladder, end to end (``_span``: the deepest error
below the coarsest by the factor the order implies) and between the two deepest rungs
(``_deep``; ``rules.order_rules``).

* Strong error (Gaussian and mixture data): RMS over samples of |z_L - x_ref(eps)|, the
  reference being Euler-Maruyama on the same path with ``REFERENCE_REFINEMENT`` x --depth steps.
* Weak error (Gaussian data): |E z_L - m_eps| + |Cov z_L - Sigma_eps|_F.  Every unit is affine,
  so the law of every layer is Gaussian and is propagated exactly (``gaussian_gates.layer_laws``):
  no Monte-Carlo noise in the fit.  For VE the coefficient of h in the weak error is
  log(sigma_max / sigma_min) (sigma(eps)^2 - lambda^2 / sigma(T)^2 + ...) per eigenvalue lambda
  of the data covariance, about 1e-3 (proof C3, section 4), so the ladder sees the h^2 term:
  for VE "weak error O(h)" is an order of at least one.
* Layer consistency (Gaussian data): max over layers of W2(Law(z_i), p_{t_i}), exact
  propagation.  The claim is uniform O(h), an order of at least one.  (A two-sided band would
  fail VE on the coarse rungs, where h * 2 log(sigma_max / sigma_min) ~ 1 is far from the
  asymptotic regime; the fitted order then exceeds 1 and approaches it as the ladder is refined.)
* Sampling cross-check at --depth: R x n samples through the simulated stack, driven by the same
  refined path family as the strong test (coarsest rung first, refined dyadically to --depth).
  Their moments at every layer match the propagated ones (max |z| under a Bonferroni bound at
  family-wise false-alarm rate ``FAMILY_FALSE_ALARM``); the sampled max-over-layers W2 and its
  Monte-Carlo floor (the same statistic for exact samples of p_{t_i} of the same size, drawn by
  the exact reverse kernels from the same x_T and noise) are reported with standard errors over
  R replicates, with their paired difference (the excess).

Independent of the code under test, all gated:

* The Brownian path's own law (``path_statistics``), on one path of the family at every level
  from the coarsest rung to the reference: mean, variance, lag-1 independence and a
  Kolmogorov-Smirnov test of the normalised increments, Bonferroni-combined, and coarse
  increments = sums of their fine halves.
* The fine reference against ``torchsde.sdeint(method="euler")`` on the same increments
  (``solvers.GridBrownian``) at ``REFERENCE_REFINEMENT`` x the coarsest rung's steps, mixture data.
* The output law for mixture data (``problems.output_law_metrics``): outputs at --depth from x_T
  pushed through the SDE's exact transition, against exact samples of p_eps made the same way (no
  score): energy distance and component shares against the weights.  (The law code itself is
  held against torch.distributions and the Fokker-Planck equation in C2.)

The first two run once, on the first SDE's strong-error draws.  Negative controls (``measure``'s
keyword arguments): a score of the wrong sign; noise gamma_i = g(t_i) h instead of
g(t_i) sqrt(h) (``noise_power=1``).  The references always use the true reverse SDE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..analysis.gaussian_gates import LayerLaws, layer_laws
from ..laws import Gaussian
from ..noise import BrownianPath
from ..sde import EPS, SDE, make_sde
from ..solvers import GridBrownian, TorchsdeReverse
from ..stack import GatedResidualStack, get_schedule
from ..stats import empirical_moments, fit_order, gaussian_w2_moments, mean_se, moment_z_scores
from . import CheckConfig
from .claim import Measurement
from .problems import (
    LAW_NAMES,
    NAMES,
    OUTPUT_SAMPLES,
    SDE_NAMES,
    data_laws,
    denoising_stack,
    measured_sdes,
    output_law_bounds,
    output_law_metrics,
    output_law_rules,
    reference_config,
    sample_prior,
    score_fn,
)
from .report import Series, extremes, legend_outside, order_axes, out_of_range, trend
from .rules import AT_LEAST_FIRST_ORDER, FIRST_ORDER, Rule, order_metrics, order_rules

CLAIM = "C3"
ID = "reverse-sde"
TITLE = "Denoising-Dynamics SDE: stochastic units are Euler-Maruyama (strong and weak order 1)"
THEORY = (f"strong, weak 1 +/- {FIRST_ORDER[1] - 1:.2f} (weak VE, layer W2: "
          f">= {AT_LEAST_FIRST_ORDER[0]:.2f})")
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 5.6

#: Expected weak orders: 1 where the first-order error term is generic, at least 1 for VE.
WEAK_ORDER = {"vp": FIRST_ORDER, "subvp": FIRST_ORDER, "ve": AT_LEAST_FIRST_ORDER}
REFERENCE_REFINEMENT = 16  # reference steps per step of the deepest stack
FAMILY_FALSE_ALARM = 1e-3  # of the moment cross-check, over all layers, entries and SDEs
PATH_FALSE_ALARM = 1e-3  # of the Brownian path's own statistics, over all paths and levels
PATH_KS_SAMPLES = 20_000  # normalised increments per level in the Kolmogorov-Smirnov test
PATH_REFINEMENT_TOL = 1e-12  # |W coarse - sum of its fine halves|
TORCHSDE_TOL = 1e-10  # relative agreement of the reference with torchsde's Euler-Maruyama
#: Samples of the strong test, and (n, replicates R) of the sampling cross-check, by --quick.
STRONG_SAMPLES = {False: 256, True: 64}
CROSS_CHECK_SAMPLES = {False: (500, 8), True: (250, 4)}


@dataclass
class StrongDraws:
    """The draws of one strong-error comparison: exact samples x_T of p_T (float64) and one
    Brownian path per sample, refined dyadically from the ladder's first rung."""

    x_T: torch.Tensor
    path: BrownianPath

    @classmethod
    def draw(cls, law, sde: SDE, generator, config: CheckConfig) -> StrongDraws:
        x_T = sample_prior(law, sde, STRONG_SAMPLES[config.quick], generator, config)
        return cls(x_T, BrownianPath(sde.T - EPS, x_T.shape, base_steps=config.ladder[0],
                                     generator=generator))


def path_statistics(path: BrownianPath, steps: list[int], generator) -> dict[str, float]:
    """Tests of a Brownian path's own law at every refinement level ``steps`` (ascending), each
    a p-value under "the normalised increments xi = dW / sqrt(dt) are i.i.d. N(0, 1)":
    the mean and the variance of all xi of the level (normal approximations, n in the 1e4..1e6),
    the lag-1 products xi_i xi_(i+1) along the steps (mean 0 and variance 1 under independence;
    siblings of the Levy construction included), and a Kolmogorov-Smirnov test of
    ``PATH_KS_SAMPLES`` xi drawn at random.  Also the largest |W coarse - sum of its two fine
    halves| over the levels (the path is one path).  Returns the smallest p-value times the
    number of tests (``path_bonferroni_p``, at most 1), the number of tests (``path_tests``) and
    the consistency error (``path_refinement_error``)."""
    from scipy.stats import kstest, norm  # here: scipy.stats is slow to import, and every
    # process that lists the checks (verify --ckpt, its workers) would pay for it for nothing

    p_values, consistency = [], 0.0
    previous = None
    for n_steps in steps:
        xi = path.normalised_increments(n_steps)
        x = xi.flatten()
        n = x.numel()
        lag = (xi[1:] * xi[:-1]).flatten()
        z = [float(x.mean()) * math.sqrt(n), (float(x.var()) - 1.0) / math.sqrt(2.0 / n),
             float(lag.mean()) * math.sqrt(lag.numel())]
        p_values += [2 * float(norm.sf(abs(v))) for v in z]
        pick = torch.randint(n, (min(n, PATH_KS_SAMPLES),), generator=generator)
        p_values.append(float(kstest(x[pick].cpu().numpy(), "norm").pvalue))
        increments = path.increments(n_steps)
        if previous is not None:
            pair_sums = increments[0::2] + increments[1::2]
            consistency = max(consistency, float((pair_sums - previous).abs().max()))
        previous = increments
    return {"path_bonferroni_p": min(1.0, min(p_values) * len(p_values)),
            "path_tests": len(p_values), "path_refinement_error": consistency}


def torchsde_reference_error(sde, law64, x_T: torch.Tensor, path: BrownianPath,
                             steps: int, config: CheckConfig) -> float:
    """max |reference - torchsde| / (1 + max |reference|) after ``steps`` Euler-Maruyama steps
    on the same increments: the C3 reference stack (true reverse SDE, float64) against
    ``torchsde.sdeint(method="euler")``, an independent implementation of the scheme."""
    import torchsde

    span = sde.T - EPS
    increments = path.increments(steps).to(x_T)
    stack = denoising_stack(sde, law64, steps, reference_config(config), probability_flow=False)
    ours = stack(x_T, xi=increments / math.sqrt(span / steps))
    reverse = TorchsdeReverse(sde.reverse(score_fn(law64, sde), probability_flow=False))
    grid = torch.linspace(0.0, span, steps + 1, dtype=x_T.dtype, device=x_T.device)
    theirs = torchsde.sdeint(reverse, x_T, grid[[0, -1]], method="euler", dt=span / steps,
                             bm=GridBrownian(increments, span))[-1]
    return float((ours - theirs).abs().max() / (1.0 + ours.abs().max()))


def shared_references(sde: SDE, laws: dict, generator,
                      config: CheckConfig) -> tuple[dict[str, StrongDraws], dict[str, float]]:
    """The checks of the machinery every SDE shares, once: the Brownian path's own law on the
    Gaussian's path, and the fine reference against torchsde on the mixture's, both on the strong
    draws of ``sde`` (the first SDE), which are drawn here in the stream's order and returned for
    that SDE's strong test."""
    ladder = config.ladder
    levels = [ladder[0] << k for k in range(
        (REFERENCE_REFINEMENT * ladder[-1] // ladder[0]).bit_length())]
    gaussian = StrongDraws.draw(laws["gaussian"], sde, generator, config)
    metrics = path_statistics(gaussian.path, levels, generator)
    mixture = StrongDraws.draw(laws["mixture"], sde, generator, config)
    metrics["torchsde_reference_error"] = torchsde_reference_error(
        sde, laws["mixture"].to(**config.reference_placement), mixture.x_T, mixture.path,
        REFERENCE_REFINEMENT * ladder[0], config)
    return {"gaussian": gaussian, "mixture": mixture}, metrics


def strong_error(z: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """RMS over samples of |z - reference| and its standard error (delta method on the mean of
    the squared errors)."""
    sq = (z - reference).pow(2).sum(-1)
    rms = float(sq.mean().sqrt())
    se_sq = float(sq.std()) / math.sqrt(sq.numel())
    return rms, se_sq / (2 * rms) if rms > 0 else math.nan


def strong_errors(sde: SDE, law, draws: StrongDraws, config: CheckConfig, *,
                  score_scale: float, noise_power: float) -> tuple[list[float], list[float]]:
    """Strong errors at t = eps on every rung (with their standard errors), against
    Euler-Maruyama with ``REFERENCE_REFINEMENT`` x --depth steps on the same Brownian path (the
    true reverse SDE, in float64; the rungs run in config.dtype)."""
    ladder, x_T, path = config.ladder, draws.x_T, draws.path
    law64, law_dev = law.to(**config.reference_placement), law.to(**config.placement)
    steps = REFERENCE_REFINEMENT * ladder[-1]
    reference_stack = denoising_stack(sde, law64, steps, reference_config(config),
                                      probability_flow=False)
    reference = reference_stack(x_T, xi=path.normalised_increments(steps).to(x_T))
    x_in = x_T.to(config.dtype)
    errors, ses = [], []
    for L in ladder:
        stack = denoising_stack(sde, law_dev, L, config, probability_flow=False,
                                score_scale=score_scale, noise_power=noise_power)
        z = stack(x_in, xi=path.normalised_increments(L).to(x_in))
        rms, se = strong_error(z.to(reference), reference)
        errors.append(rms)
        ses.append(se)
    return errors, ses


def propagated_errors(sde: SDE, law: Gaussian, config: CheckConfig, *, score_scale: float,
                      noise_power: float):
    """Per rung, the weak error at eps, |dm| + |dSigma|_F, and the max over layers of
    W2(Law(z_i), p_{t_i}), of the exact layer laws (z_0 ~ p_T; propagated in the stack's dtype,
    compared in float64); and the deepest rung's stack with its layer laws."""
    law64, law_dev = law.to(**config.reference_placement), law.to(**config.placement)
    p_T = law64.marginal(sde, sde.T)
    weak, layer = [], []
    for L in config.ladder:  # ends at --depth: stack and laws are the deepest rung's
        stack = denoising_stack(sde, law_dev, L, config, probability_flow=False,
                                score_scale=score_scale, noise_power=noise_power)
        laws = layer_laws(stack, p_T, *law64.marginal_moments(sde, stack.times))
        weak.append(float(laws.mean_error[-1] + laws.cov_error[-1]))
        layer.append(float(laws.w2.amax()))
    return weak, layer, stack, laws


def sampled_statistics(stack: GatedResidualStack, laws: LayerLaws, law: Gaussian, sde: SDE,
                       generator, config: CheckConfig) -> tuple[float, int, dict]:
    """Simulate the stack with R x n samples (``CROSS_CHECK_SAMPLES``) and compare with the
    exact moments.

    Returns the max |z| of every layer's sample moments (all samples pooled) against the
    propagated ``laws`` of that stack, the number of z-scores, and a dict name ->
    (mean, standard error over the replicates) of: the weak error at eps
    (``weak_error_sampled``), the max-over-layers W2 of the empirical Gaussians to p_{t_i}
    (``layer_w2_max_sampled``), its Monte-Carlo floor (``layer_w2_floor``: the same statistic
    for n exact samples of each p_{t_i}, drawn by the exact reverse kernels from the same x_T
    and the same noise, so the two are coupled like the layers of the stack), and the paired
    difference of the two (``layer_w2_excess``).
    """
    n, replicates = CROSS_CHECK_SAMPLES[config.quick]
    exact_means, exact_covs = laws.exact_means, laws.exact_covs
    depth, d = stack.depth, law.dim
    total = n * replicates
    x_T = sample_prior(law, sde, total, generator, config)  # float64
    # the refined path family of the strong test: coarsest rung first, refined to --depth
    path = BrownianPath(sde.T - EPS, x_T.shape, base_steps=config.ladder[0], generator=generator)
    xi = path.normalised_increments(depth).to(x_T)
    states = stack(x_T.to(config.dtype), xi=xi.to(config.dtype), return_all=True).to(x_T)
    pooled_mean, pooled_cov = empirical_moments(states)
    z = moment_z_scores(pooled_mean, pooled_cov, total, laws.means, laws.covs)

    groups = states.reshape(depth + 1, replicates, n, d)
    rep_mean, rep_cov = empirical_moments(groups)
    w2 = gaussian_w2_moments(rep_mean, rep_cov, exact_means[:, None], exact_covs[:, None])
    weak = ((rep_mean[-1] - exact_means[-1]).norm(dim=-1)
            + torch.linalg.matrix_norm(rep_cov[-1] - exact_covs[-1]))
    law64 = law.to(**config.reference_placement)
    exact = law64.reverse_chain(sde, stack.times.to(x_T), x_T, xi)
    exact = exact.reshape(depth + 1, replicates, n, d)
    floor = gaussian_w2_moments(*empirical_moments(exact), exact_means[:, None],
                                exact_covs[:, None])

    z_max = float(z.abs().amax()) if torch.isfinite(z).all() else math.inf
    sampled_max, floor_max = w2.amax(0), floor.amax(0)
    per_replicate = {"weak_error_sampled": weak, "layer_w2_max_sampled": sampled_max,
                     "layer_w2_floor": floor_max, "layer_w2_excess": sampled_max - floor_max}
    estimates = {name: mean_se(x) for name, x in per_replicate.items()}
    return z_max, z.numel(), estimates


def mixture_output_metrics(sde: SDE, mixture, generator, config: CheckConfig, *,
                           score_scale: float, noise_power: float) -> dict[str, float]:
    """The law of the --depth stack's outputs for mixture data against p_eps
    (``problems.output_law_metrics``), each output driven by a path of the refined family."""
    mixture_dev, depth = mixture.to(**config.placement), config.ladder[-1]

    def run_stack(x_T):
        stack = denoising_stack(sde, mixture_dev, depth, config, probability_flow=False,
                                score_scale=score_scale, noise_power=noise_power)
        path = BrownianPath(sde.T - EPS, x_T.shape, base_steps=config.ladder[0],
                            generator=generator)
        xi = path.normalised_increments(depth).to(x_T)
        return stack(x_T.to(config.dtype), xi=xi.to(config.dtype)).to(torch.float64)

    return output_law_metrics(run_stack, mixture, sde, generator, OUTPUT_SAMPLES[config.quick],
                              config)


def order_families(metrics, sdes) -> dict[str, list[float]]:
    """The fitted orders of each claim (strong, weak, layer W2) over the SDEs measured."""
    return {"strong_order": [metrics[f"strong_order_{s}_{law}"] for s in sdes
                             for law in LAW_NAMES],
            "weak_order": [metrics[f"weak_order_{s}"] for s in sdes],
            "layer_w2_order": [metrics[f"layer_w2_order_{s}"] for s in sdes]}


def sde_metrics(sde: SDE, laws: dict, draws: dict[str, StrongDraws], generator,
                config: CheckConfig, controls: dict, curves: dict) -> tuple[dict, float, int]:
    """The metrics of one SDE: strong errors and orders (both laws, on ``draws``), weak and
    layer-W2 errors and orders (Gaussian data), the sampling cross-check and the mixture's
    output law.  Fills ``curves`` (per-rung errors) and returns the metrics with the largest
    moment |z| and the number of z-scores."""
    name, ladder, metrics = sde.name, config.ladder, {}
    for law_name, law_draws in draws.items():
        key = f"{name}_{law_name}"
        errors, ses = strong_errors(sde, laws[law_name], law_draws, config, **controls)
        curves["strong"][f"{name}, {law_name}"] = errors
        metrics.update({f"strong_error_{key}": errors[-1], f"strong_error_{key}_se": ses[-1],
                        **order_metrics(f"strong_order_{key}", ladder, errors, error_ses=ses)})
    weak, layer, stack, deepest = propagated_errors(sde, laws["gaussian"], config, **controls)
    curves["weak"][name], curves["layer"][name] = weak, layer
    metrics.update({f"weak_error_{name}": weak[-1], f"layer_w2_max_{name}": layer[-1]})
    for family, errors in (("weak_order", weak), ("layer_w2_order", layer)):
        metrics.update(order_metrics(f"{family}_{name}", ladder, errors,
                                     deep=f"{family}_deep_{name}", span=f"{family}_span_{name}"))
    z_max, z_count, estimates = sampled_statistics(stack, deepest, laws["gaussian"], sde,
                                                   generator, config)
    for key, (value, se) in estimates.items():
        metrics[f"{key}_{name}"], metrics[f"{key}_{name}_se"] = value, se
    metrics.update(mixture_output_metrics(sde, laws["mixture"], generator, config, **controls))
    return metrics, z_max, z_count


def measure(config: CheckConfig, *, score_sign: float = 1.0, noise_power: float = 0.5,
            sdes: tuple[str, ...] = SDE_NAMES) -> Measurement:
    """C3 with residual F = -(f z - g^2 (score_sign s)), noise gamma_i = g(t_i) h^noise_power:
    the true reverse SDE is score_sign = 1, noise_power = 1/2, anything else a negative control.
    ``sdes`` restricts the SDEs (for fast tests and controls)."""
    from scipy.stats import norm

    controls = {"score_scale": score_sign, "noise_power": noise_power}
    g = config.generator(stream=3)
    laws = data_laws(config, g)
    metrics = {"eps": EPS, "reference_steps": REFERENCE_REFINEMENT * config.ladder[-1]}
    curves: dict[str, dict] = {"strong": {}, "weak": {}, "layer": {}}
    z_max, z_count = 0.0, 0
    with torch.no_grad():
        # the stream's first draws: the first SDE's strong draws, the path tests between them
        first, references = shared_references(make_sde(sdes[0]), laws, g, config)
        for sde_name in sdes:
            sde = make_sde(sde_name)
            draws = first if sde_name == sdes[0] else {  # the first SDE's were drawn above
                law_name: StrongDraws.draw(law, sde, g, config) for law_name, law in laws.items()}
            sde_part, sde_z_max, count = sde_metrics(sde, laws, draws, g, config, controls, curves)
            metrics.update(sde_part)
            z_max, z_count = max(z_max, sde_z_max), z_count + count
    metrics["moment_z_max"] = z_max
    metrics["moment_z_bound"] = float(norm.isf(FAMILY_FALSE_ALARM / (2 * z_count)))
    metrics.update(references)
    metrics.update(output_law_bounds(sdes, len(laws["mixture"].weights)))
    for family, values in order_families(metrics, sdes).items():
        metrics[f"{family}_min"], metrics[f"{family}_max"] = extremes(values)
    return Measurement(metrics, config, curves=curves)


def rules(measured: Measurement) -> list[Rule]:
    """Per SDE measured: strong order 1 for every law, weak order (1, or at least 1 for VE) and
    uniform layer-W2 order at least 1, each fitted, end to end and between the two deepest rungs
    (``rules.order_rules``); the sampled moments within the Bonferroni bound of the propagated
    ones; the output law; the Brownian path's own law and the reference against torchsde."""
    m = measured.metrics
    sdes, out = measured_sdes(m), []
    for s in sdes:
        for law in LAW_NAMES:
            out += order_rules(f"strong_order_{s}_{law}", FIRST_ORDER)
        for family, band in (("weak_order", WEAK_ORDER[s]),
                             ("layer_w2_order", AT_LEAST_FIRST_ORDER)):
            out += order_rules(f"{family}_{s}", band, deep=f"{family}_deep_{s}",
                               span=f"{family}_span_{s}")
    return out + [Rule("moment_z_max", (0.0, m["moment_z_bound"])),
                  *output_law_rules(m, sdes),
                  Rule("path_bonferroni_p", (PATH_FALSE_ALARM, None)),
                  Rule("path_refinement_error", (0.0, PATH_REFINEMENT_TOL)),
                  Rule("torchsde_reference_error", (0.0, TORCHSDE_TOL))]


def summary(measured: Measurement, verdict) -> str:
    m, sdes = measured.metrics, measured_sdes(measured.metrics)
    families = order_families(m, sdes)
    weak_text = ", ".join(f"{m[f'weak_order_{s}']:.3f} ({NAMES[s]})" for s in sdes)
    moments_match = "moment_z_max" not in verdict.failed
    return (
        f"With {get_schedule(measured.config.schedule).name} gates the stochastic stack "
        f"(eps = {EPS:g}): the strong error at eps "
        f"{trend(families['strong_order'])} (orders {m['strong_order_min']:.3f}.."
        f"{m['strong_order_max']:.3f}; {', '.join(NAMES[s] for s in sdes)}; Gaussian and "
        f"mixture data); the weak error {trend(families['weak_order'])} (orders {weak_text}); "
        f"the max-over-layers W2 to p_t {trend(families['layer_w2_order'])} (orders "
        f"{m['layer_w2_order_min']:.3f}..{m['layer_w2_order_max']:.3f}); sampled "
        f"moments {'match' if moments_match else 'do not match'} the propagated ones (max |z| "
        f"{m['moment_z_max']:.2f}, bound {m['moment_z_bound']:.2f})"
        + out_of_range(verdict))


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"strong {m['strong_order_min']:.2f}..{m['strong_order_max']:.2f}"
            f", weak {m['weak_order_min']:.2f}..{m['weak_order_max']:.2f}"
            f", layer W2 {m['layer_w2_order_min']:.2f}..{m['layer_w2_order_max']:.2f}")


def figure(measured: Measurement):
    """Three panels against depth: the strong error at eps, the weak error and the largest layer
    W2 (exact moments), each with its fitted order."""
    schedule, ladder = get_schedule(measured.config.schedule).name, measured.config.ladder
    strong, weak, layer = ([Series(label, ladder, errors, fit_order(ladder, errors))
                            for label, errors in measured.curves[kind].items()]
                           for kind in ("strong", "weak", "layer"))

    def draw(fig):
        import numpy as np
        from matplotlib.ticker import NullFormatter

        fig.set_size_inches(7.5, 9.0)
        panels = ((f"C3 reverse-sde ({schedule} gates): strong error at eps", strong,
                   "RMS |z_L - x(eps)|"),
                  ("weak error (exact moments)", weak, "|dm| + |dS|_F"),
                  ("layers: max_i W2(z_i, p_t_i)", layer, "max_i W2"))
        for k, (title, series, ylabel) in enumerate(panels):
            ax = fig.add_subplot(3, 1, k + 1)
            order_axes(ax, title, series, ylabel=ylabel, xlabel="depth L" if k == 2 else "",
                       legend=False)
            ve = [s for s in series if s.label.startswith("ve")] if k == 1 else []
            if ve and ve[0].errors[-1] > 0:  # VE's weak order is 2 (proof step 4): say so
                d = np.asarray(ve[0].depths, dtype=float)
                ax.loglog(d, 0.5 * ve[0].errors[-1] * (d / d[-1]) ** -2.0, "k:", lw=1,
                          label="reference slope -2 (VE: its first-order\nweak term is ~0, "
                                "proof step 4)")
                ax.set_xticks(d, [f"{x:g}" for x in d])  # loglog reset them
                ax.xaxis.set_minor_formatter(NullFormatter())
            legend_outside(ax, fontsize=7)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.title.set_fontsize(9)

    return draw
