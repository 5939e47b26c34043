"""Import the PersoDPO authors' published data folder into prompts / candidates / scores.

Layout (see ``shared/data/persodpo-focus/README.md``): ``prompts/FoCus-{train,valid}.csv``,
``raw_responses/<generator>-train.csv`` (row i answers prompt i), and
``scored_responses/<generator>-train-results.csv`` (their four metrics; ``gen_response`` there is
the text the authors extracted). Raw outputs are parsed with the one shared parser
(:mod:`persodpo.parsing`), exactly as the authors' code does: valid JSON -> the authors' text and
scores; fallback -> the text after ``"response": "`` and no scores (recipes give it worst-case
scores); unusable -> no text.

The held-out outputs on the valid prompts (zero-shot Qwen2 models and the authors' fine-tuned
Qwen2-0.5B) go to ``eval_candidates`` / ``eval_scores`` for the evaluation stage.
"""

from __future__ import annotations

import json

import pyarrow as pa

from persodpo import contracts
from persodpo import storage as st
from persodpo.errors import InputError
from persodpo.ingest.common import read_text
from persodpo.ingest.persobench import read_rows, rows_to_prompts
from persodpo.parsing import FALLBACK, UNUSABLE, VALID, parse_json_response

SOURCE = "persodpo-authors"
TEMPLATE = "persobench-json-authors"

# file stem -> generator name (the authors' "Qwen2-5B" is Qwen2-0.5B-Instruct).
TRAIN_GENERATORS = {
    "Llama3-1-8B-Instruct": "Llama-3.1-8B-Instruct",
    "Mistral-7B-Instruct": "Mistral-7B-Instruct-v0.2",
    "Qwen2-7B-Instruct": "Qwen2-7B-Instruct",
    "Qwen2-5B-Instruct": "Qwen2-0.5B-Instruct",
    "gpt-3.5-turbo": "gpt-3.5-turbo",
    "gpt-4o-mini": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4-turbo",
}
# (raw file stem, scored file stem) -> model name, on the valid prompts.
EVAL_MODELS = {
    ("Qwen2-5B-Instruct", "Qwen2-5B-benchmark-results"): "Qwen2-0.5B-Instruct",
    ("Qwen2-7B-benchmark", "Qwen2-7B-benchmark-results"): "Qwen2-7B-Instruct",
    ("Qwen2-5B-Instruct-length_prior", "Qwen2-5B-Instruct-length_prior-results"): "Qwen2-0.5B-Instruct+authors-length_prior",
    ("Qwen2-5B-Instruct-perso", "Qwen2-5B-Instruct-perso-results"): "Qwen2-0.5B-Instruct+authors-perso",
    ("Qwen2-5B-Instruct-simple", "Qwen2-5B-Instruct-simple-results"): "Qwen2-0.5B-Instruct+authors-simple",
}
METRICS = {"Coh-UniEval": "coh_unieval", "C Score": "c_score", "UE Score": "ue_score",
           "Persona Distance": "persona_distance"}
SCORED_COLUMNS = ("context", "gen_response", *METRICS)


def _float(value: str, *, file: str, record: str, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"not a number: {value!r}", file=file, record=record, field=field) from None


def _outputs(prompts: pa.Table, raw_uri: str, scored_uri: str, generator: str, storage) -> tuple[list[dict], list[dict]]:
    raw_rows = read_rows(read_text(raw_uri, storage), file=raw_uri, columns=("gen_response", "response_time"))
    scored_rows = read_rows(read_text(scored_uri, storage), file=scored_uri, columns=SCORED_COLUMNS)
    n = prompts.num_rows
    for uri, rows in ((raw_uri, raw_rows), (scored_uri, scored_rows)):
        if len(rows) != n:
            raise InputError(f"{len(rows)} rows, but the prompts file has {n} (rows must align)", file=uri)
    pids = prompts.column("prompt_id").to_pylist()
    cands, scores = [], []
    for i in range(n):
        rec = f"row {i + 1}"
        raw = raw_rows[i]["gen_response"]
        raw = raw if raw != "" else None
        parsed = parse_json_response(raw)
        srow = scored_rows[i]
        text = parsed.text
        if parsed.status == VALID:
            # The authors scored their own extraction; keep their text so text and scores agree.
            authors_text = (srow.get("gen_response") or "").strip()
            if authors_text:
                text = authors_text
        rt = raw_rows[i].get("response_time")
        cid = contracts.candidate_id(pids[i], generator, 0)
        cands.append({
            "candidate_id": cid, "prompt_id": pids[i], "generator": generator, "sample_index": 0,
            "raw": raw, "text": text, "parse_ok": parsed.status == VALID, "parse_status": parsed.status,
            "n_tokens": None, "latency_s": float(rt) if rt not in (None, "") else None,
            "error": None if parsed.status == VALID else parsed.reason, "template": TEMPLATE,
        })
        score = {"candidate_id": cid, "prompt_id": pids[i], "generator": generator,
                 "judge_tokens": None, "judge_cost_usd": None}
        if parsed.status == VALID:
            for col, name in METRICS.items():
                score[name] = _float(srow[col], file=scored_uri, record=rec, field=col)
            score["score_errors"] = None
        else:
            for name in METRICS.values():
                score[name] = None
            score["score_errors"] = json.dumps({name: f"authors scored only valid JSON outputs (this one: {parsed.status})"
                                                for name in METRICS.values()})
        scores.append(score)
    return cands, scores


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def read_authors(root: str, storage=None) -> dict[str, pa.Table]:
    """Read the authors' folder into tables: prompts, candidates, scores, eval_candidates, eval_scores."""
    prompts = {}
    for split in ("train", "valid"):
        uri = st.join(root, "prompts", f"FoCus-{split}.csv")
        rows = read_rows(read_text(uri, storage), file=uri)
        prompts[split] = rows_to_prompts(rows, file=uri, source=SOURCE, split=split, id_prefix=f"FoCus-{split}")
    scores_schema = contracts.scores_schema(list(METRICS.values()))
    out_c, out_s = [], []
    for stem, gen in TRAIN_GENERATORS.items():
        c, s = _outputs(prompts["train"], st.join(root, "raw_responses", f"{stem}-train.csv"),
                        st.join(root, "scored_responses", f"{stem}-train-results.csv"), gen, storage)
        out_c += c
        out_s += s
    ev_c, ev_s = [], []
    for (raw_stem, scored_stem), model in EVAL_MODELS.items():
        c, s = _outputs(prompts["valid"], st.join(root, "raw_responses", f"{raw_stem}.csv"),
                        st.join(root, "scored_responses", f"{scored_stem}.csv"), model, storage)
        ev_c += c
        ev_s += s
    return {
        "prompts": pa.concat_tables([prompts["train"], prompts["valid"]]),
        "candidates": _table(out_c, contracts.CANDIDATES),
        "scores": _table(out_s, scores_schema),
        "eval_candidates": _table(ev_c, contracts.CANDIDATES),
        "eval_scores": _table(ev_s, scores_schema),
    }


def status_counts(candidates: pa.Table) -> dict[str, dict[str, int]]:
    """{generator: {valid, fallback, unusable}} for the summary and the closing note."""
    out: dict[str, dict[str, int]] = {}
    for g, s in zip(candidates.column("generator").to_pylist(), candidates.column("parse_status").to_pylist()):
        d = out.setdefault(g, {VALID: 0, FALLBACK: 0, UNUSABLE: 0})
        d[s] = d.get(s, 0) + 1
    return out
