"""The sweep callback's ordered write queue: Ray's hooks only queue MLflow writes; one writer
thread delivers them in order, keeps a write that fails (a server that is down or silent) at the
head of the queue and tries it again on a timer, so tracking never kills or stalls training."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Optional

log = logging.getLogger(__name__)

# how long the writer waits after a failed delivery before it tries again (each request itself
# gives up after ~10 s: tuning.tracking.store.HTTP_DEFAULTS)
RETRY_AFTER_S = 10.0


class OrderedWriter:
    """A queue of writes and the one thread that delivers them, in order (a mixin of
    ``MlflowTrialLogger``). The class that mixes it in defines ``_deliver(entry)``, which returns
    None once the write reached MLflow and the error's text when it did not, and ``sweep_name``
    (the writer thread's name). ``delayed_writes`` counts writes that waited out a failure,
    ``failed_writes`` those still undelivered when ``flush_until`` gave up."""

    def _init_queue(self) -> None:
        """The queue and its writer: they live only in this process (never pickled)."""
        self._pending: deque = deque()
        self._lock = threading.Condition()
        self._writer: Optional[threading.Thread] = None
        self._retry_at = 0.0
        self._retry_every = RETRY_AFTER_S
        self._failures = 0  # failed deliveries so far; entries remember the count when queued
        self._outage = False
        self._stopped = False

    def _deliver(self, entry: tuple) -> Optional[str]:
        """Make one queued write; None when it reached MLflow, else the error's text."""
        raise NotImplementedError

    def _call(self, trial, method, *args, **kwargs) -> None:
        """Queue one write for ``trial``'s run (``trial`` None: ``method`` takes no run id)."""
        with self._lock:
            self._pending.append((trial, method, args, kwargs, self._failures))
            self._lock.notify_all()
            if self._writer is None or not self._writer.is_alive():
                self._stopped = False
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name=f"tunebert-mlflow-{self.sweep_name}")
                self._writer.start()

    def _write_loop(self) -> None:
        """The writer thread: deliver the head of the queue, or wait for a write or the retry time."""
        while True:
            with self._lock:
                while not self._stopped and (not self._pending or time.time() < self._retry_at):
                    self._lock.wait(None if not self._pending else max(0.0, self._retry_at - time.time()))
                if self._stopped:
                    return
                entry = self._pending[0]
            error = self._deliver(entry)  # outside the lock: it may wait on the network
            with self._lock:
                if error is None:
                    self._pending.popleft()
                    if entry[4] < self._failures:  # it waited out at least one failure
                        self.delayed_writes += 1
                    if self._outage and not self._pending:
                        self._outage = False
                        log.warning("MLflow reachable again: queued writes delivered")
                else:
                    if not self._outage:
                        log.warning("MLflow %s failed (%s); writes are queued and retried every "
                                    "%.0fs while training goes on",
                                    getattr(entry[1], "__name__", entry[1]), error, self._retry_every)
                    self._outage = True
                    self._failures += 1
                    self._retry_at = time.time() + self._retry_every
                self._lock.notify_all()

    def pending_writes(self) -> int:
        """How many writes are queued and not delivered yet."""
        with self._lock:
            return len(self._pending)

    def flush_until(self, deadline_s: float) -> int:
        """Wait until the queued writes are delivered or ``deadline_s`` passes, retrying every
        2 s meanwhile; returns how many are still undelivered."""
        end = time.time() + deadline_s
        with self._lock:
            self._retry_every = min(RETRY_AFTER_S, 2.0)
            self._retry_at = min(self._retry_at, time.time())
            self._lock.notify_all()
            while self._pending and time.time() < end:
                self._lock.wait(min(0.5, max(0.0, end - time.time())))
            self.failed_writes = len(self._pending)
            return self.failed_writes

    def stop(self) -> None:
        """Stop the writer (after its current attempt); undelivered writes are dropped."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
