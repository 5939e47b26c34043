"""Length-format compliance, as two metrics so a recipe can gate on format and score on length.

``format`` reads the **raw** output (what the model really wrote):
  format_parse_ok        the template's parser accepted it (persodpo.parsing: for JSON, a ``{...}``
                         block with a ``response`` key, the authors' rule)
  format_single          nothing but that one object (JSON; a Markdown code fence is tolerated), or
                         for plain replies no second speaker turn
  format_no_role_prefix  neither the output nor the reply starts with "User2:", "Response:", ...
  format_not_truncated   the output was not cut off: from the candidate's ``finish_reason`` when
                         it has one (``length`` = the token limit cut it; any other = not cut);
                         only without it (the authors' data) guessed from the text (an object
                         left open; a plain reply that stops mid-sentence)
  format_ok              all four (1.0) or not (0.0)
``length`` reads the extracted **text**: ``length_words`` and ``length_ok`` (inside
[min_words, word_limit]). Not "shorter is better": any length inside the window is compliant.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from persodpo.parsing import VALID, parse_response
from persodpo.score.metric import Cols, DeterministicMetric, Result

FORMAT_PARTS = ("format_parse_ok", "format_single", "format_no_role_prefix", "format_not_truncated")
# Columns that are a pass (1.0) or a fail (0.0): reports show them as rates.
PASS_FAIL_COLUMNS = ("format_ok", *FORMAT_PARTS, "length_ok")
# Speaker labels models prepend or continue with (the authors' context used User1/User2).
ROLE_PREFIX = re.compile(r"^\s*(?:User\s*\d|Assistant|AI|Bot|Machine|System|Human|"
                         r"(?:Unannotated\s+|Personalized\s+)?Response)\s*:", re.I)
_TURN_LINE = re.compile(r"\n\s*(?:User\s*\d|Assistant|Human|AI)\s*:", re.I)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.S)
_TERMINAL = tuple('.!?…"\')]*~') + ("😊", "🙂", "😉")


@lru_cache(maxsize=256)
def template_format(template: str | None, configured: str) -> str:
    """The response format a candidate was asked for: the configured one, or its template's."""
    if configured != "auto":
        return configured
    if not template:
        return "json"
    from persodpo.prompting import TEMPLATES

    if template in TEMPLATES:
        return TEMPLATES[template].response_format
    # Templates from outside persodpo (e.g. the authors' import) name their format.
    return "plain" if "plain" in template else "json"


def _strip_fence(s: str) -> str:
    m = _FENCE.match(s)
    return m.group(1).strip() if m else s


def check_json(raw: str, *, allow_fence: bool = True) -> tuple[float, float, float, float]:
    stripped = raw.strip()
    if stripped[:1] == "{" and stripped[-1:] == "}" and stripped.count("{") == 1 and stripped.count("}") == 1:
        # The common case, one brace pair and nothing else: the shared parser's first block is the
        # whole output, so one json.loads decides every part (same result as check_json_general).
        try:
            obj = json.loads(stripped)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "response" in obj:
            value = obj["response"]
            text = (value if isinstance(value, str) else json.dumps(value)).strip()
            no_prefix = not ROLE_PREFIX.match(stripped) and not (text and ROLE_PREFIX.match(text))
            return 1.0, float(isinstance(value, str)), float(no_prefix), 1.0
    return check_json_general(raw, allow_fence=allow_fence)


def check_json_general(raw: str, *, allow_fence: bool = True) -> tuple[float, float, float, float]:
    parsed = parse_response(raw, "json")
    stripped = raw.strip()
    body = _strip_fence(stripped) if allow_fence and stripped.startswith("```") else stripped
    single = 0.0
    if body.startswith("{") and body.endswith("}"):
        try:
            obj = json.loads(body)
            single = float(isinstance(obj, dict) and isinstance(obj.get("response"), str))
        except ValueError:
            pass
    no_prefix = float(not ROLE_PREFIX.match(stripped) and not (parsed.text and ROLE_PREFIX.match(parsed.text)))
    # An object that was opened and never closed: the generator hit its token limit.
    not_truncated = float(parsed.status == VALID or raw.rfind("{") <= raw.rfind("}"))
    return float(parsed.status == VALID), single, no_prefix, not_truncated


def check_plain(raw: str) -> tuple[float, float, float, float]:
    parsed = parse_response(raw, "plain")
    stripped = raw.strip()
    single = float(_TURN_LINE.search(stripped) is None)
    no_prefix = float(ROLE_PREFIX.match(stripped) is None)
    not_truncated = float(stripped.endswith(_TERMINAL))
    return float(parsed.status == VALID), single, no_prefix, not_truncated


class FormatCompliance(DeterministicMetric):
    name = "format"
    reads = ("raw", "template", "finish_reason")
    description = "raw output followed the requested format: one object, no role prefix, not truncated"

    def writes(self) -> list[str]:
        return ["format_ok", *FORMAT_PARTS]

    def compute(self, cols: Cols) -> Result:
        raws, templates, finish = cols["raw"], cols.get("template"), cols.get("finish_reason")
        fmt_cfg = self.cfg.response_format
        allow_fence = bool(self.param("allow_code_fence", True))
        out = {c: [] for c in self.writes()}
        errors: list[str | None] = []
        for raw, template, fin in zip(raws, templates, finish):
            if raw is None:
                for c in out:
                    out[c].append(None)
                errors.append("no raw output (the generation request failed)")
                continue
            fmt = template_format(template, fmt_cfg)
            parts = check_json(raw, allow_fence=allow_fence) if fmt == "json" else check_plain(raw)
            if fin:
                # The server knows whether its token limit cut the reply; the text can only hint
                # (a plain reply may end without punctuation, a JSON one may close by chance).
                parts = (*parts[:3], 0.0 if fin == "length" else 1.0)
            for c, v in zip(FORMAT_PARTS, parts):
                out[c].append(v)
            out["format_ok"].append(min(parts))
            errors.append(None)
        return Result(out, errors)


class LengthCompliance(DeterministicMetric):
    name = "length"
    reads = ("text", "parse_status")
    description = "extracted reply inside the requested word window"

    def writes(self) -> list[str]:
        return ["length_ok", "length_words"]

    def compute(self, cols: Cols) -> Result:
        lo, hi = self.cfg.min_words, self.cfg.word_limit
        # str.split() is the definition of a word here and the fastest way to count them.
        n = [float(len(t.split())) if t is not None else None for t in cols["text"]]
        ok = [None if k is None else 1.0 if lo <= k <= hi else 0.0 for k in n]
        errors = [None if k is not None else f"no usable text (parse_status={s or 'unknown'})"
                  for k, s in zip(n, cols.get("parse_status"))]
        return Result({"length_ok": ok, "length_words": n}, errors)
