"""The evaluate stage: held-out generation with the base and trained models (and baselines),
scored with the training data's metrics, compared in a report.

Output layout (each sub-table is a complete stage output of its own, so a crashed evaluation
resumes where it stopped)::

    OUTPUT/prompts/       the held-out prompts used
    OUTPUT/candidates/    replies of every evaluated model (the generate stage, greedy)
    OUTPUT/scored/        those replies + the authors' held-out outputs, scored (the score stage)
    OUTPUT/               tables (model x metric, length buckets) + report.md + PNG plots
"""

from __future__ import annotations

import json
import logging
import os
import time

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persodpo import contracts
from persodpo import storage as st
from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError, InputError
from persodpo.evaluate import report
from persodpo.manifest import stage_manifest

log = logging.getLogger(__name__)


def _held_out_prompts(cfg: PersoDPOConfig) -> pa.Table:
    e = cfg.evaluate
    table = st.read_table(e.prompts, cfg.storage)
    if e.split is not None:
        splits = sorted(set(table.column("split").to_pylist()))
        table = table.filter(pc.equal(table.column("split"), e.split))
        if table.num_rows == 0:
            raise InputError(f"no prompts of split {e.split!r} (splits present: {splits}); set evaluate.split",
                             file=e.prompts, field="split")
    if e.max_prompts:
        table = table.slice(0, e.max_prompts)
    return table


def servable_model(uri: str, cfg: PersoDPOConfig) -> str:
    """What the evaluation generators load for a model stored at ``uri``
    (:func:`persodpo.models.servable_stage_model`, published as ``eval-<name>-<version>`` in the run's
    model store). With ``evaluate.engine: transformers`` the model is served on the driver (a
    ``local:`` server, for one machine), so it is fetched there."""
    if not st.is_s3(uri):
        return uri
    from persodpo.models import model_store, servable_stage_model

    store = model_store(cfg.run.root, cfg.evaluate.output) or st.join(uri.rstrip("/").rsplit("/", 1)[0], "models")
    return servable_stage_model(uri, store=store, prefix="eval-", storage=cfg.storage,
                                fetch=cfg.evaluate.engine == "transformers")


def models_to_evaluate(cfg: PersoDPOConfig) -> list[tuple[str, str]]:
    e = cfg.evaluate
    models: list[tuple[str, str]] = []
    if e.include_base:
        models.append((e.base_name, cfg.train.model))
    if e.input:
        if not st.is_complete(e.input, cfg.storage):
            raise InputError("not a complete train output (no _SUCCESS): run `persodpo train` first", file=e.input)
        models.append((e.trained_name, servable_model(e.input, cfg)))
    for b in e.baselines:
        models.append((b.name, servable_model(b.model, cfg)))
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique: {names}", key="evaluate.baselines")
    if not models:
        raise ConfigError("nothing to evaluate: no trained model (evaluate.input), base or baselines",
                          key="evaluate.input")
    return models


def _generation_config(cfg: PersoDPOConfig, models, prompts_uri: str, out_uri: str) -> PersoDPOConfig:
    from persodpo.generate.config import GeneratorConfig

    c = cfg.model_copy(deep=True)
    template = next((g for g in cfg.generate.generators if g.backend == "vllm"), None)
    gens = []
    for name, model in models:
        sampling = {"temperature": cfg.evaluate.temperature, "seed": 0}
        if cfg.evaluate.engine == "transformers":
            g = {"name": name, "backend": "api", "model": f"openai/{name}", "sampling": sampling,
                 "api": {"api_base": f"local:{model}", "concurrency": 1, "max_in_flight": 8, "timeout_s": 600,
                         "max_retries": 1}}
        else:
            g = {"name": name, "backend": "vllm", "model": model, "sampling": sampling}
            if template is not None and template.vllm is not None:
                g["vllm"] = template.vllm.model_dump()
        gens.append(GeneratorConfig.model_validate(g))
    c.generate = c.generate.model_copy(update={"input": prompts_uri, "output": out_uri, "generators": gens,
                                               "max_prompts": None, "split": None,
                                               # held-out replies of other weights are derived data
                                               "discard_stale": True})
    return c


