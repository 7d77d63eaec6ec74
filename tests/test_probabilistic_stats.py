"""`ProbabilisticStats` against direct counts on small hand-made inputs: reliability and its
summary, verify's false-alarm rate and power, recall vs area, risk-coverage; and `fill` from
real distributions against their own levels and areas."""

from __future__ import annotations

import numpy as np
import pytest

from geoalign.evaluation.probabilistic import (
    AREAS_KM2,
    MOVES_KM,
    RELIABILITY_PS,
    ProbabilisticStats,
    moved,
)
from geoalign.geo.distance import haversine_km
from geoalign.inference.distribution import CellGrid, Distribution


def _stats() -> ProbabilisticStats:
    return ProbabilisticStats(
        truth_level=np.array([0.05, 0.3, 0.5, 0.55, 0.9, 0.97, 1.0, 0.2]),
        covering_area_km2=np.array([5e2, 2e4, 1e6, 3e6, 2e7, np.inf, np.inf, 1e3]),
        area90_km2=np.array([4.0, 1.0, 3.0, 2.0, 8.0, 7.0, 6.0, 5.0]),
        moved_levels={
            200.0: np.array([0.1, 0.96, 0.5, 0.99, 0.2, 0.3, 1.0, 0.4]),
            750.0: np.array([0.96] * 8),
            2500.0: np.array([1.0] * 4 + [0.95] * 4),
        },
    )


def test_reliability_counts_truths_at_or_below_each_level():
    rel = _stats().reliability()
    assert list(rel) == list(RELIABILITY_PS)
    assert rel[0.1] == 1 / 8  # 0.05
    assert rel[0.5] == 4 / 8  # 0.05, 0.3, 0.5, 0.2 (a level equal to p is inside)
    assert rel[0.9] == 6 / 8
    assert rel[0.99] == 7 / 8  # only the 1.0 (outside every region) is out
    expected = np.mean([abs(rel[p] - p) for p in RELIABILITY_PS])
    assert _stats().calibration_error() == pytest.approx(expected)


def test_verify_false_alarms_and_power_count_levels_above_one_minus_alpha():
    s = _stats()
    assert s.false_alarm_rate(0.05) == 2 / 8  # 0.97 and 1.0 exceed 0.95
    assert s.false_alarm_rate(0.5) == 4 / 8  # 0.55, 0.9, 0.97, 1.0 (0.5 itself is not > 0.5)
    power = s.power(0.05)
    assert power == {200.0: 3 / 8, 750.0: 1.0, 2500.0: 4 / 8}  # 0.95 is not > 0.95


def test_recall_vs_area_counts_covering_areas_within_each_budget():
    got = _stats().recall_vs_area()
    assert list(got) == list(AREAS_KM2)
    assert got[1e3] == 2 / 8  # 500, 1000
    assert got[1e4] == 2 / 8
    assert got[1e5] == 3 / 8
    assert got[1e6] == 4 / 8
    assert got[1e7] == 5 / 8  # 2e7 and the two infinities stay out


def test_risk_coverage_answers_the_smallest_regions_first():
    s = _stats()
    errors = np.array([100.0, 50.0, 2000.0, 800.0, 30.0, 5000.0, 700.0, 10.0])
    curve = {row["answered"]: row for row in s.risk_coverage(errors)}
    # area90 order: rows 1 (1.0), 3 (2.0), 2 (3.0), 0 (4.0), 7 (5.0), 6, 5, 4
    half = curve[0.5]  # 4 rows: 1, 3, 2, 0 -> errors 50, 800, 2000, 100
    assert half["median_km"] == np.median([50.0, 800.0, 2000.0, 100.0])
    assert half["acc@750km"] == 50.0
    assert half["max_area90_km2"] == 4.0
    everyone = curve[1.0]
    assert everyone["median_km"] == np.median(errors)
    assert everyone["acc@750km"] == 100 * 5 / 8
    first = curve[0.1]  # round(0.8) = 1 row: row 1
    assert first["median_km"] == 50.0 and first["max_area90_km2"] == 1.0


def test_fill_records_each_distributions_levels_and_areas():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(30, 60, 200), rng.uniform(-10, 30, 200)]
    grid = CellGrid(pts)
    dists = [Distribution(grid, rng.random(200) ** 4) for _ in range(3)]
    truth = pts[[0, 50, 120]]
    stats = ProbabilisticStats.empty(3)
    stats.fill(slice(0, 3), dists, truth, np.random.default_rng(1))
    for j, d in enumerate(dists):
        assert stats.truth_level[j] == d.level_of(truth[j : j + 1])[0]
        assert stats.covering_area_km2[j] == d.covering_area_km2(truth[j : j + 1])[0]
        assert stats.area90_km2[j] == d.region(0.9, countries=False).area_km2
    assert set(stats.moved_levels) == set(MOVES_KM)
    assert ((stats.moved_levels[2500.0] >= 0) & (stats.moved_levels[2500.0] <= 1)).all()


def test_moved_points_are_the_asked_distance_away():
    rng = np.random.default_rng(2)
    pts = np.c_[rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)]
    for km in MOVES_KM:
        out = moved(pts, km, rng)
        assert np.allclose(haversine_km(pts[:, 0], pts[:, 1], out[:, 0], out[:, 1]), km, rtol=1e-6)
        assert (out[:, 1] >= -180).all() and (out[:, 1] < 180).all()


def test_report_states_smoothing_temperature_and_uncalibrated_false_alarms():
    from geoalign.evaluation.harness import Evaluation, MethodResult
    from geoalign.evaluation.report import probabilistic_markdown

    s = _stats()
    errors = np.array([100.0, 50.0, 2000.0, 800.0, 30.0, 5000.0, 700.0, 10.0])
    truth = np.zeros((8, 2))
    calibrated = MethodResult.from_predictions("cal", "model", truth, truth)
    calibrated.probabilistic = s.summary(errors)
    uncal = dict(s.summary(errors))
    uncal["verify_false_alarm@0.05"] = 0.375
    calibrated.probabilistic["uncalibrated"] = uncal
    calibrated.probabilistic["calibration"] = {
        "scale": 1.78,
        "level": 5,
        "fitted_on": "1,234 held-out training rows",
        "n": 1234,
        "nll_before": 1.5,
        "nll_after": 1.25,
    }
    plain = MethodResult.from_predictions("plain", "model", truth, truth)
    plain.probabilistic = s.summary(errors)
    ev = Evaluation("im2gps3k", np.arange(8).astype(str), truth, "g", 8)
    ev.results += [calibrated, plain]
    md = "\n".join(probabilistic_markdown(ev))
    assert "| 25.0% (37.5%) |" in md  # calibrated false alarms, the uncalibrated in brackets
    assert "- cal: fitted S2 level 5 box kernel, logit factor 1.78" in md
    assert "fitted on 1,234 held-out training rows (1,234 rows)" in md
    assert "- plain: S2 level 6 box kernel, logit factor 1 (defaults, not calibrated)" in md
