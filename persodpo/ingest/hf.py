"""Any dataset `datasets.load_dataset` reads (a hub id, or local Parquet/JSON/CSV) -> prompts,
through a column mapping (``ingest.hf.columns``) onto the prompts contract.

One row is one prompt. ``persona``: a list of sentences or one string (one sentence per line);
``history``: a list of strings (alternating turns, the last one the human's), of
{role, content} messages, or one string (a turn per line, for CSV); ``gold`` and ``knowledge``
optional. Without a dialog-id column every row is its own dialog (``SPLIT-ROW``); without a turn
column the turn is 1 + the assistant turns in the history.
Bad rows raise InputError naming the data files, the split and row, and the column.
"""

from __future__ import annotations

import pyarrow as pa

from persodpo import contracts
from persodpo.errors import ConfigError, InputError
from persodpo.ingest import checks
from persodpo.ingest.common import prompts_table


def _label(hf, split: str) -> str:
    files = hf.data_files
    if isinstance(files, dict):
        files = files.get(split, files)
    if files is None:
        return hf.path
    shown = files if isinstance(files, str) else ", ".join(files) if isinstance(files, list) else str(files)
    return shown if hf.path in ("parquet", "json", "csv", "arrow", "text") else f"{hf.path} ({shown})"


def load_split(hf, split: str):
    """``datasets.load_dataset`` for one split; its failures as InputError naming the files."""
    import datasets

    label = _label(hf, split)
    try:
        ds = datasets.load_dataset(hf.path, hf.name, data_files=hf.data_files, split=split, cache_dir=hf.cache_dir)
    except FileNotFoundError as exc:
        raise InputError(f"not found ({str(exc).splitlines()[0][:300]})", file=label) from None
    except ValueError as exc:
        # unknown split, or data files that do not parse as the builder's format
        raise InputError(f"cannot load split {split!r}: {str(exc).splitlines()[0][:300]}", file=label) from None
    except Exception as exc:  # noqa: BLE001 - builder-specific errors (ArrowInvalid, DatasetGenerationError, ...)
        cause = exc.__cause__ or exc
        first = str(cause).splitlines()[0][:300] if str(cause) else ""
        raise InputError(f"cannot load split {split!r}: {type(cause).__name__}: {first}", file=label) from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError("load_dataset returned several splits; name one", key="ingest.hf.split")
    return ds, label


def _persona(value, *, file, record, field) -> list[str]:
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()] or [value]
    return checks.str_list(value, file=file, record=record, field=field)


def _history(value, *, file, record, field) -> list[dict]:
    if isinstance(value, str):
        # CSV has no lists: one turn per line
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError("expected a non-empty list of turns (strings or {role, content} messages)",
                         file=file, record=record, field=field)
    if all(isinstance(v, dict) for v in value):
        return checks.messages(value, file=file, record=record, field=field)
    return checks.alternating(checks.str_list(value, file=file, record=record, field=field))


def _knowledge(value, *, file, record, field) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return checks.str_list(value, file=file, record=record, field=field, allow_empty=True)


def rows_to_prompts(rows: list[dict], *, file: str, split: str, label: str, columns, source: str,
                    seen: set, max_dialogs: int | None = None) -> tuple[list[dict], set]:
    """Prompt rows for one split's dataset rows. ``seen`` carries (dialog id, turn) across splits."""
    out, dialogs = [], set()
    for i, row in enumerate(rows):
        rec = f"{split} row {i}"
        did = row.get(columns.dialog_id) if columns.dialog_id else f"{split}-{i:06d}"
        if columns.dialog_id:
            if isinstance(did, int) and not isinstance(did, bool):
                did = str(did)
            did = checks.text(did, file=file, record=rec, field=columns.dialog_id)
        if did not in dialogs and max_dialogs and len(dialogs) >= max_dialogs:
            continue
        dialogs.add(did)
        persona = _persona(row.get(columns.persona), file=file, record=rec, field=columns.persona)
        history = _history(row.get(columns.history), file=file, record=rec, field=columns.history)
        gold = None
        if columns.gold:
            gold = checks.text(row.get(columns.gold), file=file, record=rec, field=columns.gold)
        knowledge = _knowledge(row.get(columns.knowledge), file=file, record=rec,
                               field=columns.knowledge) if columns.knowledge else []
        if columns.turn:
            turn = row.get(columns.turn)
            if not isinstance(turn, int) or isinstance(turn, bool) or turn < 1:
                raise InputError(f"expected a positive integer, got {turn!r}", file=file, record=rec,
                                 field=columns.turn)
        else:
            turn = 1 + sum(m["role"] == "assistant" for m in history)
        if (did, turn) in seen:
            raise InputError(f"dialog {did!r} turn {turn} appears twice", file=file, record=rec,
                             field=columns.turn or columns.dialog_id or columns.history)
        seen.add((did, turn))
        out.append({"prompt_id": contracts.prompt_id(source, did, turn), "source": source, "dialog_id": did,
                    "turn": turn, "split": label, "persona": persona, "knowledge": knowledge, "history": history,
                    "gold": gold, "persona_grounding": None, "landmark": None})
    return out, dialogs


def read_hf(hf, *, max_dialogs: int | None = None) -> tuple[pa.Table, int]:
    if not hf.path:
        raise ConfigError("--source hf needs ingest.hf.path (a hub id, a folder, or parquet/json/csv with "
                          "ingest.hf.data_files)", key="ingest.hf.path")
    splits = [hf.split] if isinstance(hf.split, str) else list(hf.split)
    if not splits:
        raise ConfigError("no split to load", key="ingest.hf.split")
    rows, seen, n_dialogs = [], set(), 0
    for split in splits:
        ds, file = load_split(hf, split)
        wanted = {k: v for k, v in hf.columns.model_dump().items() if v}
        missing = sorted({v for v in wanted.values() if v not in ds.column_names})
        if missing:
            keys = [f"ingest.hf.columns.{k}" for k, v in wanted.items() if v in missing]
            raise InputError(f"no column(s) {missing} in split {split!r} (found {ds.column_names}; map them with "
                             f"{', '.join(keys)})", file=file, field=missing[0])
        left = max_dialogs - n_dialogs if max_dialogs else None
        if left is not None and left <= 0:
            break
        out, dialogs = rows_to_prompts(ds.select_columns(sorted(set(wanted.values()))).to_list(), file=file,
                                       split=split, label=hf.split_labels.get(split, split), columns=hf.columns,
                                       source=hf.source_name, seen=seen, max_dialogs=left)
        rows += out
        n_dialogs += len(dialogs)
    if not rows:
        raise InputError("no rows", file=_label(hf, splits[0]))
    return prompts_table(rows), n_dialogs
