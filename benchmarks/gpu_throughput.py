"""Training throughput and model FLOP utilisation (MFU) of a Neural-RDM transformer on one GPU.

    python benchmarks/gpu_throughput.py [--json gpu_throughput.json]   # on an H100 / H200
    python benchmarks/gpu_throughput.py --smoke                         # tiny, on the CPU

Default: RDM-DiT-B/2 (12 blocks, width 768, 12 heads) on 32 x 32 x 4 inputs (the latent size of
256 x 256 images), 1000 classes, batch 256, bfloat16 autocast, AdamW (fused on CUDA), with the
``rdm`` and ``plain`` gates, each eager and under ``torch.compile``.  Every run is timed over
``--steps`` steps after ``--warmup`` steps (the first of which compiles); the JSON gives images/s,
step time, achieved TFLOP/s, MFU, the compile time and the peak memory of each run, and the
rdm/plain step-time ratio per mode.  The whole default run takes about 2-3 minutes on an H100
(``--budget-s`` skips the runs that would start after it).

Analytic FLOP count (``dit_forward_flops``), one multiply-add = 2 FLOPs, per image, for a DiT of
depth L (blocks), width D, heads H, MLP ratio r, patch p, C channels, N = (S / p)^2 tokens,
conditioning width D and a frequency embedding of 256:

    patch embedding      2 N p^2 C D
    per block            attention projections  2 N D (3D) + 2 N D D     = 8 N D^2
                         attention scores, values  2 N^2 D + 2 N^2 D     = 4 N^2 D
                         MLP                    2 N D (rD) + 2 N (rD) D  = 4 r N D^2
                         modulation (2 units)   2 * 2 D (k D), k = 2 (3 for adaln-zero),
                                                plus 2 * 2 D (2D) for time-conditioned rdm
    head                 2 D (2D) + 2 N D p^2 C
    time embedding       2 (256 D + D D)

Normalisations, activations, softmax, gates and the optimizer are elementwise and not counted.
A training step costs 3 forward passes (the backward pass computes the gradients with respect
to both the inputs and the weights of every matrix product: twice the forward work), the usual
convention of MFU (Chowdhery et al. 2022, appendix B, which also counts the attention scores).
The script also counts the FLOPs of one real step with torch.utils.flop_counter and reports
both; on CUDA the counter includes the attention kernels, on the CPU it does not (the CPU
attention kernel has no FLOP formula), so the smoke run compares the counter with the analytic
count without attention.

MFU = achieved FLOP/s / peak dense bfloat16 FLOP/s of the device: H100 SXM and H200 989.4
TFLOP/s, H100 PCIe 756 TFLOP/s, A100 312 TFLOP/s (vendor data sheets); ``--peak-tflops``
overrides, and an unknown device gets no MFU.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, build, csv, run_main, training_step  # noqa: E402

from rdm_dynamics.files import atomic_write_json  # noqa: E402
from rdm_dynamics.models import GATE_KINDS, MODEL_CONFIGS, build_model  # noqa: E402

PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0)]
FREQUENCY_DIM = 256  # rdm_dynamics.models.layers.TimestepEmbedder's default


def dit_forward_flops(config: dict) -> dict[str, float]:
    """Forward FLOPs of one image through an RDM-DiT (module docstring), by part."""
    L, D, r = config["depth"], config["width"], config["mlp_ratio"]
    p, C, S = config["patch_size"], config["in_channels"], config["input_size"]
    N = (S // p) ** 2
    chunks = 3 if config["gate"] == "adaln-zero" else 2
    time_gates = config["gate"] == "rdm" and config["rdm_time_conditioned"]
    modulation = 2 * (2 * D * chunks * D + (2 * D * 2 * D if time_gates else 0))
    parts = {
        "patch_embedding": 2 * N * p * p * C * D,
        "attention_projections": L * 8 * N * D * D,
        "attention_scores": L * 4 * N * N * D,
        "mlp": L * 4 * r * N * D * D,
        "modulation": L * modulation,
        "head": 2 * D * 2 * D + 2 * N * D * p * p * C,
        "time_embedding": 2 * (FREQUENCY_DIM * D + D * D),
    }
    parts["total"] = sum(parts.values())
    return {k: float(v) for k, v in parts.items()}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def parse(argv):
    p = Parser(prog="benchmarks/gpu_throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="RDM-DiT-B/2")
    p.add_argument("--gates", default="rdm,plain")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="skip the runs that would start after this many seconds")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", "--out", dest="out", default="gpu_throughput.json", metavar="PATH",
                   help="where the figures go, as JSON (default gpu_throughput.json)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings that run in seconds on a CPU (RDM-DiT-T/2, 8 x 8 x 1, "
                        "batch 4, 2 steps, the dynamo-only 'eager' compile backend, one CPU "
                        "thread)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.input_size, args.in_channels, args.num_classes = "RDM-DiT-T/2", 8, 1, 10
        args.batch, args.steps, args.warmup, args.compile_backend = 4, 2, 1, "eager"
        args.threads = args.threads or 1
    args.gates, args.modes = csv(args.gates), csv(args.modes)
    if MODEL_CONFIGS.get(args.model, {}).get("backbone") != "dit":
        raise ValueError(f"--model must be a transformer (RDM-DiT-...), got {args.model!r}")
    if bad := [g for g in args.gates if g not in GATE_KINDS]:
        raise ValueError(f"unknown gate(s) {bad}; choose from {', '.join(GATE_KINDS)}")
    if bad := [m for m in args.modes if m not in ("eager", "compile")]:
        raise ValueError(f"unknown mode(s) {bad}; choose from eager, compile")
    if min(args.batch, args.steps, args.warmup) < 1:
        raise ValueError("--batch, --steps and --warmup must be positive")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def count_step_flops(step) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def run_one(args, gate: str, mode: str, device: torch.device, peak: float | None) -> dict:
    model = build(args.model, gate, input_size=args.input_size, in_channels=args.in_channels,
                  num_classes=args.num_classes, device=str(device))
    flops = dit_forward_flops(model.config)
    train_flops = 3 * flops["total"] * args.batch
    if mode == "compile":
        model = torch.compile(model, backend=args.compile_backend)
    step = training_step(model, batch=args.batch, device=str(device),
                         autocast_dtype=torch.bfloat16, fused=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"gate": gate, "mode": mode, "analytic_train_flops_per_step": train_flops}
    if mode == "eager":
        counted = count_step_flops(step)
        out["counted_train_flops_per_step"] = counted
        no_attention = 3 * (flops["total"] - flops["attention_scores"]) * args.batch
        out["analytic_over_counted"] = train_flops / counted
        out["analytic_without_attention_over_counted"] = no_attention / counted
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    step()
    sync()
    out["first_step_s"] = time.perf_counter() - start  # includes compilation
    for _ in range(args.warmup - 1):
        step()
    times = []
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    achieved = train_flops * args.steps / total
    out.update({"step_s_mean": total / args.steps, "step_s_median": statistics.median(times),
                "images_per_s": args.batch * args.steps / total,
                "achieved_tflops": achieved / 1e12,
                "mfu": None if peak is None else achieved / (peak * 1e12)})
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv=None) -> int:
    args = parse(argv)
    began = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = peak_tflops(device, args.peak_tflops)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with torch.device("meta"):
        config = build_model(args.model, gate=args.gates[0], input_size=args.input_size,
                             in_channels=args.in_channels, num_classes=args.num_classes).config
    results = {"model": args.model, "config": config, "batch": args.batch, "steps": args.steps,
               "warmup": args.warmup, "dtype": "bfloat16 autocast", "device": str(device),
               "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else "cpu"),
               "peak_tflops": peak, "torch": torch.__version__,
               "compile_backend": args.compile_backend,
               "analytic_forward_flops_per_image": dit_forward_flops(config),
               "runs": [], "skipped": []}
    for mode in args.modes:
        for gate in args.gates:
            if time.perf_counter() - began > args.budget_s:
                results["skipped"].append({"gate": gate, "mode": mode})
                continue
            run = run_one(args, gate, mode, device, peak)
            results["runs"].append(run)
            mfu = "n/a" if run["mfu"] is None else f"{100 * run['mfu']:.1f}%"
            print(f"{gate:<11} {mode:<8} {run['images_per_s']:>10.1f} img/s  "
                  f"{1e3 * run['step_s_median']:>8.2f} ms/step  "
                  f"{run['achieved_tflops']:>8.2f} TFLOP/s  MFU {mfu}  "
                  f"first step {run['first_step_s']:.1f} s", flush=True)
            atomic_write_json(args.out, results)  # partial results survive a time-out
    by_key = {(r["gate"], r["mode"]): r for r in results["runs"]}
    results["rdm_over_plain_step_time"] = {
        mode: by_key[("rdm", mode)]["step_s_median"] / by_key[("plain", mode)]["step_s_median"]
        for mode in args.modes if ("rdm", mode) in by_key and ("plain", mode) in by_key}
    results["seconds"] = time.perf_counter() - began
    atomic_write_json(args.out, results)
    print(f"rdm/plain step time: {results['rdm_over_plain_step_time']}; "
          f"wrote {args.out} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
