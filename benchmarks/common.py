"""Helpers shared by the benchmark scripts: one-line argument errors and a model training step.

The step is what a training loop does with a backbone, without the diffusion objective (that
lives in rdm_dynamics.training.diffusion): forward on a fixed batch, mean squared error against a
fixed target, backward, AdamW update.  Its cost is the cost of a real training step of the backbone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

from rdm_dynamics.models import build_model


class UsageError(Exception):
    """A bad argument: one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``UsageError``), and a ``--json PATH`` checked before any
    measuring: its folder must exist and be writable, and PATH must not be a folder, so a long
    run is not lost at its end for want of a place to write its figures."""

    def error(self, message):
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for action in self._actions:
            if "--json" in action.option_strings and getattr(parsed, action.dest, None):
                check_json_path(getattr(parsed, action.dest))
        return parsed


def check_json_path(path: str) -> None:
    """UsageError unless ``path`` can be written as a file."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"--json {path!r} is a folder, not a file")
    if not folder.is_dir():
        raise UsageError(f"--json {path!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--json {path!r}: the folder {str(folder)!r} cannot be written")


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; a UsageError or ValueError from the arguments is one line, exit 2."""
    try:
        return main(argv)
    except (UsageError, ValueError) as err:
        print(f"{sys.argv[0]}: error: {err}", file=sys.stderr)
        return 2


def csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def training_step(model: torch.nn.Module, *, batch: int, device: str,
                  autocast_dtype: torch.dtype | None = None, seed: int = 0, fused: bool = False):
    """A closure that runs one training step of ``model`` on a fixed random batch."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *model.sample_shape)
    x = torch.randn(shape, generator=g).to(device)
    target = torch.randn(shape, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    y = torch.randint(0, max(model.config["num_classes"], 1), (batch,), generator=g).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=fused or None)
    device_type = torch.device(device).type

    def step():
        opt.zero_grad(set_to_none=True)
        ctx = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            out = model(x, t, y)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        return loss

    return step


def build(name: str, gate: str, *, input_size: int, in_channels: int, num_classes: int,
          device: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, gate=gate, input_size=input_size, in_channels=in_channels,
                        num_classes=num_classes, **overrides)
    return model.to(device).train()
