"""The score stage end to end on local Ray: every metric family and a judge panel via litellm
against a real HTTP server, on candidates made from the bundled FoCus sample."""

import hashlib
import json
import subprocess
import sys

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.score.calibration import calibrated
from persodpo.score.stage import run_stage
from tests.support.openai_server import OpenAIServer
from tests.support.score_data import make_candidates, write_output

MODEL_METRICS = [{"name": "c_score", "model": "tiny:bert-nli"}, {"name": "coherence_nli", "model": "tiny:bert-nli"},
                 {"name": "persona_similarity", "model": "packaged:all-minilm-l6-v2"},
                 {"name": "reward_model", "model": "tiny:llama-reward"}]
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


def manifest_of(uri):
    return st.read_manifest(uri)


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
        assert r["reward_model"] is None and errs["reward_model"] == "no usable text"
        assert r["judge_coherence"] is None and r["judge_coherence_n"] == 0.0
    for r in table.to_pylist():
        if r["generator"] != "failed":
            assert r["c_score"] == int(r["c_score"]) and -5 <= r["c_score"] <= 5
            assert -1.0 <= r["coherence_nli"] <= 1.0 and -1.0 <= r["persona_similarity"] <= 1.0
            assert 0.0 <= r["persona_coverage"] <= 1.0
            assert isinstance(r["reward_model"], float)   # its own actor pool, like every model family
        errs = json.loads(r["score_errors"]) if r["score_errors"] else {}
        for c in summary["columns"]:   # every null has a reason, every reason a null
            assert (r[c] is None) == (c in errs), (c, r)

    # The panel: j1 is the "chatty" generator's own model and skips it. Each judge is mapped onto
    # the panel's common scale first (fitted on the replies both scored), so the chatty replies
    # get j2's *calibrated* score, not j2's raw one (which would carry j2's offset into a
    # generator effect inside every prompt).
    fits = summary["panel_calibration"]
    assert fits == manifest_of(out)["panel_calibration"] and set(fits) == {"coherence", "personalization"}
    for r in by_gen["chatty"]:
        assert r["judge_j1_coherence"] is None and "own generator" in json.loads(r["score_errors"])["judge_j1_coherence"]
        assert r["judge_coherence_n"] == 1.0
        assert r["judge_coherence"] == pytest.approx(calibrated(r["judge_j2_coherence"], fits["coherence"], "j2"))
    for r in by_gen["gold"]:
        assert r["judge_personalization_n"] == 2.0
        assert r["judge_personalization"] == pytest.approx(sum(
            calibrated(r[f"judge_{j}_personalization"], fits["personalization"], j) for j in ("j1", "j2")) / 2)
        assert r["judge_personalization_agreement"] == 1 - abs(r["judge_j1_personalization"]
                                                               - r["judge_j2_personalization"]) / 4
    j1, j2 = summary["judges"]["j1"], summary["judges"]["j2"]
    with_text = n - n // 5
    assert j2["ok"] == 2 * with_text and j1["ok"] == 2 * (with_text - n // 5)
    # j1 still scores a sample of its own replies (panel.audit_own_share) for the audit, never the panel.
    assert j1["skipped_own"] + j1["audit_own"] == 2 * (n // 5) and 0 < j1["audit_own"] < 2 * (n // 5)
    assert summary["judge_audit"]["j1"]["coherence"]["n_self"] == j1["audit_own"] // 2
    assert stats["requests"] == stats["ok_responses"] == j1["requests"] + j2["requests"]
    assert j1["tokens"] > 0 and j1["cost_usd"] > 0
    assert sum(table.column("judge_cost_usd").to_pylist()) == pytest.approx(summary["cost_usd"])
    manifest = st.read_manifest(out)
    assert manifest["stage"] == "score" and manifest["rows"] == n and manifest["config_hash"]
    assert manifest["judges"]["j1"]["cache_entries"] == j1["ok"] + j1["audit_own"]   # audit answers are cached too
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


def _context_latent(text):
    # A quality that belongs to the prompt (its dialogue), the same for every generator's reply.
    ctx = text.split("Conversation so far:\n", 1)[1].split("\n\nReply to evaluate:", 1)[0]
    return 1 + sum(map(ord, ctx)) % 3


def calibration_responder(messages, body):
    """Two judges behind one server, told apart by model: j1 = latent + 1 (an offset), j2 =
    2 * latent - 1 (a wider spread). Both are affine in the same latent: a calibrated panel
    must give every reply of a prompt the same score, whichever judges scored it."""
    q = _context_latent(messages[-1]["content"])
    return json.dumps({"score": q + 1 if body["model"].startswith("j1") else 2 * q - 1})


def test_a_judge_skipping_its_own_generator_does_not_shift_that_generators_panel_score(ray_local, sample, tmp_path):
    table = sample["prompt_table"].slice(0, 8)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "truncated", "prefixed", "chatty"]))
    runs = {}
    with OpenAIServer(responder=calibration_responder) as server:
        for skip in (True, False):
            out = str(tmp_path / f"scores-{skip}")
            cfg = _cfg(sample, out, metrics=["length"], input=cands,
                       judges=[_judge(server, "j1", generator="chatty"), _judge(server, "j2")])
            cfg.score.panel.skip_own_generator, cfg.score.panel.cache = skip, None
            summary = run_stage(cfg)
            runs[skip] = {r["candidate_id"]: r for r in st.read_table(out).to_pylist()}
            if skip:
                assert summary["judges"]["j1"]["skipped_own"] + summary["judges"]["j1"]["audit_own"] == 2 * 8
                assert summary["panel_calibration"]["coherence"]["n_common"] == 3 * 8
    skipped, full = runs[True], runs[False]
    for cid, r in skipped.items():
        for d in ("coherence", "personalization"):
            # Same panel score with and without the skip, for the skipped generator too ...
            assert r[f"judge_{d}"] == pytest.approx(full[cid][f"judge_{d}"], abs=1e-9), (cid, d)
            if r["generator"] == "chatty":
                assert r[f"judge_j1_{d}"] is None and full[cid][f"judge_j1_{d}"] is not None
                assert r[f"judge_{d}_n"] == 1.0
    # ... so no generator effect inside a prompt, where the raw mean would have made one.
    by_prompt = {}
    for r in skipped.values():
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    raw_gap = 0.0
    for rows in by_prompt.values():
        assert max(r["judge_coherence"] for r in rows) - min(r["judge_coherence"] for r in rows) < 1e-9
        raw = {r["generator"]: (r["judge_j2_coherence"] if r["judge_j1_coherence"] is None
                                else (r["judge_j1_coherence"] + r["judge_j2_coherence"]) / 2) for r in rows}
        raw_gap = max(raw_gap, abs(raw["chatty"] - raw["gold"]))
    assert raw_gap >= 0.5      # the test data does expose the old bias


