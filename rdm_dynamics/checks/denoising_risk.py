"""C10 `denoising-risk`: a trained denoiser's risk is the Bayes risk plus its excess, exactly.

Setting: a checkpoint trained on known-law data (``--data digits-gmm``), whose Gaussian-mixture
law p_0 the checkpoint carries.  Not applicable to data without a known law.

Measured, per time bin (``BINS`` equal bins of [t_min, T], ``PER_BIN`` fresh samples each, t
uniform in its bin; labels the class of each image's component, the Bayes predictor then that of
the class's components): the risk R = E|eps_theta - eps|^2 / d of the network's noise prediction
(EMA weights, evaluated in float64), the Bayes risk R* = E|eps* - eps|^2 / d with the exact
eps* = -s(t) grad log p_t (``laws.GaussianMixture.optimal_eps``), the excess E|eps_theta - eps*|^2
/ d, and the identity residual R - R* - excess (= 2 E<eps_theta - eps*, eps* - eps> / d), each a
sample mean with its standard error (analysis.denoising_risk; proof in
proofs/C10_denoising-risk.md).

Sample quality, exactly: ``N_GENERATED`` images from the network (DDPM sampler, labels drawn from
the law's class weights, guidance 1): their mean exact log-density log p_0 per dimension against
that of as many fresh draws of p_0 (``logdensity_gap`` = real - generated, nats per dimension,
with its standard error), the share of each mixture component among them (each image assigned to
its most probable component) against the weights (Pearson chi-square and its p-value), and the
share of images whose most probable component has the asked class.

Pass rules (gated): in every bin the identity residual lies within 4 standard errors of 0 and
R - R* >= 0 within 4 standard errors.  Reported: R, R*, excess per bin, ``excess_risk_mean``
(mean over bins), the log-density gap, the chi-square.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..analysis.denoising_risk import (
    binned_means,
    chi_square,
    component_shares,
    risk_terms,
    time_bins,
)
from ..stats import mean_se
from ..training.sampling import generate
from .trained_subject import CheckpointConfig, Subject, draw_inputs, load_subject
from .report import CheckResult
from .rules import Rule, judge

KIND = "checkpoint"
CLAIM = "C10"
ID = "denoising-risk"
TITLE = "denoising risk = Bayes risk + excess on known-law data; R >= R*; exact sample quality"

SE_MARGIN = 4.0
STREAM = 10


def sizes(quick: bool) -> dict:
    """Bins, samples per bin, generated images and sampler steps."""
    return (dict(bins=4, per_bin=64, generated=64, steps=20) if quick
            else dict(bins=8, per_bin=256, generated=256, steps=100))


def bayes_predictor(subject: Subject, sde=None):
    """eps*(x_t, t, y) of the subject's law (of the label's class when y is given) under
    ``sde`` (default: the run's SDE; a different one plants a wrong noise level)."""
    law, sde = subject.law, sde or subject.sde

    def eps_star(x_t, t, y):
        allowed = None if y is None else law.class_mask(y.cpu())
        flat = law.flat(x_t).cpu().double()
        return law.images(law.mixture.optimal_eps(flat, t.cpu().double(), sde, allowed)) \
            .to(x_t.device)

    return eps_star


def network_predictor(subject: Subject, device: str):
    net64 = subject.float64().to(device)

    def eps_theta(x_t, t, y):
        return subject.eps(net64, x_t.to(device), t.to(device),
                           None if y is None else y.to(device))

    return eps_theta


def measure_risk(subject: Subject, config: CheckpointConfig, eps_theta=None,
                 eps_star=None) -> tuple[dict, np.ndarray]:
    """Per-bin metrics of the decomposition (module docstring) and the bin edges.  Predictors
    default to the subject's network and its exact Bayes predictor."""
    n = sizes(config.quick)
    eps_theta = eps_theta or network_predictor(subject, config.device)
    eps_star = eps_star or bayes_predictor(subject)
    edges = time_bins(subject.t_min, subject.sde.T, n["bins"])
    g = config.generator(STREAM)
    u = torch.rand(n["bins"], n["per_bin"], generator=g, dtype=torch.float64)
    lo = torch.tensor(edges[:-1]).unsqueeze(1)
    t = (lo + (torch.tensor(edges[1:]).unsqueeze(1) - lo) * u).reshape(-1)
    inputs = draw_inputs(subject, len(t), g, t=t)
    terms = []
    for chunk in torch.arange(len(t)).split(256):
        terms.append(risk_terms(eps_theta, eps_star, inputs.x0[chunk],
                                None if inputs.y is None else inputs.y[chunk], inputs.t[chunk],
                                inputs.noise[chunk], subject.sde))
    cat = {k: torch.cat([getattr(r, k) for r in terms]) for k in ("risk", "bayes", "excess",
                                                                   "cross")}
    metrics = {}
    per_bin = {name: binned_means(values, inputs.t, edges) for name, values in
               (("risk", cat["risk"]), ("bayes_risk", cat["bayes"]),
                ("excess_risk", cat["excess"]), ("identity_residual", cat["cross"]),
                ("risk_gap", cat["risk"] - cat["bayes"]))}
    for k in range(n["bins"]):
        metrics[f"t_bin_{k}"] = 0.5 * (edges[k] + edges[k + 1])
        for name, rows in per_bin.items():
            metrics[f"{name}_{k}"], metrics[f"{name}_{k}_se"] = rows[k][0], rows[k][1]
    for name in ("risk", "bayes_risk", "excess_risk"):
        means = [r[0] for r in per_bin[name]]
        ses = [r[1] for r in per_bin[name]]
        metrics[f"{name}_mean"] = float(np.mean(means))
        metrics[f"{name}_mean_se"] = float(math.sqrt(sum(s * s for s in ses)) / len(ses))
    return metrics, edges


def risk_rules(bins: int) -> list[Rule]:
    rules = []
    for k in range(bins):
        rules.append(Rule(f"identity_residual_{k}", (0.0, 0.0), margin=-SE_MARGIN))
        rules.append(Rule(f"risk_gap_{k}", (0.0, None), margin=-SE_MARGIN))
    return rules


def measure_samples(subject: Subject, config) -> tuple[dict, dict]:
    """Exact log-densities and component shares of generated images (module docstring)."""
    n = sizes(config.quick)
    law = subject.law
    g = config.generator(STREAM + 1)
    real, _ = law.mixture.sample(n["generated"], g, with_components=True)
    labels = None
    if subject.labelled:
        labels = torch.multinomial(law.class_weights(), n["generated"], replacement=True,
                                   generator=g)
    cfg = subject.train_config
    x = generate(subject.net, n["generated"], sde=subject.sde, prediction=subject.prediction,
                 t_min=subject.t_min, labels=labels, guidance=1.0, sampler="ddpm",
                 steps=n["steps"], seed=config.seed, device=config.device,
                 autocast=cfg.bf16, disable=True)
    flat = law.flat(x).double()
    d = law.mixture.dim
    lp_gen = law.mixture.log_prob(flat) / d
    lp_real = law.mixture.log_prob(real) / d
    m = {}
    m["logdensity_real"], m["logdensity_real_se"] = mean_se(lp_real)
    m["logdensity_generated"], m["logdensity_generated_se"] = mean_se(lp_gen)
    m["logdensity_gap"] = m["logdensity_real"] - m["logdensity_generated"]
    m["logdensity_gap_se"] = math.hypot(m["logdensity_real_se"], m["logdensity_generated_se"])
    resp = law.mixture.responsibilities(flat)
    counts = component_shares(resp)
    m["component_chi2"], m["component_chi2_p"] = chi_square(counts, law.mixture.weights.numpy())
    m["component_dof"] = len(counts) - 1
    if labels is not None:
        agree = (law.classes[resp.argmax(1)] == labels).double()
        m["class_agreement"], m["class_agreement_se"] = mean_se(agree)
    shown = {"lp_gen": lp_gen.numpy(), "lp_real": lp_real.numpy(), "counts": counts,
             "weights": law.mixture.weights.numpy()}
    return m, shown


def run(config: CheckpointConfig) -> CheckResult:
    subject = load_subject(config)
    if subject.law is None:
        return CheckResult.inapplicable(ID, CLAIM, f"the run trained on "
                                        f"{subject.train_config.data!r}, whose law is not known "
                                        "(train with --data digits-gmm)")
    metrics, edges = measure_risk(subject, config)
    sample_metrics, shown = measure_samples(subject, config)
    metrics.update(sample_metrics)
    bins = len(edges) - 1
    verdict = judge(metrics, risk_rules(bins))
    m = metrics
    worst = max(range(bins), key=lambda k: abs(m[f"identity_residual_{k}"])
                / max(m[f"identity_residual_{k}_se"], 1e-300))
    summary = (
        f"Over {bins} time bins the risk of the trained denoiser splits into the exact Bayes "
        f"risk plus its excess (largest identity residual {m[f'identity_residual_{worst}']:.2e} "
        f"+/- {m[f'identity_residual_{worst}_se']:.1e}, bin {worst}); mean excess risk "
        f"{m['excess_risk_mean']:.4f} +/- {m['excess_risk_mean_se']:.4f} over a mean Bayes "
        f"risk {m['bayes_risk_mean']:.4f}; generated images have exact log-density "
        f"{m['logdensity_gap']:.3f} +/- {m['logdensity_gap_se']:.3f} nats per pixel below "
        f"real ones, component chi-square {m['component_chi2']:.1f} on "
        f"{m['component_dof']} degrees of freedom (p = {m['component_chi2_p']:.2g}).")
    return CheckResult(
        id=ID, claim=CLAIM, metrics=metrics, verdict=verdict, summary=summary,
        figure=risk_figure(metrics, edges, shown),
        measured_text=(f"excess {m['excess_risk_mean']:.3g} +/- {m['excess_risk_mean_se']:.1g}"
                       f", log-density gap {m['logdensity_gap']:.3g}"),
        theory_text="R = R* + excess within 4 SE, R >= R*")


def risk_figure(m: dict, edges, shown):
    """Left: R, R* and the excess per time bin with 2-SE bars; right: exact log-densities of
    generated and real images."""

    def draw(fig):
        left, right = fig.subplots(1, 2)
        bins = len(edges) - 1
        centres = [m[f"t_bin_{k}"] for k in range(bins)]
        for name, label in (("risk", "R (network)"), ("bayes_risk", "R* (Bayes)"),
                            ("excess_risk", "excess")):
            left.errorbar(centres, [m[f"{name}_{k}"] for k in range(bins)],
                          yerr=[2 * m[f"{name}_{k}_se"] for k in range(bins)], marker="o",
                          capsize=2, label=label)
        left.set_yscale("log")
        left.set_xlabel("diffusion time t")
        left.set_ylabel("risk per dimension")
        left.set_title("denoising risk per time bin")
        left.grid(True, alpha=0.3)
        left.legend(fontsize=7)
        lo = min(shown["lp_gen"].min(), shown["lp_real"].min())
        hi = max(shown["lp_gen"].max(), shown["lp_real"].max())
        bins_lp = np.linspace(lo, hi, 30)
        right.hist(shown["lp_real"], bins=bins_lp, alpha=0.6, label="real (p_0)")
        right.hist(shown["lp_gen"], bins=bins_lp, alpha=0.6, label="generated")
        right.set_xlabel("exact log p_0 per dimension")
        right.set_title(f"log-density gap {m['logdensity_gap']:.3f}")
        right.legend(fontsize=7)
        fig.suptitle("C10 denoising-risk")

    return draw
