"""Symbolic steps of the C5 proof (proofs/C5_error-propagation.md), checked with sympy.

Run: python proofs/C5_error-propagation.py   (exit code 0 and "all steps verified" on success)
"""

import itertools

import sympy as sp
from _steps import verified

# --- Step 1: the difference of two units -----------------------------------------------------
x, y, al, be, e = sp.symbols("x y alpha beta e", real=True)
F = sp.Function("F")
unit = lambda z: z + al * F(z) + be  # noqa: E731
verified("Phi(x) + e - Phi(y) = (x - y) + alpha (F(x) - F(y)) + e: the bias beta cancels",
         sp.simplify(unit(x) + e - unit(y) - ((x - y) + al * (F(x) - F(y)) + e)) == 0)

# --- Step 2: the Gronwall closed form satisfies the recursion --------------------------------
N = 6
g = sp.symbols(f"g0:{N}", nonnegative=True)
es = sp.symbols(f"e0:{N}", nonnegative=True)
d0 = sp.symbols("delta0", nonnegative=True)


def closed_form(n):
    """prod_{i<n} (1 + g_i) d0 + sum_{i<n} prod_{i<j<n} (1 + g_j) e_i."""
    head = sp.prod([1 + g[i] for i in range(n)]) * d0
    tail = sum(sp.prod([1 + g[j] for j in range(i + 1, n)]) * es[i] for i in range(n))
    return head + tail


B = [d0]
for n in range(N):
    B.append(sp.expand((1 + g[n]) * B[n] + es[n]))
verified(f"B_n from the recursion B_(n+1) = (1 + g_n) B_n + e_n equals the closed form, n <= {N}",
         all(sp.expand(B[n] - closed_form(n)) == 0 for n in range(N + 1)))
P, S, gn, en = sp.symbols("P_n S_n g_n e_n", nonnegative=True)
verified("general induction step: (1 + g_n)(P_n d0 + S_n) + e_n = P_(n+1) d0 + S_(n+1)",
         sp.expand((1 + gn) * (P * d0 + S) + en - ((1 + gn) * P * d0 + ((1 + gn) * S + en))) == 0)
b, db = sp.symbols("B_n d_n", nonnegative=True)
verified("monotone step: d_n <= B_n implies (1 + g_n) d_n + e_n <= B_(n+1) (difference "
         "(1 + g_n)(B_n - d_n) >= 0)",
         sp.expand(((1 + gn) * b + en) - ((1 + gn) * db + en) - (1 + gn) * (b - db)) == 0)

# --- Step 3: the exponential form -------------------------------------------------------------
t = sp.symbols("t", nonnegative=True)
phi = sp.exp(t) - 1 - t
verified("1 + g <= e^g for g >= 0: e^g - 1 - g is 0 at 0 with derivative e^g - 1 >= 0",
         phi.subs(t, 0) == 0 and sp.simplify(sp.diff(phi, t) - (sp.exp(t) - 1)) == 0)
E = sp.exp(sum(g))
verified("every coefficient of the closed form (prod of (1 + g_j)) divides into exp(sum g) with "
         "a factor exp(sum of the other g_j) * prod (1 + g_j) e^(-g_j) <= 1",
         all(sp.simplify(sp.prod([1 + g[j] for j in range(i, N)]) / E
                         - sp.prod([(1 + g[j]) * sp.exp(-g[j]) for j in range(i, N)])
                         * sp.exp(-sum(g[:i]))) == 0 for i in range(N)))

# --- Step 4: gate schedules and the plain lower bound ----------------------------------------
A, K, L = sp.symbols("A K L", positive=True)
i = sp.symbols("i", integer=True, nonnegative=True)
Li = sp.symbols("L", positive=True, integer=True)
verified("gated: sum_{i<L} (A K / L) = A K for every L",
         sp.simplify(sp.summation(A * K / Li, (i, 0, Li - 1)) - A * K) == 0)
verified("plain: sum_{i<L} A K = L A K, unbounded in L",
         sp.simplify(sp.summation(A * K, (i, 0, Li - 1)) - Li * A * K) == 0)
verified("inv-sqrt: sum_{i<L} A K / sqrt(L) = sqrt(L) A K, unbounded in L",
         sp.simplify(sp.summation(A * K / sp.sqrt(Li), (i, 0, Li - 1)) - sp.sqrt(Li) * A * K) == 0)
d1, d2, f1, f2, a = sp.symbols("d1 d2 f1 f2 a", real=True)
lhs = (d1 + a * f1) ** 2 + (d2 + a * f2) ** 2
rhs = (d1**2 + d2**2) + 2 * a * (d1 * f1 + d2 * f2) + a**2 * (f1**2 + f2**2)
verified("|d + a f|^2 = |d|^2 + 2 a d.f + a^2 |f|^2 (so >= (1 + 2 a mu)|d|^2 if d.f >= mu |d|^2)",
         sp.expand(lhs - rhs) == 0)

