"""The stack's reverse-SDE simulation against torchsde.sdeint, same steps and batch.

Both run Euler-Maruyama for the VP reverse SDE of a Gaussian in R^4 with the exact score, from
exact samples of p_T down to eps, in float64 on the CPU:

* stack:   ``BrownianPath`` increments (dyadic Levy refinement, one tensor operation per level),
           then the gated residual stack (C3's units);
* torchsde: ``torchsde.sdeint(method="euler")`` driven by a ``torchsde.BrownianInterval``
           (one interval query per step), on the same SDE through ``paths.TorchsdeReverse``.

Prints the best of ``--repeats`` wall times of each and their ratio (torchsde / stack), side by
side in one run.  Times include making the Brownian noise.  Run:
``python benchmarks/reverse_sde_simulation.py [--batch 256] [--steps 256] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torchsde

from rdm_dynamics.checks import CheckConfig
from rdm_dynamics.checks._denoising import EPS, denoising_stack, sample_prior, score_fn
from rdm_dynamics.laws import Gaussian
from rdm_dynamics.paths import BrownianPath, TorchsdeReverse
from rdm_dynamics.sde import make_sde


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.repeats < 1:
        print("reverse_sde_simulation: --batch, --steps and --repeats must be >= 1",
              file=sys.stderr)
        return 2

    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(0)
    config = CheckConfig(gating="euler")
    sde, law = make_sde("vp"), Gaussian.random(4, generator=g)
    x_T = sample_prior(law, sde, args.batch, g, config)
    span = sde.T - EPS
    stack = denoising_stack(sde, law, args.steps, config, probability_flow=False)
    reverse = TorchsdeReverse(sde.reverse(score_fn(law, sde), probability_flow=False))
    times = torch.tensor([0.0, span], dtype=torch.float64)
    dt = span / args.steps

    def run_stack():
        path = BrownianPath(span, x_T.shape, base_steps=1, generator=g)
        return stack(x_T, xi=path.normalised_increments(args.steps))

    def run_torchsde():
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=x_T.shape, dtype=torch.float64,
                                       entropy=0)
        return torchsde.sdeint(reverse, x_T, times, method="euler", dt=dt, bm=bm)[-1]

    t_stack = best_time(run_stack, args.repeats)
    t_torchsde = best_time(run_torchsde, args.repeats)
    print(f"reverse-SDE simulation, VP, Gaussian data in R^4, batch {args.batch}, "
          f"{args.steps} Euler-Maruyama steps, float64, {torch.get_num_threads()} thread(s)")
    print(f"  stack + BrownianPath               {t_stack * 1e3:9.1f} ms")
    print(f"  torchsde.sdeint + BrownianInterval {t_torchsde * 1e3:9.1f} ms")
    print(f"  ratio torchsde / stack             {t_torchsde / t_stack:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
