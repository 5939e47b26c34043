"""How `persodpo plan --pilot` turns a pilot's timings into a run's wall time: the pilot's start-up,
then its steady throughput (persodpo.plan._arrivals and _steady). Pure arithmetic."""

from __future__ import annotations

import pytest

from persodpo.plan import _after_start_up, _arrivals, _steady, pilot_measurements


def test_start_up_and_steady_throughput_come_from_when_the_replies_arrived():
    # Stage started at t=100; a first batch of 4 replies at t=130 (start-up), then 16 more over 8 s.
    times = [130.0] * 4 + [130.0 + 0.5 * k for k in range(1, 17)]
    got = _arrivals(times, 100.0)
    assert got == {"first_s": 30.0, "first_rows": 4, "rows_per_s": pytest.approx(2.0)}
    # The run of 1,000 rows: start-up once, the rest at the steady rate (not 1,000/20 x the pilot's 38 s).
    assert _steady(got["first_s"], got["first_rows"], got["rows_per_s"], 1000) == pytest.approx(30 + 996 / 2)
    # Fewer rows than the first batch: the start-up alone.
    assert _steady(30.0, 4, 2.0, 3) == 30.0


def test_a_last_smaller_block_does_not_set_the_rate():
    # A 200-prompt pilot in blocks of 64 (as the 10k rehearsal's gen-c): blocks at 0, 3.85 and 5.87 s,
    # then the 8 prompts left over 3.9 s later (their slowest request). Rate: 128 rows in 5.87 s, not
    # 136 in 9.75 s (which predicted 785 s for the 468 s the 10k run took).
    t0 = 1000.0
    times = [t0] * 64 + [t0 + 3.85] * 64 + [t0 + 5.87] * 64 + [t0 + 9.75] * 8
    got = _arrivals(times, t0 - 71.77)
    assert got["first_rows"] == 64 and got["rows_per_s"] == pytest.approx(128 / 5.87)
    # two blocks only: the second, however small, is all there is
    assert _arrivals([t0] * 64 + [t0 + 2.0] * 8, t0 - 1)["rows_per_s"] == pytest.approx(4.0)


def test_unmeasurable_pilots_give_nothing_rather_than_a_guess():
    assert _arrivals([130.0] * 5, 100.0) == {"first_s": 30.0, "first_rows": 5}   # one batch: no steady rate
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


def test_a_pilot_of_one_batch_still_counts_its_start_up():
    # 20 replies in one batch, 60 s after the stage started, 3 s each: the run's 100 requests take the
    # start-up, then 80 more with 32 in flight (not 100 x 3 / 32 = 9.4 s, which ignored the start-up).
    measured = {**_arrivals([160.0] * 20, 100.0), "latency_s": 3.0}
    assert _after_start_up(measured, 32, 100) == pytest.approx(60 + 80 * 3 / 32)
    assert _after_start_up({"latency_s": 3.0}, 32, 100) == pytest.approx(100 * 3 / 32)   # no start time known


def test_train_is_not_guessed_without_a_pilot():
    from persodpo.config import load_config
    from persodpo.plan import plan_train, train_accelerator

    cfg = load_config(None, [])
    p = plan_train(cfg, 1000, None, accelerator="H100")
    assert p.rows is None and p.gpu_hours is None and p.wall_s is None
    assert "--pilot" in p.unknown["rows"]
    # the accelerator: given, else the accelerator_type: resource the train workers ask for
    assert train_accelerator(cfg) is None and train_accelerator(cfg, "L4") == "L4"
    cfg.train.resources_per_worker = {"CPU": 8, "GPU": 1, "accelerator_type:A100": 0.001}
    assert train_accelerator(cfg) == "A100"
