"""Deterministic ids and schema conformance."""

import pyarrow as pa
import pytest

from persodpo import contracts


def test_ids_are_deterministic_and_distinct():
    p = contracts.prompt_id("focus", "d1", 3)
    assert p == contracts.prompt_id("focus", "d1", 3)
    assert p != contracts.prompt_id("focus", "d1", 4)
    assert contracts.prompt_id("focus", "d1", 12) != contracts.prompt_id("focus", "d11", 2)
    c0, c1 = contracts.candidate_id(p, "g", 0), contracts.candidate_id(p, "g", 1)
    assert c0 != c1 and c0.startswith("c_") and p.startswith("p_")
    assert contracts.pair_id("r", c0, c1) != contracts.pair_id("r", c1, c0)


def test_conform_orders_casts_and_keeps_extras():
    t = pa.table({"extra": [1], "candidate_id": ["c"], "prompt_id": ["p"], "generator": ["g"],
                  "score_errors": [None], "judge_tokens": pa.array([3], pa.int32()), "judge_cost_usd": [0.5],
                  "m": [0.1]})
    out = contracts.conform(t, contracts.scores_schema(["m"]))
    assert out.column_names[:7] == ["candidate_id", "prompt_id", "generator", "score_errors", "judge_tokens",
                                    "judge_cost_usd", "m"]
    assert out.schema.field("judge_tokens").type == pa.int64()
    assert out.column_names[-1] == "extra"


def test_conform_names_missing_column():
    with pytest.raises(ValueError, match="candidate_id"):
        contracts.conform(pa.table({"x": [1]}), contracts.CANDIDATES, name="candidates")


def test_metric_column_cannot_shadow_base_column():
    with pytest.raises(ValueError, match="clashes"):
        contracts.scores_schema(["generator"])
