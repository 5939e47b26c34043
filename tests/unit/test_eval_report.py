"""Evaluation tables: failure ratio and length beside every score, and length-controlled means."""

import math

import pandas as pd
import pytest

from persodpo.evaluate import report


def _frames():
    # Model "short" answers in 2 words, "long" in 10; the metric is 1.0 for 2-word replies and
    # 0.5 for 10-word ones, for BOTH models (length drives the metric, not the model).
    cands, scores = [], []
    i = 0
    for model, texts in {"short": ["a b"] * 3 + ["a b c d e f g h i j"],
                         "long": ["a b c d e f g h i j"] * 3 + ["a b"]}.items():
        for t in texts:
            cands.append({"candidate_id": f"c{i}", "prompt_id": f"p{i % 4}", "generator": model, "text": t,
                          "parse_ok": True, "parse_status": "valid"})
            scores.append({"candidate_id": f"c{i}", "prompt_id": f"p{i % 4}", "generator": model,
                           "score_errors": None, "judge_tokens": None, "judge_cost_usd": None,
                           "m": 1.0 if len(t.split()) == 2 else 0.5})
            i += 1
    cands.append({"candidate_id": "cx", "prompt_id": "p0", "generator": "long", "text": None,
                  "parse_ok": False, "parse_status": "unusable"})
    scores.append({"candidate_id": "cx", "prompt_id": "p0", "generator": "long", "score_errors": "{}",
                   "judge_tokens": None, "judge_cost_usd": None, "m": None})
    return pd.DataFrame(cands), pd.DataFrame(scores)


def test_model_table_reports_failures_and_length():
    df = report.join(*_frames())
    assert report.metric_columns(_frames()[1]) == ["m"]
    t = report.model_table(df, ["m"]).set_index("model")
    assert t.loc["short", "m"] == pytest.approx((3 * 1.0 + 0.5) / 4)
    assert t.loc["long", "m"] == pytest.approx((3 * 0.5 + 1.0) / 4)
    assert t.loc["long", "format_failure_ratio"] == pytest.approx(1 / 5) and t.loc["long", "error_ratio"] == 0
    assert t.loc["long", "unusable_ratio"] == pytest.approx(1 / 5)
    assert t.loc["short", "mean_words"] == pytest.approx((3 * 2 + 10) / 4)


def test_request_errors_are_not_format_failures():
    cands, scores = _frames()
    cands = pd.concat([cands, pd.DataFrame([{"candidate_id": "ce", "prompt_id": "p1", "generator": "short",
                                             "text": None, "parse_ok": False, "parse_status": "error"}])], ignore_index=True)
    scores = pd.concat([scores, pd.DataFrame([{"candidate_id": "ce", "prompt_id": "p1", "generator": "short",
                                               "score_errors": "{}", "judge_tokens": None, "judge_cost_usd": None,
                                               "m": float("nan")}])], ignore_index=True)
    t = report.model_table(report.join(cands, scores), ["m"]).set_index("model")
    assert t.loc["short", "error_ratio"] == pytest.approx(1 / 5) and t.loc["short", "format_failure_ratio"] == 0


def test_length_control_removes_the_length_advantage():
    df = report.join(*_frames())
    per_bucket, lc = report.length_controlled(df, ["m"], n_buckets=2)
    lc = lc.set_index("model")
    # Raw means differ (0.875 vs 0.625) but within length buckets the models are identical.
    assert lc.loc["short", "m"] == pytest.approx(lc.loc["long", "m"])
    assert lc.loc["short", "buckets_used"] == 2
    corr = report.length_correlation(df, ["m"])
    assert corr["m"] < -0.9


def test_markdown_and_plots_render():
    df = report.join(*_frames())
    md = report.markdown_table(report.model_table(df, ["m"]), ["model", "n", "format_failure_ratio", "m"])
    assert md.splitlines()[0] == "| model | n | format_failure_ratio | m |" and "| short | 4 |" in md
    assert report.plot_metric_distributions(df, ["m"])[:4] == b"\x89PNG"
    assert report.plot_length_histograms(df)[:4] == b"\x89PNG"
    png = report.plot_training_curves([{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}])
    assert png[:4] == b"\x89PNG"
    assert report.plot_training_curves([]) is None
    assert report._fmt(float("nan")) == "–" and not math.isnan(0.0)
