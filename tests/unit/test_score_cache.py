"""The judge cache on local storage (S3 is covered by the integration tests)."""

import pickle

import numpy as np
import pyarrow as pa

from persodpo.score.cache import JudgeCache, KnownJudgments, judge_namespace, judgment_key


def test_keys_change_with_judge_rubric_candidate_and_messages():
    ns = judge_namespace("j", "openai/gpt-4o-mini", {"temperature": 0})
    assert ns.startswith("j-") and ns == judge_namespace("j", "openai/gpt-4o-mini", {"temperature": 0})
    assert ns != judge_namespace("j", "openai/gpt-4o-mini", {"temperature": 0.7})
    msgs = [{"role": "user", "content": "rate this"}]
    k = judgment_key(ns, "coherence", "r1", "c1", msgs)
    assert k == judgment_key(ns, "coherence", "r1", "c1", [{"role": "user", "content": "rate this"}])
    others = {judgment_key(ns, "personalization", "r1", "c1", msgs), judgment_key(ns, "coherence", "r2", "c1", msgs),
              judgment_key(ns, "coherence", "r1", "c2", msgs),
              judgment_key(ns, "coherence", "r1", "c1", [{"role": "user", "content": "rate that"}])}
    assert k not in others and len(others) == 4


def test_append_load_and_compact(tmp_path):
    cache = JudgeCache(str(tmp_path / "cache"))
    assert cache.load("j-1") == {}
    cache.append("j-1", [{"key": "a", "score": 4.0, "status": "ok"}, {"key": "b", "score": None, "error": "bad",
                                                                      "status": "malformed"}])
    cache.append("j-1", [{"key": "a", "score": 5.0, "status": "ok"}])
    cache.append("j-2", [{"key": "z", "score": 1.0, "status": "ok"}])
    got = cache.load("j-1")
    assert got["a"]["score"] == 5.0 and got["b"]["error"] == "bad" and "z" not in got
    assert len(list((tmp_path / "cache" / "j-1").iterdir())) == 2
    assert cache.compact("j-1") == 2
    assert [p.suffix for p in (tmp_path / "cache" / "j-1").iterdir()] == [".parquet"]
    assert cache.load("j-1")["a"]["score"] == 5.0


def test_an_unreadable_part_is_skipped_not_fatal(tmp_path):
    cache = JudgeCache(str(tmp_path))
    cache.append("j", [{"key": "a", "score": 3.0, "status": "ok"}])
    (tmp_path / "j" / "broken.parquet").write_bytes(b"not parquet")
    assert cache.load("j")["a"]["score"] == 3.0


def test_load_table_is_load_in_arrow_one_row_per_key_sorted(tmp_path):
    cache = JudgeCache(str(tmp_path))
    assert cache.load_table("j").num_rows == 0 and cache.load_table("j").column_names == ["key", "score", "error"]
    cache.append("j", [{"key": "b", "score": 4.0, "status": "ok", "created_at": 5.0},
                       {"key": "a", "score": None, "error": "bad", "status": "malformed", "created_at": 1.0}])
    cache.append("j", [{"key": "b", "score": 2.0, "status": "ok", "created_at": 3.0},      # older: loses
                       {"key": "c", "score": 1.0, "status": "ok", "created_at": 2.0},
                       {"key": "a", "score": 3.0, "status": "ok", "created_at": 2.0}])     # newer: wins
    (tmp_path / "j" / "broken.parquet").write_bytes(b"not parquet")
    got = cache.load_table("j")
    assert got.column_names == ["key", "score", "error"]
    assert got.to_pylist() == [{"key": "a", "score": 3.0, "error": None}, {"key": "b", "score": 4.0, "error": None},
                               {"key": "c", "score": 1.0, "error": None}]
    assert {k: (e["score"], e["error"]) for k, e in cache.load("j").items()} == \
        {r["key"]: (r["score"], r["error"]) for r in got.to_pylist()}


def test_compaction_keeps_every_column_of_the_winning_entries(tmp_path):
    cache = JudgeCache(str(tmp_path))
    cache.append("j", [{"key": "a", "score": 4.0, "status": "ok", "prompt_tokens": 10, "completion_tokens": 2,
                        "cost_usd": 0.5, "created_at": 1.0}])
    cache.append("j", [{"key": "a", "score": None, "error": "out of range", "status": "out_of_range",
                        "prompt_tokens": 11, "completion_tokens": 3, "cost_usd": 0.25, "created_at": 2.0},
                       {"key": "b", "score": 1.0, "status": "ok", "created_at": 1.0}])
    before = cache.load("j")
    assert cache.compact("j") == 2 and len(list((tmp_path / "j").iterdir())) == 1
    assert cache.load("j") == before
    assert before["a"]["status"] == "out_of_range" and before["a"]["prompt_tokens"] == 11


