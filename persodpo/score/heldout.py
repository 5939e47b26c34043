"""Judges and metrics for evaluation, held out from the ones that built the training pairs.

A model trained on pairs ranked by judge J and graded by J again is graded by its own reward:
the gain is partly the judge's taste. ``evaluate.judges`` / ``evaluate.metrics`` can name their
own; when evaluation still uses a judge that also scored the training data (same litellm model
at the same endpoint, whatever the names), ``reuse_warning`` says so, for the log and the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from persodpo.score.config import JudgeSpec, MetricSpec


def evaluation_judges(evaluate_judges: "bool | list[JudgeSpec]", score_judges: "list[JudgeSpec]") -> "list[JudgeSpec]":
    """``evaluate.judges``: true = the score section's, false = none, a list = its own."""
    if evaluate_judges is True:
        return list(score_judges)
    if evaluate_judges is False:
        return []
    return list(evaluate_judges)


def evaluation_metrics(evaluate_metrics: "list[MetricSpec] | None",
                       score_metrics: "list[MetricSpec]") -> "list[MetricSpec]":
    return list(score_metrics) if evaluate_metrics is None else list(evaluate_metrics)


def _identity(j: "JudgeSpec") -> tuple[str, str | None]:
    # The model, not the name: renaming a judge does not make it another judge.
    return j.model, (j.api_base or None)


def reused_judges(eval_judges: "list[JudgeSpec]", training_judges: "list[JudgeSpec]") -> list[str]:
    """Names of evaluation judges that are also a judge of the training data."""
    train = {_identity(j) for j in training_judges}
    return [j.name for j in eval_judges if _identity(j) in train]


def reuse_warning(eval_judges: "list[JudgeSpec]", training_judges: "list[JudgeSpec]") -> str | None:
    names = reused_judges(eval_judges, training_judges)
    if not names:
        return None
    models = sorted({j.model for j in eval_judges if j.name in names})
    return (f"evaluation reuses judge(s) {names} ({', '.join(models)}) that scored the training pairs: their "
            "scores of the trained model partly measure its fit to that judge; name held-out judges in "
            "evaluate.judges for an independent grade")
