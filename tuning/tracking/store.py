"""The MLflow store: opening a client (``client_for``, safe for a new SQLite file opened by two
processes at once), bounded HTTP waits, and the checks that refuse, within seconds and before Ray
starts, a store MLflow cannot use or reach (``check_store``, ``reachable_store``)."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Optional

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import tuning.credentials as credentials
from trainables.errors import UserError
from tuning.config import resolve_tracking_uri

for _noisy in ("mlflow", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# A dead or silent tracking server must not stall anyone: one request gives up after ~10 s
# (a 5 s connect/read timeout, tried twice, no backoff sleep between: MLflow 3.x reads these
# variables at every request; its own defaults wait minutes). The sweep's writer thread then
# waits RETRY_AFTER_S (tuning.tracking.writer) seconds before the next attempt while writes queue up.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


def bound_http_waits() -> None:
    """Apply HTTP_DEFAULTS unless the user set them (MLflow's own defaults wait minutes)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


class TrackingError(UserError):
    """An MLflow store or sweep that cannot be found or used."""


def redact(text: str) -> str:
    """Hide a password in a URI such as postgresql://user:pw@host/db (``tuning.credentials``)."""
    return credentials.redact(text)


def is_local_store(uri: str) -> bool:
    """A store only this machine can write (SQLite or a plain folder), as opposed to a server."""
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def client_for(uri: str) -> MlflowClient:
    uri = credentials.reveal(uri)  # a masked URI read back from saved state gets its password
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow creates a new SQLite store's tables when it first opens it, without a lock: two
    # processes opening the same new file at once (two `tunebert train` side by side) both try,
    # and one dies on "table experiments already exists". Opening under a lock file beside the
    # database makes the second wait until the first has created them.
    with open(db.with_name(db.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return MlflowClient(tracking_uri=uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def runs_where(client: MlflowClient, experiment_id: str, filter_string: str,
               order_by: Optional[list[str]] = None) -> list:
    """Every active run of the experiment that matches ``filter_string``, all pages read."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# Database stores MLflow opens through SQLAlchemy (``postgresql+psycopg2://...`` and the like)
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
DATABASE_CONNECT_TIMEOUT_S = 5


def _dialect(uri: str) -> str:
    """``postgresql`` of ``postgresql+psycopg2://...``: the scheme without its driver."""
    return uri.split(":", 1)[0].split("+", 1)[0]


def probe_database(uri: str) -> None:
    """One connection to a database store, with a timeout where the driver takes one: MLflow's
    SQLAlchemy store retries a refused connection 10 times, ~100 s in all, before it says so."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args = ({"connect_timeout": DATABASE_CONNECT_TIMEOUT_S}
                    if _dialect(uri) in ("postgresql", "mysql") else {})
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def refuse_non_sqlite_file(uri: str) -> None:
    """A ``sqlite:///`` store whose path holds something else than an SQLite database (a text
    file, a folder) is refused by name: SQLAlchemy only says "file is not a database", in a
    traceback. A missing or empty file is fine: MLflow creates the database in it."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?")[0]).expanduser()
    fix = ("Point --tracking-uri (or MLFLOW_TRACKING_URI) at the mlflow.db file a sweep wrote, "
           "or at a new file for a new store, or leave it out for <storage>/mlflow.db")
    if path.is_dir():
        raise TrackingError(f"the MLflow store {uri} is a folder, not an SQLite database file. {fix}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TrackingError(f"cannot read the MLflow store {uri} ({exc.strerror or exc}). {fix}") from None
    if head and head != SQLITE_HEADER:
        raise TrackingError(f"the MLflow store {uri}: {path} is not an SQLite database (those begin "
                        f"with 'SQLite format 3'; it holds other data). {fix}")


def check_store(uri: str) -> None:
    """Refuse, within seconds, a tracking URI MLflow cannot use or a server that does not
    answer. Call ``bound_http_waits`` first (MLflow's own retries wait minutes); a database
    store gets one connection attempt first (``probe_database``). Local stores (SQLite, a
    folder) are not opened: they are created when first written; an SQLite path that holds
    something else is refused (``refuse_non_sqlite_file``)."""
    refuse_non_sqlite_file(uri)
    if is_local_store(uri):
        return
    try:
        if _dialect(uri) in DATABASE_SCHEMES:
            probe_database(credentials.reveal(uri))
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if "unsupported URI" in reason or "registered" in reason or "plugin" in reason:
            raise TrackingError(
                f"--tracking-uri {redact(uri)} is not a store MLflow can use ({redact(reason)}). "
                f"Use http://HOST:PORT for an MLflow server, sqlite:///path/to/mlflow.db, "
                f"postgresql://USER@HOST/DB, or leave it out for the SQLite file under "
                f"--storage.") from None
        raise TrackingError(
            f"cannot reach the MLflow store {redact(uri)} ({redact(reason)}). Start the server, "
            f"or fix --tracking-uri / MLFLOW_TRACKING_URI.") from None


def reachable_store(tracking_uri: Optional[str], storage: str) -> str:
    """The MLflow store a command reads (``--tracking-uri``, else the SQLite file under
    ``--storage``), refused within seconds when MLflow cannot use or reach it (MLflow's own HTTP
    retries wait minutes)."""
    uri = resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())
    bound_http_waits()
    check_store(uri)
    return uri
