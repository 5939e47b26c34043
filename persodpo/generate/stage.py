"""The generate stage: prompts -> candidates, every prompt answered by every configured generator.

One lazy Ray Dataset per generator (vLLM processor or litellm actor pool), unioned, streamed to
Parquet parts by the driver as rows arrive. Resume: an interrupted run leaves whole parts and an
``_attempt.json`` with the config hash; a rerun with the same config keeps those parts, drops
their failed rows (to try them again) and generates only the candidate ids that are missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import PersoDPOConfig, section_hash
from persodpo.errors import ConfigError, InputError, StageError
from persodpo.generate import candidates
from persodpo.generate.requests import planned_ids
from persodpo.manifest import stage_manifest

log = logging.getLogger(__name__)

ATTEMPT = "_attempt.json"
_PART = re.compile(r"^part-(\d+)\.parquet$")
# Settings that do not change what a candidate is: a resumed run may differ in these.
_NOT_HASHED = {"rows_per_part", "resume", "max_prompts", "prompt_offset", "output", "discard_stale", "budget_usd",
               "reuse_from"}
_REQUIRED = ("prompt_id", "persona", "history")


def attempt_hash(cfg: PersoDPOConfig) -> str:
    return section_hash(cfg, "generate", exclude=_NOT_HASHED)


# -- prompts ---------------------------------------------------------------------------------
def load_prompt_ids(uri: str, storage, max_prompts: int | None, split: str | None = None,
                    offset: int = 0) -> list[str]:
    """The prompt ids (of ``split`` when given; from the ``offset``-th on), checked: required
    columns present, ids unique and non-null."""
    parts = st.part_uris(uri, storage)
    fs, _ = st.resolve(uri, storage)
    ids: list[str] = []
    for p in parts:
        path = st.resolve(p, storage)[1]
        names = pq.read_schema(path, filesystem=fs).names
        missing = [c for c in _REQUIRED if c not in names]
        if missing:
            raise InputError(f"not a prompts table: no column(s) {missing}", file=p, field=missing[0])
        cols = list(_REQUIRED) + (["split"] if split is not None else [])
        if split is not None and "split" not in names:
            raise InputError("generate.split is set but the prompts table has no split column", file=p, field="split")
        t = pq.read_table(path, filesystem=fs, columns=cols)
        for col in _REQUIRED:
            nulls = t.column(col).null_count
            if nulls:
                i = pc.index(pc.is_null(t.column(col)), True).as_py()
                rec = t.column("prompt_id")[i].as_py() or f"row {i + 1}"
                raise InputError("missing value", file=p, record=rec, field=col)
        if split is not None:
            t = t.filter(pc.equal(t.column("split"), split))
        ids.extend(t.column("prompt_id").to_pylist())
        if max_prompts and len(ids) >= offset + max_prompts:
            break
    n_all = len(ids)
    ids = ids[offset:offset + max_prompts] if max_prompts else ids[offset:]
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise InputError("duplicate prompt_id (ids must be unique)", file=uri, record=pid, field="prompt_id")
        seen.add(pid)
    if not ids and offset and n_all:
        raise InputError(f"generate.prompt_offset={offset} skips all {n_all} prompt(s)"
                         + (f" of split {split!r}" if split is not None else "")
                         + " (rounds with fresh prompts: fewer rounds, or a smaller rounds.prompts_per_round)",
                         file=uri, field="prompt_id")
    if not ids:
        raise InputError("the prompts table has no rows" + (f" of split {split!r}" if split is not None else ""),
                         file=uri, field="split" if split is not None else None)
    return ids


# -- output and resume -----------------------------------------------------------------------
def _path(out: st.StageOutput, rel: str) -> str:
    return st.resolve(st.join(out.uri, rel), out.storage)[1]


def _paid_cost(uri: str, storage) -> float:
    """Cost of the requests already written under ``uri`` (finished parts of any attempt)."""
    fs, path = st.resolve(uri, storage)
    import pyarrow.fs as pafs

    total = 0.0
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)):
        if info.type == pafs.FileType.File and _PART.match(info.path.rsplit("/", 1)[-1]):
            t = pq.read_table(info.path, filesystem=fs, columns=["cost_usd"])
            total += pc.sum(t.column("cost_usd")).as_py() or 0.0
    return total


def open_output(cfg: PersoDPOConfig, prompts_lineage: str | None = None) -> tuple[st.StageOutput, dict[str, str], int]:
    """Begin the output. Returns it, the finished candidates kept from an interrupted run with the
    same config and the same prompts (by lineage) ({candidate_id: generator}) and the index for the
    next part name.

    Parts made from other prompts (another ingest setting or input: another prompts lineage) answer
    prompts that no longer exist under the same ids: they are never kept. When they cost money the
    stage refuses instead of deleting them (``generate.discard_stale=true`` deletes them), since
    a wrong ``--output`` would otherwise throw away paid-for work.
    """
    g = cfg.generate
    h = attempt_hash(cfg)
    resume = False
    if g.resume and st.exists(st.join(g.output, ATTEMPT), cfg.storage):
        try:
            prev = json.loads(st.read_bytes(st.join(g.output, ATTEMPT), cfg.storage))
        except (json.JSONDecodeError, ValueError):
            prev = {}
        same_config = prev.get("config_hash") == h
        same_prompts = prev.get("prompts_lineage") == prompts_lineage
        resume = same_config and same_prompts
        if same_config and not same_prompts:
            cost = _paid_cost(g.output, cfg.storage)
            if cost > 0 and not g.discard_stale:
                raise StageError(
                    f"{g.output} holds candidates generated from other prompts (prompts lineage "
                    f"{prev.get('prompts_lineage')} there, {prompts_lineage} now: the input or an ingest setting "
                    f"changed) that cost ${cost:.4f}; they cannot answer the new prompts. Use another --output "
                    f"(or --run-id), or --set generate.discard_stale=true to delete them and start afresh")
            log.info("%s was generated from other prompts (prompts lineage %s, now %s): starting afresh",
                     g.output, prev.get("prompts_lineage"), prompts_lineage)
        elif not resume:
            log.info("%s holds a run with another configuration: starting afresh", g.output)
    out = st.StageOutput(g.output, cfg.storage, resume=resume).begin()
    st.write_bytes(st.join(g.output, ATTEMPT), json.dumps({"config_hash": h, "prompts_lineage": prompts_lineage}).encode(),
                   cfg.storage)
    done: dict[str, str] = {}
    next_index = 0
    if not resume:
        return out, done, next_index
    for rel in out.list_files():
        if rel.endswith(".tmp"):  # a part whose write was interrupted: never moved into place
            out.fs.delete_file(_path(out, rel))
            continue
        m = _PART.match(rel)
        if not m:
            continue
        next_index = max(next_index, int(m.group(1)) + 1)
        t = pq.read_table(_path(out, rel), filesystem=out.fs)
        failed = pc.equal(t.column("parse_status"), candidates.ERROR)
        if pc.any(failed).as_py():
            # Failed requests are tried again: rewrite the part without them (same name, atomic).
            t = t.filter(pc.invert(failed))
            if t.num_rows == 0:
                out.fs.delete_file(_path(out, rel))
                continue
            out.write_table(t, name=rel)
        else:
            out.parts.append(rel)
        for cid, gen in zip(t.column("candidate_id").to_pylist(), t.column("generator").to_pylist()):
            done[cid] = gen
    log.info("resuming: %d finished candidate(s) in %d part(s) kept", len(done), len(out.parts))
    return out, done, next_index


def _generator_identity(gen: dict, g: dict) -> dict:
    """What makes a generator's candidates what they are (its settings, template, word limit)."""
    return {"generator": {k: v for k, v in gen.items() if k != "budget_usd"},
            "template": gen.get("template") or g.get("template"), "word_limit": g.get("word_limit")}