def _authors_rows(cfg: PersoDPOConfig, prompt_ids: set[str]) -> pa.Table | None:
    root = cfg.evaluate.authors_outputs
    if not root:
        return None
    cands = st.read_table(st.join(root, "eval_candidates"), cfg.storage)
    mask = pa.array([p in prompt_ids for p in cands.column("prompt_id").to_pylist()])
    cands = cands.filter(mask)
    if cands.num_rows == 0:
        raise InputError("none of the authors' held-out outputs answer the evaluated prompts (evaluate.prompts "
                         "must be the authors' valid prompts from the same import)", file=root)
    return cands


def _write_stage_table(uri: str, table: pa.Table, cfg: PersoDPOConfig, **fields) -> None:
    out = st.StageOutput(uri, cfg.storage).begin()
    out.write_table(table)
    out.commit(stage_manifest(cfg, "evaluate", rows=table.num_rows, **fields))


def _training_history(cfg: PersoDPOConfig) -> list[dict]:
    if not cfg.evaluate.input:
        return []
    try:
        text = st.read_bytes(st.join(cfg.evaluate.input, "metrics.jsonl"), cfg.storage).decode()
    except Exception:  # noqa: BLE001 - the report just has no training curves
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _pairs_card(cfg: PersoDPOConfig) -> dict | None:
    uri = cfg.train.input
    if not uri:
        return None
    try:
        return json.loads(st.read_bytes(st.join(uri, "stats.json"), cfg.storage))
    except Exception:  # noqa: BLE001
        return None


