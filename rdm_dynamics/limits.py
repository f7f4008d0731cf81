"""Bounded readers: every file the toolkit parses goes through one of these, so that a small
hostile file (a YAML "billion laughs", a JSON nested a million deep, a PNG that decodes to
20000 x 20000 pixels, a zip member that inflates a thousandfold) is refused in one line before it
can take seconds or memory.

The limits (the README's promises name them):

* text files of settings (YAML, TOML: ``--config``, study files) at most ``MAX_SETTINGS_BYTES``;
  YAML without aliases (``&a`` / ``*a``: the only way a few bytes expand to many nodes) and
  without tags beyond the safe ones (``yaml.safe_load``);
* JSON files (checkpoints' JSON, reports, a study's measurements) at most ``MAX_JSON_BYTES``;
* every parsed document (JSON, YAML, TOML) nested at most ``MAX_NESTING`` deep;
* images at most ``MAX_PIXELS`` pixels (read from the header, before decoding);
* compressed array members (``.npz``) that would inflate more than ``MAX_INFLATION`` times and
  beyond ``INFLATION_FLOOR`` bytes.

A refusal is a :class:`FileLimitError` (a ValueError) whose message names the file and the limit;
callers turn it into their own error (UsageError, CheckpointError, a skipped image).  Error lines
quote at most a short prefix of a bad value (:func:`short`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["FileLimitError", "MAX_SETTINGS_BYTES", "MAX_JSON_BYTES", "MAX_NESTING", "MAX_PIXELS",
           "MAX_INFLATION", "INFLATION_FLOOR", "short", "cut", "read_text", "load_json",
           "loads_json", "json_text_depth", "load_yaml", "load_toml", "nesting_depth",
           "check_pixels", "check_inflation"]

MAX_SETTINGS_BYTES = 1 << 20  # 1 MiB of settings
MAX_JSON_BYTES = 8 << 20  # 8 MiB: a checkpoint's JSON (RNG states, optimizer layout) is KBs
MAX_NESTING = 64
MAX_PIXELS = 1 << 26  # 8192 x 8192
MAX_INFLATION = 100
INFLATION_FLOOR = 64 << 20
#: Characters of a bad value quoted in an error line.
QUOTE = 60


class FileLimitError(ValueError):
    """A file beyond one of the limits (module docstring)."""


def short(value, limit: int = QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters (with the full length said), for error lines."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = QUOTE) -> str:
    """``text`` cut to ``limit`` characters (with the full length said), for error lines."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def read_text(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    """The UTF-8 text of ``path`` if it is at most ``max_bytes`` long (checked before reading;
    at most ``max_bytes + 1`` bytes are ever read).  OSError, UnicodeDecodeError or
    FileLimitError."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileLimitError(f"{what} {str(path)!r} is larger than {max_bytes} bytes")
    return data.decode("utf-8")


def _children(node):
    return node.values() if isinstance(node, dict) else node


def nesting_depth(obj) -> int:
    """How deep lists and mappings nest in ``obj`` (a scalar: 0), without recursion and in
    memory of the order of the depth (one iterator per open level); stops counting past
    MAX_NESTING."""
    if not isinstance(obj, (dict, list, tuple)):
        return 0
    deepest, stack = 1, [iter(_children(obj))]
    while stack:
        for child in stack[-1]:
            if isinstance(child, (dict, list, tuple)):
                stack.append(iter(_children(child)))
                deepest = max(deepest, len(stack))
                if deepest > MAX_NESTING:
                    return deepest
                break
        else:
            stack.pop()
    return deepest


def _checked_depth(obj, where: str):
    if nesting_depth(obj) > MAX_NESTING:
        raise FileLimitError(f"{where} nests deeper than {MAX_NESTING} levels")
    return obj


def json_text_depth(text: str) -> int:
    """How deep brackets nest in JSON text, strings aside, read before parsing (vectorised:
    a few passes over the text, no Python loop over its elements)."""
    import re

    import numpy as np

    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text).encode("utf-8", "replace")
    b = np.frombuffer(bare, dtype=np.uint8)
    if not b.size:
        return 0
    step = np.zeros(b.size, dtype=np.int32)
    step[(b == ord("[")) | (b == ord("{"))] = 1
    step[(b == ord("]")) | (b == ord("}"))] = -1
    return int(np.cumsum(step).max())


def loads_json(text: str, where: str = "JSON"):
    """``json.loads`` with the nesting bounded (checked on the text first); FileLimitError or
    ValueError."""
    if json_text_depth(text) > MAX_NESTING:
        raise FileLimitError(f"{where} nests deeper than {MAX_NESTING} levels")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable within MAX_NESTING; kept as a second guard
        raise FileLimitError(f"{where} nests deeper than {MAX_NESTING} levels") from None


def load_json(path: str | os.PathLike, what: str = "JSON file",
              max_bytes: int = MAX_JSON_BYTES):
    """A JSON file within the size and nesting limits.  OSError, ValueError (bad JSON, not
    UTF-8) or FileLimitError (a ValueError)."""
    return loads_json(read_text(path, max_bytes, what), f"{what} {str(path)!r}")


def _no_alias_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """yaml.SafeLoader that refuses aliases: no node is ever shared, so the document is
        no larger than its text."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise FileLimitError(f"YAML aliases (*name) are not accepted (line "
                                     f"{mark.line + 1})")
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_yaml(text: str, where: str = "YAML"):
    """``yaml.safe_load`` without aliases and with the nesting bounded (the text's size is the
    caller's: :func:`read_text`).  FileLimitError, or yaml.YAMLError for malformed YAML."""
    import yaml

    try:
        return _checked_depth(yaml.load(text, Loader=_no_alias_loader()), where)  # noqa: S506
    except RecursionError:
        raise FileLimitError(f"{where} nests deeper than {MAX_NESTING} levels") from None


def load_toml(text: str, where: str = "TOML"):
    """``tomllib.loads`` with the nesting bounded.  FileLimitError or tomllib.TOMLDecodeError."""
    import tomllib

    try:
        return _checked_depth(tomllib.loads(text), where)
    except RecursionError:
        raise FileLimitError(f"{where} nests deeper than {MAX_NESTING} levels") from None


def check_pixels(width: int, height: int, where: str, frames: int = 1) -> None:
    """FileLimitError if an image of ``width`` x ``height`` (x ``frames``) exceeds MAX_PIXELS."""
    if width * height * max(frames, 1) > MAX_PIXELS:
        raise FileLimitError(f"{where}: {width} x {height} pixels is above the limit of "
                             f"{MAX_PIXELS} (a decompression bomb, or an image too large)")


def check_inflation(compressed: int, size: int, where: str) -> None:
    """FileLimitError if a compressed member of ``compressed`` bytes inflates to ``size`` bytes,
    more than MAX_INFLATION times and beyond INFLATION_FLOOR bytes."""
    if size > INFLATION_FLOOR and size > MAX_INFLATION * max(compressed, 1):
        raise FileLimitError(f"{where} would inflate from {compressed} to {size} bytes "
                             f"(more than {MAX_INFLATION} times: a decompression bomb)")
