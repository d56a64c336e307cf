"""The run lock on a grid's ``out=`` folder: one grid at a time computes cells there.

``OUT/.grid.lock`` holds the holder's pid, host, start time and command line (JSON), and the
holder keeps an exclusive ``flock`` on it for as long as it runs, which the kernel drops when the
process dies, even by SIGKILL. A second grid is refused (:class:`LockHeld`, naming the holder and
the file). A lock file left by a grid that died on this host (no flock held, or, where the file
system has no flock, its pid not alive) is taken over with a note; one written on another host
is never taken over (its pid cannot be checked from here): the message says to delete it once that
grid is known to be gone. ``release`` removes the file.

While holding the lock, :func:`remove_stale_claims` deletes the local launcher's ``.claim-*``
files that killed grids left behind (no live grid of this folder can own them).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".grid.lock"


class LockHeld(Exception):
    """Another grid holds the lock on ``out``; the message names it and the lock file."""


class RunLock:
    """The lock on one ``out=`` folder, held from :meth:`acquire` until :meth:`release`."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, note=None) -> "RunLock":
        """Take the lock or raise :class:`LockHeld`. ``note(text)`` (default: print to stderr)
        receives the line that says a dead holder's lock was taken over."""
        note = note or (lambda text: print(text, file=sys.stderr))
        host = socket.gethostname()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                flocked = _flock(fd)
                if flocked and not _same_file(fd, self.path):
                    continue  # released (unlinked) between our open and flock: try the new file
                holder = _read(fd)
                if holder and not (holder.get("pid") == os.getpid() and holder.get("host") == host):
                    dead = _dead_holder(holder, host, flocked)
                    if not dead:
                        raise LockHeld(self._held_message(holder, host))
                    note(f"[grid] note: took over the lock of a grid that is no longer running "
                         f"(pid {holder.get('pid')} on {holder.get('host')}, started "
                         f"{holder.get('started_at', '?')}): {self.path}")
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host,
                                          "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "argv": sys.argv}).encode(), 0)
                os.fsync(fd)
                self._fd, fd = fd, None
                return self
            finally:
                if fd is not None:
                    os.close(fd)

    def release(self) -> None:
        """Remove the lock file and drop the flock (in that order, so that a grid waiting on
        this file sees it unlinked and retries on a fresh one). Safe to call twice."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _held_message(self, holder: dict, host: str) -> str:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
               f"{holder.get('started_at', '?')}")
        if holder.get("host") != host:
            what = ("its pid cannot be checked from this host; wait for it to finish or choose "
                    "another out=, and delete the lock file only once that grid is known to be "
                    "gone")
        else:
            what = "wait for it to finish or choose another out="
        return (f"out: {self.path.parent} is in use by another grid ({who}; lock file "
                f"{self.path}); {what}")


def remove_stale_claims(out: str | os.PathLike) -> int:
    """Delete ``OUT/cells/*/.claim-*`` (call only while holding the lock). Returns the count."""
    n = 0
    for claim in Path(out).glob("cells/*/.claim-*"):
        try:
            claim.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def _flock(fd: int) -> bool | None:
    """True: we hold the exclusive flock; False: another process holds it; None: this file
    system has no flock (then the holder's pid decides)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read(fd: int) -> dict | None:
    data = os.pread(fd, 1 << 16, 0)
    if not data.strip():
        return None  # a fresh file (or one whose holder died before writing): nobody holds it
    try:
        holder = json.loads(data)
    except ValueError:
        return {"pid": "?", "host": "?", "started_at": "? (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}


def _dead_holder(holder: dict, host: str, flocked: bool | None) -> bool:
    """Whether the grid named in the lock file is known to be gone."""
    if flocked is False or holder.get("host") != host:
        return False  # a live flock, or another host: cannot know, so never take over
    pid = holder.get("pid")
    if flocked:  # the kernel dropped the holder's flock: it exited, whatever its pid is now
        return True
    return isinstance(pid, int) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
