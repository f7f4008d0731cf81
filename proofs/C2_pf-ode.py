"""Symbolic steps of the C2 proof (proofs/C2_pf-ode.md), checked with sympy.

Run: python proofs/C2_pf-ode.py   (exit code 0 and "all steps verified" on success)

Per eigen-direction of the data covariance (eigenvalue lambda) everything is one-dimensional:
the drift f(t) x and the diffusion g(t) I act on each coordinate of the eigenbasis separately,
so the scalar computations below are the whole d-dimensional statement.  C3's script reuses
``SDES`` and ``gaussian_relations`` from here.
"""


import sympy as sp
from _steps import is_zero, verified

t, h, x, mu = sp.symbols("t h x mu", real=True)
lam, b0, b1, smin, smax, T = sp.symbols("lambda beta_0 beta_1 sigma_min sigma_max T",
                                          positive=True)
a = sp.symbols("a", positive=True)  # a second time




# --- The three SDEs as in rdm_dynamics/sde.py -------------------------------------------------
# Each coefficient is written in terms of t and one exponential E(t) with E' = rate(t) E (VP and
# sub-VP: E = m(t); VE: E = sigma(t)), so that d/dt of any coefficient is rational in (E, t) and
# sympy can cancel exactly.  ``explicit`` substitutes E(t) back for the checks of step 1.
E = sp.Symbol("E", positive=True)


def _vp(sub: bool):
    beta = b0 + t * (b1 - b0)
    log_m = -t**2 * (b1 - b0) / 4 - t * b0 / 2
    g2 = beta * (1 - E**4) if sub else beta
    v = (1 - E**2) ** 2 if sub else 1 - E**2
    return {"E(t)": sp.exp(log_m), "rate": -beta / 2,
            "f": -beta / 2, "g2": g2, "m": E, "v": v}


def _ve():
    r = sp.log(smax / smin)
    return {"E(t)": smin * sp.exp(t * r), "rate": r,
            "f": sp.Integer(0), "g2": 2 * r * E**2, "m": sp.Integer(1), "v": E**2 - smin**2}


SDES = {"vp": _vp(False), "subvp": _vp(True), "ve": _ve()}


def d_dt(expr, sde):
    """Total time derivative of an expression in (E, t, ...): d/dt = d/dt|_E + rate E d/dE."""
    return sp.diff(expr, t) + sp.diff(expr, E) * sde["rate"] * E


def explicit(expr, sde):
    return expr.subs(E, sde["E(t)"])


# --- Generic functions: m(t), V(t) = m^2 lambda + v(t), f(t), G(t) = g(t)^2 --------------------
m_, V_, f_, G_ = (sp.Function(n)(t) for n in ("m", "V", "f", "G"))


def gaussian_relations(expr):
    """Substitute m' = f m and V' = 2 f V + G (the two moment ODEs of a linear SDE, step 1)."""
    return expr.subs({sp.Derivative(m_, t): f_ * m_, sp.Derivative(V_, t): 2 * f_ * V_ + G_})


