"""The configuration of each round of iterative DPO, derived from the one-round configuration.

Round 1 is the one-round pipeline under ``ROOT/runs/RUN_ID/<stage>/`` (so a run with
``run.rounds: 1`` is unchanged, and raising the count later reuses it). Round k >= 2 lives under
``ROOT/runs/RUN_ID/round-k/<stage>/`` and reads the prompts of round 1's ingest; what differs:

- generate: the previous round's model as generator ``rounds.policy_name`` (``policy_samples``
  replies per prompt), plus the configured generators with ``keep_generators`` (their finished
  candidates copied from round 1's table, ``generate.reuse_from``); fresh prompts move the slice;
- score: round 1's judge cache (the reused candidates' judgments are hits);
- pairs: ``pairs.persodpo.on_policy`` (``rounds.on_policy``) with ``policy_generator`` set;
- train: starts from the previous round's weights; reference: those (default) or the original;
- evaluate: the same held-out prompts, the round's model only (the previous rounds' models were
  evaluated by their own rounds: persodpo.rounds.report puts them side by side).

Pure functions of the configuration (and, for a model on object storage, one publish of the
previous round's output: a copy without its checkpoints that every node can download).
"""

from __future__ import annotations

from persodpo import storage as st
from persodpo.config import STAGES, PersoDPOConfig

ROUND_STAGES = tuple(s for s in STAGES if s != "ingest")


def round_dir(run_dir: str, k: int) -> str:
    """Where round ``k``'s stage outputs live (round 1: the run directory itself)."""
    return run_dir if k == 1 else st.join(run_dir, f"round-{k}")


def prompt_slice(cfg: PersoDPOConfig, k: int) -> tuple[int, int | None]:
    """(generate.prompt_offset, generate.max_prompts) of round ``k``."""
    r, g = cfg.rounds, cfg.generate
    if r.prompts == "fresh":
        return g.prompt_offset + (k - 1) * r.prompts_per_round, r.prompts_per_round
    return g.prompt_offset, r.prompts_per_round or g.max_prompts


def first_round(cfg: PersoDPOConfig) -> PersoDPOConfig:
    """Round 1 of a wired config: the one-round pipeline, on round 1's prompt slice when rounds > 1."""
    if cfg.run.rounds == 1:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.generate.prompt_offset, cfg.generate.max_prompts = prompt_slice(cfg, 1)
    return cfg


def policy_model(cfg: PersoDPOConfig, train_output: str) -> str:
    """What the policy generator and the next training load for a round's train output."""
    if not st.is_s3(train_output):
        return train_output
    from persodpo.models import model_store, servable_stage_model

    store = model_store(cfg.run.root, train_output) or st.join(train_output.rstrip("/").rsplit("/", 1)[0], "models")
    return servable_stage_model(train_output, store=store, prefix="policy-", storage=cfg.storage,
                                fetch=cfg.rounds.policy_engine == "transformers")


def policy_generator(cfg: PersoDPOConfig, model: str):
    """The previous round's model as a generator of this round."""
    from persodpo.generate.config import GeneratorConfig

    r = cfg.rounds
    spec: dict = {"name": r.policy_name, "samples": r.policy_samples, "sampling": r.policy_sampling.model_dump()}
    if r.policy_engine == "transformers":
        spec.update(backend="api", model=f"openai/{r.policy_name}",
                    api={"api_base": f"local:{model}", "concurrency": 1, "max_in_flight": 8, "timeout_s": 600,
                         "max_retries": 1})
    else:
        template = next((g for g in cfg.generate.generators if g.backend == "vllm" and g.vllm is not None), None)
        vllm = r.policy_vllm or (template.vllm if template is not None else None)
        spec.update(backend="vllm", model=model, **({"vllm": vllm.model_dump()} if vllm is not None else {}))
    return GeneratorConfig.model_validate(spec)


def round_config(cfg: PersoDPOConfig, k: int, *, previous_model: str, original_model: str) -> PersoDPOConfig:
    """Round ``k`` >= 2 of the wired one-round config ``cfg`` (round 1's), given the model the
    previous round trained (``previous_model``: what :func:`policy_model` returned) and the
    original ``train.model``."""
    assert k >= 2, "round 1 is the wired config itself"
    from persodpo.pipeline import run_dir

    c = cfg.model_copy(deep=True)
    r = c.rounds
    base = round_dir(run_dir(cfg), k)
    out = {s: st.join(base, s) for s in ROUND_STAGES}
    prompts = cfg.generate.input        # round 1's ingest: the same prompts (and held-out split) for every round
    g = c.generate
    g.output = out["generate"]
    g.prompt_offset, g.max_prompts = prompt_slice(cfg, k)
    policy = policy_generator(cfg, previous_model)
    g.generators = [policy, *(cfg.generate.generators if r.keep_generators else [])]
    g.reuse_from = [cfg.generate.output] if r.keep_generators else []
    c.score.input, c.score.output = out["generate"], out["score"]
    from persodpo.score.stage import judge_cache_uri

    # One judge cache for every round: the kept generators' reused candidates are cache hits.
    c.score.panel = c.score.panel.model_copy(update={"cache": judge_cache_uri(cfg.score)})
    c.pairs.input, c.pairs.candidates, c.pairs.output = out["score"], out["generate"], out["pairs"]
    c.pairs.pairwise = None
    if r.on_policy:
        c.pairs.persodpo = c.pairs.persodpo.model_copy(update={"on_policy": True, "policy_generator": r.policy_name})
    c.train.input, c.train.output = out["pairs"], out["train"]
    c.train.model = previous_model
    c.train.ref_model = original_model if r.reference == "original" else None
    if cfg.train.run_name:
        c.train.run_name = f"{cfg.train.run_name}-round-{k}"
    c.evaluate.input, c.evaluate.output = out["train"], out["evaluate"]
    c.evaluate.include_base = False
    c.evaluate.prompts = prompts
    assert c.ingest.output == cfg.ingest.output and c.score.prompts == c.pairs.prompts == prompts
    return c