def reuse_candidates(cfg: PersoDPOConfig, out: st.StageOutput, done: dict[str, str], prompt_ids: list[str],
                     upstream: dict[str, str], next_index: int) -> tuple[dict[str, int], int]:
    """Copy, from each complete table of ``generate.reuse_from``, the finished candidates of an
    identical generator (same settings, template and word limit, and the same model lineage when a
    stage made its model) that answer the same prompts (same prompts lineage) and are not written
    yet. Returns {generator: rows copied} and the next part index."""
    g = cfg.generate
    mine = {gen.name: _generator_identity(gen.model_dump(mode="json"), g.model_dump(mode="json"))
            for gen in g.generators}
    copied: Counter = Counter()
    for uri in g.reuse_from:
        if not st.is_complete(uri, cfg.storage):
            raise InputError("generate.reuse_from: not a complete candidates table (no _SUCCESS)", file=uri)
        m = st.read_manifest(uri, cfg.storage)
        theirs_up = (m.get("lineage") or {}).get("upstream") or {}
        if theirs_up.get("prompts") != upstream["prompts"]:
            log.info("reuse_from %s: made from other prompts, nothing reused", uri)
            continue
        conf = m.get("config") or {}
        same = [n for n, ident in mine.items()
                if any(_generator_identity(t, conf) == ident for t in conf.get("generators", []))
                and theirs_up.get(f"model:{n}") == upstream.get(f"model:{n}")]
        wanted = {cid: name for name in same for gen in g.generators if gen.name == name
                  for cid in planned_ids(prompt_ids, name, gen.samples) if cid not in done}
        if not wanted:
            continue
        fs, _ = st.resolve(uri, cfg.storage)
        for part in st.part_uris(uri, cfg.storage):
            t = pq.read_table(st.resolve(part, cfg.storage)[1], filesystem=fs)
            keep = pc.and_(pc.is_in(t.column("candidate_id"), pa.array(list(wanted))),
                           pc.not_equal(t.column("parse_status"), candidates.ERROR))
            t = t.filter(keep)
            if t.num_rows == 0:
                continue
            out.write_table(contracts.conform(t, candidates.SCHEMA, name="candidates"),
                            name=f"part-{next_index:05d}.parquet")
            next_index += 1
            for cid, gen in zip(t.column("candidate_id").to_pylist(), t.column("generator").to_pylist()):
                done[cid] = gen
                wanted.pop(cid, None)
                copied[gen] += 1
        log.info("reuse_from %s: %d candidate(s) of %s copied", uri, sum(copied.values()), same)
    return dict(copied), next_index


