"""LLM judges through litellm against real HTTP servers on 127.0.0.1: faults retried or recorded
per row with nothing lost, the budget cap across actors, the cache, constrained output, and a
real local model as judge."""

import asyncio
import json
import time

import pyarrow as pa
import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.errors import StageError
from persodpo.score.batch import PromptIndex
from persodpo.score.config import JudgeSpec, PanelConfig
from persodpo.score.judges import JudgeActor
from persodpo.score.stage import run_stage
from tests.support.openai_server import OpenAIServer
from tests.support.score_data import make_candidates, write_output


def scoring_responder(messages, body):
    """Answers like a judge, or misbehaves when the judged reply asks it to."""
    text = messages[-1]["content"]
    if "<<malformed>>" in text:
        return "This reply is quite coherent and friendly, well done."
    if "<<out_of_range>>" in text:
        return json.dumps({"score": 9})
    return json.dumps({"score": 1 + len(text) % 5})


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-prompts")
    uri = str(root / "prompts")
    assert main(["ingest", "--output", uri]) == 0
    return uri


def _judge(server, name="j1", **kw):
    return {"name": name, "model": f"openai/{name}-model", "api_base": server.api_base, "max_retries": 2,
            "timeout_s": 1.5, "input_cost_per_token": 1e-5, "output_cost_per_token": 2e-5, **kw}


def _stage(prompts, cands, out, judges, **panel):
    cfg = load_config(None, [f"score.input={cands}", f"score.prompts={prompts}", f"score.output={out}",
                             "score.metrics=[length]", "ray.progress_bars=false"])
    cfg.score.judges = judges
    for k, v in panel.items():
        setattr(cfg.score.panel, k, v)
    return run_stage(cfg)


FAULTS = {  # per variant: what the judge endpoint does with its requests
    "gold": " [[fault:429,500]]",          # rate limited, then a server error: retried, then scored
    "truncated": " [[fault:timeout]]",     # slower than the client's timeout once: retried
    "prefixed": " <<malformed>>",          # answers in prose: recorded as malformed
    "chatty": " <<out_of_range>>",         # answers 9 on a 1..5 scale: recorded as out of range
}


def test_faults_are_retried_or_recorded_per_row_and_counts_add_up(ray_local, prompts, tmp_path):
    table = st.read_table(prompts).slice(0, 6)

    def suffix(i, v):
        # Prompt 0's gold reply exhausts the retries (1 try + 2 retries, all 500).
        return " [[fault:500,500,500]]" if (i, v) == (0, "gold") else FAULTS.get(v, "")

    cands = write_output(str(tmp_path / "cands"), make_candidates(table, text_suffix=suffix))
    with OpenAIServer(responder=scoring_responder, retry_after_s=0, slow_s=4) as server:
        # 26 of 48 requests fail on purpose here, above the default max_error_share of 0.5.
        summary = _stage(prompts, cands, str(tmp_path / "scores"), [_judge(server)], cache=None, max_error_share=0.6)
        deadline = time.time() + 10
        while server.in_flight and time.time() < deadline:   # requests the client gave up on finish late
            time.sleep(0.1)
        stats = dict(server.stats)
    scores = st.read_table(str(tmp_path / "scores"))
    assert scores.num_rows == 6 * 5                        # nothing lost, failed rows included
    j = summary["judges"]["j1"]
    dims = 2
    assert j["request_error"] == dims                       # prompt 0 gold: out of retries, both dimensions
    assert j["ok"] == dims * (5 + 6)                        # the other gold rows + every truncated row
    assert j["malformed"] == dims * 6 and j["out_of_range"] == dims * 6
    assert j["no_text"] == dims * 6                         # the failed generations
    # Every answer the client waited for is a row's judgment (the server also finished the
    # requests the client had timed out on); every fault was retried or recorded.
    assert stats["ok_responses"] == j["ok"] + j["malformed"] + j["out_of_range"] + stats["timeout"]
    assert stats["429"] == dims * 5 and stats["timeout"] == dims * 6
    assert stats["500"] == dims * 5 + dims * 3
    assert stats["requests"] == stats["ok_responses"] + stats["429"] + stats["500"]
    by = {(r["generator"], r["prompt_id"]): r for r in scores.to_pylist()}
    p0 = table.column("prompt_id")[0].as_py()
    err = json.loads(by[("gold", p0)]["score_errors"])
    assert "500" in err["judge_j1_coherence"] or "InternalServer" in err["judge_j1_coherence"]
    for r in scores.to_pylist():
        errs = json.loads(r["score_errors"]) if r["score_errors"] else {}
        if r["generator"] == "prefixed":
            assert r["judge_j1_coherence"] is None and "no score in the judgment" in errs["judge_j1_coherence"]
        if r["generator"] == "chatty":
            assert r["judge_j1_personalization"] is None and "score 9 outside 1..5" in errs["judge_j1_personalization"]
        if r["generator"] == "truncated":
            assert 1 <= r["judge_j1_coherence"] <= 5


