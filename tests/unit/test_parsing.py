"""The shared output parser follows the authors' extraction rule exactly."""

import pytest

from persodpo.parsing import FALLBACK, UNUSABLE, VALID, parse_json_response, parse_plain_response


@pytest.mark.parametrize("raw, status, text", [
    ('{"response": "Hello there."}', VALID, "Hello there."),
    ('Note: blah.\n\n{\n  "response": "Multi\\nline"\n}', VALID, "Multi\nline"),
    # First block fails to parse, the second is valid.
    ('{not json} then {"response": "ok"}', VALID, "ok"),
    # A JSON object without the key is skipped; the nearest '}' rule cuts nested objects.
    ('{"answer": "x"} {"response": "y"}', VALID, "y"),
    # Nested object: the nearest-"}" rule never sees a whole object with the key -> unusable.
    ('{"response": {"a": 1}}', UNUSABLE, None),
    # Truncated output (the authors' 110-token cap): fallback, with trailing dots stripped.
    ('{"response": "I would love to go there because...', FALLBACK, "I would love to go there because"),
    ('{"response": "Short reply."\n', FALLBACK, "Short reply"),
    ("Just plain text with no JSON.", UNUSABLE, None),
    ("", UNUSABLE, None),
    (None, UNUSABLE, None),
    ('{"response": "', UNUSABLE, None),
])
def test_json_rule(raw, status, text):
    p = parse_json_response(raw)
    assert p.status == status
    assert p.text == text
    assert p.ok == (status == VALID)


def test_plain_rule():
    assert parse_plain_response("  Hi!  ").text == "Hi!"
    p = parse_plain_response("User2: Hi there")
    assert (p.text, p.status) == ("Hi there", FALLBACK)
    assert parse_plain_response("Assistant:").status == UNUSABLE
