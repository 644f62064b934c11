"""Learning-rate schedules: warmup, cosine, WSD with linear / cosine / 1-sqrt decay, at their key points."""

import math

import pytest

from lmforge.train.schedules import LRSchedule, decay_factor


def test_warmup_then_cosine_reaches_min_on_last_step():
    s = LRSchedule("cosine", peak_lr=1.0, max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s(1) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)  # peak exactly at the end of warmup
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert s(110) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)  # clamped past the end
    lrs = [s(n) for n in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(
    "shape, mid",
    [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd_is_flat_then_decays_in_shape(shape, mid):
    s = LRSchedule("wsd", peak_lr=2.0, max_steps=100, warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2, decay_shape=shape)
    assert s(10) == 2.0
    assert all(s(n) == 2.0 for n in range(10, 81))  # stable phase, decay starts after step 80
    assert s(90) == pytest.approx(2.0 * mid)
    assert s(100) == pytest.approx(0.0)
    assert s(81) < 2.0


def test_decay_shapes_at_key_points():
    for shape in ("linear", "cosine", "sqrt"):
        assert decay_factor(shape, 0.0) == 1.0
        assert decay_factor(shape, 1.0) == pytest.approx(0.0)
    assert decay_factor("sqrt", 0.25) == pytest.approx(0.5)
    assert decay_factor("cosine", 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # 1-sqrt drops fastest at the start: below linear everywhere inside (0, 1)
    assert all(decay_factor("sqrt", p / 10) < decay_factor("linear", p / 10) for p in range(1, 10))


def test_constant_and_min_lr_ratio():
    s = LRSchedule("constant", peak_lr=3e-4, max_steps=50, warmup_steps=5, min_lr_ratio=0.1)
    assert s(1) == pytest.approx(6e-5)
    assert s(5) == s(50) == 3e-4
    assert LRSchedule("cosine", 1.0, 20, 0, min_lr_ratio=0.5)(20) == pytest.approx(0.5)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("step", 1.0, 100)
    with pytest.raises(ValueError, match="decay shape"):
        LRSchedule("wsd", 1.0, 100, decay_shape="exp")
    with pytest.raises(ValueError, match="max_steps"):
        LRSchedule("cosine", 1.0, 0)


def test_warmup_longer_than_the_run_is_shortened_to_fit():
    s = LRSchedule("cosine", 1.0, max_steps=10, warmup_steps=100, min_lr_ratio=0.0)
    assert s.warmup == 10 and s(10) == pytest.approx(1.0) and s(5) == pytest.approx(0.5)
    w = LRSchedule("wsd", 1.0, max_steps=100, warmup_steps=90, decay_fraction=0.2, min_lr_ratio=0.0)
    assert w.warmup == 80 and w(80) == 1.0 and w(100) == pytest.approx(0.0)
