"""Names tunebert gives things in MLflow (tags, notes, artifacts), shared by the tracking modules
that write them and the modules that read them: the logged model's artifact and input column
(``tuning.serve.mlflow_model``), the run-kind tag and the runs-table link (``tuning.tracking.ui``). A leaf."""

ARTIFACT = "tunebert_model"  # the key (and folder name) of the model folder among the artifacts
TEXT_COLUMN = "text"  # the column of a DataFrame input that holds the texts
KIND = "tunebert.kind"  # the tag that says what a run is: a sweep, a trial, a selection, ...
# the query that opens MLflow's runs table, not its traces view (see EXPERIMENT_KIND)
RUNS_VIEW_QUERY = {"workflowType": "machine_learning"}

SWEEP = "tunebert.sweep"
TRIAL_ID = "tunebert.trial_id"
CONFIG = "tunebert.config"
TRAINABLE = "tunebert.trainable"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
ERROR = "tunebert.error"
END_REASON = "tunebert.end_reason"
# the Ray Tune experiment a trial run belongs to (a uuid the pickled MlflowTrialLogger carries):
# reconciling a restore touches only that experiment's runs
RAY_EXPERIMENT = "tunebert.ray_experiment"
ORPHAN = "tunebert.orphan"  # a run of a trial Ray never recorded (see tuning.tracking.restore); deleted
# PBT/PB2 lineage of a trial's run (see MlflowTrialLogger.record_clone): the latest clone in tags,
# every clone in the run's LINEAGE_FILE artifact
PBT_CLONED_FROM = "tunebert.pbt.cloned_from"  # the donor's Ray trial id
PBT_CLONED_FROM_RUN = "tunebert.pbt.cloned_from_run"  # the donor's MLflow run id
PBT_CLONED_AT_EPOCH = "tunebert.pbt.cloned_at_epoch"  # the donor checkpoint's epoch
PBT_CHANGES = "tunebert.pbt.changes"  # JSON {param: {old, donor, new, op}}
PBT_CONFIG = "tunebert.pbt.config"  # JSON: the config the trial trains with now
PBT_CLONES = "tunebert.pbt.clones"  # how many times the trial was cloned into
LINEAGE_FILE = "pbt_lineage.json"
SWEEP_UID = "tunebert.sweep_uid"  # experiment tag: which sweep (SweepConfig.uid) owns it
BENCH_JOB = "tunebert.bench_job"  # a benchmark job's key (tuning.results.jobs.job_key)
MAX_TAG = 5000  # the longest tag value tunebert writes (longer ones are cut)

# How the MLflow UI shows an experiment. MLflow 3.x UIs ask which kind an experiment is and keep
# the answer in the tag EXPERIMENT_KIND (the UI writes it itself): RUNS_VIEW is its "Machine
# learning" kind (the runs table), "genai_development" its traces view. Without the tag, 3.x asks
# on every visit; up to 3.16 or so it picked the view from the tag. MLflow 3.17 picks the view
# from the browser's workflow toggle instead, which a link's query RUNS_VIEW_QUERY sets, for the
# page it opens (``link_report`` in tuning.tracking.experiments, ``tuning.tracking.ui``).
EXPERIMENT_KIND = "mlflow.experimentKind"
RUNS_VIEW = "custom_model_development"
NOTE = "mlflow.note.content"  # the Markdown description the UI shows for an experiment or run
OUR_NOTE = "tunebert sweep"  # how every experiment description tunebert writes starts
# a kind the UI sets on its own (inferred) or that says nothing: ours replaces it; a kind someone
# chose in the UI stays
UNCHOSEN_KINDS = ("", "no_inferred_type", "genai_development_inferred",
                  "custom_model_development_inferred")
