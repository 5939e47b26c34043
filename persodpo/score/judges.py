"""The LLM judge panel: rubric prompts per dimension, sent through litellm to any endpoint.

Per (candidate, dimension) a judge answers one rubric prompt (``templates/judge-<dim>-v1.txt``)
with ``{"score": n}``. Where the server supports it the answer is constrained (``json_schema``:
OpenAI and vLLM ``response_format``; ``regex``: vLLM ``structured_outputs``); everywhere it is
parsed tolerantly (JSON, "Score: 4", "4/5", a bare number), and a judgment that still has no
score, or one outside the scale, is None with the reason recorded, never a guess.

``JudgeActor`` is the Ray Data UDF (an async callable class: one litellm client per actor, many
requests in flight). Per row and dimension it: skips the judge's own generator (when
configured) and rows without text; answers from the cache when it can; otherwise reserves the
request's worst-case cost on the shared budget ledger, sends it, settles the real cost, parses
the answer and caches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from persodpo.score.batch import (WORDS_COLUMN, audit_column, cost_column, judge_column, new_entries_column,
                                  status_column, tokens_column)
from persodpo.score.metric import Cols, error_column
from persodpo.score.text import render_history

# Row status of one judgment (counted per judge in the manifest).
OK, CACHED, MALFORMED, OUT_OF_RANGE = "ok", "cached", "malformed", "out_of_range"
REQUEST_ERROR, BUDGET, SKIPPED_OWN, NO_TEXT = "request_error", "budget", "skipped_own", "no_text"
# Own generator's reply scored for the self-preference audit only (skipped for the panel).
AUDIT_OWN = "audit_own"
STATUSES = (OK, CACHED, MALFORMED, OUT_OF_RANGE, REQUEST_ERROR, BUDGET, SKIPPED_OWN, NO_TEXT, AUDIT_OWN)


# -- rubrics -------------------------------------------------------------------------------------
def load_rubric(name: str) -> tuple[str, str]:
    """(template text, short hash) of a packaged rubric name or a rubric file path."""
    from importlib import resources

    if name.endswith(".txt") or "/" in name:
        p = Path(name).expanduser()
        if not p.is_file():
            from persodpo.errors import ConfigError

            raise ConfigError(f"rubric file {name} not found", key="score.panel.rubrics")
        text = p.read_text(encoding="utf-8")
    else:
        res = resources.files("persodpo.score") / "templates" / f"{name}.txt"
        if not res.is_file():
            from persodpo.errors import ConfigError

            known = sorted(f.name[:-4] for f in (resources.files("persodpo.score") / "templates").iterdir()
                           if f.name.endswith(".txt"))
            raise ConfigError(f"unknown rubric {name!r}; packaged: {known}", key="score.panel.rubrics")
        text = res.read_text(encoding="utf-8")
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def scale_anchors(scale: tuple[int, int]) -> dict[str, int]:
    """``anchor1``..``anchor5``: the five rubric levels placed evenly on ``panel.scale`` (on 1..5
    they are 1..5; on 0..10 they are 0, 2, 5, 8, 10), so a rubric written once fits any scale."""
    lo, hi = scale
    return {f"anchor{k}": int(round(lo + (k - 1) * (hi - lo) / 4)) for k in range(1, 6)}


def judge_messages(template: str, *, persona: list[str] | None, history: list[dict] | None, reply: str,
                   context_turns: int, scale: tuple[int, int]) -> list[dict]:
    # The rubric names the scale through $low/$high/$anchorK, never literal numbers: the answer
    # is constrained to panel.scale, so a rubric saying "1 to 5" on a 0..10 panel would confuse it.
    text = string.Template(template).safe_substitute(
        persona="\n".join(f"- {p}" for p in (persona or [])) or "(none given)",
        context=render_history(history, context_turns) or "(no earlier turns)",
        reply=reply, low=scale[0], high=scale[1], **scale_anchors(scale))
    return [{"role": "user", "content": text}]


# -- constrained output and tolerant parsing --------------------------------------------------------
def constrained_params(mode: str, scale: tuple[int, int]) -> dict:
    lo, hi = scale
    if mode == "json_schema":
        schema = {"type": "object", "properties": {"score": {"type": "integer", "enum": list(range(lo, hi + 1))}},
                  "required": ["score"], "additionalProperties": False}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "judge_score", "strict": True, "schema": schema}}}
    if mode == "regex":
        alts = "|".join(str(v) for v in range(hi, lo - 1, -1))
        return {"extra_body": {"structured_outputs": {"regex": r'\{"score": ?(' + alts + r')\}'}}}
    return {}


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_KEYED = re.compile(r"""["']?\b(?:score|rating)\b["']?\s*[:=]\s*["']?(-?\d+(?:\.\d+)?)""", re.I)
_BARE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*\.?\s*$")
_OUT_OF = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)\b", re.I)


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def parse_judgment(text: str | None, scale: tuple[int, int]) -> tuple[float | None, str, str | None]:
    """(score, status, reason): status ok | malformed | out_of_range; the reason when no score."""
    if text is None or not text.strip():
        return None, MALFORMED, "empty judgment"
    body = text.strip()
    fenced = _FENCE.search(body)
    candidates = [fenced.group(1)] if fenced else []
    candidates += _OBJ.findall(body)
    value: float | None = None
    found = False
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            key = next((k for k in obj if str(k).lower() in ("score", "rating")), None)
            if key is not None:
                value, found = _number(obj[key]), True
                break
    if not found:
        for rx in (_KEYED, _BARE):
            m = rx.search(body)
            if m:
                value, found = float(m.group(1)), True
                break
    if not found:
        m = _OUT_OF.search(body)
        if m and int(m.group(2)) == scale[1]:
            value, found = float(m.group(1)), True
    short = body[:80].replace("\n", " ")
    if not found or value is None:
        return None, MALFORMED, f"no score in the judgment: {short!r}"
    if not scale[0] <= value <= scale[1]:
        return None, OUT_OF_RANGE, f"score {value:g} outside {scale[0]}..{scale[1]}: {short!r}"
    return value, OK, None


# -- the actor ---------------------------------------------------------------------------------
@dataclass
class Judgment:
    score: float | None
    status: str
    reason: str | None = None
    tokens: int = 0
    cost: float = 0.0
    entry: dict | None = None     # a new cache entry (an answer this run paid for)
    audit: float | None = None    # a score of the judge's own generator, for the audit only


def audit_sampled(candidate_id: str, share: float) -> bool:
    """Deterministic sample of a share of the candidates (the same ones on every rerun: cached)."""
    if share <= 0:
        return False
    h = int(hashlib.sha256(f"audit\x1f{candidate_id}".encode()).hexdigest()[:8], 16)
    return h < share * 0x1_0000_0000


def request_params(judge, scale: tuple[int, int]) -> dict:
    """What is sent with every request: the constraint, then the judge's own params (which win)."""
    return {**constrained_params(judge.constrained, scale), **judge.params}


