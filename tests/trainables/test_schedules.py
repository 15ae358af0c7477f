import math
import pickle

import pytest

from trainables.schedules import lr_multiplier, make_schedule, warmup_steps_for


def test_warmup_steps_round_up():
    assert warmup_steps_for(10, 0.2) == 2
    assert warmup_steps_for(10, 0.15) == 2
    assert warmup_steps_for(10, 0.0) == 0


def test_linear_with_warmup_by_hand():
    f = make_schedule("linear", total_steps=10, warmup_ratio=0.2)
    # warm-up: (step+1)/(warmup+1)
    assert f(0) == pytest.approx(1 / 3)
    assert f(1) == pytest.approx(2 / 3)
    # decay over the remaining 8 steps
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0)
    assert f(12) == pytest.approx(0.0)  # clamped after the end


def test_cosine_midpoint_and_floor():
    f = make_schedule("cosine", total_steps=8, warmup_ratio=0.0)
    assert f(0) == pytest.approx(1.0)
    assert f(4) == pytest.approx(0.5)
    assert f(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    g = make_schedule("cosine", total_steps=8, warmup_ratio=0.0, min_ratio=0.1)
    assert g(4) == pytest.approx(0.1 + 0.9 * 0.5)
    assert g(8) == pytest.approx(0.1)


def test_constant_after_warmup():
    f = make_schedule("constant", total_steps=100, warmup_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11)
    assert [f(s) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]


def test_schedule_pickles_and_rejects_unknown():
    f = make_schedule("linear", total_steps=10, warmup_ratio=0.1)
    assert pickle.loads(pickle.dumps(f))(5) == f(5)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        make_schedule("step", total_steps=10, warmup_ratio=0.1)
    with pytest.raises(ValueError):
        lr_multiplier(5, kind="nope", total_steps=10, warmup_steps=0)
