import numpy as np
import pytest

from trainables.loops import macro_f1


def test_macro_f1_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fp0 fn1 -> 0
    assert macro_f1(labels, preds, 4) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(labels, labels, 3) == 1.0
