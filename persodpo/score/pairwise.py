"""Pairwise judging with both orders (``score.panel.pairwise: true``).

For each prompt, pairs of its replies (all pairs up to ``panel.pairwise_max_per_prompt``,
best-first by the pointwise panel when there is one) are shown to every judge in both orders,
A/B and B/A, per dimension, with a pairwise rubric (``templates/judge-pairwise-<dim>-v1.txt``)
that asks for ``{"winner": "A"|"B"|"tie"}`` (constrained where the server supports it). A
verdict counts only when the two orders agree; otherwise it is a recorded inconsistency. Cost,
tokens, the budget ledger and the judge cache work as for pointwise judgments (an answer is
cached with its winner coded as the entry's score: A = 1, B = 2, tie = 0).

The verdicts are a table of their own, ``<score output>/pairwise`` (``PAIRWISE``), one row per
pair, judge and dimension, with each order's verdict mapped back to the pair's candidates
(``a`` / ``b`` / ``tie``). The audit (``pairwise_audit``) adds to the judge audit, per judge
and dimension: ``position_consistency`` (share of pairs whose two orders agree),
``first_position_win_rate`` (of the single-order verdicts that named a winner, the share that
named the reply shown first), ``longer_win_rate`` (the same, for the longer reply, over pairs of
unequal length) and ``n_pairwise``.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from typing import Any

import pyarrow as pa

from persodpo.score.judges import MALFORMED, OK, Judgment, JudgeActor, _append, load_rubric
from persodpo.score.text import render_history

WINNER_CODE = {"A": 1.0, "B": 2.0, "tie": 0.0}
CODE_WINNER = {v: k for k, v in WINNER_CODE.items()}
ORDERS = ("ab", "ba")

PAIRWISE = pa.schema([
    ("prompt_id", pa.string()),
    ("candidate_a", pa.string()),
    ("candidate_b", pa.string()),
    ("generator_a", pa.string()),
    ("generator_b", pa.string()),
    ("words_a", pa.int64()),
    ("words_b", pa.int64()),
    ("judge", pa.string()),
    ("dimension", pa.string()),
    ("verdict_ab", pa.string()),     # a | b | tie | null: A/B order (a shown first)
    ("verdict_ba", pa.string()),     # a | b | tie | null: B/A order (b shown first), mapped back
    ("winner", pa.string()),         # a | b | tie when both orders agree, else null
    ("consistent", pa.bool_()),      # both orders answered and agree; null when one has no verdict
    ("error", pa.string()),          # why an order has no verdict
])


# -- which pairs -------------------------------------------------------------------------------
def select_pairs(candidates: pa.Table, panel_scores: dict[str, float] | None, max_per_prompt: int) -> pa.Table:
    """Pairs of replies per prompt: the replies with text, ranked by the pointwise panel (best
    first; unscored last; then by candidate id), and their pairs in rank order ((1,2), (1,3), ...,
    (2,3), ...), the first ``max_per_prompt``. ``a`` is the higher-ranked reply."""
    rows = candidates.select(["candidate_id", "prompt_id", "generator", "text"]).to_pylist()
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        if r["text"] and r["text"].strip():
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    panel_scores = panel_scores or {}
    out = {k: [] for k in ("prompt_id", "candidate_a", "candidate_b", "generator_a", "generator_b", "text_a",
                           "text_b", "words_a", "words_b")}
    for pid in sorted(by_prompt):
        ranked = sorted(by_prompt[pid], key=lambda r: (panel_scores.get(r["candidate_id"]) is None,
                                                       -(panel_scores.get(r["candidate_id"]) or 0.0),
                                                       r["candidate_id"]))
        pairs = [(i, j) for i in range(len(ranked)) for j in range(i + 1, len(ranked))][:max_per_prompt]
        for i, j in pairs:
            a, b = ranked[i], ranked[j]
            for side, r in (("a", a), ("b", b)):
                out[f"candidate_{side}"].append(r["candidate_id"])
                out[f"generator_{side}"].append(r["generator"])
                out[f"text_{side}"].append(r["text"])
                out[f"words_{side}"].append(len(r["text"].split()))
            out["prompt_id"].append(pid)
    return pa.table(out)


# -- asking ------------------------------------------------------------------------------------
def pairwise_messages(template: str, *, persona: list[str] | None, history: list[dict] | None, first: str,
                      second: str, context_turns: int) -> list[dict]:
    text = string.Template(template).safe_substitute(
        persona="\n".join(f"- {p}" for p in (persona or [])) or "(none given)",
        context=render_history(history, context_turns) or "(no earlier turns)", reply_a=first, reply_b=second)
    return [{"role": "user", "content": text}]


def constrained_winner_params(mode: str) -> dict:
    if mode == "json_schema":
        schema = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
                  "required": ["winner"], "additionalProperties": False}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "judge_winner", "strict": True, "schema": schema}}}
    if mode == "regex":
        return {"extra_body": {"structured_outputs": {"regex": r'\{"winner": ?"(A|B|tie)"\}'}}}
    return {}


def pairwise_request_params(judge) -> dict:
    """What is sent with every pairwise request: the winner constraint, then the judge's own
    params (which win), as ``judges.request_params`` does for scores."""
    return {**constrained_winner_params(judge.constrained), **judge.params}


_WINNER_KEY = re.compile(r"""["']?winner["']?\s*[:=]\s*["']?(A|B|tie)\b""", re.I)
_BARE = re.compile(r"^\s*(?:reply\s+)?(A|B|tie)\s*\.?\s*$", re.I)


def parse_winner(text: str | None) -> tuple[float | None, str, str | None]:
    """(winner code, status, reason): the JSON object's ``winner``, a ``winner: A`` line or a
    bare A / B / tie; anything else is malformed (never a guess)."""
    if text is None or not text.strip():
        return None, MALFORMED, "empty judgment"
    body = text.strip()
    for obj in re.findall(r"\{[^{}]*\}", body):
        try:
            v = json.loads(obj)
        except ValueError:
            continue
        w = v.get("winner") if isinstance(v, dict) else None
        if isinstance(w, str) and w.strip().lower() in ("a", "b", "tie"):
            return WINNER_CODE[_norm(w)], OK, None
    m = _WINNER_KEY.search(body) or _BARE.match(body)
    if m:
        return WINNER_CODE[_norm(m.group(1))], OK, None
    return None, MALFORMED, f"no winner in the judgment: {body[:80]!r}"


def _norm(w: str) -> str:
    w = w.strip()
    return "tie" if w.lower() == "tie" else w.upper()


def _mapped(code: float | None, order: str) -> str | None:
    """A judge's A/B/tie in one order, as the pair's candidate (a / b / tie)."""
    if code is None:
        return None
    w = CODE_WINNER[code]
    if w == "tie":
        return "tie"
    return {"ab": {"A": "a", "B": "b"}, "ba": {"A": "b", "B": "a"}}[order][w]


def verdict_column(judge: str, dim: str, order: str) -> str:
    return f"_pw_{judge}_{dim}_{order}"


def reason_column(judge: str, dim: str, order: str) -> str:
    return f"_pwerr_{judge}_{dim}_{order}"


def status_col(judge: str, dim: str, order: str) -> str:
    return f"_pwst_{judge}_{dim}_{order}"


class PairwiseJudgeActor(JudgeActor):
    """Ray Data UDF: one judge, every dimension, both orders of each pair row."""

    def __init__(self, judge: dict, panel: dict, prompts: list, memo: list | None = None, ledger: Any = None,
                 limiter: Any = None):
        import ray

        from persodpo.score.batch import PromptIndex
        from persodpo.score.cache import judge_namespace

        super().__init__(judge, panel, memo=memo, ledger=ledger, limiter=limiter)
        self.params = pairwise_request_params(self.judge)
        self.namespace = judge_namespace(self.judge.name, self.judge.model, self.params)
        self.rubrics = {d: load_rubric(self.panel.pairwise_rubrics[d]) for d in self.panel.dimensions}
        self.prompts = PromptIndex(ray.get(prompts[0]))

    async def __call__(self, batch: pa.Table) -> pa.Table:
        from persodpo.score.batch import cost_column, new_entries_column, tokens_column
        from persodpo.score.cache import judgment_key
        from persodpo.score.metric import Cols

        cols = Cols(self.prompts.attach(batch, source="pairwise pairs"))
        n, dims = len(cols), self.panel.dimensions
        jobs, where = [], []
        for r in range(n):
            a, b = cols["text_a"][r], cols["text_b"][r]
            for d in dims:
                template, rubric_hash = self.rubrics[d]
                for order, (first, second) in zip(ORDERS, ((a, b), (b, a))):
                    msgs = pairwise_messages(template, persona=cols["persona"][r], history=cols["history"][r],
                                             first=first, second=second, context_turns=self.panel.context_turns)
                    pair = f"{cols['candidate_a'][r]}|{cols['candidate_b'][r]}|{order}"
                    key = judgment_key(self.namespace, f"pairwise-{d}", rubric_hash, pair, msgs)
                    jobs.append(self._ask(msgs, key, parse=parse_winner))
                    where.append((r, d, order))
        results: list[Judgment] = await asyncio.gather(*jobs)
        name = self.judge.name
        verdicts = {(d, o): [None] * n for d in dims for o in ORDERS}
        reasons = {(d, o): [None] * n for d in dims for o in ORDERS}
        statuses = {(d, o): [None] * n for d in dims for o in ORDERS}
        entries: list[list[dict]] = [[] for _ in range(n)]
        tok, cost = [0] * n, [0.0] * n
        for (r, d, o), x in zip(where, results):
            verdicts[(d, o)][r] = _mapped(x.score, o)
            reasons[(d, o)][r] = x.reason
            statuses[(d, o)][r] = x.status
            tok[r] += x.tokens
            cost[r] += x.cost
            if x.entry is not None:
                entries[r].append(x.entry)
        for (d, o), v in verdicts.items():
            batch = _append(batch, verdict_column(name, d, o), pa.array(v, type=pa.string()))
            batch = _append(batch, reason_column(name, d, o), pa.array(reasons[(d, o)], type=pa.string()))
            batch = _append(batch, status_col(name, d, o), pa.array(statuses[(d, o)], type=pa.string()))
        batch = _append(batch, new_entries_column(name), pa.array([json.dumps(e) if e else None for e in entries],
                                                                 type=pa.string()))
        batch = _append(batch, tokens_column(name), pa.array(tok, type=pa.int64()))
        return _append(batch, cost_column(name), pa.array(cost, type=pa.float64()))


# -- verdicts and the audit ---------------------------------------------------------------------
def verdict_rows(block: pa.Table, judges: list[str], dims: list[str]) -> list[dict]:
    """The PAIRWISE rows of one judged block of pairs."""
    base = block.select(["prompt_id", "candidate_a", "candidate_b", "generator_a", "generator_b", "words_a",
                         "words_b"]).to_pylist()
    out = []
    for j in judges:
        for d in dims:
            ab = block.column(verdict_column(j, d, "ab")).to_pylist()
            ba = block.column(verdict_column(j, d, "ba")).to_pylist()
            eab = block.column(reason_column(j, d, "ab")).to_pylist()
            eba = block.column(reason_column(j, d, "ba")).to_pylist()
            for r, row in enumerate(base):
                both = ab[r] is not None and ba[r] is not None
                errors = "; ".join(f"{o}: {e}" for o, e in (("ab", eab[r]), ("ba", eba[r])) if e)
                out.append({**row, "judge": j, "dimension": d, "verdict_ab": ab[r], "verdict_ba": ba[r],
                            "winner": ab[r] if both and ab[r] == ba[r] else None,
                            "consistent": (ab[r] == ba[r]) if both else None, "error": errors or None})
    return out


def pairwise_audit(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{judge: {dimension: {n_pairwise, position_consistency, first_position_win_rate,
    longer_win_rate, n_inconsistent}}} from PAIRWISE rows."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["judge"], r["dimension"]), []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for (j, d), rs in groups.items():
        both = [r for r in rs if r["consistent"] is not None]
        # Single-order verdicts that named a winner: was it the reply shown first? the longer one?
        first, longer = [], []
        for r in rs:
            for order, shown_first in (("ab", "a"), ("ba", "b")):
                v = r[f"verdict_{order}"]
                if v in ("a", "b"):
                    first.append(v == shown_first)
                    if r["words_a"] != r["words_b"]:
                        long_side = "a" if r["words_a"] > r["words_b"] else "b"
                        longer.append(v == long_side)
        out.setdefault(j, {})[d] = {
            "n_pairwise": len(both),
            "position_consistency": _rate([r["consistent"] for r in both]),
            "first_position_win_rate": _rate(first),
            "longer_win_rate": _rate(longer),
            "n_inconsistent": sum(1 for r in both if not r["consistent"])}
    return out


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None
