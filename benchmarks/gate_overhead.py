"""Training step time of Neural-RDM gates against plain residual units at the same size.

    python benchmarks/gate_overhead.py [--models RDM-DiT-T/2,RDM-UNet-T] [--gates plain,rdm]
                                       [--input-size 16] [--batch 32] [--reps 21] [--json PATH]

For each model, one instance per gate is built with the same seed and trained on the same fixed
batch (see common.training_step).  After ``--warmup`` steps of each, the repetitions are
interleaved (one step of every gate per repetition, the order rotating each repetition), so
slow drifts of a shared machine hit every gate alike.  Reported per gate: the median step time;
against the first gate (the baseline, ``plain``): the median of the paired per-repetition
ratios, with its interquartile range, and the ratio of the medians.  Target (issue 6): the rdm
ratio at most 1.05.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, build, csv, run_main, training_step  # noqa: E402

from rdm_dynamics.files import atomic_write_json  # noqa: E402
from rdm_dynamics.models import GATE_KINDS, MODEL_CONFIGS  # noqa: E402

TARGET = 1.05


def parse(argv):
    p = Parser(prog="benchmarks/gate_overhead.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="RDM-DiT-T/2,RDM-UNet-T")
    p.add_argument("--gates", default="plain,rdm", help="the first is the baseline")
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    args.models, args.gates = csv(args.models), csv(args.gates)
    for m in args.models:
        if m not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {m!r}")
    for g in args.gates:
        if g not in GATE_KINDS:
            raise ValueError(f"unknown gate {g!r}; choose from {', '.join(GATE_KINDS)}")
    if len(args.gates) < 2 or min(args.reps, args.batch, args.input_size) < 1:
        raise ValueError("need two gates or more and positive --reps, --batch, --input-size")
    return args


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def measure(name, args):
    steps = {g: training_step(build(name, g, input_size=args.input_size,
                                    in_channels=args.in_channels, num_classes=10,
                                    device=args.device),
                              batch=args.batch, device=args.device) for g in args.gates}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {g: [] for g in args.gates}
    for rep in range(args.reps):
        order = args.gates[rep % len(args.gates):] + args.gates[:rep % len(args.gates)]
        for g in order:
            sync()
            start = time.perf_counter()
            steps[g]()
            sync()
            times[g].append(time.perf_counter() - start)
    base = args.gates[0]
    out = {"model": name, "baseline": base, "gates": {}}
    for g in args.gates:
        paired = [a / b for a, b in zip(times[g], times[base], strict=True)]
        lo, hi = quartiles(paired)
        out["gates"][g] = {"median_step_s": statistics.median(times[g]),
                           "paired_ratio": statistics.median(paired),
                           "paired_ratio_iqr": [lo, hi],
                           "ratio_of_medians": statistics.median(times[g])
                           / statistics.median(times[base])}
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"input_size": args.input_size, "batch": args.batch, "reps": args.reps,
               "device": args.device, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "target_ratio": TARGET,
               "models": [measure(name, args) for name in args.models]}
    print(f"{'model':<14} {'gate':<11} {'median step':>12} {'paired ratio (IQR)':>26} "
          f"{'ratio of medians':>17}")
    for res in results["models"]:
        for g, r in res["gates"].items():
            lo, hi = r["paired_ratio_iqr"]
            print(f"{res['model']:<14} {g:<11} {1e3 * r['median_step_s']:>9.1f} ms "
                  f"{r['paired_ratio']:>11.3f} ({lo:.3f}..{hi:.3f}) "
                  f"{r['ratio_of_medians']:>17.3f}")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