# -- the stage -------------------------------------------------------------------------------
def _datasets(cfg: PersoDPOConfig, prompts, todo, done_ids: frozenset, only_prompts: frozenset | None,
              stack: contextlib.ExitStack, ledgers: dict | None = None):
    from persodpo.generate import api_backend, vllm_backend
    from persodpo.local_server import local_servers
    from persodpo.models import model_store, publish_model

    api_gens = [g for g in todo if g.backend == "api"]
    local = [(g.api_options.api_base, g.api_options.model or g.model) for g in api_gens]
    opts = [g.api_options for g in api_gens]
    urls = stack.enter_context(local_servers(
        local, key="generate.generators[].api.api_base",
        max_model_len=max((o.local_server_max_model_len for o in opts), default=4096),
        kv_cache_gb=max((o.local_server_kv_cache_gb for o in opts), default=1)))
    branches = []
    for gen in todo:
        if gen.backend == "vllm":
            # Built or local models go through the run's object store: engines run on other nodes.
            path = publish_model(gen.model, model_store(cfg.run.root, cfg.generate.output))
            branches.append(vllm_backend.generate(prompts, gen, cfg.generate, model_path=path,
                                                  skip_ids=done_ids, only_prompts=only_prompts))
            continue
        api_base = urls.get(gen.api_options.api_base)
        caps = [led for key in ("generate.budget_usd", f"generators.{gen.name}.budget_usd")
                if (led := (ledgers or {}).get(key)) is not None]
        branches.append(api_backend.generate(prompts, gen, cfg.generate, api_base=api_base, skip_ids=done_ids,
                                              only_prompts=only_prompts, ledgers=caps))
    return branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]


