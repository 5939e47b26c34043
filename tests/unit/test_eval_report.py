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


# -- trained vs base, beyond noise (persodpo.evaluate.compare) -------------------------------------

def _paired_frame(diffs, base=0.5):
    """Two models on the same prompts: the trained one scores ``base + d`` where base scores ``base``."""
    rows = []
    for i, d in enumerate(diffs):
        rows.append({"prompt_id": f"p{i:03d}", "model": "base", "m": base, "words": 10, "usable": True})
        rows.append({"prompt_id": f"p{i:03d}", "model": "dpo", "m": base + d, "words": 10 + (i % 2) * 30,
                     "usable": True})
    return pd.DataFrame(rows)


def test_paired_difference_has_a_bootstrap_interval_around_the_mean_and_win_tie_loss_rates():
    from persodpo.evaluate.compare import paired_differences

    diffs = [0.2, 0.1, 0.0, 0.3, -0.1, 0.2, 0.1, 0.0, 0.2, 0.1] * 3
    df = _paired_frame(diffs)
    [row] = paired_differences(df, ["m"], "base").to_dict("records")
    assert row["n_prompts"] == 30 and row["diff"] == pytest.approx(sum(diffs) / 30)
    assert row["ci_low"] < row["diff"] < row["ci_high"]
    assert 0 < row["ci_low"] and row["significant"]             # clearly better than noise
    assert (row["win"], row["tie"], row["loss"]) == pytest.approx((21 / 30, 6 / 30, 3 / 30))
    # Symmetric noise around zero: the interval covers 0 and is not called a difference.
    [noise] = paired_differences(_paired_frame([0.2, -0.2] * 15), ["m"], "base").to_dict("records")
    assert noise["ci_low"] < 0 < noise["ci_high"] and not noise["significant"]


def test_length_matched_difference_keeps_only_prompts_whose_replies_share_a_length_bucket():
    from persodpo.evaluate.compare import paired_differences

    # Odd prompts: the trained reply is 30 words longer and scores +1; even: same length, +0.
    diffs = [0.0 if i % 2 == 0 else 1.0 for i in range(20)]
    df = _paired_frame(diffs)
    buckets = pd.Series(["short" if w < 20 else "long" for w in df["words"]], index=df.index)
    [row] = paired_differences(df, ["m"], "base", buckets=buckets).to_dict("records")
    assert row["diff"] == pytest.approx(0.5)
    assert row["n_length_matched"] == 10 and row["diff_length_matched"] == pytest.approx(0.0)


def test_rates_get_wilson_intervals_and_missing_metrics_their_recorded_reason():
    from persodpo.evaluate.compare import is_rate, rate_table, unavailable, unavailable_lines, wilson_interval

    assert wilson_interval(0, 10)[0] == 0 and 0.2 < wilson_interval(0, 10)[1] < 0.35   # not [0, 0]
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    df = pd.DataFrame({"model": ["a"] * 4, "ok": [1.0, 1.0, 0.0, None], "s": [0.3, 0.4, 1.0, 0.0]})
    assert is_rate(df["ok"]) and not is_rate(df["s"])
    # Declared pass/fail columns are rates even when all passed; a judge that gave every reply 1 is not.
    assert is_rate(pd.Series([1.0, 1.0], name="format_ok"))
    assert not is_rate(pd.Series([1.0, 1.0, 0.0], name="judge_smollm2_persona"))
    [r] = rate_table(df, ["ok"]).to_dict("records")
    assert (r["successes"], r["n"], r["rate"]) == (2, 3, pytest.approx(2 / 3))
    scores = pd.DataFrame({"generator": ["a", "a", "b"], "judge_j1_persona": [None, None, 3.0],
                           "score_errors": ['{"judge_j1_persona": "judge j1: InternalServerError: 500"}',
                                            '{"judge_j1_persona": "judge j1: InternalServerError: 500"}', None]})
    items = unavailable(scores, scores["generator"], ["judge_j1_persona"])
    assert items == [{"metric": "judge_j1_persona", "model": "a", "missing": 2, "n": 2, "all": True,
                      "reason": "judge j1: InternalServerError: 500", "reason_count": 2}]
    assert unavailable_lines(items) == ["judge_j1_persona (a): 2 of 2 replies have no value: "
                                        "judge j1: InternalServerError: 500"]


def test_the_html_report_is_one_file_with_inline_plots_and_escaped_replies():
    from persodpo.evaluate.stage import render_report

    cands, scores = _frames()
    cands.loc[0, "text"] = "a b </script><script>alert(1)</script>"
    scores["ok"] = [1.0, 0.0] * 4 + [None]
    scores["judge_j1_persona"] = float("nan")
    scores["score_errors"] = '{"judge_j1_persona": "judge j1: 9 of 9 requests failed: InternalServerError"}'
    df = report.join(cands, scores.rename(columns={}))
    prompts = pd.DataFrame([{"prompt_id": f"p{i}", "persona": ["I love lighthouses."],
                             "history": [{"role": "user", "content": "Hello?"}], "gold": "Hi."} for i in range(4)])
    md, page, files = render_report(df, ["m", "ok", "judge_j1_persona"], models=["short", "long"], history=[],
                                    pairs_stats=None, n_prompts=4, split="valid", buckets=2, scores=scores,
                                    prompts=prompts, baseline="short", trained="long")
    assert "## Trained vs base, paired by prompt" in md and "## Rates" in md
    assert "judge_j1_persona (short): 4 of 4 replies have no value: judge j1: 9 of 9 requests failed" in md
    assert "| judge_j1_persona" not in md                      # not a column of dashes
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page    # nothing fetched from the network
    assert "</script><script>alert(1)" not in page              # a reply cannot end the data element
    assert set(files) >= {"metrics_by_model.png", "length_by_model.png", "paired_differences.png"}
