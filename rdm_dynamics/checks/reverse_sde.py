"""C3 `reverse-sde`: the stack with stochastic units is Euler-Maruyama for the reverse SDE.

Setting: for VP, sub-VP and VE, a depth-L stack on t_i = T - i h, h = (T - eps) / L,
eps = 1e-3, residual F(z, t) = -(f(t) z - g(t)^2 s(z, t)) with the exact score, the config's gates
(alpha_i = h, gamma_i = g(t_i) sqrt(h) for euler/rdm) and xi_i the normalised increments of one
Brownian path per sample, refined dyadically so that every rung of the ladder sees the same path.
Inputs are exact samples of p_T.

* Strong error (Gaussian and mixture data): RMS over samples of |z_L - x_ref(eps)|, the
  reference being Euler-Maruyama on the same path with 16 x --depth steps.  Expected order 1
  (additive noise): pass 1 +/- 0.15.  Every order below is gated three ways
  (``rules.order_rules``): fitted on the ladder, end to end (``_span``: the deepest error below
  the coarsest by the factor the order implies) and between the two deepest rungs (``_deep``),
  the last two within 3 standard errors.
* Weak error (Gaussian data): |E z_L - m_eps| + |Cov z_L - Sigma_eps|_F.  Every unit is affine,
  so the law of every layer is Gaussian and is propagated exactly (``propagate_moments``): no
  Monte-Carlo noise in the fit.  Expected order 1 for VP and sub-VP (pass 1 +/- 0.15).  For VE
  the coefficient of h in the weak error is log(sigma_max / sigma_min) (sigma(eps)^2 -
  lambda^2 / sigma(T)^2 + ...) per eigenvalue lambda of the data covariance, about 1e-3
  (proof C3, section 4), so the ladder sees the h^2 term: the claim "weak error O(h)" is
  checked as order >= 0.85, and the measured order (about 2) is reported.
* Layer consistency (Gaussian data): max over layers of W2(Law(z_i), p_{t_i}), exact propagation.
  The claim is uniform O(h): pass order >= 0.85.  (A two-sided rule would fail VE on the coarse
  rungs, where h * 2 log(sigma_max / sigma_min) ~ 1 is far from the asymptotic regime; the
  fitted order then exceeds 1 and approaches it as the ladder is refined.)
* Sampling cross-check at --depth: R x n samples through the simulated stack, driven by the same
  refined path family as the strong test (coarsest rung first, refined dyadically to --depth).
  Their moments at every layer match the propagated ones (max |z| under a Bonferroni bound with
  family-wise false alarm rate 1e-3: part of the pass rule); the sampled max-over-layers W2 and
  its Monte-Carlo floor (the same statistic for exact samples of p_{t_i} of the same size, drawn
  by the exact reverse kernels from the same x_T and noise) are reported with standard errors
  over R replicates, with their paired difference (the excess).

Independent of the code under test, all gated:

* The Brownian path's own law (``path_statistics``), on one path of the family at every level
  from the coarsest rung to the reference: mean, variance, lag-1 independence and a
  Kolmogorov-Smirnov test of the normalised increments, Bonferroni-combined at false-alarm rate
  1e-3 (``path_bonferroni_p`` >= 1e-3), and coarse increments = sums of their fine halves.
* The fine reference against ``torchsde.sdeint(method="euler")`` on the same increments
  (``paths.GridBrownian``) at 16 x the coarsest rung's steps, mixture data, first SDE
  (``torchsde_reference_error`` <= 1e-10).
* The output law for mixture data (``problems.output_law_metrics``): 1200 outputs (600 quick)
  at --depth from x_T pushed through the SDE's exact transition, against exact samples of p_eps
  made the same way (no score): energy distance and component shares against the weights, at
  family-wise false-alarm rate 1e-3.  (The law code itself is held against torch.distributions
  and the Fokker-Planck equation in C2.)

``measure`` takes the negative controls as arguments (score of the wrong sign; noise
gamma_i = g(t_i) h instead of g(t_i) sqrt(h), ``noise_power=1``); ``run`` calls it with the true
values.  The references always use the true reverse SDE.
"""

from __future__ import annotations

import math

import torch

