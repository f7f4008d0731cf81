"""Train small Neural-RDMs on known-law digits with several gates, then run C8-C10 on each.

    python benchmarks/trained_checks.py                      # 10 minutes per model and gate
    python benchmarks/trained_checks.py --minutes 1 --out /tmp/trained-bench --json r.json

For each model (RDM-DiT-T/2 at 4 blocks x 96, RDM-UNet-T; the sizes of benchmarks/train_digits.py)
and each gate (rdm, plain, adaln-zero by default) it trains on ``digits-gmm`` (a Gaussian mixture
fitted to the digits, fresh images every step) for at most ``--minutes`` of training time with
``rdm_dynamics.training.loop.train``, then runs the checkpoint checks (trained-propagation,
trained-sensitivity, denoising-risk; ``--quick`` for their small sizes) on the final checkpoint,
and prints side by side, per model and gate: the excess denoising risk per time bin and its mean,
the exact log-density gap of generated images, the bfloat16 error profile (output, first, last and
largest unit), the linear-response residual, the amplification and the sensitivity ratio, each
with its standard error.  ``--json`` writes every figure (and each check's full metrics).

Training time is wall clock on whatever machine runs it: say whether it was contended, and label
the figures with the budget (a 1-minute model is far from converged).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, csv, run_main  # noqa: E402

from rdm_dynamics.checks import registry, run_checks  # noqa: E402
from rdm_dynamics.checks.trained_subject import checkpoint_config  # noqa: E402
from rdm_dynamics.files import atomic_write_json  # noqa: E402
from rdm_dynamics.training.loop import train  # noqa: E402
from rdm_dynamics.training.settings import TrainConfig  # noqa: E402

MODELS = {"RDM-DiT-T/2": {"depth": 4, "width": 96, "heads": 4}, "RDM-UNet-T": {}}
GATES = ("rdm", "plain", "adaln-zero")


def parse_args(argv):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--gates", default=",".join(GATES))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the checks' small sizes")
    p.add_argument("--out", default="trained-checks-bench")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not args.minutes > 0:
        raise ValueError("--minutes must be positive")
    return args


def train_one(args, model: str, gate: str) -> tuple[Path, dict]:
    out = Path(args.out) / f"{model.replace('/', '_')}-{gate}"
    cfg = TrainConfig(model=model, gate=gate, model_options=MODELS.get(model, {}),
                      data="digits-gmm", steps=10**7, max_seconds=60 * args.minutes,
                      batch_size=args.batch_size, seed=args.seed, progress=False,
                      out=str(out), device="cpu", ckpt_every=10**7, n_samples=16,
                      sample_steps=20)
    done = train(cfg)
    return out, {"steps": done["step"], "loss": done["loss"], "train_seconds": done["seconds"]}


def summarise(results) -> dict:
    by = {r.id: r.metrics for r in results}
    c8, c9, c10 = by["trained-propagation"], by["trained-sensitivity"], by["denoising-risk"]
    bins = sorted(int(k.split("_")[-1]) for k in c10 if k.startswith("t_bin_"))
    return {
        "excess_risk_mean": (c10["excess_risk_mean"], c10["excess_risk_mean_se"]),
        "excess_risk_bins": [(c10[f"t_bin_{k}"], c10[f"excess_risk_{k}"],
                              c10[f"excess_risk_{k}_se"]) for k in bins],
        "logdensity_gap": (c10["logdensity_gap"], c10["logdensity_gap_se"]),
        "output_error_bf16": (c8["output_error_bf16"], c8["output_error_bf16_se"]),
        "unit_error_bf16": (c8["unit_error_bf16_first"], c8["unit_error_bf16_last"],
                            c8["unit_error_bf16_max"]),
        "linear_response_residual": (c8["linear_response_residual"],
                                     c8["linear_response_residual_se"]),
        "amplification_max": (c8["amplification_max"], c8["amplification_max_se"]),
        "sensitivity_ratio": (c9["sensitivity_ratio"], c9["sensitivity_ratio_se"]),
        "passed": {r.id: r.passed for r in results},
    }


def table(rows) -> str:
    head = ("model", "gate", "steps", "excess risk", "log-density gap", "bf16 output err",
            "bf16 unit err first/last/max", "lin.resp. residual", "sensitivity |p0|/|pL|")
    lines = [head]
    for r in rows:
        s = r["summary"]
        pm = "{:.4f} +/- {:.4f}".format
        lines.append((r["model"], r["gate"], str(r["train"]["steps"]),
                      pm(*s["excess_risk_mean"]),
                      "{:.3f} +/- {:.3f}".format(*s["logdensity_gap"]),
                      "{:.2e} +/- {:.1e}".format(*s["output_error_bf16"]),
                      "{:.1e} / {:.1e} / {:.1e}".format(*s["unit_error_bf16"]),
                      "{:.3f} +/- {:.3f}".format(*s["linear_response_residual"]),
                      "{:.3g} +/- {:.2g}".format(*s["sensitivity_ratio"])))
    widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    bins = ["", "excess risk per t-bin (t: value +/- se):"]
    for r in rows:
        bins.append(f"  {r['model']} {r['gate']}: " + ", ".join(
            f"{t:.2f}: {v:.4f}+/-{se:.4f}" for t, v, se in r["summary"]["excess_risk_bins"]))
    return "\n".join(out + bins)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    checks = registry("checkpoint")
    for model in csv(args.models):
        for gate in csv(args.gates):
            run_dir, trained = train_one(args, model, gate)
            config = checkpoint_config(str(run_dir), seed=args.seed, quick=args.quick)
            start = time.perf_counter()
            results = run_checks(config, checks, progress=False)
            rows.append({"model": model, "gate": gate, "minutes": args.minutes, "train": trained,
                         "check_seconds": time.perf_counter() - start,
                         "summary": summarise(results),
                         "metrics": {r.id: r.metrics for r in results}})
            print(f"{model} {gate}: {trained['steps']} steps, checks in "
                  f"{rows[-1]['check_seconds']:.1f} s", file=sys.stderr)
    print(f"budget: {args.minutes:g} min of training per model and gate, batch "
          f"{args.batch_size}, {args.threads} threads")
    print(table(rows))
    if args.json:
        atomic_write_json(args.json, {"minutes": args.minutes, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
