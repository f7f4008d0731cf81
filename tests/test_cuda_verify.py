"""verify on CUDA: every synthetic check runs there, in float64 and float32, with the verdicts
it has on the CPU (DESIGN.md: the device changes where the arithmetic runs, not what the checks
conclude).  Skipped without CUDA; benchmarks/gpu_suite.py makes the same comparison at
--depth 256 on a lent GPU machine."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def verdicts(tmp_path, device, dtype):
    path = tmp_path / f"{device}-{dtype}.json"
    done = subprocess.run([sys.executable, "-m", "rdm_dynamics.verify", "--depth", "64",
                           "--quick", "--no-figures", "--device", device, "--dtype", dtype,
                           "--out", str(tmp_path / f"{device}-{dtype}"), "--json", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    assert "crashed" not in done.stdout, done.stdout
    return {c["id"]: c["passed"] for c in json.loads(path.read_text())["checks"]}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_verdicts_are_the_cpu_verdicts(tmp_path, dtype):
    assert verdicts(tmp_path, "cuda", dtype) == verdicts(tmp_path, "cpu", dtype)
