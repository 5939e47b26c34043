"""The stage's batch functions without Ray: prompt join, reasons for nulls, panel aggregation."""

import json

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo.errors import InputError
from persodpo.score.batch import PromptIndex, add_result, agreement, finalize, panel_columns
from persodpo.score.metric import Result


def _prompts():
    return pa.Table.from_pylist([
        {"prompt_id": "p1", "persona": ["I like dogs."], "history": [{"role": "user", "content": "hi"}], "gold": "g1"},
        {"prompt_id": "p2", "persona": ["I like cats."], "history": [{"role": "user", "content": "yo"}], "gold": "g2"},
    ])


def test_prompt_fields_are_joined_by_id_and_unknown_ids_name_the_candidate():
    idx = PromptIndex(_prompts())
    batch = pa.Table.from_pylist([{"candidate_id": "c1", "prompt_id": "p2"}, {"candidate_id": "c2", "prompt_id": "p1"}])
    out = idx.attach(batch)
    assert out.column("gold").to_pylist() == ["g2", "g1"]
    assert out.column("persona").to_pylist() == [["I like cats."], ["I like dogs."]]
    bad = pa.Table.from_pylist([{"candidate_id": "c9", "prompt_id": "p404"}])
    with pytest.raises(InputError, match=r"cands: record candidate c9: field 'prompt_id': prompt id 'p404'"):
        idx.attach(bad, source="cands")


def test_agreement_is_one_minus_mean_pairwise_gap_over_the_range():
    assert agreement([4.0, 4.0], (1, 5)) == 1.0
    assert agreement([1.0, 5.0], (1, 5)) == 0.0
    assert agreement([3.0, 4.0, 5.0], (1, 5)) == pytest.approx(1 - ((1 + 2 + 1) / 3) / 4)
    assert agreement([3.0], (1, 5)) is None


def test_finalize_conforms_and_every_null_has_its_reason():
    base = pa.Table.from_pylist([{"candidate_id": f"c{i}", "prompt_id": "p1", "generator": "g", "x": 1} for i in range(3)])
    b = add_result(base, "m", Result({"m_a": [1.0, None, 0.5], "m_b": [2.0, None, None]}, [None, "no text", "half"]))
    b = add_result(b, "judge_j1_coh", Result({"judge_j1_coh": [4.0, None, 2.0]}, [None, "budget cap reached", None]))
    b = add_result(b, "judge_j2_coh", Result({"judge_j2_coh": [5.0, None, None]}, [None, "skipped own", "malformed"]))
    b = b.append_column("_jtok_j1", pa.array([10, 0, 12])).append_column("_jcost_j1", pa.array([0.1, 0.0, 0.2]))
    b = b.append_column("_jtok_j2", pa.array([5, 0, 0])).append_column("_jcost_j2", pa.array([0.05, 0.0, 0.0]))
    cols = ["m_a", "m_b"] + panel_columns(["j1", "j2"], ["coh"])
    schema = contracts.scores_schema(cols)
    out = finalize(b, groups=[("m", ["m_a", "m_b"]), ("judge_j1_coh", ["judge_j1_coh"]),
                              ("judge_j2_coh", ["judge_j2_coh"])], schema=schema, judges=["j1", "j2"], dims=["coh"],
                   keep=("_jtok_j1",))
    assert out.schema.names == schema.names + ["_jtok_j1"]
    assert out.column("judge_coh").to_pylist() == [4.5, None, 2.0]
    assert out.column("judge_coh_agreement").to_pylist() == [pytest.approx(0.75), None, None]
    assert out.column("judge_coh_n").to_pylist() == [2.0, 0.0, 1.0]
    assert out.column("judge_tokens").to_pylist() == [15, 0, 12]
    assert out.column("judge_cost_usd").to_pylist() == pytest.approx([0.15, 0.0, 0.2])
    errs = [json.loads(e) if e else None for e in out.column("score_errors").to_pylist()]
    assert errs[0] is None
    assert errs[1]["m_a"] == errs[1]["m_b"] == "no text"
    assert errs[1]["judge_coh"] == "no judge scored this reply (j1: budget cap reached; j2: skipped own)"
    assert errs[2] == {"m_b": "half", "judge_j2_coh": "malformed", "judge_coh_agreement": "1 judgment(s); agreement needs 2"}
    # Every null metric cell has a reason, and no reason is given for a value.
    for r, e in enumerate(errs):
        for name in cols:
            assert (out.column(name)[r].as_py() is None) == (name in (e or {}))


def test_judge_error_share_check_names_the_judge_and_its_commonest_error():
    from collections import Counter

    from persodpo.errors import StageError
    from persodpo.score.stage import check_judge_errors

    ok = {"requests": 10, "ok": 5, "malformed": 3, "request_error": 2, "out_of_range": 0, "budget": 40}
    check_judge_errors({"a": ok}, {"a": Counter({"x": 5})}, 0.5)             # exactly half: passes
    check_judge_errors({"a": {"requests": 0, "budget": 9}}, {}, 0.0)          # nothing sent: nothing to judge
    bad = {**ok, "ok": 4, "request_error": 3, "requests": 10}
    with pytest.raises(StageError, match=r"judge b: 6 of 10 .*\(60% > score.panel.max_error_share=0.5\).*\(4x\): boom"):
        check_judge_errors({"a": ok, "b": bad}, {"b": Counter({"boom": 4, "other": 2})}, 0.5)