from ..laws import Gaussian
from ..paths import BrownianPath, GridBrownian, TorchsdeReverse
from ..sde import make_sde
from ..stack import get_gating
from ..stats import empirical_moments, fit_order, gaussian_w2_moments, mean_se, moment_z_scores
from . import CheckConfig
from .problems import (
    EPS,
    NAMES,
    OUTPUT_SAMPLES,
    SDE_NAMES,
    data_laws,
    denoising_stack,
    output_law_bounds,
    output_law_metrics,
    output_law_rules,
    reference_config,
    sample_prior,
    score_fn,
)
from .report import CheckResult, Series, extremes, legend_outside, order_axes, trend
from .rules import Rule, judge, order_metrics_and_rules

CLAIM = "C3"
ID = "reverse-sde"
TITLE = "Denoising-Dynamics SDE: stochastic units are Euler-Maruyama (strong and weak order 1)"
#: Serial seconds at --depth 256 on one idle core (measured 2026-12-01): a scheduling hint.
COST = 5.6

ORDER_RANGE = (0.85, 1.15)
AT_LEAST_FIRST_ORDER = (0.85, None)
#: Expected weak orders: 1 where the first-order error term is generic, at least 1 for VE.
WEAK_ORDER_RANGE = {"vp": ORDER_RANGE, "subvp": ORDER_RANGE, "ve": AT_LEAST_FIRST_ORDER}
REFERENCE_REFINEMENT = 16  # reference steps per step of the deepest stack
FAMILY_FALSE_ALARM = 1e-3  # of the moment cross-check, over all layers, entries and SDEs
PATH_FALSE_ALARM = 1e-3  # of the Brownian path's own statistics, over all paths and levels
PATH_KS_SAMPLES = 20_000  # normalised increments per level in the Kolmogorov-Smirnov test
TORCHSDE_TOL = 1e-10  # relative agreement of the reference with torchsde's Euler-Maruyama


def rules(sdes, law_names, z_bound: float, ladder, strong, weak, layer) -> tuple[dict, list]:
    """The pass rules and their order metrics, per SDE: strong order 1 for every law; weak order
    (1, or at least 1 for VE) and uniform layer-W2 order at least 1, each fitted, end to end and
    between the two deepest rungs (``rules.order_rules``); and the sampled moments within the
    Bonferroni bound ``z_bound`` of the propagated ones.  ``strong`` maps (sde, law) to (errors,
    standard errors), ``weak`` and ``layer`` map an SDE to its errors."""
    metrics, out = {}, []
    for s in sdes:
        for law in law_names:
            errors, ses = strong[s, law]
            m, r = order_metrics_and_rules(f"strong_order_{s}_{law}", ladder, errors, ORDER_RANGE,
                               error_ses=ses)
            metrics.update(m)
            out += r
        for family, errors, band in (("weak_order", weak[s], WEAK_ORDER_RANGE[s]),
                                     ("layer_w2_order", layer[s], AT_LEAST_FIRST_ORDER)):
            m, r = order_metrics_and_rules(f"{family}_{s}", ladder, errors, band,
                               deep=f"{family}_deep_{s}", span=f"{family}_span_{s}")
            metrics.update(m)
            out += r
    return metrics, out + [Rule("moment_z_max", (0.0, z_bound))]


def path_statistics(path: BrownianPath, steps: list[int], generator) -> dict[str, float]:
    """Tests of a Brownian path's own law at every refinement level ``steps`` (ascending), each
    a p-value under "the normalised increments xi = dW / sqrt(dt) are i.i.d. N(0, 1)":
    the mean and the variance of all xi of the level (normal approximations, n in the 1e4..1e6),
    the lag-1 products xi_i xi_(i+1) along the steps (mean 0 and variance 1 under independence;
    siblings of the Levy construction included), and a Kolmogorov-Smirnov test of
    ``PATH_KS_SAMPLES`` xi drawn at random.  Also the largest |W coarse - sum of its two fine
    halves| over the levels (the path is one path).  Returns the smallest p-value, the number of
    tests, and the consistency error."""
    from scipy.stats import kstest, norm  # here: scipy.stats costs 0.7 s to import, which every
    # process that lists the checks (verify --ckpt, its workers) would pay for nothing

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
    return {"p_min": min(p_values), "tests": len(p_values), "consistency": consistency}


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


