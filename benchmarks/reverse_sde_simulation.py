"""The stack's reverse-SDE simulation against torchsde.sdeint, same steps and batch.

    python benchmarks/reverse_sde_simulation.py [--batch 256] [--steps 256] [--reps 11]
                                                [--threads 1]

Both run Euler-Maruyama for the VP reverse SDE of a Gaussian in R^4 with the exact score, from
exact samples of p_T down to eps = 1e-3, in float64 on the CPU:

* stack:    ``paths.BrownianPath`` increments (dyadic Levy refinement from one step, one tensor
            operation per level), then the gated residual stack with C3's stochastic units;
* torchsde: ``torchsde.sdeint(method="euler")`` on the same SDE (``paths.TorchsdeReverse``),
            driven by a ``torchsde.BrownianInterval`` (one interval query per step).

Times include making the Brownian noise.  After one warm-up run of each, the repetitions are
interleaved (one run of each per repetition, the order alternating), so slow drifts of a shared
machine hit both alike.  Reported: the median time of each, and the median and interquartile range
of the paired per-repetition ratios torchsde / stack.  Target (issue 3): the stack must not be
slower than a per-step Brownian-tree query, i.e. a ratio >= 1.
"""

from __future__ import annotations

import statistics
import sys
import time
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
from rdm_dynamics.laws import Gaussian  # noqa: E402
from rdm_dynamics.paths import BrownianPath, TorchsdeReverse  # noqa: E402
from rdm_dynamics.sde import make_sde  # noqa: E402


def parse(argv):
    p = Parser(prog="benchmarks/reverse_sde_simulation.py", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for name in ("batch", "steps", "reps", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    return args


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(0)
    config = CheckConfig(gating="euler")
    sde, law = make_sde("vp"), Gaussian.random(4, generator=g)
    x_T = sample_prior(law, sde, args.batch, g, config)
    span = sde.T - EPS
    stack = denoising_stack(sde, law, args.steps, config, probability_flow=False)
    reverse = TorchsdeReverse(sde.reverse(score_fn(law, sde), probability_flow=False))
    ends = torch.tensor([0.0, span], dtype=torch.float64)

    def run_stack():
        path = BrownianPath(span, x_T.shape, generator=g)
        return stack(x_T, xi=path.normalised_increments(args.steps))

    def run_torchsde():
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=x_T.shape, dtype=torch.float64,
                                       entropy=0)
        return torchsde.sdeint(reverse, x_T, ends, method="euler", dt=span / args.steps,
                               bm=bm)[-1]

    run_stack(), run_torchsde()  # warm-up
    stack_times, torchsde_times = [], []
    for rep in range(args.reps):
        pair = (run_stack, run_torchsde) if rep % 2 == 0 else (run_torchsde, run_stack)
        times = {fn: timed(fn) for fn in pair}
        stack_times.append(times[run_stack])
        torchsde_times.append(times[run_torchsde])
    ratios = sorted(b / a for a, b in zip(stack_times, torchsde_times, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    print(f"reverse-SDE simulation: VP, Gaussian data in R^4, batch {args.batch}, {args.steps} "
          f"Euler-Maruyama steps, float64, {args.threads} thread(s), {args.reps} repetitions")
    print(f"  stack + BrownianPath                median "
          f"{statistics.median(stack_times) * 1e3:8.1f} ms")
    print(f"  torchsde.sdeint + BrownianInterval  median "
          f"{statistics.median(torchsde_times) * 1e3:8.1f} ms")
    print(f"  ratio torchsde / stack (paired)     median {statistics.median(ratios):8.2f}  "
          f"(IQR {q1:.2f}..{q3:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