def _reply(text):
    return text.split("Reply to evaluate:\n", 1)[1].split("\n\n", 1)[0]


def audit_responder(messages, body):
    """jlen's score follows the reply's length; jfair's follows only the dialogue (fair to
    every generator and to length)."""
    text = messages[-1]["content"]
    if body["model"].startswith("jlen"):
        return json.dumps({"score": min(5, 1 + len(_reply(text).split()) // 6)})
    return json.dumps({"score": 1 + _context_latent(text)})


def test_the_audit_shows_a_length_following_judge_and_a_fair_one(ray_local, sample, tmp_path):
    table = sample["prompt_table"].slice(0, 8)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "truncated", "prefixed", "chatty"]))
    out = str(tmp_path / "scores")
    with OpenAIServer(responder=audit_responder) as server:
        cfg = _cfg(sample, out, metrics=["length"], input=cands,
                   judges=[_judge(server, "jlen", generator="chatty"), _judge(server, "jfair", generator="gold")])
        cfg.score.panel.cache, cfg.score.panel.audit_own_share = None, 1.0
        summary = run_stage(cfg)
    audit = summary["judge_audit"]
    assert audit == manifest_of(out)["judge_audit"]
    print("\njudge_audit:", json.dumps(audit, sort_keys=True))
    for d in ("coherence", "personalization"):
        jl, jf = audit["jlen"][d], audit["jfair"][d]
        assert jl["n_pointwise"] == jf["n_pointwise"] == 3 * 8      # own replies are never in the panel ...
        assert jl["n_self"] == jf["n_self"] == 8                     # ... but all were scored for the audit
        assert jl["length_spearman"] > 0.9
        assert abs(jf["length_spearman"]) < 0.5
        assert jf["self_preference"] == 0.0                          # the same score for every reply of a prompt
        assert jl["self_preference"] > 0.5                           # its own (chatty) replies are the longest
        panel = audit["_panel"][d]
        assert panel["n_units"] == 2 * 8 and -1.0 <= panel["krippendorff_alpha"] <= 1.0


def _pair_replies(text):
    a = text.split("Reply A:\n", 1)[1].split("\n\nReply B:\n", 1)
    return a[0], a[1].split("\n\n", 1)[0]


