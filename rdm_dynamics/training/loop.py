"""The training loop: ``train(cfg)`` runs setup, restore, then step and log until done.

* :func:`setup` builds everything a run needs from its :class:`~.settings.TrainConfig` (the
  processes, data, batch schedule, SDE, objective, model, EMA, optimizer, noise generator)
  before any file is written.  The constructors check the values they use (names of the SDE,
  prediction, sampler, model, gate and data, their options, the batch size against the data);
  their errors (ValueError, TypeError, DataError, ModelLoadError) become one UsageError here.
* :func:`restore` (``--resume``) loads the latest checkpoint of the run folder: weights, EMA,
  optimizer state and every random number generator state, and returns its step.
* :func:`train_step` does one optimizer step; :func:`log_step` appends one line to
  ``log.jsonl`` (loss, learning rate, gradient norm, epoch, seconds, gate statistics from
  ``model.gate_values()``); :func:`save` writes a checkpoint; :func:`draw_samples` a grid.

Schedule.  The learning rate rises linearly over ``warmup`` steps, lr_k = lr min(1, (k+1)/warmup),
then stays constant; AdamW; the gradient norm is clipped to ``grad_clip``.  The EMA of the
weights, used for sampling, has the warm-up decay d_k = min(ema_decay, (1+k)/(10+k)).

Exactness.  Every random draw of a step comes from state saved in the checkpoint: the batch
indices are a function of (seed, step) (``data.BatchSchedule``), the diffusion times, noise and
label dropout come from one generator drawn for the global batch (``diffusion.TrainingDraws``),
and the global torch RNG state is saved too.  So on the CPU a resumed run repeats the
uninterrupted run's losses exactly, and with N processes every rank takes its slice of the same
global draws: the gradient DDP averages is the single-process gradient of the global batch.

Failures.  A loss or gradient norm that is NaN or infinite stops the run before the optimizer
step with :class:`TrainingDiverged`, naming the last good checkpoint.  Ctrl-C stops it with
:class:`TrainingInterrupted` (a KeyboardInterrupt) naming the checkpoint a resume starts from.

Files.  Everything is written into ``cfg.out`` (for a resumed run: the folder its checkpoint was
found in); hidden temporary files that killed atomic writes left there are removed at the start.
A model factory (``cfg.model_factory``) is imported only because the caller set it, and the run
says so on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cli import UsageError
from ..files import atomic_write_bytes, remove_stale_temporaries
from ..limits import loads_json
from ..models import initialize, model_builder
from ..sde import SDE
from .checkpoint import (
    CHECKPOINT_FILE,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import BatchSchedule, load_dataset
from .diffusion import DiffusionObjective, get_sampler
from .distributed import Distributed
from .images import save_samples
from .known_law import LAW_PREFIX, KnownLawData, LawModule, LawSpec
from .sampling import cycle_labels, generate
from .settings import TrainConfig
from .validation import build_sde, validate_config

__all__ = ["train", "setup", "restore", "Run", "TrainingDiverged", "TrainingInterrupted", "EMA",
           "learning_rate", "gate_statistics", "build_network", "law_spec"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message names the checkpoint a resume starts from."""


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the weights, with warm-up: decay_k = min(d, (1+k)/(10+k))."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
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


def build_network(cfg: TrainConfig, dataset) -> nn.Module:
    """The model for this data, built under the run's seed (same weights on every rank), then
    initialised as ``cfg.init`` says (i.i.d. as built, or smooth in depth).

    Label dropout is done by the objective, so the model is built with class_dropout_prob 0.
    """
    shape = dataset.sample_shape
    frames = shape[0] if len(shape) == 4 else None
    channels, size = shape[-3], shape[-1]
    if shape[-1] != shape[-2]:
        raise ValueError(f"the data are {shape[-2]}x{shape[-1]}: square images only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = model_builder(cfg.model_factory)(
            cfg.model, gate=cfg.gate, input_size=size, in_channels=channels,
            num_classes=dataset.num_classes or 1, frames=frames, class_dropout_prob=0.0,
            **cfg.model_options)
    return initialize(net, cfg.init, cfg.seed, cfg.init_modes)


