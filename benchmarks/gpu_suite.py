"""The measurements a lent GPU machine should make, as one script with a time budget.

    python benchmarks/gpu_suite.py OUT                      # on a CUDA machine: under 8 minutes
    python benchmarks/gpu_suite.py OUT --device cpu --smoke # smallest settings, to know it works

Stages, run in this order (each a subprocess with its own time-out, each stage's figures in
OUT as JSON, and OUT/suite.json rewritten atomically after every stage so a time-out keeps what
was done):

1. ``verify_<device>_float64`` and ``verify_<device>_float32``: ``python -m rdm_dynamics.verify``
   on the device (wall time, verdicts); ``verify_cpu_float64`` as the reference when the device
   is not the CPU; the verdicts of every check on the device against that reference
   (``verdicts_match``: DESIGN.md asks for the same verdicts on CUDA as on the CPU).
2. ``gpu_throughput``: ``benchmarks/gpu_throughput.py`` (images/s, model FLOP utilisation,
   eager and compiled, bfloat16 autocast), its own budget inside the stage's.
3. ``train`` then ``verify_ckpt``: a short CUDA training run of the digits model, then the
   trained-model checks on it (``verify --ckpt``) when ``verify --help`` lists ``--ckpt``; else
   recorded as not available.
4. ``study``: a trial of the study's ``gpu`` preset (its seed-0 runs at 150 steps; with --smoke
   one run, 2 steps, no torch.compile) when ``python -m rdm_dynamics.study --help`` names it.

Every stage records its command, return code, wall time and the end of its stderr; a stage that
fails does not stop the others.  A stage is skipped (and says so) when the budget left is less
than it needs to start.  The exit code is 0 when every stage that ran returned 0 (a verify run
that finds a FAIL returns 1, which is a measurement, not a failure of the suite: its ``verdicts``
are recorded), else 1; 2 for bad arguments.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Parser, run_main  # noqa: E402

from rdm_dynamics.files import atomic_write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable

#: Per-stage time caps in seconds: (full run on a GPU, --smoke).  The budget is 8 minutes in all.
CAPS = {"verify": (75, 60), "verify_reference": (45, 60), "gpu_throughput": (170, 90),
        "train": (60, 60), "verify_ckpt": (60, 60), "study": (150, 150)}


def parse(argv):
    p = Parser(prog="benchmarks/gpu_suite.py", description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for suite.json and every stage's JSON")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="smallest settings (for a CPU: each stage runs in seconds)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="stop starting stages after this many seconds (default 450: the suite "
                        "ends within 8 minutes)")
    p.add_argument("--depth", type=int, default=256, help="verify --depth (default 256)")
    args = p.parse_args(argv)
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device must be cuda[:N] or cpu, got {args.device!r}")
    if args.budget_s <= 0:
        raise ValueError("--budget-s must be positive")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"OUT {args.out!r} is a file, not a folder")
    return args


class Suite:
    """Runs the stages against a deadline and keeps OUT/suite.json up to date."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.began = time.perf_counter()
        self.report = {"suite": "gpu_suite", "device": args.device, "smoke": args.smoke,
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "machine": platform.node(), "platform": platform.platform(),
                       "cpu_count": os.cpu_count(), "budget_s": args.budget_s}
        self.help = probe()
        self.report["environment"] = {k: v for k, v in self.help.items()
                                      if not k.endswith("_help")}
        self.report["stages"] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.began)

    def save(self) -> None:
        self.report["seconds"] = round(time.perf_counter() - self.began, 1)
        atomic_write_json(self.out / "suite.json", self.report)

    def record(self, name: str, entry: dict) -> dict:
        self.report["stages"][name] = entry
        self.save()
        return entry

    def run(self, name: str, cmd: list[str], cap: str, *, need_s: float = 10.0) -> dict:
        """Run one stage as a subprocess with time-out min(its cap, the budget left)."""
        timeout = min(CAPS[cap][1 if self.args.smoke else 0], self.left())
        if timeout < need_s:
            return self.record(name, {"status": "skipped", "why": f"budget: {self.left():.0f} s "
                                      f"left, the stage needs {need_s:.0f} s to start"})
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=HERE.parent)
            # verify and study exit 1 when a claim FAILs: a measurement (recorded in their JSON)
            ok_codes = (0, 1) if name.startswith(("verify", "study")) else (0,)
            status = "ok" if done.returncode in ok_codes else "failed"
            entry = {"status": status, "returncode": done.returncode,
                     "stderr_tail": done.stderr[-1500:], "stdout_tail": done.stdout[-1500:]}
        except subprocess.TimeoutExpired as exc:
            entry = {"status": "timed out", "returncode": None,
                     "stderr_tail": (exc.stderr or b"")[-1500:].decode(errors="replace")
                     if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-1500:]}
        entry.update(command=" ".join(cmd), wall_s=round(time.perf_counter() - start, 2),
                     timeout_s=round(timeout, 1))
        return self.record(name, entry)