def _table(rows):
    return pa.table({"key": pa.array([r[0] for r in rows], pa.string()),
                     "score": pa.array([r[1] for r in rows], pa.float64()),
                     "error": pa.array([r[2] for r in rows], pa.string())})


def test_known_judgments_answer_what_the_cache_holds_and_nothing_else(tmp_path):
    cache = JudgeCache(str(tmp_path))
    ns = judge_namespace("j", "openai/gpt-4o-mini", {"temperature": 0})
    k_ok, k_bad, k_new = (judgment_key(ns, "coherence", "r1", c, []) for c in ("c1", "c2", "c3"))
    cache.append(ns, [{"key": k_ok, "score": 4.0, "status": "ok"},
                      {"key": k_bad, "score": None, "error": "no score in the reply", "status": "malformed"}])
    known = KnownJudgments(cache.load_table(ns))
    assert len(known) == 2 and known.keys.dtype == np.dtype("S32")
    # The same {score, error} a judge actor returned from the old dict of dicts.
    assert known.get(k_ok) == {"score": 4.0, "error": None}
    assert known.get(k_bad) == {"score": None, "error": "no score in the reply"}
    assert known.get(k_new) is None and k_new not in known and k_ok in known
    assert known.get(k_ok[:31]) is None and known.get(k_ok + "0") is None and known.get("") is None
    assert len(known.errors) == 1                              # errors kept only for the null scores


def test_known_judgments_take_any_table_or_the_old_mapping():
    unsorted = _table([("b", 2.0, None), ("a", None, "bad"), ("b", 3.0, None), ("longer-than-32-" * 3, 1.0, None)])
    known = KnownJudgments(unsorted)
    assert known.get("a") == {"score": None, "error": "bad"} and known.get("b") == {"score": 3.0, "error": None}
    assert known.get("longer-than-32-" * 3) == {"score": 1.0, "error": None} and len(known) == 3
    old = KnownJudgments.of({"x": {"score": 5.0, "error": None}, "y": {"score": None, "error": "e"}})
    assert old.get("x") == {"score": 5.0, "error": None} and old.get("y") == {"score": None, "error": "e"}
    assert len(KnownJudgments(_table([]))) == 0 and KnownJudgments(_table([])).get("x") is None


def test_known_judgments_and_their_table_survive_pickling():
    """What ray.put ships is the Arrow table; the index pickles too."""
    table = _table([("a" * 32, 1.0, None), ("b" * 32, None, "bad")])
    for known in (KnownJudgments(pickle.loads(pickle.dumps(table))), pickle.loads(pickle.dumps(KnownJudgments(table)))):
        assert known.get("a" * 32) == {"score": 1.0, "error": None}
        assert known.get("b" * 32) == {"score": None, "error": "bad"} and "c" * 32 not in known


def test_200k_judgments_fit_in_a_few_megabytes():
    n = 200_000
    rng = np.random.default_rng(0)
    raw = rng.bytes(16 * n)
    keys = [raw[i * 16:(i + 1) * 16].hex() for i in range(n)]
    scores = rng.integers(1, 6, n).astype(float)
    null = rng.random(n) < 0.01
    table = pa.table({"key": pa.array(keys, pa.string()),
                      "score": pa.array(scores, pa.float64(), mask=null),
                      "error": pa.array(np.where(null, "malformed", None).tolist(), pa.string())})
    table = table.take(pa.array(np.argsort(np.asarray(keys))))        # load_table's order
    known = KnownJudgments(table)
    assert len(known) == n
    assert known.nbytes < 50 * 2**20
    assert known.keys.nbytes == 32 * n and known.scores.nbytes == 8 * n
    for i in rng.integers(0, n, 200):
        want = {"score": None, "error": "malformed"} if null[i] else {"score": scores[i], "error": None}
        assert known.get(keys[i]) == want
    assert sum(known.get(f"{i:032x}") is not None for i in range(1000)) == 0
