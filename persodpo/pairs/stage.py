"""The pairs stage: scores + candidates + prompts -> DPO pairs (TRL conversational form) and a
data card, written through the storage layer (local path or s3://).

    persodpo pairs --input SCORES --candidates CANDIDATES --prompts PROMPTS --output PAIRS \\
        [--recipe persodpo|paper-length-prior|paper-perso|simple] [--set pairs.persodpo.min_margin=0.25]

No Ray here, on purpose: the recipes need global statistics (percentiles, min-max, pooled
variances) over the whole pool, and the whole pool is small. One million scored candidates
(ids, a few float metrics and the reply texts, a few hundred MB) take 16-22 s of CPU end to end,
under 3 GiB (bench/pairs.py), less than a Ray Data groupby would spend shuffling them. Generation and scoring, the expensive stages,
are the distributed ones. Past ~10M candidates per run, shard by prompt_id (recipes never look
across prompts except for the global statistics) before reaching for a cluster.
"""

from __future__ import annotations

import json
import logging
import time

from persodpo import storage as st
from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError
from persodpo.manifest import stage_manifest

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "persobench-json-v1"
_URIS = (("input", "--input", "scores table"), ("candidates", "--candidates", "candidates table"),
         ("prompts", "--prompts", "prompts table"), ("output", "--output", "output"))


def resolve_template(pool, recipe, cfg) -> str:
    """The prompt template the pairs' ``prompt`` column uses: the replies must answer it."""
    from persodpo.prompting import get_template

    if recipe.template:
        name, key = recipe.template, "pairs.recipe"
    elif cfg.template:
        name, key = cfg.template, "pairs.template"
    else:
        found = sorted(pool["template"].dropna().unique())
        if len(found) > 1:
            raise ConfigError(f"the candidates were generated with several prompt templates {found}; a pair's "
                              "prompt must be the one its replies answered: set pairs.template to one of them",
                              key="pairs.template")
        if not found:
            log.warning("the candidates record no prompt template; assuming %s", DEFAULT_TEMPLATE)
        name, key = (found[0] if found else DEFAULT_TEMPLATE), "pairs.template"
    try:
        get_template(name)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None
    other = sorted(set(pool["template"].dropna().unique()) - {name})
    if other and not (pool["template"].isna() | pool["template"].eq(name)).any():
        raise ConfigError(f"recipe {recipe.name} builds {name} prompts, but every candidate answered another "
                          f"prompt template {other}", key=key)
    return name


def _prompts_source(uri: str, storage) -> str | None:
    """The prompts' ingest source (for the dataset card's tags), when their manifest says."""
    try:
        source = st.read_manifest(uri, storage).get("source")
    except Exception:  # noqa: BLE001 - a card tag is not worth failing the stage for
        return None
    return source if isinstance(source, str) else None


