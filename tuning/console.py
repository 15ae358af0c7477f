"""What a person sees in the terminal: Python ``logging`` for every message, set up by the CLI,
and a compact live view of a sweep.

Every module logs through its own ``logging.getLogger(__name__)``; nothing here is configured at
import time, so a library user keeps control (``logging.basicConfig(level=logging.INFO)`` shows
the same lines). The CLI calls ``setup(verbosity)``:

- ``-q`` (verbosity -1): errors and the final summary (printed, not logged) only;
- default (0): one line per message, ``[tunebert] ...``; during a sweep
  ``tuning.sweep.progress.SweepProgress`` prints one line when a trial starts, one when it ends and a
  status line every so often. Ray's own log lines, status tables, per-trial config boxes and the
  trials' output stay hidden;
- ``-v`` (1): also debug messages, Ray's status tables and log lines, and the trials' output.

Ray's settings follow from ``ray_settings()``; ``runner`` passes them to ``ray.init`` and
``tune.RunConfig``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Optional

log = logging.getLogger(__name__)

PACKAGES = ("tuning", "trainables", "search_spaces")

_verbosity = 0
_configured = False


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted (pytest's capture, a
    redirected stream), not the stream that was current at setup."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler assigns it; it is always stdout
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and _verbosity > 0:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING and not message.startswith(("warning", "error")):
            message = f"{record.levelname.lower()}: {message}"
        return f"[tunebert] {message}"


def setup(verbosity: int = 0) -> None:
    """Route the packages' log records to stdout at the level ``verbosity`` asks for (-1 quiet,
    0 normal, 1 verbose). Idempotent: a second call replaces the first's handler and level."""
    global _verbosity, _configured
    _verbosity, _configured = max(-1, min(1, int(verbosity))), True
    level = {-1: logging.ERROR, 0: logging.INFO, 1: logging.DEBUG}[_verbosity]
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
            logger.removeHandler(handler)
        handler = _StdoutHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # the CLI's handler is the one that prints
    quiet_libraries(_verbosity)


def add_arguments(parser) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` on a (sub)command's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=0,
                       help="also show debug messages, Ray's status tables and log lines, and the "
                            "trials' own output")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="only errors and the final summary")


def verbosity() -> int:
    return _verbosity


def configured() -> Optional[int]:
    """The verbosity ``setup`` was called with in this process, or None: what a worker process
    started by this one (``tuning.results.jobs``) sets up again, so its messages show the same way."""
    return _verbosity if _configured else None


def quiet_libraries(level: int) -> None:
    """Below ``-v``: Ray's, MLflow's, Optuna's and transformers' own log lines and Python
    warnings stay out of the way (errors still show)."""
    if level > 0:
        logging.captureWarnings(False)
        return
    for name in ("ray", "ray.tune", "ray.train", "ray.data", "mlflow", "alembic", "optuna",
                 "transformers", "urllib3", "filelock", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(ray|mlflow|optuna|transformers|torch|pydantic)\b")
    # Warnings the filters above miss (raised on behalf of our code, or under a library's own
    # "always" filter, like MLflow's nudges) go to the `py.warnings` logger, quiet below -v;
    # MLflow's artifact download progress bars stay off too
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:  # pragma: no cover - optuna is a dependency
        pass


def ray_settings() -> dict[str, Any]:
    """``ray.init`` keyword arguments and ``tune.RunConfig(verbose=...)`` for the verbosity:
    below ``-v`` Ray logs warnings only, the trials' stdout is not forwarded and Tune prints no
    status tables (``SweepProgress`` replaces them)."""
    verbose = _verbosity > 0
    return {"init": {"logging_level": logging.INFO if verbose else logging.ERROR,
                     "log_to_driver": verbose},
            "tune_verbose": 2 if verbose else 0}


def quiet_ray_tune() -> None:
    """Below ``-v``: Ray Tune's console engine prints its experiment box, results path and
    TensorBoard hint whatever ``verbose`` says (Ray 2.5x); its legacy engine at ``verbose=0``
    prints nothing. Read by Ray Tune when a run starts."""
    if _verbosity <= 0:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    else:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


def clock(seconds: float) -> str:
    """600 -> '10m00s', 7200 -> '2h00m', 42.4 -> '42s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
