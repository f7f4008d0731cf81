"""C4 `gate-moments`: the gates carry the mean and variance (closed-form and learned gates).

Setting: Gaussian data N(mu, Sigma) with a full random covariance in R^d (d = 3, also with
--quick: in R^2 the eigenbasis can be a symmetric reflection, U = U^T, and a transposed basis
would go unseen), under VP and VE; the denoising grid t_i = T - i h, h = (T - eps) / L, span
(T, eps) = (1, 1e-3).
The stack works in the eigen-coordinates y = U^T x of Sigma with F(z) = z and per-channel gates
(``gaussian_gates``).  Proof: proofs/C4_gate-moments.md.

Claim: the exact one-unit transport t_i -> t_{i+1} is affine (PF-ODE) or an affine-Gaussian
kernel (reverse SDE), so gates alpha_i = C_i - 1, beta_i = mu_{i+1} - C_i mu_i,
gamma_i = kernel std represent it exactly at every depth; Euler gates keep an O(h) error; gates
fitted from samples converge to the closed form at the Monte-Carlo rate.

1. Closed-form gates (``closed_form_gates``, installed where the schedule's gates are learnable:
   under euler, plain and inv-sqrt the stack keeps its own gates and the check measures those).
   Deterministic units: max over depths L in {1, 3} + ladder, layers i and the starting points
   x_T ~ p_T of |z_i - Phi_{T -> t_i}(x_T)| / rms(p_{t_i}), Phi the exact PF-ODE map.
   Stochastic units: the exact law of every layer (``gaussian_gates.layer_laws``) against
   p_{t_i}: relative errors of the mean and the covariance.  ``closed_form_error`` is the largest
   of these, zero up to rounding.
2. Euler gates (h times the coefficients of the affine denoising field) on the same stack: the
   same errors over the ladder.  ``euler_order_vp`` / ``_ve`` (deterministic units), fitted on the
   rungs where the explicit step does not overshoot (max_i |alpha_i| <= 1), and likewise for
   stochastic units under Euler gates (Euler-Maruyama) the relative error of the exact layer
   laws, ``euler_law_error_vp`` / ``_ve`` and its order ``euler_law_order_*`` (O(h), approached
   from above by VE's pre-asymptotic rungs).  Both orders are gated fitted, end to end
   (``_span``) and between the two deepest rungs (``_deep``; ``rules.order_rules``); both errors
   stay away from zero at --depth (Euler keeps an error).
3. Learned gates of stochastic units, from forward trajectories only (``gate_fitting``):
   (a) least squares on the pairs (y_{t_i}, y_{t_{i+1}}) at --depth, replicated (``Sizes``);
   (b) natural-gradient descent on the denoising negative log-likelihood through the stack, at
   depth min(``GD_DEPTH``, --depth).  ``learned_gate_error`` (a) and ``learned_gate_error_gd``
   (b) estimate the mean squared bias of the stack's gates against the closed form in units of
   their sampling variance, mean_k (t_k^2 - 1), pooled over VP and VE: 0 for unbiased gates.
   ``learned_rate``: minus the slope of log(median relative gate error) against log(n) over
   n/8 .. n pairs, 1/2 at the Monte-Carlo rate.  Reported: the learned stack's output mean and
   covariance against p_eps (relative errors, mean and standard error over the replicate fits).
4. Gaussian mixture (VP; reported, not a pass rule): energy distances to p_eps of the outputs of
   stochastic stacks with least-squares gates, for F(z) = z (``affine``; its floor is p_eps
   against its moment-matched Gaussian, ``floor``) and for F = the exact nonlinear denoising
   field (``nonlinear`` at --depth, ``nonlinear_coarse`` at the ladder's first depth).

Negative control (``measure``'s keyword argument): every gate computed and fitted on the grid
shifted by ``time_shift``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..analysis.gate_fitting import (
    forward_trajectories,
    least_squares_gates,
    median_relative_error,
    studentised_gate_error,
    studentised_terms,
    train_gates_by_denoising,
)
from ..analysis.gaussian_gates import (
    DenoisingCoefficients,
    closed_form_gates,
    eigen_law,
    eigen_stack,
    from_eigen,
    identity,
    install_gates,
    layer_laws,
    to_eigen,
)
from ..analysis.two_sample import energy_distance
from ..laws import Gaussian, GaussianMixture, random_rotation
from ..sde import EPS, SDE, VESDE, VPSDE
from ..stack import GatedResidualStack, get_schedule
from ..stats import OrderFit, fit_order, mean_se
from . import CheckConfig
from .claim import Measurement
from .rules import AT_LEAST_FIRST_ORDER, FIRST_ORDER, Rule, order_metrics, order_rules

CLAIM = "C4"
ID = "gate-moments"
TITLE = "Gates carry the mean and variance: closed-form gates are exact, learned gates converge"
#: A scheduling hint: serial seconds at --depth 256 (``workers.cost`` says how it is measured).
COST = 2.1

T_END = 1.0
SPAN = (T_END, EPS)
#: The closed-form gates' error is rounding: at most this, by dtype (``closed_form_tol``).
CLOSED_FORM_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
#: The learned gates' error falls at the Monte-Carlo rate n^(-1/2).
RATE_RANGE = (0.4, 0.6)
#: "Euler gates keep an error": their error at --depth at least this (relative), far above the
#: closed-form gates' rounding.
EULER_ERROR_MIN = 1e-6
#: Learned gates are unbiased: their squared bias within this many standard errors of 0 (a
#: false-alarm rate of about 6e-5, normal approximation).
Z_MAX = 4.0
GD_DEPTH = 16  # gradient descent runs at min(GD_DEPTH, --depth)
KINDS = ("pf", "sde")  # deterministic units (PF-ODE) and stochastic units (reverse SDE)


@dataclass
class Sizes:
    dim: int
    paths: int  # starting points of the pathwise comparison
    pairs: int  # forward trajectories per gate fit
    replicates: int  # independent gate fits for the output moments
    mixture_samples: int


def sizes(config: CheckConfig) -> Sizes:
    if config.quick:
        return Sizes(dim=3, paths=16, pairs=400, replicates=2, mixture_samples=1000)
    return Sizes(dim=3, paths=64, pairs=1000, replicates=4, mixture_samples=3000)


def build_gaussian(dim: int, g: torch.Generator) -> Gaussian:
    """N(mu, Sigma): a random rotation, eigenvalues log-spaced over [0.05, 2] (a condition
    number of 40 at every dimension), mu ~ N(0, I)."""
    rotation = random_rotation(dim, generator=g)
    lam = torch.logspace(math.log10(0.05), math.log10(2.0), dim, dtype=torch.float64)
    return Gaussian.rotated(torch.randn(dim, generator=g, dtype=torch.float64), lam, rotation)


def build_mixture(g: torch.Generator) -> GaussianMixture:
    """Three well separated components in R^2 with random covariances of size about 0.05."""
    angles = 2 * math.pi * (torch.arange(3, dtype=torch.float64) / 3 + 0.1)
    means = 1.5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    A = 0.2 * torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.02 * torch.eye(2, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), means, covs)


def _rms(p: Gaussian) -> float:
    """sqrt(E|x|^2) under p: the scale the errors are measured against."""
    return math.sqrt(float(torch.trace(p.cov) + p.mean @ p.mean))


def _worst(*errors: float) -> float:
    """The largest error, NaN counting as infinite (max() would silently drop a NaN)."""
    return max(math.inf if math.isnan(e) else e for e in errors)


def _shifted(times: torch.Tensor, time_shift: float) -> torch.Tensor:
    shifted = times.to(torch.float64) + time_shift
    if shifted.min() < 0:
        raise ValueError(f"time_shift {time_shift} moves the grid below t = 0")
    return shifted


class GaussianProblem:
    """One SDE with the Gaussian data: the stacks' coefficients and the exact references, both
    memoised by time (the nested depths of the ladder share their grid points)."""

    def __init__(self, law: Gaussian, sde: SDE, config: CheckConfig):
        self.law, self.sde, self.config = law, sde, config
        self.coefficients = {kind: DenoisingCoefficients(law, sde, stochastic=kind == "sde")
                             for kind in KINDS}
        self._references: dict[float, tuple] = {}

    def stack(self, kind: str, depth: int, schedule: str) -> GatedResidualStack:
        return self.coefficients[kind].stack(depth, schedule=schedule, span=SPAN,
                                             **self.config.placement)

    def reference(self, t: float) -> tuple:
        """(p_t in eigen-coordinates, rms(p_t), the exact PF-ODE map from T to t)."""
        if t not in self._references:
            p_t = self.law.marginal(self.sde, t)
            self._references[t] = (eigen_law(self.law, p_t), _rms(p_t),
                                   self.law.pf_ode_map(self.sde, T_END, t))
        return self._references[t]

    def transport_errors(self, stacks: dict[str, GatedResidualStack],
                         x_T: torch.Tensor) -> dict[str, float]:
        """Errors of a deterministic and a stochastic stack against the exact transport from T.

        ``pf``: max over layers and starting points of |z_i - Phi_{T -> t_i}(x_T)| / rms(p_{t_i});
        ``sde``: max over layers of the relative mean and covariance errors of the exact Law(z_i)
        against p_{t_i} (both in eigen-coordinates).
        """
        law, to = self.law, self.config.placement
        with torch.no_grad():
            states = stacks["pf"](to_eigen(law, x_T).to(**to), return_all=True).to(x_T)
        times = stacks["pf"].times.tolist()
        targets = [self.reference(t)[0] for t in times]
        laws = layer_laws(stacks["sde"], self.reference(T_END)[0],
                          torch.stack([p.mean for p in targets]),
                          torch.stack([p.cov for p in targets]))
        mean_errors, cov_errors = laws.mean_error.tolist(), laws.cov_error.tolist()
        pf_err = sde_err = 0.0
        for i, t in enumerate(times):
            _, scale, flow = self.reference(t)
            exact = flow(x_T)
            pf_err = _worst(pf_err, float((from_eigen(law, states[i]) - exact).norm(dim=-1).max())
                            / scale)
            sde_err = _worst(sde_err, mean_errors[i] / scale, cov_errors[i] / scale**2)
        # a law that overflowed (or lost its positivity) anywhere has an infinite error
        return {"pf": pf_err, "sde": sde_err if laws.proper else math.inf}

    def depth_errors(self, depth: int, schedule: str, x_T: torch.Tensor, *, closed_form: bool,
                     time_shift: float = 0.0) -> dict[str, float]:
        """transport_errors of the deterministic and the stochastic stack of one depth, and the
        largest |alpha_i| of each (``pf_max_alpha``, ``sde_max_alpha``).

        With ``closed_form`` the closed-form gates (computed on the grid shifted by
        ``time_shift``) are installed where the schedule lets them in.
        """
        stacks = {}
        for kind in KINDS:
            stack = self.stack(kind, depth, schedule)
            if closed_form:
                install_gates(stack, closed_form_gates(
                    self.law, self.sde, _shifted(stack.times, time_shift),
                    stochastic=kind == "sde"))
            stacks[kind] = stack
        errors = self.transport_errors(stacks, x_T)
        for kind in KINDS:
            errors[f"{kind}_max_alpha"] = float(stacks[kind].alpha.detach().abs().max())
        return errors

    def learned_gates(self, size: Sizes, g: torch.Generator, time_shift: float) -> LearnedGates:
        """Fit the stochastic stack's gates from forward pairs on the (shifted) grid: least squares
        at --depth (replicated, and over n/8 .. n pairs), gradient descent at the ladder's first
        depth."""
        law, sde, config = self.law, self.sde, self.config
        to = config.placement

        def trajectories(stack, n):
            x = forward_trajectories(sde, law.sample(n, g), _shifted(stack.times, time_shift),
                                     generator=g)
            return to_eigen(law, x).to(**to)

        stack = self.stack("sde", config.ladder[-1], config.schedule)
        closed = closed_form_gates(law, sde, stack.times, stochastic=True)
        p_T, p_eps = self.reference(T_END)[0], self.reference(EPS)[0]

        # (a) least squares, replicated; the stack holds the fitted gates if its schedule lets it
        groups, mean_errs, cov_errs = [], [], []
        for _ in range(size.replicates):
            fit = least_squares_gates(trajectories(stack, size.pairs), identity, stack.times)
            install_gates(stack, fit.gates())
            groups.append(studentised_terms(stack.gates(), fit.standard_errors(), closed))
            out = layer_laws(stack, p_T, p_eps.mean, p_eps.cov, layers=-1)
            if not out.proper:  # the law overflowed
                mean_errs.append(math.inf)
                cov_errs.append(math.inf)
                continue
            mean_errs.append(float(out.mean_error) / self.reference(EPS)[1])
            cov_errs.append(float(out.cov_error / torch.linalg.matrix_norm(p_eps.cov)))
        error_by_n = {size.pairs: median_relative_error(stack.gates(), closed)}
        for k in (3, 2, 1):
            n = max(size.pairs >> k, 16)
            install_gates(stack, least_squares_gates(trajectories(stack, n), identity,
                                                     stack.times).gates())
            error_by_n[n] = median_relative_error(stack.gates(), closed)

        # (b) gradient descent on the denoising loss, from the schedule's initial gates
        gd_stack = self.stack("sde", min(GD_DEPTH, config.ladder[-1]), config.schedule)
        states = trajectories(gd_stack, size.pairs)
        history = train_gates_by_denoising(gd_stack, states)
        gd_fit = least_squares_gates(states, identity, gd_stack.times)
        gd_closed = closed_form_gates(law, sde, gd_stack.times, stochastic=True)
        groups_gd = studentised_terms(gd_stack.gates(), gd_fit.standard_errors(), gd_closed)
        return LearnedGates(torch.cat(groups), groups_gd, dict(sorted(error_by_n.items())),
                            mean_errs, cov_errs, max(len(history) - 1, 0))


@dataclass
class LearnedGates:
    """Studentised errors of learned gates for one SDE, and the learned stack's output law."""

    groups_ls: torch.Tensor  # per (unit, channel) sums of t^2 - 1, least squares
    groups_gd: torch.Tensor  # the same for gradient descent
    error_by_n: dict[int, float]  # median relative gate error against the number of pairs
    output_mean_errors: list[float]  # per replicate fit
    output_cov_errors: list[float]
    gd_steps: int