def strong_error(z: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """RMS over samples of |z - reference| and its standard error (delta method on the mean of
    the squared errors)."""
    sq = (z - reference).pow(2).sum(-1)
    rms = float(sq.mean().sqrt())
    se_sq = float(sq.std()) / math.sqrt(sq.numel())
    return rms, se_sq / (2 * rms) if rms > 0 else math.nan


def strong_errors(sde, law, law64, x_T: torch.Tensor, path: BrownianPath, config: CheckConfig,
                  *, score_scale: float, noise_power: float) -> tuple[list[float], list[float]]:
    """Strong errors at t = eps on every rung, against Euler-Maruyama with
    ``REFERENCE_REFINEMENT`` x --depth steps on the same Brownian path (the true reverse SDE, in
    float64 with ``law64``; the rungs run in config.dtype with ``law``)."""
    ladder = config.ladder
    steps = REFERENCE_REFINEMENT * ladder[-1]
    reference_stack = denoising_stack(sde, law64, steps, reference_config(config),
                                      probability_flow=False)
    reference = reference_stack(x_T, xi=path.normalised_increments(steps).to(x_T))
    x_in = x_T.to(config.dtype)
    errors, ses = [], []
    for L in ladder:
        stack = denoising_stack(sde, law, L, config, probability_flow=False,
                                score_scale=score_scale, noise_power=noise_power)
        z = stack(x_in, xi=path.normalised_increments(L).to(x_in))
        rms, se = strong_error(z.to(reference), reference)
        errors.append(rms)
        ses.append(se)
    return errors, ses


def propagated_errors(stack, law: Gaussian, sde):
    """Exact moments of every layer (z_0 ~ p_T) against p_{t_i}: the weak error at eps,
    |dm| + |dSigma|_F, the W2 distance at every layer, and the moments themselves.  Moments are
    propagated in the stack's dtype and compared in ``law``'s (float64 in the check)."""
    p_T = law.marginal(sde, sde.T)
    dtype = stack.times.dtype
    means, covs = stack.propagate_moments(p_T.mean.to(dtype), p_T.cov.to(dtype))
    means, covs = means.to(p_T.mean), covs.to(p_T.mean)
    exact_means, exact_covs = law.marginal_moments(sde, stack.times)
    weak = ((means[-1] - exact_means[-1]).norm()
            + torch.linalg.matrix_norm(covs[-1] - exact_covs[-1]))
    w2 = gaussian_w2_moments(means, covs, exact_means, exact_covs)
    return float(weak), w2, (means, covs, exact_means, exact_covs)


def sampled_statistics(stack, law64: Gaussian, law_cpu: Gaussian, sde, moments, generator,
                       config: CheckConfig, *, n: int, replicates: int):
    """Simulate the stack with ``replicates`` x n samples and compare with the exact moments.

    Returns the max |z| of every layer's sample moments (all samples pooled) against the
    propagated ``moments`` of that stack, the number of z-scores, and a dict name ->
    (mean, standard error over the replicates) of: the weak error at eps
    (``weak_error_sampled``), the max-over-layers W2 of the empirical Gaussians to p_{t_i}
    (``layer_w2_max_sampled``), its Monte-Carlo floor (``layer_w2_floor``: the same statistic
    for n exact samples of each p_{t_i}, drawn by the exact reverse kernels from the same x_T
    and the same noise, so the two are coupled like the layers of the stack), and the paired
    difference of the two (``layer_w2_excess``).
    """
    means, covs, exact_means, exact_covs = moments
    depth, d = stack.depth, law_cpu.dim
    total = n * replicates
    x_T = sample_prior(law_cpu, sde, total, generator, config)  # float64
    # the refined path family of the strong test: coarsest rung first, refined to --depth
    path = BrownianPath(sde.T - EPS, x_T.shape, base_steps=config.ladder[0], generator=generator)
    xi = path.normalised_increments(depth).to(x_T)
    states = stack(x_T.to(config.dtype), xi=xi.to(config.dtype), return_all=True).to(x_T)
    pooled_mean, pooled_cov = empirical_moments(states)
    z = moment_z_scores(pooled_mean, pooled_cov, total, means, covs)

    groups = states.reshape(depth + 1, replicates, n, d)
    rep_mean, rep_cov = empirical_moments(groups)
    w2 = gaussian_w2_moments(rep_mean, rep_cov, exact_means[:, None], exact_covs[:, None])
    weak = ((rep_mean[-1] - exact_means[-1]).norm(dim=-1)
            + torch.linalg.matrix_norm(rep_cov[-1] - exact_covs[-1]))
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


def measure(config: CheckConfig, *, score_sign: float = 1.0, noise_power: float = 0.5,
            sdes: tuple[str, ...] = SDE_NAMES) -> CheckResult:
    """Run C3 with residual F = -(f z - g^2 (score_sign s)), noise gamma_i = g(t_i) h^noise_power.

    The true reverse SDE is score_sign = 1, noise_power = 1/2; anything else is a negative
    control and must fail.  ``sdes`` restricts the SDEs (for fast tests).
    """
    g = config.generator(stream=3)
    laws = data_laws(config, g)
    strong_batch = 64 if config.quick else 256
    n, replicates = (250, 4) if config.quick else (500, 8)
    n_out = OUTPUT_SAMPLES[config.quick]
    ladder, depth = config.ladder, config.ladder[-1]
    path_levels = [ladder[0] << k for k in range(
        (REFERENCE_REFINEMENT * depth // ladder[0]).bit_length())]
    metrics: dict[str, float] = {"eps": EPS, "reference_steps": REFERENCE_REFINEMENT * depth}
    strong_series, weak_series, layer_series = [], [], []
    strong, weak_by_sde, layer_by_sde = {}, {}, {}
    z_max, z_count = 0.0, 0
    path_p, path_tests, path_consistency, torchsde_error = 1.0, 0, 0.0, 0.0
    with torch.no_grad():
        for sde_name in sdes:
            sde = make_sde(sde_name)
            for law_name, law in laws.items():
                law_dev = law.to(**config.placement)
                law64 = law.to(**config.reference_placement)
                x_T = sample_prior(law, sde, strong_batch, g, config)  # float64
                path = BrownianPath(sde.T - EPS, x_T.shape, base_steps=ladder[0], generator=g)
                errors, ses = strong_errors(sde, law_dev, law64, x_T, path, config,
                                            score_scale=score_sign, noise_power=noise_power)
                if path_tests == 0:  # one path of the family, every level (one implementation)
                    stats = path_statistics(path, path_levels, g)
                    path_p, path_tests = stats["p_min"], stats["tests"]
                    path_consistency = stats["consistency"]
                if law_name == "mixture" and sde_name == sdes[0]:  # an independent solver
                    torchsde_error = torchsde_reference_error(  # on the same increments
                        sde, law64, x_T, path, REFERENCE_REFINEMENT * ladder[0], config)
                key = f"{sde_name}_{law_name}"
                strong[sde_name, law_name] = (errors, ses)
                metrics[f"strong_error_{key}"], metrics[f"strong_error_{key}_se"] = (
                    errors[-1], ses[-1])
                strong_series.append(Series(f"{sde_name}, {law_name}", ladder, errors,
                                            fit_order(ladder, errors)))

            law = laws["gaussian"]
            law_dev = law.to(**config.placement)
            law64 = law.to(**config.reference_placement)
            weak, layer = [], []
            for L in ladder:  # ends at --depth: stack and moments are the deepest rung's
                stack = denoising_stack(sde, law_dev, L, config, probability_flow=False,
                                        score_scale=score_sign, noise_power=noise_power)
                weak_L, w2_L, moments = propagated_errors(stack, law64, sde)
                weak.append(weak_L)
                layer.append(float(w2_L.amax()))
            weak_by_sde[sde_name], layer_by_sde[sde_name] = weak, layer
            metrics[f"weak_error_{sde_name}"] = weak[-1]
            metrics[f"layer_w2_max_{sde_name}"] = layer[-1]
            weak_series.append(Series(sde_name, ladder, weak, fit_order(ladder, weak)))
            layer_series.append(Series(sde_name, ladder, layer, fit_order(ladder, layer)))

            sde_z_max, count, estimates = sampled_statistics(
                stack, law64, law, sde, moments, g, config, n=n, replicates=replicates)
            z_max, z_count = max(z_max, sde_z_max), z_count + count
            for name, (value, se) in estimates.items():
                metrics[f"{name}_{sde_name}"], metrics[f"{name}_{sde_name}_se"] = value, se

            mixture_dev = laws["mixture"].to(**config.placement)

            def run_stack(x_T, sde=sde, law=mixture_dev):
                stack = denoising_stack(sde, law, depth, config, probability_flow=False,
                                        score_scale=score_sign, noise_power=noise_power)
                out_path = BrownianPath(sde.T - EPS, x_T.shape, base_steps=ladder[0],
                                        generator=g)
                xi = out_path.normalised_increments(depth).to(x_T)
                return stack(x_T.to(config.dtype), xi=xi.to(config.dtype)).to(torch.float64)

            metrics.update(output_law_metrics(run_stack, laws["mixture"], sde, g, n_out, config))

    from scipy.stats import norm

    z_bound = float(norm.isf(FAMILY_FALSE_ALARM / (2 * z_count)))
    metrics["moment_z_max"], metrics["moment_z_bound"] = z_max, z_bound
    metrics["path_bonferroni_p"] = min(1.0, path_p * path_tests)
    metrics["path_tests"] = path_tests
    metrics["path_refinement_error"] = path_consistency
    metrics["torchsde_reference_error"] = torchsde_error
    order_metrics, order_rule_list = rules(sdes, list(laws), z_bound, ladder, strong,
                                           weak_by_sde, layer_by_sde)
    metrics.update(order_metrics)
    metrics.update(output_law_bounds(sdes, len(laws["mixture"].weights)))
    output_rules = output_law_rules(metrics, sdes)
    families = {"strong_order": [metrics[f"strong_order_{s}_{law}"] for s in sdes for law in laws],
                "weak_order": [metrics[f"weak_order_{s}"] for s in sdes],
                "layer_w2_order": [metrics[f"layer_w2_order_{s}"] for s in sdes]}
    for family, values in families.items():
        metrics[f"{family}_min"], metrics[f"{family}_max"] = extremes(values)
    verdict = judge(metrics, order_rule_list + output_rules + [
        Rule("path_bonferroni_p", (PATH_FALSE_ALARM, None)),
        Rule("path_refinement_error", (0.0, 1e-12)),
        Rule("torchsde_reference_error", (0.0, TORCHSDE_TOL))])

    gating = get_gating(config.gating).name
    weak_text = ", ".join(f"{metrics[f'weak_order_{s}']:.3f} ({NAMES[s]})" for s in sdes)
    moments_match = "moment_z_max" not in verdict.failed
    summary = (
        f"With {gating} gates the stochastic stack (eps = {EPS:g}): the strong error at eps "
        f"{trend(families['strong_order'])} (orders {metrics['strong_order_min']:.3f}.."
        f"{metrics['strong_order_max']:.3f}; {', '.join(NAMES[s] for s in sdes)}; Gaussian and "
        f"mixture data); the weak error {trend(families['weak_order'])} (orders {weak_text}); "
        f"the max-over-layers W2 to p_t {trend(families['layer_w2_order'])} (orders "
        f"{metrics['layer_w2_order_min']:.3f}..{metrics['layer_w2_order_max']:.3f}); sampled "
        f"moments {'match' if moments_match else 'do not match'} the propagated ones (max |z| "
        f"{z_max:.2f}, bound {z_bound:.2f})"
        + (f"; out of range: {', '.join(verdict.failed)}." if verdict.failed else "."))
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary,
        figure=_figure(gating, ladder, strong_series, weak_series, layer_series),
        measured_text=f"strong {metrics['strong_order_min']:.2f}..{metrics['strong_order_max']:.2f}"
                      f", weak {metrics['weak_order_min']:.2f}..{metrics['weak_order_max']:.2f}"
                      f", layer W2 {metrics['layer_w2_order_min']:.2f}.."
                      f"{metrics['layer_w2_order_max']:.2f}",
        theory_text="strong, weak 1 +/- 0.15 (weak VE, layer W2: >= 0.85)")


def _figure(gating, ladder, strong, weak, layer):
    def draw(fig):
        import numpy as np
        from matplotlib.ticker import NullFormatter

        fig.set_size_inches(7.5, 9.0)
        panels = ((f"C3 reverse-sde ({gating} gates): strong error at eps", strong,
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


def run(config: CheckConfig) -> CheckResult:
    return measure(config)
