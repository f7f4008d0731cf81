"""A cohort: several runs of one recipe, differing only in seed and learning rate, trained as one
batched model.

Each member is a complete :class:`~.loop.Run` (``setup``: its own data, batch schedule, noise
generator, initialisation, EMA and optimizer); what the cohort changes is how a step is computed.
The members' parameters are stacked along a new leading axis (``torch.func.stack_module_state``)
and one step evaluates every member's loss at once,

    losses = vmap(member_loss)(stacked params, buffers, x_0, y, t, eps, drop),

member_loss being the run's own objective (``DiffusionObjective.loss``) on its own draws, with the
network called through ``torch.func.functional_call``.  The backward of sum_k loss_k gives each
member the gradient of its own loss (the members share no parameter).  Then, per member k:

* the gradient norm n_k = ||g_k||_2 over all its parameters, clipped as ``clip_grad_norm_`` does:
  g_k <- g_k min(1, c / (n_k + 1e-6));
* AdamW at the member's learning rate lr_k min(1, (s+1)/warmup): members that share a learning
  rate share a parameter group, so the stacked leaves are held per learning rate and concatenated
  for the forward pass; Adam's update is elementwise, so a stacked member's update is the one its
  own optimizer would make (the fused kernel, where the single run uses the foreach one: the two
  agree to rounding);
* the EMA with the warm-up decay of ``loop.EMA``.

So a member follows the trajectory of ``train`` on its configuration up to floating-point
rounding (batched products round differently from single ones; tests/test_cohort.py bounds the
difference), and a cohort resumed from its checkpoints repeats the uninterrupted cohort exactly on
the CPU.  A member whose loss or gradient norm is not finite stops there, as ``train`` would: its
folder keeps its last good checkpoint and a ``diverged.json`` saying why; the other members go on
(vmap keeps them independent of its NaNs).

Files.  Every member's folder is an ordinary run folder (``log.jsonl``, checkpoints with the
member's own model, EMA, optimizer state and generators, the final sample grid), so ``verify
--ckpt``, ``sample`` and ``train --resume`` work on it alone.  The cohort's log lines carry the
cohort's elapsed seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..cli import UsageError
from ..files import atomic_write_json
from .checkpoint import checkpoint_steps
from .diffusion import TrainingDraws
from .loop import (
    DIVERGED_FILE,
    Run,
    TrainingInterrupted,
    _prepare_out,
    draw_samples,
    learning_rate,
    log_step,
    restore,
    save,
    setup,
)
from .settings import TrainConfig

__all__ = ["train_cohort", "cohort_key", "DIVERGED_FILE"]


def cohort_key(cfg: TrainConfig) -> TrainConfig:
    """The configuration with the settings members may differ in (``seed``, ``lr``, ``out``)
    blanked: runs with equal keys can be trained as one cohort."""
    return dataclasses.replace(cfg, seed=0, lr=1.0, out="")


def _check_members(cfgs: list[TrainConfig]) -> None:
    if not cfgs:
        raise UsageError("a cohort needs at least one run")
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) != len(outs):
        raise UsageError("two runs of the cohort write into one folder")
    first = cohort_key(cfgs[0]).to_json()
    for c in cfgs[1:]:
        other = cohort_key(c).to_json()
        differ = sorted(k for k in first if first[k] != other.get(k))
        if differ:
            raise UsageError(f"the runs of a cohort may differ only in seed and lr; {c.out!r} "
                             f"differs in {', '.join(differ)}")
    if cfgs[0].compile:
        raise UsageError("a cohort is not compiled: train it without --compile")


@dataclass
class _Stack:
    """The members' weights, stacked: one leaf per (learning rate, parameter name)."""

    base: nn.Module                    # member 0's structure on the meta device
    order: list[int]                   # member index of each stacked row
    lrs: list[float]                   # the learning rate of each group
    sizes: list[int]                   # members per group
    params: list[dict[str, torch.Tensor]]
    ema: list[dict[str, torch.Tensor]]
    buffers: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer

    def rows(self) -> list[tuple[int, int, int]]:
        """(group, row within the group, member) for every stacked row."""
        out, row = [], 0
        for g, size in enumerate(self.sizes):
            for j in range(size):
                out.append((g, j, self.order[row]))
                row += 1
        return out

    def joined(self) -> dict[str, torch.Tensor]:
        if len(self.params) == 1:
            return self.params[0]
        return {n: torch.cat([p[n] for p in self.params]) for n in self.params[0]}

    def leaves(self) -> list[torch.Tensor]:
        return [p for group in self.params for p in group.values()]


