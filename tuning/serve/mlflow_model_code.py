"""The code of every tunebert MLflow model ("models from code": MLflow's way of logging a pyfunc
model without pickling it). ``tuning.tracking.log_model`` passes this file's path as
``python_model``; MLflow copies the file into the logged model and runs it each time it loads the
model (``mlflow.pyfunc.load_model``, ``mlflow models serve``), under a module name of its own.

It only names the installed class, so the model behaves as the tunebert installed where it is
served does (as ``tunebert predict`` would) and the logged copy holds no tunebert code of its own.
Nothing imports this module; importing it sets MLflow's process-wide "model from code".
"""

from mlflow.models import set_model

from tuning.serve.mlflow_model import TunebertClassifier

set_model(TunebertClassifier())
