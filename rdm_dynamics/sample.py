"""``python -m rdm_dynamics.sample``: draw samples from a trained checkpoint.

    python -m rdm_dynamics.sample --ckpt runs/digits --n 64 --sampler pf-ode --out samples.png

``--ckpt`` is a run folder (its latest checkpoint) or a checkpoint file.  Images are written as a
PNG grid, videos as an animated GIF of the grid; ``--npz`` also saves the raw samples and labels.
Labels cycle through the classes (``--label K`` fixes one); ``--guidance`` is the classifier-free
guidance scale w (1: conditional model, 0: unconditional).  The EMA weights are used unless
``--weights model``.  Bad arguments get one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cli import Parser, UsageError, parse_device
from .files import atomic_write_bytes
from .sde import make_sde
from .training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .training.diffusion import SAMPLERS, ScoreModel, sample

PROG = "python -m rdm_dynamics.sample"

__all__ = ["generate", "load_model", "model_builder", "save_grid", "save_gif", "to_uint8",
           "main"]


# ------------------------------------------------------------------------------------------------
# Models from checkpoints
# ------------------------------------------------------------------------------------------------

def model_builder(factory: str | None = None):
    """``rdm_dynamics.models.build_model``, or a ``module:function`` with the same signature."""
    if not factory:
        from .models import build_model

        return build_model
    module, _, name = factory.partition(":")
    if not module or not name:
        raise ValueError(f"model factory must look like 'package.module:function', got "
                         f"{factory!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import model factory {factory!r}: {exc}") from None
    return fn


def load_model(ckpt: Checkpoint, weights: str = "ema", factory: str | None = None) -> nn.Module:
    """Rebuild the checkpoint's model (``build(**model_config)``) and load its weights.

    A model trained with a custom factory is rebuilt only if the caller names that factory: a
    checkpoint never chooses which code to import.
    """
    saved = ckpt.meta.get("train_config", {}).get("model_factory")
    if saved and factory != saved:
        raise CheckpointError(f"this checkpoint's model was built by {saved!r}; pass "
                              f"--model-factory {saved} to rebuild it")
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    net = model_builder(factory)(**ckpt.meta["model_config"])
    state = ckpt.state_dict(weights)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"the {weights} weights do not fit the model: {first}") from None
    return net.eval()


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------

def cycle_labels(n: int, num_classes: int | None, label: int | None = None,
                 device=None) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... (or all ``label``); None for an unconditional model."""
    if num_classes is None:
        return None
    if label is not None:
        return torch.full((n,), int(label), dtype=torch.long, device=device)
    return torch.arange(n, device=device) % num_classes


def generate(net: nn.Module, train_config: dict, n: int, *, labels: torch.Tensor | None = None,
             guidance: float = 1.0, sampler: str = "pf-ode", steps: int = 100,
             method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-4, seed: int = 0,
             device: str | torch.device = "cpu", batch_size: int = 256,
             disable: bool | None = None) -> torch.Tensor:
    """``n`` samples of shape ``net.config``'s data shape, drawn in batches from one generator.

    ``train_config`` supplies the SDE (``sde``, ``beta_min``, ``beta_max``), the prediction type
    and ``t_min`` (the sampler's last time) the network was trained with.
    """
    device = torch.device(device)
    cfg = net.config
    frames = cfg.get("frames")
    shape = ((frames,) if frames else ()) + (cfg["in_channels"], cfg["input_size"],
                                             cfg["input_size"])
    sde = make_sde(train_config.get("sde", "vp"), **train_config.get("sde_options", {}))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) \
        if device.type == "cuda" and train_config.get("bf16", True) else None
    g = torch.Generator(device).manual_seed(seed)
    net = net.to(device).eval()
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = None if labels is None else labels[start:start + b].to(device)
        score = ScoreModel(net, sde, train_config.get("prediction", "eps"), y=y,
                           guidance=guidance if y is not None else 1.0,
                           num_classes=cfg.get("num_classes"), autocast=autocast)
        out.append(sample(score, (b, *shape), sde=sde, sampler=sampler, steps=steps,
                          t_end=train_config.get("t_min", 1e-3), method=method, rtol=rtol,
                          atol=atol, generator=g, device=device, disable=disable).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------

def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats to uint8 pixels."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _tile(x: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) uint8 -> one (H', W', C) grid with ``pad`` pixels of grey between cells."""
    n, c, h, w = x.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


def _image(grid: np.ndarray, min_width: int = 256):
    from PIL import Image

    scale = max(1, math.ceil(min_width / grid.shape[1]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)


def save_grid(x: torch.Tensor, path: str | Path, columns: int | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as one PNG grid, written atomically."""
    buf = io.BytesIO()
    _image(_tile(to_uint8(x), columns)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_gif(x: torch.Tensor, path: str | Path, columns: int | None = None,
             frame_ms: int = 150) -> None:
    """Videos (N, T, C, H, W) in [-1, 1] as one animated GIF of the grid, written atomically."""
    pix = to_uint8(x)
    frames = [_image(_tile(pix[:, k], columns)) for k in range(pix.shape[1])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=frame_ms, loop=0)
    atomic_write_bytes(path, buf.getvalue())


def save_samples(x: torch.Tensor, path: str | Path) -> Path:
    """PNG grid for images, GIF for videos; returns the path.  A .png/.gif suffix is set to the
    right one, any other name gets it appended (so "guidance-1.5" becomes "guidance-1.5.png")."""
    path, ext = Path(path), (".gif" if x.ndim == 5 else ".png")
    path = path.with_suffix(ext) if path.suffix.lower() in (".png", ".gif") else \
        path.with_name(path.name + ext)
    (save_gif if x.ndim == 5 else save_grid)(x, path)
    return path


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

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
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        device = _validate(args)
        ckpt = load_checkpoint(args.ckpt)
        net = load_model(ckpt, args.weights, args.model_factory)
        num_classes = net.config.get("num_classes")
        if not ckpt.meta.get("labelled", True):
            num_classes = None
        if args.label is not None and (num_classes is None or not 0 <= args.label < num_classes):
            raise UsageError(f"--label must be a class in 0..{(num_classes or 1) - 1} of a "
                             "class-conditional model")
    except (UsageError, CheckpointError, ValueError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    labels = cycle_labels(args.n, num_classes, args.label)
    with contextlib.suppress(KeyboardInterrupt):
        x = generate(net, ckpt.meta["train_config"], args.n, labels=labels,
                     guidance=args.guidance, sampler=args.sampler, steps=args.steps,
                     method=args.method, rtol=args.rtol, atol=args.atol, seed=args.seed,
                     device=device, batch_size=args.batch_size)
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