# ------------------------------------------------------------------------------------------------
# 4. Gaussian mixture: the affine floor and a nonlinear F
# ------------------------------------------------------------------------------------------------

class EigenField(torch.nn.Module):
    """A vector field v(x, t) written in the eigen-coordinates of ``basis``: U^T v(U y, t)."""

    def __init__(self, field, basis: Gaussian):
        super().__init__()
        self.field, self.basis = field, basis

    def forward(self, y, t):
        return to_eigen(self.basis, self.field(from_eigen(self.basis, y), t))


def mixture_samples(mixture: GaussianMixture, config: CheckConfig, size: Sizes,
                    g: torch.Generator, time_shift: float = 0.0) -> dict[str, torch.Tensor]:
    """Samples of p_eps (``reference``) and of the outputs of stochastic stacks (VP) whose gates
    are fitted by least squares on forward pairs, all started from p_T.

    ``affine``: F(z) = z in the eigenbasis of the data covariance, at --depth; ``floor``: the
    moment-matched Gaussian of p_eps (where an affine stack ends, proofs/C4 section 5);
    ``nonlinear`` (at --depth) and ``nonlinear_coarse`` (at the ladder's first depth): F = the
    exact denoising field of the reverse SDE.
    """
    sde, n = VPSDE(), size.mixture_samples
    basis = mixture.moment_matched()
    p_eps = mixture.marginal(sde, EPS)
    to = config.placement
    on_device = mixture.to(**to)
    denoiser = EigenField(sde.reverse(lambda x, t: on_device.score(x, t, sde)).denoising_field,
                          basis)

    def outputs(stack):
        states = to_eigen(basis, forward_trajectories(sde, mixture.sample(size.pairs, g),
                                                      _shifted(stack.times, time_shift),
                                                      generator=g)).to(**to)
        install_gates(stack, least_squares_gates(states, stack.residuals[0], stack.times).gates())
        z0 = to_eigen(basis, mixture.marginal(sde, T_END).sample(n, g))
        xi = torch.randn((stack.depth, *z0.shape), generator=g, dtype=z0.dtype)  # CPU stream
        with torch.no_grad():
            z = stack(z0.to(**to), xi=xi.to(**to))
        return from_eigen(basis, z.to(basis.mean))

    def noise(t):
        return sde.diffusion_coef(torch.as_tensor(t)).expand(mixture.dim).clone()

    def per_channel(value):
        return lambda t: torch.full((mixture.dim,), value, dtype=torch.as_tensor(t).dtype)

    depth = config.ladder[-1]
    out = {"reference": p_eps.sample(n, g),
           "affine": outputs(eigen_stack(basis, sde, depth, schedule=config.schedule,
                                         stochastic=True, span=SPAN, **to))}
    for key, L in (("nonlinear", depth), ("nonlinear_coarse", config.ladder[0])):
        out[key] = outputs(GatedResidualStack(denoiser, L, schedule=config.schedule, span=SPAN,
                                              gain=per_channel(1.0), bias=per_channel(0.0),
                                              noise=noise, **to))
    out["floor"] = p_eps.moment_matched().sample(n, g)
    return out


