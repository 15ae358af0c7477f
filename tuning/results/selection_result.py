"""What a final selection returns (``SelectionResult``) and its Markdown report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from tuning.results.candidates import FIRST_SEED_OFFSET, Candidate, seed_offsets


@dataclass(frozen=True)
class SelectionResult:
    sweep: str
    metric: str
    mode: str
    run_id: str               # the selection run
    tracking_uri: str
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    test: tuple[dict[str, Any], ...]  # per chosen seed: seed, run_id, test_loss/accuracy/macro_f1
    test_accuracy_mean: float
    test_accuracy_std: float
    test_macro_f1_mean: float
    test_macro_f1_std: float
    output_dir: Optional[str] = None
    handed_over: str = "single"        # "single" (the best seed model) or "ensemble"
    single_val: float = math.nan       # the best seed model's validation metric
    ensemble_val: Optional[float] = None  # the ensemble's, when one was built (ensemble=True)
    handed_over_test: dict[str, float] = field(default_factory=dict)  # test_accuracy, test_macro_f1
    model_dir: Optional[str] = None    # the handed-over model's folder, when output_dir was given
    single_seed: Optional[int] = None  # the seed of the best seed model
    # [mean, std] on test over the chosen seed models of each score they all have
    # (``selection_run.TEST_SUMMARY_KEYS``): a multitask model's intent, slot and sentence scores
    test_summary: dict[str, list[float]] = field(default_factory=dict)
    # every hand-over candidate scored (``tuning.results.handover.Option.to_dict``), and the rule
    handover_options: tuple[dict[str, Any], ...] = ()
    handover_rule: str = "most accurate"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [asdict(c) for c in self.candidates]
        d["chosen"] = {"rank": self.chosen.rank, "trial_id": self.chosen.trial_id,
                       "config": self.chosen.config}
        return d

    def markdown(self) -> str:
        return render_markdown(self)


def fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "nan"


# a multitask model's test scores, as the report names them
MULTITASK_TEST_NAMES = {"test_intent_accuracy": "test intent accuracy",
                        "test_slot_f1": "test slot F1 (exact spans)",
                        "test_sentence_accuracy": "test sentence accuracy (intent and every tag)"}


def _multitask_lines(result: SelectionResult) -> list[str]:
    """The chosen multitask config's intent, slot and sentence scores on test (mean ± std), for
    each one its seed models have; none for text classifiers."""
    return [f"- {name}: {fmt(result.test_summary[key][0])} ± {fmt(result.test_summary[key][1])}"
            for key, name in MULTITASK_TEST_NAMES.items() if key in result.test_summary]


def or_dash(value: Any, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, or a dash for what was not measured (None, NaN)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _options_table(result: SelectionResult) -> list[str]:
    """Every hand-over candidate with its validation score, latency and size, and the rule."""
    m = result.metric
    lines = [f"The rule: {result.handover_rule} (a single model of the config counts with its seed "
             f"models' mean; latency: batch 1 on this machine's CPU, median).", "",
             f"| candidate | {m} | latency ms | size MB | handed over |", "|---|---|---|---|---|"]
    for o in result.handover_options:
        lines.append(f"| {o['label']} | {fmt(o['val'] if o['val'] is not None else math.nan)} | {or_dash(o['latency_ms'])} | "
                     f"{or_dash(o['size_mb'])} | {'**yes**' if o['handed_over'] else ''} |")
    return lines


def render_markdown(result: SelectionResult) -> str:
    """The selection table and the chosen config's test result, as Markdown."""
    m = result.metric
    n = max(len(c.seeds) for c in result.candidates)
    compared = min(len(c.seeds) for c in result.candidates)
    head = (["rank", "trial", f"sweep {m}"] + [f"seed+{FIRST_SEED_OFFSET + j}" for j in range(n)]
            + [f"mean {m}", "std", "chosen"])
    lines = [f"# Final selection for sweep `{result.sweep}`", "",
             f"Top {len(result.candidates)} trial(s) by `{m}` ({result.mode}), re-trained with "
             f"{compared} fresh seed(s) each (the config's seed + {seed_offsets(compared)}) on train, "
             f"scored on validation only. Chosen: best mean; ties go to the lower std (sample, "
             f"n-1), then the better rank."
             + (f" Then, with the selection's time left, {n - compared} more seed(s) of the chosen "
                f"config (its mean and std are over all {n})." if n > compared else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result.candidates:
        cells = ([str(c.rank), c.trial_id, fmt(c.sweep_score)] + [fmt(s) for s in c.scores]
                 + [""] * (n - len(c.scores))
                 + [fmt(c.mean), fmt(c.std), "**yes**" if c.chosen else ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test split, chosen config (rank {result.chosen.rank}, trial "
                  f"{result.chosen.trial_id}), {len(result.test)} seed model(s), evaluated once "
                  f"after the choice:", "",
              f"- test accuracy: **{fmt(result.test_accuracy_mean)} ± "
              f"{fmt(result.test_accuracy_std)}**",
              f"- test macro-F1: {fmt(result.test_macro_f1_mean)} ± "
              f"{fmt(result.test_macro_f1_std)}",
              *_multitask_lines(result),
              "", "| seed | test accuracy | test macro-F1 |", "|---|---|---|"]
    lines += [f"| {r['seed']} | {fmt(r['test_accuracy'])} | {fmt(r['test_macro_f1'])} |"
              for r in result.test]
    lines += ["", "## Handed-over model", "",
              f"Chosen on validation, before the test split was read: the best seed model, or the "
              f"ensemble of the chosen config's {len(result.test)} seed models (mean of their "
              f"probabilities) unless it scores below the seed models' mean (the best seed's score is the "
              f"maximum of {len(result.test)} noisy draws, no fair bar).", "",
              f"| model | {m} | handed over |", "|---|---|---|",
              f"| best seed model (seed {result.single_seed}) | {fmt(result.single_val)} | "
              f"{'**yes**' if result.handed_over == 'single' else ''} |"]
    if len(result.handover_options) > 2:
        lines[-3:] = _options_table(result)
    elif result.ensemble_val is None:
        lines.append("| ensemble of the seed models | not tried (`--ensemble`) | |")
    else:
        lines.append(f"| ensemble of the {len(result.test)} seed models | "
                     f"{fmt(result.ensemble_val)} | "
                     f"{'**yes**' if result.handed_over == 'ensemble' else ''} |")
    test = result.handed_over_test
    lines += ["", f"Handed-over model ({result.handed_over}) on test: accuracy "
                  f"**{fmt(test.get('test_accuracy', math.nan))}**, macro-F1 "
                  f"{fmt(test.get('test_macro_f1', math.nan))}."]
    if result.model_dir:
        lines += ["", f"Folder: `{result.model_dir}` (`tunebert predict {result.model_dir} TEXT`)."]
    return "\n".join(lines) + "\n"
