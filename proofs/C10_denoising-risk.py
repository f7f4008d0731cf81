"""Symbolic steps of the C10 proof (proofs/C10_denoising-risk.md), checked with sympy.

Run: python proofs/C10_denoising-risk.py   (exit code 0 and "all steps verified" on success)
"""

import sympy as sp
from _steps import verified

e_th, e_st, e = sp.symbols("eps_theta eps_star eps", real=True)

# --- (1) expansion of the risk ----------------------------------------------------------------
R = (e_th - e) ** 2
verified("|eps_theta - eps|^2 = |eps_theta - eps*|^2 + |eps* - eps|^2 + 2 <., .>",
         sp.expand(R - ((e_th - e_st) ** 2 + (e_st - e) ** 2
                        + 2 * (e_th - e_st) * (e_st - e))) == 0)

# --- (2) Tweedie in one dimension: x0 ~ N(mu, S), x = m x0 + s eps --------------------------------
x, mu = sp.symbols("x mu", real=True)
m, s, S = sp.symbols("m s S", positive=True)
V = m**2 * S + s**2  # Var x_t
logp = -(x - m * mu) ** 2 / (2 * V)
score = sp.diff(logp, x)
# E[eps | x] for the jointly Gaussian (eps, x): Cov(eps, x) / Var(x) * (x - E x)
post_mean = s / V * (x - m * mu)
verified("E[eps | x_t] = -s d/dx log p_t (Tweedie), Gaussian data",
         sp.simplify(post_mean - (-s * score)) == 0)

# --- the posterior mean's ingredients: Cov(eps, x_t) = s, Var x_t = m^2 S + s^2 -----------------
x0s, es = sp.symbols("x0c epsc", real=True)  # centred x0 - mu and eps, independent
E = {x0s**2: S, es**2: 1, x0s * es: 0}
cov = sp.expand(es * (m * x0s + s * es)).subs(E)
var = sp.expand((m * x0s + s * es) ** 2).subs(E)
verified("Cov(eps, x_t) = s and Var(x_t) = m^2 S + s^2", sp.simplify(cov - s) == 0
         and sp.simplify(var - V) == 0)

# --- the negative control: a wrong noise level s' gives a biased cross term -----------------------
s2 = sp.Symbol("s_wrong", positive=True)
wrong = s2 / (m**2 * S + s2**2) * (x - m * mu)
bias = sp.simplify(wrong - post_mean)  # E[eps' - eps | x] = eps' - eps*
verified("a predictor built from a wrong s(t) differs from E[eps | x_t] unless s' = s",
         bias != 0 and sp.simplify(bias.subs(s2, s)) == 0)

print("all steps verified")
