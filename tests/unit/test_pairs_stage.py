"""The pairs stage end to end on small tables on local disk: contract, prompts, replies, data
card, determinism, chunking, and errors that name the input."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import load_config
from persodpo.errors import ConfigError, InputError
from persodpo.pairs.config import AUTHORS_PERSODPO_WEIGHTS
from persodpo.pairs.stage import run_stage
from persodpo.prompting import build_messages

METRICS = ("coh_unieval", "c_score", "ue_score", "persona_distance")


def prompt_row(pid: str) -> dict:
    return {"prompt_id": pid, "source": "test", "dialog_id": pid, "turn": 1, "split": "train",
            "persona": ["I love lighthouses.", "I live in Dover."], "knowledge": [],
            "history": [{"role": "user", "content": f"What is this place ({pid})?"}],
            "gold": "A lighthouse.", "persona_grounding": None, "landmark": None}


def cand(cid, pid, gen, status="valid", text=None, raw=None, template="persobench-json-v1", **metrics):
    if text is None and status != "unusable":
        text = f"Reply {cid} about the lighthouse in Dover"
    if raw is None:
        raw = json.dumps({"response": text}) if status == "valid" else f'{{"response": "{text or "nothing"}'
    return {"candidate_id": cid, "prompt_id": pid, "generator": gen, "sample_index": 0, "raw": raw, "text": text,
            "parse_ok": status == "valid", "parse_status": status, "n_tokens": None, "latency_s": None,
            "error": None, "template": template, **{"metrics": metrics}}


def default_candidates() -> list[dict]:
    out = []
    for p in ("p1", "p2"):
        out += [cand(f"{p}-a", p, "gpt-4o-mini", coh_unieval=0.99, c_score=1.0, ue_score=2.0, persona_distance=0.8),
                cand(f"{p}-b", p, "Qwen2-7B-Instruct", coh_unieval=0.95, c_score=0.0, ue_score=0.0, persona_distance=0.5,
                     text="Une réponse: café au lait near the lighthouse"),
                cand(f"{p}-c", p, "Llama-3.1-8B-Instruct", coh_unieval=0.5, c_score=-1.0, ue_score=0.0,
                     persona_distance=0.2),
                cand(f"{p}-f", p, "Mistral-7B-Instruct-v0.2", status="fallback",
                     raw='{"response": "A long reply that was cut off befo')]
    return out


def write_inputs(root, candidates: list[dict] | None = None, prompts: list[str] = ("p1", "p2"),
                 metrics=METRICS, drop_metric: str | None = None) -> dict[str, str]:
    candidates = default_candidates() if candidates is None else candidates
    uris = {k: st.join(str(root), k) for k in ("prompts", "candidates", "scores")}   # local or s3://
    out = st.StageOutput(uris["prompts"]).begin()
    out.write_table(pa.Table.from_pylist([prompt_row(p) for p in prompts], schema=contracts.PROMPTS))
    out.commit({"stage": "test"})
    out = st.StageOutput(uris["candidates"]).begin()
    out.write_table(pa.Table.from_pylist([{k: v for k, v in c.items() if k != "metrics"} for c in candidates],
                                         schema=contracts.CANDIDATES))
    out.commit({"stage": "test"})
    kept = [m for m in metrics if m != drop_metric]
    rows = [{"candidate_id": c["candidate_id"], "prompt_id": c["prompt_id"], "generator": c["generator"],
             "score_errors": None, "judge_tokens": None, "judge_cost_usd": None,
             **{m: (c["metrics"].get(m) if c["parse_status"] == "valid" else None) for m in kept}} for c in candidates]
    out = st.StageOutput(uris["scores"]).begin()
    out.write_table(pa.Table.from_pylist(rows, schema=contracts.scores_schema(kept)))
    out.commit({"stage": "test"})
    return uris


def cfg_for(uris, output, recipe="persodpo", *extra):
    return load_config(None, [f"pairs.input={uris['scores']}", f"pairs.candidates={uris['candidates']}",
                              f"pairs.prompts={uris['prompts']}", f"pairs.output={output}", f"pairs.recipe={recipe}",
                              "pairs.plots=false", f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}", *extra])


def test_persodpo_output_is_the_pairs_contract_with_the_exact_prompt(tmp_path):
    uris = write_inputs(tmp_path)
    out = str(tmp_path / "pairs")
    summary = run_stage(cfg_for(uris, out, "persodpo", "pairs.plots=true", "pairs.persodpo.min_margin=0.1"))
    table = st.read_table(out)
    assert table.schema.equals(contracts.PAIRS)
    assert summary["n_pairs"] == table.num_rows > 0
    rows = table.to_pylist()
    cands = {c["candidate_id"]: c for c in default_candidates()}
    for r in rows:
        assert r["prompt"] == build_messages(prompt_row(r["prompt_id"]), "persobench-json-v1", 110)
        assert r["pair_id"] == contracts.pair_id("persodpo", r["chosen_candidate_id"], r["rejected_candidate_id"])
        c, j = cands[r["chosen_candidate_id"]], cands[r["rejected_candidate_id"]]
        assert r["chosen"] == [{"role": "assistant", "content": json.dumps({"response": c["text"]}, ensure_ascii=False)}]
        expected_rejected = j["raw"] if r["pair_type"] == "format" else json.dumps({"response": j["text"]}, ensure_ascii=False)
        assert r["rejected"] == [{"role": "assistant", "content": expected_rejected}]
        assert r["margin"] == pytest.approx(r["score_chosen"] - r["score_rejected"]) and r["margin"] > 0
        assert (r["chosen_generator"], r["rejected_generator"]) == (c["generator"], j["generator"])
        assert r["recipe"] == "persodpo"
    assert {r["pair_type"] for r in rows} == {"content", "format"}
    # Non-ASCII stays readable in the JSON reply.
    assert any("café" in r["rejected"][0]["content"] or "café" in r["chosen"][0]["content"] for r in rows)
    manifest = st.read_manifest(out)
    assert {"data_card.md", "stats.json", "margins.png", "lengths.png", "generators.png", "scores.png"} <= set(manifest["files"])
    assert (tmp_path / "pairs" / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((tmp_path / "pairs" / "stats.json").read_text())
    assert stats["n_pairs"] == table.num_rows and stats["template"] == "persobench-json-v1"
    assert stats["balance"]["rejected_failed_parsing_share"] == pytest.approx(
        sum(r["pair_type"] == "format" for r in rows) / len(rows), abs=1e-4)
    assert stats["config"]["recipe"] == "persodpo" and "pyarrow" in stats["versions"]["packages"]
    card = (tmp_path / "pairs" / "data_card.md").read_text()
    assert "chosen shorter" in card and "![margins.png](margins.png)" in card
    assert manifest["config_hash"] and manifest["rows"] == table.num_rows


def test_paper_recipe_through_the_cli(tmp_path):
    uris = write_inputs(tmp_path)
    out = tmp_path / "pairs"
    r = subprocess.run([sys.executable, "-m", "persodpo", "pairs", "--input", uris["scores"], "--candidates",
                        uris["candidates"], "--prompts", uris["prompts"], "--output", str(out),
                        "--recipe", "paper-length-prior", "--set", "pairs.plots=false"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["recipe"] == "paper-length-prior" and set(summary["thresholds"]) == {"p40", "p60"}
    rows = st.read_table(str(out)).to_pylist()
    assert len(rows) == summary["n_pairs"] > 0
    for row in rows:
        # Replies re-serialised as {"response": text}, the fallback ones too (as the authors did).
        for side in ("chosen", "rejected"):
            assert set(json.loads(row[side][0]["content"])) == {"response"}
        assert row["pair_type"] == "content"


def test_rerun_gives_the_same_pairs_in_the_same_order_and_parts_split(tmp_path):
    uris = write_inputs(tmp_path)
    a = run_stage(cfg_for(uris, str(tmp_path / "a"), "simple"))
    b = run_stage(cfg_for(uris, str(tmp_path / "b"), "simple", "pairs.rows_per_part=2"))
    ta, tb = st.read_table(str(tmp_path / "a")), st.read_table(str(tmp_path / "b"))
    assert a["n_pairs"] == b["n_pairs"] == 2 * 3    # per prompt: 3 valid x 1 fallback
    assert ta.column("pair_id").to_pylist() == tb.column("pair_id").to_pylist()
    assert len(st.part_uris(str(tmp_path / "b"))) == 3


def test_no_pairs_still_writes_a_complete_typed_output(tmp_path):
    uris = write_inputs(tmp_path, [cand("x", "p1", "gpt-4", status="fallback"), cand("y", "p1", "gpt-4", status="unusable")])
    out = str(tmp_path / "pairs")
    summary = run_stage(cfg_for(uris, out, "persodpo", "pairs.plots=true"))
    assert summary["n_pairs"] == 0 and st.is_complete(out)
    assert st.read_table(out).schema.equals(contracts.PAIRS)


def test_plain_template_candidates_get_plain_prompts_and_replies(tmp_path):
    cands = [cand(c["candidate_id"], c["prompt_id"], c["generator"], c["parse_status"], c["text"],
                  raw=c["text"] if c["parse_status"] == "valid" else "User2: cut", template="plain-v1", **c["metrics"])
             for c in default_candidates()]
    uris = write_inputs(tmp_path, cands)
    out = str(tmp_path / "pairs")
    run_stage(cfg_for(uris, out, "simple"))
    row = st.read_table(out).to_pylist()[0]
    assert row["prompt"] == build_messages(prompt_row(row["prompt_id"]), "plain-v1", 110)
    assert not row["chosen"][0]["content"].startswith("{")
    with pytest.raises(ConfigError, match="persobench-json-v1"):
        run_stage(cfg_for(uris, str(tmp_path / "p"), "paper-perso"))


def test_several_templates_need_a_choice(tmp_path):
    cands = default_candidates()
    cands[0]["template"] = "plain-v1"
    uris = write_inputs(tmp_path, cands)
    with pytest.raises(ConfigError, match="pairs.template"):
        run_stage(cfg_for(uris, str(tmp_path / "o")))
    summary = run_stage(cfg_for(uris, str(tmp_path / "o"), "persodpo", "pairs.template=persobench-json-v1"))
    assert summary["n_pairs"] > 0


def test_errors_name_the_input(tmp_path):
    uris = write_inputs(tmp_path, drop_metric="c_score")
    with pytest.raises(InputError) as e:
        run_stage(cfg_for(uris, str(tmp_path / "o")))
    assert uris["scores"] in str(e.value) and "c_score" in str(e.value)

    uris = write_inputs(tmp_path / "2", prompts=["p1"])
    with pytest.raises(InputError) as e:
        run_stage(cfg_for(uris, str(tmp_path / "o")))
    assert uris["prompts"] in str(e.value) and "p2" in str(e.value) and "prompt_id" in str(e.value)

    dup = default_candidates()
    dup.append(dict(dup[0]))
    uris = write_inputs(tmp_path / "3", dup)
    with pytest.raises(InputError, match="duplicate candidate_id"):
        run_stage(cfg_for(uris, str(tmp_path / "o")))

    with pytest.raises(ConfigError, match="pairs.output"):
        run_stage(load_config(None, [f"pairs.input={uris['scores']}", f"pairs.candidates={uris['candidates']}",
                                     f"pairs.prompts={uris['prompts']}"]))
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config(None, ["pairs.recipe=best"])


def test_scores_for_an_unknown_candidate_are_refused(tmp_path):
    uris = write_inputs(tmp_path)
    extra = write_inputs(tmp_path / "x", [cand("ghost", "p1", "gpt-4", coh_unieval=1, c_score=1, ue_score=1,
                                               persona_distance=1)])
    with pytest.raises(InputError) as e:
        run_stage(load_config(None, [f"pairs.input={extra['scores']}", f"pairs.candidates={uris['candidates']}",
                                     f"pairs.prompts={uris['prompts']}", f"pairs.output={tmp_path / 'o'}",
                                     f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}"]))
    assert "ghost" in str(e.value) and extra["scores"] in str(e.value)


def test_a_crash_leaves_no_trusted_output(tmp_path):
    uris = write_inputs(tmp_path)
    out = str(tmp_path / "pairs")
    run_stage(cfg_for(uris, out))
    assert st.is_complete(out)
    bad = write_inputs(tmp_path / "bad", prompts=["p1"])     # fails while building prompts
    with pytest.raises(InputError):
        run_stage(cfg_for(bad, out))
    # Input errors are found before the output is touched: the previous complete output stands.
    assert st.is_complete(out) and st.read_table(out).num_rows > 0


def test_bulk_pair_ids_and_replies_match_the_contract():
    from json import dumps

    from persodpo.pairs.assemble import pair_ids, render_replies, render_reply

    chosen, rejected = ["c_1", "c_é\x1f", "x"], ["c_2", "r", "x y"]
    assert pair_ids("paper-perso", chosen, rejected) == [contracts.pair_id("paper-perso", c, r)
                                                         for c, r in zip(chosen, rejected)]
    texts = ["plain", 'quote " and \\ backslash', "new\nline\ttab \x01", "café ☕", "", "\x7f\u2028 kept", "}{"]
    for text in texts:
        assert render_reply(text, "json") == dumps({"response": text}, ensure_ascii=False)
        assert render_reply(text, "plain") == text
    chunked = pa.chunked_array([pa.array(texts[:3]), pa.array(texts[3:])]).combine_chunks()
    assert render_replies(chunked, "json").to_pylist() == [dumps({"response": t}, ensure_ascii=False) for t in texts]
    assert render_replies(pa.array(["a", "b"]), "json").to_pylist() == ['{"response": "a"}', '{"response": "b"}']
    assert render_replies(pa.array(texts), "plain").to_pylist() == texts


def test_format_signal_is_recorded(tmp_path):
    uris = write_inputs(tmp_path)
    run_stage(cfg_for(uris, str(tmp_path / "a")))
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["format_signal"] == "candidates.parse_ok"
    # A scores table with a format column: that column is the signal.
    uris = write_inputs(tmp_path / "f", metrics=(*METRICS, "format_ok"))
    run_stage(cfg_for(uris, str(tmp_path / "b")))
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["format_signal"] == "scores.format_ok"
    assert "format signal: `scores.format_ok`" in (tmp_path / "b" / "data_card.md").read_text()
