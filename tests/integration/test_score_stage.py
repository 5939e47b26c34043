"""The score stage end to end on local Ray: every metric family and a judge panel via litellm
against a real HTTP server, on candidates made from the bundled FoCus sample."""

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.score.stage import run_stage
from tests.support.openai_server import OpenAIServer
from tests.support.score_data import make_candidates, write_output

MODEL_METRICS = [{"name": "c_score", "model": "tiny:bert-nli"}, {"name": "coherence_nli", "model": "tiny:bert-nli"},
                 {"name": "persona_similarity", "model": "packaged:all-minilm-l6-v2"}]
DET = ["format", "length", "persona_coverage", "reference"]


def judge_responder(messages, body):
    # A deterministic, content-dependent score, different per rubric, so aggregation is visible.
    text = messages[-1]["content"]
    return json.dumps({"score": 1 + (sum(map(ord, text)) % 5)})


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("score-sample")
    prompts = str(root / "prompts")
    assert main(["ingest", "--output", prompts]) == 0
    table = st.read_table(prompts)
    cands = write_output(str(root / "candidates"), make_candidates(table))
    return {"root": root, "prompts": prompts, "candidates": cands, "n": table.num_rows * 5, "prompt_table": table}


def _cfg(sample, out, **score):
    cfg = load_config(None, [f"score.input={sample['candidates']}", f"score.prompts={sample['prompts']}",
                             f"score.output={out}", "ray.progress_bars=false"])
    for k, v in score.items():
        setattr(cfg.score, k, v)
    return cfg