def run_stage(cfg: PersoDPOConfig) -> dict:
    from persodpo.hub import dataset_card
    from persodpo.pairs.assemble import PairsBuilder
    from persodpo.pairs.card import card_stats, markdown, plots
    from persodpo.pairs.pool import CANDIDATE_COLUMNS, build_pool, read_columns
    from persodpo.pairs.recipes import get_recipe
    from persodpo.prompting import get_template

    from persodpo.check import follow_candidates_word_limit

    c = cfg.pairs
    for key, flag, what in _URIS:
        if not getattr(c, key):
            raise ConfigError(f"no {what} URI (use {flag} or pairs.{key})", key=f"pairs.{key}")
    # The pairs' prompt must be what the replies answered: the candidates' word limit.
    cfg = follow_candidates_word_limit(cfg, "pairs", c.candidates)
    c = cfg.pairs
    recipe = get_recipe(c.recipe)
    rc = recipe.config(c)
    metrics = recipe.metric_columns(c)
    t0 = time.time()
    timings: dict[str, float] = {}

    clock = [t0]

    def lap(name: str) -> None:
        now = time.time()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    scores = read_columns(c.input, cfg.storage, required=("candidate_id",), all_columns=True)
    # The paper recipes never show a raw output (they re-serialise the extracted text): skip reading it.
    needs_raw = recipe.uses_format_signal
    candidates = read_columns(c.candidates, cfg.storage, optional=("template",),
                              required=tuple(col for col in CANDIDATE_COLUMNS if needs_raw or col != "raw"))
    lap("read_inputs")
    inputs = build_pool(candidates, scores, metric_columns=metrics,
                        format_column=c.format_column if recipe.uses_format_signal else None,
                        candidates_uri=c.candidates, scores_uri=c.input, needs_raw=needs_raw)
    del candidates   # the scores stay for pairs.html: every score of the candidates it shows
    pool = inputs.pool
    if recipe.uses_format_signal:
        log.info("format signal: %s", inputs.format_source)
    template = resolve_template(pool, recipe, c)
    keep = pool["template"].isna() | pool["template"].eq(template)
    n_other_template = int((~keep).sum())
    if n_other_template:
        log.warning("%d candidates answered another prompt template than %s: left out", n_other_template, template)
        pool = pool[keep].reset_index(drop=True)
    lap("build_pool")
    result = recipe.run(pool, rc, c)
    if getattr(rc, "verify", "none") == "pairwise":
        from persodpo.pairs.verify import verify_pairwise

        uri = c.pairwise or st.join(c.input, "pairwise")
        if not st.is_complete(uri, cfg.storage):
            raise ConfigError(f"no pairwise verdicts at {uri}: score with score.panel.pairwise: true (or set "
                              "pairs.pairwise)", key=f"pairs.{recipe.section}.verify")
        result.selection, result.stats["pairwise_verification"] = verify_pairwise(
            pool, result.selection, st.read_table(uri, cfg.storage))
        log.info("pairs: pairwise verification %s", result.stats["pairwise_verification"])
    lap("recipe")
    prompts = read_columns(c.prompts, cfg.storage, required=("prompt_id", "persona", "history"), optional=("knowledge",))
    builder = PairsBuilder(pool, result.selection, prompts, recipe=recipe.name, template=template,
                           response_format=get_template(template).response_format, word_limit=c.word_limit,
                           prompts_uri=c.prompts)
    lap("prompts_and_ids")
    families = getattr(rc, "generator_families", None)
    stats, pair_frame = card_stats(pool, builder.sel, recipe=recipe.name, recipe_stats=result.stats,
                                   recipe_score=result.scores, metric_columns=list(metrics), families=families)
    stats.update({"template": template, "word_limit": c.word_limit, "n_candidates_other_template": n_other_template,
                  "format_signal": inputs.format_source if recipe.uses_format_signal else "candidates.parse_status"})
    lap("card_stats")

    from persodpo.hub import DATA_DIR

    out = st.StageOutput(c.output, cfg.storage).begin()
    # Hub layout: Parquet under data/ named for the split (README.md maps data/train-* to train).
    for i, table in enumerate(builder.chunks(c.rows_per_part)):
        out.write_table(table, f"train-{i:05d}.parquet", part_dir=DATA_DIR)
    lap("write_pairs")
    pngs = plots(pair_frame, result.scores, stats) if c.plots else {}
    for name, png in pngs.items():
        out.write_file(name, png)
    images = list(pngs)
    lap("plots")
    if c.html_max_pairs:
        from persodpo.pairs.browser import browser_data, pairs_page

        data = browser_data(pool, builder, result.scores, scores, prompts, max_pairs=c.html_max_pairs)
        out.write_file("pairs.html", pairs_page(stats, data, pngs))
    del scores, prompts
    lap("html")
    stats["timings_s"] = dict(timings)
    versions = {"code_version": st.code_version(), "packages": st.package_versions()}
    inputs_uris = {"scores": c.input, "candidates": c.candidates, "prompts": c.prompts}
    stats_doc = {**stats, "inputs": inputs_uris, "config": c.model_dump(mode="json"), "versions": versions}
    out.write_file("stats.json", json.dumps(stats_doc, indent=2, sort_keys=True, default=str))
    card = markdown(stats, config=c.model_dump(mode="json"), versions=versions, inputs=inputs_uris, images=images)
    out.write_file("data_card.md", card)
    out.write_file("README.md", dataset_card(card, n_pairs=stats["n_pairs"], recipe=recipe.name,
                                             source=_prompts_source(c.prompts, cfg.storage)))
    b = stats["balance"]
    rs = result.stats
    summary = {
        "stage": "pairs", "recipe": recipe.name, "output": c.output, "n_pairs": stats["n_pairs"],
        "by_pair_type": stats["by_pair_type"], "n_prompts_with_pairs": stats["n_prompts_with_pairs"],
        "n_candidates": stats["n_candidates"], "template": template, "thresholds": rs.get("thresholds"),
        "chosen_shorter_share": b.get("chosen_shorter_share"),
        "rejected_failed_parsing_share": b.get("rejected_failed_parsing_share"),
        "chosen_by_generator": b.get("chosen_by_generator"),
    }
    out.commit(stage_manifest(cfg, "pairs", rows=stats["n_pairs"], recipe=recipe.name, template=template,
                              by_pair_type=stats["by_pair_type"], inputs=inputs_uris, thresholds=rs.get("thresholds")))
    lap("card_and_commit")
    summary["timings_s"] = timings
    summary["wall_time_s"] = round(time.time() - t0, 2)
    log.info("pairs: recipe %s -> %d pairs (%s) -> %s", recipe.name, stats["n_pairs"], stats["by_pair_type"], c.output)
    return summary
