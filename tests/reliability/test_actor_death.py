"""Actor death mid-stage: the process of a generation actor (litellm API pool) and of a judge actor
is killed with SIGKILL while it has requests in flight. Ray restarts the actor and retries its
task (Ray Data's actor pools: max_restarts / max_task_retries); the stage completes with every row
exactly once and nothing recorded as failed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.generate.config import GeneratorConfig
from persodpo.generate.requests import planned_ids
from tests.support.openai_server import OpenAIServer, echo_json
from tests.support.procs import descendants_titled
from tests.support.score_data import make_candidates, write_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("actor-death") / "prompts")
    assert main(["ingest", "--output", uri]) == 0
    return uri


def _session_workers(ray_local, title: str) -> list[psutil.Process]:
    """Worker processes of *this* session's raylet whose process title starts with ``title``
    (other Ray sessions on the machine are left alone)."""
    node = ray_local._private.worker._global_node
    return descendants_titled([p.process.pid for p in node.all_processes.get("raylet", [])], title)


def _kill_one_when(ray_local, title: str, ready, deadline_s: float = 240) -> int:
    """SIGKILL one matching actor process once ``ready()``; returns its pid."""
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        procs = _session_workers(ray_local, title)
        if procs and ready():
            procs[0].send_signal(signal.SIGKILL)
            return procs[0].pid
        time.sleep(0.1)
    raise AssertionError(f"no {title} process to kill within {deadline_s} s")


def _in_thread(fn, cfg):
    box: dict = {}

    def run():
        try:
            box["summary"] = fn(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_a_killed_api_generation_actor_loses_and_duplicates_nothing(ray_local, prompts, tmp_path):
    from persodpo.generate.stage import run_stage

    out = tmp_path / "cands"
    with OpenAIServer(echo_json(), latency_s=0.25) as server:
        cfg = load_config(None, [f"generate.input={prompts}", f"generate.output={out}", "ray.progress_bars=false",
                                 "generate.rows_per_part=4"])
        cfg.generate.generators = [GeneratorConfig.model_validate(
            {"name": "api", "backend": "api", "model": "openai/loopback", "samples": 2,
             "api": {"api_base": server.api_base, "max_in_flight": 4, "batch_size": 4, "max_retries": 0}})]
        thread, box = _in_thread(run_stage, cfg)
        killed = _kill_one_when(ray_local, "ray::MapWorker(MapBatches(ApiBatchCaller",
                                lambda: server.stats["requests"] >= 10)
        thread.join(600)
        requests = server.stats["requests"]
    assert "error" not in box, box.get("error")
    summary = box["summary"]
    t = st.read_table(str(out))
    ids = t.column("candidate_id").to_pylist()
    expected = planned_ids([r["prompt_id"] for r in st.read_table(prompts).to_pylist()], "api", 2)
    assert len(ids) == len(set(ids)) == len(expected) == 80          # 0 duplicated
    assert set(ids) == set(expected)                                 # 0 lost
    assert summary["errors"] == 0 and "error" not in set(t.column("parse_status").to_pylist())
    assert killed and requests > 80     # the killed actor's in-flight requests were sent again
    print(json.dumps({"killed_pid": killed, "rows": len(ids), "requests": requests, "resent": requests - 80}))


def _judge_responder(messages, body):
    time.sleep(0.1)
    return json.dumps({"score": 1 + len(messages[-1]["content"]) % 5})


def test_a_killed_judge_actor_loses_and_duplicates_nothing(ray_local, prompts, tmp_path):
    from persodpo.score.stage import run_stage

    table = st.read_table(prompts)
    cands = write_output(str(tmp_path / "cands"), make_candidates(table, ["gold", "chatty"]))
    out = str(tmp_path / "scores")
    with OpenAIServer(responder=_judge_responder) as server:
        cfg = load_config(None, [f"score.input={cands}", f"score.prompts={prompts}", f"score.output={out}",
                                 "score.metrics=[length]", "ray.progress_bars=false", "score.panel.cache=null"])
        cfg.score.judges = [{"name": "j1", "model": "openai/j1", "api_base": server.api_base, "max_retries": 0,
                             "timeout_s": 30, "max_in_flight": 4, "batch_size": 4, "constrained": "none"}]
        thread, box = _in_thread(run_stage, cfg)
        killed = _kill_one_when(ray_local, "ray::MapWorker(MapBatches(JudgeActor", lambda: server.stats["requests"] >= 20)
        thread.join(600)
        requests = server.stats["requests"]
    assert "error" not in box, box.get("error")
    summary = box["summary"]
    t = st.read_table(out)
    ids = t.column("candidate_id").to_pylist()
    n = st.read_table(cands).num_rows
    assert len(ids) == len(set(ids)) == n == 80
    for dim in ("coherence", "personalization"):
        col = t.column(f"judge_j1_{dim}").to_pylist()
        assert None not in col and set(col) <= {1.0, 2.0, 3.0, 4.0, 5.0}, dim
    j = summary["judges"]["j1"]
    assert j["ok"] == 2 * n and j["request_error"] == 0 and j["malformed"] == 0
    assert killed and requests >= 2 * n
    print(json.dumps({"killed_pid": killed, "rows": n, "judgments": 2 * n, "requests": requests,
                      "resent": requests - 2 * n}))