def _judge(server, name, **kw):
    return {"name": name, "model": f"openai/{name}-model", "api_base": server.api_base, "max_retries": 2,
            "timeout_s": 10, "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, **kw}


def test_every_family_and_a_judge_panel(ray_local, sample, tmp_path, monkeypatch):
    out = str(tmp_path / "scores")
    with OpenAIServer(responder=judge_responder) as server:
        cfg = _cfg(sample, out, metrics=DET + MODEL_METRICS, block_rows=50,
                   judges=[_judge(server, "j1", generator="chatty"),
                           _judge(server, "j2", api_key_env="PERSODPO_TEST_API_KEY")])
        summary = run_stage(cfg)
        stats = dict(server.stats)
    n = sample["n"]
    table = st.read_table(out)
    assert summary["n_scored"] == table.num_rows == n
    assert st.is_complete(out)
    assert set(table.column("candidate_id").to_pylist()) == set(
        st.read_table(sample["candidates"]).column("candidate_id").to_pylist())
    expected = contracts.scores_schema(summary["columns"])
    assert table.schema.equals(expected, check_metadata=False)

    rows = {(r["generator"], r["prompt_id"]): r for r in table.to_pylist()}
    by_gen = {}
    for (g, _), r in rows.items():
        by_gen.setdefault(g, []).append(r)
    for r in by_gen["gold"]:   # the gold reply, as one JSON object: perfect reference scores and format
        assert r["format_ok"] == 1.0 and r["length_ok"] == 1.0
        assert r["ref_bleu"] == pytest.approx(1.0) and r["ref_chrf"] == pytest.approx(1.0)
        assert r["ref_rouge_l"] == pytest.approx(1.0)
    assert all(r["format_not_truncated"] == 0.0 and r["format_ok"] == 0.0 for r in by_gen["truncated"])
    assert all(r["format_no_role_prefix"] == 0.0 and r["format_parse_ok"] == 1.0 for r in by_gen["prefixed"])
    assert all(r["format_single"] == 0.0 and r["format_parse_ok"] == 1.0 for r in by_gen["chatty"])
    for r in by_gen["failed"]:
        errs = json.loads(r["score_errors"])
        assert r["format_ok"] is None and "request failed" in errs["format_ok"]
        assert r["c_score"] is None and errs["c_score"] == "no usable text"
        assert r["judge_coherence"] is None and r["judge_coherence_n"] == 0.0
    for r in table.to_pylist():
        if r["generator"] != "failed":
            assert r["c_score"] == int(r["c_score"]) and -5 <= r["c_score"] <= 5
            assert -1.0 <= r["coherence_nli"] <= 1.0 and -1.0 <= r["persona_similarity"] <= 1.0
            assert 0.0 <= r["persona_coverage"] <= 1.0
        errs = json.loads(r["score_errors"]) if r["score_errors"] else {}
        for c in summary["columns"]:   # every null has a reason, every reason a null
            assert (r[c] is None) == (c in errs), (c, r)

    # The panel: j1 is the "chatty" generator's own model and skips it.
    for r in by_gen["chatty"]:
        assert r["judge_j1_coherence"] is None and "own generator" in json.loads(r["score_errors"])["judge_j1_coherence"]
        assert r["judge_coherence_n"] == 1.0 and r["judge_coherence"] == r["judge_j2_coherence"]
    for r in by_gen["gold"]:
        assert r["judge_personalization_n"] == 2.0
        assert r["judge_personalization"] == (r["judge_j1_personalization"] + r["judge_j2_personalization"]) / 2
        assert r["judge_personalization_agreement"] == 1 - abs(r["judge_j1_personalization"]
                                                               - r["judge_j2_personalization"]) / 4
    j1, j2 = summary["judges"]["j1"], summary["judges"]["j2"]
    with_text = n - n // 5
    assert j2["ok"] == 2 * with_text and j1["ok"] == 2 * (with_text - n // 5) and j1["skipped_own"] == 2 * (n // 5)
    assert stats["requests"] == stats["ok_responses"] == j1["requests"] + j2["requests"]
    assert j1["tokens"] > 0 and j1["cost_usd"] > 0
    assert sum(table.column("judge_cost_usd").to_pylist()) == pytest.approx(summary["cost_usd"])
    manifest = st.read_manifest(out)
    assert manifest["stage"] == "score" and manifest["rows"] == n and manifest["config_hash"]
    assert manifest["judges"]["j1"]["cache_entries"] == j1["ok"]
    assert "sk-test-secret-4711" not in json.dumps(manifest) + json.dumps(summary)


def test_cli_scores_and_bad_input_names_file_record_field(ray_local, sample, tmp_path):
    cfg = tmp_path / "score.yaml"
    cfg.write_text("ray: {num_cpus: 2, progress_bars: false}\nscore:\n  metrics: [format, length, persona_coverage]\n")
    out = str(tmp_path / "scores")
    r = subprocess.run([sys.executable, "-m", "persodpo", "score", "--config", str(cfg), "--input",
                        sample["candidates"], "--prompts", sample["prompts"], "--output", out],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["n_scored"] == sample["n"] and "format_ok" in summary["columns"]
    assert st.read_table(out).num_rows == sample["n"]

    # A candidate whose prompt is unknown: exit 2, naming the file, the record and the field.
    bad = make_candidates(sample["prompt_table"].slice(0, 1), ["gold"])
    bad = bad.set_column(1, "prompt_id", pa.array(["p_missing"]))
    bad_uri = write_output(str(tmp_path / "bad"), bad)
    assert main(["score", "--config", str(cfg), "--input", bad_uri, "--prompts", sample["prompts"],
                 "--output", str(tmp_path / "never")]) == 2
    assert not st.is_complete(str(tmp_path / "never"))
    with pytest.raises(Exception, match=rf"{bad_uri}: record candidate c_\w+: field 'prompt_id'"):
        run_stage(_cfg({**sample, "candidates": bad_uri}, str(tmp_path / "never2"), metrics=["format"]))


def test_scores_and_judge_cache_on_s3(ray_local, sample, s3_env):
    bucket = s3_env["bucket"]
    with OpenAIServer(responder=judge_responder) as server:
        def run(out):
            cfg = _cfg(sample, f"s3://{bucket}/{out}", metrics=["format", "length"], judges=[_judge(server, "j1")])
            cfg.score.panel.cache = f"s3://{bucket}/judge-cache"
            return run_stage(cfg)

        first = run("scores-1")
        sent = server.stats["requests"]
        second = run("scores-2")
        assert server.stats["requests"] == sent          # the rerun sent nothing
    assert first["judges"]["j1"]["ok"] == second["judges"]["j1"]["cached"] > 0
    assert second["cost_usd"] == 0 and first["cost_usd"] > 0
    a = st.read_table(f"s3://{bucket}/scores-1").sort_by("candidate_id")
    b = st.read_table(f"s3://{bucket}/scores-2").sort_by("candidate_id")
    assert a.column("judge_coherence").to_pylist() == b.column("judge_coherence").to_pylist()
