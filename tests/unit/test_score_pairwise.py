"""Pairwise judging with both orders: which pairs, parsing a winner, mapping the two orders back
to the pair, the position/length audit, and verifying content pairs against the verdicts."""

import pandas as pd
import pyarrow as pa
import pytest

from persodpo.score.pairwise import PAIRWISE, _mapped, pairwise_audit, parse_winner, select_pairs
from persodpo.pairs.verify import judge_pair, verdict_index, verify_pairwise


def test_pairs_are_best_first_by_the_panel_and_capped_per_prompt():
    cands = pa.table({"candidate_id": ["c1", "c2", "c3", "c4", "c5"], "prompt_id": ["p"] * 4 + ["q"],
                      "generator": ["g1", "g2", "g3", "g4", "g1"], "text": ["one", "two two", "three", None, "solo"]})
    pairs = select_pairs(cands, {"c1": 2.0, "c2": 4.5, "c3": 3.0}, max_per_prompt=2).to_pylist()
    # c4 has no text, q has one reply: p's pairs in rank order c2 > c3 > c1, the first two.
    assert [(p["candidate_a"], p["candidate_b"]) for p in pairs] == [("c2", "c3"), ("c2", "c1")]
    assert pairs[0]["words_a"] == 2 and pairs[0]["text_b"] == "three"
    unranked = select_pairs(cands, None, max_per_prompt=10).to_pylist()
    assert [(p["candidate_a"], p["candidate_b"]) for p in unranked] == [("c1", "c2"), ("c1", "c3"), ("c2", "c3")]


@pytest.mark.parametrize("text,code", [('{"winner": "A"}', 1.0), ("```json\n{\"winner\": \"tie\"}\n```", 0.0),
                                       ("Winner: B", 2.0), ("B", 2.0), ("Reply A.", 1.0), ('{"winner":"b"}', 2.0)])
def test_a_winner_is_parsed_from_json_or_a_plain_answer(text, code):
    assert parse_winner(text)[:2] == (code, "ok")


def test_an_answer_without_a_winner_is_malformed_not_a_guess():
    assert parse_winner("Both replies have merits.")[1] == "malformed"
    assert parse_winner("")[1] == "malformed"


def test_each_order_is_mapped_back_to_the_pairs_candidates():
    # A/B order: A is a. B/A order: A is b.
    assert (_mapped(1.0, "ab"), _mapped(2.0, "ab"), _mapped(1.0, "ba"), _mapped(2.0, "ba")) == ("a", "b", "b", "a")
    assert _mapped(0.0, "ba") == "tie" and _mapped(None, "ab") is None


def _rows(judge, verdicts, words=((3, 9),)):
    out = []
    for k, (ab, ba) in enumerate(verdicts):
        wa, wb = words[k % len(words)]
        out.append({"prompt_id": "p", "candidate_a": f"a{k}", "candidate_b": f"b{k}", "generator_a": "g",
                    "generator_b": "h", "words_a": wa, "words_b": wb, "judge": judge, "dimension": "coherence",
                    "verdict_ab": ab, "verdict_ba": ba, "winner": ab if ab == ba else None,
                    "consistent": ab == ba, "error": None})
    return out


def test_the_audit_shows_a_first_position_judge_a_length_judge_and_a_fair_one():
    first = _rows("first", [("a", "b")] * 10)                   # always the reply shown first
    longer = _rows("longer", [("b", "b")] * 10)                 # b is the longer reply in every pair
    fair = _rows("fair", [("a", "a"), ("b", "b")] * 5, words=((3, 9), (3, 9), (9, 3), (9, 3)))
    audit = pairwise_audit(first + longer + fair)
    assert audit["first"]["coherence"] == {"n_pairwise": 10, "position_consistency": 0.0,
                                           "first_position_win_rate": 1.0, "longer_win_rate": 0.5,
                                           "n_inconsistent": 10}
    assert audit["longer"]["coherence"]["position_consistency"] == 1.0
    assert audit["longer"]["coherence"]["longer_win_rate"] == 1.0
    assert audit["longer"]["coherence"]["first_position_win_rate"] == 0.5
    f = audit["fair"]["coherence"]
    assert (f["position_consistency"], f["first_position_win_rate"], f["longer_win_rate"]) == (1.0, 0.5, 0.5)
    assert pa.Table.from_pylist(first, schema=PAIRWISE).num_rows == 10


def test_a_content_pair_is_kept_only_when_its_chosen_reply_won_both_orders_everywhere():
    verdicts = pa.Table.from_pylist([
        *_rows("j1", [("a", "a")]), *_rows("j2", [("a", "a")]),                        # a0 beat b0 twice
        {**_rows("j1", [("b", "b")])[0], "candidate_a": "a1", "candidate_b": "b1"},   # b1 beat a1
        {**_rows("j1", [("a", "b")])[0], "candidate_a": "a2", "candidate_b": "b2"},   # orders disagree
        {**_rows("j1", [("tie", "tie")])[0], "candidate_a": "a3", "candidate_b": "b3"},
    ], schema=PAIRWISE)
    index = verdict_index(verdicts)
    assert judge_pair("a0", "b0", index) == "kept" and judge_pair("b0", "a0", index) == "lost"
    assert judge_pair("a1", "b1", index) == "lost" and judge_pair("a2", "b2", index) == "inconsistent"
    assert judge_pair("a3", "b3", index) == "tie" and judge_pair("a9", "b9", index) == "not_judged"
    pool = pd.DataFrame({"candidate_id": ["a0", "b0", "a1", "b1", "a2", "b2", "x"]})
    sel = pd.DataFrame({"chosen": [0, 2, 4, 0, 0], "rejected": [1, 3, 5, 6, 5],
                        "pair_type": ["content", "content", "content", "content", "format"]})
    kept, stats = verify_pairwise(pool, sel, verdicts)
    assert kept["chosen"].tolist() == [0, 0] and kept["pair_type"].tolist() == ["content", "format"]
    assert stats == {"checked": 4, "kept": 1, "dropped": {"lost": 1, "inconsistent": 1, "tie": 0, "not_judged": 1},
                     "dropped_total": 3}
