"""Symbolic steps of the C4 proof (proofs/C4_gate-moments.md), checked with sympy.

Run: python proofs/C4_gate-moments.py   (exit code 0 and "all steps verified" on success; the step
numbers [n] are the ones the proof cites)
"""

import sys

import sympy as sp

STEP = 0


def verified(text: str, expr=None) -> None:
    """Check that expr simplifies to 0 (when given) and print the step; exit 1 if it does not."""
    global STEP
    STEP += 1
    if expr is not None and sp.simplify(expr) != 0:
        print(f"FAILED: [{STEP}] {text}: residual {sp.simplify(expr)}")
        sys.exit(1)
    print(f"verified: [{STEP}] {text}")


t, s, u, h = sp.symbols("t s u h", positive=True)
lam, b0, b1, smin, smax = sp.symbols("lambda beta_min beta_max sigma_min sigma_max", positive=True)

# --- Step group 1: V' = 2 f V + g^2 for the three SDEs of sde.py ---------------------------------
beta = b0 + t * (b1 - b0)
logm_vp = -t**2 * (b1 - b0) / 4 - t * b0 / 2
m_vp = sp.exp(logm_vp)
sdes = {
    "VP": (-beta / 2, beta, m_vp, 1 - m_vp**2),
    "sub-VP": (-beta / 2, beta * (1 - sp.exp(4 * logm_vp)), m_vp, (1 - m_vp**2) ** 2),
    "VE": (sp.Integer(0),
           (smin * (smax / smin) ** t) ** 2 * 2 * sp.log(smax / smin),
           sp.Integer(1),
           smin**2 * ((smax / smin) ** (2 * t) - 1)),
}
for name, (f, g2, m, v) in sdes.items():
    verified(f"{name}: m' = f m", sp.diff(m, t) - f * m)
    V = m**2 * lam + v
    verified(f"{name}: V(t) = m^2 lam + v solves V' = 2 f V + g^2",
             sp.diff(V, t) - (2 * f * V + g2))

# --- Step group 2: the PF-ODE flow map in one eigen-direction ------------------------------------
Vf, gf, mf = sp.Function("V"), sp.Function("g"), sp.Function("m")
ff = (sp.diff(Vf(t), t) - gf(t) ** 2) / (2 * Vf(t))  # f expressed through V' = 2 f V + g^2
mu = sp.Symbol("mu")
ybar0 = sp.Symbol("ybar_a")
a = sp.Symbol("a", positive=True)
ybar = sp.sqrt(Vf(t) / Vf(a)) * ybar0
verified("ybar(t) = sqrt(V(t)/V(a)) ybar(a) solves ybar' = (f + g^2 / (2V)) ybar",
         sp.diff(ybar, t) - (ff + gf(t) ** 2 / (2 * Vf(t))) * ybar)
y = sp.Symbol("y")
score = -(y - mf(t) * mu) / Vf(t)
pf_drift = ff * y - gf(t) ** 2 / 2 * score
dm = ff * mf(t)  # m' = f m
verified("PF drift minus m' mu equals (f + g^2/(2V)) (y - m mu): ybar = y - m mu obeys the ODE",
         pf_drift - dm * mu - (ff + gf(t) ** 2 / (2 * Vf(t))) * (y - mf(t) * mu))

# --- Step group 3: closed-form deterministic gates and telescoping --------------------------------
L = 4
Vs = sp.symbols(f"V0:{L + 1}", positive=True)
ms = sp.symbols(f"m0:{L + 1}", positive=True)
z0 = sp.Symbol("z0")
z = z0
for i in range(L):
    C = sp.sqrt(Vs[i + 1] / Vs[i])
    alpha, beta_i = C - 1, (ms[i + 1] - C * ms[i]) * mu
    verified(f"unit {i}: z + alpha z + beta equals the flow map C z + (m' - C m) mu",
             (z0 + alpha * z0 + beta_i) - (C * z0 + (ms[i + 1] - C * ms[i]) * mu))
    z = z + alpha * z + beta_i
Ctot = sp.sqrt(Vs[L] / Vs[0])
verified(f"{L} closed-form units compose (telescope) to the one-step flow map t_0 -> t_{L}",
         sp.expand(z - (Ctot * z0 + (ms[L] - Ctot * ms[0]) * mu)))

