"""The per-round report of iterative DPO: does each round help, or only make replies longer?

One row per model on the same held-out prompts: the base (round 0, from round 1's evaluation)
and each round's trained model; columns: every metric's mean (with its 95% half-width), the error
and format-failure ratios and the mean words. Written as ``ROOT/runs/RUN_ID/rounds/``:
``rounds.parquet``, ``report.md`` and ``rounds.png`` (one panel per metric, plus failures and
length), with ``_SUCCESS`` last like every stage output.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from persodpo import storage as st
from persodpo.errors import StageError

ROUND_COLUMNS = ("round", "model", "n", "error_ratio", "format_failure_ratio", "mean_words")


def rounds_table(evaluations: list[tuple[int, pd.DataFrame]], *, base_name: str, trained_name: str) -> pd.DataFrame:
    """``evaluations``: (round, that round's evaluate ``model_table``). Round 0 is the base model of
    round 1's table; round k the trained model of round k's."""
    rows = []
    for k, table in evaluations:
        for name, label in (((base_name, 0),) if k == 1 else ()) + ((trained_name, k),):
            hit = table[table["model"] == name]
            if hit.empty:
                continue
            row = hit.iloc[0].to_dict()
            row.update({"round": label, "model": "base" if label == 0 else f"round-{label}"})
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(ROUND_COLUMNS))
    df = pd.DataFrame(rows).sort_values("round", kind="mergesort").reset_index(drop=True)
    return df[[*ROUND_COLUMNS, *[c for c in df.columns if c not in ROUND_COLUMNS and c not in ("unusable_ratio",)]]]


def metric_names(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ROUND_COLUMNS and not c.endswith(("_ci95", "_n"))
            and c != "unusable_ratio"]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def markdown(table: pd.DataFrame, *, n_rounds: int, details: list[dict]) -> str:
    metrics = metric_names(table)
    header = ["round", "model", "n", *metrics, "error_ratio", "format_failure_ratio", "mean_words"]
    lines = ["# Iterative DPO: every round on the same held-out prompts", "",
             f"{n_rounds} round(s). Round 0 is the base model; round k the model trained in round k, from round "
             "k-1's weights, on pairs of round k-1's model's own replies (round 1: the configured generators). "
             "A metric that rises while mean words rise too may be length, not quality: read the two together.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(int(r["round"])), r["model"], str(int(r["n"]))]
        for m in metrics:
            ci = r.get(f"{m}_ci95")
            cells.append(_fmt(r[m]) + ("" if ci is None or pd.isna(ci) else f" ± {ci:.4f}"))
        cells += [_fmt(r["error_ratio"]), _fmt(r["format_failure_ratio"]), _fmt(r["mean_words"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![metrics per round](rounds.png)", "", "## Rounds", ""]
    for d in details:
        lines.append(f"- round {d['round']}: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "round"))
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*metric_names(table), "format_failure_ratio", "mean_words"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        ci = table.get(f"{name}_ci95")
        ax.errorbar(table["round"], table[name], yerr=None if ci is None else ci.fillna(0), marker="o", capsize=3)
        ax.set_title(name)
        ax.set_xlabel("round (0: base)")
        ax.set_xticks(list(table["round"]))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_report(uri: str, evaluations: list[tuple[int, str]], *, base_name: str, trained_name: str,
                 details: list[dict], storage=None) -> dict:
    """Read each round's ``model_table.parquet`` (round, evaluate output URI), write the report to
    ``uri``; returns the table as records."""
    import pyarrow.parquet as pq

    tables = []
    for k, e in evaluations:
        if not st.is_complete(e, storage):
            raise StageError(f"round {k}'s evaluation at {e} is not complete: rerun to finish it")
        fs, path = st.resolve(st.join(e, "model_table.parquet"), storage)
        tables.append((k, pq.read_table(path, filesystem=fs).to_pandas()))
    table = rounds_table(tables, base_name=base_name, trained_name=trained_name)
    out = st.StageOutput(uri, storage).begin()
    import pyarrow as pa

    out.write_table(pa.Table.from_pandas(table, preserve_index=False), "rounds.parquet")
    out.write_file("report.md", markdown(table, n_rounds=len(evaluations), details=details))
    if len(table):
        out.write_file("rounds.png", plot(table))
    records = json.loads(table.to_json(orient="records"))
    out.commit({"stage": "rounds", "rows": len(table), "rounds": records, "details": details})
    means = [{k: v for k, v in r.items() if not k.endswith(("_ci95", "_n"))} for r in records]
    return {"output": uri, "report": st.join(uri, "report.md"), "table": means}
