"""The self-test's library of seeded faults and negative controls, as data.

A :class:`Fault` is one wrong formula, written as a user would make it (a wrong coefficient, a
missing square root, a transposed basis, a mis-scaled noise), patched in process over the
attribute ``target`` ("package.module.Class.attr" or "package.module.function") by
:func:`patched`, one at a time, and restored after.  ``checks`` names the checks that rely on the
target and are expected to catch it: ``verify --self-test --quick`` runs the fault against those
only, the full self-test against every check.  To add a fault, append a ``Fault`` to
:data:`FAULTS`; to add a negative control, append a :class:`Control` to
:data:`CONTROLS`.

Faults in the training objective, the samplers and the model gates are not here: no theory check
runs that code.  The test suite pins them (tests/test_training_pins.py).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import torch

__all__ = ["Fault", "Control", "FAULTS", "CONTROLS", "patched", "resolve"]


@dataclass(frozen=True)
class Fault:
    """A seeded fault: ``replacement(original)`` returns the wrong version of ``target``."""

    name: str
    target: str
    replacement: Callable
    checks: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Control:
    """A negative control of one check: ``run(module, config)`` must give a FAIL."""

    name: str
    check: str
    run: Callable
    description: str = ""
    schedule: str | None = field(default=None)


def resolve(target: str):
    """(owner, attribute name, original value) of a dotted ``target``."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1], getattr(owner, parts[-1])
    raise ValueError(f"cannot resolve {target!r}")


@contextlib.contextmanager
def patched(fault: Fault):
    """Patch ``fault.target`` with its replacement, and every module of the package that imported
    the same object by name (``from .x import f``), so the fault reaches every caller; restored
    on exit."""
    owner, name, original = resolve(fault.target)
    wrong = fault.replacement(original)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(owner, name, wrong))
        if not isinstance(owner, type):
            for module_name, module in list(sys.modules.items()):
                if (module is not owner and module_name.startswith("rdm_dynamics")
                        and getattr(module, name, None) is original):
                    stack.enter_context(mock.patch.object(module, name, wrong))
        yield


# ------------------------------------------------------------------------------------------------
# The wrong formulas
# ------------------------------------------------------------------------------------------------

def _vp_marginal_var_without_square(original):
    def marginal_var(self, t):  # v = 1 - m instead of 1 - m^2
        return -torch.expm1(self.log_mean_coef(t))
    return marginal_var


def _vp_diffusion_without_sqrt(original):
    def diffusion_coef(self, t):  # g = beta instead of sqrt(beta)
        return self.beta(t)
    return diffusion_coef


def _ve_variance_from_blurred_data(original):
    def marginal_var(self, t):  # score_sde's sigma(t)^2: forgets to subtract sigma_min^2
        return self.sigma(t) ** 2
    return marginal_var


def _transition_ratio_inverted(original):
    def transition_coefs(self, s, t, like=None):
        r, k = original(self, s, t, like)
        return 1.0 / r, k  # m(s) / m(t) instead of m(t) / m(s)
    return transition_coefs


def _reverse_sde_with_pf_weight(original):
    def _drift_coefficients(self, f, g2):  # the PF-ODE's 1/2 in the reverse SDE's drift too
        return f, 0.5 * g2
    return _drift_coefficients


def _mixture_score_without_weights(original):
    def _score_given(self, x, terms, allowed=None):  # responsibilities without the log-weights
        log_joint, comp_scores = self._component_terms(x, *terms)  # (K, B), (K, B, d)
        resp = torch.softmax(log_joint - torch.log(self.weights).unsqueeze(1), dim=0)
        return (resp.unsqueeze(-1) * comp_scores).sum(0)
    return _score_given


def _mixture_diffused_without_square(original):
    def _diffused(self, sde, t):  # V = m lam + v instead of m^2 lam + v
        t = torch.as_tensor(t, dtype=self.means.dtype, device=self.means.device)
        if t.ndim:
            t = t.reshape(-1, 1, 1)
        m = sde.mean_coef(t)
        return m, m * self.eigvals + sde.marginal_var(t)
    return _diffused