# --- Step group 4: the reverse kernel from Bayes' rule -------------------------------------------
m_s, m_t, m_u, v_s, v_t, v_u = sp.symbols("m_s m_t m_u v_s v_t v_u", positive=True)


def V_(m, v):
    return m**2 * lam + v


def r_(m_from, m_to):
    return m_to / m_from


def k2_(m_from, v_from, m_to, v_to):
    return v_to - r_(m_from, m_to) ** 2 * v_from


verified("V_t = r^2 V_s + k^2 (forward transition x_t = r x_s + k eps)",
         V_(m_t, v_t) - (r_(m_s, m_t) ** 2 * V_(m_s, v_s) + k2_(m_s, v_s, m_t, v_t)))
ys, yt = sp.symbols("y_s y_t")
Vs_, Vt_ = V_(m_s, v_s), V_(m_t, v_t)
r, k2 = r_(m_s, m_t), k2_(m_s, v_s, m_t, v_t)
log_joint = -(ys - m_s * mu) ** 2 / (2 * Vs_) - (yt - r * ys) ** 2 / (2 * k2)  # p(y_s) p(y_t|y_s)
precision = -sp.diff(log_joint, ys, 2)
post_mean = sp.solve(sp.diff(log_joint, ys), ys)[0]
A = r * Vs_ / Vt_
S = Vs_ * k2 / Vt_
verified("Bayes: Var(y_s | y_t) = V_s k^2 / V_t", 1 / precision - S)
verified("Bayes: E(y_s | y_t) = m_s mu + (r V_s / V_t) (y_t - m_t mu)",
         post_mean - (m_s * mu + A * (yt - m_t * mu)))
alpha, beta_s = A - 1, m_s * mu - A * m_t * mu  # gamma = sqrt(S)
verified("stochastic unit with alpha = A - 1, beta = m_s mu - A m_t mu has the kernel's mean",
         (yt + alpha * yt + beta_s) - post_mean)

# Chapman-Kolmogorov: kernels t -> u -> s compose to the kernel t -> s (times s < u < t)
Vu_ = V_(m_u, v_u)


def A_(m_lo, v_lo, m_hi, v_hi):
    return r_(m_lo, m_hi) * V_(m_lo, v_lo) / V_(m_hi, v_hi)


def S_(m_lo, v_lo, m_hi, v_hi):
    return V_(m_lo, v_lo) * k2_(m_lo, v_lo, m_hi, v_hi) / V_(m_hi, v_hi)


verified("composed gains: A(s|u) A(u|t) = A(s|t)",
         A_(m_s, v_s, m_u, v_u) * A_(m_u, v_u, m_t, v_t) - A_(m_s, v_s, m_t, v_t))
verified("composed variances: A(s|u)^2 S(u|t) + S(s|u) = S(s|t)",
         A_(m_s, v_s, m_u, v_u) ** 2 * S_(m_u, v_u, m_t, v_t) + S_(m_s, v_s, m_u, v_u)
         - S_(m_s, v_s, m_t, v_t))
verified("composed offsets: the mean map of two kernels is the mean map of one",
         sp.expand(A_(m_s, v_s, m_u, v_u) * (m_u * mu + A_(m_u, v_u, m_t, v_t) * (yt - m_t * mu))
                   + m_s * mu - A_(m_s, v_s, m_u, v_u) * m_u * mu
                   - (m_s * mu + A_(m_s, v_s, m_t, v_t) * (yt - m_t * mu))))
verified("PF gain from the kernel: C^2 = A^2 + S / V_t = V_s / V_t", A**2 + S / Vt_ - Vs_ / Vt_)

# --- Step group 5: Euler gates are the first-order expansion of the closed form ------------------
V0, V1, V2, f0, f1, g0 = sp.symbols("V0 V1 V2 f0 f1 g0", real=True)
# Taylor data at time t, stepping to t - h (the denoising direction): V(t - h) = V0 - h V1 + ...
V1_ode = 2 * f0 * V0 + g0**2
C_series = sp.series(sp.sqrt((V0 - h * V1 + h**2 * V2 / 2) / V0), h, 0, 2).removeO()
a_pf = -f0 - g0**2 / (2 * V0)  # the PF denoising field's gain (gaussian_gates)
verified("PF: C = sqrt(V(t-h)/V(t)) = 1 + h a(t) + O(h^2), a = -f - g^2/(2V)",
         C_series.subs(V1, V1_ode) - (1 + h * a_pf))
