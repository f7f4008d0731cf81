"""The stack's reverse-SDE simulation against torchsde.sdeint, same steps and batch, with floors.

    python benchmarks/reverse_sde_simulation.py [--batch 256] [--steps 256] [--reps 21]
                                                [--base-steps 16] [--threads 1] [--json PATH]

Every variant runs Euler-Maruyama for the VP reverse SDE of a Gaussian in R^4 with the exact
score (``sde.reverse(...).denoising_field``, F below), from exact samples of p_T down to
eps = 1e-3, in float64 on the CPU, noise included:

* ``stack``:    ``noise.BrownianPath`` increments (dyadic Levy refinement from ``--base-steps``
                steps, default 16 as C3 builds its path at depth 256: the coarsest rung of its
                ladder, refined to the deepest; one tensor operation per level; ``--base-steps
                1`` refines from one step), then the gated residual stack with C3's
                stochastic units; the stack evaluates F through ``F.on_grid`` (its time
                coefficients computed once for the stack's grid: ``sde.DenoisingField``);
* ``torchsde``: ``torchsde.sdeint(method="euler")`` on the same SDE (``solvers.TorchsdeReverse``),
                driven by a ``torchsde.BrownianInterval`` (one interval query per step);
* ``loop``:     the floor of any Euler-Maruyama code that calls F: a hand-written Python loop
                ``z = z + h F(z, t_i) + gamma_i xi_i`` over noise drawn in one call of the
                normal source the path uses (``noise.numpy_rng``: numpy's PCG64);
* ``tabulated``: the floor of the arithmetic itself: the same loop with F written out by hand as
                tensor operations on coefficients tabulated once per grid time (f_i, g_i^2,
                m_i mu, V_i: F(z, t_i) = -f_i z - g_i^2 ((z - m_i mu) U / V_i) U^T);
* ``field``:    the 256 evaluations of F(z, t) alone, which ``torchsde`` and ``loop`` pay: no
                solver calling F at a time t once per step beats torchsde by more than
                torchsde / field;
* ``grid_field``: the 256 evaluations of ``F.on_grid`` alone (tabulation included), which the
                stack pays;
* ``path``, ``normals``, ``randn``: the noise alone, as the stack makes it (``BrownianPath``),
                as one call of the path's normal source of the same size, and as one
                ``torch.randn`` of that size (float64 normals: every variant draws as many).

After one warm-up run of each, the repetitions are interleaved (one run of every variant per
repetition, the order rotating), so slow drifts of a shared machine hit all alike.  Reported: the
median time of each, and the median, interquartile range and extremes of the paired
per-repetition ratios torchsde / variant (``median_paired_speedup_vs_torchsde`` is the stack's).
Before timing, ``stack`` and ``loop`` are run on the same noise and must agree to rounding, and
the tabulated field must match F.  Target (issue 14): the stack 10 x faster than torchsde.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchsde

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, run_main  # noqa: E402

from rdm_dynamics.checks import CheckConfig  # noqa: E402
from rdm_dynamics.checks.problems import (  # noqa: E402
    EPS,
    denoising_stack,
    sample_prior,
    score_fn,
)
from rdm_dynamics.files import atomic_write_json  # noqa: E402
from rdm_dynamics.laws import Gaussian  # noqa: E402
from rdm_dynamics.noise import BrownianPath, numpy_rng  # noqa: E402
from rdm_dynamics.sde import make_sde  # noqa: E402
from rdm_dynamics.solvers import TorchsdeReverse  # noqa: E402

TARGET = 10.0
VARIANTS = ("stack", "torchsde", "loop", "tabulated", "field", "grid_field", "path", "normals",
            "randn")


def parse(argv):
    p = Parser(prog="benchmarks/reverse_sde_simulation.py", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--base-steps", type=int, default=16,
                   help="steps of the Brownian path's coarsest level (default 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "reps", "threads", "base_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.steps & (args.steps - 1):
        raise ValueError("--steps must be a power of 2 (the Brownian path refines dyadically)")
    args.base_steps = min(args.base_steps, args.steps)
    if args.base_steps & (args.base_steps - 1):
        raise ValueError("--base-steps must be a power of 2")
    return args


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "iqr": [q[0], q[2]],
            "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        results = measure(args)
    if args.json:
        atomic_write_json(args.json, results)
    return 0


def measure(args) -> dict:
    g = torch.Generator().manual_seed(0)
    config = CheckConfig(schedule="euler")
    sde, law = make_sde("vp"), Gaussian.random(4, generator=g)
    x_T = sample_prior(law, sde, args.batch, g, config)
    span, L = sde.T - EPS, args.steps
    stack = denoising_stack(sde, law, L, config, probability_flow=False)
    reverse = sde.reverse(score_fn(law, sde), probability_flow=False)
    field = reverse.denoising_field
    ends = torch.tensor([0.0, span], dtype=torch.float64)
    times = list(stack.times[:-1].unbind(0))
    h = stack.h
    gammas = list((sde.diffusion_coef(stack.times[:-1]) * math.sqrt(h)).unbind(0))
    # The tabulated field: F(z, t_i) = -(f_i z - g_i^2 s_i(z)), s_i(z) = -((z - m_i mu) U / V_i) U^T
    grid = stack.times[:-1]
    f_tab = sde.drift_coef(grid).unbind(0)
    g2_tab = (sde.diffusion_coef(grid) ** 2).unbind(0)
    m = sde.mean_coef(grid)
    centre_tab = (m[:, None] * law.mean).unbind(0)
    V_tab = (m[:, None] ** 2 * law.eigvals + sde.marginal_var(grid)[:, None]).unbind(0)
    U = law.eigvecs

    def tabulated_field(z, i):
        score = -((z - centre_tab[i]) @ U / V_tab[i]) @ U.T
        return -(f_tab[i] * z - g2_tab[i] * score)

    def run_stack():
        path = BrownianPath(span, x_T.shape, base_steps=args.base_steps, generator=g)
        return stack(x_T, xi=path.normalised_increments(L))

    def run_torchsde():
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=x_T.shape, dtype=torch.float64,
                                       entropy=0)
        return torchsde.sdeint(TorchsdeReverse(reverse), x_T, ends, method="euler", dt=span / L,
                               bm=bm)[-1]

    def normals():  # the floors' noise: one call of the source the path draws from
        return torch.from_numpy(numpy_rng(g).standard_normal((L, *x_T.shape)))

    def run_loop(xi=None):
        xi = normals() if xi is None else xi
        z = x_T
        for i in range(L):
            z = z + h * field(z, times[i]) + gammas[i] * xi[i]
        return z

    def run_tabulated():
        xi = normals()
        z = x_T
        for i in range(L):
            z = z + h * tabulated_field(z, i) + gammas[i] * xi[i]
        return z

    def run_field():
        for i in range(L):
            field(x_T, times[i])

    def run_grid_field():
        for i, unit_field in enumerate(field.on_grid(grid)):
            unit_field(x_T, times[i])

    # The variants compute the same thing: stack and loop on one noise, the tabulated field.
    xi = BrownianPath(span, x_T.shape, generator=torch.Generator().manual_seed(1))
    xi = xi.normalised_increments(L)
    stack_vs_loop = float((stack(x_T, xi=xi) - run_loop(xi)).abs().max())
    tabulated_vs_field = max(float((tabulated_field(x_T, i) - field(x_T, times[i])).abs().max())
                             for i in range(L))
    scale = float(x_T.abs().max())
    if stack_vs_loop > 1e-12 * scale * L or tabulated_vs_field > 1e-10 * scale:
        raise RuntimeError(f"the variants disagree: stack vs loop {stack_vs_loop:.3g}, "
                           f"tabulated vs F {tabulated_vs_field:.3g}")

    def run_path():
        BrownianPath(span, x_T.shape, base_steps=args.base_steps,
                     generator=g).normalised_increments(L)

    def run_randn():
        torch.randn((L, *x_T.shape), generator=g, dtype=x_T.dtype)

    runs = {"stack": run_stack, "torchsde": run_torchsde, "loop": run_loop,
            "tabulated": run_tabulated, "field": run_field, "grid_field": run_grid_field,
            "path": run_path, "normals": normals, "randn": run_randn}
    for fn in runs.values():  # warm-up
        fn()
    seconds = {name: [] for name in VARIANTS}
    for rep in range(args.reps):
        order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
        for name in order:
            seconds[name].append(timed(runs[name]))
    speedups = {name: spread([b / a for a, b in zip(seconds[name], seconds["torchsde"],
                                                    strict=True)])
                for name in VARIANTS if name != "torchsde"}
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    results = {
        "benchmark": "reverse_sde_simulation",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torchsde": torchsde.__version__, "threads": args.threads,
        "sde": "vp", "data": "Gaussian in R^4", "batch": args.batch, "steps": L,
        "path_base_steps": args.base_steps,
        "dtype": "float64", "reps": args.reps, "target_speedup": TARGET,
        "median_seconds": medians,
        "median_paired_speedup_vs_torchsde": speedups["stack"]["median"],
        "paired_speedup_vs_torchsde": speedups,
        "field_share_of_stack": medians["grid_field"] / medians["stack"],
        "noise_share_of_stack": medians["path"] / medians["stack"],
        "checks": {"stack_vs_loop_max_abs": stack_vs_loop,
                   "tabulated_vs_field_max_abs": tabulated_vs_field},
    }
    print(f"reverse-SDE simulation: VP, Gaussian data in R^4, batch {args.batch}, {L} "
          f"Euler-Maruyama steps, float64, {args.threads} thread(s), {args.reps} repetitions; "
          f"path refined from {args.base_steps} step(s)")
    labels = {"stack": "stack + BrownianPath", "torchsde": "torchsde.sdeint + BrownianInterval",
              "loop": "floor: hand loop over F", "tabulated": "floor: hand loop, F tabulated",
              "field": "the 256 evaluations of F(z, t) alone",
              "grid_field": "the 256 of F.on_grid alone (stack's)",
              "path": "noise: BrownianPath alone",
              "normals": "noise: one draw of its normals alone",
              "randn": "noise: one torch.randn alone"}
    for name in VARIANTS:
        line = f"  {labels[name]:36} median {medians[name] * 1e3:8.1f} ms"
        if name != "torchsde":
            s = speedups[name]
            line += (f"   torchsde / this (paired) {s['median']:6.2f}  "
                     f"(IQR {s['iqr'][0]:.2f}..{s['iqr'][1]:.2f})")
        print(line)
    print(f"  F on the grid is {100 * results['field_share_of_stack']:.0f}% of the stack's time, "
          f"its noise "
          f"{100 * results['noise_share_of_stack']:.0f}%; target "
          f"speedup {TARGET:g}: {'met' if speedups['stack']['median'] >= TARGET else 'not met'}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))
