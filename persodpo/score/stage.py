"""The score stage: candidates (+ prompts) -> scores, on Ray Data.

    persodpo score --config C --input CANDIDATES --prompts PROMPTS --output SCORES

Topology (DESIGN.md section 4): the candidates are read in blocks of ``block_rows``; one task per
block joins the prompt fields (prompts broadcast through the object store) and runs every
deterministic metric; each model (NLI, embeddings, UniEval) runs as a class-based actor pool that
loads it once (``num_gpus`` per actor on clusters); each judge is a litellm async actor pool; a
last task per block conforms to the scores contract and aggregates the panel. The driver streams
the results into Parquet parts (``StageOutput``: complete or not there), checks that no row was
lost, and writes the manifest with null counts, judge requests, tokens, cost and budget use.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError, InputError, StageError
from persodpo.manifest import stage_manifest
from persodpo.score.batch import (PROMPT_FIELDS, PromptIndex, bookkeeping_columns, cost_column, finalize,
                                  judge_column, new_entries_column, panel_columns, status_column, tokens_column)
from persodpo.score.metric import DETERMINISTIC, MODEL
from persodpo.score.registry import REGISTRY, build_metrics, columns_of

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("candidate_id", "prompt_id", "generator")
# Read when present: format per template, reasons, truncation from the server (else from the text).
OPTIONAL_COLUMNS = ("template", "parse_status", "finish_reason")


# -- per-block functions run by Ray (module level: they pickle by reference) -------------------------
_PROMPTS: dict[str, PromptIndex] = {}
_METRICS: dict[str, list] = {}


def _prepare(batch: pa.Table, *, prompts: list, score_cfg: str, source: str) -> pa.Table:
    """Join prompt fields and run the deterministic metrics (one pass per block)."""
    import ray

    from persodpo.score.batch import deterministic
    from persodpo.score.config import ScoreConfig

    ref = prompts[0]
    key = ref.hex()
    if key not in _PROMPTS:
        _PROMPTS.clear()  # one stage at a time per worker: drop a previous run's prompts
        _PROMPTS[key] = PromptIndex(ray.get(ref))
    if score_cfg not in _METRICS:
        cfg = ScoreConfig.model_validate_json(score_cfg)
        _METRICS[score_cfg] = [m for m in build_metrics(cfg) if m.kind == DETERMINISTIC]
    batch = _PROMPTS[key].attach(batch, source=source)
    return deterministic(batch, _METRICS[score_cfg])


class ModelMetricsActor:
    """Loads one model once; computes every metric of the stage that uses it."""

    def __init__(self, family: str, model: str, specs: list[dict], score_cfg: str, num_cpus: float,
                 num_gpus: float):
        import torch

        from persodpo.score.config import MetricSpec, ScoreConfig
        from persodpo.score.registry import load_family

        torch.set_num_threads(max(1, int(num_cpus)))
        cfg = ScoreConfig.model_validate_json(score_cfg)
        self.metrics = [REGISTRY[s["name"]](MetricSpec.model_validate(s), cfg) for s in specs]
        self.model = load_family(family, model, num_gpus=num_gpus)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from persodpo.score.batch import add_result
        from persodpo.score.metric import Cols

        cols = Cols(batch)
        for m in self.metrics:
            batch = add_result(batch, m.name, m.compute(cols, self.model))
        return batch


def _finalize(batch: pa.Table, **kw: Any) -> pa.Table:
    return finalize(batch, **kw)


# -- driver-side checks --------------------------------------------------------------------------
def _input_schema(uri: str, storage) -> tuple[pa.Schema | None, str | None]:
    parts = st.part_uris(uri, storage)
    if not parts:
        return None, None
    fs, path = st.resolve(parts[0], storage)
    try:
        return pq.read_schema(path, filesystem=fs), parts[0]
    except OSError as exc:
        raise st.explain_error(parts[0], exc) from None


def _check_inputs(cfg: PersoDPOConfig, metrics: list, judges: list) -> tuple[pa.Table, int]:
    c = cfg.score
    schema, part = _input_schema(c.input, cfg.storage)
    needed = set(CANDIDATE_COLUMNS)
    for m in metrics:
        needed |= set(m.reads) - set(PROMPT_FIELDS)
    if judges:
        needed |= {"text"}
    if schema is not None:
        missing = sorted(col for col in needed if col not in schema.names and col not in OPTIONAL_COLUMNS)
        if missing:
            raise InputError(f"candidates table lacks column(s) {missing} that the configured metrics read",
                             file=part, field=missing[0])
    prompts = st.read_table(c.prompts, cfg.storage, columns=["prompt_id", *PROMPT_FIELDS])
    known = set(prompts.column("prompt_id").to_pylist())
    n = 0
    if schema is not None:
        ids = st.read_table(c.input, cfg.storage, columns=["candidate_id", "prompt_id"])
        n = ids.num_rows
        seen: set[str] = set()
        for cid, pid in zip(ids.column("candidate_id").to_pylist(), ids.column("prompt_id").to_pylist()):
            if pid not in known:
                raise InputError(f"prompt id {pid!r} is not in the prompts table {c.prompts}", file=c.input,
                                 record=f"candidate {cid}", field="prompt_id")
            if cid in seen:
                raise InputError("duplicate candidate id", file=c.input, record=f"candidate {cid}",
                                 field="candidate_id")
            seen.add(cid)
    return prompts, n


def _check_judges(judges: list, panel) -> None:
    for k, j in enumerate(judges):
        try:
            j.api_key()  # a missing key variable fails here, before any work starts
        except ConfigError as exc:
            raise ConfigError(str(exc.args[0]).split(": ", 1)[-1], key=f"score.judges.{k}.api_key_env") from None
    if panel.budget_usd is None:
        return
    import litellm

    from persodpo.llm_api import LiteLLMClient

    for k, j in enumerate(judges):
        LiteLLMClient(j)  # registers the judge's configured prices with litellm
        try:
            litellm.cost_per_token(model=j.model, prompt_tokens=1, completion_tokens=1)
        except Exception:  # noqa: BLE001 - litellm raises several types for unknown models
            raise ConfigError(f"judge {j.name}: a budget cap needs prices, and litellm has none for {j.model}; "
                              "set input_cost_per_token and output_cost_per_token", key=f"score.judges.{k}") from None
        if not (j.params.get("max_tokens") or j.params.get("max_completion_tokens")):
            raise ConfigError(f"judge {j.name}: a budget cap needs params.max_tokens (the worst-case reply length)",
                              key=f"score.judges.{k}.params")


def judge_cache_uri(c) -> str | None:
    """Where the judge cache of the score section ``c`` lives (None: no cache)."""
    cache = c.panel.cache
    if cache in (None, "", "off", "none"):
        return None
    if cache == "auto":
        return c.output.rstrip("/") + ".judge-cache"
    return cache


def _model_groups(metrics: list) -> list[tuple[tuple, list]]:
    groups: dict[tuple, list] = defaultdict(list)
    for m in metrics:
        if m.kind == MODEL:
            groups[m.pool_key()].append(m)
    return list(groups.items())


# -- the stage ---------------------------------------------------------------------------------------
def run_stage(cfg: PersoDPOConfig) -> dict:
    c = cfg.score
    for key in ("input", "prompts", "output"):
        if not getattr(c, key):
            flag = "--input" if key == "input" else f"--{key}"
            raise ConfigError(f"no {key} URI (use {flag} or score.{key})", key=f"score.{key}")
    from persodpo.check import follow_candidates_word_limit

    # Length compliance is measured against the limit the replies were asked for.
    cfg = follow_candidates_word_limit(cfg, "score", c.input)
    c = cfg.score
    t0 = time.time()
    metrics = build_metrics(c)
    judges = list(c.judges)
    dims = c.panel.dimensions if judges else []
    judge_names = [j.name for j in judges]
    metric_cols = columns_of(metrics)
    all_cols = metric_cols + panel_columns(judge_names, dims)
    try:
        schema = contracts.scores_schema(all_cols)
    except ValueError as exc:
        raise ConfigError(str(exc), key="score.metrics") from None
    if len(set(all_cols)) != len(all_cols):
        raise ConfigError("two metrics or judges write the same column", key="score.metrics")
    _check_judges(judges, c.panel)
    prompts, n_candidates = _check_inputs(cfg, metrics, judges)
    cache_uri = judge_cache_uri(c) if judges else None

    from persodpo.local_server import local_servers

    with local_servers([(j.api_base, j.model) for j in judges]) as urls:
        judges = [j.model_copy(update={"api_base": urls.get(j.api_base, j.api_base)}) for j in judges]
        out, totals = _run(cfg, metrics, judges, dims, schema, prompts, n_candidates, cache_uri)

    wall = round(time.time() - t0, 3)
    judges_summary = totals["judges"]
    cost = round(sum(j["cost_usd"] for j in judges_summary.values()), 8)
    tokens = sum(j["tokens"] for j in judges_summary.values())
    # The pairwise audit is merged into judge_audit; the rest (output, counts) is its own key.
    pairwise = {k: v for k, v in (totals.get("pairwise") or {}).items() if k != "audit"} or None
    manifest = stage_manifest(
        cfg, "score", rows=totals["rows"], n_candidates=n_candidates, input=c.input, prompts=c.prompts,
        metrics=[{"name": m.name, "kind": m.kind, "reads": list(m.reads), "writes": m.writes(),
                  **({"model": m.model} if m.kind == MODEL else {})} for m in metrics],
        columns=all_cols, null_counts=totals["nulls"], null_reasons=totals["reasons"], judges=judges_summary,
        judge_tokens=tokens, cost_usd=cost, budget=totals["budget"], cache=cache_uri,
        word_limit=c.word_limit, panel_calibration=totals.get("panel_calibration"),
        judge_audit=totals.get("judge_audit"),
        pairwise=pairwise)
    out.commit(manifest)
    log.info("score: %d candidates -> %s (%.1fs)", totals["rows"], c.output, wall)
    return {"stage": "score", "output": c.output, "n_candidates": n_candidates, "n_scored": totals["rows"],
            "columns": all_cols, "null_counts": totals["nulls"], "judges": judges_summary,
            "judge_tokens": tokens, "cost_usd": cost, "budget": totals["budget"],
            "panel_calibration": totals.get("panel_calibration"), "judge_audit": totals.get("judge_audit"),
            "pairwise": pairwise,
            "started_at": t0, "arrivals": totals.get("arrivals"), "wall_time_s": wall}


def _run(cfg: PersoDPOConfig, metrics: list, judges: list, dims: list[str], schema: pa.Schema, prompts: pa.Table,
         n_candidates: int, cache_uri: str | None) -> tuple[st.StageOutput, dict]:
    c = cfg.score
    judge_names = [j.name for j in judges]
    out = st.StageOutput(c.output, cfg.storage).begin()
    totals: dict[str, Any] = {"rows": 0, "nulls": Counter(), "reasons": Counter(), "budget": None,
                              "judge_errors": {j.name: Counter() for j in judges},
                              "judges": {j.name: {"model": j.model, "requests": 0, "tokens": 0, "cost_usd": 0.0,
                                                  **{s: 0 for s in _statuses()}} for j in judges}}
    if n_candidates == 0:
        out.write_table(schema.empty_table())
        totals["nulls"], totals["reasons"] = {}, {}
        return out, totals

    from persodpo.llm_api import actor_pool, api_actor_pool
    from persodpo.raycluster import init_ray, read_output

    ray = init_ray(cfg.ray, cfg.storage)
    cfg_json = c.model_dump_json()
    ds = read_output(c.input, cfg.storage)
    ds = ds.repartition(target_num_rows_per_block=c.block_rows)
    ds = ds.map_batches(_prepare, fn_kwargs={"prompts": [ray.put(prompts)], "score_cfg": cfg_json, "source": c.input},
                        batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    if judges or _model_groups(metrics):
        ds = ds.repartition(target_num_rows_per_block=c.actor_block_rows)
    for (family, model, num_cpus, num_gpus, conc, batch_size), group in _model_groups(metrics):
        ds = ds.map_batches(
            ModelMetricsActor,
            fn_constructor_kwargs={"family": family, "model": model, "specs": [m.spec.model_dump() for m in group],
                                   "score_cfg": cfg_json, "num_cpus": num_cpus, "num_gpus": num_gpus},
            compute=actor_pool(conc), num_cpus=num_cpus, num_gpus=num_gpus or None, batch_size=batch_size,
            batch_format="pyarrow")
    ledger = None
    if judges and c.panel.budget_usd is not None:
        from persodpo.budget import ledger_actor

        ledger = ledger_actor(c.panel.budget_usd)
    caches: dict[str, tuple] = {}
    if judges:
        from persodpo.score.cache import JudgeCache, judge_namespace
        from persodpo.rate_limit import endpoint_limiter
        from persodpo.score.judges import JudgeActor, request_params

        cache = JudgeCache(cache_uri, cfg.storage) if cache_uri else None
        for j in judges:
            memo = None
            if cache is not None:
                ns = judge_namespace(j.name, j.model, request_params(j, tuple(c.panel.scale)))
                # Arrow through the object store: actors read it in place and index it once each
                # (persodpo.score.cache.KnownJudgments); a dict per judgment would not fit at scale.
                known = cache.load_table(ns)
                caches[j.name] = (cache, ns, [])
                totals["judges"][j.name]["cache_entries_before"] = known.num_rows
                memo = [ray.put(known)]
                del known
            # The key is read by name in the judge's actors from their process environment (local
            # Ray: inherited from this driver; clusters: the nodes' secret injection). Never a
            # runtime_env: Ray shows those in the dashboard, its state API and its logs.
            ds = ds.map_batches(
                JudgeActor,
                fn_constructor_kwargs={"judge": j.model_dump(mode="json"), "panel": c.panel.model_dump(mode="json"),
                                       "memo": memo, "ledger": ledger, "limiter": endpoint_limiter(j)},
                compute=api_actor_pool(j.concurrency), num_cpus=j.num_cpus, batch_size=j.batch_size,
                batch_format="pyarrow")
    groups = [(m.name, m.writes()) for m in metrics]
    groups += [(f"judge_{j}_{d}", [f"judge_{j}_{d}"]) for j in judge_names for d in dims]
    private = bookkeeping_columns(judge_names, dims)
    ds = ds.map_batches(_finalize, fn_kwargs={"groups": groups, "schema": schema, "judges": judge_names,
                                              "dims": dims, "scale": tuple(c.panel.scale), "keep": private},
                        batch_format="pyarrow", batch_size=None)
    seen = 0
    buffered: list[pa.Table] = []
    # Two or more judges: the panel is calibrated over the whole run (persodpo.score.calibration),
    # so the rows are held until the maps are fitted. Scores rows are ids and numbers, and a
    # judged run is bounded by its judges' cost, so this fits in the driver's memory.
    audit = None
    if judges:
        from persodpo.score.audit import Audit

        audit = Audit(judges, dims)
    stats = None
    if len(judges) >= 2:
        from persodpo.score.calibration import PanelStats

        stats = PanelStats(judge_names, dims)

    panel_scores: dict[str, float] | None = {} if judges and c.panel.pairwise else None

    def flush_part(final: bool = False) -> None:
        if not buffered or (stats is not None and not final):
            return
        table = pa.concat_tables(buffered)
        buffered.clear()
        if stats is not None:
            from persodpo.score.calibration import apply

            totals["panel_calibration"] = stats.fit()
            table = apply(table, totals["panel_calibration"], judge_names)
        for start in range(0, table.num_rows, c.rows_per_part):
            out.write_table(contracts.conform(table.slice(start, c.rows_per_part), schema, name="scores"))

    try:
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            _count(block, schema, judges, dims, totals)
            for name, (_, _, pending) in caches.items():
                pending.extend(e for v in block.column(new_entries_column(name)).to_pylist() if v for e in json.loads(v))
                if len(pending) >= 1000:
                    _store(caches, name)
            buffered.append(block.select(schema.names))
            if stats is not None:
                stats.add(block)
            if audit is not None:
                audit.add(block)
            if panel_scores is not None:
                panel_scores.update(_panel_means(block, dims))
            seen += block.num_rows
            # When rows arrive (a pilot's plan calibrates start-up and steady throughput from it).
            totals["arrivals"] = totals.get("arrivals") or {"first_at": time.time(), "first_rows": block.num_rows}
            totals["arrivals"]["last_at"] = time.time()
            if sum(t.num_rows for t in buffered) >= c.rows_per_part:
                flush_part()
        flush_part(final=True)
        if panel_scores is not None:
            totals["pairwise"] = _judge_pairwise(cfg, judges, dims, prompts, panel_scores, ledger,
                                                 cache if caches else None, totals)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("score: Ray Data stats\n%s", ds.stats())
    finally:
        # Judgments already paid for are kept even when the stage fails, so a rerun skips them.
        for name in caches:
            _store(caches, name)
        if ledger is not None:
            totals["budget"] = ray.get(ledger.state.remote())
            ray.kill(ledger)
    for name, (cache, ns, _) in caches.items():
        totals["judges"][name]["cache_entries"] = cache.compact(ns)
    check_judge_errors(totals["judges"], totals.pop("judge_errors"), c.panel.max_error_share)
    if seen != n_candidates:
        raise StageError(f"scored {seen} rows but the input has {n_candidates} candidates: rows were lost "
                         "(nothing was committed)")
    totals["rows"] = seen
    if audit is not None:
        totals["judge_audit"] = audit.summary()
        for j, per_dim in (totals.get("pairwise") or {}).get("audit", {}).items():
            for d, stats in per_dim.items():
                totals["judge_audit"][j][d].update(stats)
    totals["nulls"] = dict(totals["nulls"])
    totals["reasons"] = dict(totals["reasons"].most_common(50))
    for j in totals["judges"].values():
        j["cost_usd"] = round(j["cost_usd"], 8)
    return out, totals


def _panel_means(block: pa.Table, dims: list[str]) -> dict[str, float]:
    """candidate id -> mean of its panel scores over the dimensions (the pairwise ranking)."""
    cols = [block.column(f"judge_{d}").to_pylist() for d in dims if f"judge_{d}" in block.column_names]
    out = {}
    for r, cid in enumerate(block.column("candidate_id").to_pylist()):
        vals = [c[r] for c in cols if c[r] is not None]
        if vals:
            out[cid] = sum(vals) / len(vals)
    return out


def _judge_pairwise(cfg: PersoDPOConfig, judges: list, dims: list[str], prompts: pa.Table,
                    panel_scores: dict[str, float], ledger, cache, totals: dict) -> dict:
    """Pairs of each prompt's replies, every judge, both orders (persodpo.score.pairwise); the
    verdicts go to ``<output>/pairwise``, counts, tokens and cost to each judge's summary."""
    import ray

    from persodpo.llm_api import api_actor_pool
    from persodpo.rate_limit import endpoint_limiter
    from persodpo.score.cache import judge_namespace
    from persodpo.score.pairwise import (ORDERS, PAIRWISE, PairwiseJudgeActor, pairwise_audit,
                                         pairwise_request_params, select_pairs, status_col, verdict_rows)

    c = cfg.score
    cands = st.read_table(c.input, cfg.storage, columns=["candidate_id", "prompt_id", "generator", "text"])
    pairs = select_pairs(cands, panel_scores, c.panel.pairwise_max_per_prompt)
    del cands
    log.info("score: pairwise: %d pairs x %d judge(s) x %d dimension(s) x 2 orders", pairs.num_rows, len(judges),
             len(dims))
    counts = {j.name: {"requests": 0, "tokens": 0, "cost_usd": 0.0, **{s: 0 for s in _statuses()}} for j in judges}
    rows: list[dict] = []
    if pairs.num_rows:
        ds = ray.data.from_arrow(pairs).repartition(target_num_rows_per_block=c.actor_block_rows)
        namespaces = {}
        for j in judges:
            ns = judge_namespace(j.name, j.model, pairwise_request_params(j))
            namespaces[j.name] = ns
            memo = None
            if cache is not None:
                memo = [ray.put(cache.load_table(ns))]
            ds = ds.map_batches(
                PairwiseJudgeActor,
                fn_constructor_kwargs={"judge": j.model_dump(mode="json"), "panel": c.panel.model_dump(mode="json"),
                                       "prompts": [ray.put(prompts)], "memo": memo, "ledger": ledger,
                                       "limiter": endpoint_limiter(j)},
                compute=api_actor_pool(j.concurrency), num_cpus=j.num_cpus, batch_size=j.batch_size,
                batch_format="pyarrow")
        names = [j.name for j in judges]
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows += verdict_rows(block, names, dims)
            for name in names:
                s = counts[name]
                for d in dims:
                    for o in ORDERS:
                        for status, k in Counter(block.column(status_col(name, d, o)).to_pylist()).items():
                            s[status] += k
                s["tokens"] += int(pc.sum(block.column(tokens_column(name))).as_py() or 0)
                s["cost_usd"] += float(pc.sum(block.column(cost_column(name))).as_py() or 0.0)
                if cache is not None:
                    new = [e for v in block.column(new_entries_column(name)).to_pylist() if v for e in json.loads(v)]
                    cache.append(namespaces[name], new)
        for name in names:
            s = counts[name]
            s["requests"] = s["ok"] + s["malformed"] + s["out_of_range"] + s["request_error"]
            s["cost_usd"] = round(s["cost_usd"], 8)
            if cache is not None:
                s["cache_entries"] = cache.compact(namespaces[name])
            judge = totals["judges"][name]
            judge["tokens"] += s["tokens"]
            judge["cost_usd"] += s["cost_usd"]
            judge["pairwise"] = {k: v for k, v in s.items() if v or k in ("requests", "ok")}
    out = st.StageOutput(st.join(c.output, "pairwise"), cfg.storage).begin()
    table = pa.Table.from_pylist(rows, schema=PAIRWISE)
    out.write_table(table)
    out.commit({"stage": "score", "table_name": "pairwise", "rows": table.num_rows, "n_pairs": pairs.num_rows,
                "max_per_prompt": c.panel.pairwise_max_per_prompt})
    audit = pairwise_audit(rows)
    return {"output": st.join(c.output, "pairwise"), "n_pairs": pairs.num_rows, "rows": table.num_rows,
            "n_consistent": sum(1 for r in rows if r["consistent"]), "audit": audit}


