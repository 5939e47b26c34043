"""Iterative DPO, the pure parts: each round's configuration (paths, the policy generator, prompt
slices, reference), the checks that refuse rounds that cannot work, on-policy pairs, and the
per-round table."""

from __future__ import annotations

import pandas as pd
import pytest

from persodpo.check import rounds_checks
from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.pairs.config import PairsConfig, PersoDPORecipeConfig
from persodpo.pairs.recipes import persodpo
from persodpo.pipeline import wire
from persodpo.rounds.report import rounds_table
from persodpo.rounds.wiring import first_round, prompt_slice, round_config
from tests.unit.test_pairs_recipes import make_inputs, pairs_of

TINY = "jobs/configs/tiny.yaml"


def _round(k: int, *sets: str):
    cfg = first_round(wire(load_config(TINY, ["run.rounds=3", "run.root=/r", *sets])))
    return cfg, round_config(cfg, k, previous_model=f"/r/runs/tiny/{'' if k == 2 else f'round-{k - 1}/'}train",
                             original_model="tiny:llama")


def test_round_two_reads_round_one_prompts_and_writes_under_its_own_directory():
    first, r2 = _round(2)
    assert r2.ingest.output == first.ingest.output == "/r/runs/tiny/ingest"
    assert r2.generate.input == r2.score.prompts == r2.pairs.prompts == r2.evaluate.prompts == first.generate.input
    for stage in ("generate", "score", "pairs", "train", "evaluate"):
        assert getattr(r2, stage).output == f"/r/runs/tiny/round-2/{stage}"
    assert (r2.score.input, r2.pairs.input, r2.train.input, r2.evaluate.input) == (
        "/r/runs/tiny/round-2/generate", "/r/runs/tiny/round-2/score", "/r/runs/tiny/round-2/pairs",
        "/r/runs/tiny/round-2/train")


def test_the_policy_is_the_previous_round_model_and_training_starts_from_it():
    _, r3 = _round(3)
    [policy] = r3.generate.generators                  # keep_generators is off: the policy alone
    assert (policy.name, policy.samples, policy.backend) == ("policy", 3, "api")
    assert policy.api.api_base == "local:/r/runs/tiny/round-2/train"   # tiny.yaml: policy_engine transformers
    assert policy.sampling.max_tokens == 32 and policy.sampling.temperature == 1.0
    assert r3.train.model == "/r/runs/tiny/round-2/train" and r3.train.ref_model is None
    assert r3.pairs.persodpo.on_policy and r3.pairs.persodpo.policy_generator == "policy"
    assert not r3.evaluate.include_base and r3.generate.reuse_from == []
    _, orig = _round(2, "rounds.reference=original")
    assert orig.train.ref_model == "tiny:llama"


def test_a_vllm_policy_takes_the_vllm_options_of_the_configured_generators():
    cfg = first_round(wire(load_config("jobs/configs/iterative.yaml")))
    r2 = round_config(cfg, 2, previous_model="s3://b/p/models/rounds/train-x", original_model=cfg.train.model)
    [policy] = r2.generate.generators
    assert policy.backend == "vllm" and policy.model == "s3://b/p/models/rounds/train-x"
    assert policy.vllm.accelerator_type == "A10G" and policy.samples == 4


def test_kept_generators_reuse_round_one_candidates():
    first, r2 = _round(2, "rounds.keep_generators=true")
    assert [g.name for g in r2.generate.generators] == ["policy", "tiny-api"]
    assert r2.generate.reuse_from == [first.generate.output]
    assert r2.score.panel.cache == "/r/runs/tiny/score.judge-cache"       # round 1's: reused replies are hits


def test_fresh_prompts_are_disjoint_slices_same_prompts_are_not():
    cfg = load_config(TINY, ["run.rounds=3", "rounds.prompts=fresh", "rounds.prompts_per_round=5"])
    assert [prompt_slice(cfg, k) for k in (1, 2, 3)] == [(0, 5), (5, 5), (10, 5)]
    assert first_round(cfg).generate.max_prompts == 5
    same = load_config(TINY, ["run.rounds=3"])
    assert [prompt_slice(same, k) for k in (1, 2, 3)] == [(0, None)] * 3
    assert first_round(same) == same


@pytest.mark.parametrize("sets, key", [
    (["rounds.prompts=fresh"], "rounds.prompts_per_round"),
    (["pairs.recipe=simple"], "pairs.recipe"),
    (["run.stages=[ingest, generate, score, pairs]"], "run.stages"),
    (["rounds.keep_generators=true", "rounds.policy_name=tiny-api"], "rounds.policy_name"),
    (["pairs.persodpo.off_policy_share=0.3"], "rounds.keep_generators"),
    (["train.lora.enabled=true", "rounds.reference=original"], "rounds.reference"),
])
def test_rounds_that_cannot_work_are_refused_naming_the_key(sets, key):
    from persodpo.check import raise_on_problems

    cfg = load_config(TINY, ["run.rounds=2", *sets])
    [check] = rounds_checks(cfg)
    assert not check.ok and check.key == key
    with pytest.raises(ConfigError) as err:
        raise_on_problems(cfg)
    assert err.value.key == key
    assert rounds_checks(load_config(TINY, sets[:0])) == []   # one round: nothing to check