def budget_ledgers(g, todo) -> dict:
    """Ledgers of the budget caps (persodpo.budget): ``generate`` for all API generators together,
    and one per generator with its own cap."""
    from persodpo.budget import ledger_actor

    api = [gen for gen in todo if gen.backend == "api"]
    ledgers = {"generate.budget_usd": ledger_actor(g.budget_usd)} if g.budget_usd and api else {}
    ledgers.update({f"generators.{gen.name}.budget_usd": ledger_actor(gen.budget_usd) for gen in api if gen.budget_usd})
    return ledgers


def summarize(out: st.StageOutput) -> dict:
    """Rows, errors, parse statuses, tokens and cost per generator of the written parts, counted in
    Arrow (no Python object per row: at 0.5M candidates the driver holds a few columns, no more)."""
    cols = ["generator", "parse_status", "n_tokens", "prompt_tokens", "cost_usd", "error"]
    tables = [pq.read_table(_path(out, p), filesystem=out.fs, columns=["candidate_id", *cols]) for p in out.parts]
    t = pa.concat_tables(tables) if tables else candidates.SCHEMA.empty_table().select(["candidate_id", *cols])
    n_unique = pc.count_distinct(t.column("candidate_id")).as_py()
    if n_unique != t.num_rows:
        raise StageError(f"{out.uri}: {t.num_rows - n_unique} duplicate candidate id(s) in the parts; "
                         "delete the output and rerun")
    per: dict[str, dict] = defaultdict(lambda: {"rows": 0, "errors": 0, "valid": 0, "fallback": 0, "unusable": 0,
                                                "completion_tokens": 0, "prompt_tokens": 0, "cost_usd": 0.0})
    grouped = t.group_by(["generator", "parse_status"], use_threads=False).aggregate(
        [("candidate_id", "count"), ("n_tokens", "sum"), ("prompt_tokens", "sum"), ("cost_usd", "sum")])
    for r in grouped.to_pylist():
        d, status = per[r["generator"]], r["parse_status"]
        d["rows"] += r["candidate_id_count"]
        d["errors" if status == candidates.ERROR else status] += r["candidate_id_count"]
        d["completion_tokens"] += r["n_tokens_sum"] or 0
        d["prompt_tokens"] += r["prompt_tokens_sum"] or 0
        d["cost_usd"] += r["cost_usd_sum"] or 0.0
    failed = t.filter(pc.equal(t.column("parse_status"), candidates.ERROR)).select(["generator", "error"])
    # The first error row of each generator in part order (an ordered, single-threaded aggregation).
    first = failed.group_by("generator", use_threads=False).aggregate([("error", "first")])
    first_error = dict(zip(first.column("generator").to_pylist(), first.column("error_first").to_pylist()))
    for d in per.values():
        d["cost_usd"] = round(d["cost_usd"], 6)
    return {"per_generator": dict(per), "first_error": first_error, "rows": t.num_rows}


def check_complete(planned: dict[str, int], summary: dict) -> None:
    """Commit only a whole table that is worth something: every planned candidate present (error
    rows count: they are kept), and not every request failed (a wrong key or a dead endpoint
    must not look like a finished stage)."""
    per = summary["per_generator"]
    missing = {n: k - per.get(n, {}).get("rows", 0) for n, k in planned.items() if per.get(n, {}).get("rows", 0) != k}
    if missing:
        raise StageError(f"candidates missing after generation (generator: missing rows): {missing}; rerun to resume")
    errors = sum(d["errors"] for d in per.values())
    if summary["rows"] and errors == summary["rows"]:
        raise StageError("every request failed, nothing committed (rerun to try them again); first error per "
                         "generator: " + json.dumps(summary["first_error"]))


