"""What the command lines (verify, train, sample) share: one-line usage errors (exit code 2), the
one top-level wrapper that turns bad input, OS errors and Ctrl-C into one line and an exit code,
and the parsing of integers, seeds and devices.

Exit codes of every command: 0 done; 1 a result (a failed claim, a diverged run); 2 bad input
or an OS error (a file that cannot be read or written, memory that cannot be allocated), one
line on stderr; 130 interrupted (Ctrl-C), one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

__all__ = ["UsageError", "Interrupted", "Parser", "parse_int", "parse_seed", "parse_device",
           "run_command", "one_line", "MAX_SEED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

#: Seeds are used as torch, numpy and Python seeds, combined with stream numbers: < 2^32 keeps
#: every combination in range.
MAX_SEED = 2**32 - 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2, never a traceback."""


class Interrupted(Exception):
    """Ctrl-C, with what the user should know (what was kept): one line, exit code 130."""


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines wrapped at spaces only, so names such as RDM-DiT-T/2 stay whole."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError instead of printing usage and exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its first line of text, or its type's name."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename!r}" if exc.filename else "")
    if isinstance(exc, UnicodeDecodeError):
        text = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    return text.splitlines()[0] if text else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def run_command(prog: str, body: Callable[[], int], quiet: bool = False) -> int:
    """Run a command's ``body`` and return its exit code; bad input (UsageError), OS errors and
    exhausted memory become one line on stderr and exit code 2, Ctrl-C one line (the message
    of an :class:`Interrupted` or of a KeyboardInterrupt that carries one) and 130.  ``quiet``
    (the other ranks of a data-parallel job): the same exit codes, no line."""
    def say(line: str) -> None:
        if not quiet:
            print(f"{prog}: {line}", file=sys.stderr)

    try:
        return body()
    except (UsageError, OSError) as exc:
        say(f"error: {one_line(exc)}")
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt) as exc:
        say(one_line(exc) if str(exc).strip() else "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        say(f"error: out of memory ({one_line(exc)}); ask for less (depth, size, batch)")
        return EXIT_USAGE


def parse_int(text, name: str, minimum: int, maximum: int | None = None) -> int:
    """``--name`` as an integer in [minimum, maximum]."""
    try:
        value = int(str(text), 10)
    except (TypeError, ValueError):
        raise UsageError(f"--{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"--{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UsageError(f"--{name} must be at most {maximum}, got {value}")
    return value


def parse_seed(text, name: str = "seed") -> int:
    """A seed: an integer in [0, MAX_SEED]."""
    return parse_int(text, name, 0, MAX_SEED)


def parse_device(text: str, flag: str = "--device") -> torch.device:
    """cpu or cuda[:N], where that device exists."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown {flag} {text!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {text} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {text}: only {torch.cuda.device_count()} CUDA device(s) "
                             "here")
    elif device.type != "cpu":
        raise UsageError(f"unsupported {flag} {text!r}; use cpu or cuda[:N]")
    return device
