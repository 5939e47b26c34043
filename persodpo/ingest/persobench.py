"""The authors' PersoBench CSV (``personas, context, act_response``) -> prompts.

``personas`` is the five persona sentences concatenated with no separator ("I like X.I live in
Y."); ``context`` is lines ``User1: ...`` / ``User2: ...`` ending with the human turn to answer;
``act_response`` is the gold machine reply, prefixed ``User2: ``.
"""

from __future__ import annotations

import csv
import io
import re

import pyarrow as pa

from persodpo import contracts
from persodpo.errors import InputError
from persodpo.ingest.common import prompts_table, read_text

COLUMNS = ("personas", "context", "act_response")
_FIELD_LIMIT = 16 << 20
_SENTENCE_END = re.compile(r"(?<=[.!?])\s*(?=[A-Z0-9\"'])")
_SPEAKER = re.compile(r"^\s*User\s*([12])\s*:\s?(.*)$")


def split_persona(text: str) -> list[str]:
    """Split a concatenated persona into sentences ("I like X.I live in Y." -> two sentences)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p]


def parse_context(text: str) -> list[dict]:
    """``User1:``/``User2:`` lines -> messages (User1 = user, User2 = assistant).

    A line without a speaker continues the previous message. Raises ValueError with the line.
    """
    messages: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _SPEAKER.match(line)
        if m:
            role = "user" if m.group(1) == "1" else "assistant"
            messages.append({"role": role, "content": m.group(2).strip()})
        elif messages:
            messages[-1]["content"] = (messages[-1]["content"] + "\n" + line.strip()).strip()
        else:
            raise ValueError(f"line {lineno} does not start with 'User1:' or 'User2:': {line[:60]!r}")
    for k, msg in enumerate(messages):
        if not msg["content"]:
            raise ValueError(f"message {k + 1} is empty")
    if not messages:
        raise ValueError("no 'User1:'/'User2:' lines")
    if messages[-1]["role"] != "user":
        raise ValueError("the context must end with the human turn (User1) to be answered")
    return messages


def read_rows(text: str, *, file: str, columns: tuple[str, ...] = COLUMNS) -> list[dict]:
    """CSV text -> list of row dicts, checking the header holds ``columns``."""
    # The csv module refuses fields over 128 KiB by default: a long dialogue context is data, not
    # an error (an unterminated quote still fails, at 16 MiB, instead of swallowing the file).
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"missing column(s) {missing} (found {header})", file=file, field=missing[0])
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", file=file, record=f"line {reader.line_num}") from None
    if not rows:
        raise InputError("no data rows", file=file)
    return rows


def rows_to_prompts(rows: list[dict], *, file: str, source: str, split: str, id_prefix: str,
                    max_rows: int | None = None) -> pa.Table:
    out = []
    for i, row in enumerate(rows[:max_rows] if max_rows else rows):
        rec = f"row {i + 1}"
        for c in COLUMNS:
            if row.get(c) is None or not str(row[c]).strip():
                raise InputError("empty value", file=file, record=rec, field=c)
        persona = split_persona(row["personas"])
        try:
            history = parse_context(row["context"])
        except ValueError as exc:
            raise InputError(str(exc), file=file, record=rec, field="context") from None
        gold = re.sub(r"^\s*User\s*2\s*:\s*", "", row["act_response"]).strip()
        if not gold:
            raise InputError("empty gold reply after the 'User2:' prefix", file=file, record=rec, field="act_response")
        dialog_id = f"{id_prefix}-{i:05d}"
        turn = sum(1 for m in history if m["role"] == "assistant") + 1
        out.append({
            "prompt_id": contracts.prompt_id(source, dialog_id, turn), "source": source,
            "dialog_id": dialog_id, "turn": turn, "split": split, "persona": persona, "knowledge": [],
            "history": history, "gold": gold, "persona_grounding": None, "landmark": None,
        })
    return prompts_table(out)


def read_persobench(uri: str, storage=None, *, split: str = "train", source: str = "persobench",
                    max_dialogs: int | None = None) -> tuple[pa.Table, int]:
    text = read_text(uri, storage)
    stem = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    table = rows_to_prompts(read_rows(text, file=uri), file=uri, source=source, split=split, id_prefix=stem,
                            max_rows=max_dialogs)
    return table, table.num_rows