def _gaussian_std_for_variance(original):
    def _m_V(self, sde, t):  # adds the std sqrt(v) where the variance v belongs
        t = torch.as_tensor(t, dtype=self.mean.dtype, device=self.mean.device)
        m = sde.mean_coef(t)
        return m, m**2 * self.eigvals + sde.marginal_std(t)
    return _m_V


def _gaussian_score_basis_transposed(original):
    def _score_coefficients(self, m, V):  # precision U^T diag(1/V) U instead of U diag(1/V) U^T
        return m * self.mean, (self.eigvecs.T * (-1.0 / V).unsqueeze(-2)) @ self.eigvecs
    return _score_coefficients


def _pf_map_without_sqrt(original):
    from ..laws import AffineMap

    def pf_ode_map(self, sde, a, b):  # scale V(b) / V(a) instead of its square root
        ma, Va = self._m_V(sde, a)
        mb, Vb = self._m_V(sde, b)
        A = (self.eigvecs * (Vb / Va)) @ self.eigvecs.T
        return AffineMap(A, mb * self.mean - A @ (ma * self.mean))
    return pf_ode_map


def _refine_without_half(original):
    def _refine(self, coarse):  # the bridge noise sqrt(dt) Z instead of sqrt(dt) Z / 2
        n = coarse.shape[0]
        dt = self.span / n
        left = 0.5 * coarse + math.sqrt(dt) * self._normal(n)
        return torch.stack([left, coarse - left], dim=1).reshape(2 * n, *self.shape)
    return _refine


def _refine_siblings_equal(original):
    def _refine(self, coarse):  # both halves get the same bridge noise (left twice)
        n = coarse.shape[0]
        dt = self.span / n
        left = 0.5 * coarse + 0.5 * math.sqrt(dt) * self._normal(n)
        return torch.stack([left, left], dim=1).reshape(2 * n, *self.shape)
    return _refine


def _normalised_by_dt(original):
    def normalised_increments(self, steps):  # dW / dt instead of dW / sqrt(dt)
        return self.increments(steps) / (self.span / steps)
    return normalised_increments


def _unit_without_beta(original):
    def step(z, alpha, residual, t, beta, noise):  # forgets + beta_i
        z_next = z + alpha * residual(z, t)
        return z_next if noise is None else z_next + noise
    return staticmethod(step)


def _unit_noise_squared(original):
    def noise(gamma, xi):  # gamma_i^2 xi: the noise variance used as its scale
        return gamma ** 2 * xi
    return staticmethod(noise)


def _propagated_noise_std(original):
    def affine_units(self, dim):  # noise covariance diag(gamma) instead of diag(gamma^2)
        A, c, noise = original(self, dim)
        return A, c, noise.sqrt()
    return affine_units


def _eigen_diagonal_transposed(original):
    def _eigen_diagonal(law, M):  # diag(U M U^T) instead of diag(U^T M U)
        return torch.einsum("ji,ik,jk->j", law.eigvecs, M, law.eigvecs)
    return _eigen_diagonal


def _least_squares_variance_for_std(original):
    def least_squares_gates(states, residual, times):  # gamma = s^2 instead of s
        fit = original(states, residual, times)
        return type(fit)(**{**fit.__dict__, "gamma": fit.gamma**2})
    return least_squares_gates


def _lipschitz_without_slope(original):
    from ..analysis.lipschitz import LipschitzBound

    def lipschitz_bound(self, t=None):  # forgets the linear part |slope|
        return LipschitzBound.spectral_norm(self.W)
    return lipschitz_bound


def _spectral_norm_as_max_row_sum(original):
    def spectral_norm(cls, W):  # the infinity norm where the spectral norm belongs
        value = float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=math.inf))
        return cls(value, "spectral-norm", True)
    return classmethod(spectral_norm)


def _gains_with_mean_alpha(original):
    def stack_gains(stack):  # the mean |alpha| over channels instead of the max
        gains = original(stack)
        alpha = stack.alpha.detach().to(torch.float64).cpu().abs()
        alpha = alpha.reshape(alpha.shape[0], -1)
        return gains * alpha.mean(1) / alpha.amax(1)
    return stack_gains