def mixture_gaps(mixture: GaussianMixture, config: CheckConfig, size: Sizes,
                 g: torch.Generator, time_shift: float = 0.0) -> dict[str, tuple[float, float]]:
    """(energy distance to p_eps, standard error) of each sample set of ``mixture_samples``."""
    samples = mixture_samples(mixture, config, size, g, time_shift)
    reference = samples.pop("reference")
    return {key: energy_distance(x, reference) for key, x in samples.items()}


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------

@dataclass
class Exactness:
    """Closed-form and Euler errors, pooled over the SDEs."""

    depths: list[int]
    closed_pf: float = 0.0
    closed_sde: float = 0.0
    closed_by_depth: dict[int, float] = field(default_factory=dict)
    euler: dict[str, list[float]] = field(default_factory=dict)  # "vp", "vp_sde", ...
    euler_rungs: dict[str, list[int]] = field(default_factory=dict)
    euler_fits: dict[str, OrderFit] = field(default_factory=dict)

    def add(self, problem: GaussianProblem, x_T: torch.Tensor, time_shift: float) -> None:
        config, name = problem.config, problem.sde.name
        for L in self.depths:
            err = problem.depth_errors(L, config.schedule, x_T, closed_form=True,
                                       time_shift=time_shift)
            self.closed_pf = _worst(self.closed_pf, err["pf"])
            self.closed_sde = _worst(self.closed_sde, err["sde"])
            self.closed_by_depth[L] = _worst(self.closed_by_depth.get(L, 0.0), err["pf"],
                                             err["sde"])
        per_depth = [problem.depth_errors(L, "euler", x_T, closed_form=False)
                     for L in config.ladder]
        for kind, key in (("pf", name), ("sde", name + "_sde")):
            self.euler[key] = [e[kind] for e in per_depth]
            # the order is fitted on the rungs where the explicit step does not overshoot
            asymptotic = [i for i, e in enumerate(per_depth) if e[f"{kind}_max_alpha"] <= 1.0]
            self.euler_rungs[key] = [config.ladder[i] for i in asymptotic]
            self.euler_fits[key] = fit_order(self.euler_rungs[key],
                                             [self.euler[key][i] for i in asymptotic])

    @property
    def closed_form_error(self) -> float:
        return _worst(self.closed_pf, self.closed_sde)


