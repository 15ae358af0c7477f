"""One driver per sweep: the lock file in the sweep folder, with real processes as owners."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tuning.sweep import lock as sweep_lock
from tuning.sweep.lock import LOCK_FILE, SweepLocked


def _hold(pid: int, host: str = None) -> dict:
    return {"pid": pid, "start": sweep_lock._start_time(pid), "host": host or socket.gethostname(),
            "since": "2030-01-01 00:00:00"}


@pytest.fixture
def other_process():
    """A live process that is not this one (the lock's owner in a test)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_driver_keeps_the_lock(tmp_path, other_process):
    (tmp_path / LOCK_FILE).write_text(json.dumps(_hold(other_process.pid)))
    with pytest.raises(SweepLocked, match=rf"sweep 's' is being run or resumed by another driver "
                                          rf"\(pid {other_process.pid} on host .*delete .*{LOCK_FILE}"):
        with sweep_lock.sweep_lock(tmp_path, "s"):
            pass
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == other_process.pid  # untouched


def test_a_dead_or_reused_pid_is_a_stale_lock(tmp_path, other_process):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for owner in (_hold(dead.pid), {**_hold(other_process.pid), "start": "1"}):  # gone; pid reused
        (tmp_path / LOCK_FILE).write_text(json.dumps(owner))
        with sweep_lock.sweep_lock(tmp_path, "s") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not (tmp_path / LOCK_FILE).exists()  # released on exit


def test_another_hosts_lock_is_stale_once_its_heartbeat_stops(tmp_path, other_process):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps(_hold(other_process.pid, host="elsewhere")))
    with pytest.raises(SweepLocked, match="on host elsewhere"):  # cannot tell: fresh, so refused
        with sweep_lock.sweep_lock(tmp_path, "s"):
            pass
    old = time.time() - sweep_lock.STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    with sweep_lock.sweep_lock(tmp_path, "s"):
        pass


def test_the_lock_is_reentrant_and_released_on_errors(tmp_path):
    folder = tmp_path / "ray" / "s"
    with pytest.raises(RuntimeError):
        with sweep_lock.sweep_lock(folder, "s") as path:
            with sweep_lock.sweep_lock(folder, "s"):  # `tune` holds it, its sweep phase takes it again
                assert path.is_file()
            assert path.is_file()  # still held by the outer block
            raise RuntimeError("boom")
    assert not (tmp_path / "ray").exists()  # nothing was written: the folders it made are gone


def test_two_drivers_taking_over_one_stale_lock_never_both_hold_it(tmp_path, other_process, monkeypatch):
    """Issue 11 item 5: drivers A and B both judge a dead driver's lock stale. A moves it aside
    and creates its own before B moves "it" aside: B must not move A's fresh lock away and take
    the sweep too; it finds the sweep held by A."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps(_hold(dead.pid)))
    judge = sweep_lock._stale
    raced = []

    def b_judges_then_a_takes_over(path, owner):
        stale = judge(path, owner)
        if stale and not raced:  # between B's judgement and B's rename, A does all of it
            raced.append(True)
            os.replace(path, tmp_path / "a-moved-the-stale-lock-aside")
            path.write_text(json.dumps(_hold(other_process.pid)))  # A's fresh lock (A is alive)
        return stale

    monkeypatch.setattr(sweep_lock, "_stale", b_judges_then_a_takes_over)
    with pytest.raises(SweepLocked, match=f"another driver \\(pid {other_process.pid} "):
        sweep_lock._acquire(lock.resolve(), "s")  # driver B
    assert raced
    assert json.loads(lock.read_text())["pid"] == other_process.pid  # A still holds it
    assert not list(tmp_path.glob(f"{LOCK_FILE}.stale-*"))  # nothing left aside


def test_a_suspended_driver_on_this_host_keeps_the_lock_and_is_named(tmp_path):
    """Issue 21: a driver stopped with Ctrl-Z stops its heartbeat but goes on when resumed, so its
    lock is refused (naming the pid and `kill -CONT`), never taken over; once it is gone, it is."""
    import signal

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from tuning.sweep.lock import sweep_lock\n"
         f"with sweep_lock({str(tmp_path)!r}, 's'):\n"
         "    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=str(sweep_lock.Path(__file__).parents[3]))
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while sweep_lock._state(holder.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)  # the signal is delivered asynchronously
        lock = tmp_path / LOCK_FILE
        old = time.time() - sweep_lock.STALE_AFTER_S - 5  # as if the heartbeat stopped long ago
        os.utime(lock, (old, old))
        with pytest.raises(SweepLocked) as info:
            with sweep_lock.sweep_lock(tmp_path, "s"):
                pass
        message = str(info.value)
        assert f"held by pid {holder.pid} on this host" in message
        assert "stopped (suspended with Ctrl-Z or SIGSTOP)" in message
        assert f"kill -CONT {holder.pid}" in message
        assert json.loads(lock.read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()  # SIGKILL ends a stopped process too
        holder.wait()
    with sweep_lock.sweep_lock(tmp_path, "s") as path:  # the owner is gone now: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
