"""``python -m rdm_dynamics.sample``: draw samples from a trained checkpoint.

    python -m rdm_dynamics.sample --ckpt runs/digits --n 64 --sampler pf-ode --out samples.png

``--ckpt`` is a run folder (its latest checkpoint) or a checkpoint file.  Images are written as a
PNG grid, videos as an animated GIF of the grid; ``--npz`` also saves the raw samples and labels.
Labels cycle through the classes (``--label K`` fixes one); ``--guidance`` is the classifier-free
guidance scale w (1: conditional model, 0: unconditional).  The EMA weights are used unless
``--weights model``.  The SDE, prediction type and t_min come from the checkpoint's training
configuration (``training.settings.TrainConfig``), the model from ``models.load_model``, the
sampling from ``training.sampling.generate``.  Bad arguments get one line on stderr and exit
code 2.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import Parser, UsageError, parse_device
from .files import atomic_write_bytes
from .models import load_model
from .sde import make_sde
from .training.checkpoint import load_checkpoint
from .training.diffusion import SAMPLERS
from .training.images import save_samples
from .training.sampling import cycle_labels, generate
from .training.settings import TrainConfig

PROG = "python -m rdm_dynamics.sample"

__all__ = ["main"]


def build_parser():
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True,
                   help="run folder (latest checkpoint) or checkpoint file")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--sampler", default="pf-ode", choices=SAMPLERS, help="default pf-ode")
    p.add_argument("--steps", type=int, default=100,
                   help="steps of euler-maruyama / ddpm / fixed-grid ODE methods (default 100)")
    p.add_argument("--method", default="dopri5",
                   help="torchdiffeq method for pf-ode: dopri5 (adaptive, default), euler, "
                        "midpoint, rk4, ...")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale w (default 1: no guidance)")
    p.add_argument("--label", type=int, default=None, help="sample this class only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="samples.png", help="PNG (images) or GIF (videos) path")
    p.add_argument("--npz", default=None, help="also save samples and labels to this .npz")
    p.add_argument("--model-factory", default=None,
                   help="module:function that built the model, if not rdm_dynamics.models")
    return p


def _validate(args) -> torch.device:
    for name, value, lo in (("n", args.n, 1), ("steps", args.steps, 1),
                            ("batch-size", args.batch_size, 1), ("seed", args.seed, 0)):
        if value < lo:
            raise UsageError(f"--{name} must be at least {lo}, got {value}")
    if not (args.rtol > 0 and args.atol > 0):
        raise UsageError("--rtol and --atol must be positive")
    if not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if args.sampler == "pf-ode":
        from .paths import ODE_METHODS

        if args.method not in ODE_METHODS:
            raise UsageError(f"unknown --method {args.method!r}; choose one of "
                             f"{', '.join(ODE_METHODS)}")
    device = parse_device(args.device)
    for flag, path in (("--out", args.out), ("--npz", args.npz)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{flag} {path!r}: its folder does not exist")
    return device


def main(argv=None) -> int:
    try:  # bad input is one line and exit code 2
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        device = _validate(args)
        ckpt = load_checkpoint(args.ckpt)
        net = load_model(ckpt, args.weights, args.model_factory)
        if "train_config" not in ckpt.meta:
            raise UsageError(f"{ckpt.path} holds no training configuration")
        trained = TrainConfig.from_json(ckpt.meta["train_config"])
        sde = make_sde(trained.sde, **trained.sde_options)
        num_classes = net.config.get("num_classes")
        if not ckpt.meta.get("labelled", True):
            num_classes = None
        if args.label is not None and (num_classes is None or not 0 <= args.label < num_classes):
            raise UsageError(f"--label must be a class in 0..{(num_classes or 1) - 1} of a "
                             "class-conditional model")
    except (UsageError, ValueError, TypeError, ImportError) as exc:  # CheckpointError and
        print(f"{PROG}: error: {exc}", file=sys.stderr)  # ModelLoadError are ValueErrors
        return 2
    labels = cycle_labels(args.n, num_classes, args.label)
    with contextlib.suppress(KeyboardInterrupt):
        x = generate(net, args.n, sde=sde, prediction=trained.prediction, t_min=trained.t_min,
                     labels=labels, guidance=args.guidance, sampler=args.sampler,
                     steps=args.steps, method=args.method, rtol=args.rtol, atol=args.atol,
                     seed=args.seed, device=device, batch_size=args.batch_size,
                     autocast=trained.bf16)
        path = save_samples(x, args.out)
        if args.npz:
            buf = io.BytesIO()
            np.savez(buf, samples=x.numpy(),
                     **({} if labels is None else {"labels": labels.numpy()}))
            atomic_write_bytes(args.npz, buf.getvalue())
        print(f"{args.n} samples ({args.sampler}, guidance {args.guidance:g}) from step "
              f"{ckpt.step} of {ckpt.path}: {path}")
        return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