def _gronwall_skips_first_unit(original):
    def gronwall_bound(gains, delta0, errors=None):  # the product starts at unit 1
        shifted = torch.cat([torch.zeros_like(gains[:1]), gains[1:]])
        return original(shifted, delta0, errors)
    return gronwall_bound


def _roundoff_eps_for_u(original):
    def of(cls, dtype):  # unit roundoff eps / 4 (u = eps / 2 halved again)
        model = original.__func__(cls, dtype)
        return cls(dtype=model.dtype, u=model.u / 2, rho=model.rho / 2, eta=model.eta,
                   rho_fn=model.rho_fn / 2)
    return classmethod(of)


def _adjoints_reversed(original):
    def backprop_adjoints(stack, z0, loss, params=()):  # states listed from L down to 0
        out = original(stack, z0, loss, params)
        return type(out)(loss=out.loss, states=out.states, adjoints=out.adjoints.flip(0),
                         param_grads=out.param_grads)
    return backprop_adjoints


def _fit_order_mixed_logs(original):
    from ..stats import OrderFit

    def fit_order(depths, errors):  # log10 of the errors against the natural log of L
        fit = original(depths, errors)
        return OrderFit(order=fit.order / math.log(10), intercept=fit.intercept,
                        stderr=fit.stderr / math.log(10))
    return fit_order


def _fit_line_drops_last_point(original):
    def fit_line(x, values, *, log_x, missing):  # an off-by-one slice drops the last point
        return original(list(x)[:-1], list(values)[:-1], log_x=log_x, missing=missing)
    return fit_line


def _preactivation_variance_without_dim(original):
    def preactivation_variance(self, sq_norm):  # q = s_w^2 |z|^2 + s_b^2: forgets the 1/d
        return self.weight_std**2 * sq_norm + self.bias_std**2
    return preactivation_variance


def _coupled_weights_over_dim(original):
    def draw_coupled(self, z, xi, generator=None):  # W entries s_w / d instead of s_w / sqrt(d)
        W, b = original(self, z, xi, generator)
        return W / math.sqrt(self.dim), b
    return draw_coupled


def _layer_noise_not_normalised(original):
    def layer_noise(increments, depth):  # the coarse increments, not divided by sqrt(1/L)
        return original(increments, depth) / math.sqrt(depth)
    return layer_noise


def _limit_diffusion_kappa(original):
    def g(self, t, y):  # diffusion kappa instead of sqrt(kappa)
        return original(self, t, y) ** 2
    return g


def _hermite_slopes_swapped(original):
    def __call__(self, variance):  # the two slope basis functions exchanged
        s = variance.clamp(min=0).sqrt()
        pos = (s / self.step).clamp(max=len(self.values) - 1 - 1e-9)
        i = pos.floor().long()
        t = pos - i
        t2, t3 = t * t, t * t * t
        return ((2 * t3 - 3 * t2 + 1) * self.values[i] + (t3 - t2) * self.slopes[i]
                + (3 * t2 - 2 * t3) * self.values[i + 1] + (t3 - 2 * t2 + t) * self.slopes[i + 1])
    return __call__


# --- the trained-model machinery (C8 to C10), run on the self-test's small checkpoint ----------

def _conditional_ignores_class(original):
    def _score_given(self, x, terms, allowed=None):  # the class's mask never applied
        return original(self, x, terms, None)
    return _score_given


def _conditional_weights_dropped(original):
    def _score_given(self, x, terms, allowed=None):  # inside a class: equal weights
        if allowed is None:
            return original(self, x, terms, None)
        centres, V, log_coef = terms
        return original(self, x, (centres, V, log_coef - torch.log(self.weights)), allowed)
    return _score_given


def _optimal_eps_variance_for_std(original):
    def optimal_eps(self, x, t, sde, allowed=None):  # -v(t) score instead of -sqrt(v(t)) score
        var = sde.marginal_var(torch.as_tensor(t, dtype=self.means.dtype))
        return -(var.reshape(-1, 1) if var.ndim else var) * self.score(x, t, sde, allowed)
    return optimal_eps


