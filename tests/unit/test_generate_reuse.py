"""generate.reuse_from: finished candidates of an identical generator for the same prompts are
copied from an earlier complete table (iterative rounds with rounds.keep_generators), never those of
a changed generator, other prompts, a failed request or a candidate already written."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import load_config
from persodpo.errors import InputError
from persodpo.generate.candidates import candidate_rows
from persodpo.generate.stage import reuse_candidates

PROMPTS = ["p-a", "p-b"]


def _earlier(tmp_path, cfg, *, prompts_lineage="P"):
    ids = [(p, k) for p in PROMPTS for k in range(2)]            # tiny-api: 2 samples per prompt
    keys = {"candidate_id": [contracts.candidate_id(p, "tiny-api", k) for p, k in ids],
            "prompt_id": [p for p, _ in ids], "generator": ["tiny-api"] * 4, "sample_index": [k for _, k in ids],
            "template": ["plain-v1"] * 4}
    n = len(ids)
    table = candidate_rows(keys, raw=["hello there", "fine", "ok then", None], error=[None, None, None, "HTTP 500"],
                           n_tokens=[2] * n, prompt_tokens=[5] * n, latency_s=[0.1] * n, cost_usd=[0.0] * n,
                           finish_reason=["stop"] * n)
    out = st.StageOutput(str(tmp_path / "earlier"), None).begin()
    out.write_table(table, name="part-00000.parquet")
    out.commit({"stage": "generate", "config": cfg.generate.model_dump(mode="json"),
                "lineage": {"hash": "x", "upstream": {"prompts": prompts_lineage}}})
    return str(tmp_path / "earlier"), keys["candidate_id"]


def _reuse(tmp_path, cfg, *, done=None, prompts_lineage="P"):
    out = st.StageOutput(str(tmp_path / "now"), None).begin()
    done = dict(done or {})
    copied, nxt = reuse_candidates(cfg, out, done, PROMPTS, {"prompts": prompts_lineage}, 0)
    rows = [r for p in out.list_files() if p.endswith(".parquet")
            for r in pq.read_table(str(tmp_path / "now" / p)).to_pylist()]
    return copied, nxt, rows, done


def test_finished_candidates_of_the_same_generator_are_copied(tmp_path):
    cfg = load_config("jobs/configs/tiny.yaml")
    uri, ids = _earlier(tmp_path, cfg)
    cfg.generate.reuse_from = [uri]
    copied, nxt, rows, done = _reuse(tmp_path, cfg)
    assert copied == {"tiny-api": 3} and nxt == 1            # the failed request is asked again, not copied
    assert sorted(r["candidate_id"] for r in rows) == sorted(ids[:3]) and set(done) == set(ids[:3])
    assert {r["raw"] for r in rows} == {"hello there", "fine", "ok then"}


def test_written_candidates_are_not_copied_twice(tmp_path):
    cfg = load_config("jobs/configs/tiny.yaml")
    uri, ids = _earlier(tmp_path, cfg)
    cfg.generate.reuse_from = [uri]
    copied, _, rows, _ = _reuse(tmp_path, cfg, done={ids[0]: "tiny-api"})
    assert copied == {"tiny-api": 2} and ids[0] not in {r["candidate_id"] for r in rows}


@pytest.mark.parametrize("change", ["generate.generators.0.sampling.temperature=0.3", "generate.word_limit=31",
                                    "generate.template=persobench-json-v1", "prompts"])
def test_nothing_is_copied_from_another_generator_setting_or_other_prompts(tmp_path, change):
    cfg = load_config("jobs/configs/tiny.yaml")
    uri, _ = _earlier(tmp_path, cfg)
    now = load_config("jobs/configs/tiny.yaml", [] if change == "prompts" else [change])
    now.generate.reuse_from = [uri]
    copied, _, rows, _ = _reuse(tmp_path, now, prompts_lineage="Q" if change == "prompts" else "P")
    assert copied == {} and rows == []


def test_an_incomplete_table_to_reuse_is_an_error_naming_it(tmp_path):
    cfg = load_config("jobs/configs/tiny.yaml")
    cfg.generate.reuse_from = [str(tmp_path / "missing")]
    with pytest.raises(InputError) as err:
        _reuse(tmp_path, cfg)
    assert "missing" in str(err.value) and "reuse_from" in str(err.value)
