"""tunebert: Ray Tune + Optuna + MLflow hyperparameter sweeps for BERT-family text classifiers.

The Python API reads results from MLflow, so it works after the sweep has exited and with no
Ray running::

    from tuning import best_config, best_run, top_k
    config = best_config("my-sweep")
"""

_BEST = ("best_config", "best_run", "top_k")


def __getattr__(name: str):
    # tuning.tracking.best pulls in mlflow and Ray; load it on first use so `tunebert --help` is quick
    if name in _BEST:
        # local: `import tuning`, which every submodule import runs, loads nothing (mlflow, Ray)
        import tuning.tracking.best as best

        return getattr(best, name)
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")


def final_selection(*args, **kwargs):
    """Re-train the sweep's top-k configs with several seeds, pick by mean validation accuracy,
    then evaluate the chosen one on test (see ``tuning.results.selection.final_selection``)."""
    # local: `import tuning`, which every submodule import runs, loads nothing (mlflow, Ray)
    from tuning.results.selection import final_selection as run

    return run(*args, **kwargs)


__all__ = ["best_config", "best_run", "top_k", "final_selection"]