def _stack(runs: list[Run]) -> _Stack:
    lrs = sorted({r.cfg.lr for r in runs})
    order = [k for lr in lrs for k, r in enumerate(runs) if r.cfg.lr == lr]
    sizes = [sum(r.cfg.lr == lr for r in runs) for lr in lrs]
    params, ema, start = [], [], 0
    for size in sizes:
        members = [runs[k] for k in order[start:start + size]]
        p, _ = stack_module_state([r.model for r in members])
        e, _ = stack_module_state([r.ema.module for r in members])
        params.append(p)
        ema.append({n: t.detach().requires_grad_(False) for n, t in e.items()})
        start += size
    _, buffers = stack_module_state([runs[k].model for k in order])
    base = copy.deepcopy(runs[0].model).to("meta")
    optimizer = torch.optim.AdamW(
        [{"params": list(p.values()), "lr": lr} for p, lr in zip(params, lrs, strict=True)],
        lr=lrs[0], weight_decay=runs[0].cfg.weight_decay, fused=True)
    return _Stack(base, order, lrs, sizes, params, ema, buffers, optimizer)


# ------------------------------------------------------------------------------------------------
# Between the stack and the members' own objects (checkpoints, logs, samples)
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def _to_member(stack: _Stack, runs: list[Run], step: int) -> None:
    """Copy every member's stacked weights, EMA and optimizer state into its own Run."""
    for g, j, k in stack.rows():
        run = runs[k]
        named = dict(run.model.named_parameters())
        for n, leaf in stack.params[g].items():
            named[n].copy_(leaf[j])
        for n, e in dict(run.ema.module.named_parameters()).items():
            e.copy_(stack.ema[g][n][j])
        state = {}
        for n, leaf in stack.params[g].items():
            s = stack.optimizer.state.get(leaf)
            if s:
                state[named[n]] = {"step": torch.tensor(float(s["step"])),
                                   "exp_avg": s["exp_avg"][j].clone(),
                                   "exp_avg_sq": s["exp_avg_sq"][j].clone()}
        run.optimizer.state.clear()
        run.optimizer.state.update(state)
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(run.cfg, max(step - 1, 0))


@torch.no_grad()
def _from_members(stack: _Stack, runs: list[Run]) -> None:
    """The reverse of :func:`_to_member` after every member was restored from a checkpoint."""
    for g, j, k in stack.rows():
        run = runs[k]
        named = dict(run.model.named_parameters())
        ema = dict(run.ema.module.named_parameters())
        for n, leaf in stack.params[g].items():
            leaf[j].copy_(named[n])
            stack.ema[g][n][j].copy_(ema[n])
            s = run.optimizer.state.get(named[n])
            if not s:
                continue
            mine = stack.optimizer.state[leaf]
            if not mine:
                mine["step"] = torch.tensor(float(s["step"]), device=leaf.device)
                mine["exp_avg"] = torch.zeros_like(leaf)
                mine["exp_avg_sq"] = torch.zeros_like(leaf)
            mine["exp_avg"][j].copy_(s["exp_avg"])
            mine["exp_avg_sq"][j].copy_(s["exp_avg_sq"])


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------

def _batch(runs: list[Run], order: list[int], step: int):
    """Every member's data and draws for ``step``, stacked in row order."""
    xs, ys, draws = [], [], []
    for k in order:
        run = runs[k]
        x, y = run.dataset.batch(run.schedule.indices(step))
        xs.append(x.to(run.dist.device))
        ys.append(None if y is None else y.to(run.dist.device))
        draws.append(run.objective.draw((run.cfg.batch_size, *run.dataset.sample_shape),
                                        run.noise, run.dist.device))
    y = None if ys[0] is None else torch.stack(ys)
    return (torch.stack(xs), y, torch.stack([d.t for d in draws]),
            torch.stack([d.noise for d in draws]), torch.stack([d.drop for d in draws]))


