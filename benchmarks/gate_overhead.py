"""Training step time of each residual gate against ``plain`` at the same size, side by side.

    python benchmarks/gate_overhead.py                       # RDM-DiT-T/2 and RDM-UNet-T, CPU
    python benchmarks/gate_overhead.py --models RDM-DiT-S/2 --batch-size 64 --rounds 20

One training step is what ``rdm_dynamics.train`` does: the diffusion loss on a digits batch,
backward, gradient clipping, AdamW.  For every model the gates' networks are built with the same
seed and timed in interleaved rounds (plain, rdm, ..., then the next round in reverse order), so
slow drifts of a shared machine hit every gate alike; the figure is the median over rounds of
the per-round ratio t_gate / t_plain, with its quartiles.  Target (issue 6): rdm <= 1.05 x plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from rdm_dynamics.data import digits
from rdm_dynamics.diffusion import DiffusionObjective
from rdm_dynamics.sample import model_builder

TARGET_RATIO = 1.05


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="RDM-DiT-T/2,RDM-UNet-T")
    p.add_argument("--gates", default="plain,rdm", help="the first is the reference")
    p.add_argument("--model-factory", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=8, help="image size (digits are resized)")
    p.add_argument("--steps", type=int, default=5, help="training steps per timing")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


class Stepper:
    """One model with its optimizer, stepping on a fixed batch with fixed draws."""

    def __init__(self, net, batch, draws, objective, device):
        self.net = net.to(device).train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        self.x, self.y = batch
        self.draws, self.objective = draws, objective
        self.device = torch.device(device)

    def run(self, steps: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(steps):
            loss = self.objective.loss(self.net, self.x, self.y, self.draws)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - began) / steps


def measure(name: str, args) -> dict:
    build = model_builder(args.model_factory)
    data = digits("train", size=args.size)
    idx = torch.arange(args.batch_size) % len(data)
    x, y = (t.to(args.device) for t in data.batch(idx))
    objective = DiffusionObjective(num_classes=10)
    g = torch.Generator(args.device).manual_seed(0)
    draws = objective.draw(x.shape, g, args.device)
    gates = args.gates.split(",")
    steppers = {}
    for gate in gates:
        torch.manual_seed(0)
        net = build(name, gate=gate, input_size=args.size, in_channels=1, num_classes=10,
                    class_dropout_prob=0.0)
        steppers[gate] = Stepper(net, (x, y), draws, objective, args.device)
        steppers[gate].run(args.warmup)
    times = {gate: [] for gate in gates}
    for r in range(args.rounds):
        for gate in (gates if r % 2 == 0 else gates[::-1]):
            times[gate].append(steppers[gate].run(args.steps))
    ref = gates[0]
    out = {"model": name, "params": {g: sum(p.numel() for p in s.net.parameters())
                                     for g, s in steppers.items()},
           "ms_per_step": {g: 1e3 * statistics.median(t) for g, t in times.items()},
           "ratio": {}}
    for gate in gates[1:]:
        ratios = sorted(a / b for a, b in zip(times[gate], times[ref], strict=True))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out["ratio"][gate] = {"median": statistics.median(ratios), "q1": q[0], "q3": q[2]}
    return out


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size} of {args.size}x{args.size} digits, {args.steps} steps per "
          f"timing, {args.rounds} interleaved rounds, {torch.get_num_threads()} threads, "
          f"device {args.device}")
    gates = args.gates.split(",")
    for name in args.models.split(","):
        res = measure(name, args)
        times = ", ".join(f"{g} {res['ms_per_step'][g]:.1f} ms ({res['params'][g]} params)"
                          for g in gates)
        print(f"{name}: {times}")
        for gate, r in res["ratio"].items():
            verdict = "" if gate != "rdm" else (
                "  PASS" if r["median"] <= TARGET_RATIO else "  miss")
            print(f"  {gate}/{gates[0]} step time: {r['median']:.3f} "
                  f"(quartiles {r['q1']:.3f}..{r['q3']:.3f}){verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