def closed_form_depths(config: CheckConfig) -> list[int]:
    """The depths the closed-form gates are measured at: 1, 3 and the ladder."""
    return sorted({1, 3, *config.ladder})


def closed_form_tol(config: CheckConfig) -> float:
    """The closed-form gates' tolerance in the config's dtype (their error is rounding)."""
    return CLOSED_FORM_TOL.get(config.dtype, 1e-4)


def theory(measured: Measurement) -> str:
    """The table's theory cell: the closed-form tolerance of the run's dtype, then the rest."""
    return (f"<= {closed_form_tol(measured.config):.0e}; order 1; 0 +/- {Z_MAX:g} se; "
            f"rate {sum(RATE_RANGE) / 2:g}")


def euler_orders(exact: Exactness, key: str, name: str, ladder) -> dict[str, float]:
    """``rules.order_metrics`` of one Euler error (``exact.euler[key]``) on its asymptotic
    rungs; NaN when fewer than two rungs are asymptotic (then nothing can pass)."""
    rungs = exact.euler_rungs[key]
    errors = [exact.euler[key][ladder.index(L)] for L in rungs]
    if len(rungs) < 2:
        errors, rungs = [math.nan, math.nan], list(ladder[-2:])
    return order_metrics(name, rungs, errors)


def exactness_metrics(exact: Exactness, ladder) -> dict[str, float]:
    """The closed-form errors; per SDE, the Euler gates' error at --depth (deterministic units)
    and the Euler-Maruyama law error (stochastic units), each with its orders."""
    metrics = {"closed_form_error": exact.closed_form_error,
               "closed_form_error_pf": exact.closed_pf, "closed_form_error_sde": exact.closed_sde}
    for name in ("vp", "ve"):
        metrics[f"euler_error_{name}"] = exact.euler[name][-1]
        metrics.update(euler_orders(exact, name, f"euler_order_{name}", ladder))
        metrics[f"euler_order_{name}_rungs"] = len(exact.euler_rungs[name])
        metrics[f"euler_law_error_{name}"] = exact.euler[name + "_sde"][-1]
        metrics.update(euler_orders(exact, name + "_sde", f"euler_law_order_{name}", ladder))
    return metrics


