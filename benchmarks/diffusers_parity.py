"""Credibility check: this toolkit's RDM-DiT against diffusers' DiTTransformer2DModel, same recipe.

    python benchmarks/diffusers_parity.py --steps 1500 --json parity.json

Trains ``RDM-DiT-<size>/<p>`` with the ``adaln-zero`` gate and ``diffusers-dit-<size>/<p>`` (a
``DiTTransformer2DModel`` of the same width, depth, heads and patch size, its own adaLN-Zero
blocks) with one recipe (``rdm_dynamics.training.loop.train`` on ``digits-gmm``: the same
steps, batch, learning rate, EMA, seeds), then measures both with C10's exact risk decomposition
(``checks.denoising_risk.measure_risk``, full size: 8 time bins of 256 draws, the same draws for
both) and prints the excess risk E|eps_theta - eps*|^2 per time bin side by side, with standard
errors over the draws, and the difference in units of sqrt(se_a^2 + se_b^2) (both models are
measured on the same draws, whose errors are positively correlated, so this overstates the
standard error of the difference: the ratio is conservative).  With ``--seeds 0,1`` the excess
is averaged over training seeds and its SE includes the seed-to-seed spread.

The two models differ by construction in ways the table may show (the README says which):
the toolkit's DiT shares one time/label embedding across blocks, counts attention and MLP as two
units, and zero-initialises its modulations and head (DiT's recipe); diffusers' DiT gives every
block its own time/label embedder and leaves PyTorch's default initialisation.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, csv, run_main  # noqa: E402

from rdm_dynamics.checks.denoising_risk import bins_of, measure_risk
from rdm_dynamics.checks.trained_subject import checkpoint_config, load_subject
from rdm_dynamics.files import atomic_write_json
from rdm_dynamics.training.loop import train
from rdm_dynamics.training.settings import TrainConfig


def parse_args(argv):
    p = Parser(prog="benchmarks/diffusers_parity.py", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="N/2", help="DiT size and patch, e.g. N/2 or T/2")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seeds", default="0", help="training seeds, comma separated")
    p.add_argument("--quick", action="store_true", help="C10's quick sizes (4 bins of 64)")
    p.add_argument("--out", default="benchmark-runs/diffusers_parity")
    p.add_argument("--json", default=None, metavar="PATH")
    return p.parse_args(argv)


def run(model: str, seed: int, args) -> dict:
    """Train (or reuse) one model and measure its risk decomposition."""
    folder = Path(args.out) / f"{model.replace('/', '_')}-seed{seed}"
    cfg = TrainConfig(model=model, gate="adaln-zero", data="digits-gmm", steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=seed,
                      out=str(folder), log_every=100, ckpt_every=10**9, progress=False,
                      n_samples=4, sample_steps=2, device="cpu")
    if not any(folder.glob("ckpt-*.json")):
        train(cfg)
    config = checkpoint_config(str(folder), quick=args.quick)
    subject = load_subject(config)
    metrics, _ = measure_risk(subject, config)
    params = sum(p.numel() for p in subject.net.parameters())
    return {"model": model, "seed": seed, "parameters": params, "units": config.depth,
            "metrics": metrics}


def combine(rows: list[dict], bins: int) -> dict:
    """Per bin: mean excess over seeds, SE sqrt(mean of se^2 / n + seed variance / n)."""
    out = {}
    for k in range(bins):
        values = [r["metrics"][f"excess_risk_{k}"] for r in rows]
        ses = [r["metrics"][f"excess_risk_{k}_se"] for r in rows]
        n = len(values)
        mean = sum(values) / n
        spread = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        out[k] = (mean, math.sqrt(sum(s * s for s in ses) / n**2 + spread / n),
                  rows[0]["metrics"][f"t_bin_{k}"], rows[0]["metrics"][f"bayes_risk_{k}"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in csv(args.seeds)]
    models = [f"RDM-DiT-{args.size}", f"diffusers-dit-{args.size}"]
    rows = {m: [run(m, s, args) for s in seeds] for m in models}
    bins = bins_of(rows[models[0]][0]["metrics"])
    table = {m: combine(rows[m], bins) for m in models}
    print(f"excess risk E|eps_theta - eps*|^2 per t-bin, digits-gmm, {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.lr:g}, seeds {args.seeds}")
    print(f"{'t':>6} {'Bayes R*':>9} {models[0]:>22} {models[1]:>24} {'diff/SE':>8}")
    diffs = []
    for k in range(bins):
        (a, sa, t, bayes), (b, sb, _, _) = table[models[0]][k], table[models[1]][k]
        z = (a - b) / math.sqrt(sa**2 + sb**2)
        diffs.append(z)
        print(f"{t:6.3f} {bayes:9.4f} {a:13.4f} +/- {sa:.4f} {b:15.4f} +/- {sb:.4f} {z:8.1f}")
    for m in models:
        r = rows[m][0]
        print(f"{m}: {r['parameters']} parameters, {r['units']} residual units")
    result = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds,
              "models": {m: {"parameters": rows[m][0]["parameters"], "units": rows[m][0]["units"],
                             "excess": {str(k): table[m][k][:2] for k in range(bins)}}
                         for m in models},
              "t_bins": [table[models[0]][k][2] for k in range(bins)],
              "diff_over_se": diffs}
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