def _policy_pool():
    # p1: the policy's 3 samples score 0.9 / 0.5 / 0.1; two other generators score 1.0 and 0.0.
    rows = [{"id": f"p1-pol-{i}", "prompt": "p1", "gen": "policy", "m": m} for i, m in enumerate((0.9, 0.5, 0.1))]
    rows += [{"id": "p1-big", "prompt": "p1", "gen": "big", "m": 1.0}, {"id": "p1-small", "prompt": "p1",
                                                                          "gen": "small", "m": 0.0}]
    rows += [{"id": f"p2-pol-{i}", "prompt": "p2", "gen": "policy", "m": m} for i, m in enumerate((0.2, 0.8))]
    rows += [{"id": "p2-big", "prompt": "p2", "gen": "big", "m": 0.9}, {"id": "p2-small", "prompt": "p2",
                                                                          "gen": "small", "m": 0.1}]
    return make_inputs(rows)


def _rc(**kw):
    return PersoDPORecipeConfig(weights={"m": 1.0}, normalize="prompt-minmax", selection="best-worst",
                                min_margin=0.1, max_pairs_per_prompt=1, balance_length=False, **kw)


def test_on_policy_pairs_are_best_vs_worst_of_the_policy_samples_only():
    pool = _policy_pool()
    off = persodpo.run(pool, _rc(), PairsConfig())
    assert pairs_of(pool, off) == {("p1-big", "p1-small"), ("p2-big", "p2-small")}   # all candidates compete
    on = persodpo.run(pool, _rc(on_policy=True), PairsConfig())
    assert pairs_of(pool, on) == {("p1-pol-0", "p1-pol-2"), ("p2-pol-1", "p2-pol-0")}
    assert on.stats["on_policy"] == {"policy_generator": "policy", "n_policy_candidates": 5, "n_content_pairs": 2,
                                     "n_format_pairs": 0, "off_policy_share": 0.0, "n_off_policy_pairs": 0}
    # Scores are normalised among the policy's samples: its best is 1, its worst 0 (min-max).
    assert on.scores[pool["candidate_id"].eq("p1-pol-0").to_numpy()].iloc[0] == pytest.approx(1.0)
    assert on.scores[pool["generator"].ne("policy").to_numpy()].isna().all()


def test_an_off_policy_share_mixes_in_the_widest_margin_pairs_of_the_others():
    pool = _policy_pool()
    mixed = persodpo.run(pool, _rc(on_policy=True, off_policy_share=1 / 3), PairsConfig())
    # share 1/3 of 2 on-policy pairs -> floor(1/3 * 2 / (2/3)) = 1 off-policy pair: the larger margin
    # (p1: big 1.0 vs small 0.0 -> 1.0 after min-max; p2: 0.9 vs 0.1 -> also 1.0, tie broken by position).
    got = pairs_of(pool, mixed)
    assert {("p1-pol-0", "p1-pol-2"), ("p2-pol-1", "p2-pol-0")} <= got and len(got) == 3
    assert mixed.stats["on_policy"]["n_off_policy_pairs"] == 1
    assert len(got - {("p1-pol-0", "p1-pol-2"), ("p2-pol-1", "p2-pol-0")} & {("p1-big", "p1-small"),
                                                                             ("p2-big", "p2-small")}) == 1


def test_no_policy_candidates_means_no_on_policy_pairs():
    rows = [{"id": "a", "prompt": "p", "gen": "big", "m": 1.0}, {"id": "b", "prompt": "p", "gen": "small", "m": 0.0}]
    pool = make_inputs(rows)
    res = persodpo.run(pool, _rc(on_policy=True), PairsConfig())
    assert len(res.selection) == 0 and res.stats["on_policy"]["n_policy_candidates"] == 0


def test_the_rounds_table_has_the_base_then_every_round():
    def table(models: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame([{"model": m, "n": 4, "error_ratio": 0.0, "format_failure_ratio": 0.25,
                              "unusable_ratio": 0.0, "mean_words": 10.0 + v, "ref_chrf": v, "ref_chrf_ci95": 0.1,
                              "ref_chrf_n": 4} for m, v in models.items()])

    t = rounds_table([(1, table({"base": 1.0, "dpo": 2.0})), (2, table({"dpo": 3.0})), (3, table({"dpo": 4.0}))],
                     base_name="base", trained_name="dpo")
    assert list(t["round"]) == [0, 1, 2, 3] and list(t["model"]) == ["base", "round-1", "round-2", "round-3"]
    assert list(t["ref_chrf"]) == [1.0, 2.0, 3.0, 4.0] and list(t["mean_words"]) == [11.0, 12.0, 13.0, 14.0]
    assert "unusable_ratio" not in t.columns