def learned_metrics(learned: dict[str, LearnedGates], size: Sizes) -> tuple[dict, dict]:
    """The learned gates' studentised squared bias (least squares, gradient descent) pooled over
    the SDEs, the rate of their median relative error in the number of pairs, and per SDE the
    learned stack's output moments against p_eps (mean and standard error over the replicate
    fits).  Returns the metrics and the curve of the rate (``ns``, ``gate_errors``, ``rate``)."""
    ls_err, ls_se = studentised_gate_error(*[r.groups_ls for r in learned.values()])
    gd_err, gd_se = studentised_gate_error(*[r.groups_gd for r in learned.values()])
    ns = sorted(learned["vp"].error_by_n)
    # geometric mean over the SDEs, so that the fitted rate is the mean of the two rates
    gate_errors = [math.exp(sum(math.log(r.error_by_n[n]) for r in learned.values())
                            / len(learned)) for n in ns]
    rate = fit_order(ns, gate_errors)
    metrics = dict(learned_gate_error=ls_err, learned_gate_error_se=ls_se,
                   learned_gate_error_gd=gd_err, learned_gate_error_gd_se=gd_se,
                   learned_rate=rate.order, learned_rate_se=rate.stderr,
                   learned_median_error=gate_errors[-1], pairs=size.pairs,
                   gd_steps=max(r.gd_steps for r in learned.values()))
    for name, r in learned.items():
        for key, values in (("mean", r.output_mean_errors), ("cov", r.output_cov_errors)):
            value, se = mean_se(values)
            metrics[f"learned_output_{key}_error_{name}"] = value
            metrics[f"learned_output_{key}_error_{name}_se"] = se
    return metrics, {"ns": ns, "gate_errors": gate_errors, "rate": rate}


