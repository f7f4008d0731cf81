"""The verify command: exit codes, the JSON contract, figures, bad arguments."""

import json
import subprocess
import sys

import pytest
from test_verdicts import rejudge

from rdm_dynamics.checks import registry
from rdm_dynamics.verify import main

TOP = ["depth", "schedule", "gating", "seed", "dtype", "device", "passed", "status", "seconds",
       "versions", "checks", "figures"]
CHECK = ["id", "claim", "passed", "seconds", "metrics", "expected", "failed", "summary",
         "status"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rdm_dynamics.verify", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.heavy
def test_default_run_passes_and_writes_the_contract(tmp_path):
    """The README's command, as a user runs it (every check, --depth 256): every check passes,
    and re-applying each check's ``expected`` to its ``metrics`` gives its verdict and its list
    of failed metrics (test_verdicts.py does the same for the failing negative control)."""
    out = tmp_path / "report"
    done = run_cli("--depth", "256", "--out", str(out), "--json", str(tmp_path / "copy.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report) == TOP
    assert report["passed"] is True and report["depth"] == 256 and report["dtype"] == "float64"
    assert [c["id"] for c in report["checks"]] == list(registry())
    for check in report["checks"]:
        assert list(check) == CHECK
        assert check["passed"] is True and check["expected"], check["id"]
        assert rejudge(check) == (check["passed"], check["failed"]), check["id"]
        assert all(isinstance(v, (int, float)) or v is None for v in check["metrics"].values())
        assert (out / f"{check['id']}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "copy.json").read_text()) == report
    assert "PASS" in done.stdout


def test_plain_schedule_fails_with_exit_code_one(tmp_path):
    code = main(["--depth", "64", "--schedule", "plain", "--quick", "--out", str(tmp_path),
                 "--no-figures"])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False
    by_id = {c["id"]: c for c in report["checks"]}
    assert by_id["depth-limit"]["passed"] is False


def test_the_former_flag_gating_still_works_with_one_warning(tmp_path, capsys):
    """--gating is --schedule's former spelling, kept one release: the same report (the run's
    schedule also under the report's former key ``gating``), and one warning line."""
    new, old = tmp_path / "new", tmp_path / "old"
    common = ["--depth", "32", "--only", "C1", "--quick", "--no-figures"]
    assert main([*common, "--schedule", "euler", "--out", str(new)]) == 0
    assert capsys.readouterr().err == ""
    assert main([*common, "--gating", "euler", "--out", str(old)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gating is deprecated, use --schedule" in err[0]
    a, b = (json.loads((d / "report.json").read_text()) for d in (new, old))
    assert a["schedule"] == a["gating"] == b["schedule"] == "euler"
    assert [c["metrics"] for c in a["checks"]] == [c["metrics"] for c in b["checks"]]


def test_only_selects_checks(tmp_path):
    code = main(["--depth", "32", "--only", "C1", "--quick", "--out", str(tmp_path),
                 "--no-figures"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["id"] for c in report["checks"]] == ["depth-limit"]


@pytest.mark.parametrize("args,needle", [
    (["--depth", "1"], "the smallest that works is 32"),
    (["--depth", "0"], "--depth must be at least 1"),
    (["--depth", "-5"], "--depth must be at least 1"),
    (["--depth", "2"], "the smallest that works is 32"),
    (["--depth", "2", "--only", "C1"], "the smallest that works is 4"),
    (["--depth", "34"], "too few to fit an order"),
    (["--depth", str(2**40)], "is above 65536"),
    (["--seed", str(2**70)], "--seed must be at most"),
    (["--depth", "2.5"], "--depth must be an integer"),
    (["--depth", "abc"], "--depth must be an integer"),
    (["--depth", "7"], "too small"),
    (["--only", "nope"], "unknown check 'nope'"),
    (["--schedule", "wild"], "--schedule: unknown schedule"),
    (["--gating", "wild"], "--schedule: unknown schedule"),
    (["--gating", "plain", "--schedule", "rdm"], "disagree"),
    (["--gating", "plain", "--depth", "7"], "too small"),
    (["--dtype", "float16"], "unknown --dtype"),
    (["--seed", "x"], "--seed must be an integer"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "banana"], "--device"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_arguments_exit_two_with_one_line(args, needle, capsys, tmp_path):
    import torch

    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o" / "report.json").exists()


def test_unwritable_out_and_json_exit_two(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    assert main(["--out", str(a_file)]) == 2
    assert main(["--out", str(tmp_path / "o"), "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert main(["--out", str(tmp_path / "o"), "--json", str(tmp_path)]) == 2
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root can write anywhere
        assert main(["--out", str(locked / "sub")]) == 2
    assert a_file.read_text() == "keep me"
    errs = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("python -m rdm_dynamics.verify: error:") for line in errs)


def test_bad_argument_in_a_subprocess_has_no_traceback():
    done = run_cli("--depth", "1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_list(capsys):
    assert main(["--list"]) == 0
    assert "depth-limit" in capsys.readouterr().out
