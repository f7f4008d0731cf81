"""Gates learned from samples: least squares on forward pairs, and gradient descent on a
denoising loss through the stack.

Data.  ``forward_trajectories`` draws paths of the forward process on a grid: x_{t_min} from
p_{t_min}, then x_t = r(s, t) x_s + k(s, t) eps up the grid (``SDE.transition_coefs``).  Read in
the denoising order t_0 > t_1 > ... > t_L, consecutive states (x_{t_i}, x_{t_{i+1}}) are pairs from
the forward process, and x_{t_{i+1}} | x_{t_i} is the exact reverse kernel.

(a) Least squares.  Unit i of a stochastic stack says

    Delta_i := z_{i+1} - z_i = alpha_i F(z_i, t_i) + beta_i + gamma_i xi_i,

per channel.  For each unit and channel, ordinary least squares of Delta on (F, 1) over n pairs
gives alpha_hat, beta_hat, and gamma_hat = s = sqrt(RSS / (n - 2)), with the textbook standard
errors se(alpha) = s / sqrt(Sxx), se(beta) = s sqrt(1/n + Fbar^2 / Sxx), se(gamma) =
s / sqrt(2 (n - 2)).  For Gaussian data and F(z) = z in eigen-coordinates the model is exact
(the reverse kernel is linear with Gaussian noise independent of z_i), so alpha_hat and beta_hat
are unbiased and s^2 is unbiased for gamma^2.

(b) Gradient descent.  ``train_gates_by_denoising`` minimises, over the stack's own learnable
gates, the Gaussian negative log-likelihood of each denoising step,

    sum_i mean_n sum_channels [ (z_{i+1} - (z_i + alpha_i F(z_i) + beta_i))^2 / (2 gamma_i^2)
                                + log |gamma_i| ],

i.e. the reverse-step terms of the diffusion variational bound with learned mean and variance.
Its minimiser is the maximum-likelihood estimate: the least-squares alpha, beta and
gamma^2 = RSS / n.

The test statistic (``studentised_gate_error``).  With t_k = (gate_k - closed_form_k) / se_k for
every gate k, E[t_k^2] = 1 + (bias_k / se_k)^2 up to O(1/n), so

    E_hat = mean_k (t_k^2 - 1)

estimates the mean squared bias of the gates in units of their sampling variance: zero when the
gates converge to the closed form, positive otherwise.  Units are independent given the past of
the chain (the reverse noise of unit i is independent of every state before it), so the sums over
the gates of one (unit, channel) group are independent, and the standard error of E_hat is their
sample standard deviation over sqrt(number of groups), without a distributional assumption.
Under a bias the groups spread more too, so a bias confined to a few units shows by the number of
units it hits, not by n: E_hat / se grows like sqrt(#groups) times mean / sd of (bias / se)^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sde import SDE
from ..stack import GatedResidualStack
from ..stats import mean_se

__all__ = ["forward_trajectories", "GateFit", "least_squares_gates", "denoising_nll",
           "train_gates_by_denoising", "studentised_terms", "studentised_gate_error",
           "median_relative_error"]

GATE_NAMES = ("alpha", "beta", "gamma")


def forward_trajectories(sde: SDE, x0: torch.Tensor, times: torch.Tensor, *,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Paths of the forward SDE from data x0 (n, d) observed at ``times`` (any order, all >= 0).

    Returns shape (len(times), n, d) with row i the state at times[i].
    """
    times = torch.as_tensor(times, dtype=torch.float64).cpu()
    order = torch.argsort(times)
    ascending = times[order]
    r, k = sde.transition_coefs(ascending[:-1], ascending[1:])
    eps = torch.randn((len(times), *x0.shape), generator=generator, dtype=x0.dtype).to(x0.device)
    x = sde.perturb(x0, ascending[0].to(x0.dtype), eps[0])
    states = torch.empty_like(eps)
    states[order[0]] = x
    for j, r_j, k_j, e in zip(order[1:].tolist(), r.tolist(), k.tolist(), eps[1:], strict=True):
        x = r_j * x + k_j * e
        states[j] = x
    return states


@dataclass
class GateFit:
    """Per-unit, per-channel gates fitted from n pairs, with their standard errors."""

    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    alpha_se: torch.Tensor
    beta_se: torch.Tensor
    gamma_se: torch.Tensor
    n: int

    def gates(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}

    def standard_errors(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha_se, "beta": self.beta_se, "gamma": self.gamma_se}


def least_squares_gates(states: torch.Tensor, residual, times: torch.Tensor) -> GateFit:
    """Fit alpha_i, beta_i, gamma_i of every stochastic unit by least squares (module docstring).

    Args:
        states: (L + 1, n, C) states in the denoising order; unit i maps states[i] to states[i+1].
        residual: F(z, t) of the stack.
        times: the grid t_0..t_L (unit i is evaluated at t_i).
    """
    L, n = states.shape[0] - 1, states.shape[1]
    if n < 3:
        raise ValueError("a least-squares gate fit needs at least 3 pairs per unit")
    with torch.no_grad():
        F = torch.stack([residual(states[i], times[i]) for i in range(L)])  # (L, n, C)
        delta = states[1:] - states[:-1]
        F_bar, delta_bar = F.mean(1, keepdim=True), delta.mean(1, keepdim=True)
        Fc, dc = F - F_bar, delta - delta_bar
        Sxx = (Fc**2).sum(1)
        alpha = (Fc * dc).sum(1) / Sxx
        beta = delta_bar.squeeze(1) - alpha * F_bar.squeeze(1)
        rss = ((dc - alpha.unsqueeze(1) * Fc) ** 2).sum(1)
        s = torch.sqrt(rss / (n - 2))
        return GateFit(alpha=alpha, beta=beta, gamma=s,
                       alpha_se=s / Sxx.sqrt(),
                       beta_se=s * torch.sqrt(1.0 / n + F_bar.squeeze(1) ** 2 / Sxx),
                       gamma_se=s / math.sqrt(2 * (n - 2)), n=n)


