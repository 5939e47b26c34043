"""Reuse is keyed on what an output was made from (lineage), not on names.

ingest -> generate: with the same run id, a changed ingest setting makes generate ask every
prompt again (the loopback server answers with a digest of the exact messages it received, so a
candidate that answers an old prompt is visible), an unchanged rerun asks nothing, and paid-for
candidates of other prompts are refused rather than deleted unless the user says so.
(pairs -> train -> evaluate is covered at the end of tests/integration/test_pipeline.py, which
already has a finished tiny run to change.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.prompting import build_messages
from tests.support.openai_server import OpenAIServer

TINY = str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml")
TEMPLATE, WORD_LIMIT = "plain-v1", 30   # tiny.yaml's


def _digest(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def _respond(messages, body):
    return "digest " + _digest([{"role": m["role"], "content": m["content"]} for m in messages])


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(_respond, model_name="loopback") as s:
        yield s


def _run(capsys, ray_local, root, server, *sets) -> tuple[int, dict]:
    gen = {"name": "api", "backend": "api", "model": "openai/loopback", "sampling": {"max_tokens": 16},
           "api": {"api_base": server.api_base, "max_in_flight": 8, "batch_size": 8, "max_retries": 1}}
    args = ["run", "--config", TINY, "--root", str(root), "--run-id", "lin", "--set", "run.stages=[ingest,generate]",
            "--set", f"ray.address={ray_local.get_runtime_context().gcs_address}", "--set", "ray.progress_bars=false",
            "--set", "ingest.max_dialogs=3", "--set", f"generate.template={TEMPLATE}",
            "--set", f"generate.word_limit={WORD_LIMIT}", "--set", "generate.split=null",
            "--set", "generate.max_prompts=null", "--set", f"generate.generators=[{json.dumps(gen)}]", *sets]
    capsys.readouterr()
    rc = main(args)
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _check_answers_current_prompts(run) -> int:
    prompts = {r["prompt_id"]: r for r in st.read_table(str(run / "ingest")).to_pylist()}
    cands = st.read_table(str(run / "generate")).to_pylist()
    for c in cands:
        want = _digest(build_messages(prompts[c["prompt_id"]], TEMPLATE, WORD_LIMIT))
        assert c["raw"] == f"digest {want}", f"{c['candidate_id']} answers another prompt than {c['prompt_id']}"
    return len(cands)


def test_a_changed_ingest_setting_regenerates_and_an_unchanged_rerun_reuses(capsys, ray_local, tmp_path, server):
    run = tmp_path / "runs" / "lin"
    rc, first = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=none")
    assert rc == 0 and first["stages"]["generate"]["status"] == "ran", first
    n = _check_answers_current_prompts(run)
    assert n > 0

    asked = server.stats["requests"]
    rc, same = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=none")
    assert rc == 0 and {s["status"] for s in same["stages"].values()} == {"reused"}, same
    assert server.stats["requests"] == asked, "an unchanged rerun sent requests"

    # Same prompt ids, other prompt text: every candidate is asked again, none answers an old prompt.
    rc, changed = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=all")
    assert rc == 0, changed
    assert changed["stages"]["ingest"]["status"] == "ran" and changed["stages"]["generate"]["status"] == "ran"
    assert changed["stages"]["generate"]["new_rows"] == n and changed["stages"]["generate"]["resumed_rows"] == 0
    assert server.stats["requests"] == asked + n
    assert _check_answers_current_prompts(run) == n
    gen_manifest = st.read_manifest(str(run / "generate"))
    assert gen_manifest["lineage"]["upstream"]["prompts"] == st.read_manifest(str(run / "ingest"))["lineage"]["hash"]


def test_paid_candidates_of_other_prompts_are_refused_not_deleted(capsys, ray_local, tmp_path, server):
    run = tmp_path / "runs" / "lin"
    prices = ["--set", "generate.generators.0.api.input_cost_per_token=1e-06",
              "--set", "generate.generators.0.api.output_cost_per_token=2e-06"]
    rc, paid = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=none", *prices)
    assert rc == 0 and paid["stages"]["generate"]["cost_usd"] > 0, paid
    parts = sorted(p.name for p in (run / "generate").glob("part-*.parquet"))

    # The same generate config on other prompts: refused, nothing deleted.
    rc, refused = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=all", *prices)
    assert rc == 2 and "generate.discard_stale=true" in refused["error"] and "other prompts" in refused["error"]
    assert sorted(p.name for p in (run / "generate").glob("part-*.parquet")) == parts

    asked = server.stats["requests"]
    rc, fresh = _run(capsys, ray_local, tmp_path, server, "--set", "ingest.knowledge=all",
                     "--set", "generate.discard_stale=true", *prices)
    assert rc == 0 and fresh["stages"]["generate"]["resumed_rows"] == 0, fresh
    assert server.stats["requests"] - asked == fresh["stages"]["generate"]["rows"]
    _check_answers_current_prompts(run)
