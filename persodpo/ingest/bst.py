"""Blended Skill Talk (ParlAI/blended_skill_talk, Parquet) -> prompts: one per guided turn.

A row is one dialog: ``personas`` (the guided worker's persona sentences: the Hub loader built it
from ParlAI's ``personas[1]``), ``previous_utterance`` (two seed turns, free then guided worker),
then ``free_messages[k]`` / ``guided_messages[k]`` alternating, plus ``context``,
``additional_context``, ``suggestions``, ``guided_chosen_suggestions``, ``label_candidates``. The
guided worker is the bot: turn k's gold is ``guided_messages[k]`` and its history is the seed
turns then every free/guided message before it (ending with ``free_messages[k]``, the human's).
``additional_context`` (the Wizard-of-Wikipedia topic, when there is one) becomes the knowledge.

Splits come from the file names (``train``, ``validation`` -> ``valid``, ``test``, as in the Hub's
``data/train-00000-of-00001.parquet`` or ``default/train/0000.parquet``), else ``ingest.split``.
Dialog ids are ``SPLIT-ROW`` (the data has none); row counts run across a split's files in name order.
"""

from __future__ import annotations

import posixpath
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from persodpo import contracts
from persodpo import storage as st
from persodpo.errors import InputError, StorageError
from persodpo.ingest import checks
from persodpo.ingest.common import prompts_table

SOURCE = "blended_skill_talk"
REQUIRED = ("personas", "previous_utterance", "free_messages", "guided_messages")
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
_SPLIT = re.compile(r"^(train|valid|validation|test)(?:[-_.]|$)")


def split_of(path: str, default: str) -> str:
    name = posixpath.basename(path)
    parent = posixpath.basename(posixpath.dirname(path))
    for candidate in (name, parent):
        m = _SPLIT.match(candidate)
        if m:
            return SPLIT_NAMES[m.group(1)]
    return default


def list_files(uri: str, storage=None) -> list[str]:
    """The Parquet file itself, or every ``*.parquet`` under a folder (name order)."""
    fs, path = st.resolve(uri, storage)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError("not found", file=uri)
        if info.type == pafs.FileType.File:
            return [uri]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise InputError(str(st._explain(uri, exc)).split(": ", 1)[-1], file=uri) from None
    prefix = path.rstrip("/") + "/"
    found = sorted(i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not found:
        raise InputError("no .parquet files in the folder", file=uri)
    return [st.join(uri, rel) for rel in found]


def read_parquet(uri: str, storage=None) -> pa.Table:
    fs, path = st.resolve(uri, storage)
    try:
        return pq.read_table(path, filesystem=fs)
    except pa.ArrowInvalid as exc:
        raise InputError(f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})", file=uri) from None
    except OSError as exc:
        raise InputError(str(st._explain(uri, exc)).split(": ", 1)[-1], file=uri) from None


def dialog_prompts(row: dict, *, file: str, record: str, split: str, dialog_id: str) -> list[dict]:
    persona = checks.str_list(row.get("personas"), file=file, record=record, field="personas")
    seed = checks.str_list(row.get("previous_utterance"), file=file, record=record, field="previous_utterance",
                           length=2)
    free = checks.str_list(row.get("free_messages"), file=file, record=record, field="free_messages")
    guided = checks.str_list(row.get("guided_messages"), file=file, record=record, field="guided_messages")
    if len(free) != len(guided):
        raise InputError(f"{len(free)} free_messages but {len(guided)} guided_messages (each free message is "
                         "answered by one guided message)", file=file, record=record, field="guided_messages")
    extra = row.get("additional_context")
    if extra is not None and not isinstance(extra, str):
        raise InputError(f"expected a string, got {type(extra).__name__}", file=file, record=record,
                         field="additional_context")
    knowledge = [extra.strip()] if extra and extra.strip() else []
    turns = list(seed)
    out = []
    for k, (f, g) in enumerate(zip(free, guided), start=1):
        turns.append(f)
        out.append({"prompt_id": contracts.prompt_id(SOURCE, dialog_id, k), "source": SOURCE,
                    "dialog_id": dialog_id, "turn": k, "split": split, "persona": persona, "knowledge": knowledge,
                    "history": checks.alternating(turns), "gold": g, "persona_grounding": None,
                    "landmark": None})
        turns.append(g)
    return out


def read_bst(uri: str, storage=None, *, split: str = "train", max_dialogs: int | None = None) -> tuple[pa.Table, int]:
    try:
        files = list_files(uri, storage)
    except StorageError as exc:
        raise InputError(str(exc).split(": ", 1)[-1], file=uri) from None
    rows, counters, n_dialogs = [], {}, 0
    for file in files:
        table = read_parquet(file, storage)
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise InputError(f"missing column(s) {missing} (found {table.column_names}); is this "
                             "ParlAI/blended_skill_talk?", file=file, field=missing[0])
        name = split_of(file, split)
        for i, row in enumerate(table.to_pylist()):
            if max_dialogs and n_dialogs >= max_dialogs:
                break
            index = counters.get(name, 0)
            counters[name] = index + 1
            rows += dialog_prompts(row, file=file, record=f"row {i}", split=name, dialog_id=f"{name}-{index:05d}")
            n_dialogs += 1
    if not rows:
        raise InputError("no dialogs", file=uri)
    return prompts_table(rows), n_dialogs
