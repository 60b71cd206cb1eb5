"""The stress shifts: the configured list is the implemented one, each shift is seeded and graded
(a stronger shift moves the field further), and the measurements are what their names say."""
from __future__ import annotations

import numpy as np
import pytest

from alle_dist import config
from alle_dist.stress import measure
from alle_dist.stress.shifts import SHIFTS, shifted
from alle_dist.testing import synthetic


def test_the_configured_shifts_are_the_implemented_ones_with_three_strengths_each():
    assert tuple(SHIFTS) == config.STRESS_SHIFTS
    assert all(len(s.strengths) >= 3 for s in SHIFTS.values())


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_is_seeded_and_graded(name):
    rgb = synthetic.draw_smear("Early", np.random.default_rng(0), 96)
    strengths = SHIFTS[name].strengths
    out = [shifted(rgb, name, s, seed=0, index=4) for s in strengths]
    assert np.array_equal(out[0], shifted(rgb, name, strengths[0], seed=0, index=4))
    if name == "rescale":
        assert [o.shape[0] for o in out] == [round(96 * s) for s in strengths]
        return
    moved = [np.abs(o.astype(int) - rgb).mean() for o in out]
    assert 0 < moved[0] < moved[-1] and all(o.shape == rgb.shape and o.dtype == np.uint8 for o in out)


def test_outcome_judge_and_verdict_against_a_hand_count():
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    label = np.array([0, 1, -1, 0, 0, -1, 2, 3, 1, 1])     # 2 referred; wrong and accepted: rows 3 and 8
    o = measure.outcome(y, label)
    assert o == {"n": 10, "coverage": 0.8, "accuracy_on_accepted": 6 / 8, "confident_errors": 2,
                 "confident_error_rate": 0.2}
    base = {**o, "confident_error_rate": 0.05}
    rows = [measure.judge({"shift": "blur", "strength_label": f"{s} px σ", **o,
                           "confident_error_rate": r}, base) for s, r in ((1, 0.08), (2, 0.11), (3, 0.3))]
    assert [r["breaks_goal"] for r in rows] == [False, True, True] and rows[0]["vs_unshifted"] == pytest.approx(1.6)
    assert measure.verdict(rows, base) == ("Goal broken (confident errors above 2 × the unshifted 5.0 %) by: "
                                           "blur from 2 px σ (worst 30.0 % at 3 px σ).")
    assert measure.verdict(rows[:1], base).startswith("Goal met")
    zero = measure.judge({**o, "confident_error_rate": 0.0}, {**o, "confident_error_rate": 0.0})
    assert zero["vs_unshifted"] is None and not zero["breaks_goal"]
