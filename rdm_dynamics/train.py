"""``python -m rdm_dynamics.train``: train a Neural-RDM diffusion model.

    python -m rdm_dynamics.train --model RDM-DiT-T/2 --data digits --steps 2000 --out runs/dit
    python -m rdm_dynamics.train --config run.yaml --lr 3e-4          # flags override the file
    python -m rdm_dynamics.train --out runs/dit --resume               # continue a killed run
    torchrun --nproc_per_node 2 -m rdm_dynamics.train ...             # data-parallel (DDP)

The configuration is :class:`TrainConfig`: defaults, then a YAML or TOML file (``--config``, a
flat mapping of the same keys), then the flags.  The run folder (``--out``) receives ``log.jsonl``
(one JSON object per logged step: loss, learning rate, gradient norm, gate statistics from
``model.gate_values()``), sample grids under ``samples/`` (PNG, GIF for videos) and checkpoints
(``checkpoint.py``: safetensors + JSON, atomic, never unpickled).

Exactness.  Every random draw of a step comes from state saved in the checkpoint: the batch
indices are a function of (seed, step) (``data.BatchSchedule``), the diffusion times, noise and
label dropout come from one generator drawn for the global batch (``diffusion.TrainingDraws``),
and the global torch RNG state is saved too.  So on the CPU a resumed run repeats the
uninterrupted run's losses exactly, and with N processes every rank takes its slice of the same
global draws: the gradient DDP averages is the single-process gradient of the global batch.

Failures.  A loss or gradient norm that is NaN or infinite stops the run before the optimizer
step with a message naming the last good checkpoint (exit code 1).  Bad input (flags, config file,
data, checkpoint to resume) gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cli import Parser, UsageError
from .files import atomic_write_bytes
from .sde import SDES, make_sde
from .training import data as data_mod
from .training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .training.diffusion import PREDICTIONS, SAMPLERS, DiffusionObjective

PROG = "python -m rdm_dynamics.train"

__all__ = ["TrainConfig", "TrainingDiverged", "train", "main", "load_config_file", "EMA"]


@dataclass
class TrainConfig:
    """Everything a run depends on.  Stored in every checkpoint; ``--resume`` reuses it."""

    # model
    model: str = "RDM-DiT-T/2"
    gate: str = "rdm"
    model_options: dict = field(default_factory=dict)
    model_factory: str | None = None  # "module:function" with build_model's signature
    # data
    data: str = "digits"
    image_size: int | None = None  # dataset default: digits 8, moving-digits 16, folders 32
    frames: int | None = None  # moving-digits video length (default 8)
    channels: int = 1  # image folders: 1 (grey) or 3 (RGB)
    # diffusion
    sde: str = "vp"
    sde_options: dict = field(default_factory=dict)
    prediction: str = "eps"
    t_min: float = 1e-3
    label_dropout: float = 0.1
    # optimisation
    steps: int = 2000
    max_seconds: float = 0.0  # > 0: stop (with a checkpoint) once training has run this long
    batch_size: int = 64  # global batch, split evenly over the processes
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    # hardware
    device: str = "auto"
    bf16: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    compile: bool = False
    # output
    out: str = "runs/rdm"
    log_every: int = 10
    ckpt_every: int = 500
    keep: int = 2
    sample_every: int = 0  # 0: only at the end
    n_samples: int = 64
    sampler: str = "ddpm"
    sample_steps: int = 100
    guidance: float = 2.0
    progress: bool = True

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


#: What --resume may change: how long to run and what to write, not what is computed.
RESUME_OVERRIDES = {"steps", "max_seconds", "device", "compile", "out", "log_every",
                    "ckpt_every", "keep", "sample_every", "n_samples", "sampler",
                    "sample_steps", "guidance", "progress"}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

HELP = {
    "model": "named configuration of rdm_dynamics.models (MODEL_CONFIGS)",
    "gate": "residual gate: plain, post-ln, rezero, adaln-zero or rdm",
    "model_factory": "module:function with build_model's signature, for your own model",
    "data": "digits, moving-digits, a folder of PNG/JPEG images or a .npy/.npz file",
    "image_size": "resize to this size (digits 8, moving-digits canvas 16, folders 32)",
    "frames": "moving-digits video length (default 8)",
    "channels": "image folders: 1 (grey) or 3 (RGB)",
    "sde": "forward SDE of rdm_dynamics.sde: vp, subvp or ve",
    "sde_options": "JSON object of SDE arguments, e.g. '{\"beta_max\": 20}'",
    "prediction": "network target: eps or v",
    "t_min": "training times are uniform on [t_min, 1]; the samplers stop there",
    "label_dropout": "probability of the null label (classifier-free guidance training)",
    "steps": "total optimizer steps",
    "max_seconds": "stop with a checkpoint once training has run this long (0: no limit)",
    "batch_size": "global batch size, split over the processes",
    "lr": "AdamW learning rate (after a linear warm-up)",
    "warmup": "warm-up steps",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "clip the gradient norm to this",
    "ema_decay": "EMA decay of the weights used for sampling",
    "seed": "seed of every random draw",
    "device": "auto, cpu or cuda[:N] (torchrun: cuda means each rank's local GPU)",
    "bf16": "bfloat16 autocast on CUDA",
    "compile": "torch.compile the model",
    "out": "run folder: log.jsonl, samples/, checkpoints",
    "log_every": "log every N steps",
    "ckpt_every": "checkpoint every N steps (and at the end)",
    "keep": "checkpoints kept",
    "sample_every": "sample grid every N steps (0: only at the end)",
    "n_samples": "samples per grid",
    "sampler": "euler-maruyama, pf-ode or ddpm",
    "sample_steps": "sampler steps for the grids",
    "guidance": "classifier-free guidance scale for the grids",
    "progress": "tqdm progress bar",
}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


# ------------------------------------------------------------------------------------------------
# Configuration: file, flags, validation
# ------------------------------------------------------------------------------------------------

def _coerce(name: str, value):
    """Check and convert one configuration value to its field's type."""
    kind = FIELDS[name].type
    if value is None:
        if "None" in kind:
            return None
        raise UsageError(f"{name} cannot be empty")
    try:
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("dict"):
            if isinstance(value, str):  # from the command line: a JSON object
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be {kind.split(' |')[0]}, got {value!r}") from None


