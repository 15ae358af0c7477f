"""Ctrl-C and SIGTERM: a sweep that is asked to stop is recorded as KILLED and stays resumable.

Ray Tune handles the first SIGINT itself: it saves the experiment state, stops the trials and
returns from ``Tuner.fit()`` as if the sweep had ended, so the caller cannot tell an interrupted
sweep from a finished one; and SIGTERM (``docker stop``, Kubernetes, systemd) would kill the
process without any cleanup (Ray's core even aborts it). So:

- ``stop_tune_gracefully`` wraps ``fit()``: the first SIGINT or SIGTERM triggers Tune's own
  graceful stop (its SIGUSR1 handler, the same code as its Ctrl-C handling; its SIGINT handler is
  switched off with the documented ``TUNE_DISABLE_SIGINT_HANDLER``) and is remembered, so the
  runner raises ``Interrupted`` after ``fit()`` returns; a second signal raises at once.
- ``sigterm_blocked_in_children`` wraps starting Ray: Ray starts its processes with SIGINT
  blocked, and this blocks SIGTERM in them too, so a signal sent to the whole process group or
  cgroup reaches only the driver, which then stops them through Ray.
- ``raise_on_sigterm`` makes SIGTERM raise ``Interrupted`` elsewhere in the CLI, as Ctrl-C raises
  ``KeyboardInterrupt``, so cleanup (``finally``, locks, KILLED runs) happens; ``exit_soon``
  bounds how long the process then waits for a Ray that may be gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``. ``resume_hint``: the command that continues
    what was stopped, when there is one. The CLI exits with 128 + signum (130, 143)."""

    def __init__(self, signum: int, resume_hint: Optional[str] = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.resume_hint = resume_hint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


_sigterm_raises = False  # raise_on_sigterm was called (by the CLI)


def raise_on_sigterm() -> None:
    """SIGTERM raises ``Interrupted`` in the main thread (the CLI calls this once)."""
    global _sigterm_raises
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)
        _sigterm_raises = True


def reclaim_sigterm() -> None:
    """Install ``raise_on_sigterm``'s handler again if the CLI had: starting or joining Ray
    installs a handler of Ray's own core that aborts the process on SIGTERM (status -6, nothing
    cleaned up)."""
    if _sigterm_raises:
        raise_on_sigterm()


def exit_soon(status: int, after_s: float = 5.0) -> None:
    """Make sure the process ends with ``status`` within ``after_s``: when Ray's own processes
    are gone (a signal reached them anyway), Ray's exit handler waits a minute for them and then
    ends the process with status 1. Only for a process that got a real stop signal."""
    def end() -> None:
        time.sleep(after_s)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status)

    threading.Thread(target=end, name="tunebert-exit", daemon=True).start()


@contextmanager
def sigterm_blocked_in_children() -> Iterator[None]:
    """Processes started inside (Ray's GCS and raylet, and through the raylet its workers)
    inherit SIGTERM blocked, as Ray itself starts them with SIGINT blocked: a SIGTERM to the
    whole process group or cgroup (systemd, ``kill -TERM -PGID``, init processes that forward to
    the group) then reaches only this process, which stops the sweep through Ray. Ray's own
    shutdown still ends them (it sends SIGKILL after one second). A SIGTERM that arrives here
    meanwhile is delivered when the block is lifted."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class StopRequest:
    signum: Optional[int] = None  # the first stop signal received, if any


@contextmanager
def stop_tune_gracefully() -> Iterator[StopRequest]:
    """Around ``Tuner.fit()`` (main thread only; elsewhere a no-op): the first SIGINT or SIGTERM
    asks Ray Tune to stop gracefully and is recorded in the yielded ``StopRequest``; a second one
    raises ``Interrupted`` at once, as does one that comes before Tune's loop runs. Handlers and
    the environment are restored on exit."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def on_signal(signum, frame):
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_handler):  # Tune's loop is not running: nothing to stop gracefully
            raise Interrupted(signum)
        tune_handler(signal.SIGUSR1, frame)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous_usr1 = signal.getsignal(signal.SIGUSR1)
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for s in STOP_SIGNALS:
        signal.signal(s, on_signal)
    try:
        yield request
    finally:
        for s, handler in [*previous.items(), (signal.SIGUSR1, previous_usr1)]:
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(s, handler)
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env
