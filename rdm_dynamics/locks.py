"""One writer per folder: advisory locks that the operating system releases when their holder dies.

A lock is ``fcntl.flock(LOCK_EX)`` on a lock file (``.rdm-lock`` in a run folder, or a named file
of a study's ``locks/`` folder), held from :func:`acquire` until :meth:`Lock.release` or the
process's end: a run killed by SIGKILL or a lost machine leaves a lock file that the next
:func:`acquire` takes at once, so the run can be resumed.  The holder writes ``pid@host`` into
the file, so a refused writer can say who holds it.  On a file system shared by several machines
the lock works where that file system implements ``flock`` across machines (Linux NFSv4 maps it
onto NFS byte-range locks; local file systems and most cluster file systems do too).

A lock is only advisory: it keeps the toolkit's own writers (``train``, ``study``) apart; it
does not stop another program from writing into the folder.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .cli import UsageError

__all__ = ["Lock", "LockHeld", "acquire", "holder", "RUN_LOCK"]

#: The lock file of a run folder (train holds it while it trains).
RUN_LOCK = ".rdm-lock"


class LockHeld(UsageError):
    """The lock is held by another process (``who``: its ``pid@host``, or ``unknown``): bad
    input to a command (one line, exit code 2)."""

    def __init__(self, path: Path, who: str):
        super().__init__(f"{str(path.parent)!r} is in use by process {who} (lock {path.name}); "
                         "wait for it to finish, or stop it first")
        self.path, self.who = path, who


class Lock:
    """A held lock (:func:`acquire`); ``release()`` or the process's end frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: str | os.PathLike) -> str:
    """What the holder of the lock file ``path`` wrote (``pid@host``), or ``unknown``."""
    try:
        with open(path, "rb") as f:
            text = f.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return "unknown"
    return text.splitlines()[0] if text else "unknown"


def acquire(path: str | os.PathLike, wait: float = 0.0, poll: float = 0.2,
            stop=lambda: False) -> Lock:
    """Take the lock file ``path`` (its folder made if missing), waiting up to ``wait`` seconds
    (``float('inf')``: until it is free, or ``stop()`` is true); LockHeld naming the holder if
    another process keeps it.  Polling, not a blocking call, so that Ctrl-C and ``stop`` are
    honoured at once."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline or stop():
                    raise LockHeld(path, holder(path)) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return Lock(path, fd)
