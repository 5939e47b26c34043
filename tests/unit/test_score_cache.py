"""The judge cache on local storage (S3 is covered by the integration tests)."""

from persodpo.score.cache import JudgeCache, judge_namespace, judgment_key


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