# ------------------------------------------------------------------------------------------------
# Setup and restore
# ------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything built from a configuration; the loop's state lives in these objects."""

    cfg: TrainConfig
    dist: Distributed
    dataset: object  # data.ArrayDataset or data.ImageFolder
    schedule: BatchSchedule
    sde: SDE
    objective: DiffusionObjective
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    noise: torch.Generator  # the objective's draws (times, noise, label dropout)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def local(self) -> slice:
        """This rank's slice of the global batch."""
        n = self.cfg.batch_size // self.dist.world
        return slice(self.dist.rank * n, (self.dist.rank + 1) * n)

    def meta(self) -> dict:
        """What a checkpoint records besides the tensors and the RNG states."""
        return {"train_config": self.cfg.to_json(), "model_config": self.model.config,
                "labelled": self.dataset.num_classes is not None, "world_size": self.dist.world,
                "data": {"name": self.dataset.name, "size": len(self.dataset),
                         "known_law": isinstance(self.dataset, KnownLawData),
                         "skipped": self.dataset.skipped}}


def law_spec(cfg: TrainConfig) -> LawSpec:
    """The digits-gmm law a configuration asks for (used only with ``data = digits-gmm``)."""
    return LawSpec(size=cfg.image_size or 8, components=cfg.law_components,
                   covariance=cfg.law_covariance, rank=cfg.law_rank, min_var=cfg.law_min_var,
                   seed=cfg.law_seed)


def setup(cfg: TrainConfig) -> Run:
    """Check ``cfg`` and build the run (module docstring); writes nothing.  Raises UsageError."""
    try:
        validate_config(cfg)  # the one validation, a checkpoint's configuration's too
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.batch_size % world:  # before the process group: every rank stops at once
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} "
                             "processes")
        dist = Distributed(cfg.device)
        try:
            return _build(cfg, dist)
        except BaseException:
            dist.close()
            raise
    except (ValueError, TypeError) as exc:  # DataError, ModelLoadError are ValueErrors
        raise UsageError(str(exc)) from None


