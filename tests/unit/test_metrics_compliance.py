"""Length-format compliance on hand-checked outputs (several are real outputs from the authors' data)."""

import pyarrow as pa
import pytest

from persodpo.score.compliance import check_json, check_json_general, check_plain, template_format
from persodpo.score.config import ScoreConfig
from persodpo.score.metric import Cols
from persodpo.score.registry import build_metrics

# (raw, (parse_ok, single, no_role_prefix, not_truncated))
JSON_CASES = [
    ('{"response": "I love it."}', (1, 1, 1, 1)),
    ('  \n{\n  "response": "I love it."\n}\n', (1, 1, 1, 1)),
    ('```json\n{"response": "I love it."}\n```', (1, 1, 1, 1)),
    # Llama: a valid object, then chatter after it.
    ('{\n  "response": "I would love to visit."\n}  # Corrected response  # Corrected', (1, 0, 1, 1)),
    # Qwen2-0.5B: a note before the object.
    ('Note: You may need to break it down.\n\n{"response": "The HMS Plymouth is a frigate."}', (1, 0, 1, 1)),
    # Llama: cut off by the token limit inside the string.
    ('{\n  "response": "The HMS Plymouth is a historic frigate. The HMS Plymouth is now a museum ship,', (0, 0, 1, 0)),
    # Mistral: a role prefix, then a truncated object.
    ('\nResponse:\n{\n  "response": "The HMS Plymouth is a frigate. Unfortunately, I don\'t have', (0, 0, 0, 0)),
    ('User2: {"response": "Sure!"}', (1, 0, 0, 1)),
    ('{"response": "User2: Sure, it is old."}', (1, 1, 0, 1)),
    ('{"answer": "no response key"}', (0, 0, 1, 1)),
    ('Just a plain sentence.', (0, 0, 1, 1)),
    ('{"response": "a"} {"response": "b"}', (1, 0, 1, 1)),
]


@pytest.mark.parametrize("raw,expected", JSON_CASES + [
    ('{"response": 42}', (1, 0, 1, 1)),
    ('{"response": "Assistant: hi"}', (1, 1, 0, 1)),
    ('{"response": "ok", "extra": 1}', (1, 1, 1, 1)),
    ('{"response": "a } b"}', (0, 1, 1, 1)),   # the authors' block rule stops at the first "}"
    ('{"reply": "x"}', (0, 0, 1, 1)),
])
def test_json_format_parts(raw, expected):
    assert check_json(raw) == tuple(float(x) for x in expected)
    assert check_json_general(raw) == check_json(raw)   # the fast path changes nothing


def test_a_code_fence_can_be_refused():
    assert check_json('```json\n{"response": "x"}\n```', allow_fence=False)[1] == 0.0


@pytest.mark.parametrize("raw,expected", [
    ("It was built in 1843, and you can visit it.", (1, 1, 1, 1)),
    ("Assistant: It was built in 1843.", (0, 1, 0, 1)),
    ("It was built in 1843.\nUser1: When?", (1, 0, 1, 1)),
    ("It was built in 1843 and then it", (1, 1, 1, 0)),
])
def test_plain_format_parts(raw, expected):
    assert check_plain(raw) == tuple(float(x) for x in expected)


def test_format_follows_each_candidates_template():
    assert template_format("persobench-json-v1", "auto") == "json"
    assert template_format("plain-v1", "auto") == "plain"
    assert template_format("persobench-json-authors", "auto") == "json"
    assert template_format("plain-v1", "json") == "json"


def _run(rows, **cfg):
    cfg.setdefault("metrics", ["format", "length"])
    metrics = build_metrics(ScoreConfig(**cfg))
    cols = Cols(pa.Table.from_pylist(rows))
    return {m.name: m.compute(cols) for m in metrics}


def test_format_ok_is_all_parts_and_a_failed_request_is_null_with_a_reason():
    rows = [{"raw": '{"response": "Hi there."}', "text": "Hi there.", "template": "persobench-json-v1"},
            {"raw": '{"response": "Hi', "text": "Hi", "template": "persobench-json-v1"},
            {"raw": None, "text": None, "template": "persobench-json-v1"}]
    r = _run(rows)["format"]
    assert r.columns["format_ok"] == [1.0, 0.0, None]
    assert r.columns["format_not_truncated"] == [1.0, 0.0, None]
    assert r.errors[:2] == [None, None] and "request failed" in r.errors[2]


def test_truncation_comes_from_finish_reason_when_the_candidate_has_it():
    closed, cut = '{"response": "Hi there."}', '{"response": "Hi there'
    plain_open = "I love iron bridges and"
    rows = [{"raw": closed, "text": "Hi there.", "template": "persobench-json-v1", "finish_reason": "length"},
            {"raw": cut, "text": "Hi there", "template": "persobench-json-v1", "finish_reason": "stop"},
            {"raw": plain_open, "text": plain_open, "template": "plain-v1", "finish_reason": "stop"},
            {"raw": plain_open, "text": plain_open, "template": "plain-v1", "finish_reason": None},
            {"raw": cut, "text": "Hi there", "template": "persobench-json-v1", "finish_reason": None}]
    r = _run(rows)["format"]
    # 'length' = cut by the token limit even when the text looks closed; 'stop' = not cut even when
    # it looks open; no finish_reason (the authors' data): the text heuristic.
    assert r.columns["format_not_truncated"] == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert r.columns["format_ok"][0] == 0.0 and r.columns["format_parse_ok"][0] == 1.0


def test_length_window_is_inclusive_and_not_shorter_is_better():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    rows = [{"raw": "x", "text": words(n), "parse_status": "valid"} for n in (2, 3, 10, 11)]
    rows.append({"raw": "x", "text": None, "parse_status": "unusable"})
    r = _run(rows, metrics=["length"], word_limit=10, min_words=3)["length"]
    assert r.columns["length_words"] == [2.0, 3.0, 10.0, 11.0, None]
    assert r.columns["length_ok"] == [0.0, 1.0, 1.0, 0.0, None]
    assert r.errors == [None] * 4 + ["no usable text (parse_status=unusable)"]
