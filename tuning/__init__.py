"""tunebert: Ray Tune + Optuna + MLflow hyperparameter sweeps for BERT-family text classifiers.

The Python API reads results from MLflow, so it works after the sweep has exited and with no
Ray running::

    from tuning import best_config, best_run, top_k
    config = best_config("my-sweep")
"""

from tuning.best import best_config, best_run, top_k

__all__ = ["best_config", "best_run", "top_k"]
