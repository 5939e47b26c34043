"""Generation stage, pure parts: requests, candidate rows, configuration, resume bookkeeping."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import load_config
from persodpo.errors import ConfigError, InputError
from persodpo.generate import candidates
from persodpo.generate.config import GenerateConfig, GeneratorConfig
from persodpo.generate.requests import build_requests, planned_ids, sample_seed
from persodpo.prompting import build_messages, max_new_tokens

PERSONA = ["I like towers.", "I am afraid of heights."]


def _prompts(n=3):
    rows = [{"prompt_id": f"p{i}", "persona": PERSONA, "knowledge": [],
             "history": [{"role": "user", "content": f"What is tower {i}?"}]} for i in range(n)]
    return pa.Table.from_pylist(rows)


# -- requests ----------------------------------------------------------------------------------
def test_requests_are_prompts_times_samples_with_contract_ids():
    t = build_requests(_prompts(3), generator="g", samples=2, template="persobench-json-v1", word_limit=50, seed=0)
    assert t.num_rows == 6
    rows = t.to_pylist()
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [(f"p{i}", k) for i in range(3) for k in range(2)]
    assert all(r["candidate_id"] == contracts.candidate_id(r["prompt_id"], "g", r["sample_index"]) for r in rows)
    assert rows[0]["messages"] == build_messages(_prompts(1).to_pylist()[0], "persobench-json-v1", 50)
    assert {r["template"] for r in rows} == {"persobench-json-v1"}
    assert t.column("candidate_id").to_pylist() == planned_ids(["p0", "p1", "p2"], "g", 2)


def test_each_sample_has_its_own_stable_seed():
    a = build_requests(_prompts(3), generator="g", samples=3, template="plain-v1", word_limit=50, seed=7)
    b = build_requests(_prompts(3).slice(1), generator="g", samples=3, template="plain-v1", word_limit=50, seed=7)
    seeds = a.column("seed").to_pylist()
    assert len(set(seeds)) == 9                        # samples of one prompt differ
    assert seeds[3:] == b.column("seed").to_pylist()   # independent of the batch a prompt lands in
    assert sample_seed(8, "p0", "g", 0) != seeds[0]
    assert build_requests(_prompts(1), generator="g", samples=1, template="plain-v1", word_limit=5,
                          seed=None).column("seed").to_pylist() == [None]


def test_finished_candidates_and_other_prompts_are_skipped():
    done = {contracts.candidate_id("p1", "g", 0)}
    t = build_requests(_prompts(3), generator="g", samples=2, template="plain-v1", word_limit=50, seed=0,
                       skip_ids=done, only_prompts=frozenset({"p1", "p2"}))
    assert [(r["prompt_id"], r["sample_index"]) for r in t.to_pylist()] == [("p1", 1), ("p2", 0), ("p2", 1)]
    empty = build_requests(_prompts(1), generator="g", samples=1, template="plain-v1", word_limit=5, seed=0,
                           skip_ids={contracts.candidate_id("p0", "g", 0)})
    assert empty.num_rows == 0 and empty.schema.names == t.schema.names


# -- candidate rows ----------------------------------------------------------------------------
def _keys(n, template="persobench-json-v1"):
    return {"candidate_id": [f"c{i}" for i in range(n)], "prompt_id": [f"p{i}" for i in range(n)],
            "generator": ["g"] * n, "sample_index": [0] * n, "template": [template] * n}


def test_candidate_rows_keep_raw_parse_and_errors():
    raw = ['{"response": "Hi there."}', 'Sure! "response": "Hello friend...', "nothing useful", None]
    err = [None, None, None, "RateLimitError: rate limited"]
    t = candidates.candidate_rows(_keys(4), raw, err, [5, 9, 3, None], [20, 20, 20, None], [0.5, 0.4, 0.3, 7.0],
                                  [1e-5, 1e-5, 1e-5, None], ["stop", "length", "stop", None])
    assert t.schema == candidates.SCHEMA
    assert contracts.conform(t, contracts.CANDIDATES).schema.names[:len(contracts.CANDIDATES)] == contracts.CANDIDATES.names
    r = t.to_pylist()
    assert (r[0]["text"], r[0]["parse_status"], r[0]["parse_ok"], r[0]["error"]) == ("Hi there.", "valid", True, None)
    assert (r[1]["text"], r[1]["parse_status"], r[1]["parse_ok"]) == ("Hello friend", "fallback", False)
    assert r[1]["raw"] == raw[1] and r[1]["error"]   # exact raw output kept; the parser's reason recorded
    assert (r[2]["text"], r[2]["parse_status"]) == (None, "unusable")
    assert (r[3]["raw"], r[3]["text"], r[3]["parse_status"], r[3]["error"]) == (None, None, "error", err[3])
    assert r[3]["n_tokens"] is None and r[3]["latency_s"] == 7.0


def test_plain_template_uses_the_plain_parser():
    t = candidates.candidate_rows(_keys(1, "plain-v1"), ["User2: Hello!"], [None], [3], [9], [0.1], [None], ["stop"])
    assert t.column("text").to_pylist() == ["Hello!"] and t.column("parse_status").to_pylist() == ["fallback"]


def test_vllm_rows_including_the_ones_the_engine_rejected():
    batch = pa.Table.from_pylist([
        {**{k: v[0] for k, v in _keys(1).items()}, "generated_text": '{"response": "ok"}', "num_generated_tokens": 40,
         "num_input_tokens": 100, "time_taken_llm": 1.5, "max_tokens": 40, "__inference_error__": ""},
        {**{k: v[0] for k, v in _keys(1).items()}, "generated_text": '{"response": "fine"}', "num_generated_tokens": 12,
         "num_input_tokens": 100, "time_taken_llm": 1.5, "max_tokens": 40, "__inference_error__": ""},
        # Error rows bypass the processor's postprocess: extra columns, -1 for unknown numbers.
        {**{k: v[0] for k, v in _keys(1).items()}, "generated_text": "", "num_generated_tokens": 0,
         "num_input_tokens": 0, "time_taken_llm": -1, "max_tokens": None,
         "__inference_error__": "ValueError: prompt is longer than max_model_len", "prompt": "long..."},
    ])
    r = candidates.from_vllm(batch).to_pylist()
    assert [x["finish_reason"] for x in r] == ["length", "stop", None]
    assert [x["parse_status"] for x in r] == ["valid", "valid", "error"]
    assert r[2]["raw"] is None and "max_model_len" in r[2]["error"] and r[2]["latency_s"] is None
    assert r[0]["n_tokens"] == 40 and r[0]["prompt_tokens"] == 100


def test_api_rows():
    batch = pa.Table.from_pylist([{**{k: v[0] for k, v in _keys(1).items()}, "api_text": '{"response": "yo"}',
                                   "api_error": None, "api_completion_tokens": 4, "api_prompt_tokens": 30,
                                   "api_latency_s": 0.2, "api_cost_usd": 3e-5, "api_finish_reason": "stop"}])
    r = candidates.from_api(batch).to_pylist()[0]
    assert (r["text"], r["n_tokens"], r["prompt_tokens"], r["cost_usd"]) == ("yo", 4, 30, 3e-5)


# -- configuration -----------------------------------------------------------------------------
def test_generators_from_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("generate:\n  generators:\n"
                 "    - {name: a, backend: vllm, model: tiny:llama, samples: 2, vllm: {batch_size: 8}}\n"
                 "    - {name: b, backend: api, model: openai/x, api: {api_base: 'http://h/v1', rpm: 60}}\n")
    cfg = load_config(p, ["generate.generators.1.api.concurrency=3", "generate.generators.0.sampling.temperature=0"])
    a, b = cfg.generate.generators
    assert a.vllm_options.batch_size == 8 and a.sampling.temperature == 0 and a.samples == 2
    ep = b.endpoint()
    assert (ep.model, ep.api_base, ep.rpm, ep.concurrency) == ("openai/x", "http://h/v1", 60, 3)


@pytest.mark.parametrize("gens, match", [
    ([{"name": "a", "backend": "vllm", "model": "m"}, {"name": "a", "backend": "vllm", "model": "n"}], "unique"),
    ([{"name": "a", "backend": "api", "model": "gpt-4o"}], "provider prefix"),
    ([{"name": "a", "backend": "vllm", "model": "m", "api": {"rpm": 5}}], "'api' options on a vllm"),
    ([{"name": "a", "backend": "vllm", "model": "m", "template": "nope"}], "unknown prompt template"),
    ([{"name": "a b", "backend": "vllm", "model": "m"}], "pattern"),
])
def test_bad_generator_configs_name_the_key(tmp_path, gens, match):
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"generate": {"generators": gens}}))
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert "generate.generators" in str(e.value)


def test_api_sampling_is_folded_into_request_params_and_explicit_params_win():
    from persodpo.generate.api_backend import endpoint

    gen = GeneratorConfig(name="a", backend="api", model="openai/x",
                          sampling={"temperature": 0.2, "stop": ["\n\n"]}, api={"params": {"temperature": 0.9}})
    ep = endpoint(gen, "persobench-json-v1", 110)
    assert ep.params["temperature"] == 0.9 and ep.params["stop"] == ["\n\n"]
    assert ep.params["max_tokens"] == max_new_tokens("persobench-json-v1", 110)


def test_vllm_processor_config_on_cpu_and_gpu():
    from persodpo.generate import vllm_backend

    gen = GeneratorConfig(name="a", backend="vllm", model="m",
                          vllm={"batch_size": 8, "max_model_len": 512, "cpu_kv_cache_gb": 2, "concurrency": [1, 3]})
    cpu = vllm_backend.processor_config(gen, "/models/m", "cpu")
    assert [(b["CPU"], b.get("GPU", 0)) for b in cpu.placement_group_config["bundles"]] == [(1.0, 0)]
    assert cpu.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert cpu.engine_kwargs["enforce_eager"] is True and cpu.engine_kwargs["max_model_len"] == 512
    # seeded requests on vllm-cpu: whole-prompt prefill (see vllm_backend.engine_kwargs)
    assert cpu.engine_kwargs["enable_chunked_prefill"] is False
    # one step prefills at most one whole prompt, in fp32 (vLLM's auto = bf16, emulated without AVX-512)
    assert cpu.engine_kwargs["max_num_batched_tokens"] == 512 and cpu.engine_kwargs["dtype"] == "float32"
    assert (cpu.batch_size, cpu.concurrency, cpu.should_continue_on_error) == (8, (1, 3), True)
    assert cpu.chat_template_stage is False and cpu.tokenize_stage is False and cpu.detokenize_stage is False

    gen = GeneratorConfig(name="a", backend="vllm", model="m",
                          vllm={"tensor_parallel_size": 2, "accelerator_type": "H100", "chat_template": "ray_stage",
                                "engine_kwargs": {"enable_prefix_caching": True}})
    gpu = vllm_backend.processor_config(gen, "org/model", "gpu")
    assert [(b["CPU"], b["GPU"]) for b in gpu.placement_group_config["bundles"]] == [(1.0, 1)] * 2
    assert gpu.accelerator_type == "H100" and gpu.engine_kwargs["tensor_parallel_size"] == 2
    assert gpu.engine_kwargs["enforce_eager"] is False and "enable_chunked_prefill" not in gpu.engine_kwargs
    assert gpu.engine_kwargs["dtype"] == "auto"
    assert gpu.engine_kwargs["enable_prefix_caching"] is True and gpu.chat_template_stage is True


# -- prompts input and resume bookkeeping ------------------------------------------------------
def _write_output(uri, tables):
    out = st.StageOutput(uri).begin()
    for t in tables:
        out.write_table(t)
    out.commit({})


def test_prompt_ids_are_checked(tmp_path):
    from persodpo.generate.stage import load_prompt_ids

    _write_output(str(tmp_path / "ok"), [_prompts(3)])
    assert load_prompt_ids(str(tmp_path / "ok"), None, None) == ["p0", "p1", "p2"]
    assert load_prompt_ids(str(tmp_path / "ok"), None, 2) == ["p0", "p1"]
    _write_output(str(tmp_path / "dup"), [_prompts(2), _prompts(1)])
    with pytest.raises(InputError, match="record p0: field 'prompt_id': duplicate"):
        load_prompt_ids(str(tmp_path / "dup"), None, None)
    _write_output(str(tmp_path / "nohist"), [_prompts(2).drop_columns(["history"])])
    with pytest.raises(InputError, match="field 'history'"):
        load_prompt_ids(str(tmp_path / "nohist"), None, None)
    bad = _prompts(2).to_pylist()
    bad[1]["persona"] = None
    _write_output(str(tmp_path / "null"), [pa.Table.from_pylist(bad)])
    with pytest.raises(InputError, match="record p1: field 'persona': missing value"):
        load_prompt_ids(str(tmp_path / "null"), None, None)


def _cands(ids_status):
    keys = {"candidate_id": [i for i, _ in ids_status], "prompt_id": ["p"] * len(ids_status),
            "generator": ["g"] * len(ids_status), "sample_index": [0] * len(ids_status),
            "template": ["plain-v1"] * len(ids_status)}
    raw = [None if s == "error" else "hello" for _, s in ids_status]
    err = ["boom" if s == "error" else None for _, s in ids_status]
    n = len(ids_status)
    return candidates.candidate_rows(keys, raw, err, [1] * n, [1] * n, [0.1] * n, [None] * n, ["stop"] * n)


def test_resume_keeps_finished_parts_and_retries_failed_rows(tmp_path):
    from persodpo.generate import stage

    out_uri = str(tmp_path / "cands")
    cfg = load_config(None, [f"generate.output={out_uri}", "generate.input=x"])
    out, done, nxt = stage.open_output(cfg)
    assert (done, nxt) == ({}, 0)
    out.write_table(_cands([("c1", "ok"), ("c2", "ok")]), name="part-00000.parquet")
    out.write_table(_cands([("c3", "ok"), ("c4", "error")]), name="part-00001.parquet")
    out.write_table(_cands([("c5", "error")]), name="part-00002.parquet")
    (tmp_path / "cands" / "part-00003.parquet.tmp").write_bytes(b"half a part")
    # ... and the process dies here: no manifest, no _SUCCESS.

    again = load_config(None, [f"generate.output={out_uri}", "generate.input=x", "generate.rows_per_part=7"])
    out, done, nxt = stage.open_output(again)
    assert set(done) == {"c1", "c2", "c3"} and nxt == 3
    assert sorted(out.parts) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(tmp_path / "cands" / "part-00001.parquet").column("candidate_id").to_pylist() == ["c3"]
    assert not (tmp_path / "cands" / "part-00002.parquet").exists()
    assert not (tmp_path / "cands" / "part-00003.parquet.tmp").exists()

    other = load_config(None, [f"generate.output={out_uri}", "generate.input=x", "generate.word_limit=20"])
    out, done, nxt = stage.open_output(other)   # another configuration: never mixed with the old rows
    assert (done, nxt, out.parts) == ({}, 0, []) and not list((tmp_path / "cands").glob("part-*"))


def test_config_defaults_run_offline():
    g = GenerateConfig()
    assert g.generators[0].model == "packaged:smollm2-135m-instruct" and g.template == "persobench-json-v1"


def test_only_whole_useful_tables_are_committed():
    from persodpo.errors import StageError
    from persodpo.generate.stage import check_complete

    ok = {"rows": 3, "first_error": {}, "per_generator": {"a": {"rows": 2, "errors": 1}, "b": {"rows": 1, "errors": 0}}}
    check_complete({"a": 2, "b": 1}, ok)
    with pytest.raises(StageError, match="missing.*'b': 1"):
        check_complete({"a": 2, "b": 2}, ok)
    dead = {"rows": 2, "first_error": {"a": "AuthenticationError: bad key"},
            "per_generator": {"a": {"rows": 2, "errors": 2}}}
    with pytest.raises(StageError, match="every request failed.*AuthenticationError"):
        check_complete({"a": 2}, dead)
