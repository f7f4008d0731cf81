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

``--variants`` replaces the two default columns by any list of models with model options (the
first is the reference every other column's diff/SE is taken against), e.g.

    python benchmarks/diffusers_parity.py --steps 400 --seeds 0,1 --variants \
        RDM-DiT-N/2,diffusers-dit-N/2+dit_init=true,diffusers-dit-N/2+dit_init=true+shared_embedder=true

(``MODEL+KEY=VALUE+...``: ``train``'s ``--model-option KEY=VALUE``, VALUE read as JSON when it
parses).

The two models differ by construction in ways the table may show (the README says which):
the toolkit's DiT shares one time/label embedding across blocks, counts attention and MLP as two
units, and zero-initialises its modulations and head (DiT's recipe); diffusers' DiT gives every
block its own time/label embedder and leaves PyTorch's default initialisation.  The
``diffusers-dit`` options take these differences away one at a time: ``dit_init`` (DiT's zero
modulations and head), ``shared_embedder`` (one time/label embedder for every block, the toolkit's
parameter count), ``dit_embedder_init`` (DiT's N(0, 0.02^2) embedder initialisation).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, UsageError, csv, run_main  # noqa: E402

from rdm_dynamics.checks.denoising_risk import bins_of, measure_risk
from rdm_dynamics.checks.trained_subject import checkpoint_config, load_subject
from rdm_dynamics.files import atomic_write_json
from rdm_dynamics.models import build_model
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
    p.add_argument("--variants", default=None,
                   help="comma-separated MODEL[+KEY=VALUE...] columns, the first the reference "
                        "(default: RDM-DiT-<size>,diffusers-dit-<size>)")
    p.add_argument("--quick", action="store_true", help="C10's quick sizes (4 bins of 64)")
    p.add_argument("--out", default="benchmark-runs/diffusers_parity")
    p.add_argument("--json", default=None, metavar="PATH")
    return p.parse_args(argv)


def parse_variant(text: str) -> tuple[str, dict]:
    """``MODEL+KEY=VALUE+...`` -> (MODEL, options); UsageError for a malformed option or a model
    that cannot be built with them (checked before any training)."""
    model, *items = text.strip().split("+")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--variants: {item!r} in {text!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    try:
        build_model(model, gate="adaln-zero", input_size=8, in_channels=1, num_classes=10,
                    **options)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"--variants: {text!r} cannot be built: {exc}") from None
    return model, options


def run(variant: str, seed: int, args) -> dict:
    """Train (or reuse) one model and measure its risk decomposition."""
    model, options = parse_variant(variant)
    folder = Path(args.out) / f"{variant.replace('/', '_')}-seed{seed}"
    cfg = TrainConfig(model=model, model_options=options, gate="adaln-zero", data="digits-gmm",
                      steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=seed,
                      out=str(folder), log_every=100, ckpt_every=10**9, progress=False,
                      n_samples=4, sample_steps=2, device="cpu")
    if not any(folder.glob("ckpt-*.json")):
        train(cfg)
    config = checkpoint_config(str(folder), quick=args.quick)
    subject = load_subject(config)
    metrics, _ = measure_risk(subject, config)
    params = sum(p.numel() for p in subject.net.parameters())
    return {"model": variant, "seed": seed, "parameters": params, "units": config.depth,
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
    models = csv(args.variants) if args.variants else [f"RDM-DiT-{args.size}",
                                                       f"diffusers-dit-{args.size}"]
    if len(models) < 2 or len(set(models)) < len(models):
        raise UsageError(f"--variants needs two or more distinct columns, got {args.variants!r}")
    for m in models:
        parse_variant(m)
    rows = {m: [run(m, s, args) for s in seeds] for m in models}
    bins = bins_of(rows[models[0]][0]["metrics"])
    table = {m: combine(rows[m], bins) for m in models}
    diffs = {m: [(table[models[0]][k][0] - table[m][k][0])
                 / math.sqrt(table[models[0]][k][1] ** 2 + table[m][k][1] ** 2)
                 for k in range(bins)] for m in models[1:]}
    print_table(args, models, table, diffs, rows, bins)
    result = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds,
              "reference": models[0],
              "models": {m: {"parameters": rows[m][0]["parameters"], "units": rows[m][0]["units"],
                             "excess": {str(k): table[m][k][:2] for k in range(bins)}}
                         for m in models},
              "t_bins": [table[models[0]][k][2] for k in range(bins)],
              "diff_over_se": diffs}
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


def print_table(args, models, table, diffs, rows, bins) -> None:
    """Columns A, B, C...: excess +/- SE per bin, then (reference - X) / SE for each other X."""
    print(f"excess risk E|eps_theta - eps*|^2 per t-bin, digits-gmm, {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.lr:g}, seeds {args.seeds}")
    letters = [chr(ord("A") + i) for i in range(len(models))]
    for letter, m in zip(letters, models, strict=True):
        r = rows[m][0]
        print(f"  {letter} = {m}: {r['parameters']} parameters, {r['units']} residual units")
    head = "".join(f"{x:>21}" for x in letters) + "".join(f"  (A-{x})/SE" for x in letters[1:])
    print(f"{'t':>6} {'Bayes R*':>9}{head}")
    for k in range(bins):
        t, bayes = table[models[0]][k][2:]
        cells = "".join(f"{table[m][k][0]:10.4f} +/- {table[m][k][1]:.4f}" for m in models)
        zs = "".join(f"{diffs[m][k]:11.1f}" for m in models[1:])
        print(f"{t:6.3f} {bayes:9.4f}{cells}{zs}")

if __name__ == "__main__":
    sys.exit(run_main(main))
