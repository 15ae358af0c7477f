"""The hand-over rule (``tuning.results.handover.pick``): most accurate by default, the fastest
within X points with ``prefer="latency"``; a single model counts with its seed models' mean."""

import math

import pytest

from trainables.errors import ConfigError
from tuning.results.budget import STUDENT_TRAININGS, fit_selection, selection_seconds
from tuning.results.handover import HandoverRule, Option, check_rule, pick
from tuning.results.pipeline_state import PipelineConfig

SEEDS = [0.880, 0.884, 0.886]   # mean 0.8833, best 0.886


def _options(ensemble=0.890, cross=0.893, student=0.889):
    return [Option("single", "best seed model", "s", 0.886, sum(SEEDS) / 3, 1, 10.0, 90.0),
            Option("ensemble", "seed ensemble", "e", ensemble, ensemble, 3, 30.0, 270.0),
            Option("cross", "cross-config ensemble", "c", cross, cross, 3, 31.0, 270.0),
            Option("student", "student", "t", student, student, 1, 10.5, 90.0)]


def test_most_accurate_by_default():
    assert pick(_options(), SEEDS, mode="max").kind == "cross"
    assert pick(_options(cross=0.885), SEEDS, mode="max").kind == "ensemble"
    # a tie in score goes to the faster
    assert pick(_options(ensemble=0.893), SEEDS, mode="max").kind == "ensemble"


def test_the_single_model_is_handed_over_unless_another_reaches_its_seeds_mean():
    # every other candidate below the seed models' mean (0.8833): the best seed model, even
    # though the student's own score (0.8835) is below the best seed's draw (0.886)
    low = _options(ensemble=0.881, cross=0.882, student=0.8830)
    assert pick(low, SEEDS, mode="max").kind == "single"
    # the student beats the mean but not the best seed's draw: it is handed over
    assert pick(_options(ensemble=0.881, cross=0.882, student=0.8840), SEEDS, mode="max").kind == "student"


def test_latency_rule_takes_the_fastest_within_the_points_given():
    options = _options()  # most accurate: cross 0.893; student 0.889 is 0.4 points below
    assert pick(options, SEEDS, mode="max", prefer="latency", within=0.3).kind == "ensemble"
    assert pick(options, SEEDS, mode="max", prefer="latency", within=0.4).kind == "student"
    # the single model's fair score is its seeds' mean, 0.8833: within 1.0 point it is fastest
    assert pick(options, SEEDS, mode="max", prefer="latency", within=1.0).kind == "single"
    assert pick(options, SEEDS, mode="max", prefer="latency", within=0.0).kind == "cross"


def test_latency_rule_for_a_metric_to_minimise():
    seeds = [0.40, 0.42]
    options = [Option("single", "s", "s", 0.40, 0.41, 1, 10.0, 1.0),
               Option("ensemble", "e", "e", 0.35, 0.35, 2, 20.0, 2.0),
               Option("student", "t", "t", 0.352, 0.352, 1, 10.0, 1.0)]
    assert pick(options, seeds, mode="min").kind == "ensemble"
    assert pick(options, seeds, mode="min", prefer="latency", within=0.1).kind == "ensemble"
    assert pick(options, seeds, mode="min", prefer="latency", within=0.3).kind == "student"


def test_untimed_or_diverged_candidates():
    options = _options()
    options[3] = Option("student", "student", "t", math.nan, math.nan, 1, 5.0, 90.0)
    assert pick(options, SEEDS, mode="max").kind == "cross"
    assert pick(options, SEEDS, mode="max", prefer="latency", within=5).kind == "single"
    untimed = [Option(o.kind, o.label, o.folder, o.val, o.fair, o.members) for o in _options()]
    assert pick(untimed, SEEDS, mode="max", prefer="latency", within=5).kind == "cross"


@pytest.mark.parametrize("prefer, within, message", [
    ("speed", 0.3, "`prefer` must be one of accuracy, latency"),
    ("latency", -1.0, "`within`"), ("latency", math.inf, "`within`")])
def test_bad_rules_are_refused(prefer, within, message):
    with pytest.raises(ConfigError, match=message):
        check_rule(prefer, within)
    with pytest.raises(ConfigError, match=message):
        HandoverRule(prefer=prefer, within=within)


def test_pipeline_rule_follows_the_plan_and_refuses_bad_distillation_settings():
    config = PipelineConfig()
    assert config.rule(top_k=3) == HandoverRule(cross=True, distill=True)
    assert config.rule(top_k=1).cross is False and config.rule(top_k=1).distill is True
    assert config.rule(ensemble=False, top_k=1).distill is False  # nothing to learn from
    with pytest.raises(ConfigError, match="distill_temperature"):
        PipelineConfig(distill_temperature=0.0)
    with pytest.raises(ConfigError, match="distill_alpha"):
        PipelineConfig(distill_alpha=1.5)
    with pytest.raises(ConfigError, match="`prefer`"):
        PipelineConfig(prefer="fast")
    with pytest.raises(ConfigError, match="student_layers"):
        PipelineConfig(student_layers=-1)


def test_the_student_is_counted_in_the_selection_plan():
    base = selection_seconds(2, 3, 2, [100.0, 120.0], 10.0)
    assert base == 3 * 120.0 + 10.0
    assert selection_seconds(2, 3, 2, [100.0, 120.0], 10.0, student=True) == \
        base + STUDENT_TRAININGS * 100.0
    assert selection_seconds(1, 1, 1, [100.0], 10.0, student=True) == 110.0  # no ensemble
    # the plan shrinks sooner with the student counted
    assert fit_selection(400.0, [100.0] * 3, 10.0, 3, 3, 3).top_k == 3
    assert (fit_selection(400.0, [100.0] * 3, 10.0, 3, 3, 3, student=True).top_k,
            fit_selection(400.0, [100.0] * 3, 10.0, 3, 3, 3, student=True).seeds) == (2, 3)