def render_report(df: pd.DataFrame, metrics: list[str], *, models: list[str], history: list[dict],
                  pairs_stats: dict | None, n_prompts: int, split: str | None, buckets: int,
                  warnings: list[str] | None = None, scores: pd.DataFrame | None = None,
                  prompts: pd.DataFrame | None = None, baseline: str | None = None,
                  trained: str | None = None) -> tuple[str, str, dict]:
    """(report.md text, report.html text, {file name: PNG bytes}).

    ``scores`` (the scored table, for the reasons a metric has no value), ``prompts`` (persona and
    turns for the side-by-side view), ``baseline`` / ``trained`` (the models compared pairwise)."""
    from persodpo.evaluate import compare
    from persodpo.evaluate.html import report_page

    warnings = list(warnings or [])
    missing = compare.unavailable(scores, scores["generator"], metrics) if scores is not None else []
    # A metric without any value for a model is a line with its reason, not a column of dashes.
    empty = {m for m in metrics if df[m].isna().all()}
    shown = [m for m in metrics if m not in empty]
    rate_metrics = [m for m in shown if compare.is_rate(df[m])]
    score_metrics = [m for m in shown if m not in rate_metrics]
    table = report.model_table(df, shown)
    per_bucket, lc = report.length_controlled(df, shown, buckets)
    corr = report.length_correlation(df, shown)
    paired = pd.DataFrame()
    if baseline in models:
        paired = compare.paired_differences(df, shown, baseline, buckets=report.length_buckets(df, buckets))
    rates = compare.rate_table(df, rate_metrics)
    files = {"metrics_by_model.png": report.plot_metric_distributions(df, shown),
             "length_by_model.png": report.plot_length_histograms(df)}
    forest = report.plot_paired_differences(paired)
    if forest:
        files["paired_differences.png"] = forest
    curves = report.plot_training_curves(history)
    if curves:
        files["training_curves.png"] = curves
    na_lines = compare.unavailable_lines(missing)
    lines = [f"# persodpo evaluation", "",
             f"{n_prompts} held-out prompts (split: {split or 'all'}); models: {', '.join(models)}.", "",
             *[f"> **Warning:** {w}\n" for w in warnings]]
    if len(paired):
        p = paired.assign(ci95=[f"[{report._fmt(a)}, {report._fmt(b)}]" for a, b in zip(paired["ci_low"], paired["ci_high"])],
                          win_tie_loss=[f"{w:.2f} / {t:.2f} / {lo:.2f}" for w, t, lo in
                                        zip(paired["win"], paired["tie"], paired["loss"])])
        lines += ["## Trained vs base, paired by prompt", "",
                  f"Mean per-prompt difference to `{baseline}` with a bootstrap 95% interval (prompts resampled), the "
                  "share of prompts won / tied / lost, and the difference over length-matched prompts (both replies "
                  "in the same length bucket).", "",
                  report.markdown_table(p, ["model", "metric", "n_prompts", "mean_baseline", "mean_model", "diff",
                                            "ci95", "win_tie_loss", "n_length_matched", "diff_length_matched"]), ""]
        if forest:
            lines += ["![paired differences](paired_differences.png)", ""]
    if na_lines:
        lines += ["## Not measured", "", *[f"- {line}" for line in na_lines], ""]
    if len(rates):
        r = rates.assign(rate_ci95=[f"{report._fmt(v)} [{report._fmt(a)}, {report._fmt(b)}]"
                                    for v, a, b in zip(rates["rate"], rates["ci_low"], rates["ci_high"])])
        lines += ["## Rates (pass/fail metrics, Wilson 95% interval)", "",
                  report.markdown_table(r, ["model", "metric", "successes", "n", "rate_ci95"]), ""]
    lines += ["## Scores per model", "",
              "Error ratio = requests that failed (no reply); format failure ratio = replies that came back but did not "
              "follow the requested format; words = mean words of usable replies.",
              "", report.markdown_table(table, ["model", "n", "error_ratio", "format_failure_ratio", "unusable_ratio",
                                                "mean_words", *shown]),
              "", "## Length-controlled scores", "",
              f"Each model's mean over {int(lc['buckets_used'].iloc[0]) if len(lc) else 0} word-count buckets shared by "
              "all models, every bucket weighted equally: shorter replies cannot pass for better ones.", "",
              report.markdown_table(lc, ["model", *shown]) if len(lc) else "(no usable replies)", "",
              "Per bucket:", "", report.markdown_table(per_bucket, ["model", "bucket", "n", *shown]), "",
              "## Correlation of each metric with reply length (Spearman, all usable replies)", "",
              "| metric | rho |", "|---|---|", *[f"| {m} | {report._fmt(v)} |" for m, v in corr.items()], "",
              "## Plots", "", "![metrics](metrics_by_model.png)", "", "![length](length_by_model.png)", ""]
    training_line = None
    if curves:
        last = history[-1] if history else {}
        training_line = f"{len(history)} logged steps; last: " + ", ".join(
            f"{k} {report._fmt(float(v))}" for k, v in last.items() if isinstance(v, (int, float)) and k != "step")
        lines += ["## Training", "", training_line, "", "![training](training_curves.png)", ""]
    if pairs_stats:
        lines += ["## Training pairs (data card)", "", "```json",
                  json.dumps({k: pairs_stats[k] for k in list(pairs_stats)[:12]}, indent=1, default=str)[:4000],
                  "```", "", "Full card: the pairs stage output's `data_card.md`.", ""]
    page = report_page(
        title="persodpo evaluation", lead=f"{n_prompts} held-out prompts (split: {split or 'all'}); models: "
                                          f"{', '.join(models)}.",
        warnings=warnings, paired=paired, rates=rates, unavailable=na_lines, model_table=table,
        score_columns=score_metrics, length_controlled=lc, per_bucket=per_bucket, correlation=corr, plots=files,
        df=df, prompts=prompts if prompts is not None else pd.DataFrame(), metrics=shown, baseline=baseline,
        trained=trained, training_summary=training_line)
    return "\n".join(lines), page, files


