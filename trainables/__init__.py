"""What runs inside a trial: data, models, losses, optimizer/LLRD grouping, schedules, loops.

Importing this package is cheap; torch and transformers load only with the modules that need them.
Nothing here imports mlflow or ``tuning``.
"""
