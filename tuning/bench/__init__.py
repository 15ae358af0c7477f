"""`tunebert bench`: speed and search quality measured side by side in one run, on one machine.

A tool for developers and evaluators: nothing a sweep or a trial runs imports it. Modules:
``entry`` (``gpu`` or the rest), ``command`` (options, the run, results.md), ``common`` (report, data), ``speed`` (parts a, b),
``quality`` (parts c, d), ``ablation`` (e), ``compare`` (f), ``deploy`` (g), ``joint`` (h). Committed outputs, with the exact
commands that made them, live in ``tuning/bench/results/`` (not installed with the package).

Parts (each writes rows of the markdown table and a PNG):
- ``throughput``: samples/s of the trainable's training loop against a minimal plain PyTorch loop
  on the same model, batches and device, and the speed-up of each data-path option;
- ``overhead``: wall time of a sweep of N short trials against the same trials run directly;
- ``search``: ASHA + TPE against random search without early stopping at the same time budget
  (best validation accuracy over elapsed time, and each one's chosen config on test);
- ``table``: the study's presets trained with several seeds, mean ± std test accuracy, beside the
  study's numbers (bert-base-uncased), and the best config of the ``search`` part under them;
- ``ablation``: the recipe knobs (EMA, SWA, R-Drop, joint SupCon) one at a time on the hand
  config, validation only, over seeds;
- ``compare``: the hand config over seeds against ``tunebert tune`` under one time budget;
- ``deploy``: fewer encoder layers and int8 against the full model (accuracy, perturbed accuracy,
  size, CPU latency), and the Pareto front of an accuracy/latency sweep;
- ``joint-hand``, ``joint-knobs``, ``joint-tune`` (``joint``): on joint intent + slot data (SNIPS),
  the hand joint baseline over seeds, each multi-task knob alone on it (validation), and
  ``tunebert tune --trainable multitask`` against the issue's targets;
- ``scale`` (``scale``): data bigger than memory (tokenizing into the token cache and each
  process's peak memory at several corpus sizes, throughput against the in-memory path, a sweep
  under a cgroup memory limit below the data's size) and a trial over two workers against one;
- ``ship-knobs``, ``ship-tune`` (``ship``): the model worth shipping: typo-robust training and
  the distilled student against the hand config over seeds, the cheap baselines beside them, and
  ``tunebert tune`` with every hand-over candidate kept and scored on test after the choice;
- ``gpu`` (``gpu``, alone, entered through ``entry``): the check to run first on a GPU machine
  (CUDA tests, precisions, Hugging Face's Trainer, packing two trials on one GPU, a 4-minute
  ``tune``); without CUDA it says so in one line and exits 0.

Everything is measured as ratios within one run; absolute numbers depend on the machine and are
reported for context only. ``--overhead-subset``, ``--table-epochs`` and ``--smoke-test`` scale
the expensive parts down (the table says when they did).

The jobs of ``table``, ``ablation`` and the hand baseline of ``compare`` are resumable
(``tuning.results.jobs.run_bench_jobs``): the same command run again skips the jobs MLflow holds as
finished, continues the others from their last epoch's checkpoint in their own runs, says
the progress and the time left after every job, then writes its results from what MLflow holds.
"""

# the parts, in the order they run; `tunebert bench --parts` names them (tuning.cli.commands)
def parts_of(text: str) -> list[str]:
    """``--parts``' comma-separated names, blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


PARTS = ("throughput", "overhead", "search", "table", "ablation", "compare", "deploy", "joint-hand",
         "joint-knobs", "joint-tune", "scale", "ship-knobs", "ship-tune", "gpu")
