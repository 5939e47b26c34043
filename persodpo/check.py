"""Whole-config checks, before anything runs (``persodpo run`` and ``persodpo check``).

A stage section can be valid on its own and still not fit the others: a recipe weighting a
metric column that no configured metric or judge writes fails the pairs stage after minutes of
generation and scoring. These checks read only the configuration (no data, no Ray, no model) and
name the dotted config key of every problem.
"""

from __future__ import annotations

from dataclasses import dataclass

from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError

# Columns the authors'-data import writes into its scores table (persodpo.ingest.authors).
AUTHORS_SCORE_COLUMNS = ("coh_unieval", "c_score", "ue_score", "persona_distance")
# Stages that apply one word limit: the generator asked for it, score measures against it and
# pairs writes it into the pair's prompt. Keys other than the generate one follow it unless set.
WORD_LIMIT_KEYS = ("score.word_limit", "pairs.word_limit")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    key: str | None = None


def score_columns(cfg: PersoDPOConfig) -> list[str]:
    """Every score column the configured metrics and judge panel write."""
    return section_columns(cfg.score)


def section_columns(score) -> list[str]:
    """The columns a score section's metrics and judges write; ValueError on a clash."""
    from persodpo.score.batch import panel_columns
    from persodpo.score.registry import build_metrics, columns_of

    cols = columns_of(build_metrics(score))
    judges = [j.name for j in score.judges]
    twice = sorted({n for n in judges if judges.count(n) > 1})
    if twice:
        raise ValueError(f"judge name(s) {twice} used twice: each judge writes its own columns")
    dims = list(score.panel.dimensions)
    if judges:
        cols += panel_columns(judges, dims)
    return cols


def evaluate_columns(cfg: PersoDPOConfig) -> list[str]:
    """The columns evaluation scores each model's replies with (its own metrics and judges, or
    the score section's)."""
    from persodpo.score.heldout import evaluation_judges, evaluation_metrics

    score = cfg.score.model_copy(update={"metrics": evaluation_metrics(cfg.evaluate.metrics, cfg.score.metrics),
                                         "judges": evaluation_judges(cfg.evaluate.judges, cfg.score.judges)})
    return section_columns(score)


def _explicit(cfg: PersoDPOConfig, dotted: str) -> bool:
    section, _, field = dotted.partition(".")
    return field in getattr(cfg, section).model_fields_set


def align_word_limits(cfg: PersoDPOConfig) -> PersoDPOConfig:
    """One word limit for a run: score and pairs take generate's unless set; a set value that
    differs is an error naming both keys (the pairs' prompt would differ from what was asked)."""
    limit = cfg.generate.word_limit
    for dotted in WORD_LIMIT_KEYS:
        section, _, field = dotted.partition(".")
        value = getattr(getattr(cfg, section), field)
        if _explicit(cfg, dotted) and value != limit:
            raise ConfigError(f"{value} differs from generate.word_limit={limit}: the replies were asked for "
                              f"{limit} words; leave {dotted} unset (it follows generate.word_limit) or set both "
                              "to the same value", key=dotted)
        if value != limit:
            setattr(getattr(cfg, section), field, limit)
    return cfg


def generated_word_limit(candidates_uri: str, storage) -> int | None:
    """The word limit a candidates table's replies were asked for (its generate manifest)."""
    from persodpo import storage as st

    try:
        manifest = st.read_manifest(candidates_uri, storage)
    except Exception:  # noqa: BLE001 - not a generate output (e.g. the authors' import): unknown
        return None
    value = manifest.get("word_limit", (manifest.get("config") or {}).get("word_limit"))
    return int(value) if value is not None else None


def follow_candidates_word_limit(cfg: PersoDPOConfig, section: str, candidates_uri: str | None) -> PersoDPOConfig:
    """A standalone score/pairs stage: an unset word limit follows the candidates' generate
    manifest; a set one that differs from it is an error naming the key and the manifest."""
    if not candidates_uri:
        return cfg
    limit = generated_word_limit(candidates_uri, cfg.storage)
    if limit is None:
        return cfg
    sec = getattr(cfg, section)
    if "word_limit" in sec.model_fields_set and sec.word_limit != limit:
        raise ConfigError(f"{sec.word_limit} differs from the word limit the candidates were asked for ({limit}, "
                          f"generate manifest of {candidates_uri}); leave it unset to follow the candidates",
                          key=f"{section}.word_limit")
    if sec.word_limit != limit:
        cfg = cfg.model_copy(deep=True)
        getattr(cfg, section).word_limit = limit
    return cfg