def test_a_judge_that_mostly_fails_fails_the_stage_naming_it_and_commits_nothing(ray_local, prompts, tmp_path):
    table = st.read_table(prompts).slice(0, 2)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "chatty"]))
    out = str(tmp_path / "scores")
    with OpenAIServer(responder=lambda m, b: "A lovely reply, I would say.") as server:
        with pytest.raises(StageError, match=r"judge j1: 8 of 8 requests failed .*max_error_share=0.5.*"
                                             r"commonest error \(8x\): no score in the judgment"):
            _stage(prompts, cands, out, [_judge(server)], cache=None)
    assert not st.is_complete(out)


def test_budget_cap_is_shared_by_actors_and_never_exceeded(ray_local, prompts, tmp_path):
    table = st.read_table(prompts).slice(0, 10)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "chatty"]))
    cap = 0.05
    with OpenAIServer(responder=scoring_responder) as server:
        judge = _judge(server, concurrency=2, batch_size=4, max_in_flight=2)
        summary = _stage(prompts, cands, str(tmp_path / "scores"), [judge], budget_usd=cap, cache=None)
        stats = dict(server.stats)
    b, j = summary["budget"], summary["judges"]["j1"]
    assert b["spent_usd"] <= cap and b["overruns"] == 0
    assert j["budget"] > 0 and j["ok"] > 0                  # it stopped part way, cleanly
    assert j["ok"] + j["budget"] == 2 * 20                   # every judgment either made or refused
    assert stats["requests"] == j["ok"] == b["granted"]      # no request was sent without a reservation
    assert summary["cost_usd"] == pytest.approx(b["spent_usd"])
    # A request costs ~$0.003 here (reserved: ~$0.006): the cap leaves about one request unspent.
    assert cap - b["spent_usd"] < 0.01
    scores = st.read_table(str(tmp_path / "scores")).to_pylist()
    refused = [json.loads(r["score_errors"])["judge_j1_coherence"] for r in scores
               if r["judge_j1_coherence"] is None]
    assert refused and all("budget cap reached" in e for e in refused)


def _batch(prompts, n=2, variants=("gold",)):
    table = st.read_table(prompts)
    cands = make_candidates(table.slice(0, n), list(variants))
    return PromptIndex(table).attach(cands)


def test_constrained_json_reaches_the_server_and_rubric_changes_are_rejudged(ray_local, prompts, tmp_path):
    bodies = []

    def recording(messages, body):
        bodies.append(body)
        return json.dumps({"score": 4})

    batch = _batch(prompts)
    panel = PanelConfig().model_dump(mode="json")
    with OpenAIServer(responder=recording) as server:
        actor = JudgeActor(JudgeSpec(**_judge(server)).model_dump(mode="json"), panel)
        out = asyncio.run(actor(batch))
        assert out.column("judge_j1_coherence").to_pylist() == [4.0, 4.0]
        fmt = bodies[0]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
        assert bodies[0]["temperature"] == 0.0 and bodies[0]["max_tokens"] == 16

        # What a rerun's actor knows (the driver loads the cache): only a changed rubric is asked again.
        known = {}
        for v in out.column("_jnew_j1").to_pylist():
            for e in json.loads(v):
                known[e["key"]] = {"score": e["score"], "error": e["error"]}
        assert len(known) == 4
        rubric = tmp_path / "my-coherence.txt"
        rubric.write_text("Rate the coherence of: $reply\nAnswer {\"score\": n}\n")
        panel2 = {**panel, "rubrics": {**panel["rubrics"], "coherence": str(rubric)}}
        before = server.stats["requests"]
        again = asyncio.run(JudgeActor(JudgeSpec(**_judge(server)).model_dump(mode="json"), panel2,
                                       memo=[ray_local.put(known)])(batch))
        assert server.stats["requests"] - before == 2         # coherence x 2 rows; personalization cached
        assert again.column("_jstat_j1_personalization").to_pylist() == ["cached", "cached"]
        assert again.column("_jstat_j1_coherence").to_pylist() == ["ok", "ok"]
        assert again.column("_jcost_j1").to_pylist()[0] > 0


@pytest.mark.slow
def test_a_real_model_on_vllm_judges_with_regex_constrained_scores(ray_local, prompts, tmp_path):
    """The stage starts vLLM's OpenAI server (CPU) around SmolLM2-135M-Instruct itself
    (``api_base: local+vllm:...``) and stops it; regex structured outputs make every answer a
    valid score, so every judgment parses."""
    table = st.read_table(prompts).slice(0, 4)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "chatty"]))
    judge = {"name": "smol", "model": "openai/smollm2", "api_base": "local+vllm:packaged:smollm2-135m-instruct",
             "constrained": "regex", "timeout_s": 120, "max_retries": 0, "max_in_flight": 32, "batch_size": 16,
             "params": {"temperature": 0, "max_tokens": 12}}
    summary = _stage(prompts, cands, str(tmp_path / "scores"), [judge], cache=None)
    j = summary["judges"]["smol"]
    assert j["ok"] == 2 * 8 and j["malformed"] == j["out_of_range"] == j["request_error"] == 0
    assert j["tokens"] > 16 * 150                   # real prompt token counts from vLLM
    for r in st.read_table(str(tmp_path / "scores")).to_pylist():
        for d in ("coherence", "personalization"):
            assert r[f"judge_smol_{d}"] in (1.0, 2.0, 3.0, 4.0, 5.0)
