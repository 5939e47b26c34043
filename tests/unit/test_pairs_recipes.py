"""Each recipe on small hand-made tables whose right pairs are worked out by hand (in comments)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from persodpo.pairs.config import (RECIPE_NAMES, LengthPriorConfig, PairsConfig, PersoConfig,
                                   PersoDPORecipeConfig, SimpleConfig)
from persodpo.pairs.pool import build_pool, family_of
from persodpo.pairs.recipes import get_recipe, paper, persodpo, recipe_names, simple


def words(n: int, w: str = "w") -> str:
    return " ".join([w] * n)


def make_inputs(rows: list[dict], metrics: tuple[str, ...] = ("m",), format_column: str | None = None):
    """rows: {id, prompt, status, text?, raw?, gen?, <metric>: value, format_ok?} -> the pool frame."""
    cands, scores = [], []
    for r in rows:
        status = r.get("status", "valid")
        text = r.get("text", None if status == "unusable" else f"reply {r['id']}")
        raw = r.get("raw", json.dumps({"response": text}) if status == "valid" else f'{{"response": "{text or ""}')
        cands.append({"candidate_id": r["id"], "prompt_id": r["prompt"], "generator": r.get("gen", "gen-a"),
                      "raw": raw, "text": text, "parse_ok": status == "valid", "parse_status": status,
                      "template": r.get("template")})
        s = {"candidate_id": r["id"]}
        for m in metrics:
            s[m] = r.get(m)
        if "format_ok" in r:
            s["format_ok"] = r["format_ok"]
        scores.append(s)
    cdf = pd.DataFrame(cands)
    sdf = pd.DataFrame(scores)
    for m in metrics:
        sdf[m] = sdf[m].astype("float64")
    return build_pool(cdf, sdf, metric_columns=metrics, format_column=format_column).pool


def pairs_of(pool: pd.DataFrame, result) -> set[tuple[str, str]]:
    ids = pool["candidate_id"].to_numpy()
    sel = result.selection
    return set(zip(ids[sel["chosen"].to_numpy()], ids[sel["rejected"].to_numpy()]))


def test_registry_matches_config_names():
    assert set(recipe_names()) == set(RECIPE_NAMES)
    for name in RECIPE_NAMES:
        r = get_recipe(name)
        assert hasattr(PairsConfig(), r.section)


def test_paper_defaults_are_the_authors_numbers():
    lp, pe = LengthPriorConfig(), PersoConfig()
    assert lp.weights == {"coh_unieval": 0.15, "c_score": 0.15, "ue_score": 0.15, "persona_distance": 0.15}
    assert (lp.length_prior_weight, lp.max_words) == (0.4, 110)
    assert pe.weights == {"coh_unieval": 0.14, "c_score": 0.20, "ue_score": 0.18, "persona_distance": 0.16}
    assert (pe.instructability_weight, pe.json_bonus) == (0.32, 0.3)
    for c in (lp, pe):
        assert c.worst_case == {"coh_unieval": 0.0, "c_score": -1.0, "ue_score": 0.0, "persona_distance": 0.0}
        assert (c.low_percentile, c.high_percentile) == (40, 60)


# -- paper-length-prior ----------------------------------------------------------------------------

def test_length_prior_by_hand():
    # One metric m (weight 0.6), worst case 0, LP weight 0.4, max 10 words.
    # Pool: a1 (m 1, 5 words), a2 (m .5, 10 w), a3 fallback (m -> 0, 2 w), b1 (m .75, 8 w);
    # a4 (unusable) and b2 (valid, null metric) are dropped. m is already 0..1 (min 0 from a3).
    # LP = 1 - w/10: .5, 0, .8, .2 -> score = .6 m + .4 LP: a1 .8, a2 .3, a3 .32, b1 .53.
    # Sorted .3 .32 .53 .8: p40 = .32 + .2*.21 = .362, p60 = .32 + .8*.21 = .488.
    # Chosen (>= .488): a1, b1. Rejected (<= .362): a2, a3. Per prompt: a1>a2, a1>a3; b1 alone.
    rows = [dict(id="a1", prompt="A", m=1.0, text=words(5)), dict(id="a2", prompt="A", m=0.5, text=words(10)),
            dict(id="a3", prompt="A", status="fallback", text=words(2)), dict(id="a4", prompt="A", status="unusable"),
            dict(id="b1", prompt="B", m=0.75, text=words(8)), dict(id="b2", prompt="B", m=None, text=words(3))]
    pool = make_inputs(rows)
    rc = LengthPriorConfig(weights={"m": 0.6}, worst_case={"m": 0.0}, max_words=10)
    res = paper.run_length_prior(pool, rc)
    assert pairs_of(pool, res) == {("a1", "a2"), ("a1", "a3")}
    th = res.stats["thresholds"]
    assert th["p40"] == pytest.approx(0.362) and th["p60"] == pytest.approx(0.488)
    by_id = dict(zip(pool["candidate_id"], res.scores))
    assert by_id["a1"] == pytest.approx(0.8) and by_id["a3"] == pytest.approx(0.32) and by_id["b1"] == pytest.approx(0.53)
    assert np.isnan(by_id["a4"]) and np.isnan(by_id["b2"])
    assert res.stats["n_dropped_unusable"] == 1 and res.stats["n_dropped_null_metric"] == 1
    assert res.stats["n_pool_fallback"] == 1
    sel = res.selection.sort_values("score_rejected")
    assert sel["score_chosen"].tolist() == pytest.approx([0.8, 0.8])
    assert sel["score_rejected"].tolist() == pytest.approx([0.3, 0.32])
    assert set(sel["pair_type"]) == {"content"} and not sel["rejected_raw"].any()


def test_minmax_uses_worst_case_and_a_constant_metric_normalises_to_zero():
    # c: valid .5 and 1, fallback -> -1 (worst): normalised (x+1)/2 -> .75, 1, 0.
    # k is constant (2, 2; worst case 2): normalised 0 everywhere, so it adds nothing.
    rows = [dict(id="x", prompt="P", c=0.5, k=2.0, text=words(20)), dict(id="y", prompt="P", c=1.0, k=2.0, text=words(20)),
            dict(id="z", prompt="P", status="fallback", text=words(20))]
    pool = make_inputs(rows, metrics=("c", "k"))
    rc = LengthPriorConfig(weights={"c": 1.0, "k": 5.0}, worst_case={"c": -1.0, "k": 2.0}, max_words=10)
    res = paper.run_length_prior(pool, rc)
    assert res.scores.tolist() == pytest.approx([0.75, 1.0, 0.0])  # LP = 0 (20 words > 10)
    assert res.stats["minmax"] == {"c": [-1.0, 1.0], "k": [2.0, 2.0]}


def test_paper_all_invalid_prompt_is_ranked_by_length_alone():
    # Only fallbacks: every metric is worst case, so the score is .4*LP: X1 (1 word) .36, X2 (9 words) .04.
    # p40 = .168, p60 = .232: X1 > X2, two failed outputs make a pair (the paper's flaw). Y: unusable only.
    rows = [dict(id="x1", prompt="X", status="fallback", text=words(1)),
            dict(id="x2", prompt="X", status="fallback", text=words(9)),
            dict(id="y1", prompt="Y", status="unusable")]
    pool = make_inputs(rows)
    res = paper.run_length_prior(pool, LengthPriorConfig(weights={"m": 0.6}, worst_case={"m": 0.0}, max_words=10))
    assert pairs_of(pool, res) == {("x1", "x2")}
    assert res.selection["score_chosen"].iloc[0] == pytest.approx(0.36)


def test_paper_ties_and_single_candidates_make_no_pair():
    # Every score equal: p40 == p60 == the score, so every output is on both sides; a pair with
    # itself or with an equal score teaches nothing and is dropped. S has a single candidate.
    rows = [dict(id=i, prompt=p, m=0.5, text=words(5)) for i, p in (("t1", "T"), ("t2", "T"), ("t3", "T"), ("s1", "S"))]
    pool = make_inputs(rows)
    res = paper.run_length_prior(pool, LengthPriorConfig(weights={"m": 0.6}, worst_case={"m": 0.0}, max_words=10))
    assert len(res.selection) == 0
    assert res.stats["thresholds"]["p40"] == res.stats["thresholds"]["p60"]
    assert res.stats["n_dropped_self_or_tie"] == 3 * 3 + 1


def test_paper_empty_pool():
    pool = make_inputs([dict(id="u", prompt="U", status="unusable")])
    res = paper.run_perso(pool, PersoConfig(weights={"m": 1.0}, worst_case={"m": 0.0}))
    assert len(res.selection) == 0 and res.stats["thresholds"] is None and res.stats["avg_words"] == 0


# -- paper-perso ------------------------------------------------------------------------------------

def test_json_bonus_rule():
    assert paper.json_bonus_fires('Here {"response": "hi"} ok')
    assert not paper.json_bonus_fires('{"response": "a"} {"response": "b"}')     # two matches
    assert not paper.json_bonus_fires('{"response": "a" oops}')                  # matches, not JSON
    assert not paper.json_bonus_fires('{"reply": "a"}')
    assert not paper.json_bonus_fires("I love lighthouses, and you work at one!")  # an extracted reply


def test_perso_by_hand():
    # m is constant (normalises to 0), so score = .32*I. Words 4, 6, 9 | 4, 3 -> mean 5.2, avg 5.
    # I = round(max(0, 1 - (|w-5|/5)^2) + bonus, 3): c1 .96+.3 (one valid JSON match) = 1.26,
    # c2 .96, c3 .36 | d1 .96 (two matches: no bonus), d2 .84 (match is not JSON).
    # Scores .4032 .3072 .1152 | .3072 .2688; sorted .1152 .2688 .3072 .3072 .4032:
    # p40 = .2688 + .6*.0384 = .29184, p60 = .3072. Chosen c1 c2 d1, rejected c3 d2.
    rows = [dict(id="c1", prompt="P1", m=1.0, text='Here {"response": "hi"} ok'),
            dict(id="c2", prompt="P1", m=1.0, text=words(6)), dict(id="c3", prompt="P1", m=1.0, text=words(9)),
            dict(id="d1", prompt="P2", m=1.0, text='{"response": "a"} {"response": "b"}'),
            dict(id="d2", prompt="P2", m=1.0, text='{"response": "a" oops}')]
    pool = make_inputs(rows)
    res = paper.run_perso(pool, PersoConfig(weights={"m": 0.14}, worst_case={"m": 0.0}))
    assert res.stats["avg_words"] == 5 and res.stats["json_bonus_fired"] == 1
    assert res.scores.tolist() == pytest.approx([0.4032, 0.3072, 0.1152, 0.3072, 0.2688])
    assert res.stats["thresholds"]["p40"] == pytest.approx(0.29184)
    assert res.stats["thresholds"]["p60"] == pytest.approx(0.3072)
    assert pairs_of(pool, res) == {("c1", "c3"), ("c2", "c3"), ("d1", "d2")}


def test_perso_instructability_is_zero_far_from_the_mean():
    # avg 10 (words 1, 19, 10): |1-10|/10 = .9 -> .19; |19-10| -> .19; 10 -> 1. Never negative:
    # words 30 would give 1 - 4 = -3 -> 0.
    rows = [dict(id="a", prompt="P", m=1.0, text=words(1)), dict(id="b", prompt="P", m=1.0, text=words(19)),
            dict(id="c", prompt="P", m=1.0, text=words(10)), dict(id="d", prompt="Q", m=1.0, text=words(10)),
            dict(id="e", prompt="Q", m=1.0, text=words(10))]
    pool = make_inputs(rows)
    res = paper.run_perso(pool, PersoConfig(weights={"m": 0.14}, worst_case={"m": 0.0}))
    assert (res.scores / 0.32).round(3).tolist() == pytest.approx([0.19, 0.19, 1.0, 1.0, 1.0])
    rows.append(dict(id="f", prompt="Q", m=1.0, text=words(60)))   # mean 18.33 -> avg 18; f: (42/18)^2 > 1
    pool = make_inputs(rows)
    res = paper.run_perso(pool, PersoConfig(weights={"m": 0.14}, worst_case={"m": 0.0}))
    assert res.stats["avg_words"] == 18 and res.scores.iloc[-1] == 0.0


# -- simple ------------------------------------------------------------------------------------------

SIMPLE_ROWS = [
    dict(id="v1", prompt="P1"), dict(id="v2", prompt="P1"),
    dict(id="f1", prompt="P1", status="fallback"), dict(id="u1", prompt="P1", status="unusable", raw="no json here"),
    dict(id="e1", prompt="P1", status="error", text=None, raw=None),      # a failed request: nothing to show
    dict(id="v3", prompt="P2"),                                           # valid only: no pair
    dict(id="f2", prompt="P3", status="fallback"),                        # all invalid: no pair
]


def test_simple_is_valid_x_failed_per_prompt():
    pool = make_inputs(SIMPLE_ROWS)
    res = simple.run(pool, SimpleConfig(), PairsConfig())
    assert pairs_of(pool, res) == {("v1", "f1"), ("v1", "u1"), ("v2", "f1"), ("v2", "u1")}
    assert set(res.selection["pair_type"]) == {"format"} and res.selection["rejected_raw"].all()
    assert (res.selection["score_chosen"] == 1).all() and (res.selection["score_rejected"] == 0).all()
    res = simple.run(pool, SimpleConfig(include_unusable=False), PairsConfig())
    assert pairs_of(pool, res) == {("v1", "f1"), ("v2", "f1")}


def test_simple_cap_is_deterministic():
    pool = make_inputs(SIMPLE_ROWS)
    a = pairs_of(pool, simple.run(pool, SimpleConfig(max_pairs_per_prompt=1, seed=3), PairsConfig()))
    b = pairs_of(pool, simple.run(pool, SimpleConfig(max_pairs_per_prompt=1, seed=3), PairsConfig()))
    assert a == b and len(a) == 1


def test_simple_uses_the_scores_format_column_when_there_is_one():
    # v2 parsed but the format check failed it (e.g. over the word limit): it is rejected, raw.
    rows = [dict(r, format_ok=(r["id"] != "v2") if r.get("status", "valid") == "valid" else False)
            for r in SIMPLE_ROWS]
    pool = make_inputs(rows, format_column="format_ok")
    res = simple.run(pool, SimpleConfig(), PairsConfig())
    assert pairs_of(pool, res) == {("v1", "v2"), ("v1", "f1"), ("v1", "u1")}


# -- persodpo ---------------------------------------------------------------------------------------

def ours(**kw) -> PersoDPORecipeConfig:
    base = dict(weights={"m": 1.0}, balance_length=False, selection="best-worst")
    return PersoDPORecipeConfig(**{**base, **kw})


PERSO_ROWS = [
    dict(id="a1", prompt="A", m=1.0), dict(id="a2", prompt="A", m=2.0), dict(id="a3", prompt="A", m=3.0),
    dict(id="af", prompt="A", status="fallback", raw='{"response": "cut off mid'),
    dict(id="b1", prompt="B", m=10.0), dict(id="b2", prompt="B", m=10.0),         # a tie
    dict(id="c1", prompt="C", m=5.0),                                              # a single candidate
    dict(id="d1", prompt="D", status="fallback"), dict(id="d2", prompt="D", status="unusable", raw="x"),  # all invalid
    dict(id="e1", prompt="E", m=None), dict(id="ef", prompt="E", status="fallback"),   # a null metric
]


def test_prompt_z_by_hand():
    # Within-prompt deviations: A -1 0 1, B 0 0, C 0 (E has a null metric: left out).
    # Pooled std = sqrt(2 / (6 values - 3 prompts)) = .8165, so A's z = -1.2247, 0, 1.2247.
    pool = make_inputs(PERSO_ROWS)
    res = persodpo.run(pool, ours(), PairsConfig())
    s = dict(zip(pool["candidate_id"], res.scores))
    assert [s["a1"], s["a2"], s["a3"]] == pytest.approx([-1.2247449, 0.0, 1.2247449])
    assert s["b1"] == s["b2"] == 0 and s["c1"] == 0 and np.isnan(s["e1"]) and np.isnan(s["af"])
    assert res.stats["pooled_within_prompt_std"]["m"] == pytest.approx(np.sqrt(2 / 3))


def test_persodpo_pairs_by_hand():
    # Content: A's best a3 against a1 (margin 2.449) and a2 (1.2247); B ties; C is alone.
    # Format: A: a3 (best content) vs af (raw); D has no format-ok reply; E: e1 (format-ok, unscored) vs ef.
    pool = make_inputs(PERSO_ROWS)
    res = persodpo.run(pool, ours(max_pairs_per_prompt=2), PairsConfig())
    sel = res.selection
    ids = pool["candidate_id"].to_numpy()
    content = set(zip(ids[sel.loc[sel.pair_type == "content", "chosen"]], ids[sel.loc[sel.pair_type == "content", "rejected"]]))
    fmt = set(zip(ids[sel.loc[sel.pair_type == "format", "chosen"]], ids[sel.loc[sel.pair_type == "format", "rejected"]]))
    assert content == {("a3", "a1"), ("a3", "a2")}
    assert fmt == {("a3", "af"), ("e1", "ef")}
    assert sel.loc[sel.pair_type == "format", "rejected_raw"].all() and not sel.loc[sel.pair_type == "content", "rejected_raw"].any()
    assert res.stats["n_prompts_single_candidate"] == 1 and res.stats["n_prompts_no_margin"] == 1
    assert res.stats["n_excluded_null_metric"] == 1


def test_persodpo_k_margin_and_selection():
    pool = make_inputs(PERSO_ROWS)
    assert pairs_of(pool, persodpo.run(pool, ours(max_pairs_per_prompt=1, format_pairs=False), PairsConfig())) == {("a3", "a1")}
    # min margin 1.5 leaves only a1 (2.449 below a3).
    assert pairs_of(pool, persodpo.run(pool, ours(min_margin=1.5, format_pairs=False), PairsConfig())) == {("a3", "a1")}
    # min margin 0: ties still never pair.
    got = pairs_of(pool, persodpo.run(pool, ours(min_margin=0.0, format_pairs=False), PairsConfig()))
    assert got == {("a3", "a1"), ("a3", "a2")}


def test_prompt_minmax():
    pool = make_inputs(PERSO_ROWS)
    res = persodpo.run(pool, ours(normalize="prompt-minmax"), PairsConfig())
    s = dict(zip(pool["candidate_id"], res.scores))
    assert [s["a1"], s["a2"], s["a3"], s["b1"], s["c1"]] == pytest.approx([0, 0.5, 1, 0, 0])


def test_weighted_mean_of_metrics():
    # Two metrics in one prompt with deviations (-1, 1) and (1, -1): weights 3:1 -> (3*z1 + z2)/4.
    rows = [dict(id="x", prompt="P", m=0.0, n=1.0), dict(id="y", prompt="P", m=2.0, n=0.0)]
    pool = make_inputs(rows, metrics=("m", "n"))
    res = persodpo.run(pool, ours(weights={"m": 3.0, "n": 1.0}, min_margin=0.1), PairsConfig())
    # pooled std: m sqrt(2/1) = 1.414 -> z -.707, .707; n sqrt(.5) -> z .707, -.707.
    assert res.scores.tolist() == pytest.approx([(3 * -0.70710678 + 0.70710678) / 4, (3 * 0.70710678 - 0.70710678) / 4])
    assert pairs_of(pool, res) == {("y", "x")}


def test_format_gate_uses_the_scores_format_column():
    # a3 parsed, but the format check failed it: it leaves the content pool and becomes a format rejected.
    rows = [dict(r, format_ok=r["id"] != "a3") for r in PERSO_ROWS if r["prompt"] == "A" and r["id"] != "af"]
    pool = make_inputs(rows, format_column="format_ok")
    res = persodpo.run(pool, ours(), PairsConfig())
    assert pairs_of(pool, res) == {("a2", "a1"), ("a2", "a3")}
    sel = res.selection.set_index("pair_type")
    assert sel.loc["format", "rejected_raw"]


def _two_way_prompts(n: int) -> list[dict]:
    # Every prompt: best (10 words), a shorter lower reply (5) and a longer lower reply (20).
    # Worst-first would always pick the shorter as rejected (it scores lowest): chosen always longer.
    rows = []
    for i in range(n):
        rows += [dict(id=f"p{i}-best", prompt=f"p{i}", m=3.0, text=words(10)),
                 dict(id=f"p{i}-short", prompt=f"p{i}", m=0.0, text=words(5)),
                 dict(id=f"p{i}-long", prompt=f"p{i}", m=1.0, text=words(20))]
    return rows


def test_balance_length_evens_out_chosen_shorter_and_longer():
    pool = make_inputs(_two_way_prompts(200))
    words_ = pool.set_index("candidate_id")["words"]

    def chosen_shorter_share(cfg):
        res = persodpo.run(pool, cfg, PairsConfig())
        ps = pairs_of(pool, res)
        assert len(ps) == 200
        return np.mean([words_[c] < words_[r] for c, r in ps])

    assert chosen_shorter_share(ours(max_pairs_per_prompt=1, min_margin=0.1)) == 0.0
    share = chosen_shorter_share(ours(max_pairs_per_prompt=1, min_margin=0.1, balance_length=True))
    assert 0.4 < share < 0.6


def test_best_random_is_seeded():
    pool = make_inputs(_two_way_prompts(50))
    run = lambda seed: pairs_of(pool, persodpo.run(pool, ours(selection="best-random", max_pairs_per_prompt=1,
                                                                min_margin=0.1, seed=seed), PairsConfig()))
    assert run(1) == run(1)
    assert run(1) != run(2)
    assert all(c.endswith("-best") for c, _ in run(1))


def test_family_and_length_caps_drop_the_lowest_margins():
    # 10 prompts: gpt is best in 8 (margins growing with i), llama in 2. Cap .5: gpt keeps
    # floor(.5 * 2 / .5) = 2 pairs, its two largest margins.
    rows = []
    for i in range(10):
        best_gen = "gpt-4" if i < 8 else "llama-3"
        rows += [dict(id=f"b{i}", prompt=f"p{i}", m=float(i + 2), gen=best_gen, text=words(5)),
                 dict(id=f"w{i}", prompt=f"p{i}", m=0.0, gen="qwen2", text=words(9))]
    pool = make_inputs(rows)
    res = persodpo.run(pool, ours(max_chosen_family_share=0.5, min_margin=0.01), PairsConfig())
    assert pairs_of(pool, res) == {("b6", "w6"), ("b7", "w7"), ("b8", "w8"), ("b9", "w9")}
    assert res.stats["n_dropped_family_cap"] == 6
    # Every chosen is shorter (5 vs 9 words): a length cap of .5 cannot keep any such pair.
    res = persodpo.run(pool, ours(max_length_share=0.5, min_margin=0.01), PairsConfig())
    assert len(res.selection) == 0 and res.stats["n_dropped_length_cap"] == 10


def test_family_names():
    assert [family_of(g) for g in ("gpt-4o-mini", "Qwen2-7B-Instruct", "Llama-3.1-8B-Instruct", "Mistral-7B")] == \
        ["gpt", "qwen", "llama", "mistral"]
    assert family_of("x-model", {"x-model": "house"}) == "house"


def test_empty_and_all_invalid_pools():
    pool = make_inputs([dict(id="d1", prompt="D", status="fallback"), dict(id="d2", prompt="D", status="unusable")])
    for rec in (persodpo.run(pool, ours(), PairsConfig()), simple.run(pool, SimpleConfig(), PairsConfig()),
                paper.run_perso(pool, PersoConfig(weights={"m": 1.0}, worst_case={"m": 0.0}))):
        assert len(rec.selection) == 0
    empty = pool.iloc[:0]
    assert len(persodpo.run(empty, ours(), PairsConfig()).selection) == 0
    assert len(paper.run_length_prior(empty, LengthPriorConfig(weights={"m": 1.0}, worst_case={"m": 0.0})).selection) == 0


def test_word_counts_are_pythons_split():
    import pyarrow as pa

    from persodpo.words import word_counts

    texts = ["", " ", "one", "  two  words ", "a\tb\nc\rd\x0be\x0cf", "x\x1cy\x1dz\x1e\x1fw", "non\u00a0breaking",
             "thin\u2009space and\u3000ideographic", "café au lait", None, "tail\u2028", "\x85lead", "ok" * 50]
    rng = np.random.default_rng(0)
    alphabet = list("ab \t\n\x1c\u00a0\u2003é")
    texts += ["".join(rng.choice(alphabet, rng.integers(0, 30))) for _ in range(300)]
    expected = [len(t.split()) if t is not None else 0 for t in texts]
    assert word_counts(pa.array(texts)).tolist() == expected
    chunked = pa.chunked_array([pa.array(texts[:5]), pa.array(texts[5:]).slice(2)])
    assert word_counts(chunked).tolist() == expected[:5] + expected[7:]
    assert word_counts(pa.array(texts, type=pa.large_string())).tolist() == expected