def check_config(cfg: PersoDPOConfig) -> list[Check]:
    """Every whole-config check, passed or not (``persodpo check`` prints them all)."""
    from persodpo.pairs.recipes import get_recipe

    checks: list[Check] = []
    stages = set(cfg.run.stages)
    authors = cfg.ingest.source == "persodpo-authors"
    try:
        produced = score_columns(cfg)
        checks.append(Check("score columns", True, f"metrics and judges write {len(produced)} columns: "
                                                   + ", ".join(produced)))
    except ValueError as exc:
        return [Check("score columns", False, str(exc), "score.metrics")]
    available = set(produced) | (set(AUTHORS_SCORE_COLUMNS) if authors and "score" not in stages else set())

    recipe = get_recipe(cfg.pairs.recipe)
    weights = dict(getattr(recipe.config(cfg.pairs), "weights", {}) or {})
    key = f"pairs.{recipe.section}.weights"
    missing = [m for m in weights if m not in available]
    if "pairs" in stages or "train" in stages:
        if missing:
            dims = cfg.score.panel.dimensions
            hint = ""
            if any(m.startswith("judge_") for m in missing):
                hint = (f" (judge columns need score.judges and a dimension in score.panel.dimensions={dims})"
                        if cfg.score.judges else " (no score.judges are configured)")
            checks.append(Check("recipe weights", False,
                                f"{', '.join(missing)} weighted by recipe {recipe.name!r} but written by no configured "
                                f"metric or judge{hint}; available: {sorted(available)}", key))
        else:
            checks.append(Check("recipe weights", True, f"{recipe.name}: {sorted(weights)} are all written"))
    for dotted in WORD_LIMIT_KEYS:
        section, _, field = dotted.partition(".")
        value = getattr(getattr(cfg, section), field)
        if _explicit(cfg, dotted) and value != cfg.generate.word_limit:
            checks.append(Check("word limit", False, f"{value} differs from generate.word_limit="
                                                     f"{cfg.generate.word_limit}", dotted))
    if not any(c.name == "word limit" for c in checks):
        checks.append(Check("word limit", True, f"one word limit: {cfg.generate.word_limit}"))
    if "evaluate" in stages:
        key = "evaluate.metrics" if cfg.evaluate.metrics is not None else "score.metrics"
        try:
            cols = evaluate_columns(cfg)
        except (ValueError, KeyError) as exc:
            checks.append(Check("evaluate columns", False, str(exc),
                                "evaluate.judges" if "judge" in str(exc) else key))
        else:
            if cols:
                checks.append(Check("evaluate columns", True, f"evaluation writes {len(cols)} columns: "
                                                              + ", ".join(cols)))
            else:
                checks.append(Check("evaluate columns", False, "evaluation would score the models with no metric "
                                                               "and no judge: its report would be empty", key))
    checks += rounds_checks(cfg)
    if "evaluate" in stages and cfg.evaluate.split is not None and cfg.generate.split == cfg.evaluate.split:
        checks.append(Check("held-out split", False, f"generate answers split {cfg.generate.split!r}, which "
                                                     "evaluate uses as held-out", "evaluate.split"))
    return checks


def rounds_checks(cfg: PersoDPOConfig) -> list[Check]:
    """Iterative DPO (run.rounds > 1): what the rounds need of the rest of the config."""
    if cfg.run.rounds == 1:
        return []
    r, n = cfg.rounds, cfg.run.rounds
    missing = [s for s in ("generate", "score", "pairs", "train") if s not in cfg.run.stages]
    if missing:
        return [Check("rounds", False, f"run.rounds={n} needs the stages {missing} in run.stages", "run.stages")]
    if r.prompts == "fresh" and r.prompts_per_round is None:
        return [Check("rounds", False, "rounds.prompts=fresh needs rounds.prompts_per_round (the slice of each round)",
                      "rounds.prompts_per_round")]
    if r.on_policy and cfg.pairs.recipe != "persodpo":
        return [Check("rounds", False, f"rounds.on_policy builds pairs with the persodpo recipe, not "
                                       f"{cfg.pairs.recipe!r} (or set rounds.on_policy=false)", "pairs.recipe")]
    names = [g.name for g in cfg.generate.generators]
    if r.keep_generators and r.policy_name in names:
        return [Check("rounds", False, f"rounds.policy_name={r.policy_name!r} is also a configured generator",
                      "rounds.policy_name")]
    if cfg.pairs.persodpo.off_policy_share and not r.keep_generators:
        return [Check("rounds", False, "pairs.persodpo.off_policy_share > 0 needs off-policy candidates in rounds 2+: "
                                       "set rounds.keep_generators=true", "rounds.keep_generators")]
    if cfg.train.lora.enabled and r.reference == "original":
        return [Check("rounds", False, "rounds.reference=original needs full fine-tuning (LoRA's reference is the "
                                       "round's start model with the adapter disabled)", "rounds.reference")]
    slice_ = (f"fresh slices of {r.prompts_per_round} prompts" if r.prompts == "fresh"
              else "the same prompts" + (f" (first {r.prompts_per_round})" if r.prompts_per_round else ""))
    return [Check("rounds", True, f"{n} rounds, {slice_}; policy {r.policy_name!r} x {r.policy_samples} samples "
                                  f"({r.policy_engine}); reference: {r.reference}")]


def raise_on_problems(cfg: PersoDPOConfig) -> None:
    """Raise the first failed check as a ConfigError naming its key (``persodpo run``)."""
    for c in check_config(cfg):
        if not c.ok:
            raise ConfigError(f"{c.name}: {c.detail}", key=c.key)