# --- Step 5: the rounding model ----------------------------------------------------------------
yv, s_hat, b_hat, x_hat, m_hat, a_hat, F_hat, Fx, alpha, beta = sp.symbols(
    "y s^ b^ x m^ a^ F^ Fx alpha beta", real=True)
decomposition = (yv - (s_hat + b_hat)) + (s_hat - (x_hat + m_hat)) + (m_hat - alpha * Fx) + (
    b_hat - beta)
verified("(E): y - (x + alpha F + beta) is the sum of the four rounding brackets",
         sp.expand(decomposition - (yv - (x_hat + alpha * Fx + beta))) == 0)
theta, etap = sp.symbols("theta eta'", real=True)
m_model = a_hat * F_hat * (1 + theta) + etap
verified("gate product: fl(a^ F^) - alpha F = a^ F^ theta + eta' + (a^ - alpha) F^ "
         "+ alpha (F^ - F)",
         sp.expand((m_model - alpha * Fx) - (a_hat * F_hat * theta + etap + (a_hat - alpha) * F_hat
                                              + alpha * (F_hat - Fx))) == 0)
rho, eta = sp.symbols("rho eta", positive=True)
w = sp.symbols("w", real=True)
y_model = w * (1 + theta) + etap
verified("y = w (1 + theta) + eta' gives w = (y - eta') / (1 + theta), "
         "so |w| <= (|y| + eta)/(1 - rho)",
         sp.simplify(sp.solve(sp.Eq(yv, y_model), w)[0] - (yv - etap) / (1 + theta)) == 0)

# Higham's gamma_n: |prod (1 + theta_k) - 1| <= n rho / (1 - n rho) for n rho < 1.
n = sp.symbols("n", positive=True, integer=True)
f = (1 - n * rho) * (1 + rho) ** n
verified("(1 - n rho)(1 + rho)^n has derivative -n (n + 1) rho (1 + rho)^(n - 1) <= 0 "
         "and is 1 at 0, "
         "so (1 + rho)^n - 1 <= gamma_n",
         sp.simplify(sp.diff(f, rho) + n * (n + 1) * rho * (1 + rho) ** (n - 1)) == 0
         and f.subs(rho, 0) == 1)
bern = (1 - rho) ** n - (1 - n * rho)
verified("Bernoulli: (1 - rho)^n >= 1 - n rho (derivative n (1 - (1 - rho)^(n - 1)) >= 0, 0 at 0)",
         sp.simplify(sp.powsimp(sp.diff(bern, rho) - n * (1 - (1 - rho) ** (n - 1)),
                                force=True)) == 0
         and bern.subs(rho, 0) == 0)
thetas = sp.symbols("t1:5", real=True)
prod = sp.prod([1 + th for th in thetas])
verified("prod (1 + theta_k) is multilinear in the theta_k (degree 1 in each), so its extremes "
         "on the box |theta_k| <= rho lie at vertices",
         all(sp.degree(sp.expand(prod), th) == 1 for th in thetas))
rv = sp.Rational(1, 256)  # bfloat16's u
for nn in range(1, 5):
    gamma = nn * rv / (1 - nn * rv)
    vertices = [sp.prod([1 + s * rv for s in signs]) - 1
                for signs in itertools.product((-1, 1), repeat=nn)]
    verified(f"n = {nn}, rho = 2^-8: every vertex value lies in [-gamma_n, gamma_n] (exact "
             "rational arithmetic)", all(abs(v) <= gamma for v in vertices))
verified("two roundings (float32 then the 16-bit type): |(1 + t1)(1 + t2) - 1| <= u + u32 (1 + u)",
         sp.expand((1 + rho) * (1 + sp.Symbol("u32", positive=True)) - 1
                   - (rho + sp.Symbol("u32", positive=True) * (1 + rho))) == 0)
z = sp.symbols("z", real=True)
verified("tanh' = 1 - tanh^2, in [0, 1]: tanh is 1-Lipschitz, and |tanh| <= 1",
         sp.simplify(sp.diff(sp.tanh(z), z) - (1 - sp.tanh(z) ** 2)) == 0)
sv = sp.symbols("s", real=True)
q_model = sv * (1 + theta) * x_hat * (1 + sp.Symbol("theta2", real=True))
verified("slope product: fl(fl(s) x) - s x = s x ((1 + theta)(1 + theta2) - 1), "
         "|.| <= (2 rho + rho^2) |s x| (underflow terms aside)",
         sp.expand((q_model - sv * x_hat) - sv * x_hat * ((1 + theta)
                   * (1 + sp.Symbol("theta2", real=True)) - 1)) == 0
         and sp.expand((1 + rho) ** 2 - 1 - (2 * rho + rho**2)) == 0)

print("all steps verified")
