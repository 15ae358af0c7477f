"""What values become in MLflow: a Ray result's model metrics, a config's params (secrets left
out, passwords hidden), nested settings flattened, and lists cut into MLflow's batch sizes."""

from __future__ import annotations

from mlflow.entities import Param

from tuning.tracking.store import redact

# Ray's bookkeeping keys in a result dict: not metrics of the model.
RAY_RESULT_KEYS = {
    "epoch", "timestamp", "pid", "done", "time_since_restore", "iterations_since_restore",
    "time_this_iter_s", "date", "hostname", "node_ip", "trial_id", "config", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "training_iteration", "experiment_id", "node_id",
}
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


def metrics_of(result: dict) -> dict[str, float]:
    """The model's metrics in a Ray result: numeric, finite-or-not, minus Ray's bookkeeping."""
    return {k: float(v) for k, v in result.items()
            if k not in RAY_RESULT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def params_of(config: dict) -> list[Param]:
    """A config as MLflow params, sorted; keys that name a secret are left out."""
    return [Param(k, redact(str(v))[:6000]) for k, v in sorted(config.items())
            if not any(word in k.lower() for word in SECRET_WORDS)]


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def batches(items: list, size: int):
    """``items`` in consecutive chunks of at most ``size`` (MLflow's limits per batch)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
