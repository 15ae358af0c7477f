"""The MLflow model of a tunebert classifier: a pyfunc ``PythonModel`` around ``tuning.serve.predict``.

Why pyfunc and not MLflow's transformers flavour: that flavour logs a transformers ``pipeline``
around a stock ``AutoModelForSequenceClassification``. Our models pool the encoder's states their
own way (cls, mean or max), put their own head on top (linear or MLP), and may be ensembles that
average several models' probabilities; none of that fits a pipeline. So the MLflow model carries
the tunebert model folder (``trainables.export``: Hugging Face files, head, label map, config) as
its artifact ``ARTIFACT``, and this class loads it with ``tuning.serve.predict.load_model``.

MLflow imports this module whenever it loads the model (``mlflow.pyfunc.load_model``,
``mlflow models serve``), so the class has a module of its own that imports nothing heavy at
import time. It imports ``mlflow.pyfunc`` because the class must subclass ``PythonModel``; every
other use of mlflow (logging the model with its signature and input example, registering it,
downloading it) stays in ``tuning.tracking``, the project's MLflow module.

Code: the model is logged "from code", not pickled: its code is the file
``tuning/serve/mlflow_model_code.py``, which MLflow copies into the logged model and runs when it loads
it, and which only names this class by its import path. So a logged model holds no pickle: the
one piece of code stored in it that loading runs is that short file, readable as plain text in the
model's folder. Nor does it hold a copy of the package (``code_paths``: a copy put first on
``sys.path`` by MLflow could shadow an installed tunebert of another version).
tunebert must be installed wherever the model is loaded or served, as it must be for ``tunebert
predict``. Serve it from the environment tunebert is installed in:
``mlflow models serve -m URI --env-manager local``.

Input: a list of strings, or a DataFrame whose first (or ``text``) column holds the texts.
Output: one label per text; with params ``{"proba": True}`` a DataFrame of probabilities, one
column per label. Param ``batch_size`` sets the texts per forward pass. A multi-task model folder
(``trainables.joint_export``) answers what ``tunebert predict`` prints for it: a list of records,
one per text, ``{"text", "intent", "probability", "slots": [{"slot", "value", "start", "end"}]}``
(with ``{"proba": True}`` also ``"probabilities"``, one per intent); MLflow's REST server sends
the list as JSON as it is (``{"predictions": [...]}``).
"""

from __future__ import annotations

import mlflow.pyfunc

from trainables.model_files import MULTITASK_KIND
from tuning.tracking.names import ARTIFACT, TEXT_COLUMN
from tuning.serve.predict import checked_texts, load_model


def texts_of(model_input) -> list[str]:
    """The texts in a pyfunc input: a list, a numpy array, a pandas Series or DataFrame (its
    ``text`` column, else its first), or one string."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError("the input DataFrame has no column; put the texts in a `text` column")
        column = TEXT_COLUMN if TEXT_COLUMN in model_input.columns else model_input.columns[0]
        return model_input[column].tolist()
    if isinstance(model_input, (pd.Series, np.ndarray)):
        return model_input.reshape(-1).tolist() if isinstance(model_input, np.ndarray) \
            else model_input.tolist()
    return list(model_input)


class TunebertClassifier(mlflow.pyfunc.PythonModel):
    """A tunebert model folder (single or ensemble) as an MLflow pyfunc model. ``predict`` takes
    untyped input on purpose (a list or a DataFrame; MLflow checks it against the logged
    signature), so MLflow notes once that it has no type hints."""

    def load_context(self, context) -> None:
        self._predictor = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        params = params or {}
        predictor = self._predictor
        if params.get("batch_size"):
            predictor.batch_size = max(1, int(params["batch_size"]))
        texts = texts_of(model_input)
        if predictor.kind == MULTITASK_KIND:  # records: intent, probability, slot spans
            return predictor.predict(checked_texts(texts), probabilities=bool(params.get("proba")))
        if params.get("proba"):
            return pd.DataFrame(predictor.predict_proba(texts), columns=predictor.labels)
        return predictor.predict(texts)
