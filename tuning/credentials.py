"""Passwords in tracking URIs: shown masked, never saved, supplied again from memory or the environment.

A tracking URI may carry a password (``postgresql+psycopg2://mlflow:PASSWORD@db/mlflow``,
``http://user:PASSWORD@mlflow:5000``). Whatever tunebert writes to disk or pickles (the saved sweep
settings, the MLflow logger Ray saves with the experiment) holds the URI masked by ``redact``;
the password lives only in this process's memory (``reveal`` remembers every full URI it is
given) or in the environment the user controls (``MLFLOW_TRACKING_URI``, or for a server's basic
auth ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, which MLflow reads itself).

No mlflow import here: ``tuning.config`` and ``tuning.tracking`` both call it.
"""

from __future__ import annotations

import os
import re

MASK = "***"
# scheme://user:password@  (the password ends at the last '@' before the host; '/' cannot occur in
# an unencoded password)
_USERINFO = re.compile(r"(://[^:/@\s]+):([^/\s]+)@")

_known: dict[str, str] = {}  # masked URI -> the full URI seen in this process (memory only)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def has_password(uri: str) -> bool:
    match = _USERINFO.search(uri or "")
    return bool(match) and match.group(2) != MASK


def reveal(uri: str) -> str:
    """The URI to connect with. A URI with its password is remembered and returned as it is; a
    masked one (read back from saved state) gets the password this process was given for the same
    store, here or through ``MLFLOW_TRACKING_URI``; otherwise it is returned unchanged (a
    server's basic auth may still come from MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if not uri:
        return uri
    if has_password(uri):
        _known[redact(uri)] = uri
        return uri
    if MASK in uri:
        if uri in _known:
            return _known[uri]
        env = os.environ.get("MLFLOW_TRACKING_URI", "")
        if env and has_password(env) and redact(env) == uri:
            _known[uri] = env
            return env
    return uri
