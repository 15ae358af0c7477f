"""One driver per sweep: a lock file in the sweep's folder while a process runs or resumes it.

Two drivers on one sweep would both restore Ray's state, sample trials for the same Optuna
study and write to the same MLflow runs. ``sweep_lock`` creates ``<sweep folder>/LOCK_FILE``
atomically (``O_EXCL``) with the owner's pid, process start time and host, refreshes its
modification time every ``HEARTBEAT_S`` and removes it on exit (normal, error, Ctrl-C, SIGTERM).

A lock left by a driver that was SIGKILLed (or lost with its machine) is stale and taken over:
on the same host when its pid is gone or now belongs to another process (the start time
differs); from another host when it has not been refreshed for ``STALE_AFTER_S``, so a sweep
resumed from another machine or container is not blocked by a dead one for longer than that.
On the same host a live owner keeps the lock however long its heartbeat has stalled: a driver
suspended with Ctrl-Z (SIGSTOP) goes on when resumed, and two drivers would then share the sweep;
such a lock is refused with the owner's pid and how to resume or end it.
Re-entrant within one process (``tunebert tune`` holds it around its phases, the sweep phase
takes it again).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from trainables.errors import UserError

LOCK_FILE = "tunebert.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 90.0  # several missed heartbeats: the owner is gone

_held: dict[Path, int] = {}  # lock path -> nesting depth in this process
_beats: dict[Path, threading.Event] = {}


class SweepLocked(UserError):
    """Another live driver runs or resumes this sweep."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_record() -> dict:
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def _state(pid: int) -> Optional[str]:
    """The process's state letter (Linux): 'T' stopped (Ctrl-Z, SIGSTOP), 't' traced, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _age(path: Path) -> Optional[float]:
    """Seconds since the owner's last heartbeat; None when the lock is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _stale(path: Path, owner: Optional[dict]) -> bool:
    age = _age(path)
    if age is None:
        return True
    if owner is None:  # unreadable: a writer killed between creating and filling it
        return age > 2 * HEARTBEAT_S
    if owner.get("host") == socket.gethostname():  # the pid can be asked: only a dead owner is stale
        return not _alive(owner)
    return age > STALE_AFTER_S


def _stalled_message(path: Path, owner: dict, name: str) -> Optional[str]:
    """For a live owner on this host whose heartbeat stopped: what it is and how to fix it."""
    age = _age(path)
    if age is None or age <= STALE_AFTER_S or owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    why = ("it is stopped (suspended with Ctrl-Z or SIGSTOP)" if _state(pid) in ("T", "t")
           else "it is alive but stalled (suspended, or hung)")
    return (f"sweep {name!r} is held by pid {pid} on this host (since {owner.get('since')}), whose "
            f"lock heartbeat stopped {age:.0f}s ago: {why}. It would go on when resumed, so the "
            f"sweep is not taken over. Resume it (`fg` in its shell, or `kill -CONT {pid}`) and "
            f"let it finish, or end it (`kill -CONT {pid}; kill {pid}`) and run this again.")


def _read(path: Path) -> Optional[dict]:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def _take_over(path: Path, judged: int) -> None:
    """Move the stale lock ``path`` (inode ``judged``) aside, so that ``_acquire`` can create its
    own. Two drivers may judge the same lock stale; the first moves it aside and creates a fresh
    one, and the second's rename then moves that fresh lock instead: seen by its inode, it is put
    back (``os.link`` creates the name only while it is free) and the second driver finds it
    held. Only a third driver creating the name in that instant could still get in between."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{threading.get_ident()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    try:
        if os.stat(aside).st_ino != judged:  # another driver's fresh lock: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def _acquire(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                judged = os.stat(path).st_ino  # the file this judgement is about
            except FileNotFoundError:
                continue
            owner = _read(path)
            if not _stale(path, owner):
                stalled = owner and _stalled_message(path, owner, name)
                if stalled:
                    raise SweepLocked(stalled) from None
                who = (f"pid {owner.get('pid')} on host {owner.get('host')}, since "
                       f"{owner.get('since')}") if owner else "a process that is starting"
                raise SweepLocked(
                    f"sweep {name!r} is being run or resumed by another driver ({who}); two "
                    f"drivers on one sweep would sample and record its trials twice. Wait for it "
                    f"to end or stop it (Ctrl-C saves it for `tunebert resume {name}`). If no such "
                    f"process is running, delete {path}.") from None
            _take_over(path, judged)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner_record(), f)
        return
    raise SweepLocked(f"could not take the lock {path} of sweep {name!r}; delete it if no other "
                      f"driver runs the sweep")


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


def _release(path: Path) -> None:
    owner = _read(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def sweep_lock(folder: Path, name: str) -> Iterator[Path]:
    """Hold the lock of the sweep in ``folder`` (created if needed) for the ``with`` block.
    Raises ``SweepLocked`` (a user error: exit 2) when a live driver holds it. A folder this
    call created is removed again if nothing was written to it."""
    path = (Path(folder) / LOCK_FILE).resolve()
    if _held.get(path):
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    _acquire(path, name)
    _held[path] = 1
    stop = threading.Event()
    _beats[path] = stop
    threading.Thread(target=_heartbeat, args=(path, stop), name="tunebert-lock", daemon=True).start()
    try:
        yield path
    finally:
        stop.set()
        _held.pop(path, None)
        _beats.pop(path, None)
        _release(path)
        for folder in created:  # a sweep refused before it wrote anything leaves no folder behind
            try:
                folder.rmdir()
            except OSError:
                break
