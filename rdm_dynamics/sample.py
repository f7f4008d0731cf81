"""``python -m rdm_dynamics.sample``: draw samples from a trained checkpoint.

    python -m rdm_dynamics.sample --ckpt runs/digits --n 64 --sampler pf-ode --guidance 1.5

``--ckpt`` is a run folder (its newest intact checkpoint) or a checkpoint file.  Images are written
as a grid (PNG, or JPEG/GIF by the suffix of ``--out``), videos as an animated GIF of the grid;
each cell is captioned with the class it was asked for.  By default the grid goes into the run
folder, ``samples/sample-step<N>-<sampler>-seed<S>.png`` (``-2``, ``-3``, ... appended rather than
replace an earlier one); an ``--out`` or ``--npz`` that exists is refused, never overwritten.
``--npz`` also saves the raw samples and labels.  Labels cycle through the classes (``--label K``
fixes one); ``--guidance`` is the classifier-free guidance scale w >= 0 (1: the conditional
model, 0: unconditional, > 1: guided).  The EMA weights are used unless ``--weights model``.  The
SDE, prediction type and t_min come from the checkpoint's training configuration
(``training.settings.TrainConfig``), the model from ``models.load_model`` (a model factory only
if ``--model-factory`` names it: a checkpoint never chooses code to import), the sampling from
``training.sampling.generate``.

Exit codes: 0 done; 2 bad input or a file that cannot be read or written (one line on stderr,
checked before sampling starts); 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .cli import (
    MAX_SEED,
    Parser,
    UsageError,
    parse_device,
    parse_int,
    parse_seed,
    run_command,
)
from .files import atomic_write_bytes
from .models import load_model
from .sde import make_sde
from .training.checkpoint import load_checkpoint
from .training.diffusion import ODE_ATOL, ODE_METHOD, ODE_RTOL, SAMPLER, SAMPLERS, STEPS
from .training.images import sample_path, save_samples
from .training.known_law import LAW_PREFIX
from .training.sampling import NonFiniteSamples, cycle_labels, generate
from .training.settings import TrainConfig, newest_intact_checkpoint
from .training.validation import check_finite_weights, validate_config, validate_law

PROG = "python -m rdm_dynamics.sample"

__all__ = ["main"]

LIMITS = {"n": (1, 100_000), "steps": (1, 100_000), "batch-size": (1, 65_536)}


def build_parser():
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True,
                   help="run folder (its newest intact checkpoint) or checkpoint file")
    p.add_argument("--n", default="64", help="number of samples (default 64)")
    p.add_argument("--sampler", default=SAMPLER, choices=SAMPLERS,
                   help=f"{SAMPLER} (default: adaptive {ODE_METHOD}, the accurate choice; train's "
                        "grids use ddpm for speed), " + " or ".join(
                            name for name in SAMPLERS if name != SAMPLER))
    p.add_argument("--steps", default=str(STEPS),
                   help="steps of euler-maruyama / ddpm / fixed-grid ODE methods "
                        f"(default {STEPS})")
    p.add_argument("--method", default=ODE_METHOD,
                   help=f"torchdiffeq method for pf-ode: {ODE_METHOD} (adaptive, default), "
                        "euler, midpoint, rk4, ...")
    p.add_argument("--rtol", default=str(ODE_RTOL),
                   help=f"relative tolerance of adaptive pf-ode methods (default {ODE_RTOL:g})")
    p.add_argument("--atol", default=str(ODE_ATOL),
                   help=f"absolute tolerance of adaptive pf-ode methods (default {ODE_ATOL:g})")
    p.add_argument("--guidance", default="1.0",
                   help="classifier-free guidance scale w >= 0 (default 1: the conditional "
                        "model, no guidance; 0: unconditional; train's grids use 2)")
    p.add_argument("--label", default=None, help="sample this class only (default: cycle)")
    p.add_argument("--seed", default="0", help=f"seed of the sampler's noise, 0 to {MAX_SEED} "
                   "(default 0)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"),
                   help="ema (default: the averaged weights) or model (the raw weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--batch-size", default="256",
                   help="samples drawn at once (default 256; the samples do not depend on it)")
    p.add_argument("--out", default=None,
                   help="grid file: .png/.jpg/.gif for images, .gif for videos (default: "
                        "samples/sample-step<N>-<sampler>-seed<S>.png in the run folder); "
                        "never overwritten")
    p.add_argument("--npz", default=None,
                   help="also save samples and labels to this new .npz file")
    p.add_argument("--model-factory", default=None,
                   help="module:function that built the model, if not rdm_dynamics.models "
                        "(imported because you name it here)")
    p.add_argument("--progress", default=True, action=argparse.BooleanOptionalAction,
                   help="tqdm progress bar on stderr, when it is a terminal (default on)")
    return p


def _float(text: str, flag: str, positive: bool = False, minimum: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {text}")
    if positive and value <= 0:
        raise UsageError(f"{flag} must be positive, got {text}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{flag} must be at least {minimum:g}, got {text}")
    return value


def _validate(args) -> torch.device:
    """Every flag read and checked; raises UsageError."""
    for name, (lo, hi) in LIMITS.items():
        attr = name.replace("-", "_")
        setattr(args, attr, parse_int(getattr(args, attr), name, lo, hi))
    args.seed = parse_seed(args.seed)
    args.label = None if args.label is None else parse_int(args.label, "label", 0)
    args.rtol = _float(args.rtol, "--rtol", positive=True)
    args.atol = _float(args.atol, "--atol", positive=True)
    args.guidance = _float(args.guidance, "--guidance")
    if args.guidance < 0:
        raise UsageError(f"--guidance must be at least 0 (0: unconditional, 1: the conditional "
                         f"model, > 1: guided), got {args.guidance:g}")
    if args.sampler == "pf-ode":
        from .solvers import ODE_METHODS

        if args.method not in ODE_METHODS:
            raise UsageError(f"unknown --method {args.method!r}; choose one of "
                             f"{', '.join(ODE_METHODS)}")
    device = parse_device(args.device)
    if args.npz is not None and not args.npz.endswith(".npz"):
        raise UsageError(f"--npz {args.npz!r} must end in .npz")
    return device


def _new_file(path: Path, flag: str) -> Path:
    """``path`` as a file to create: its folder exists and can be written, nothing is there."""
    if path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder, not a file")
    if path.exists():
        raise UsageError(f"{flag} {str(path)!r} exists: choose another name (it is left as it "
                         "is)")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: its folder does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{flag} {str(path)!r}: its folder cannot be written "
                         f"({exc.strerror or exc})") from None
    return path


def _default_out(run: Path, step: int, args, video: bool) -> Path:
    """A new file in the run folder's samples/ (beside, never over, an earlier one)."""
    folder = run / "samples"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write into the run folder {str(run)!r} "
                         f"({exc.strerror or exc}): pass --out") from None
    stem = f"sample-step{step:08d}-{args.sampler}-seed{args.seed}"
    ext = ".gif" if video else ".png"
    path, k = folder / f"{stem}{ext}", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}{ext}", k + 1
    return path


