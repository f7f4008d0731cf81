"""The training step of the depth study's backbones against this CPU's matmul floor (issue 21).

Measured in one run, at the same thread count:

* the floor: the float32 throughput of a large square matmul (``--matmul`` n x n, GFLOP/s);
* for each backbone and depth: one training step (``common.training_step``: forward, MSE,
  backward, AdamW as the training loop builds it), its matmul FLOPs (``torch.utils.flop_counter``,
  forward and backward), the aten operations it dispatches, and its parts timed apart: the
  forward pass, forward and backward, the optimizer step, and the step with PyTorch's fused
  AdamW (an upper bound of what a fused optimizer would save); with ``--compile``, the forward and
  backward of ``torch.compile(model)`` and its first call (the compilation), so that whether
  compiling pays for a run of N steps reads off (saving per step x N against the first call).

The step's share of the floor is FLOPs / time / peak.  What is left over is accounted for by the
operations: (time - FLOPs / peak) / operations is the cost per dispatched operation beyond its
arithmetic, the figure that says whether a step is bound by its matmuls or by the number of
small operations (Python and dispatch).  The backbones are the ``deep`` preset's RDM-MLP (width
64, mlp ratio 2, batch 64, 4 to 256 units) and the ``cpu`` preset's RDM-DiT-T/2 (width 64, 4
heads, 8x8, batch 64, 2 to 16 blocks).

    python benchmarks/train_step_floor.py --json step.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Parser, build, csv, run_main, training_step  # noqa: E402

MODELS = {  # name -> (model, options, depth ladder, image size)
    "mlp": ("RDM-MLP-T", {"width": 64, "mlp_ratio": 2.0}, "4,16,64,256", 8),
    "dit": ("RDM-DiT-T/2", {"width": 64, "heads": 4}, "2,4,8,16", 8),
}


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def median_time(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int, reps: int) -> float:
    """GFLOP/s of an n x n float32 matmul (median of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_time(lambda: a @ b, reps, 2) / 1e9


def compiled_figures(net, x, t, y, reps: int) -> dict:
    """``torch.compile`` of the model (inductor on the CPU): the first forward and backward,
    compilation included, then the compiled forward and backward (median of ``reps``)."""
    compiled = torch.compile(net)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        compiled(x, t, y).square().mean().backward()

    began = time.perf_counter()
    forward_backward()
    first = time.perf_counter() - began
    return {"compile_first_call_s": first,
            "compiled_forward_backward_ms": 1e3 * median_time(forward_backward, reps, 1)}


def step_figures(model_name, options, depth, size, batch, reps, warmup, peak,
                 compile_too: bool = False) -> dict:
    """One backbone's step: time, FLOPs, operations and the parts (module docstring)."""
    net = build(model_name, "rdm", input_size=size, in_channels=1, num_classes=10,
                device="cpu", depth=depth, **options)
    step = training_step(net, batch=batch, device="cpu")
    with FlopCounterMode(display=False) as flops:
        step()
    with OpCounter() as ops:
        step()
    total = median_time(step, reps, warmup)
    x = torch.randn(batch, *net.sample_shape)
    t, y = torch.rand(batch), torch.randint(0, 10, (batch,))

    def forward_backward():
        net.zero_grad(set_to_none=True)
        net(x, t, y).square().mean().backward()

    fwd = median_time(lambda: net(x, t, y), reps, 1)
    fwd_bwd = median_time(forward_backward, reps, 1)
    fused = median_time(training_step(net, batch=batch, device="cpu", fused=True), reps, warmup)
    gflop = flops.get_total_flops() / 1e9
    floor = gflop / peak
    compiled = compiled_figures(net, x, t, y, reps) if compile_too else {}
    return {**compiled, "model": model_name, "depth": depth, "units": len(net.residual_units()),
            "params": sum(p.numel() for p in net.parameters()), "batch": batch,
            "step_ms": 1e3 * total, "forward_ms": 1e3 * fwd, "forward_backward_ms": 1e3 * fwd_bwd,
            "optimizer_ms": 1e3 * max(total - fwd_bwd, 0.0), "step_fused_adamw_ms": 1e3 * fused,
            "gflop": gflop, "gflop_per_s": gflop / total, "share_of_peak": floor / total,
            "matmul_floor_ms": 1e3 * floor, "ops": ops.count,
            "us_per_op_beyond_floor": 1e6 * (total - floor) / ops.count}


def main(argv=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,dit", help="mlp, dit (default both)")
    p.add_argument("--depths", default=None, help="override the ladder (comma separated)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--matmul", type=int, default=1024, help="side of the floor's matmul")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile's forward and backward and its compilation")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    models = csv(args.models)
    if not models or set(models) - set(MODELS) or min(args.batch, args.threads, args.reps,
                                                      args.matmul) < 1 or args.warmup < 0:
        raise ValueError(f"--models must name {', '.join(MODELS)}; --batch, --threads, --reps "
                         f"and --matmul must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak(args.matmul, max(args.reps, 5))
    rows = []
    for key in models:
        name, options, ladder, size = MODELS[key]
        for depth in (int(d) for d in csv(args.depths or ladder)):
            row = step_figures(name, options, depth, size, args.batch, args.reps, args.warmup,
                               peak, args.compile)
            rows.append(row)
            print(f"{name} depth {depth:4d} ({row['units']} units): step {row['step_ms']:7.1f} ms"
                  f" (fwd {row['forward_ms']:.1f}, fwd+bwd {row['forward_backward_ms']:.1f}, "
                  f"AdamW {row['optimizer_ms']:.1f}; fused AdamW step "
                  f"{row['step_fused_adamw_ms']:.1f}), {row['gflop_per_s']:.1f} GFLOP/s = "
                  f"{100 * row['share_of_peak']:.0f}% of peak, {row['ops']} ops, "
                  f"{row['us_per_op_beyond_floor']:.1f} us/op beyond the matmul floor")
            if args.compile:
                print(f"  torch.compile: fwd+bwd {row['compiled_forward_backward_ms']:.1f} ms "
                      f"after a first call of {row['compile_first_call_s']:.1f} s")
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else ""
    out = {"threads": args.threads, "matmul": args.matmul, "peak_gflop_per_s": peak,
           "load_average": load, "rows": rows}
    print(f"floor: {args.matmul}^2 float32 matmul {peak:.1f} GFLOP/s on {args.threads} "
          f"thread(s); load average {load}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