FAILED = ("request_error", "malformed", "out_of_range")   # a request was made and gave no usable score


def check_judge_errors(judges: dict[str, dict], errors: dict[str, Counter], max_share: float) -> None:
    """Fail the stage (before anything is committed) when a judge's failed share of this run's
    requests exceeds ``max_share``, naming the judge and its commonest error: committing its null
    columns would let the pairs recipe silently drop the candidates (budget stops are not
    failures: the cap is the user's decision, and the manifest reports it)."""
    for name, s in judges.items():
        failed = sum(s.get(k, 0) for k in FAILED)
        requests = s.get("requests") or failed
        if requests and failed / requests > max_share:
            reason, k = errors.get(name, Counter()).most_common(1)[0] if errors.get(name) else ("unknown", failed)
            raise StageError(f"judge {name}: {failed} of {requests} requests failed or gave no usable score "
                             f"({failed / requests:.0%} > score.panel.max_error_share={max_share:g}); commonest "
                             f"error ({k}x): {reason} (nothing was committed; paid judgments stay in the cache)")


def _store(caches: dict, name: str) -> None:
    cache, ns, pending = caches[name]
    if pending:
        cache.append(ns, pending)
        pending.clear()


def _statuses() -> tuple[str, ...]:
    from persodpo.score.judges import STATUSES

    return STATUSES