def _clip(stack: _Stack, max_norm: float) -> torch.Tensor:
    """Clip every member's gradient to norm ``max_norm`` (``clip_grad_norm_`` per member); the
    norms before clipping, in row order."""
    norms = []
    for size, group in zip(stack.sizes, stack.params, strict=True):
        grads = [p.grad for p in group.values() if p.grad is not None]
        per_leaf = torch.stack([torch.linalg.vector_norm(g.reshape(size, -1), dim=1)
                                for g in grads])
        total = torch.linalg.vector_norm(per_leaf, dim=0)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
        norms.append(total)
    return torch.cat(norms)


def _cohort_step(stack: _Stack, runs: list[Run], step: int, autocast):
    """One optimizer step of every member; (losses, gradient norms) in row order, as lists."""
    cfg, objective = runs[0].cfg, runs[0].objective
    x, y, t, noise, drop = _batch(runs, stack.order, step)

    def member_loss(params, buffers, x0, labels, times, eps, dropped):
        def net(xt, tt, yy):
            return functional_call(stack.base, (params, buffers), (xt, tt, yy))
        return objective.loss(net, x0, labels, TrainingDraws(times, eps, dropped),
                              autocast=autocast)

    y_dim = None if y is None else 0
    losses = vmap(member_loss, in_dims=(0, 0, 0, y_dim, 0, 0, 0))(
        stack.joined(), stack.buffers, x, y, t, noise, drop)
    stack.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    norms = _clip(stack, cfg.grad_clip)
    for group, lr in zip(stack.optimizer.param_groups, stack.lrs, strict=True):
        group["lr"] = lr * learning_rate(cfg, step) / cfg.lr
    stack.optimizer.step()
    d = runs[0].ema.decay_at(step)  # every member's EMA has the recipe's decay
    with torch.no_grad():
        torch._foreach_lerp_([e for g in stack.ema for e in g.values()], stack.leaves(), 1 - d)
    return losses.detach().tolist(), norms.tolist()


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def _resume_step(runs: list[Run], resumes: list[Path | bool]) -> int:
    """Restore the members from the newest step that every one of them has a checkpoint of (a
    new run has only step 0), and return it.  Members of a cohort killed while it wrote its
    checkpoints stand at two steps; they go on together from the older one, whose files the
    next checkpoint overwrites."""
    available = [checkpoint_steps(run.out) if resume else {} for run, resume in
                 zip(runs, resumes, strict=True)]
    for steps, resume in zip(available, resumes, strict=True):
        if isinstance(resume, Path):  # a named checkpoint is the newest this run may use
            named = [s for s, p in steps.items() if p.resolve() == resume.resolve()]
            for s in [s for s in steps if named and s > named[0]]:
                del steps[s]
    common = set.intersection(*(set(s) for s in available)) if all(available) else set()
    start = max(common, default=0)
    newest = {max(s, default=0) for s in available}
    if newest != {start}:
        print(f"note: the runs of the cohort stand at steps {sorted(newest)}; every one goes on "
              f"from step {start}, the newest step they all have", file=sys.stderr)
    if start:
        for run, steps in zip(runs, available, strict=True):
            restore(run, steps[start])
    return start


def _diverge(run: Run, step: int, what: str) -> str:
    message = f"{what} at step {step + 1}; training stopped before the optimizer step"
    atomic_write_json(run.out / DIVERGED_FILE, {"step": step + 1, "message": message})
    print(f"{run.cfg.out}: {message}", file=sys.stderr)
    return message


