"""Atomic files: a reader never sees a half-written file, and an interrupted write leaves the old
file as it was (write a temporary file in the same folder, fsync, then ``os.replace``)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_json", "temporary_name", "remove_stale_temporaries"]

#: The random part mkstemp puts into a temporary name.
_RANDOM = r"[A-Za-z0-9_]{8}"


def temporary_name(name_pattern: str) -> re.Pattern:
    """The names of the temporary files :func:`atomic_write_bytes` makes for files whose names
    match the regular expression ``name_pattern``: ``.NAME.XXXXXXXX.tmp``."""
    return re.compile(rf"^\.(?:{name_pattern})\.{_RANDOM}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike, name_pattern: str) -> list[Path]:
    """Remove the temporary files that killed atomic writes of files named like
    ``name_pattern`` left in ``folder`` (only those: nothing else is touched); their paths."""
    folder, pattern = Path(folder), temporary_name(name_pattern)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if pattern.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