def denoising_nll(stack: GatedResidualStack, states: torch.Tensor) -> torch.Tensor:
    """sum_i sum_channels mean_n of the Gaussian negative log-likelihood (up to a constant) of
    z_{i+1} = states[i+1] under unit i applied to states[i] (module docstring)."""
    zero = torch.zeros_like(states[0])
    loss = states.new_zeros(())
    for i in range(stack.depth):
        var = stack.gamma[i] ** 2
        mean = stack.unit(i, states[i], zero)
        loss = loss + ((states[i + 1] - mean) ** 2 / (2 * var) + 0.5 * var.log()).mean(0).sum()
    return loss


def train_gates_by_denoising(stack: GatedResidualStack, states: torch.Tensor, *,
                             max_steps: int = 50, tol: float = 1e-12) -> list[float]:
    """Natural-gradient descent (Fisher scoring, step 1) on ``denoising_nll`` over the stack's
    gates, until the loss changes by less than ``tol`` (relative) or after ``max_steps`` steps.

    The gradient comes from autograd through the stack; it is preconditioned by the inverse
    Fisher information of each (unit, channel): [[E F^2, E F], [E F, 1]] / gamma^2 for
    (alpha, beta) and 2 / gamma^2 for gamma, with E the sample mean over the pairs.  The gates'
    curvatures span many decades (E F^2 / gamma^2 runs from about 1e-1 to 1e5 over a VE grid),
    so no single learning rate serves plain gradient descent or Adam (400 Adam steps left the VE
    gates hundreds of standard errors from the minimiser); in the Fisher metric the (alpha, beta)
    step is exact and the gamma step is Newton's square-root iteration
    gamma <- (gamma + E r^2 / gamma) / 2, which converges from any positive start.

    A stack with fixed gates (euler, plain, inv-sqrt) has nothing to learn: it is left as it is
    and the loss history is empty.  Returns the loss before each step and after the last.
    """
    if not stack.stochastic or not stack.schedule.learnable:
        return []
    alpha, beta, gamma = stack.alpha, stack.beta, stack.gamma
    with torch.no_grad():
        F = torch.stack([stack.residuals[i](states[i], stack.times[i])
                         for i in range(stack.depth)])
        m1, m2 = F.mean(1), (F**2).mean(1)
        var_F = m2 - m1**2
    history = []
    for _ in range(max_steps):
        loss = denoising_nll(stack, states)
        history.append(float(loss.detach()))
        if len(history) > 1 and abs(history[-2] - history[-1]) <= tol * abs(history[-1]):
            return history
        g_alpha, g_beta, g_gamma = torch.autograd.grad(loss, (alpha, beta, gamma))
        with torch.no_grad():
            g2 = gamma**2
            alpha -= g2 * (g_alpha - m1 * g_beta) / var_F
            beta -= g2 * (m2 * g_beta - m1 * g_alpha) / var_F
            gamma -= 0.5 * g2 * g_gamma
    with torch.no_grad():
        history.append(float(denoising_nll(stack, states)))
    return history


def _comparable(gates: dict[str, torch.Tensor], closed_form: dict[str, torch.Tensor]):
    """(name, gate values) in the closed form's dtype and device; gamma as |gamma|, since the
    data do not identify its sign."""
    for name in GATE_NAMES:
        value = gates[name].detach().to(closed_form[name])
        yield name, value.abs() if name == "gamma" else value


def studentised_terms(gates: dict[str, torch.Tensor], standard_errors: dict[str, torch.Tensor],
                      closed_form: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over alpha, beta, gamma of t_k^2 - 1, one value per (unit, channel) group (flattened).

    t_k = (gate_k - closed_form_k) / se_k; gamma enters as |gamma| (the data do not identify its
    sign).
    """
    terms = []
    for name, value in _comparable(gates, closed_form):
        t = (value - closed_form[name]) / standard_errors[name].to(closed_form[name])
        terms.append(t**2 - 1.0)
    return torch.stack(terms).sum(0).flatten()


def studentised_gate_error(*groups: torch.Tensor) -> tuple[float, float]:
    """(E_hat, its standard error) from ``studentised_terms`` of one or more independent fits:
    E_hat = mean over gates of t_k^2 - 1, the standard error from the spread of the groups."""
    k = len(GATE_NAMES)
    mean, se = mean_se(torch.cat(groups))
    return mean / k, se / k


def median_relative_error(gates: dict[str, torch.Tensor],
                          closed_form: dict[str, torch.Tensor]) -> float:
    """The median over all gates of |gate - closed form| / |closed form|.

    Each gate's error scales as n^{-1/2}, so the median does too; unlike a root mean square it is
    not dominated by the few gates whose sampling error is largest relative to their size.
    """
    ratios = [((value - closed_form[name]).abs() / closed_form[name].abs()).flatten()
              for name, value in _comparable(gates, closed_form)]
    return float(torch.cat(ratios).median())
