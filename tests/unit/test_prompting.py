"""Prompt templates: the authors' PersoBench instruction word for word, and a plain chat variant."""

import pytest

from persodpo.prompting import build_messages, get_template, max_new_tokens

ROW = {"persona": ["I like cats.", "I live in Paris."], "knowledge": ["The Louvre is a museum."],
       "history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "Where am I?"}]}


def test_persobench_json_is_one_user_message_with_the_authors_text():
    msgs = build_messages(ROW, "persobench-json-v1", 110)
    assert [m["role"] for m in msgs] == ["user"]
    text = msgs[0]["content"]
    assert "Participant Personas:\nI like cats. I live in Paris.\n" in text
    assert "Conversation Context:\nUser1: Hi\nUser2: Hello!\nUser1: Where am I?\n" in text
    assert '"response": "provide the personalized natural language response here (in 110 words or less)."' in text
    assert "Knowledge" not in text
    assert "The Louvre" in build_messages(ROW, "persobench-json-knowledge-v1", 110)[0]["content"]


def test_plain_keeps_the_real_turns():
    msgs = build_messages(ROW, "plain-v1", 40)
    assert msgs[0]["role"] == "system" and "40 words or less" in msgs[0]["content"]
    assert msgs[1:] == ROW["history"]


def test_token_budget_covers_the_word_limit():
    # The authors' 110-token cap on a 110-word instruction truncated replies; ours never does.
    assert max_new_tokens("persobench-json-v1", 110) >= 110 * 2
    assert get_template("plain-v1").response_format == "plain"
    with pytest.raises(ValueError, match="unknown prompt template"):
        get_template("nope")
