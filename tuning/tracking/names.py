"""Names tunebert gives things in MLflow, shared by ``tuning.tracking`` (which writes them) and the
modules that read them without loading mlflow: the logged model's artifact and input column
(``tuning.serve.mlflow_model``), the run-kind tag and the runs-table link (``tuning.tracking.ui``). A leaf."""

ARTIFACT = "tunebert_model"  # the key (and folder name) of the model folder among the artifacts
TEXT_COLUMN = "text"  # the column of a DataFrame input that holds the texts
KIND = "tunebert.kind"  # the tag that says what a run is: a sweep, a trial, a selection, ...
# the query that opens MLflow's runs table, not its traces view (see tuning.tracking.EXPERIMENT_KIND)
RUNS_VIEW_QUERY = {"workflowType": "machine_learning"}