def measure(config: CheckConfig, *, time_shift: float = 0.0) -> Measurement:
    """C4 with every gate computed and fitted on the grid shifted by ``time_shift`` (0 for the
    claim; otherwise the wrong-times negative control)."""
    g = config.generator(stream=4)
    size = sizes(config)
    law = build_gaussian(size.dim, g)
    mixture = build_mixture(g)
    exact = Exactness(depths=closed_form_depths(config))
    learned: dict[str, LearnedGates] = {}
    for sde in (VPSDE(), VESDE()):
        problem = GaussianProblem(law, sde, config)
        exact.add(problem, law.marginal(sde, T_END).sample(size.paths, g), time_shift)
        learned[sde.name] = problem.learned_gates(size, g, time_shift)
    gaps = mixture_gaps(mixture, config, size, g, time_shift)
    learned_part, rate_curve = learned_metrics(learned, size)
    metrics = {**exactness_metrics(exact, config.ladder), **learned_part}
    for key, (value, se) in gaps.items():
        metrics[f"mixture_{key}_energy"], metrics[f"mixture_{key}_energy_se"] = value, se
    return Measurement(metrics, config, curves={"exact": exact, **rate_curve})


def rules(measured: Measurement) -> list[Rule]:
    """Closed-form gates exact to rounding (the tolerance of the run's dtype); per SDE, Euler
    gates keep an error, of first order for deterministic units and at least first order for the
    law of stochastic units (fitted, end to end and deepest; ``rules.order_rules``); learned gates
    unbiased within ``Z_MAX`` standard errors, converging at the Monte-Carlo rate."""
    out = [Rule("closed_form_error", (None, closed_form_tol(measured.config)))]
    for name in ("vp", "ve"):
        out += [Rule(f"euler_order_{name}", FIRST_ORDER),
                Rule(f"euler_error_{name}", (EULER_ERROR_MIN, None)),
                Rule(f"euler_law_error_{name}", (EULER_ERROR_MIN, None)),
                *order_rules(f"euler_order_{name}", FIRST_ORDER, fit=False),
                *order_rules(f"euler_law_order_{name}", AT_LEAST_FIRST_ORDER)]
    return out + [Rule("learned_gate_error", (0.0, 0.0), margin=-Z_MAX),
                  Rule("learned_gate_error_gd", (0.0, 0.0), margin=-Z_MAX),
                  Rule("learned_rate", RATE_RANGE)]


