"""One worker per run: while a run runs, `<log_dir>/<task>/<run_id>.lock` next to its log holds the
pid and host of the process running it (`run_lock`). Workers that share a log folder (sweep workers,
grid shards) skip a run another live process holds (`RunLocked`); the stale lock of a killed worker
(its pid is gone on this host) is taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path


def lock_path(log_path) -> Path:
    """`<log_dir>/<task>/<run_id>.lock`, next to the run's log."""
    return Path(log_path).with_suffix(".lock")


class RunLocked(RuntimeError):
    """Another live process holds the run's lock file: it is running (or about to run) that run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    """The lock's {"pid", "host", ...}, or None if it is gone or unreadable (being written)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict) -> bool:
    """A lock of a process on this host that no longer exists (a killed worker)."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _take_over(path: Path, stale: dict) -> None:
    """Remove the stale lock `stale`; if another worker replaced it meanwhile, leave that one.

    The lock is renamed aside first (atomic: of two workers taking over, one gets the file), then
    checked: a fresh lock moved by mistake is linked back (os.link fails if a lock is there again)."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read_holder(aside) != stale:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def acquire_lock(path) -> dict:
    """Create the lock file `path` atomically (a full draft hard-linked into place) holding this
    process's pid and host (JSON); returns what it wrote. A stale lock (its pid is dead on this host)
    is taken over with a warning on stderr; RunLocked if a live process (or one on another host) holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    draft = path.with_name(f"{path.name}.{me['token']}")  # written in full before it becomes the lock
    draft.write_text(json.dumps(me))
    try:
        for _ in range(5):
            try:
                os.link(draft, path)  # atomic, and fails if a lock exists: never seen half-written
            except FileExistsError:
                _check_holder(path)
                continue
            return me
    finally:
        draft.unlink(missing_ok=True)
    raise RunLocked(f"{path}: could not take the lock (other workers keep replacing it)")


def _check_holder(path: Path) -> None:
    """RunLocked if a live process (or one on another host) holds the lock `path`; a stale lock is
    taken over with a warning on stderr. A lock gone meanwhile passes (the caller tries again)."""
    holder = _read_holder(path)
    if holder is None and not path.exists():
        return
    if holder is None or not _is_stale(holder):
        who = "an unreadable lock" if holder is None else \
            f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started', '?')}"
        raise RunLocked(f"{path} is held by {who}: another worker is running this run "
                        f"(delete the file if no process uses it)")
    print(f"warning: taking over the stale lock {path} of pid {holder.get('pid')} (no longer "
          f"running on {holder.get('host')})", file=sys.stderr)
    _take_over(path, holder)


def release_lock(path, held: dict) -> None:
    """Delete the lock file `path` if it is still the one `acquire_lock` returned as `held`."""
    path = Path(path)
    if _read_holder(path) == held:
        path.unlink(missing_ok=True)


def lock_held(log_path) -> bool:
    """Whether a live worker holds the run's lock; the stale lock of a killed one does not count."""
    path = lock_path(log_path)
    holder = _read_holder(path)
    return path.exists() if holder is None else not _is_stale(holder)  # unreadable: treated as held


@contextmanager
def run_lock(log_path):
    """Hold the run's lock file (`lock_path(log_path)`) for the block; released on exit, also when
    the block raises. RunLocked (before the block) if another live worker holds it."""
    path = lock_path(log_path)
    held = acquire_lock(path)
    try:
        yield path
    finally:
        release_lock(path, held)