def _mixture_diffused_std_for_var(original):
    def _diffused(self, sde, t):  # V = m^2 lam + sqrt(v) instead of + v
        m, V = original(self, sde, t)
        v = V - m**2 * self.eigvals
        return m, m**2 * self.eigvals + v.sqrt()
    return _diffused


def _log_det_not_halved(original):
    def _time_terms(self, m, V):  # log w - (log det + d log 2 pi), the 1/2 forgotten
        centres, V, log_coef = original(self, m, V)
        return centres, V, 2 * log_coef - torch.log(self.weights)
    return _time_terms


def _responsibilities_wrong_axis(original):
    def responsibilities(self, x, t=None, sde=None):  # normalised over the samples
        log_joint = self._component_terms(x, *self._time_terms(*self._coefficients(sde, t)))[0]
        return torch.softmax(log_joint, dim=1).T
    return responsibilities


def _excess_as_risk_gap(original):
    def risk_terms(eps_theta, eps_star, x0, y, t, noise, sde):  # excess = R - R*
        r = original(eps_theta, eps_star, x0, y, t, noise, sde)
        return type(r)(r.risk, r.bayes, r.risk - r.bayes, r.cross)
    return risk_terms


def _cross_term_sign(original):
    def risk_terms(eps_theta, eps_star, x0, y, t, noise, sde):  # 2 <eps* - eps_theta, ...>
        r = original(eps_theta, eps_star, x0, y, t, noise, sde)
        return type(r)(r.risk, r.bayes, r.excess, -r.cross)
    return risk_terms


def _linear_response_forgets_last(original):
    def linear_response(net64, x, t, y, perturbations):  # range(L - 1): the last unit left out
        last = len(net64.residual_units()) - 1
        return original(net64, x, t, y, {i: r for i, r in perturbations.items() if i != last})
    return linear_response


def _local_error_against_reference(original):
    from ..analysis.backbone_probes import LowpPass, reference_kernels, run_traced

    def lowp_units_pass(net64, x, t, y, dtype):  # r_i = z~_i - z_i (the float64 pass's unit
        out = original(net64, x, t, y, dtype)   # output), not U~_i(a~_i) - U_i(a~_i)
        with reference_kernels():
            ref = run_traced(net64, x, t, y)
        return LowpPass(out.trace, [z - r for z, r in zip(out.trace.outputs, ref.outputs,
                                                          strict=True)])
    return lowp_units_pass


def _reference_from_bf16_copy(original):
    def float64(self):  # the float64 reference made from a bfloat16 copy of the weights
        import copy

        return copy.deepcopy(self.net).bfloat16().double().eval()
    return float64


def _unit_vjp_without_identity(original):
    def unit_vjp(unit, z, c, e, cotangent):  # p dF/dz: the branch's Jacobian only
        with torch.enable_grad():
            a = z.detach().requires_grad_(True)
            return torch.autograd.grad(unit(a, c, e) - a, a, cotangent)[0]
    return unit_vjp


def _chain_adjoint_forward(original):
    def chain_adjoint(p_last, step, units):  # the steps applied first unit first
        p = p_last
        for i in range(units):
            p = step(i, p)
        return p
    return chain_adjoint


def _sampler_variance_as_std(original):
    def __init__(self, law, seed=0, name="digits-gmm"):  # factor U diag(lam), not sqrt(lam)
        original(self, law, seed, name)
        m = law.mixture
        self._factors = m.eigvecs * m.eigvals.unsqueeze(-2)
    return __init__


def _sampler_uniform_component(original):
    def draw(self, index):  # the component drawn uniformly, not by weight
        from ..noise import stream_generator

        g = stream_generator(self.seed, index)
        m = self.law.mixture
        k = int(torch.randint(len(m.weights), (1,), generator=g))
        eps = torch.randn(m.dim, generator=g, dtype=m.means.dtype)
        return m.means[k] + self._factors[k] @ eps, k
    return draw


