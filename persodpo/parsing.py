"""One parser for model outputs, shared by generation and the authors'-data import.

JSON format (the PersoBench instruction asks for ``{"response": "..."}``), following the
authors' code exactly (see shared README, recipe step 1):
  1. scan the ``{...}`` blocks (each ``{`` to the nearest following ``}``) in order; the first
     that parses as JSON and has a ``response`` key makes the output **valid**;
  2. otherwise, if ``"response": "`` occurs, the rest of the output after it is a **fallback**
     reply (invalid format, usable text), with surrounding quotes, newlines, braces and spaces
     stripped, then trailing dots, ellipses and spaces;
  3. otherwise (or for an empty output) it is **unusable**.
Plain format: the whole output is the reply, minus a leading role prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

VALID, FALLBACK, UNUSABLE = "valid", "fallback", "unusable"

_FALLBACK_MARK = '"response": "'
_ROLE_PREFIX = re.compile(r"^\s*(?:User\s*\d|Assistant|AI|Bot|Machine|System|Response)\s*:\s*", re.I)


@dataclass(frozen=True)
class Parsed:
    text: str | None
    status: str          # valid | fallback | unusable
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == VALID


def _json_blocks(raw: str):
    start = raw.find("{")
    while start != -1:
        end = raw.find("}", start + 1)
        if end == -1:
            return
        yield raw[start:end + 1]
        start = raw.find("{", start + 1)


def parse_json_response(raw: str | None) -> Parsed:
    """The authors' extraction rule (exactly), returning the reply and its status."""
    if raw is None or not str(raw).strip():
        return Parsed(None, UNUSABLE, "empty output")
    raw = str(raw)
    for block in _json_blocks(raw):
        try:
            obj = json.loads(block)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and "response" in obj:
            value = obj["response"]
            text = value if isinstance(value, str) else json.dumps(value)
            return Parsed(text.strip(), VALID)
    idx = raw.find(_FALLBACK_MARK)
    if idx != -1:
        rest = raw[idx + len(_FALLBACK_MARK):]
        text = rest.strip('"\n{} ').rstrip(". …")
        if text:
            return Parsed(text, FALLBACK, "no JSON object with a 'response' key; text after '\"response\": \"'")
        return Parsed(None, UNUSABLE, "'response' key with no text")
    return Parsed(None, UNUSABLE, "no JSON object with a 'response' key")


def parse_plain_response(raw: str | None) -> Parsed:
    """Plain-text template: the output is the reply; a leading role prefix is removed."""
    if raw is None or not str(raw).strip():
        return Parsed(None, UNUSABLE, "empty output")
    text = str(raw).strip()
    prefixed = bool(_ROLE_PREFIX.match(text))
    text = _ROLE_PREFIX.sub("", text, count=1).strip()
    if not text:
        return Parsed(None, UNUSABLE, "only a role prefix")
    if prefixed:
        return Parsed(text, FALLBACK, "reply starts with a role prefix")
    return Parsed(text, VALID)


PARSERS = {"json": parse_json_response, "plain": parse_plain_response}


def parse_response(raw: str | None, fmt: str = "json") -> Parsed:
    try:
        return PARSERS[fmt](raw)
    except KeyError:
        raise ValueError(f"unknown response format {fmt!r}; known: {sorted(PARSERS)}") from None
