"""Using a handed-over model: ``predict`` (labels for texts, from a folder or an MLflow model URI),
``evaluate`` (accuracy on clean and perturbed text) and the MLflow pyfunc model around a folder."""
