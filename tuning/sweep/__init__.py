"""A sweep on Ray Tune: its config checks, the Tuner (new or restored), Optuna search, ASHA and PBT,
the sweep lock, pruning, progress, and the one module that reaches Ray's private API."""
