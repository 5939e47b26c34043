"""`persodpo plan` before a run, then the run: the plan's request counts equal what the loopback
generator and judge servers received, and its cost bounds what they billed (completions at
max_tokens). Nothing is sent while planning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.openai_server import OpenAIServer, echo_json

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}


def judge_responder(messages, body):
    return json.dumps({"score": 1 + (sum(map(ord, messages[-1]["content"])) % 5)})


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "persodpo", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]


def test_the_plan_counts_the_requests_the_run_sends_and_bounds_its_cost(ray_local, tmp_path):
    with OpenAIServer(echo_json(), latency_s=0.1) as gen, OpenAIServer(judge_responder) as judge:
        cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
        cfg["run"] = {"root": str(tmp_path / "root"), "run_id": "planned", "stages": ["ingest", "generate", "score"]}
        # The pilot and the run join the session's Ray, as `ray job submit` drivers join a cluster.
        cfg["ray"] = {"address": ray_local.get_runtime_context().gcs_address, "progress_bars": False}
        cfg["generate"]["generators"] = [
            {"name": "a", "backend": "api", "model": "openai/gen-a", "samples": 2, "sampling": {"max_tokens": 24},
             "api": {"api_base": gen.api_base, "max_in_flight": 4, "batch_size": 4, **PRICES}},
            {"name": "b", "backend": "api", "model": "openai/gen-b", "samples": 1, "sampling": {"max_tokens": 24},
             "api": {"api_base": gen.api_base, "max_in_flight": 4, "batch_size": 4, **PRICES}}]
        # A judge that skips its own generator, but audits a sample of it: counted as the run counts.
        cfg["score"]["judges"] = [{"name": "j", "model": "openai/judge", "api_base": judge.api_base,
                                   "generator": "a", "max_retries": 0, **PRICES}]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))

        lines = _cli("run", "--dry-run", "--config", str(path))                # persodpo plan's, nothing run
        assert gen.stats["requests"] == judge.stats["requests"] == 0          # planning sends nothing
        plan = {p["stage"]: p for p in lines[:-1]}
        total = lines[-1]["total"]
        assert lines[-1]["dry_run"] and lines[-1]["command"] == "run"
        assert not (tmp_path / "root" / "runs").exists()                       # and writes nothing there

        # A pilot on 2 prompts (real requests, its own run folder) calibrates reply tokens and time.
        piloted = _cli("plan", "--config", str(path), "--pilot", "2")
        assert gen.stats["requests"] == 2 * 3                                  # 2 prompts x 3 samples
        assert (tmp_path / "root" / "runs" / "planned-pilot" / "score" / "_SUCCESS").exists()
        assert not (tmp_path / "root" / "runs" / "planned").exists()

        g0, j0 = gen.stats["requests"], judge.stats["requests"]
        run = _cli("run", "--config", str(path))[-1]
        assert run["ok"], run
        gen_sent, judge_sent = gen.stats["requests"] - g0, judge.stats["requests"] - j0
    calibrated = {p["stage"]: p for p in piloted[:-1]}
    for stage in ("generate", "score"):                                        # counts stay exact
        assert calibrated[stage]["requests"] == plan[stage]["requests"], stage
    from persodpo import storage as st

    replies = st.read_table(str(tmp_path / "root" / "runs" / "planned" / "generate"), columns=["n_tokens"])
    measured = sum(replies.column("n_tokens").to_pylist())
    # echo replies are far shorter than max_tokens: the bound is loose, the calibration close
    assert measured < 0.8 * plan["generate"]["completion_tokens"]
    assert abs(calibrated["generate"]["completion_tokens"] - measured) <= 0.25 * measured, (calibrated, measured)
    assert calibrated["generate"]["cost_usd"] < plan["generate"]["cost_usd"]
    pilot_a = calibrated["generate"]["detail"]["a"]["pilot"]
    assert pilot_a["requests"] == 4 and pilot_a["error_share"] == 0 and pilot_a["latency_s"] >= 0.1
    assert calibrated["generate"]["wall_s"] > 0 and calibrated["score"]["wall_s"] > 0
    assert piloted[-1]["total"]["detail"]["pilot"]["prompts"] == 2
    print(f"\nplan: completion tokens bound {plan['generate']['completion_tokens']}, after a 2-prompt pilot "
          f"{calibrated['generate']['completion_tokens']}, the run's {measured}; cost bound "
          f"{plan['generate']['cost_usd']:.6f}, piloted {calibrated['generate']['cost_usd']:.6f}, billed "
          f"{run['stages']['generate']['cost_usd']:.6f} USD")
    assert plan["generate"]["requests"] == gen_sent
    assert plan["generate"]["detail"]["a"]["requests"] == 2 * plan["generate"]["detail"]["b"]["requests"]
    assert plan["score"]["requests"] == judge_sent
    assert plan["score"]["requests"] < 2 * plan["generate"]["rows"]             # own-generator skips counted
    billed = run["stages"]["generate"]["cost_usd"] + run["stages"]["score"]["judges"]["j"]["cost_usd"]
    assert 0 < billed <= total["cost_usd"]
    assert total["requests"] == gen_sent + judge_sent
