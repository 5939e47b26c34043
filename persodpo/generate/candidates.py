"""Backend outputs -> candidate rows (the CANDIDATES contract plus accounting columns).

Pure functions over Arrow batches. The exact model output goes to ``raw``; the one shared parser
(persodpo.parsing) extracts ``text`` and ``parse_status``. A failed request is a row too
(``parse_status = "error"``, ``error`` = why, ``raw`` null): nothing is dropped silently. For an
output that parsed but not validly, ``error`` holds the parser's reason, as in the authors' import.
"""

from __future__ import annotations

import time

import pyarrow as pa

from persodpo import contracts
from persodpo.parsing import VALID, parse_response
from persodpo.prompting import get_template

ERROR = "error"

# Kept after the contract's columns: what the summary and the manifest account for.
EXTRA = pa.schema([
    ("prompt_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("finish_reason", pa.string()),
    ("generated_at", pa.float64()),  # epoch seconds when the reply came back (audits, throughput)
])
SCHEMA = pa.schema(list(contracts.CANDIDATES) + list(EXTRA))

_KEYS = ("candidate_id", "prompt_id", "generator", "sample_index", "template")


def candidate_rows(keys: dict[str, list], raw: list, error: list, n_tokens: list, prompt_tokens: list,
                   latency_s: list, cost_usd: list, finish_reason: list, generated_at: list | None = None) -> pa.Table:
    """Assemble candidate rows; ``keys`` holds the request key columns (``_KEYS``)."""
    out = {f.name: [] for f in SCHEMA}
    now = time.time()
    for i, cid in enumerate(keys["candidate_id"]):
        template = keys["template"][i]
        err = error[i] or None
        text = raw[i] if err is None else None
        if err is None:
            parsed = parse_response(text, get_template(template).response_format)
            row_text, status, reason = parsed.text, parsed.status, parsed.reason
        else:
            row_text, status, reason = None, ERROR, err
        out["candidate_id"].append(cid)
        for k in ("prompt_id", "generator", "sample_index", "template"):
            out[k].append(keys[k][i])
        out["raw"].append(text)
        out["text"].append(row_text)
        out["parse_ok"].append(status == VALID)
        out["parse_status"].append(status)
        out["n_tokens"].append(_int(n_tokens[i]) if err is None else None)
        out["latency_s"].append(_float(latency_s[i]))
        out["error"].append(None if status == VALID else reason)
        out["prompt_tokens"].append(_int(prompt_tokens[i]) if err is None else None)
        out["cost_usd"].append(_float(cost_usd[i]))
        out["finish_reason"].append(finish_reason[i] if err is None else None)
        out["generated_at"].append(_float(generated_at[i]) if generated_at and generated_at[i] is not None else now)
    return pa.table(out, schema=SCHEMA)


def _int(v) -> int | None:
    return None if v is None or v != v or int(v) < 0 else int(v)


def _float(v) -> float | None:
    return None if v is None or v != v or float(v) < 0 else float(v)


def _col(batch: pa.Table, name: str) -> list:
    return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows


def from_vllm(batch: pa.Table, max_tokens_column: str = "max_tokens") -> pa.Table:
    """Rows that went through ray.data.llm's vLLM processor (``__inference_error__`` marks the rows
    the engine failed on; they bypass the processor's postprocess, so every column is optional)."""
    errors = [e or None for e in _col(batch, "__inference_error__")]
    n_gen = _col(batch, "num_generated_tokens")
    budget = _col(batch, max_tokens_column)
    # The processor does not pass vLLM's finish_reason on; a reply that used the whole token
    # budget was cut (or ended exactly on it, which the parser's status then tells apart).
    finish = [None if n is None else ("length" if b is not None and n >= b else "stop") for n, b in zip(n_gen, budget)]
    return candidate_rows({k: _col(batch, k) for k in _KEYS}, _col(batch, "generated_text"), errors, n_gen,
                          _col(batch, "num_input_tokens"), _col(batch, "time_taken_llm"),
                          [None] * batch.num_rows, finish, _col(batch, "generated_at"))


def from_api(batch: pa.Table, prefix: str = "api_") -> pa.Table:
    """Rows that went through persodpo.llm_api's actor pool (``api_*`` columns)."""
    return candidate_rows({k: _col(batch, k) for k in _KEYS}, _col(batch, prefix + "text"),
                          _col(batch, prefix + "error"), _col(batch, prefix + "completion_tokens"),
                          _col(batch, prefix + "prompt_tokens"), _col(batch, prefix + "latency_s"),
                          _col(batch, prefix + "cost_usd"), _col(batch, prefix + "finish_reason"))