def run_stage(cfg: PersoDPOConfig) -> dict:
    g = cfg.generate
    if not g.input:
        raise ConfigError("no input URI (use --input or generate.input: the prompts table)", key="generate.input")
    if not g.output:
        raise ConfigError("no output URI (use --output or generate.output)", key="generate.output")
    if not g.generators:
        raise ConfigError("no generators configured", key="generate.generators")
    t0 = time.time()
    from persodpo.local_server import parse_local

    for gen in g.generators:  # a missing key is a clear error before anything starts
        if gen.backend == "api" and not parse_local(gen.api_options.api_base):
            gen.endpoint().api_key()
    prompt_ids = load_prompt_ids(g.input, cfg.storage, g.max_prompts, g.split, g.prompt_offset)

    from persodpo.raycluster import init_ray, read_output

    from persodpo.lineage import digest, of_output
    from persodpo.manifest import model_lineage, upstream_lineage

    prompts_lineage = of_output(g.input, cfg.storage)
    upstream = {**upstream_lineage(cfg, "generate"), "prompts": prompts_lineage}
    models = model_lineage(cfg, "generate")
    init_ray(cfg.ray, cfg.storage)
    # A generator's model made by a stage (an iterative round's policy) is part of what the kept
    # parts answered: new weights under the same URI start afresh.
    out, done, next_index = open_output(cfg, digest([prompts_lineage, models]) if models else prompts_lineage)
    kept = Counter(done.values())
    reused, next_index = reuse_candidates(cfg, out, done, prompt_ids, upstream, next_index) if g.reuse_from else ({}, next_index)
    todo, planned = [], {}
    for gen in g.generators:
        ids = planned_ids(prompt_ids, gen.name, gen.samples)
        planned[gen.name] = len(ids)
        if any(i not in done for i in ids):
            todo.append(gen)
        else:
            log.info("generator %s: all %d candidates already written", gen.name, len(ids))

    written = 0
    budget: dict = {}
    if todo:
        prompts = read_output(g.input, cfg.storage)
        # max_prompts: the first N in the table's order, chosen here (Ray's limit() may pick any N).
        only = frozenset(prompt_ids) if g.max_prompts or g.split is not None or g.prompt_offset else None
        ledgers = budget_ledgers(g, todo)
        with contextlib.ExitStack() as stack:
            ds = _datasets(cfg, prompts, todo, frozenset(done), only, stack, ledgers)
            for batch in ds.iter_batches(batch_size=g.rows_per_part, batch_format="pyarrow", prefetch_batches=0):
                if batch.num_rows == 0:
                    continue
                out.write_table(contracts.conform(batch, candidates.SCHEMA, name="candidates"),
                                name=f"part-{next_index:05d}.parquet")
                next_index += 1
                written += batch.num_rows
        if ledgers:
            import ray

            budget = {k: ray.get(led.state.remote()) for k, led in ledgers.items()}
            for led in ledgers.values():
                ray.kill(led)

    s = summarize(out)
    per = s["per_generator"]
    check_complete(planned, s)
    total_errors = sum(d["errors"] for d in per.values())
    templates = sorted({g.template_of(gen) for gen in g.generators})
    wall = round(time.time() - t0, 2)
    totals = {
        "rows": s["rows"], "errors": total_errors,
        "completion_tokens": sum(d["completion_tokens"] for d in per.values()),
        "prompt_tokens": sum(d["prompt_tokens"] for d in per.values()),
        "cost_usd": round(sum(d["cost_usd"] for d in per.values()), 6),
        **({"budget": budget} if budget else {}),
    }
    out.commit(stage_manifest(cfg, "generate", upstream=upstream, input=g.input,
                              word_limit=g.word_limit, n_prompts=len(prompt_ids), templates=templates,
                              generators=per, resumed_rows=sum(kept.values()), new_rows=written,
                              reused_rows=reused or None, model_lineage=models or None,
                              first_error=s["first_error"] or None, **totals))
    log.info("generate: %d candidates (%d new, %d kept from an interrupted run), %d errors -> %s",
             s["rows"], written, sum(kept.values()), total_errors, g.output)
    return {"stage": "generate", "input": g.input, "output": g.output, "n_prompts": len(prompt_ids),
            "templates": templates, "rows_per_generator": {n: d["rows"] for n, d in per.items()},
            "errors_per_generator": {n: d["errors"] for n, d in per.items()}, **totals,
            "new_rows": written, "resumed_rows": sum(kept.values()), "reused_rows": reused,
            "per_generator": per, "started_at": t0, "wall_time_s": wall}