def run_stage(cfg: PersoDPOConfig) -> dict:
    e = cfg.evaluate
    for key in ("prompts", "output"):
        if not getattr(e, key):
            raise ConfigError(f"no {key} URI (set evaluate.{key})", key=f"evaluate.{key}")
    t0 = time.time()
    from persodpo.generate.stage import run_stage as generate
    from persodpo.score.stage import run_stage as score

    # Un-mark the output first: while its sub-tables are rewritten, nothing may trust it.
    out = st.StageOutput(e.output, cfg.storage, resume=True).begin()
    prompts = _held_out_prompts(cfg)
    prompts_uri, cands_uri = st.join(e.output, "prompts"), st.join(e.output, "candidates")
    scored_in, scored_uri = st.join(e.output, "candidates_all"), st.join(e.output, "scored")
    _write_stage_table(prompts_uri, prompts, cfg, table_name="prompts", source=e.prompts)
    models = models_to_evaluate(cfg)
    log.info("evaluate: %d held-out prompts x models %s", prompts.num_rows, [n for n, _ in models])
    gen_summary = generate(_generation_config(cfg, models, prompts_uri, cands_uri))

    ours = st.read_table(cands_uri, cfg.storage)
    authors = _authors_rows(cfg, set(prompts.column("prompt_id").to_pylist()))
    all_cands = contracts.conform(ours, contracts.CANDIDATES).select(contracts.CANDIDATES.names)
    if authors is not None:
        all_cands = pa.concat_tables([all_cands, contracts.conform(authors, contracts.CANDIDATES)
                                      .select(contracts.CANDIDATES.names)])
    _write_stage_table(scored_in, all_cands, cfg, table_name="candidates_all")

    from persodpo.score.heldout import evaluation_judges, evaluation_metrics, reuse_warning

    eval_judges = evaluation_judges(e.judges, cfg.score.judges)
    warning = reuse_warning(eval_judges, cfg.score.judges)
    if warning:
        log.warning("evaluate: %s", warning)
    sc = cfg.model_copy(deep=True)
    sc.score = sc.score.model_copy(update={"input": scored_in, "prompts": prompts_uri, "output": scored_uri,
                                           "judges": eval_judges,
                                           "metrics": evaluation_metrics(e.metrics, cfg.score.metrics)})
    score_summary = score(sc)

    cands_df = st.read_table(scored_in, cfg.storage).to_pandas()
    scores_df = st.read_table(scored_uri, cfg.storage).to_pandas()
    metrics = report.metric_columns(scores_df)
    df = report.join(cands_df, scores_df)
    model_names = list(dict.fromkeys(df["model"]))
    names = [n for n, _ in models]
    md, page, files = render_report(
        df, metrics, models=model_names, history=_training_history(cfg), pairs_stats=_pairs_card(cfg),
        n_prompts=prompts.num_rows, split=e.split, buckets=e.length_buckets, warnings=[warning] if warning else [],
        scores=scores_df, prompts=prompts.select(["prompt_id", "persona", "history", "gold"]).to_pandas(),
        baseline=e.base_name if e.include_base else None,
        trained=e.trained_name if e.input and e.trained_name in names else None)
    table = report.model_table(df, metrics)
    _, lc = report.length_controlled(df, metrics, e.length_buckets)

    out.write_table(pa.Table.from_pandas(table, preserve_index=False), "model_table.parquet")
    out.write_table(pa.Table.from_pandas(lc, preserve_index=False), "length_controlled.parquet")
    out.write_file("report.md", md)
    out.write_file("report.html", page)
    for name, data in files.items():
        out.write_file(name, data)
    summary_models = {r["model"]: {"n": int(r["n"]), "error_ratio": round(float(r["error_ratio"]), 4),
                                   "format_failure_ratio": round(float(r["format_failure_ratio"]), 4),
                                   "mean_words": None if pd.isna(r["mean_words"]) else round(float(r["mean_words"]), 1)}
                      for _, r in table.iterrows()}
    cost = float(gen_summary.get("cost_usd") or 0) + float(score_summary.get("cost_usd") or 0)
    from persodpo.lineage import weights_digest

    digests = {name: weights_digest(path, cfg.storage) for name, path in models if "://" in path or os.path.isdir(path)}
    out.commit(stage_manifest(cfg, "evaluate", rows=int(len(df)), models=summary_models, metrics=metrics,
                              model_digests=digests, cost_usd=cost))
    return {"stage": "evaluate", "output": e.output, "report": st.join(e.output, "report.md"),
            "report_html": st.join(e.output, "report.html"),
            "n_prompts": prompts.num_rows, "models": summary_models, "metrics": metrics, "model_digests": digests,
            "warnings": [warning] if warning else [],
            "cost_usd": round(cost, 6), "wall_time_s": round(time.time() - t0, 2)}