PROBE = r"""
import contextlib, io, json, runpy, sys
import torch
out = {"torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
for name in ("verify", "train", "study"):
    sys.argv, text = [name, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module(f"rdm_dynamics.{name}", run_name="__main__")
    except SystemExit as exc:
        out[f"{name}_help"] = text.getvalue() if exc.code in (0, None) else None
    except ImportError:
        out[f"{name}_help"] = None
print(json.dumps(out))
"""


def probe() -> dict:
    """torch, CUDA and the GPU's name, and the --help of verify, train and study (None for a
    command that does not exist), from one subprocess (one torch import, not four)."""
    done = subprocess.run([PY, "-c", PROBE], capture_output=True, text=True, timeout=180,
                          cwd=HERE.parent)
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdicts(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {c["id"]: c["passed"] for c in report["checks"]} | {"_seconds": report["seconds"]}


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args)
    dev = args.device.replace(":", "")
    verify = [PY, "-m", "rdm_dynamics.verify", "--no-figures"]
    sizes = ["--depth", "32", "--quick", "--only", "depth-limit,error-propagation"] \
        if args.smoke else ["--depth", str(args.depth)]

    # 1. verify on the device, float64 and float32, against the CPU's verdicts
    runs = [(f"verify_{dev}_float64", args.device, "float64", "verify"),
            (f"verify_{dev}_float32", args.device, "float32", "verify")]
    if args.device != "cpu":
        runs.append(("verify_cpu_float64", "cpu", "float64", "verify_reference"))
    for name, device, dtype, cap in runs:
        path = out / f"{name}.json"
        entry = suite.run(name, [*verify, *sizes, "--device", device, "--dtype", dtype,
                                 "--out", str(out / name), "--json", str(path)], cap)
        entry["verdicts"] = verdicts(path)
        suite.record(name, entry)
    reference = suite.report["stages"].get("verify_cpu_float64",
                                           suite.report["stages"][f"verify_{dev}_float64"])
    for dtype in ("float64", "float32"):
        entry = suite.report["stages"][f"verify_{dev}_{dtype}"]
        if entry.get("verdicts") and reference.get("verdicts"):
            mine = {k: v for k, v in entry["verdicts"].items() if k != "_seconds"}
            ref = {k: v for k, v in reference["verdicts"].items() if k != "_seconds"}
            entry["verdicts_match_cpu_float64"] = mine == ref
            suite.record(f"verify_{dev}_{dtype}", entry)

    # 2. training throughput and MFU
    throughput = [PY, str(HERE / "gpu_throughput.py"), "--device", args.device,
                  "--json", str(out / "gpu_throughput.json")]
    throughput += ["--smoke"] if args.smoke else ["--budget-s", "110"]
    entry = suite.run("gpu_throughput", throughput, "gpu_throughput")
    try:
        entry["figures"] = json.loads((out / "gpu_throughput.json").read_text())
    except (OSError, ValueError):
        entry["figures"] = None
    suite.record("gpu_throughput", entry)

    # 3. a model trained on the device, then the trained-model checks on it
    train_help = suite.help.get("train_help") or ""
    data = "digits-gmm" if "digits-gmm" in train_help else "digits"
    run_dir = out / "train_run"
    train = [PY, "-m", "rdm_dynamics.train", "--data", data, "--device", args.device,
             "--out", str(run_dir), "--no-progress", "--ckpt-every", "100000"]
    train += (["--steps", "3", "--batch-size", "8", "--n-samples", "4", "--sample-steps", "2"]
              if args.smoke else ["--steps", "100000", "--max-seconds", "40",
                                  "--batch-size", "256", "--n-samples", "16"])
    train_entry = suite.run("train", train, "train")
    train_entry["data"] = data
    suite.record("train", train_entry)
    if "--ckpt" not in (suite.help.get("verify_help") or ""):
        suite.record("verify_ckpt", {"status": "not available",
                                     "why": "python -m rdm_dynamics.verify --help lists no --ckpt"})
    elif train_entry["status"] != "ok":
        suite.record("verify_ckpt", {"status": "skipped", "why": "the training stage failed"})
    else:
        path = out / "verify_ckpt.json"
        entry = suite.run("verify_ckpt", [*verify, "--ckpt", str(run_dir), "--device",
                                          args.device, "--out", str(out / "verify_ckpt"),
                                          "--json", str(path)] + (["--quick"] if args.smoke
                                                                  else []), "verify_ckpt")
        entry["verdicts"] = verdicts(path)
        suite.record("verify_ckpt", entry)

    # 4. the study's gpu preset: a trial of it within the suite's budget (the whole preset is
    #    its own 8-minute run: python -m rdm_dynamics.study --preset gpu --device cuda --jobs 4);
    #    on the CPU one run of it, 2 steps, without torch.compile (minutes to compile on a CPU)
    study_help = suite.help.get("study_help")
    if study_help is None or "gpu" not in study_help:
        suite.record("study", {"status": "not available",
                               "why": "no python -m rdm_dynamics.study" if study_help is None
                               else "python -m rdm_dynamics.study --help names no 'gpu' preset"})
    else:
        trial = (["--max-steps", "2", "--set", "compile=false", "--set", "n_samples=4",
                  "--set", "sample_steps=2", "--set", "measure.fd_samples=16", "--set",
                  "measure.sample_steps=4", "--runs", "depth-4_gate-rdm_init-smooth_seed-0"]
                 if args.smoke
                 else ["--max-steps", "150", "--jobs", "4", "--runs", "*seed-0"])
        path = out / "study.json"
        entry = suite.run("study", [PY, "-m", "rdm_dynamics.study", "--preset", "gpu",
                                    "--device", args.device, "--out", str(out / "study"),
                                    "--no-figures", "--json", str(path), *trial], "study")
        if path.is_file():
            report = json.loads(path.read_text())
            entry["verdicts"] = {c["id"]: c["passed"] for c in report["checks"]}
            entry["runs"], entry["study_seconds"] = report["runs"], report["seconds"]
        suite.record("study", entry)

    suite.save()
    ran = [s for s in suite.report["stages"].values() if "returncode" in s]
    bad = [n for n, s in suite.report["stages"].items() if s.get("status") in ("failed",
                                                                               "timed out")]
    print(f"gpu_suite: {len(ran)} stages ran in {suite.report['seconds']:.0f} s"
          + (f"; failed or timed out: {', '.join(bad)}" if bad else "")
          + f"; wrote {out / 'suite.json'}")
    for name, s in suite.report["stages"].items():
        print(f"  {name:24} {s['status']:14} {s.get('wall_s', ''):>8}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
