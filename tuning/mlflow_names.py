"""Names in a logged tunebert MLflow model, shared by its writer (``tuning.tracking``) and its
loader (``tuning.mlflow_model``). A leaf: it imports nothing, so neither side imports the other."""

ARTIFACT = "tunebert_model"  # the key (and folder name) of the model folder among the artifacts
TEXT_COLUMN = "text"  # the column of a DataFrame input that holds the texts
