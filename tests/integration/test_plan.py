"""`persodpo plan` before a run, then the run: the plan's request counts equal what the loopback
generator and judge servers received, and its cost bounds what they billed (completions at
max_tokens). Nothing is sent while planning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
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

        # A pilot on 2 prompts (real requests, its own run folder) calibrates reply tokens and time;
        # planned with pairs and train, it builds the pilot's pairs too, and train's compute on H100s.
        piloted = _cli("plan", "--config", str(path), "--pilot", "2", "--accelerator", "H100",
                       "--set", "run.stages=[ingest, generate, score, pairs, train]")
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
    # train: the pilot's pairs (of the kinds train keeps) per prompt, scaled to the run's prompts;
    # GPU-hours from the tiny model's FLOPs over an H100 at the default MFU; no pilot: unknown
    import pyarrow.compute as pc

    from persodpo.train.compute import DEFAULT_MFU

    pilot_pairs = st.read_table(str(tmp_path / "root" / "runs" / "planned-pilot" / "pairs"), columns=["pair_type"])
    kept = pc.sum(pc.is_in(pilot_pairs.column("pair_type"),
                           value_set=pa.array(cfg["train"].get("pair_types", ["content", "format"])))).as_py()
    train, n_prompts = calibrated["train"], plan["generate"]["rows"] // 3          # a: 2 samples, b: 1
    # (echo replies of 2 prompts make few pairs, maybe none: the arithmetic is tested below)
    assert train["rows"] == round((kept or 0) / 2 * n_prompts), (kept, train)
    assert train["detail"]["accelerator"] == "H100" and train["detail"]["mfu"] == DEFAULT_MFU
    assert train["gpu_hours"] is not None and train["wall_s"] is not None
    assert "train" not in plan                                          # not among the run's stages
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


def test_train_is_planned_from_the_pilots_pairs_the_models_size_and_the_accelerator(tmp_path):
    """Realistic FoCus pairs (the bundled sample, the real prompt template) as a pilot's pairs output:
    pairs per prompt scale to the run, tokens come from the model's tokenizer cut at max_length,
    FLOPs from its config.json, GPU-hours over the accelerator's peak."""
    from persodpo.config import load_config
    from persodpo.models import resolve_model
    from persodpo.plan import plan_train
    from persodpo.train.compute import dpo_flops, gpu_hours
    from persodpo.train.memory import model_shape
    from persodpo.train.synthetic import focus_pairs, write_pairs
    from persodpo.train.zero import count_parameters

    table = focus_pairs(shifts=(1, 2))                                  # 2 pairs per prompt
    n_pilot = len(set(table.column("prompt_id").to_pylist()))
    pilot = {"prompts": n_pilot, "pairs": {"n_pairs": table.num_rows, "by_pair_type": {"content": table.num_rows},
                                           "output": write_pairs(str(tmp_path / "pairs"), table)}}
    cfg = load_config(None, ["train.model=tiny:llama", "train.max_length=128", "train.num_workers=2",
                             "train.max_steps=10", "train.per_device_batch_size=2",
                             "train.gradient_accumulation_steps=2"])
    p = plan_train(cfg, 10 * n_pilot, pilot, accelerator="A100")
    assert p.rows == 2 * 10 * n_pilot
    d = p.detail
    # FoCus prompts are hundreds of tokens: every sequence is cut at max_length, both sides
    assert d["tokens_per_pair"] == 2 * 128
    assert d["epochs"] == pytest.approx(10 * 2 * 2 * 2 / p.rows) and d["optimizer_steps"] == 10
    n, _ = count_parameters(resolve_model("tiny:llama"))
    want = dpo_flops(n_params=n, trainable=n, shape=model_shape(resolve_model("tiny:llama")),
                     tokens=p.rows * 256, seq_len=128, epochs=d["epochs"])
    assert d["parameters"] == n and d["flops"] == pytest.approx(want, rel=1e-3)
    assert p.gpu_hours == pytest.approx(gpu_hours(want, "A100"), rel=1e-3, abs=1e-4)
    assert p.wall_s == pytest.approx(p.gpu_hours * 3600 / 2, abs=0.1)
    # no cap on length: longer sequences, more tokens
    longer = plan_train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_length": None})}),
                        10 * n_pilot, pilot, accelerator="A100")
    assert longer.detail["tokens_per_pair"] > 2 * 128
    # adapters only: a cheaper backward
    lora = cfg.model_copy(deep=True)
    lora.train.lora.enabled = True
    assert plan_train(lora, 10 * n_pilot, pilot, accelerator="A100").detail["flops"] < d["flops"]
    # an accelerator it has no peak for, or none named: unknown with the reason, never a guess
    assert plan_train(cfg, 10 * n_pilot, pilot, accelerator="MI300X").gpu_hours is None
    none = plan_train(cfg, 10 * n_pilot, pilot)
    assert none.gpu_hours is None and "--accelerator" in none.unknown["gpu_hours"]
