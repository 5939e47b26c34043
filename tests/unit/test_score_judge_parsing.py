"""Judge answers: constrained where supported, parsed tolerantly, None with a reason otherwise."""

import json
import re

import pytest

from persodpo.score.judges import (MALFORMED, OK, OUT_OF_RANGE, constrained_params, judge_messages, load_rubric,
                                   parse_judgment)

SCALE = (1, 5)


@pytest.mark.parametrize("text,score", [
    ('{"score": 4}', 4.0),
    ('  {"score":5}\n', 5.0),
    ('```json\n{"score": 2}\n```', 2.0),
    ('Here is my rating: {"score": 3, "reason": "ok"}', 3.0),
    ('{"Score": "4"}', 4.0),
    ('{"rating": 2}', 2.0),
    ("Score: 4", 4.0),
    ("score = 3.5", 3.5),
    ("4", 4.0),
    ("4/5", 4.0),
    ("I would give it 4 out of 5.", 4.0),
    ("5.", 5.0),
])
def test_tolerant_parsing(text, score):
    assert parse_judgment(text, SCALE) == (score, OK, None)


@pytest.mark.parametrize("text,status,fragment", [
    ('{"score": 7}', OUT_OF_RANGE, "score 7 outside 1..5"),
    ("Score: 0", OUT_OF_RANGE, "outside"),
    ('{"score": -2}', OUT_OF_RANGE, "outside"),
    ('{"score": "great"}', MALFORMED, "no score"),
    ('{"score": true}', MALFORMED, "no score"),
    ("The reply is coherent and friendly.", MALFORMED, "no score in the judgment"),
    ("", MALFORMED, "empty judgment"),
    (None, MALFORMED, "empty judgment"),
    ('{"score": ', MALFORMED, "no score"),
])
def test_bad_judgments_are_none_with_a_reason(text, status, fragment):
    score, got_status, reason = parse_judgment(text, SCALE)
    assert score is None and got_status == status and fragment in reason


def test_json_schema_constraint_allows_exactly_the_scale():
    p = constrained_params("json_schema", SCALE)["response_format"]
    assert p["type"] == "json_schema"
    assert p["json_schema"]["schema"]["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]


def test_regex_constraint_matches_only_scores_on_the_scale():
    rx = constrained_params("regex", SCALE)["extra_body"]["structured_outputs"]["regex"]
    for s in range(1, 6):
        assert re.fullmatch(rx, json.dumps({"score": s}))
        assert parse_judgment(json.dumps({"score": s}), SCALE)[0] == s
    for bad in ('{"score": 0}', '{"score": 6}', '{"score": 45}', "4"):
        assert not re.fullmatch(rx, bad)
    assert constrained_params("none", SCALE) == {}


def test_rubrics_are_packaged_versioned_and_filled():
    text, h = load_rubric("judge-personalization-v1")
    assert len(h) == 16 and load_rubric("judge-personalization-v1")[1] == h
    assert load_rubric("judge-coherence-v1")[1] != h
    msgs = judge_messages(text, persona=["I like dogs."], reply="Dogs are great!", context_turns=2, scale=SCALE,
                          history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                   {"role": "user", "content": "What do I like?"}])
    content = msgs[0]["content"]
    assert msgs[0]["role"] == "user" and "- I like dogs." in content and "Dogs are great!" in content
    assert "Assistant: hello\nUser: What do I like?" in content and "User: hi" not in content  # last 2 turns
    assert "$" not in content


@pytest.mark.parametrize("name", ["judge-coherence-v1", "judge-personalization-v1"])
def test_rubrics_render_the_configured_scale(name):
    text, _ = load_rubric(name)
    kw = dict(persona=["I like dogs."], reply="Dogs!", context_turns=2, history=[])
    five = judge_messages(text, scale=(1, 5), **kw)[0]["content"]
    ten = judge_messages(text, scale=(0, 10), **kw)[0]["content"]
    assert "Rate from 1 to 5:" in five and "<integer from 1 to 5>" in five and "\n5 = " in five and "\n1 = " in five
    assert "Rate from 0 to 10:" in ten and "<integer from 0 to 10>" in ten and "1 to 5" not in ten
    assert [ln.split(" = ")[0] for ln in ten.splitlines() if " = " in ln] == ["10", "8", "5", "2", "0"]
    assert "$" not in ten


def test_unknown_rubric_is_a_config_error():
    from persodpo.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown rubric 'nope'"):
        load_rubric("nope")