# reverse kernel over one step: r = m(t)/m(t-h) = exp(int f) = 1 + h f0 + O(h^2),
# k^2 = v(t) - r^2 v(t-h) = h g0^2 + O(h^2) (since v' = 2 f v + g^2)
r_step = 1 + h * f0 + h**2 * (f0**2 - f1) / 2
v0, v1 = sp.symbols("v0 v1", real=True)
k2_step = sp.series((v0) - r_step**2 * (v0 - h * v1), h, 0, 2).removeO()
verified("one-step transition variance k^2 = h g^2 + O(h^2)",
         k2_step.subs(v1, 2 * f0 * v0 + g0**2) - h * g0**2)
A_series = sp.series(r_step * (V0 - h * V1 + h**2 * V2 / 2) / V0, h, 0, 2).removeO()
a_sde = -f0 - g0**2 / V0  # the reverse-SDE denoising field's gain
verified("SDE: A = r V(t-h)/V(t) = 1 + h a(t) + O(h^2), a = -f - g^2/V",
         A_series.subs(V1, V1_ode) - (1 + h * a_sde))
S_series = sp.series((V0 - h * V1) * (h * g0**2) / V0, h, 0, 2).removeO()
verified("SDE: gamma^2 = V(t-h) k^2 / V(t) = h g^2 + O(h^2): Euler-Maruyama's gamma = g sqrt(h)",
         S_series - h * g0**2)

# --- Step group 6: least squares, the denoising likelihood, moment matching ----------------------
n = 4
xs = sp.symbols(f"x0:{n}", real=True)
X = sp.Matrix([[xi, 1] for xi in xs])
XtX_inv = (X.T * X).inv()
xbar = sum(xs) / n
Sxx = sum((xi - xbar) ** 2 for xi in xs)
verified("OLS: [(X^T X)^-1]_alpha,alpha = 1 / Sxx (se(alpha) = s / sqrt(Sxx))",
         XtX_inv[0, 0] - 1 / Sxx)
verified("OLS: [(X^T X)^-1]_beta,beta = 1/n + xbar^2 / Sxx (se(beta) = s sqrt(1/n + xbar^2/Sxx))",
         XtX_inv[1, 1] - (sp.Rational(1, n) + xbar**2 / Sxx))
nu, q = sp.symbols("nu q", positive=True)
chi2_density = q ** (nu / 2 - 1) * sp.exp(-q / 2) / (2 ** (nu / 2) * sp.gamma(nu / 2))
inv_mean = sp.gammasimp(sp.integrate(chi2_density / q, (q, 0, sp.oo), conds="none"))
verified("E t^2 = E Z^2 * nu E[1/chi2_nu] = nu / (nu - 2) for t = Z / sqrt(chi2_nu / nu): "
         "E_hat has mean O(1/n) when the gates are unbiased", nu * inv_mean - nu / (nu - 2))
gam, ER2 = sp.symbols("gamma E_r2", positive=True)
nll = ER2 / (2 * gam**2) + sp.log(gam)
verified("the denoising NLL in gamma is minimised at gamma^2 = E r^2 (the MLE RSS / n)",
         sp.diff(nll, gam).subs(gam, sp.sqrt(ER2)))
fisher_step = gam - gam**2 / 2 * sp.diff(nll, gam)
verified("the Fisher-scoring step in gamma is Newton's square root: (gamma + E r^2 / gamma) / 2",
         fisher_step - (gam + ER2 / gam) / 2)
mt_, ms_, Vt2, Vs2, c = sp.symbols("mt ms Vt Vs c", real=True)
alpha_ls, beta_ls, gamma2_ls = c / Vt2 - 1, ms_ - c / Vt2 * mt_, Vs2 - c**2 / Vt2
verified("population least-squares gates carry the mean: (1 + alpha) m_t + beta = m_s",
         (1 + alpha_ls) * mt_ + beta_ls - ms_)
verified("... and the variance: (1 + alpha)^2 V_t + gamma^2 = V_s (any law, e.g. a mixture)",
         (1 + alpha_ls) ** 2 * Vt2 + gamma2_ls - Vs2)

print("all steps verified")