def train_cohort(cfgs: list[TrainConfig], resumes: list[Path | bool] | None = None) -> list[dict]:
    """Train (or continue) every run of the cohort to its step budget; one summary per run, in
    the order given: {step, loss, checkpoint, grid, seconds, status ('done' or 'diverged'),
    message}.  Raises UsageError for runs that cannot form a cohort and TrainingInterrupted on
    Ctrl-C."""
    _check_members(cfgs)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("a cohort trains in one process: start it without torchrun")
    resumes = resumes or [False] * len(cfgs)
    runs = [setup(c) for c in cfgs]
    done = 0
    try:
        start = done = _resume_step(runs, resumes)
        for run in runs:
            _prepare_out(run, start)
        return _loop(runs, start)
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted; every run of the cohort resumes from its last "
                                  f"checkpoint (step {done} or later)") from None
    finally:
        for run in runs:
            run.dist.close()


@dataclass
class _Outcome:
    """Where each member stands: 'done' (training or trained) or 'diverged' (with its message
    and step), its last loss and its newest checkpoint."""

    status: dict[int, tuple[str, str, int | None]]
    losses: list[float]
    last: dict[int, Path | None]

    def alive(self) -> list[int]:
        return [k for k, s in self.status.items() if s[0] == "done"]

    def record(self, runs: list[Run], order: list[int], step: int, losses, norms) -> None:
        """Take the step's figures; a member with a non-finite one stops (``_diverge``)."""
        for row, k in enumerate(order):
            if self.status[k][0] != "done":
                continue
            self.losses[k] = losses[row]
            for what, value in (("the loss", losses[row]), ("the gradient norm", norms[row])):
                if not math.isfinite(value) and self.status[k][0] == "done":
                    self.status[k] = ("diverged", _diverge(runs[k], step, f"{what} is {value}"),
                                      step + 1)


def _after_step(stack: _Stack, runs: list[Run], outcome: _Outcome, step: int, norms,
                elapsed: float, final: bool) -> None:
    """The members' log lines, checkpoints and sample grids due after optimizer step ``step``."""
    cfg, done, alive = runs[0].cfg, step + 1, outcome.alive()
    logs, ckpts = done % cfg.log_every == 0 or final, done % cfg.ckpt_every == 0 or final
    grids = not final and cfg.sample_every and done % cfg.sample_every == 0
    if logs or ckpts or grids:
        _to_member(stack, runs, done)
    for row, k in enumerate(stack.order):
        if k not in alive:
            continue
        if logs:
            log_step(runs[k], step, outcome.losses[k], learning_rate(runs[k].cfg, step),
                     norms[row], elapsed)
        if ckpts:
            outcome.last[k] = save(runs[k], done) or outcome.last[k]
        if grids:
            draw_samples(runs[k], done)


def _loop(runs: list[Run], start: int) -> list[dict]:
    from tqdm.auto import tqdm

    cfg = runs[0].cfg
    stack = _stack(runs)
    if start:
        _from_members(stack, runs)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) \
        if cfg.bf16 and runs[0].dist.device.type == "cuda" else None
    outcome = _Outcome({k: ("done", "", None) for k in range(len(runs))},
                       [math.nan] * len(runs), dict.fromkeys(range(len(runs))))
    began, done = time.perf_counter(), start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train cohort",
               disable=not cfg.progress, file=sys.stderr)
    for step in bar:
        losses, norms = _cohort_step(stack, runs, step, autocast)
        done = step + 1
        outcome.record(runs, stack.order, step, losses, norms)
        elapsed = time.perf_counter() - began
        final = done == cfg.steps or not outcome.alive() or \
            (cfg.max_seconds > 0 and elapsed >= cfg.max_seconds)
        _after_step(stack, runs, outcome, step, norms, elapsed, final)
        if done % cfg.log_every == 0:
            bar.set_postfix(alive=len(outcome.alive()))
        if final:
            break
    bar.close()
    seconds = time.perf_counter() - began
    out = []
    for k, run in enumerate(runs):
        kind, message, stopped = outcome.status[k]
        grid = draw_samples(run, done) if kind == "done" and start < done else None
        out.append({"step": done if kind == "done" else stopped, "loss": outcome.losses[k],
                    "checkpoint": outcome.last[k], "grid": grid, "seconds": seconds,
                    "status": kind, "message": message})
    return out
