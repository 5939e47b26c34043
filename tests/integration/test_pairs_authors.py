"""The four recipes on the authors' published data (skipped when the shared data is absent).

`paper-length-prior` must reproduce the authors' own DPO set: their notebook (`code.ipynb`,
FoCus, SCORING_METHOD = "length_prior") loads 9,314 pairs, and shows the pairs of the first
prompt (chosen 0.5935 against 0.5032, 0.5201 and 0.4284) and pair 600 (0.6328 vs 0.4317).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from persodpo import storage as st
from persodpo.config import load_config
from persodpo.ingest.stage import run_stage as ingest
from persodpo.pairs.config import AUTHORS_PERSODPO_WEIGHTS
from persodpo.pairs.stage import run_stage


@pytest.fixture(scope="module")
def authors(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    ingest(load_config(None, ["ingest.source=persodpo-authors", f"ingest.input={shared_data}",
                              f"ingest.output={root}"]))
    return root


def run(authors, tmp_path, recipe, *extra):
    out = str(tmp_path / recipe)
    summary = run_stage(load_config(None, [
        f"pairs.input={authors / 'scores'}", f"pairs.candidates={authors / 'candidates'}",
        f"pairs.prompts={authors / 'prompts'}", f"pairs.output={out}", f"pairs.recipe={recipe}",
        f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}", *extra]))
    stats = json.loads(st.read_bytes(st.join(out, "stats.json")))
    return summary, st.read_table(out).to_pandas(), stats


def _starting(df: pd.DataFrame, side: str, text: str) -> pd.DataFrame:
    return df[df[side].map(lambda m: m[0]["content"].startswith('{"response": "' + text))]


def test_length_prior_reproduces_the_authors_pairs(authors, tmp_path):
    summary, df, stats = run(authors, tmp_path, "paper-length-prior")
    assert summary["n_pairs"] == 9314
    assert round(stats["recipe_stats"]["thresholds"]["p60"], 4) == 0.5935
    first = _starting(df, "chosen", "As a fellow lighthouse enthusias")
    assert sorted(first["score_rejected"].round(4)) == [0.1527, 0.4284, 0.5032, 0.5201]
    assert set(first["score_chosen"].round(4)) == {0.5935}
    p600 = _starting(df, "chosen", "It was built in 1928.")
    p600 = p600[p600["rejected"].map(lambda m: "It was constructed around the year 1900" in m[0]["content"])]
    assert (p600["score_chosen"].round(4).tolist(), p600["score_rejected"].round(4).tolist()) == ([0.6328], [0.4317])
    # The prompt is the authors' instruction.
    assert df["prompt"].iloc[0][0]["content"].startswith("I will provide you with a conversation context")
    # The flaws the card exists to show: shorter wins, rejected mostly failed parsing.
    assert stats["balance"]["chosen_shorter_share"] > 0.9
    assert stats["balance"]["rejected_failed_parsing_share"] > 0.7


def test_perso_bonus_never_fires_on_extracted_text(authors, tmp_path):
    summary, df, stats = run(authors, tmp_path, "paper-perso", "pairs.plots=false")
    rs = stats["recipe_stats"]
    assert rs["json_bonus_fired"] == 0 and rs["avg_words"] == 53
    assert rs["n_pool"] == 7363 + 2984 and rs["n_dropped_unusable"] == 153
    assert summary["n_pairs"] == len(df) > 0


def test_persodpo_keeps_format_and_content_apart(authors, tmp_path):
    summary, df, stats = run(authors, tmp_path, "persodpo", "pairs.plots=false")
    cands = st.read_table(str(authors / "candidates")).to_pandas().set_index("candidate_id")
    status_c = cands.loc[df["chosen_candidate_id"], "parse_status"].to_numpy()
    status_r = cands.loc[df["rejected_candidate_id"], "parse_status"].to_numpy()
    content = (df["pair_type"] == "content").to_numpy()
    assert (status_c == "valid").all()
    assert (status_r[content] == "valid").all() and (status_r[~content] != "valid").all()
    assert (df.loc[content, "margin"] >= 0.5).all()
    assert df[content].groupby("prompt_id").size().max() <= 2
    assert df[~content].groupby("prompt_id").size().max() == 1
    # The rejected side of a format pair is the output as the model wrote it.
    raw = cands.loc[df.loc[~content, "rejected_candidate_id"], "raw"].tolist()
    assert [m[0]["content"] for m in df.loc[~content, "rejected"]] == raw
    assert stats["balance_by_pair_type"]["content"]["rejected_failed_parsing_share"] == 0


def test_simple_is_the_full_valid_x_failed_product(authors, tmp_path):
    summary, df, _ = run(authors, tmp_path, "simple", "pairs.plots=false")
    c = st.read_table(str(authors / "candidates")).to_pandas()
    valid = c[c["parse_status"] == "valid"].groupby("prompt_id").size()
    failed = c[(c["parse_status"] != "valid") & c["raw"].fillna("").str.strip().ne("")].groupby("prompt_id").size()
    assert summary["n_pairs"] == int((valid * failed).fillna(0).sum())