class JudgeActor:
    """Ray Data UDF: one judge over all dimensions (async: many requests in flight per actor)."""

    def __init__(self, judge: dict, panel: dict, memo: list | None = None, ledger: Any = None,
                 limiter: Any = None):
        from persodpo.llm_api import LiteLLMClient
        from persodpo.score.cache import KNOWN_SCHEMA, KnownJudgments, judge_namespace
        from persodpo.score.config import JudgeSpec, PanelConfig

        self.judge = JudgeSpec.model_validate(judge)
        self.panel = PanelConfig.model_validate(panel)
        self.scale = tuple(self.panel.scale)
        self.client = LiteLLMClient(self.judge, limiter=limiter, name=self.judge.name, kind="judge")
        self.params = request_params(self.judge, self.scale)
        self.rubrics = {d: load_rubric(self.panel.rubrics[d]) for d in self.panel.dimensions}
        self.namespace = judge_namespace(self.judge.name, self.judge.model, self.params)
        # The cache is read and written by the driver only (it holds the storage credentials):
        # actors get the known judgments through the object store and return new ones per row.
        # The known ones are indexed once, without a Python object each (a cache holds millions);
        # memo holds only this actor's own answers, so a repeated request in a run is asked once.
        self.known = KnownJudgments(KNOWN_SCHEMA.empty_table())
        self.memo: dict[str, dict] = {}
        if memo:
            import ray

            self.known = KnownJudgments.of(ray.get(memo[0]))
        self.ledger = ledger
        self.sem: asyncio.Semaphore | None = None

    # Worst case of one request, so a granted reservation never lets spending pass the cap.
    def estimate_cost(self, messages: list[dict]) -> float:
        from persodpo.budget import worst_case_cost

        n_out = int(self.params.get("max_tokens") or self.params.get("max_completion_tokens") or 1024)
        return worst_case_cost(self.judge.model, messages, n_out, self.panel.cost_safety_factor)

    async def _ask(self, messages: list[dict], key: str, parse=None) -> Judgment:
        e = self.memo.get(key)
        if e is None:
            e = self.known.get(key)
        if e is not None:
            reason = None if e["score"] is not None else f"cached: {e['error']}"
            return Judgment(e["score"], CACHED, reason)
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.judge.max_in_flight)
        async with self.sem:
            reserved = 0.0
            if self.ledger is not None:
                reserved = self.estimate_cost(messages)
                if not await self.ledger.reserve.remote(reserved):
                    state = await self.ledger.state.remote()
                    return Judgment(None, BUDGET, f"judge budget cap reached (spent ${state['spent_usd']:.6f} of "
                                                  f"${state['cap_usd']:g}; this request could cost up to ${reserved:.6f})")
            res = await self.client.complete(messages, **self.params)
            if self.ledger is not None:
                actual = res.cost_usd if res.cost_usd is not None else (reserved if res.error is None else 0.0)
                await self.ledger.settle.remote(reserved, actual)
        if res.error is not None:
            return Judgment(None, REQUEST_ERROR, res.error)
        tokens = int(res.prompt_tokens or 0) + int(res.completion_tokens or 0)
        score, status, reason = parse(res.text) if parse else parse_judgment(res.text, self.scale)
        entry = {"key": key, "score": score, "error": reason, "status": status, "prompt_tokens": res.prompt_tokens,
                 "completion_tokens": res.completion_tokens, "cost_usd": res.cost_usd, "created_at": time.time()}
        self.memo[key] = entry
        return Judgment(score, status, reason, tokens, float(res.cost_usd or 0.0), entry)

    async def _audit_own(self, messages: list[dict], key: str, skipped: Judgment) -> Judgment:
        """Ask about the judge's own generator for the self-preference audit; the row stays
        skipped for the panel, and the request is paid and cached like any other."""
        j = await self._ask(messages, key)
        return Judgment(None, AUDIT_OWN, skipped.reason, j.tokens, j.cost, j.entry, audit=j.score)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        from persodpo.score.cache import judgment_key

        cols = Cols(batch)
        n = len(cols)
        dims = self.panel.dimensions
        skip_gen = self.judge.generator if self.panel.skip_own_generator else None
        jobs = []
        for r in range(n):
            text, gen = cols["text"][r], cols["generator"][r]
            own = skip_gen is not None and gen == skip_gen
            audit = own and audit_sampled(cols["candidate_id"][r], self.panel.audit_own_share)
            for d in dims:
                skipped = Judgment(None, SKIPPED_OWN, f"judge {self.judge.name} does not score its own generator ({gen})")
                if own and not audit:
                    jobs.append(_done(skipped))
                    continue
                if text is None or not text.strip():
                    jobs.append(_done(Judgment(None, NO_TEXT, "no usable text")))
                    continue
                template, rubric_hash = self.rubrics[d]
                msgs = judge_messages(template, persona=cols["persona"][r], history=cols["history"][r], reply=text,
                                      context_turns=self.panel.context_turns, scale=self.scale)
                key = judgment_key(self.namespace, d, rubric_hash, cols["candidate_id"][r], msgs)
                jobs.append(self._audit_own(msgs, key, skipped) if audit else self._ask(msgs, key))
        results: list[Judgment] = await asyncio.gather(*jobs)
        name = self.judge.name
        # New cache entries travel back with their row, for the driver to store.
        per_row: list[list[dict]] = [[] for _ in range(n)]
        for k, x in enumerate(results):
            if x.entry is not None:
                per_row[k // len(dims)].append(x.entry)
        batch = _append(batch, new_entries_column(name), pa.array([json.dumps(e) if e else None for e in per_row],
                                                         type=pa.string()))
        tok = [0] * n
        cost = [0.0] * n
        for k, d in enumerate(dims):
            rs = results[k::len(dims)]
            col = judge_column(name, d)
            batch = _append(batch, col, pa.array([x.score for x in rs], type=pa.float64()))
            batch = _append(batch, error_column(col), pa.array([x.reason for x in rs], type=pa.string()))
            batch = _append(batch, status_column(name, d), pa.array([x.status for x in rs], type=pa.string()))
            batch = _append(batch, audit_column(name, d), pa.array([x.audit for x in rs], type=pa.float64()))
            for r, x in enumerate(rs):
                tok[r] += x.tokens
                cost[r] += x.cost
        batch = _append(batch, WORDS_COLUMN, pa.array([None if t is None else float(len(t.split()))
                                                       for t in cols["text"]], type=pa.float64()))
        batch = _append(batch, tokens_column(name), pa.array(tok, type=pa.int64()))
        return _append(batch, cost_column(name), pa.array(cost, type=pa.float64()))


async def _done(j: Judgment) -> Judgment:
    return j


def _append(batch: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, arr)
    return batch.append_column(name, arr)
