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
- vLLM generators, model metrics and training: no throughput table is shipped, so GPU-hours and
  wall time are null (a pilot run would measure them: not built yet).
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


def _answered(cfg: PersoDPOConfig, rows: list[dict], split: str | None, max_prompts: int | None) -> list[dict]:
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows[:max_prompts] if max_prompts else rows


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


def plan_generate(cfg: PersoDPOConfig, rows: list[dict], stage: str = "generate",
                  prompts_lineage: str | None = None) -> tuple[StagePlan, list[dict]]:
    """The generation requests; returns the plan and the planned candidates (id, generator, row,
    reply token bound) for the judges' plan."""
    from persodpo.contracts import candidate_id
    from persodpo.generate.api_backend import endpoint
    from persodpo.llm_api import register_prices
    from persodpo.prompting import build_messages, max_new_tokens

    g = cfg.generate
    done = _done_ids(cfg, prompts_lineage) if stage == "generate" else set()
    prompts = _answered(cfg, rows, g.split, g.max_prompts) if stage == "generate" else rows
    plan = StagePlan(stage, rows=0)
    cands: list[dict] = []
    for gen in g.generators:
        template = g.template_of(gen)
        max_tokens = int(gen.sampling.max_tokens or max_new_tokens(template, g.word_limit))
        n_req = n_in = 0
        for row in prompts:
            ids = [candidate_id(row["prompt_id"], gen.name, k) for k in range(gen.samples)]
            cands += [{"candidate_id": c, "generator": gen.name, "row": row, "reply_tokens": max_tokens} for c in ids]
            todo = [c for c in ids if c not in done]
            if todo:
                n_req += len(todo)
                n_in += len(todo) * _tokens(gen.model, build_messages(row, template, g.word_limit))
        plan.rows += len(prompts) * gen.samples
        plan.requests += n_req
        plan.prompt_tokens += n_in
        plan.completion_tokens += n_req * max_tokens
        entry = {"backend": gen.backend, "requests": n_req, "prompt_tokens": n_in,
                 "completion_tokens": n_req * max_tokens, "kept_from_an_interrupted_run": len(prompts) * gen.samples - n_req}
        if gen.backend == "api":
            ep = endpoint(gen, template, g.word_limit, None)
            register_prices(ep)
            cost = _cost(ep.model, n_in, n_req * max_tokens) if n_req else 0.0
            entry["cost_usd"] = cost
            if cost is None:
                plan.cost_usd = None
                plan.unknown["cost_usd"] = f"no price for {ep.model}: register input/output_cost_per_token"
            elif plan.cost_usd is not None:
                plan.cost_usd += cost
            if ep.rpm:
                entry["min_wall_s"] = round(n_req / (ep.rpm / 60.0), 1)
        else:
            entry["cost_usd"] = 0.0
            plan.unknown["gpu_hours"] = "vLLM generators: no throughput table or pilot yet"
        plan.detail[gen.name] = entry
    plan.unknown.setdefault("wall_s", "latency unknown before a pilot (min_wall_s per generator: its rpm)")
    return plan, cands


def plan_score(cfg: PersoDPOConfig, cands: list[dict], judges, stage: str = "score") -> StagePlan:
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
    if any(m.model for m in cfg.score.metrics):
        plan.unknown["gpu_hours"] = "model metrics: no throughput table or pilot yet"
    plan.unknown.setdefault("wall_s", "latency unknown before a pilot")
    plan.detail["note"] = ("judge requests for replies that all have text and a cold judge cache; the run skips "
                           "replies without text and cached judgments")
    return plan


def plan_run(cfg: PersoDPOConfig) -> list[dict]:
    """One dict per stage of ``run.stages`` and a last ``total``; nothing is sent."""
    from persodpo.check import align_word_limits
    from persodpo.pipeline import wire
    from persodpo.score.heldout import evaluation_judges

    cfg = align_word_limits(wire(cfg))
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
                p, cands = plan_generate(cfg, rows, prompts_lineage=lineage)
                plans.append(p)
            elif stage == "score":
                plans.append(plan_score(cfg, cands, cfg.score.judges))
            elif stage == "pairs":
                plans.append(StagePlan("pairs", rows=None, unknown={"rows": "depends on the scores"}))
            elif stage == "train":
                plans.append(StagePlan("train", rows=None, unknown={"rows": "the pairs", "gpu_hours": "no throughput table",
                                                                     "wall_s": "no throughput table"}))
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
    if total.cost_usd is None:
        total.unknown["cost_usd"] = "a stage's price is unknown"
    return [p.as_dict() for p in [*plans, total]]


def render(plans: list[dict]) -> str:
    head = f"{'stage':<10} {'rows':>8} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'cost USD':>10}"
    lines = [head, "-" * len(head)]
    for p in plans:
        cost = "?" if p["cost_usd"] is None else f"{p['cost_usd']:.4f}"
        rows = "?" if p["rows"] is None else str(p["rows"])
        lines.append(f"{p['stage']:<10} {rows:>8} {p['requests']:>9} {p['prompt_tokens'] or 0:>11} "
                     f"{p['completion_tokens'] or 0:>11} {cost:>10}")
    return "\n".join(lines)