def _sampler_label_is_component(original):
    def batch(self, indices):  # the label: the component's index, not its class
        drawn = [self.draw(int(i)) for i in indices]
        x = torch.stack([v for v, _ in drawn]).float()
        return self.law.images(x), torch.tensor([k for _, k in drawn])
    return batch


def _time_bins_from_zero(original):
    def time_bins(t_min, T, bins):  # equal bins of [0, T]
        return original(0.0, T, bins)
    return time_bins


SDE, LAWS, NOISE, STACK = "rdm_dynamics.sde", "rdm_dynamics.laws", "rdm_dynamics.noise", \
    "rdm_dynamics.stack"
ANALYSIS, STATS = "rdm_dynamics.analysis", "rdm_dynamics.stats"
PROBES, KNOWN = f"{ANALYSIS}.backbone_probes", "rdm_dynamics.training.known_law"
C8, C9, C10 = "trained-propagation", "trained-sensitivity", "denoising-risk"
DENOISING = ("pf-ode", "reverse-sde")
IID = f"{ANALYSIS}.iid_limit"

FAULTS: list[Fault] = [
    Fault("vp-variance-missing-square", f"{SDE}.VPSDE.marginal_var",
          _vp_marginal_var_without_square, DENOISING + ("gate-moments",),
          "VP marginal variance 1 - m instead of 1 - m^2"),
    Fault("vp-diffusion-missing-sqrt", f"{SDE}.VPSDE.diffusion_coef",
          _vp_diffusion_without_sqrt, DENOISING + ("gate-moments",),
          "VP diffusion g = beta instead of sqrt(beta)"),
    Fault("ve-variance-blurred-data", f"{SDE}.VESDE.marginal_var",
          _ve_variance_from_blurred_data, DENOISING + ("gate-moments",),
          "VE variance sigma(t)^2 (score_sde's) instead of sigma(t)^2 - sigma_min^2"),
    Fault("transition-ratio-inverted", f"{SDE}.SDE.transition_coefs",
          _transition_ratio_inverted, ("reverse-sde", "gate-moments"),
          "transition mean ratio m(s)/m(t) instead of m(t)/m(s)"),
    Fault("reverse-drift-half-score", f"{SDE}.ReverseSDE._drift_coefficients",
          _reverse_sde_with_pf_weight,
          DENOISING, "reverse SDE drift f - g^2 s / 2 (the PF-ODE's 1/2)"),
    Fault("mixture-score-no-weights", f"{LAWS}.GaussianMixture._score_given",
          _mixture_score_without_weights, DENOISING + ("gate-moments",),
          "mixture score: responsibilities without the weights"),
    Fault("mixture-marginal-missing-square", f"{LAWS}.GaussianMixture._diffused",
          _mixture_diffused_without_square, DENOISING + ("gate-moments",),
          "mixture marginal covariance m Sigma + v instead of m^2 Sigma + v"),
    Fault("gaussian-marginal-std-for-var", f"{LAWS}.Gaussian._m_V", _gaussian_std_for_variance,
          DENOISING + ("gate-moments",),
          "Gaussian marginal covariance m^2 Sigma + sqrt(v) instead of + v"),
    Fault("gaussian-score-basis-transposed", f"{LAWS}.Gaussian._score_coefficients",
          _gaussian_score_basis_transposed, DENOISING,
          "Gaussian score's precision built with U^T in place of U (a transposed basis)"),
    Fault("gaussian-pf-map-missing-sqrt", f"{LAWS}.Gaussian.pf_ode_map", _pf_map_without_sqrt,
          ("pf-ode", "gate-moments"), "PF-ODE flow map scale V(b)/V(a) without its square root"),
    Fault("brownian-bridge-missing-half", f"{NOISE}.BrownianPath._refine",
          _refine_without_half, ("reverse-sde",), "Levy refinement noise sqrt(dt) instead of "
          "sqrt(dt)/2"),
    Fault("brownian-bridge-siblings-equal", f"{NOISE}.BrownianPath._refine",
          _refine_siblings_equal, ("reverse-sde",), "Levy refinement: both halves the same"),
    Fault("brownian-normalised-by-dt", f"{NOISE}.BrownianPath.normalised_increments",
          _normalised_by_dt, ("reverse-sde",), "noise dW / dt instead of dW / sqrt(dt)"),
    Fault("unit-forgets-beta", f"{STACK}.GatedResidualStack._step", _unit_without_beta,
          ("depth-limit", "error-propagation", "residual-sensitivity", "gate-moments"),
          "gated unit without + beta_i"),
    Fault("unit-noise-variance-as-scale", f"{STACK}.GatedResidualStack._noise",
          _unit_noise_squared, ("reverse-sde", "gate-moments"),
          "stochastic unit adds gamma_i^2 xi instead of gamma_i xi"),
    Fault("propagated-noise-std-as-variance", f"{STACK}.GatedResidualStack.affine_units",
          _propagated_noise_std, ("reverse-sde", "gate-moments", "pf-ode"),
          "moment propagation adds diag(gamma) instead of diag(gamma^2)"),
    Fault("gate-basis-transposed", f"{ANALYSIS}.gaussian_gates._eigen_diagonal",
          _eigen_diagonal_transposed, ("gate-moments",),
          "closed-form gates read diag(U M U^T) instead of diag(U^T M U)"),
    Fault("fitted-gamma-missing-sqrt", f"{ANALYSIS}.gate_fitting.least_squares_gates",
          _least_squares_variance_for_std, ("gate-moments",),
          "least-squares noise gate = residual variance instead of its square root"),
    Fault("lipschitz-forgets-slope", f"{ANALYSIS}.fields.TanhLayer.lipschitz_bound",
          _lipschitz_without_slope, ("error-propagation",),
          "Lip(slope z + tanh(W z + c)) = ||W|| (forgets |slope|)"),
    Fault("spectral-norm-is-inf-norm", f"{ANALYSIS}.lipschitz.LipschitzBound.spectral_norm",
          _spectral_norm_as_max_row_sum, ("error-propagation",),
          "certified ||W||_2 computed as the max row sum ||W||_inf"),
    Fault("gains-mean-alpha", f"{ANALYSIS}.lipschitz.stack_gains", _gains_with_mean_alpha,
          ("error-propagation",), "Gronwall gain with the mean |alpha| over channels, not max"),
    Fault("gronwall-skips-first-unit", f"{ANALYSIS}.propagation.gronwall_bound",
          _gronwall_skips_first_unit, ("error-propagation",),
          "Gronwall product over units 1..L-1 (off by one)"),
    Fault("roundoff-halved", f"{ANALYSIS}.rounding.RoundingModel.of", _roundoff_eps_for_u,
          ("error-propagation",), "unit roundoff eps/4 instead of eps/2"),
    Fault("adjoints-reversed", f"{ANALYSIS}.adjoint.backprop_adjoints", _adjoints_reversed,
          ("residual-sensitivity",), "adjoints p_i listed from L down to 0"),
    Fault("iid-preactivation-variance-missing-dim", f"{IID}.TanhWeightLaw.preactivation_variance",
          _preactivation_variance_without_dim, ("iid-depth-limit",),
          "C7's kappa from q = s_w^2 |z|^2 + s_b^2 (forgets the 1/d)"),
    Fault("iid-weights-std-over-dim", f"{IID}.TanhWeightLaw.draw_coupled",
          _coupled_weights_over_dim, ("iid-depth-limit",),
          "C7's weights drawn with std s_w / d instead of s_w / sqrt(d)"),
    Fault("iid-layer-noise-not-normalised", f"{IID}.layer_noise", _layer_noise_not_normalised,
          ("iid-depth-limit",), "C7's layer noise B(t_i+1) - B(t_i), not normalised by sqrt(L)"),
    Fault("iid-limit-diffusion-kappa", f"{IID}.IIDLimitSDE.g", _limit_diffusion_kappa,
          ("iid-depth-limit",), "C7's limit SDE with diffusion kappa instead of sqrt(kappa)"),
    Fault("iid-kappa-hermite-slopes-swapped", f"{IID}.KappaTable.__call__",
          _hermite_slopes_swapped, ("iid-depth-limit",),
          "kappa's cubic Hermite interpolation with its two slope terms exchanged"),
    Fault("fit-order-mixed-logs", f"{STATS}.fit_order", _fit_order_mixed_logs,
          ("depth-limit", "pf-ode", "reverse-sde", "gate-moments", "residual-sensitivity",
           "iid-depth-limit"), "order fit with log10 of the errors against ln L"),
    Fault("fit-line-drops-last-point", f"{STATS}.fit_line", _fit_line_drops_last_point,
          ("depth-limit", "pf-ode", "reverse-sde", "gate-moments", "error-propagation",
           "residual-sensitivity"), "line fit leaves out the deepest rung (off by one)"),
] + [
    Fault("trained-conditional-ignores-class", f"{LAWS}.GaussianMixture._score_given",
          _conditional_ignores_class, (C10,),
          "class-conditional denoiser: the class mask never applied (the unconditional one)"),
    Fault("trained-class-weights-dropped", f"{LAWS}.GaussianMixture._score_given",
          _conditional_weights_dropped, (C10,),
          "class-conditional denoiser: equal weights for the components inside a class"),
    Fault("trained-eps-variance-for-std", f"{LAWS}.GaussianMixture.optimal_eps",
          _optimal_eps_variance_for_std, (C10,), "exact denoiser -v(t) score, not -sqrt(v) score"),
    Fault("trained-diffused-std-for-var", f"{LAWS}.GaussianMixture._diffused",
          _mixture_diffused_std_for_var, (C10,),
          "diffused component covariances m^2 Sigma + sqrt(v) instead of + v"),
    Fault("trained-log-det-not-halved", f"{LAWS}.GaussianMixture._time_terms",
          _log_det_not_halved, (C10,), "component log-density without the 1/2 of log det"),
    Fault("trained-responsibilities-wrong-axis", f"{LAWS}.GaussianMixture.responsibilities",
          _responsibilities_wrong_axis, (C10,),
          "responsibilities normalised over the samples, not the components"),
    Fault("trained-excess-as-risk-gap", f"{ANALYSIS}.denoising_risk.risk_terms",
          _excess_as_risk_gap, (C10,), "excess risk computed as R - R*"),
    Fault("trained-cross-term-sign", f"{ANALYSIS}.denoising_risk.risk_terms", _cross_term_sign,
          (C10,), "identity's cross term with the wrong sign"),
    Fault("trained-linear-response-forgets-last", f"{PROBES}.linear_response",
          _linear_response_forgets_last, (C8,),
          "linear response summed over units 0..L-2 (the last unit's rounding left out)"),
    Fault("trained-local-error-vs-reference", f"{PROBES}.lowp_units_pass",
          _local_error_against_reference, (C8,),
          "local rounding error against the float64 pass's unit output, not the unit at the "
          "pass's own input"),
    Fault("trained-reference-from-bf16", "rdm_dynamics.checks.trained_subject.Subject.float64",
          _reference_from_bf16_copy, (C8,),
          "the float64 rounding reference built from a bfloat16 copy of the weights"),
    Fault("trained-vjp-without-identity", f"{PROBES}.unit_vjp", _unit_vjp_without_identity,
          (C9,), "unit adjoint step p dF/dz, the identity path forgotten"),
    Fault("trained-chain-adjoint-forward", f"{PROBES}.chain_adjoint", _chain_adjoint_forward,
          (C9,), "adjoint propagated through the units first to last"),
    Fault("trained-sampler-variance-as-std", f"{KNOWN}.KnownLawData.__init__",
          _sampler_variance_as_std, (C10,),
          "known-law sampler's factor U diag(lam) (variance used as std)"),
    Fault("trained-sampler-uniform-component", f"{KNOWN}.KnownLawData.draw",
          _sampler_uniform_component, (C10,), "known-law sampler draws components uniformly"),
    Fault("trained-sampler-label-is-component", f"{KNOWN}.KnownLawData.batch",
          _sampler_label_is_component, (C10,),
          "known-law sampler labels an image by its component index, not its class"),
    Fault("trained-time-bins-from-zero", f"{ANALYSIS}.denoising_risk.time_bins",
          _time_bins_from_zero, (C10,), "C10's time bins cover [0, T], not [t_min, T]"),
]


