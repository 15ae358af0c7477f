"""Handed-over models: a model folder (trainables.export) logged as an MLflow pyfunc model
(``tuning.serve.mlflow_model`` says why pyfunc), registered on request with its lineage tags, and
downloaded back for ``tunebert predict``."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import tuning.credentials as credentials
from trainables.model_files import ENSEMBLE_FILE, MODEL_FILE, STATE_FILE
from tuning.tracking.names import ARTIFACT, MAX_TAG, SWEEP, TEXT_COLUMN, TRIAL_ID
from tuning.tracking.store import TrackingError, client_for, redact


MODEL_TYPE = "tunebert-text-classifier"
# lineage tags of a logged model and of a registered model version
LINEAGE_KEYS = {"sweep": SWEEP, "trial_id": TRIAL_ID, "run_id": "tunebert.run_id",
                "data_fingerprint": "tunebert.data_fingerprint", "kind": "tunebert.model_kind",
                "data": "tunebert.data"}
EXAMPLE_TEXTS = ["wake me up at seven", "what's the weather like tomorrow"]
# what the model imports at load time; tunebert itself is not on PyPI: the model is loaded and
# served where tunebert is installed (`mlflow models serve --env-manager local`)
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy",
                      "pandas")
# the model's code, logged "from code" (a file MLflow copies into the model and runs when it loads
# it) rather than as a pickled object: a logged model holds no pickle
MODEL_CODE = Path(__file__).resolve().parents[1] / "serve" / "mlflow_model_code.py"


@dataclass(frozen=True)
class LoggedModelRef:
    """Where a logged model can be loaded from: ``runs:/<run id>/<name>``, its MLflow model id,
    and the registered model version, if it was registered."""

    uri: str
    model_id: str
    registered_name: Optional[str] = None
    registered_version: Optional[str] = None

    @property
    def registered_uri(self) -> Optional[str]:
        return (f"models:/{self.registered_name}/{self.registered_version}"
                if self.registered_version else None)


def lineage_tags(**values: Optional[str]) -> dict[str, str]:
    """Lineage tags (``LINEAGE_KEYS``: sweep, trial_id, run_id, data_fingerprint, kind, data),
    leaving out the unknown ones."""
    unknown = sorted(set(values) - set(LINEAGE_KEYS))
    if unknown:
        raise ValueError(f"unknown lineage field(s) {unknown}; known: {sorted(LINEAGE_KEYS)}")
    return {LINEAGE_KEYS[k]: str(v) for k, v in values.items() if v not in (None, "")}


def _process_tracking_uri(uri: str):
    """MLflow's model functions read the process-wide tracking URI: point it at ``uri`` while
    they run, then put back what was there (``MLFLOW_TRACKING_URI`` included)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    @contextmanager
    def use():
        before, before_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(credentials.reveal(uri))
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)
            if before_env is not None:
                os.environ["MLFLOW_TRACKING_URI"] = before_env

    return use()


def model_signature():
    """Input: one string column (a list of strings, or a DataFrame's ``text`` column); output:
    one label per text; params: ``proba`` (probabilities per label instead of labels) and
    ``batch_size``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    # unnamed: a plain list of strings is a valid input too (a named column would refuse it)
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("proba", "boolean", False),
                                              ParamSpec("batch_size", "long", 64)]))


def _requirements() -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to the versions installed here (unpinned where missing)."""
    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def log_model(uri: str, run_id: str, folder: str, name: str = "model", *,
              register_as: Optional[str] = None,
              lineage: Optional[dict] = None) -> LoggedModelRef:
    """Log the model folder ``folder`` as MLflow pyfunc model ``name`` of run ``run_id``
    (loadable as ``runs:/<run_id>/<name>``), with its signature and an input example; with
    ``register_as``, also register it as a new version of that registered model. ``lineage``
    (``lineage_tags``) tags the logged model and the model version."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    client = client_for(uri)
    tags = {k: str(v)[:MAX_TAG] for k, v in (lineage or {}).items()}
    try:
        tunebert_version = version("tunebert")
    except PackageNotFoundError:
        tunebert_version = "unknown"
    with _process_tracking_uri(uri):
        # created here, in the run's experiment: runs:/<run id>/<name> finds it only there
        logged = client.create_logged_model(client.get_run(run_id).info.experiment_id,
                                            name=name, source_run_id=run_id, tags=tags,
                                            model_type=MODEL_TYPE)
        info = Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            model_id=logged.model_id, python_model=str(MODEL_CODE),
            artifacts={ARTIFACT: str(folder)}, signature=model_signature(),
            input_example=pd.DataFrame({TEXT_COLUMN: EXAMPLE_TEXTS}),
            pip_requirements=_requirements(),
            metadata={"tunebert_version": tunebert_version,
                      "needs": "tunebert installed where the model is loaded"})
        ref = LoggedModelRef(f"runs:/{run_id}/{name}", info.model_id)
        if register_as:
            registered = mlflow.register_model(info.model_uri, register_as, tags=tags,
                                               await_registration_for=60)
            ref = LoggedModelRef(ref.uri, ref.model_id, register_as, str(registered.version))
    return ref


def download_model(model_uri: str, uri: Optional[str], destination: str) -> str:
    """Download the MLflow model at ``model_uri`` (``runs:/...``, ``models:/...``) from the store
    ``uri`` (default: ``$MLFLOW_TRACKING_URI``) into ``destination``; the path of the tunebert
    model folder inside it (an older run's ``model`` artifact is the folder itself)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    shown = redact(uri) if uri else os.environ.get("MLFLOW_TRACKING_URI", "MLflow's default store")
    try:
        # through the process-wide URI: MLflow 3 does not find a run's logged model from a
        # runs:/ URI with download_artifacts(tracking_uri=...)
        with _process_tracking_uri(uri) if uri else nullcontext():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=destination))
    except (MlflowException, OSError) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise TrackingError(
            f"cannot download the model {model_uri} from the MLflow store {redact(shown)} "
            f"({redact(reason)}). Check the run id and model name (runs:/RUN_ID/model) or the "
            f"registered name and version (models:/NAME/VERSION), and --tracking-uri / "
            f"MLFLOW_TRACKING_URI.") from None
    candidates = [local]  # an older tunebert run's `model` artifact is the folder itself
    if (local / "MLmodel").is_file():
        from mlflow.models import Model

        artifacts = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}) \
            .get("artifacts", {})
        if ARTIFACT in artifacts:
            candidates.insert(0, local / artifacts[ARTIFACT]["path"])
    for candidate in candidates:
        if any((candidate / name).is_file() for name in (MODEL_FILE, ENSEMBLE_FILE, STATE_FILE)):
            return str(candidate)
    raise TrackingError(f"{model_uri} is not a tunebert model: it holds no tunebert model folder "
                        f"(the artifact {ARTIFACT!r} of a pyfunc model, with {MODEL_FILE} or "
                        f"{ENSEMBLE_FILE})")