def _load(args):
    """(checkpoint, model, training configuration, number of classes); raises UsageError."""
    where = Path(args.ckpt)
    try:
        if where.is_dir():
            _, ckpt, _ = newest_intact_checkpoint(
                where, warn=lambda m: print(f"warning: {m}", file=sys.stderr), flag="--ckpt")
        else:
            ckpt = load_checkpoint(where)
        net = load_model(ckpt, args.weights, args.model_factory)
        if "train_config" not in ckpt.meta:
            raise UsageError(f"{ckpt.path} holds no training configuration")
        trained = TrainConfig.from_json(ckpt.meta["train_config"])
        validate_config(trained)  # a checkpoint is input (training.validation)
        validate_law(ckpt.state_dict(LAW_PREFIX), trained, getattr(net, "sample_shape", None))
        check_finite_weights(net, f"the {args.weights} weights")
    except UsageError as exc:
        raise UsageError(f"--ckpt {args.ckpt}: the stored run is refused: {exc}") from None
    except (ValueError, TypeError, ImportError) as exc:  # CheckpointError, ModelLoadError
        raise UsageError(str(exc)) from None
    num_classes = net.config.get("num_classes")
    if not ckpt.meta.get("labelled", True):
        num_classes = None
    return ckpt, net, trained, num_classes


def main(argv=None) -> int:
    return run_command(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    device = _validate(args)
    ckpt, net, trained, num_classes = _load(args)
    try:
        sde = make_sde(trained.sde, **trained.sde_options)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"the checkpoint's SDE cannot be built: {exc}") from None
    if args.label is not None and (num_classes is None or not args.label < num_classes):
        raise UsageError(f"--label must be a class in 0..{(num_classes or 1) - 1} of a "
                         "class-conditional model")
    if num_classes is None and args.guidance != 1:
        print(f"{PROG}: note: the model is unconditional; --guidance {args.guidance:g} has no "
              "effect", file=sys.stderr)
    video = bool(net.config.get("frames"))
    if args.out is None:
        out = _default_out(ckpt.path.parent, ckpt.step, args, video)
    else:
        if Path(args.out).is_dir():
            raise UsageError(f"--out {args.out!r} is a folder, not a file")
        try:
            out = _new_file(sample_path(args.out, video), "--out")
        except ValueError as exc:
            raise UsageError(f"--out {args.out!r}: {exc}") from None
    npz = None if args.npz is None else _new_file(Path(args.npz), "--npz")

    labels = cycle_labels(args.n, num_classes, args.label)
    try:
        x = generate(net, args.n, sde=sde, prediction=trained.prediction, t_min=trained.t_min,
                     labels=labels, guidance=args.guidance, sampler=args.sampler,
                     steps=args.steps, method=args.method, rtol=args.rtol, atol=args.atol,
                     seed=args.seed, device=device, batch_size=args.batch_size,
                     autocast=trained.bf16, disable=None if args.progress else True)
    except NonFiniteSamples as exc:  # a property of the checkpoint: nothing is written
        raise UsageError(f"--ckpt {args.ckpt}: {exc}") from None
    path = save_samples(x, out, labels=labels)
    if npz is not None:
        buf = io.BytesIO()
        np.savez(buf, samples=x.numpy(),
                 **({} if labels is None else {"labels": labels.numpy()}))
        atomic_write_bytes(npz, buf.getvalue())
    print(f"{args.n} samples ({args.sampler}, guidance {args.guidance:g}) from step "
          f"{ckpt.step} of {ckpt.path}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