def _build(cfg: TrainConfig, dist: Distributed) -> Run:
    dataset = load_dataset(cfg.data, size=cfg.image_size, frames=cfg.frames,
                           channels=cfg.channels, law=law_spec(cfg), seed=cfg.seed)
    schedule = dataset.schedule(cfg.batch_size, cfg.seed) if hasattr(dataset, "schedule") \
        else BatchSchedule(len(dataset), cfg.batch_size, cfg.seed)
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world} "
                         "processes")
    sde = build_sde(cfg)
    objective = DiffusionObjective(sde, cfg.prediction, cfg.t_min, cfg.label_dropout,
                                   dataset.num_classes)
    get_sampler(cfg.sampler)  # the grids' sampler, checked before the first step
    model = build_network(cfg, dataset).to(dist.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Run(cfg, dist, dataset, schedule, sde, objective, model, EMA(model, cfg.ema_decay),
               optimizer, torch.Generator(dist.device).manual_seed(cfg.seed))


def restore(run: Run, path: Path | None = None) -> tuple[int, Path]:
    """Load the checkpoint ``path`` (by default the run folder's latest) into the run; (its step,
    its path).  Raises CheckpointError if it does not fit."""
    path = path or latest_checkpoint(run.out)
    ckpt = load_checkpoint(path)  # on the CPU; load_state_dict copies to the device
    run.model.load_state_dict(ckpt.state_dict("model"), strict=True)
    run.ema.module.load_state_dict(ckpt.state_dict("ema"), strict=True)
    load_optimizer_state(run.optimizer, ckpt.tensors, ckpt.meta["optimizer"])
    set_rng_state(ckpt.meta["rng"], {"noise": run.noise})
    return ckpt.step, path


def _prepare_out(run: Run, start: int) -> None:
    """The run folder with samples/; the log keeps only the lines up to ``start`` (a resumed run
    drops what its killed predecessor logged after the checkpoint; a new run starts afresh)."""
    if not run.dist.main:
        return
    try:
        (run.out / "samples").mkdir(parents=True, exist_ok=True)
        probe = run.out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {str(run.out)!r} cannot be written: {exc.strerror or exc}") \
            from None
    (run.out / DIVERGED_FILE).unlink(missing_ok=True)  # a run that trains again says anew
    remove_stale_temporaries(run.out, CHECKPOINT_FILE)
    remove_stale_temporaries(run.out / "samples", SAMPLE_FILE)
    path = run.out / "log.jsonl"
    if not path.is_file():
        return
    keep = []
    with open(path, encoding="utf-8", errors="replace") as lines:  # streamed, line by line
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if loads_json(line)["step"] <= start:  # a line nested too deep is dropped
                    keep.append(line.rstrip("\n"))
    atomic_write_bytes(path, "".join(s + "\n" for s in keep).encode())


def _wrap(run: Run) -> nn.Module:
    """The model as the step calls it: under DDP with several processes, compiled if asked."""
    net = run.model
    if run.dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(run.model, device_ids=[run.dist.device.index]
                                      if run.dist.device.type == "cuda" else None)
    return torch.compile(net) if run.cfg.compile else net


# ------------------------------------------------------------------------------------------------
# Step, log, save, sample
# ------------------------------------------------------------------------------------------------

def train_step(run: Run, net: nn.Module, step: int, autocast,
               last_ckpt: Path | None) -> tuple[float, float, float]:
    """Optimizer step ``step`` (0-based) on this rank's slice of the global batch; returns
    (loss averaged over the ranks, gradient norm before clipping, learning rate)."""
    cfg, dist, device = run.cfg, run.dist, run.dist.device
    x, y = run.dataset.batch(run.schedule.indices(step)[run.local])
    x = x.to(device, non_blocking=True)
    y = None if y is None else y.to(device)
    draws = run.objective.draw((cfg.batch_size, *run.dataset.sample_shape), run.noise, device)
    draws = draws.slice(run.local.start, run.local.stop)
    lr = learning_rate(cfg, step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss = run.objective.loss(net, x, y, draws, autocast=autocast)
    loss_value = float(dist.mean(loss.detach()))
    if not math.isfinite(loss_value):
        _diverged(f"the loss is {loss_value} at step {step + 1}", last_ckpt)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
    if not math.isfinite(grad_norm):
        _diverged(f"the gradient norm is {grad_norm} at step {step + 1}", last_ckpt)
    run.optimizer.step()
    run.ema.update(run.model, step)
    return loss_value, grad_norm, lr


def _diverged(what: str, last_ckpt: Path | None) -> None:
    keep = (f"the last good checkpoint is {last_ckpt} (resume from it with --resume, e.g. with "
            "a lower --lr)") if last_ckpt else "no checkpoint was written yet"
    raise TrainingDiverged(f"{what}; training stopped before the optimizer step, {keep}")


def _append_log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def log_step(run: Run, step: int, loss: float, lr: float, grad_norm: float,
             seconds: float) -> None:
    """One line of log.jsonl for the step just done (``step`` 0-based)."""
    record = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
              "epoch": step // run.schedule.steps_per_epoch, "seconds": round(seconds, 3)}
    gates = gate_statistics(run.model)
    if gates:
        record["gates"] = gates
    _append_log(run.out, record)


def save(run: Run, step: int) -> Path | None:
    """A checkpoint of ``step`` (on the main process; None elsewhere), after checking that the
    replicas agree; every process waits for it."""
    diff = run.dist.replica_difference(run.model)
    path = None
    if run.dist.main:
        meta = {**run.meta(), "rng": rng_state({"noise": run.noise}),
                "replica_max_param_diff": diff}
        modules = {"model": run.model, "ema": run.ema.module}
        if isinstance(run.dataset, KnownLawData):  # the checkpoint carries its data law
            modules[LAW_PREFIX] = LawModule(run.dataset.law)
        path = save_checkpoint(run.out, step, modules, run.optimizer, meta, keep=run.cfg.keep)
        if run.dist.world > 1:
            _append_log(run.out, {"step": step, "replica_max_param_diff": diff})
    run.dist.barrier()
    return path


#: What a run of a cohort that diverged leaves in its folder: {"step", "message"}
#: (``training.cohort``).
DIVERGED_FILE = "diverged.json"

#: The names of the sample grids (and of the log) in a run folder.
SAMPLE_FILE = r"step-\d{8}\.(png|gif)"


def draw_samples(run: Run, step: int, progress: bool = False) -> Path | None:
    """The sample grid of ``step`` from the EMA weights, each cell captioned with the class it
    was asked for (main process only); its path.  ``progress``: a tqdm bar."""
    if not run.dist.main:
        return None
    cfg = run.cfg
    labels = cycle_labels(cfg.n_samples, run.dataset.num_classes)
    x = generate(run.ema.module, cfg.n_samples, sde=run.sde, prediction=cfg.prediction,
                 t_min=cfg.t_min, labels=labels, guidance=cfg.guidance, sampler=cfg.sampler,
                 steps=cfg.sample_steps, seed=cfg.seed, device=run.dist.device,
                 autocast=cfg.bf16, disable=not progress)
    path = save_samples(x, run.out / "samples" / f"step-{step:08d}", labels=labels)
    run.model.train()
    return path


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def _resume_point(run: Run, step: int) -> str:
    """Where a resume of this interrupted run would start, in words."""
    found = find_checkpoints(run.out) if run.dist.main else []
    if not found:
        return f"interrupted at step {step}; no checkpoint was written, so there is nothing " \
               "to resume (a new run starts from step 0)"
    return f"interrupted at step {step}; --resume {run.out} will start from {found[-1]}"


def _after_step(run: Run, bar, step: int, figures: tuple, began: float, on_step, last_ckpt):
    """What follows optimizer step ``step`` (``figures`` its loss, gradient norm and learning
    rate): the log line, ``on_step``, the checkpoint, the sample grid.  Returns whether the
    time budget is spent (the ranks agree on the mean elapsed time, so they stop at the same
    step) and the newest checkpoint."""
    cfg, dist, done = run.cfg, run.dist, step + 1
    loss, grad_norm, lr = figures
    out_of_time = cfg.max_seconds > 0 and dist.mean(torch.tensor(
        time.perf_counter() - began, device=dist.device)).item() >= cfg.max_seconds
    last = done == cfg.steps or out_of_time
    if dist.main and (done % cfg.log_every == 0 or last):
        log_step(run, step, loss, lr, grad_norm, time.perf_counter() - began)
        bar.set_postfix(loss=f"{loss:.4f}")
    if on_step is not None:
        on_step(done, loss)
    if done % cfg.ckpt_every == 0 or last:
        last_ckpt = save(run, done) or last_ckpt
    if not out_of_time and cfg.sample_every and done % cfg.sample_every == 0 \
            and done != cfg.steps:
        draw_samples(run, done)
    return out_of_time, last_ckpt


def train(cfg: TrainConfig, resume: bool | Path = False, on_step=None) -> dict:
    """Run (or continue) training; returns {step, loss, checkpoint, grid (the final sample
    grid, None if no step was done), seconds (of training), skipped (unreadable data files)}.

    ``resume``: False for a new run; True (the newest checkpoint in ``cfg.out``) or the path of
    the checkpoint to continue from.  ``on_step(step, loss)`` is called after every optimizer
    step (tests use it to stop a run).  Raises UsageError for bad settings, CheckpointError for a
    checkpoint that does not fit, TrainingDiverged for a non-finite loss and TrainingInterrupted
    on Ctrl-C.
    """
    from tqdm.auto import tqdm

    run = setup(cfg)
    done = 0
    try:
        if cfg.model_factory and run.dist.main:
            print(f"note: the model is built by {cfg.model_factory} (the model factory the "
                  "caller named)", file=sys.stderr)
        start, last_ckpt = restore(run, resume if isinstance(resume, Path) else None) \
            if resume else (0, None)
        done = start
        _prepare_out(run, start)
        net = _wrap(run)
        dist = run.dist
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) \
            if cfg.bf16 and dist.device.type == "cuda" else None
        run.model.train()
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
                   disable=not (cfg.progress and dist.main), file=sys.stderr)
        began, loss, done = time.perf_counter(), math.nan, start
        for step in bar:
            loss, grad_norm, lr = train_step(run, net, step, autocast, last_ckpt)
            done = step + 1
            out_of_time, last_ckpt = _after_step(run, bar, step, (loss, grad_norm, lr), began,
                                                 on_step, last_ckpt)
            if out_of_time:
                break
        bar.close()
        seconds = time.perf_counter() - began  # training only, not the final sample grid
        grid = draw_samples(run, done, progress=cfg.progress) if start < done else None
        # every rank ends together: none tears the process group down while the main one still
        # draws the sample grid (a rank of a gloo run was once seen to abort at exit)
        dist.barrier()
        return {"step": done, "loss": loss, "checkpoint": last_ckpt, "grid": grid,
                "seconds": seconds, "skipped": run.dataset.skipped}
    except KeyboardInterrupt:
        raise TrainingInterrupted(_resume_point(run, done)) from None
    finally:
        net = None  # the DDP wrapper (whose reducer uses the process group) goes before it
        run.dist.close()