# ------------------------------------------------------------------------------------------------
# Negative controls: every check must fail on each
# ------------------------------------------------------------------------------------------------

def _scheduled(schedule: str):
    def run(module, config):
        import dataclasses

        from .claim import run_claim
        return run_claim(module, dataclasses.replace(config, schedule=schedule))
    return run


def _linearised_diffusion(sq_norm):
    """sqrt(q(|z|^2)) of C7's law: the diffusion if tanh were the identity."""
    from .iid_depth_limit import LAW

    return LAW.preactivation_variance(sq_norm).sqrt()


def _wrong_noise():
    from ..sde import VPSDE

    return VPSDE(beta_max=10.0)


def _measure(**kwargs):
    def run(module, config):
        from .claim import run_claim
        return run_claim(module, config, **kwargs)
    return run


CHECK_IDS = ("depth-limit", "pf-ode", "reverse-sde", "gate-moments", "error-propagation",
             "residual-sensitivity")

CONTROLS: list[Control] = (
    [Control(f"{cid}:plain", cid, _scheduled("plain"), "plain residuals (alpha_i = 1)")
     for cid in CHECK_IDS]
    + [Control(f"{cid}:inv-sqrt", cid, _scheduled("inv-sqrt"), "alpha_i = 1/sqrt(L)")
       for cid in CHECK_IDS]
    + [Control("gate-moments:euler", "gate-moments", _scheduled("euler"), "fixed Euler gates"),
       Control("pf-ode:wrong-score-sign", "pf-ode", _measure(score_sign=-1.0, sdes=("vp",)),
               "score of the wrong sign"),
       Control("pf-ode:no-one-half", "pf-ode", _measure(pf_weight=1.0, sdes=("vp",)),
               "PF-ODE drift without its 1/2"),
       Control("reverse-sde:wrong-score-sign", "reverse-sde",
               _measure(score_sign=-1.0, sdes=("vp",)), "score of the wrong sign"),
       Control("reverse-sde:noise-h", "reverse-sde", _measure(noise_power=1.0, sdes=("vp",)),
               "noise g h instead of g sqrt(h)"),
       Control("gate-moments:shifted-times", "gate-moments", _measure(time_shift=0.02),
               "gates computed and fitted on shifted times"),
       Control("iid-depth-limit:shared-weights", "iid-depth-limit", _measure(weights="shared"),
               "one weight draw reused at every layer (not i.i.d. across depth)"),
       Control("iid-depth-limit:kappa-linearised", "iid-depth-limit",
               _measure(diffusion=_linearised_diffusion),
               "the limit's kappa replaced by its linearisation q (tanh taken as the identity)"),
       Control("trained-propagation:skip-unit", C8, _measure(skip_units=(0,)),
               "unit 0's rounding error left out of the linear-response prediction"),
       Control("trained-sensitivity:skip-vjp", C9, _measure(skip_vjp=(1,)),
               "unit 1's Jacobian left out of its adjoint step"),
       Control("denoising-risk:wrong-noise-level", C10, _measure(bayes_sde=_wrong_noise()),
               "the Bayes reference built for beta_max = 10 instead of the run's SDE"),
       Control("denoising-risk:label-blind-reference", C10,
               _measure(label_blind_reference=True),
               "the unconditional Bayes reference where the class's was asked")])

#: The controls ``--self-test --quick`` runs: every check-specific control, and the plain
#: control of the checks that have no specific one (the full self-test runs them all; the test
#: suite runs plain and inv-sqrt for every check, tests/test_verdicts.py).
QUICK_CONTROLS = tuple(
    c.name for c in CONTROLS
    if not c.name.endswith(":inv-sqrt")
    and not (c.name.endswith(":plain") and c.check in ("pf-ode", "reverse-sde", "gate-moments")))