def load_config_file(path: str | Path) -> dict:
    """A flat mapping of TrainConfig keys ('-' or '_') from a .yaml/.yml or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            loaded = yaml.safe_load(text)
        elif path.suffix.lower() == ".toml":
            import tomllib

            loaded = tomllib.loads(text)
        else:
            raise UsageError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")
    except UsageError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot parse config file {str(path)!r}: {first}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {str(path)!r} must hold a mapping of settings")
    out = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UsageError(f"unknown setting {key!r} in {str(path)!r}")
        out[name] = _coerce(name, value)
    return out


def _parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--model-option must look like KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def build_parser():
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML or TOML file of settings")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="architecture override passed to build_model (repeatable)")
    for name, f in FIELDS.items():
        if name == "model_options":
            continue
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = f"{HELP.get(name, '')} (default {default})"
        if f.type.startswith("bool"):
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            p.add_argument(flag, default=None, metavar=name.upper(), help=text)
    return p


def _validate(cfg: TrainConfig) -> None:
    positive = ("steps", "batch_size", "log_every", "ckpt_every", "keep", "n_samples",
                "sample_steps")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UsageError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("warmup", "sample_every", "seed", "max_seconds"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"{name} must be non-negative, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UsageError(f"lr must be a positive number, got {cfg.lr}")
    if not cfg.grad_clip > 0:
        raise UsageError(f"grad_clip must be positive, got {cfg.grad_clip}")
    if not 0 <= cfg.ema_decay < 1:
        raise UsageError(f"ema_decay must lie in [0, 1), got {cfg.ema_decay}")
    if cfg.weight_decay < 0:
        raise UsageError(f"weight_decay must be non-negative, got {cfg.weight_decay}")
    if not 0 <= cfg.label_dropout <= 1:
        raise UsageError(f"label_dropout must lie in [0, 1], got {cfg.label_dropout}")
    if cfg.prediction not in PREDICTIONS:
        raise UsageError(f"unknown prediction {cfg.prediction!r}; choose one of "
                         f"{', '.join(PREDICTIONS)}")
    if cfg.sde not in SDES:
        raise UsageError(f"unknown sde {cfg.sde!r}; choose one of {', '.join(SDES)}")
    if cfg.sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 0 < cfg.t_min < 1:
        raise UsageError(f"t_min must lie in (0, 1), got {cfg.t_min}")
    if cfg.channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {cfg.channels}")
    for name in ("image_size", "frames"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if not math.isfinite(cfg.guidance):
        raise UsageError(f"guidance must be a finite number, got {cfg.guidance}")
    try:
        make_sde(cfg.sde, **cfg.sde_options)
    except TypeError as exc:
        raise UsageError(f"bad sde_options for {cfg.sde}: {exc}") from None


def resolve_config(argv) -> tuple[TrainConfig, bool]:
    """Defaults < config file < flags; with --resume, the checkpoint's configuration updated by
    the settings in RESUME_OVERRIDES.  Raises UsageError."""
    args = build_parser().parse_args(argv)
    given = load_config_file(args.config) if args.config else {}
    for name in FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = _coerce(name, value)
    if args.model_option:
        options = dict(given.get("model_options", {}))
        options.update(_parse_option(o) for o in args.model_option)
        given["model_options"] = options
    if args.resume:
        out = Path(given.get("out", TrainConfig.out))
        found = latest_checkpoint(out)
        if found is None:
            raise UsageError(f"--resume: no checkpoint in {str(out)!r}")
        try:
            saved = load_checkpoint(found).meta["train_config"]
        except (CheckpointError, KeyError) as exc:
            raise UsageError(f"--resume: {exc}") from None
        base = TrainConfig(**{k: v for k, v in saved.items() if k in FIELDS})
        changed = sorted(k for k, v in given.items()
                         if k not in RESUME_OVERRIDES and v != getattr(base, k))
        if changed:
            raise UsageError(f"--resume cannot change {', '.join(changed)} (the checkpoint's "
                             "run was trained with other values)")
        cfg = dataclasses.replace(base, **given)
    else:
        cfg = TrainConfig(**given)
        if latest_checkpoint(cfg.out) is not None:
            raise UsageError(f"{cfg.out!r} already holds a run: pass --resume to continue it or "
                             "choose another --out")
    _validate(cfg)
    return cfg, args.resume


# ------------------------------------------------------------------------------------------------
# Pieces of the training loop
# ------------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the weights, with warm-up: decay_k = min(d, (1+k)/(10+k))."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def gate_statistics(model: nn.Module) -> dict[str, list[float]]:
    """{unit gate name: [mean, std, min, max]} from ``model.gate_values()`` (if it has them)."""
    values = getattr(model, "gate_values", None)
    if values is None:
        return {}
    stats = {}
    for name, v in values().items():
        v = v.detach().float().reshape(-1)
        std = float(v.std()) if v.numel() > 1 else 0.0
        stats[name] = [float(v.mean()), std, float(v.min()), float(v.max())]
    return stats


class Distributed:
    """torch.distributed set up from torchrun's environment (a single process otherwise)."""

    def __init__(self, device_spec: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_spec in ("auto", "cuda") or \
            device_spec.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise UsageError(f"device {device_spec!r} asked for, but CUDA is not available here")
        if self.world > 1:
            self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        elif device_spec == "auto":
            self.device = torch.device("cuda" if cuda else "cpu")
        else:
            try:
                self.device = torch.device(device_spec)
            except (RuntimeError, ValueError):
                raise UsageError(f"unknown device {device_spec!r}; use auto, cpu or "
                                 "cuda[:N]") from None
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a scalar over the processes."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world

    def replica_difference(self, model: nn.Module) -> float:
        """max |theta_rank - theta_0| over all parameters and ranks (0 when replicas agree)."""
        if self.world == 1:
            return 0.0
        import torch.distributed as dist

        flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (flat - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def build_network(cfg: TrainConfig, dataset) -> nn.Module:
    """The model for this data, built under the run's seed (same weights on every rank).

    Label dropout is done by the objective, so the model is built with class_dropout_prob 0.
    """
    from .sample import model_builder

    shape = dataset.sample_shape
    frames = shape[0] if len(shape) == 4 else None
    channels, size = shape[-3], shape[-1]
    if shape[-1] != shape[-2]:
        raise UsageError(f"the data are {shape[-2]}x{shape[-1]}: square images only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return model_builder(cfg.model_factory)(
            cfg.model, gate=cfg.gate, input_size=size, in_channels=channels,
            num_classes=dataset.num_classes or 1, frames=frames, class_dropout_prob=0.0,
            **cfg.model_options)


def _log_lines_up_to(path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (written by a killed run after its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    atomic_write_bytes(path, "".join(s + "\n" for s in keep).encode())


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: bool = False, on_step=None) -> dict:
    """Run (or continue) training; returns {step, loss, checkpoint, seconds (of training)}.

    ``on_step(step, loss)`` is called after every optimizer step (tests use it to stop a run).
    Raises UsageError for bad input and TrainingDiverged for a non-finite loss.
    """
    from tqdm.auto import tqdm

    from .sample import cycle_labels, generate, save_samples

    dist_ = Distributed(cfg.device)
    try:
        out = Path(cfg.out)
        if dist_.main:
            (out / "samples").mkdir(parents=True, exist_ok=True)
        try:
            dataset = data_mod.load_dataset(cfg.data, size=cfg.image_size, frames=cfg.frames,
                                            channels=cfg.channels)
            schedule = data_mod.BatchSchedule(len(dataset), cfg.batch_size, cfg.seed)
        except data_mod.DataError as exc:
            raise UsageError(str(exc)) from None
        if cfg.batch_size % dist_.world:
            raise UsageError(f"batch_size {cfg.batch_size} is not divisible by the "
                             f"{dist_.world} processes")
        local = cfg.batch_size // dist_.world
        try:
            model = build_network(cfg, dataset)
        except (ValueError, TypeError, ImportError) as exc:
            raise UsageError(str(exc)) from None
        model = model.to(dist_.device)
        ema = EMA(model, cfg.ema_decay)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        objective = DiffusionObjective(make_sde(cfg.sde, **cfg.sde_options), cfg.prediction,
                                       cfg.t_min, cfg.label_dropout, dataset.num_classes)
        noise = torch.Generator(dist_.device).manual_seed(cfg.seed)
        start = 0
        last_ckpt = None
        if resume:
            last_ckpt = latest_checkpoint(out)
            ckpt = load_checkpoint(last_ckpt)  # on the CPU; load_state_dict copies to the device
            model.load_state_dict(ckpt.state_dict("model"), strict=True)
            ema.module.load_state_dict(ckpt.state_dict("ema"), strict=True)
            load_optimizer_state(optimizer, ckpt.tensors, ckpt.meta["optimizer"])
            set_rng_state(ckpt.meta["rng"], {"noise": noise})
            start = ckpt.step
        if dist_.main:  # a resumed run drops what its killed predecessor logged after the
            _log_lines_up_to(out / "log.jsonl", start)  # checkpoint; a new run starts afresh

        net = model
        if dist_.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dist_.device.index]
                                          if dist_.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) \
            if cfg.bf16 and dist_.device.type == "cuda" else None
        global_shape = (cfg.batch_size, *dataset.sample_shape)
        meta = {"train_config": cfg.to_json(), "model_config": model.config,
                "labelled": dataset.num_classes is not None, "world_size": dist_.world,
                "data": {"name": dataset.name, "size": len(dataset),
                         "skipped": dataset.skipped}}

        def checkpoint(step: int) -> Path | None:
            diff = dist_.replica_difference(model)
            path = None
            if dist_.main:
                meta["rng"] = rng_state({"noise": noise})
                meta["replica_max_param_diff"] = diff
                path = save_checkpoint(out, step, {"model": model, "ema": ema.module},
                                       optimizer, meta, keep=cfg.keep)
                if dist_.world > 1:
                    _append_log(out, {"step": step, "replica_max_param_diff": diff})
            dist_.barrier()
            return path

        def draw_samples(step: int) -> None:
            if not dist_.main:
                return
            labels = cycle_labels(cfg.n_samples, dataset.num_classes)
            x = generate(ema.module, cfg.to_json(), cfg.n_samples, labels=labels,
                         guidance=cfg.guidance, sampler=cfg.sampler, steps=cfg.sample_steps,
                         seed=cfg.seed, device=dist_.device, disable=True)
            save_samples(x, out / "samples" / f"step-{step:08d}")
            model.train()

        model.train()
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
                   disable=not (cfg.progress and dist_.main), file=sys.stderr)
        began, loss_value, done = time.perf_counter(), math.nan, start
        for step in bar:
            idx = schedule.indices(step)
            x, y = dataset.batch(idx[dist_.rank * local:(dist_.rank + 1) * local])
            x = x.to(dist_.device, non_blocking=True)
            y = None if y is None else y.to(dist_.device)
            draws = objective.draw(global_shape, noise, dist_.device)
            draws = draws.slice(dist_.rank * local, (dist_.rank + 1) * local)
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = objective.loss(net, x, y, draws, autocast=autocast)
            loss_value = float(dist_.mean(loss.detach()))
            if not math.isfinite(loss_value):
                _diverged(f"the loss is {loss_value} at step {step + 1}", last_ckpt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if not math.isfinite(grad_norm):
                _diverged(f"the gradient norm is {grad_norm} at step {step + 1}", last_ckpt)
            optimizer.step()
            ema.update(model, step)
            done = step + 1
            # the ranks agree on the (mean) elapsed time, so they stop at the same step
            out_of_time = cfg.max_seconds > 0 and dist_.mean(torch.tensor(
                time.perf_counter() - began, device=dist_.device)).item() >= cfg.max_seconds
            last = done == cfg.steps or out_of_time
            if dist_.main and (done % cfg.log_every == 0 or last):
                record = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                          "epoch": step // schedule.steps_per_epoch,
                          "seconds": round(time.perf_counter() - began, 3)}
                gates = gate_statistics(model)
                if gates:
                    record["gates"] = gates
                _append_log(out, record)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if on_step is not None:
                on_step(done, loss_value)
            if done % cfg.ckpt_every == 0 or last:
                last_ckpt = checkpoint(done) or last_ckpt
            if out_of_time:
                break
            if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                draw_samples(done)
        bar.close()
        seconds = time.perf_counter() - began  # training only, not the final sample grid
        if start < done:
            draw_samples(done)
        return {"step": done, "loss": loss_value, "checkpoint": last_ckpt, "seconds": seconds,
                "skipped": dataset.skipped}
    finally:
        dist_.close()


def _append_log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _diverged(what: str, last_ckpt: Path | None) -> None:
    keep = (f"the last good checkpoint is {last_ckpt} (resume from it with --resume, e.g. with "
            "a lower --lr)") if last_ckpt else "no checkpoint was written yet"
    raise TrainingDiverged(f"{what}; training stopped before the optimizer step, {keep}")


def main(argv=None) -> int:
    try:
        cfg, resume = resolve_config(sys.argv[1:] if argv is None else argv)
        summary = train(cfg, resume)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, data_mod.DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to step {summary['step']} (loss {summary['loss']:.5f}) in "
              f"{summary['seconds']:.1f} s; checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