def summary(measured: Measurement, verdict) -> str:
    m, config = measured.metrics, measured.config
    return (
        f"With {get_schedule(config.schedule).name} gates the stack's largest error against the "
        f"exact Gaussian transport over L = {', '.join(map(str, closed_form_depths(config)))} is "
        f"{m['closed_form_error']:.1e} (Euler gates: order {m['euler_order_vp']:.3f} VP, "
        f"{m['euler_order_ve']:.3f} VE, error {m['euler_error_vp']:.1e} / "
        f"{m['euler_error_ve']:.1e} at L = {config.ladder[-1]}); gates learned from "
        f"{m['pairs']} forward pairs per unit have squared bias "
        f"{m['learned_gate_error']:+.3f} +/- {m['learned_gate_error_se']:.3f} (least squares) "
        f"and {m['learned_gate_error_gd']:+.3f} +/- {m['learned_gate_error_gd_se']:.3f} "
        f"(gradient descent) sampling variances, error falling at rate "
        f"{m['learned_rate']:.3f} in n; for a Gaussian mixture affine gates stop at energy "
        f"distance {m['mixture_affine_energy']:.3g} (Gaussian floor "
        f"{m['mixture_floor_energy']:.3g}), the exact nonlinear F with learned gates reaches "
        f"{m['mixture_nonlinear_energy']:.3g}"
        + (f"; failed: {', '.join(verdict.failed)}" if verdict.failed else "") + ".")


def headline(measured: Measurement) -> str:
    m = measured.metrics
    return (f"closed form {m['closed_form_error']:.0e}; euler order "
            f"{m['euler_order_vp']:.2f}/{m['euler_order_ve']:.2f}; learned "
            f"{m['learned_gate_error']:+.2f}+/-{m['learned_gate_error_se']:.2f}, "
            f"gd {m['learned_gate_error_gd']:+.2f}+/-{m['learned_gate_error_gd_se']:.2f}, "
            f"rate {m['learned_rate']:.2f}")