def main() -> None:
    # --- Step 1: the moment ODEs of each SDE --------------------------------------------------
    for name, c in SDES.items():
        verified(f"{name}: E(t) = {c['E(t)']} has E' = rate E",
                 is_zero(sp.diff(c["E(t)"], t) - c["rate"] * c["E(t)"]))
        if name == "subvp":
            u = sp.Symbol("u")
            verified("subvp: g^2 = beta(t) (1 - exp(-2 int_0^t beta)) as in sde.py",
                     is_zero(explicit(c["g2"], c) - (b0 + t * (b1 - b0)) * (
                         1 - sp.exp(-2 * sp.integrate(b0 + u * (b1 - b0), (u, 0, t))))))
        verified(f"{name}: m' = f m", is_zero(d_dt(c["m"], c) - c["f"] * c["m"]))
        verified(f"{name}: v' = 2 f v + g^2", is_zero(d_dt(c["v"], c)
                                                      - (2 * c["f"] * c["v"] + c["g2"])))
        V = c["m"] ** 2 * lam + c["v"]
        verified(f"{name}: V = m^2 lambda + v solves V' = 2 f V + g^2",
                 is_zero(d_dt(V, c) - (2 * c["f"] * V + c["g2"])))
        verified(f"{name}: v(0) = 0 and m(0) = 1 (the law at t = 0 is the data law)",
                 is_zero(explicit(c["v"], c).subs(t, 0))
                 and is_zero(explicit(c["m"], c).subs(t, 0) - 1))

    # --- Step 2: p_t = N(m mu, V) solves the Fokker-Planck equation ------------------------------
    p = sp.exp(-(x - m_ * mu) ** 2 / (2 * V_)) / sp.sqrt(2 * sp.pi * V_)
    fokker_planck = (sp.diff(p, t) + sp.diff(f_ * x * p, x) - G_ / 2 * sp.diff(p, x, 2))
    verified("N(m mu, V) solves dp/dt = -d/dx(f x p) + (g^2 / 2) d2p/dx2 given step 1",
             is_zero(gaussian_relations(fokker_planck) / p))
    for name, c in SDES.items():
        V = c["m"] ** 2 * lam + c["v"]
        # (log p)_t, (log p)_x, (log p)_xx of p = N(x; m mu, V); the FP residual divided by p is
        # (log p)_t + f + f x (log p)_x - (g^2/2) ((log p)_xx + (log p)_x^2)
        log_p = -(x - c["m"] * mu) ** 2 / (2 * V) - sp.log(2 * sp.pi * V) / 2
        lp_x = sp.diff(log_p, x)
        residual = (d_dt(log_p, c) + c["f"] + c["f"] * x * lp_x
                    - c["g2"] / 2 * (sp.diff(log_p, x, 2) + lp_x**2))
        verified(f"{name}: the exact Gaussian marginal solves its Fokker-Planck equation",
                 sp.cancel(sp.expand(residual)) == 0)

    # --- Step 3: Fokker-Planck = continuity equation of the PF-ODE velocity -----------------------
    P = sp.Function("p")(x, t)
    score = sp.diff(P, x) / P
    verified("-(f x p)_x + (g^2/2) p_xx = -((f x - g^2 s / 2) p)_x with s = (log p)_x",
             is_zero(-sp.diff(f_ * x * P, x) + G_ / 2 * sp.diff(P, x, 2)
                     + sp.diff((f_ * x - G_ / 2 * score) * P, x)))

    # --- Step 4: the closed-form Gaussian flow map solves the PF-ODE -----------------------------
    s_gauss = -(x - m_ * mu) / V_
    flow = m_ * mu + sp.sqrt(V_ / sp.Symbol("V_a")) * (sp.Symbol("x_a") - sp.Symbol("m_a") * mu)
    pf_velocity = (f_ * x - G_ / 2 * s_gauss).subs(x, flow)
    verified("x(t) = m mu + sqrt(V(t)/V(a)) (x_a - m(a) mu) solves dx/dt = f x - g^2 s / 2",
             is_zero(gaussian_relations(sp.diff(flow, t)) - pf_velocity))
    xa, Ea = sp.symbols("x_a E_a", positive=True)
    for name, c in SDES.items():
        V = c["m"] ** 2 * lam + c["v"]
        Va, ma = V.subs(E, Ea), c["m"].subs(E, Ea)  # the map's start time a enters through E(a)
        flow_c = c["m"] * mu + sp.sqrt(V / Va) * (xa - ma * mu)
        velocity = c["f"] * flow_c + c["g2"] / 2 * (flow_c - c["m"] * mu) / V
        verified(f"{name}: the closed-form flow map solves the PF-ODE and starts at x_a",
                 is_zero(d_dt(flow_c, c) - velocity) and is_zero(flow_c.subs(E, Ea) - xa))

    # --- Step 5: one Euler unit vs the exact map over one step: equal to first order in h -------
    # The unit z -> z + h F(z, t), F = -(f z - g^2 s / 2), with s affine: its linear coefficient
    # is 1 - h (f + G / (2 V)); the exact map t -> t - h scales by sqrt(V(t - h) / V(t)).
    Vf = sp.Function("V")
    exact_gain = sp.sqrt(Vf(t - h) / Vf(t))
    series = sp.series(exact_gain, h, 0, 3).removeO().doit()
    series = gaussian_relations(series.subs(sp.Subs(sp.Derivative(Vf(x), x), x, t),
                                            sp.Derivative(V_, t)))
    unit_gain = 1 - h * (f_ + G_ / (2 * V_))
    difference = sp.expand(series - unit_gain)
    verified("exact PF-ODE gain over one step = Euler unit's gain + O(h^2)",
             is_zero(difference.coeff(h, 0)) and is_zero(difference.coeff(h, 1)))
    verified("... and the h^2 term is not zero in general (the local error is exactly O(h^2))",
             not is_zero(difference.coeff(h, 2)))
    exact_offset = sp.Function("m")(t - h) * mu - sp.sqrt(Vf(t - h) / Vf(t)) * m_ * mu
    off = sp.series(exact_offset, h, 0, 2).removeO().doit()
    off = gaussian_relations(off.subs({sp.Subs(sp.Derivative(Vf(x), x), x, t):
                                       sp.Derivative(V_, t),
                                       sp.Subs(sp.Derivative(sp.Function("m")(x), x), x, t):
                                       sp.Derivative(m_, t)}))
    unit_offset = h * G_ / (2 * V_) * m_ * mu  # the affine part of h F(z, t) with s = -(z - m mu)/V
    verified("exact PF-ODE offset over one step = Euler unit's offset + O(h^2)",
             is_zero(sp.expand(off - unit_offset)))

    # --- Step 6: discrete Gronwall (global error from local errors) -------------------------------
    q, i, j = sp.symbols("q i j", positive=True, integer=True)
    verified("sum_{j<i} (1+q)^j = ((1+q)^i - 1)/q",
             is_zero(sp.summation((1 + q) ** j, (j, 0, i - 1)) - ((1 + q) ** i - 1) / q))
    y = sp.symbols("y", nonnegative=True)
    verified("log(1 + y) <= y (so (1 + h K)^i <= e^{K t_i}): the gap is 0 at 0 and increasing",
             is_zero((y - sp.log(1 + y)).subs(y, 0))
             and is_zero(sp.diff(y - sp.log(1 + y), y) - y / (1 + y)))

    # --- Step 7: why eps > 0: a singular data direction (lambda = 0) ------------------------------
    # V = v(t) -> 0 as t -> 0; the PF-ODE field's Lipschitz constant in that direction is
    # f + g^2 / (2 v) ~ c / t, and the exact solution y = sqrt(v(t)/v(T)) y_T has y'' ~ t^{-3/2}.
    expected_c = {"vp": sp.Rational(1, 2), "subvp": sp.Integer(1), "ve": sp.Rational(1, 2)}
    for name, c in SDES.items():
        lip = explicit(c["f"] + c["g2"] / (2 * c["v"]), c)
        verified(f"{name}, lambda = 0: t * Lip(t) -> {expected_c[name]} as t -> 0 "
                 "(the score's Lipschitz constant blows up like 1/t)",
                 is_zero(sp.expand_log(sp.limit(t * lip, t, 0, "+") - expected_c[name],
                                       force=True)))
    v_vp = explicit(SDES["vp"]["v"], SDES["vp"])
    curvature = sp.limit(sp.diff(sp.sqrt(v_vp), t, 2) * t**sp.Rational(3, 2), t, 0, "+")
    verified("vp, lambda = 0: y'' t^{3/2} -> -sqrt(beta_0)/4, so sup |y''| on [eps, T] grows like "
             "eps^{-3/2}", is_zero(curvature + sp.sqrt(b0) / 4))
    print("all steps verified")


if __name__ == "__main__":
    main()
