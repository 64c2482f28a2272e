"""Work locks: one process at a time trains a stage or evaluates a cell, on one machine or across SLURM nodes.

A lock is a file created with O_CREAT | O_EXCL (atomic on local filesystems and on NFS v3+), holding its
owner's host, pid, a random token and a heartbeat time that a background thread refreshes. A lock whose owner
is dead is taken over: on the same host, when its pid no longer exists; anywhere, when its heartbeat is older
than `stale_after_s`. Takeover renames the dead lock to a unique name first (only one contender's rename can
succeed) and checks that what it moved is the lock it judged dead, so two contenders never both win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench.locks")
HEARTBEAT_S = float(os.environ.get("BENCH_LOCK_HEARTBEAT_S", 20))
STALE_AFTER_S = float(os.environ.get("BENCH_LOCK_STALE_S", 180))


class LockBusy(RuntimeError):
    """The lock is held by a live owner (raised only when not waiting)."""


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started": time.time(), "heartbeat": time.time()}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by its creator, or damaged: judged by the file's age alone
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(path: Path, owner: dict[str, Any] | None, stale_after_s: float = STALE_AFTER_S) -> bool:
    if owner is None:
        return False
    same_host = owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int)
    if same_host and not _pid_alive(owner["pid"]):
        return True
    try:
        beat = max(float(owner.get("heartbeat") or 0), path.stat().st_mtime)
    except FileNotFoundError:
        return False
    return time.time() - beat > stale_after_s


class WorkLock:
    """An exclusive lock on one piece of work, kept alive by a heartbeat thread while held."""

    def __init__(self, path: Path, label: str = "", stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.path, self.label = Path(path), label or Path(path).name
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.owner: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free or its owner is dead; False while a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = _owner()
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not self._take_over_if_dead():
                return False
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # another contender was quicker
                return False
        with os.fdopen(descriptor, "w") as handle:
            json.dump(owner, handle)
            handle.flush()
            os.fsync(handle.fileno())
        self.owner = owner
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.label}", daemon=True)
        self._thread.start()
        return True

    def _take_over_if_dead(self) -> bool:
        """Remove the lock when its owner is dead; True when it is gone (taken over, or released meanwhile)."""
        holder = _read(self.path)
        if holder is None:
            return True
        if not is_dead(self.path, holder, self.stale_after_s):
            return False
        moved = self.path.with_name(f".{self.path.name}.dead.{uuid.uuid4().hex[:8]}")
        try:
            self.path.rename(moved)
        except FileNotFoundError:
            return True  # another contender removed it first
        taken = _read(moved) == holder
        if not taken:  # a fresh lock replaced the dead one in between: give it back
            with contextlib.suppress(OSError):
                os.link(moved, self.path)
        else:
            LOG.warning("took over the lock %s of a dead owner (%s pid %s)", self.path, holder.get("host"),
                        holder.get("pid"))
        moved.unlink(missing_ok=True)
        return taken

    def acquire(self, poll_s: float = 1.0, log_every_s: float = 60.0) -> None:
        """Wait until the lock is ours (another live process holds it: wait for it to finish)."""
        waited, last_log = 0.0, -log_every_s
        while not self.try_acquire():
            if waited - last_log >= log_every_s:
                holder = _read(self.path) or {}
                LOG.info("%s is being computed by %s pid %s; waiting for it", self.label, holder.get("host"),
                         holder.get("pid"))
                last_log = waited
            time.sleep(poll_s)
            waited += poll_s

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self.owner is None:
                return
            self.owner["heartbeat"] = time.time()
            current = _read(self.path)
            if current is None or current.get("token") != self.owner["token"]:
                LOG.error("lost the lock %s (taken over after a missed heartbeat?)", self.path)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.owner is not None:
            current = _read(self.path)
            if current is not None and current.get("token") == self.owner["token"]:
                self.path.unlink(missing_ok=True)
        self.owner = None


@contextlib.contextmanager
def locked(path: Path, label: str = "", poll_s: float = 1.0) -> Iterator[WorkLock]:
    """Hold the lock at `path` for the duration of a `with` block (waiting while another process holds it)."""
    lock = WorkLock(path, label)
    lock.acquire(poll_s=poll_s)
    try:
        yield lock
    finally:
        lock.release()
