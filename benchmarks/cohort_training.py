"""A cohort step against the single-run steps it replaces (issue 21: the depth study made cheap).

For each depth of the ``deep`` preset's RDM-MLP (width 64, mlp ratio 2, batch 64, digits-gmm),
K runs of one recipe that differ in seed and learning rate are built as the training loop builds
them (``training.loop.setup``), then timed in one process, alternating, at the same thread count:

* K single steps: ``training.loop.train_step`` on each run (its data, draws, forward, backward,
  clipping, AdamW, EMA), one after the other;
* one cohort step: ``training.cohort._cohort_step`` on the K runs stacked (one vmap'd forward and
  backward, per-member clipping, fused AdamW per learning rate, EMA).

The ratio (K single steps) / (cohort step) is what a study gains in training time from
``--cohort K``; the parts of the cohort step (forward and backward, the rest) say what bounds it.
The seeds are 0..; the learning rates cycle through 1e-3, 3e-3, 1e-2 as the preset's sweep does.

    python benchmarks/cohort_training.py --threads 1 --json cohort.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Parser, csv, run_main  # noqa: E402

from rdm_dynamics.training import cohort as cohort_mod  # noqa: E402
from rdm_dynamics.training.loop import setup, train_step  # noqa: E402
from rdm_dynamics.training.settings import TrainConfig  # noqa: E402

LRS = (1e-3, 3e-3, 1e-2)


def build_parser() -> Parser:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="4,16,64,256", help="residual units, comma-separated")
    p.add_argument("--members", default="3,9", help="cohort sizes K, comma-separated")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed steps of each kind")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the study gives each "
                   "job cores / jobs)")
    p.add_argument("--json", default=None, help="write the figures here")
    return p


def _runs(depth: int, k: int, width: int, batch: int, folder: Path):
    cfgs = [TrainConfig(model="RDM-MLP-T", model_options={"width": width, "depth": depth},
                        gate="rdm", data="digits-gmm", batch_size=batch, steps=10_000,
                        warmup=30, seed=i, lr=LRS[i % len(LRS)], progress=False,
                        out=str(folder / f"m{i}")) for i in range(k)]
    return cfgs, [setup(c) for c in cfgs]


def _time(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(depth: int, k: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfgs, singles = _runs(depth, k, args.width, args.batch, Path(tmp) / "single")
        _, members = _runs(depth, k, args.width, args.batch, Path(tmp) / "cohort")
        stack = cohort_mod._stack(members)
        state = {"step": 0}

        def single_steps():
            for run in singles:
                run.model.train()
                train_step(run, run.model, state["step"], None, None)

        def cohort_step():
            cohort_mod._cohort_step(stack, members, state["step"], None)

        single_steps(), cohort_step()  # warm-up
        single, together = [], []
        for _ in range(args.repeats):
            state["step"] += 1
            single.append(_time(single_steps))
            together.append(_time(cohort_step))
        s, c = statistics.median(single), statistics.median(together)
    return {"depth": depth, "members": k, "single_steps_ms": round(1e3 * s, 2),
            "cohort_step_ms": round(1e3 * c, 2), "ratio": round(s / c, 3),
            "per_member_ms": round(1e3 * c / k, 2)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.width, args.batch, args.repeats, args.threads) < 1:
        raise ValueError("--width, --batch, --repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    rows = []
    for k in (int(x) for x in csv(args.members)):
        for depth in (int(x) for x in csv(args.depths)):
            row = measure(depth, k, args)
            rows.append(row)
            print(f"RDM-MLP width {args.width}, {depth:4d} units, K={k}: {k} single steps "
                  f"{row['single_steps_ms']:8.1f} ms, one cohort step {row['cohort_step_ms']:8.1f}"
                  f" ms, ratio {row['ratio']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch": args.batch,
                                               "width": args.width, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