def pairwise_responder(messages, body):
    """Pointwise: a score from the reply's length. Pairwise, by judge: jfirst always names the
    reply shown first, jlonger the longer one, jfair the one whose text hashes higher (neither
    position nor length)."""
    text = messages[-1]["content"]
    if "Reply A:" not in text:
        return json.dumps({"score": min(5, 1 + len(_reply(text).split()) // 6)})
    a, b = _pair_replies(text)
    if body["model"].startswith("jfirst"):
        return json.dumps({"winner": "A"})
    if body["model"].startswith("jlonger"):
        return json.dumps({"winner": "A" if len(a.split()) > len(b.split()) else "B"
                           if len(b.split()) > len(a.split()) else "tie"})
    ha, hb = (hashlib.sha256(x.encode()).hexdigest() for x in (a, b))
    return json.dumps({"winner": "A" if ha > hb else "B" if hb > ha else "tie"})


def test_pairwise_judging_in_both_orders_exposes_position_and_length_bias_and_verifies_pairs(ray_local, sample,
                                                                                             tmp_path):
    from persodpo.pairs.stage import run_stage as pairs_stage

    table = sample["prompt_table"].slice(0, 8)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "truncated", "prefixed", "chatty"]))
    out = str(tmp_path / "scores")
    with OpenAIServer(responder=pairwise_responder) as server:
        cfg = _cfg(sample, out, metrics=["length", "persona_coverage", "reference"], input=cands,
                   judges=[_judge(server, j) for j in ("jfirst", "jlonger", "jfair")])
        cfg.score.panel.dimensions, cfg.score.panel.pairwise, cfg.score.panel.pairwise_max_per_prompt = \
            ["coherence"], True, 3
        summary = run_stage(cfg)
        sent = server.stats["requests"]
    n_pairs = 8 * 3
    verdicts = st.read_table(st.join(out, "pairwise"))
    assert summary["pairwise"]["n_pairs"] == n_pairs and verdicts.num_rows == n_pairs * 3
    for j in ("jfirst", "jlonger", "jfair"):
        pw = summary["judges"][j]["pairwise"]
        assert pw["requests"] == pw["ok"] == 2 * n_pairs, pw        # both orders of every pair
        assert pw["cache_entries"] == 2 * n_pairs                   # cached like pointwise answers
    assert sent == 3 * (4 * 8 + 2 * n_pairs)                        # pointwise + pairwise, nothing else
    audit = summary["judge_audit"]
    print("\npairwise audit:", json.dumps({j: audit[j]["coherence"] for j in ("jfirst", "jlonger", "jfair")},
                                          sort_keys=True))
    first, longer, fair = (audit[j]["coherence"] for j in ("jfirst", "jlonger", "jfair"))
    assert first["position_consistency"] == 0.0 and first["first_position_win_rate"] == 1.0
    assert first["n_pairwise"] == first["n_inconsistent"] == n_pairs
    assert longer["longer_win_rate"] == 1.0 and longer["position_consistency"] == 1.0
    assert fair["position_consistency"] == 1.0 and fair["first_position_win_rate"] == 0.5
    assert 0.2 < fair["longer_win_rate"] < 0.8
    assert audit == manifest_of(out)["judge_audit"]

    # Pairs verified against the verdicts: jfirst disagrees with itself on every pair, so every
    # content pair it judged is dropped as inconsistent, and the data card says so.
    pairs_out = tmp_path / "pairs"
    pcfg = load_config(None, [f"pairs.input={out}", f"pairs.candidates={cands}", f"pairs.prompts={sample['prompts']}",
                              f"pairs.output={pairs_out}", "pairs.persodpo.verify=pairwise", "pairs.plots=false",
                              "pairs.persodpo.min_margin=0.0",
                              'pairs.persodpo.weights={"persona_coverage": 1.0, "ref_rouge_l": 1.0}'])
    pairs_stage(pcfg)
    stats = json.loads((pairs_out / "stats.json").read_text())["recipe_stats"]["pairwise_verification"]
    assert stats["checked"] > 0 and stats["kept"] == 0
    assert stats["dropped_total"] == stats["checked"] and stats["dropped"]["tie"] == 0
    assert "## Pairwise verification" in (pairs_out / "data_card.md").read_text()
    kept_content = [r for r in st.read_table(str(pairs_out)).to_pylist() if r["pair_type"] == "content"]
    assert kept_content == []
    # With jfair's verdicts only, a content pair is kept exactly when its chosen reply hashes higher.
    fair_only = st.join(str(tmp_path), "verdicts-fair")
    o = st.StageOutput(fair_only).begin()
    o.write_table(verdicts.filter(pa.compute.equal(verdicts.column("judge"), "jfair")))
    o.commit({"stage": "test"})
    pcfg.pairs.pairwise, pcfg.pairs.output = fair_only, str(tmp_path / "pairs-fair")
    pairs_stage(pcfg)
    stats = json.loads((tmp_path / "pairs-fair" / "stats.json").read_text())["recipe_stats"]["pairwise_verification"]
    texts = {r["candidate_id"]: r["text"] for r in st.read_table(cands).to_pylist()}
    kept = [r for r in st.read_table(str(tmp_path / "pairs-fair")).to_pylist() if r["pair_type"] == "content"]
    assert len(kept) == stats["kept"] > 0 and stats["dropped"]["lost"] > 0, stats
    for r in kept:
        c, j = texts[r["chosen_candidate_id"]], texts[r["rejected_candidate_id"]]
        assert hashlib.sha256(c.encode()).hexdigest() > hashlib.sha256(j.encode()).hexdigest()
