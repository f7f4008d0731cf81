"""Memory and time of backpropagation through the stack against the adjoint method (claim C6).

    python benchmarks/adjoint_memory.py [--depths 256,4096] [--no-rss] [--json PATH]

The problem is C6's (``residual_sensitivity.Problem``: width 16, batch 32, float64, rdm gates).
For each depth L, two ways to get dl/dz0 and dl/dtheta:

* ``backprop``: backpropagation through the depth-L stack (stores every unit's saved tensors);
* ``adjoint``: ``odeint_adjoint`` with L Euler steps (stores one step at a time).

Reported per (method, L): the peak bytes of tensors saved for backward (deterministic, counted with
saved_tensors_hooks; on CUDA, the peak allocation), the wall time, and, unless ``--no-rss``, the
growth of the peak resident set size (ru_maxrss) of a fresh Python process during the computation,
which includes the allocator's own overhead.  Claim: backprop memory O(L), adjoint O(1).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, csv, run_main  # noqa: E402

from rdm_dynamics.analysis.memory import peak_memory  # noqa: E402
from rdm_dynamics.checks import CheckConfig  # noqa: E402
from rdm_dynamics.checks.residual_sensitivity import Problem  # noqa: E402
from rdm_dynamics.files import atomic_write_json  # noqa: E402

METHODS = ("backprop", "adjoint")


def parse(argv):
    p = Parser(prog="benchmarks/adjoint_memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="256,4096")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-rss", action="store_true", help="skip the subprocess RSS measurement")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: RSS subprocess
    args = p.parse_args(argv)
    try:
        args.depths = [int(d) for d in csv(args.depths)]
    except ValueError:
        raise ValueError(f"--depths must be integers, got {args.depths!r}") from None
    if not args.depths or min(args.depths) < 1:
        raise ValueError("--depths must be positive integers")
    return args


def compute(problem: Problem, method: str, depth: int):
    if method == "backprop":
        return problem.backprop(depth, "rdm")
    return problem.euler_adjoint(depth)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def child(spec: str, device: str) -> int:
    """In a fresh process: growth of the peak RSS during one computation, printed as JSON.

    The peak (VmHWM) is reset just before the computation (``echo 5 > /proc/self/clear_refs``,
    Linux), so start-up peaks (imports) do not hide it; where that is not possible, ru_maxrss is
    used and the growth may read 0."""
    method, depth = spec.split(":")
    problem = Problem(CheckConfig(depth=int(depth), device=device))
    compute(problem, method, 8)  # warm up code paths and the allocator at a tiny depth
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        compute(problem, method, int(depth))
        growth = _status_kib("VmHWM") - before
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        compute(problem, method, int(depth))
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"rss_growth_bytes": growth * 1024}))  # KiB -> bytes
    return 0


def rss_growth(method: str, depth: int, device: str) -> int:
    done = subprocess.run([sys.executable, __file__, "--child", f"{method}:{depth}",
                           "--device", device], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["rss_growth_bytes"]


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        return child(args.child, args.device)
    rows = []
    for depth in args.depths:
        problem = Problem(CheckConfig(depth=depth, device=args.device))
        for method in METHODS:
            start = time.perf_counter()
            saved, how = peak_memory(lambda p=problem, m=method, d=depth: compute(p, m, d),
                                     args.device)
            seconds = time.perf_counter() - start
            rss = None if args.no_rss else rss_growth(method, depth, args.device)
            rows.append({"method": method, "depth": depth, "saved_bytes": saved,
                         "measured_by": how, "seconds": round(seconds, 3),
                         "rss_growth_bytes": rss})
    print(f"{'method':9} {'L':>6} {'saved for backward':>19} {'RSS growth':>11} {'seconds':>8}")
    for r in rows:
        rss = "-" if r["rss_growth_bytes"] is None else f"{r['rss_growth_bytes'] / 2**20:.1f} MiB"
        print(f"{r['method']:9} {r['depth']:>6} {r['saved_bytes'] / 2**20:>15.3f} MiB "
              f"{rss:>11} {r['seconds']:>8.2f}")
    if len(args.depths) > 1:
        lo, hi = min(args.depths), max(args.depths)
        for method in METHODS:
            m = {r["depth"]: r["saved_bytes"] for r in rows if r["method"] == method}
            exponent = math.log(m[hi] / m[lo]) / math.log(hi / lo)
            print(f"{method}: saved bytes grow like L^{exponent:.2f} from L = {lo} to {hi}")
    if args.json:
        atomic_write_json(args.json, {"benchmark": "adjoint_memory", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