def _count(batch: pa.Table, schema: pa.Schema, judges: list, dims: list[str], totals: dict) -> None:
    metric_names = [f.name for f in schema if f.name not in contracts.SCORES_BASE.names]
    for name in metric_names:
        nulls = batch.column(name).null_count
        if nulls:
            totals["nulls"][name] += nulls
    row_errors = [json.loads(e) if e else None for e in batch.column("score_errors").to_pylist()]
    for errs in row_errors:
        if errs:
            for col, reason in errs.items():
                # Reasons without row-specific detail, so the manifest lists kinds, not rows.
                totals["reasons"][f"{col}: {reason.split(':')[0][:80]}"] += 1
    for j in judges:
        s = totals["judges"][j.name]
        for d in dims:
            statuses = batch.column(status_column(j.name, d)).to_pylist()
            for status, k in Counter(statuses).items():
                s[status] += k
            col = judge_column(j.name, d)
            for r, status in enumerate(statuses):
                if status in FAILED and row_errors[r]:
                    totals["judge_errors"][j.name][row_errors[r].get(col, status)[:160]] += 1
        s["tokens"] += int(pc.sum(batch.column(tokens_column(j.name))).as_py() or 0)
        s["cost_usd"] += float(pc.sum(batch.column(cost_column(j.name))).as_py() or 0.0)
        # audit_own: sent (or, on a rerun, cached) for the self-preference audit only.
        s["requests"] = s["ok"] + s["malformed"] + s["out_of_range"] + s["request_error"] + s["audit_own"]

