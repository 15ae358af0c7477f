"""Everything MLflow, the one place that imports it: the store, the sweep and trial runs (the trial
logger Ray calls), handed-over models, the MLflow UI (``ui``) and the best-config API (``best``)."""

from tuning.tracking.experiments import (claim_experiment, ensure_experiment, find_sweep_experiment,
                                         prepare_for_ui, sweep_description, tag_sweep_uid)
from tuning.tracking.models import (MODEL_CODE, LoggedModelRef, download_model, lineage_tags,
                                    log_model)
from tuning.tracking.names import (CONFIG, END_REASON, ERROR, EXPERIMENT_KIND, KIND, NOTE, ORPHAN,
                                   PARENT, PBT_CONFIG, RAY_EXPERIMENT, SWEEP, SWEEP_UID, TRAINABLE,
                                   TRIAL_ID)
from tuning.tracking.runs import (REPORT_LINK, SWEEP_RUN_NOTE, SelectionRun, TrainRun, annotate_run,
                                  artifact_paths, close_open_trial_runs, download_artifacts,
                                  finish_sweep_run, finished_job, link_report, log_artifacts_to,
                                  metric_history, start_sweep_run, sweep_run, trial_runs,
                                  unfinished_job)
from tuning.tracking.store import (HTTP_DEFAULTS, TrackingError, bound_http_waits, check_store,
                                   client_for, is_local_store, reachable_store, redact)
from tuning.tracking.trial_logger import MlflowTrialLogger, record_clone
from tuning.tracking.writer import RETRY_AFTER_S

__all__ = [
    "claim_experiment", "ensure_experiment", "find_sweep_experiment", "prepare_for_ui",
    "sweep_description", "tag_sweep_uid",
    "MODEL_CODE", "LoggedModelRef", "download_model", "lineage_tags", "log_model",
    "CONFIG", "END_REASON", "ERROR", "EXPERIMENT_KIND", "KIND", "NOTE", "ORPHAN", "PARENT",
    "PBT_CONFIG", "RAY_EXPERIMENT", "SWEEP", "SWEEP_UID", "TRAINABLE", "TRIAL_ID",
    "REPORT_LINK", "SWEEP_RUN_NOTE", "SelectionRun", "TrainRun", "annotate_run", "artifact_paths",
    "close_open_trial_runs", "download_artifacts", "finish_sweep_run", "finished_job",
    "link_report", "log_artifacts_to", "metric_history", "start_sweep_run", "sweep_run",
    "trial_runs", "unfinished_job",
    "HTTP_DEFAULTS", "TrackingError", "bound_http_waits", "check_store", "client_for",
    "is_local_store", "reachable_store", "redact",
    "MlflowTrialLogger", "record_clone", "RETRY_AFTER_S",
]
