"""What the command lines (verify, train, sample) share: one-line usage errors (exit code 2) and
the parsing of integers and devices."""

from __future__ import annotations

import argparse

import torch

__all__ = ["UsageError", "Parser", "parse_int", "parse_device"]


class UsageError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2, never a traceback."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(message)


def parse_int(text: str, name: str, minimum: int) -> int:
    """``--name`` as an integer >= minimum."""
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise UsageError(f"--{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"--{name} must be at least {minimum}, got {value}")
    return value


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