def figure(measured: Measurement):
    m, c = measured.metrics, measured.curves
    return _figure(get_schedule(measured.config.schedule).name, measured.config.ladder, c["exact"],
                   c["ns"], c["gate_errors"], c["rate"], closed_form_tol(measured.config),
                   {"least squares": (m["learned_gate_error"], m["learned_gate_error_se"]),
                    "gradient descent": (m["learned_gate_error_gd"],
                                         m["learned_gate_error_gd_se"])})


def _figure(schedule, ladder, exact: Exactness, ns, gate_errors, rate_fit, tol, biases):
    """Left: transport error against depth (closed-form and Euler gates).  Right, top: the median
    relative error of least-squares gates against the number of pairs; right, bottom: the
    squared bias of the learned gates (least squares, gradient descent) in sampling variances,
    with 1 and Z_MAX standard errors, against the pass band around 0."""
    import numpy as np
    from matplotlib.ticker import NullFormatter

    def draw(fig):
        fig.set_size_inches(8.0, 5.2)
        grid = fig.add_gridspec(2, 2)
        left = fig.add_subplot(grid[:, 0])
        right, bias = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
        depths = exact.depths
        left.loglog(depths, [max(exact.closed_by_depth[L], np.finfo(float).tiny) for L in depths],
                    "o-", label=f"closed-form gates ({schedule})")
        for name, label in (("vp", "Euler, VP"), ("ve", "Euler, VE"), ("vp_sde", "E-M law, VP"),
                            ("ve_sde", "E-M law, VE")):
            fit = exact.euler_fits[name]
            (line,) = left.loglog(ladder, exact.euler[name], "s" if "sde" in name else "o",
                                  label=f"{label} (order {fit.order:.2f})", mfc="none")
            if math.isfinite(fit.order):
                rungs = exact.euler_rungs[name]
                left.loglog(rungs, fit.predict(rungs), "-", color=line.get_color(), alpha=0.6)
        left.axhline(tol, color="k", ls=":", lw=1, label=f"tolerance {tol:g}")
        left.set_xlabel("depth L")
        left.set_ylabel("relative error vs exact transport")
        left.set_title("C4: exact gates vs Euler")
        left.legend(fontsize=6, loc="center right")
        right.loglog(ns, gate_errors, "o", label=f"least squares (rate {rate_fit.order:.2f})")
        if math.isfinite(rate_fit.order):
            right.loglog(ns, rate_fit.predict(ns), "-", alpha=0.6)
        ref = 0.5 * gate_errors[-1] * (np.asarray(ns, float) / ns[-1]) ** -0.5
        right.loglog(ns, ref, "k--", lw=1, label="slope n^(-1/2)")
        right.set_xlabel("pairs per unit n")
        right.set_ylabel("median rel. gate error", fontsize=8)
        right.set_title("learned gates", fontsize=9)
        right.legend(fontsize=6, loc="upper right")
        for ax, ticks in ((left, depths), (right, ns)):
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks], fontsize=7, rotation=45)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
        names = list(biases)
        for k, name in enumerate(names):
            value, se = biases[name]
            bias.errorbar([value], [k], xerr=[[Z_MAX * se], [Z_MAX * se]], fmt="o", capsize=3,
                          color=f"C{k}", label=f"{name}: {value:+.3f} +/- {se:.3f}")
            bias.errorbar([value], [k], xerr=[[se], [se]], fmt="none", lw=3, color=f"C{k}")
        bias.axvline(0.0, color="k", lw=1, ls="--", label="unbiased gates (pass: 0 within "
                     f"{Z_MAX:g} se)")
        bias.set_yticks(range(len(names)), names, fontsize=7)
        bias.set_ylim(-0.8, len(names) - 0.2)
        bias.set_xlabel("squared bias / sampling variance (bars: 1 and "
                        f"{Z_MAX:g} se)", fontsize=8)
        bias.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
        bias.grid(True, axis="x", alpha=0.3)

    return draw
