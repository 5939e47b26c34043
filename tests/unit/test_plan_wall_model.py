"""How `persodpo plan --pilot` turns a pilot's timings into a run's wall time: the pilot's start-up,
then its steady throughput (persodpo.plan._arrivals and _steady). Pure arithmetic."""

from __future__ import annotations

import pytest

from persodpo.plan import _arrivals, _steady, pilot_measurements


def test_start_up_and_steady_throughput_come_from_when_the_replies_arrived():
    # Stage started at t=100; a first batch of 4 replies at t=130 (start-up), then 16 more over 8 s.
    times = [130.0] * 4 + [130.0 + 0.5 * k for k in range(1, 17)]
    got = _arrivals(times, 100.0)
    assert got == {"first_s": 30.0, "first_rows": 4, "rows_per_s": pytest.approx(2.0)}
    # The run of 1,000 rows: start-up once, the rest at the steady rate (not 1,000/20 x the pilot's 38 s).
    assert _steady(got["first_s"], got["first_rows"], got["rows_per_s"], 1000) == pytest.approx(30 + 996 / 2)
    # Fewer rows than the first batch: the start-up alone.
    assert _steady(30.0, 4, 2.0, 3) == 30.0


def test_unmeasurable_pilots_give_nothing_rather_than_a_guess():
    assert _arrivals([130.0] * 5, 100.0) == {}          # one batch: no steady rate
    assert _arrivals([], 100.0) == {}
    assert _arrivals([130.0, 131.0], None) == {}        # no start time (an old summary)
    assert _arrivals([None, 130.0, None, 132.0], 100.0)["rows_per_s"] == pytest.approx(0.5)


def test_the_score_stage_is_calibrated_from_the_rows_the_driver_received():
    summary = {"score": {"wall_time_s": 50.0, "n_scored": 120, "started_at": 1000.0, "judges": {},
                         "arrivals": {"first_at": 1020.0, "first_rows": 20, "last_at": 1045.0}}}
    got = pilot_measurements(summary)
    assert got["score_first_s"] == 20.0 and got["score_first_rows"] == 20
    assert got["score_rows_per_s"] == pytest.approx(100 / 25)
    assert got["score_tail_s"] == 5.0 and got["score_rows"] == 120
