"""Helpers shared by the ingest readers: reading text that must be UTF-8, building prompt rows."""

from __future__ import annotations

import pyarrow as pa

from persodpo import contracts
from persodpo import storage as st
from persodpo.errors import InputError, StorageError


def read_text(uri: str, storage=None) -> str:
    """The file's text; InputError naming the file for a missing, empty or non-UTF-8 file."""
    try:
        data = st.read_bytes(uri, storage)
    except StorageError as exc:
        raise InputError(str(exc).split(": ", 1)[-1], file=uri) from None
    if not data.strip():
        raise InputError("file is empty", file=uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})",
                         file=uri) from None


def prompts_table(rows: list[dict]) -> pa.Table:
    if not rows:
        return contracts.PROMPTS.empty_table()
    cols = {f.name: [r.get(f.name) for r in rows] for f in contracts.PROMPTS}
    return pa.table(cols, schema=contracts.PROMPTS)


def history_from_utterances(utterances: list[str]) -> list[dict]:
    """Alternating user/assistant messages, starting with the user (FoCus: human speaks first)."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": u} for i, u in enumerate(utterances)]
