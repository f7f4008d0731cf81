"""Symbolic steps of the C12 note (proofs/C12_depth-scaling.md), checked with sympy.

Run: python proofs/C12_depth-scaling.py   (exit code 0 and "all steps verified" on success)
"""

import sympy as sp
from _steps import is_zero, verified

# --- Step 1: the log-log least-squares slope of c L^s is s -------------------------------------
c, s = sp.symbols("c s", positive=True)
depths = [2, 4, 16]
x = [sp.log(d) for d in depths]
y = [sp.log(c * d ** s) for d in depths]
n = len(x)
xm, ym = sum(x) / n, sum(y) / n
slope = (sum((xi - xm) * (yi - ym) for xi, yi in zip(x, y, strict=True))
         / sum((xi - xm) ** 2 for xi in x))
verified("least-squares slope of log(c L^s) against log L on L = 2, 4, 16 equals s",
         is_zero(sp.expand_log(slope, force=True) - s))

# --- Step 2: the variance of a mean of n independent slopes ------------------------------------
sigma = sp.symbols("sigma", positive=True)
k = 4
S = sp.symbols(f"S0:{k}")
mean = sum(S) / k
var = sum(sp.diff(mean, Si) ** 2 * sigma ** 2 for Si in S)  # independent, each variance sigma^2
verified(f"Var(mean of {k} independent slopes) = sigma^2 / {k}", is_zero(var - sigma ** 2 / k))

# --- Step 3: the sensitivity bound is depth-free for alpha = 1/L, exp(L K) for alpha = 1 -------
K, L = sp.symbols("K L", positive=True)
i = sp.symbols("i", integer=True)
exponent_rdm = sp.summation(K / L, (i, 0, L - 1))
exponent_plain = sp.summation(K, (i, 0, L - 1))
verified("sum_i |alpha_i| K = K for alpha_i = 1/L (independent of L)", is_zero(exponent_rdm - K))
verified("sum_i |alpha_i| K = L K for alpha_i = 1", is_zero(exponent_plain - L * K))
verified("the log-log slope of exp(K) is 0 and of exp(L K) is L K (unbounded)",
         is_zero(sp.diff(sp.log(sp.exp(exponent_rdm)), L) * L)
         and is_zero(sp.diff(sp.log(sp.exp(exponent_plain)), L) * L - L * K))

# --- Step 4: L independent roundings: the error grows like sqrt(L) (slope 1/2), the bound like L
u, zn = sp.symbols("u z", positive=True)
variance = sp.summation((u * zn) ** 2, (i, 0, L - 1))  # independent e_i of variance (u |z|)^2
std = sp.sqrt(variance)
worst = sp.summation(u * zn, (i, 0, L - 1))
verified("std of a sum of L independent roundings u|z| is sqrt(L) u |z|: log-log slope 1/2",
         is_zero(sp.simplify(L * sp.diff(sp.log(std), L)) - sp.Rational(1, 2)))
verified("the worst case L u |z| has log-log slope 1",
         is_zero(sp.simplify(L * sp.diff(sp.log(worst), L)) - 1))

print("all steps verified")
