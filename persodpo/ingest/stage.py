"""The ingest stage: a source file/folder -> the prompts table (and, for the authors' data,
their candidates and scores too)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc

from persodpo import storage as st
from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError
from persodpo.manifest import stage_manifest

log = logging.getLogger(__name__)


def bundled_sample() -> str:
    """Path of the bundled FoCus-format sample (12 dialogs written for persodpo, 40 machine turns)."""
    return str(resources.files("persodpo") / "data" / "focus_sample.json")


def _write(uri: str, table, cfg: PersoDPOConfig, **fields) -> dict:
    out = st.StageOutput(uri, cfg.storage).begin()
    step = cfg.ingest.rows_per_part
    for start in range(0, max(table.num_rows, 1), step):
        out.write_table(table.slice(start, step))
    return out.commit(stage_manifest(cfg, "ingest", rows=table.num_rows, **fields))


def run_stage(cfg: PersoDPOConfig) -> dict:
    c = cfg.ingest
    if not c.output:
        raise ConfigError("no output URI (use --output or ingest.output)", key="ingest.output")
    t0 = time.time()
    if c.source == "persodpo-authors":
        from persodpo.ingest.authors import read_authors, status_counts

        if not c.input:
            raise ConfigError("--source persodpo-authors needs --input DIR (the authors' data folder)",
                              key="ingest.input")
        tables = read_authors(c.input, cfg.storage)
        counts = status_counts(tables["candidates"])
        eval_counts = status_counts(tables["eval_candidates"])
        for name, table in tables.items():
            _write(st.join(c.output, name), table, cfg, table_name=name, source=c.source, input=c.input,
                   parse_status=counts if name == "candidates" else eval_counts if name == "eval_candidates" else None)
        prompts = tables["prompts"]
        split = prompts.column("split").to_pylist()
        return {"stage": "ingest", "source": c.source, "output": c.output,
                "n_prompts": prompts.num_rows, "n_train_prompts": split.count("train"),
                "n_valid_prompts": split.count("valid"), "n_candidates": tables["candidates"].num_rows,
                "n_eval_candidates": tables["eval_candidates"].num_rows,
                "parse_status": {k: sum(v[k] for v in counts.values()) for k in ("valid", "fallback", "unusable")},
                "parse_status_by_generator": counts, "wall_time_s": round(time.time() - t0, 2)}
    if c.source in ("blended_skill_talk", "personachat", "hf") and not (c.input or (c.source == "hf" and c.hf.path)):
        if c.source == "hf":
            raise ConfigError("--source hf needs ingest.hf.path (or --input)", key="ingest.hf.path")
        what = "FILE_OR_DIR" if c.source == "blended_skill_talk" else "FILE"
        raise ConfigError(f"--source {c.source} needs --input {what}", key="ingest.input")
    src = c.input or bundled_sample()
    if c.source == "hf":
        from persodpo.ingest.hf import read_hf

        hf = c.hf if c.hf.path else c.hf.model_copy(update={"path": c.input})
        src = hf.path if not hf.data_files else f"{hf.path} {hf.data_files}"
        table, n_dialogs = read_hf(hf, max_dialogs=c.max_dialogs)
    elif c.source == "blended_skill_talk":
        from persodpo.ingest.bst import read_bst

        table, n_dialogs = read_bst(src, cfg.storage, split=c.split, max_dialogs=c.max_dialogs)
    elif c.source == "personachat":
        from persodpo.ingest.personachat import read_personachat

        table, n_dialogs = read_personachat(src, cfg.storage, max_dialogs=c.max_dialogs)
    elif c.source == "focus":
        from persodpo.ingest.focus import read_focus

        table, n_dialogs = read_focus(src, cfg.storage, split=c.split, knowledge=c.knowledge,
                                      max_dialogs=c.max_dialogs)
    else:
        from persodpo.ingest.persobench import read_persobench

        table, n_dialogs = read_persobench(src, cfg.storage, split=c.split, max_dialogs=c.max_dialogs)
    if c.holdout_fraction:
        table = hold_out(table, c.holdout_fraction, c.holdout_split)
    splits = dict(sorted(Counter(table.column("split").to_pylist()).items()))
    _write(c.output, table, cfg, source=c.source, input=src, n_dialogs=n_dialogs, splits=splits)
    log.info("ingest: %d dialogs -> %d prompts %s -> %s", n_dialogs, table.num_rows, splits, c.output)
    return {"stage": "ingest", "source": c.source, "input": src, "output": c.output, "n_dialogs": n_dialogs,
            "n_prompts": table.num_rows, "splits": splits, "wall_time_s": round(time.time() - t0, 2)}


def hold_out(table: pa.Table, fraction: float, split: str) -> pa.Table:
    """Relabel whole dialogs as ``split``: round(fraction x dialogs), at least 1, never all, the
    dialogs with the smallest hash of their id (stable across reruns and input order)."""
    dialogs = sorted(set(table.column("dialog_id").to_pylist()))
    k = min(max(1, round(fraction * len(dialogs))), len(dialogs) - 1)
    if k <= 0:
        raise ConfigError(f"a holdout needs at least 2 dialogs, the input has {len(dialogs)}",
                          key="ingest.holdout_fraction")
    chosen = set(sorted(dialogs, key=lambda d: hashlib.sha256(d.encode()).hexdigest())[:k])
    mask = pa.array([d in chosen for d in table.column("dialog_id").to_pylist()])
    labels = pc.if_else(mask, pa.scalar(split), table.column("split"))
    return table.set_column(table.schema.get_field_index("split"), "split", labels.cast(table.schema.field("split").type))
