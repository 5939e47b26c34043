"""``persodpo plan``: what a run will ask for and cost, before any paid request.

Per stage: rows, requests, prompt and completion tokens, cost (litellm's prices or the ones the
config registers), GPU-hours and wall time, each null where it cannot be known yet, with the
reason. Nothing is sent and no model is loaded (token counts come from litellm's tokenizers).
The prompts are the run's: read from its ingest output when that is current, else built by the
ingest stage into a temporary folder (ingest sends no request).

What is exact and what is a bound:
- generate: requests exactly (prompts x samples, minus what a resumed output already holds);
  prompt tokens counted on the real messages; completion tokens at ``max_tokens`` (an upper
  bound: replies stop earlier), so the cost is an upper bound too.
- score: judge requests exactly for a fresh run whose replies all have text (the run skips
  replies without text, and judgments already in the judge cache); own-generator skips and the
  audit sample are counted as the run counts them. Reply tokens are bounded by the generators'
  ``max_tokens``.
- vLLM generators and model metrics: no throughput table is shipped, so GPU-hours and wall time
  are null without a pilot.
- train: null without a pilot (the pairs exist only after scoring). With one, pairs per prompt and
  tokens per pair (the model's tokenizer and chat template) come from the pilot's pairs, FLOPs
  from the model's config.json (:mod:`persodpo.train.compute`), GPU-hours over the accelerator's
  dense peak (``--accelerator``, or the ``accelerator_type:`` resource the workers ask for) at an
  assumed MFU (``--mfu``, default 0.3): an estimate, not a measurement.

``--pilot N`` (:func:`run_pilot`) first runs ingest, generate, score and pairs for real on the
first N prompts, into ``ROOT/runs/<run_id>-pilot`` (its own judge cache; the run's outputs are not
touched), and calibrates the plan from it: completion tokens per request of each generator (so
its cost, and the judges' prompt tokens, no longer assume ``max_tokens``), each API generator's
mean latency and error share, and wall time: an API generator's and the score stage's as the
pilot's start-up (stage start to the first replies or rows) plus the rest at the pilot's steady
throughput after them (when the replies arrived: ``generated_at``; the score stage's rows as the
driver received them), never faster than the rpm; a vLLM generator's by scaling the pilot's
measured stage time to the run's requests (the pilot's start-up included: an over-estimate for
a small pilot). A pilot sends real, paid requests: about N/prompts of the run's.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field

from persodpo.config import PersoDPOConfig

log = logging.getLogger(__name__)


@dataclass
class StagePlan:
    stage: str
    rows: int | None = None
    requests: int = 0
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    cost_usd: float | None = 0.0
    gpu_hours: float | None = None
    wall_s: float | None = None
    unknown: dict[str, str] = field(default_factory=dict)   # field -> why it is null
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _tokens(model: str, messages: list[dict]) -> int:
    import litellm

    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # noqa: BLE001 - no tokenizer for this name: litellm's default counts
        return int(litellm.token_counter(messages=messages))


def _cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    import litellm

    try:
        p, c = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except Exception:  # noqa: BLE001 - litellm knows no price for it and the config registered none
        return None
    return float(p) + float(c)


def _prompts(cfg: PersoDPOConfig, tmp: str) -> tuple[str, list[dict]]:
    """The prompts table this run would answer: its ingest output if current, else built now."""
    from persodpo import storage as st
    from persodpo.manifest import is_current

    uri = cfg.ingest.output
    if uri and is_current(uri, cfg, "ingest"):
        return uri, st.read_table(uri, cfg.storage).to_pylist()
    from persodpo.ingest.stage import run_stage

    c = cfg.model_copy(deep=True)
    c.ingest.output = st.join(tmp, "prompts")
    run_stage(c)
    return c.ingest.output, st.read_table(c.ingest.output).to_pylist()


def _answered(cfg: PersoDPOConfig, rows: list[dict], split: str | None, max_prompts: int | None,
              offset: int = 0) -> list[dict]:
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows[offset:offset + max_prompts] if max_prompts else rows[offset:]


def _done_ids(cfg: PersoDPOConfig, prompts_lineage: str | None) -> set[str]:
    """Candidates a resumed generate would keep (read only: nothing is deleted or begun): its
    attempt must have the same config and the same prompts (generate.stage.open_output)."""
    import json

    import pyarrow.parquet as pq

    from persodpo import storage as st
    from persodpo.generate.stage import ATTEMPT, attempt_hash

    g = cfg.generate
    if not g.output or not g.resume or not st.exists(st.join(g.output, ATTEMPT), cfg.storage):
        return set()
    try:
        prev = json.loads(st.read_bytes(st.join(g.output, ATTEMPT), cfg.storage))
    except ValueError:
        return set()
    if prev.get("config_hash") != attempt_hash(cfg) or prev.get("prompts_lineage") != prompts_lineage:
        return set()
    out = st.StageOutput(g.output, cfg.storage)   # only listed: begin() is never called
    ids: set[str] = set()
    for rel in out.list_files():
        if rel.startswith("part-") and rel.endswith(".parquet"):
            fs, path = st.resolve(st.join(g.output, rel), cfg.storage)
            ids.update(pq.read_table(path, filesystem=fs, columns=["candidate_id"]).column(0).to_pylist())
    return ids


def run_pilot(cfg: PersoDPOConfig, n: int) -> dict:
    """Run ingest, generate, score and pairs on the first ``n`` prompts (``ROOT/runs/<run_id>-pilot``,
    recomputed each time) and measure what the plan calibrates from."""
    from persodpo import storage as st
    from persodpo.pipeline import run_dir, run_pipeline

    c = cfg.model_copy(deep=True)
    c.run.run_id = f"{cfg.run.run_id}-pilot"
    c.run.stages = [s for s in ("ingest", "generate", "score", "pairs") if s in cfg.run.stages]
    c.generate.max_prompts = min(n, cfg.generate.max_prompts or n)
    fs, path = st.resolve(run_dir(c), c.storage)
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)   # a measurement: never reused
    log.info("pilot: ingest, generate, score and pairs on %d prompt(s) -> %s (real requests)", c.generate.max_prompts,
             run_dir(c))
    summary = run_pipeline(c)["stages"]
    return {**pilot_measurements(summary, c.storage), "prompts": c.generate.max_prompts, "run_dir": run_dir(c)}


def pilot_measurements(summary: dict, storage=None) -> dict:
    """What a plan calibrates from, out of the stage summaries of a pilot (``{"generate": ...,
    "score": ...}``, each a stage's returned summary): per generator its requests, reply tokens,
    mean latency, error share and cost; per judge its requests, tokens and cost; stage times."""
    import pyarrow.compute as pc

    from persodpo import storage as st

    out: dict = {"generators": {}, "judges": {}}
    if "generate" in summary:
        g = summary["generate"]
        out["generate_s"] = float(g.get("wall_time_s") or 0)
        t = st.read_table(g["output"], storage)
        started = g.get("started_at")
        ends: list[float] = []
        for name in sorted(set(t.column("generator").to_pylist())):
            rows = t.filter(pc.equal(t.column("generator"), name))
            ok = rows.filter(pc.not_equal(rows.column("parse_status"), "error"))
            lat = [x for x in rows.column("latency_s").to_pylist() if x is not None]
            out["generators"][name] = {
                "requests": rows.num_rows,
                "completion_tokens_per_request": (pc.mean(ok.column("n_tokens")).as_py() or 0.0) if ok.num_rows else None,
                "latency_s": sum(lat) / len(lat) if lat else None,
                "error_share": round(1 - ok.num_rows / rows.num_rows, 4) if rows.num_rows else None,
                "cost_usd": float(pc.sum(rows.column("cost_usd")).as_py() or 0.0),
                **_arrivals(rows.column("generated_at").to_pylist(), started)}
            ends += [x for x in rows.column("generated_at").to_pylist() if x is not None]
        if started is not None and ends:
            out["generate_tail_s"] = round(max(0.0, started + out["generate_s"] - max(ends)), 3)
    if "score" in summary:
        sc = summary["score"]
        out["score_s"] = float(sc.get("wall_time_s") or 0)
        out["score_rows"] = int(sc.get("n_scored") or sc.get("rows") or 0)
        arr, started = sc.get("arrivals") or {}, sc.get("started_at")
        if arr and started is not None and out["score_rows"] > arr["first_rows"] and arr["last_at"] > arr["first_at"]:
            out["score_first_s"] = round(arr["first_at"] - started, 3)
            out["score_first_rows"] = arr["first_rows"]
            out["score_rows_per_s"] = (out["score_rows"] - arr["first_rows"]) / (arr["last_at"] - arr["first_at"])
            out["score_tail_s"] = round(max(0.0, started + out["score_s"] - arr["last_at"]), 3)
        out["judges"] = {name: {k: j.get(k) for k in ("requests", "tokens", "cost_usd")}
                         for name, j in (sc.get("judges") or {}).items()}
    if "pairs" in summary:
        pr = summary["pairs"]
        out["pairs"] = {"n_pairs": int(pr.get("n_pairs") or 0), "by_pair_type": dict(pr.get("by_pair_type") or {}),
                        "output": pr.get("output")}
    return out


def _arrivals(times: list[float | None], started: float | None) -> dict:
    """Start-up and steady throughput of one generator in a pilot, from when its replies arrived:
    ``first_s`` (stage start to the first replies: actors, engines, the first batch),
    ``first_rows`` (how many came then) and ``rows_per_s`` after them, up to the last full block
    (absent when every reply came in one batch: a pilot too small to show a steady rate). Empty
    without a start time."""
    from collections import Counter

    times = sorted(t for t in times if t is not None)
    if started is None or not times:
        return {}
    blocks = sorted(Counter(times).items())            # (arrival time, rows): a block's rows arrive together
    out = {"first_s": round(times[0] - started, 3), "first_rows": blocks[0][1]}
    if len(blocks) > 2 and blocks[-1][1] < max(n for _, n in blocks):
        # a last, smaller block (the prompts left over) arrives after its slowest request, not at
        # the rate the full blocks came: in a small pilot it would halve the rate
        blocks = blocks[:-1]
    if len(blocks) > 1:
        out["rows_per_s"] = sum(n for _, n in blocks[1:]) / (blocks[-1][0] - blocks[0][0])
    return out


def _steady(first_s: float, first_rows: int, rows_per_s: float, n: int) -> float:
    """Wall time of ``n`` rows: the pilot's start-up, then its steady throughput."""
    return first_s + max(0, n - first_rows) / rows_per_s


def _after_start_up(measured: dict, in_flight: int, n: int) -> float:
    """Wall time of ``n`` requests from a pilot that showed no steady rate (one batch): its start-up
    (when known), then the rest with ``in_flight`` requests of the pilot's mean latency at a time."""
    rest = max(0, n - measured.get("first_rows", 0))
    return measured.get("first_s", 0.0) + rest * measured["latency_s"] / in_flight


def _scaled(seconds: float | None, pilot_n: int, n: int) -> float | None:
    return None if seconds is None or not pilot_n else round(seconds * n / pilot_n, 1)


def plan_generate(cfg: PersoDPOConfig, rows: list[dict], stage: str = "generate",
                  prompts_lineage: str | None = None, pilot: dict | None = None) -> tuple[StagePlan, list[dict]]:
    """The generation requests; returns the plan and the planned candidates (id, generator, row,
    reply token bound) for the judges' plan. With a ``pilot`` (:func:`run_pilot`), reply tokens,
    cost and wall time are calibrated from it."""
    from persodpo.contracts import candidate_id
    from persodpo.generate.api_backend import endpoint
    from persodpo.llm_api import register_prices
    from persodpo.prompting import build_messages, max_new_tokens

    g = cfg.generate
    done = _done_ids(cfg, prompts_lineage) if stage == "generate" else set()
    prompts = _answered(cfg, rows, g.split, g.max_prompts, g.prompt_offset) if stage == "generate" else rows
    plan = StagePlan(stage, rows=0)
    cands: list[dict] = []
    walls: list[float | None] = []
    for gen in g.generators:
        template = g.template_of(gen)
        max_tokens = int(gen.sampling.max_tokens or max_new_tokens(template, g.word_limit))
        measured = (pilot or {}).get("generators", {}).get(gen.name) if stage == "generate" else None
        per_reply = measured.get("completion_tokens_per_request") if measured else None
        reply_tokens = max_tokens if per_reply is None else min(max_tokens, max(1, round(per_reply)))
        n_req = n_in = 0
        for row in prompts:
            ids = [candidate_id(row["prompt_id"], gen.name, k) for k in range(gen.samples)]
            cands += [{"candidate_id": c, "generator": gen.name, "row": row, "reply_tokens": reply_tokens} for c in ids]
            todo = [c for c in ids if c not in done]
            if todo:
                n_req += len(todo)
                n_in += len(todo) * _tokens(gen.model, build_messages(row, template, g.word_limit))
        plan.rows += len(prompts) * gen.samples
        plan.requests += n_req
        plan.prompt_tokens += n_in
        completion = round(n_req * (max_tokens if per_reply is None else per_reply))
        plan.completion_tokens += completion
        entry = {"backend": gen.backend, "requests": n_req, "prompt_tokens": n_in, "completion_tokens": completion,
                 "kept_from_an_interrupted_run": len(prompts) * gen.samples - n_req}
        if measured:
            entry["pilot"] = measured
        wall = None
        if gen.backend == "api":
            ep = endpoint(gen, template, g.word_limit, None)
            register_prices(ep)
            cost = _cost(ep.model, n_in, completion) if n_req else 0.0
            entry["cost_usd"] = cost
            if cost is None:
                plan.cost_usd = None
                plan.unknown["cost_usd"] = f"no price for {ep.model}: register input/output_cost_per_token"
            elif plan.cost_usd is not None:
                plan.cost_usd += cost
            if ep.rpm:
                entry["min_wall_s"] = round(n_req / (ep.rpm / 60.0), 1)
            if measured and measured.get("rows_per_s"):
                # the pilot's start-up and its steady throughput (what the actors, their batches and
                # this machine really reached), never faster than the rpm
                wall = _steady(measured["first_s"], measured["first_rows"], measured["rows_per_s"], n_req)
                wall = round(max(wall, entry.get("min_wall_s", 0.0)), 1)
            elif measured and measured.get("latency_s") is not None:
                # a pilot of one batch: its start-up, then the rest with the actors' semaphores full
                # (an ideal the run will not beat); never faster than the rpm
                wall = _after_start_up(measured, ep.max_actors() * ep.max_in_flight, n_req)
                wall = round(max(wall, entry.get("min_wall_s", 0.0)), 1)
        else:
            entry["cost_usd"] = 0.0
            if measured:
                wall = _scaled(pilot.get("generate_s"), measured["requests"], n_req)
                engines = gen.vllm_options().concurrency
                engines = engines[1] if isinstance(engines, (tuple, list)) else engines
                gpus = 0 if gen.vllm_options().device == "cpu" else engines * gen.vllm_options().tensor_parallel_size
                entry["gpu_hours"] = None if wall is None else round(wall * gpus / 3600, 4)
                plan.gpu_hours = (plan.gpu_hours or 0.0) + (entry["gpu_hours"] or 0.0)
            else:
                plan.unknown["gpu_hours"] = "vLLM generators: no throughput table (use --pilot N)"
        entry["wall_s"] = wall
        walls.append(wall if n_req else 0.0)
        plan.detail[gen.name] = entry
    if walls and all(w is not None for w in walls):
        # the generators run side by side (one union of Ray Data branches), then the summary
        plan.wall_s = round(max(walls) + float((pilot or {}).get("generate_tail_s") or 0.0), 1)
    else:
        plan.unknown.setdefault("wall_s", "latency unknown before a pilot (min_wall_s per generator: its rpm; "
                                          "use --pilot N)")
    return plan, cands


def plan_score(cfg: PersoDPOConfig, cands: list[dict], judges, stage: str = "score",
               pilot: dict | None = None) -> StagePlan:
    from persodpo.llm_api import register_prices
    from persodpo.score.judges import audit_sampled, judge_messages, load_rubric, request_params

    panel = cfg.score.panel
    scale = tuple(panel.scale)
    plan = StagePlan(stage, rows=len(cands))
    rubrics = {d: load_rubric(panel.rubrics[d])[0] for d in panel.dimensions}
    for j in judges:
        register_prices(j)
        params = request_params(j, scale)
        out_tokens = int(params.get("max_tokens") or params.get("max_completion_tokens") or 16)
        skip = j.generator if panel.skip_own_generator else None
        n_req = n_in = 0
        # Reply text is unknown before generation: its tokens are bounded by max_tokens (as words).
        sizes: dict[tuple, int] = {}
        for c in cands:
            if skip is not None and c["generator"] == skip and not audit_sampled(c["candidate_id"], panel.audit_own_share):
                continue
            for d in panel.dimensions:
                key = (d, c["row"]["prompt_id"], c["reply_tokens"])
                if key not in sizes:
                    msgs = judge_messages(rubrics[d], persona=c["row"].get("persona"), history=c["row"].get("history"),
                                          reply="x " * c["reply_tokens"], context_turns=panel.context_turns, scale=scale)
                    sizes[key] = _tokens(j.model, msgs)
                n_req += 1
                n_in += sizes[key]
        cost = _cost(j.model, n_in, n_req * out_tokens) if n_req else 0.0
        plan.requests += n_req
        plan.prompt_tokens += n_in
        plan.completion_tokens += n_req * out_tokens
        if cost is None:
            plan.cost_usd = None
            plan.unknown["cost_usd"] = f"no price for judge {j.name} ({j.model})"
        elif plan.cost_usd is not None:
            plan.cost_usd += cost
        plan.detail[j.name] = {"requests": n_req, "prompt_tokens": n_in, "completion_tokens": n_req * out_tokens,
                               "cost_usd": cost, **({"min_wall_s": round(n_req / (j.rpm / 60.0), 1)} if j.rpm else {})}
    if pilot and stage == "score" and pilot.get("score_rows_per_s"):
        # the pilot's start-up, its steady rows/s (judges and metrics together), its tail
        plan.wall_s = round(_steady(pilot["score_first_s"], pilot["score_first_rows"], pilot["score_rows_per_s"],
                                    len(cands)) + pilot.get("score_tail_s", 0.0), 1)
    elif pilot and stage == "score" and pilot.get("score_s") is not None:
        # the pilot's stage time scaled by judge requests (or rows, without judges)
        done = sum(j.get("requests") or 0 for j in pilot["judges"].values())
        plan.wall_s = _scaled(pilot["score_s"], done, plan.requests) if done else \
            _scaled(pilot["score_s"], pilot.get("score_rows", 0), len(cands))
    if any(m.model for m in cfg.score.metrics):
        plan.unknown["gpu_hours"] = "model metrics: no throughput table"
    if plan.wall_s is None:
        plan.unknown.setdefault("wall_s", "latency unknown before a pilot (use --pilot N)")
    plan.detail["note"] = ("judge requests for replies that all have text and a cold judge cache; the run skips "
                           "replies without text and cached judgments")
    return plan


def train_accelerator(cfg: PersoDPOConfig, accelerator: str | None = None) -> str | None:
    """The training devices' type: given, or the ``accelerator_type:X`` resource its workers ask for."""
    if accelerator:
        return accelerator
    keys = [k for k in (cfg.train.resources_per_worker or {}) if k.startswith("accelerator_type:")]
    return keys[0].split(":", 1)[1] if keys else None


def pair_tokens(pairs, model_path: str, max_length: int | None) -> float:
    """Mean tokens of one pair as training sees it: chosen and rejected, each with its prompt in
    the model's chat template, each cut at ``max_length``."""
    from transformers import AutoTokenizer

    from persodpo.train.batching import message_pair_lengths

    chosen, rejected = message_pair_lengths(pairs, AutoTokenizer.from_pretrained(model_path), max_length)
    return (sum(chosen) + sum(rejected)) / len(chosen) if chosen else 0.0


def plan_train(cfg: PersoDPOConfig, n_prompts: int, pilot: dict | None, accelerator: str | None = None,
               mfu: float | None = None) -> StagePlan:
    """Pairs, tokens, FLOPs, GPU-hours and wall time of ``train``: pairs per prompt and tokens per
    pair from a pilot's pairs, the model's size from its config.json, its tokenizer; FLOPs over the
    accelerator's peak at ``mfu`` (:mod:`persodpo.train.compute`). No pilot: unknown."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from persodpo import storage as st
    from persodpo.models import is_remote, resolve_model
    from persodpo.train.compute import DEFAULT_MFU, dpo_flops, gpu_hours
    from persodpo.train.memory import model_shape
    from persodpo.train.zero import model_parameters

    t = cfg.train
    plan = StagePlan("train", rows=None)
    pairs = (pilot or {}).get("pairs")
    if not pairs or not pilot.get("prompts"):
        why = "the pilot built no pairs (pairs is not in run.stages)" if pilot else "no pilot"
        plan.unknown = {"rows": "the pairs: known after scoring (use --pilot N with pairs in run.stages)",
                        "gpu_hours": why, "wall_s": why}
        return plan
    kept = sum(v for k, v in pairs["by_pair_type"].items() if k in t.pair_types)
    plan.rows = round(kept / pilot["prompts"] * n_prompts)
    if is_remote(t.model):
        plan.unknown = {"gpu_hours": f"train.model {t.model} is not read before the run", "wall_s": "see gpu_hours"}
        return plan
    try:
        path = resolve_model(t.model)
        n_params, trainable = model_parameters(path, t.lora.enabled)
        shape = model_shape(path)
        table = st.read_table(pairs["output"], cfg.storage, columns=["prompt", "chosen", "rejected", "pair_type"])
        table = table.filter(pc.is_in(table.column("pair_type"), value_set=pa.array(t.pair_types, pa.string())))
        per_pair = pair_tokens(table, path, t.max_length)
    except Exception as exc:  # noqa: BLE001 - the plan goes on without this stage's compute
        plan.unknown = {"gpu_hours": f"train.model {t.model}: {type(exc).__name__}: {exc}"[:300], "wall_s": "see gpu_hours"}
        return plan
    per_step = (t.pairs_per_worker_step if t.per_device_batch_size == "auto"
                else t.per_device_batch_size * t.gradient_accumulation_steps) * t.num_workers
    epochs = (t.max_steps * per_step / plan.rows) if t.max_steps and plan.rows else t.num_epochs
    flops = dpo_flops(n_params=n_params, trainable=trainable, shape=shape, tokens=plan.rows * per_pair,
                      seq_len=per_pair / 2, epochs=epochs, precompute_ref=t.precompute_ref_log_probs)
    mfu = mfu or DEFAULT_MFU
    plan.detail = {"pairs_per_prompt": round(kept / pilot["prompts"], 4), "tokens_per_pair": round(per_pair, 1),
                   "epochs": round(epochs, 4), "optimizer_steps": t.max_steps or -(-int(plan.rows * epochs) // per_step),
                   "parameters": n_params, "trainable_parameters": trainable, "flops": float(f"{flops:.4g}"),
                   "mfu": mfu}
    acc = train_accelerator(cfg, accelerator)
    hours = gpu_hours(flops, acc, mfu) if acc else None
    if hours is None:
        plan.unknown = {"gpu_hours": (f"accelerator {acc!r} not in the peak table" if acc else
                                      "which accelerator: --accelerator NAME or an accelerator_type: resource in "
                                      "train.resources_per_worker"), "wall_s": "see gpu_hours"}
        return plan
    plan.detail["accelerator"] = acc
    plan.gpu_hours = round(hours, 4)
    plan.wall_s = round(hours * 3600 / t.num_workers, 1)   # one device per worker; start-up not counted
    return plan


def plan_run(cfg: PersoDPOConfig, pilot: int | None = None, accelerator: str | None = None,
             mfu: float | None = None) -> list[dict]:
    """One dict per stage of ``run.stages`` and a last ``total``; nothing is sent unless ``pilot``
    (a number of prompts for :func:`run_pilot`) is given."""
    from persodpo.check import align_word_limits
    from persodpo.pipeline import wire
    from persodpo.score.heldout import evaluation_judges

    from persodpo.rounds.wiring import first_round

    measured = run_pilot(cfg, pilot) if pilot else None
    cfg = first_round(align_word_limits(wire(cfg)))   # iterative runs: round 1 (later rounds' policy is not trained yet)
    stages = list(cfg.run.stages)
    plans: list[StagePlan] = []
    with tempfile.TemporaryDirectory(prefix="persodpo-plan-") as tmp:
        prompts_uri, rows = _prompts(cfg, tmp)
        from persodpo.lineage import of_output

        lineage = of_output(prompts_uri, cfg.storage)
        cands: list[dict] = []
        for stage in stages:
            if stage == "ingest":
                plans.append(StagePlan("ingest", rows=len(rows)))
            elif stage == "generate":
                p, cands = plan_generate(cfg, rows, prompts_lineage=lineage, pilot=measured)
                plans.append(p)
            elif stage == "score":
                plans.append(plan_score(cfg, cands, cfg.score.judges, pilot=measured))
            elif stage == "pairs":
                plans.append(StagePlan("pairs", rows=None, unknown={"rows": "depends on the scores"}))
            elif stage == "train":
                g = cfg.generate
                n_prompts = len(_answered(cfg, rows, g.split, g.max_prompts, g.prompt_offset))
                plans.append(plan_train(cfg, n_prompts, measured, accelerator, mfu))
            elif stage == "evaluate":
                e = cfg.evaluate
                held = _answered(cfg, rows, e.split, e.max_prompts)
                n_models = int(e.include_base) + int(bool(e.input)) + len(e.baselines)
                p = StagePlan("evaluate", rows=len(held) * n_models,
                              unknown={"gpu_hours": "held-out generation runs on vLLM engines: no throughput table",
                                       "wall_s": "no pilot"})
                p.detail = {"held_out_prompts": len(held), "models": n_models}
                judges = evaluation_judges(e.judges, cfg.score.judges)
                reply_bound = max((c["reply_tokens"] for c in cands), default=256)
                if judges:
                    fake = [{"candidate_id": f"eval-{m}-{r['prompt_id']}", "generator": f"model{m}", "row": r,
                             "reply_tokens": reply_bound} for m in range(n_models) for r in held]
                    s = plan_score(cfg, fake, judges, stage="evaluate")
                    for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd"):
                        setattr(p, k, getattr(s, k))
                    p.unknown.update({k: v for k, v in s.unknown.items() if k == "cost_usd"})
                    p.detail["judges"] = {k: v for k, v in s.detail.items() if k != "note"}
                plans.append(p)
    total = StagePlan("total", rows=None)
    for p in plans:
        total.requests += p.requests
        for k in ("prompt_tokens", "completion_tokens", "cost_usd"):
            a, b = getattr(total, k), getattr(p, k)
            setattr(total, k, None if a is None or b is None else a + b)
    total.unknown = {"gpu_hours": "see the stages", "wall_s": "see the stages"}
    if measured:
        total.detail["pilot"] = {k: measured[k] for k in ("prompts", "run_dir")}
        known = [p.wall_s for p in plans if p.wall_s is not None]
        total.detail["wall_s_of_the_stages_known"] = round(sum(known), 1) if known else None
    hours = [p.gpu_hours for p in plans if p.gpu_hours is not None]
    total.detail["gpu_hours_of_the_stages_known"] = round(sum(hours), 4) if hours else None
    if total.cost_usd is None:
        total.unknown["cost_usd"] = "a stage's price is unknown"
    return [p.as_dict() for p in [*plans, total]]


def render(plans: list[dict]) -> str:
    head = (f"{'stage':<10} {'rows':>8} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'cost USD':>10} "
            f"{'wall s':>9}")
    lines = [head, "-" * len(head)]
    for p in plans:
        cost = "?" if p["cost_usd"] is None else f"{p['cost_usd']:.4f}"
        rows = "?" if p["rows"] is None else str(p["rows"])
        lines.append(f"{p['stage']:<10} {rows:>8} {p['requests']:>9} {p['prompt_tokens'] or 0:>11} "
                     f"{p['completion_tokens'] or 0:>11} {cost:>10} {'?' if p['wall_s'] is None else p['wall_s']:>9}")
    return "\n".join(lines)
