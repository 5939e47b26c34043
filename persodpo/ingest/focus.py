"""Official FoCus JSON -> prompts: one row per machine turn.

A FoCus dialog has ``dialogID``, ``persona`` (5 sentences), ``knowledge`` (landmark paragraphs)
and ``utterance``: turn i (1-based) holds ``dialogue{i}``, the cumulative history of 2*i
utterances whose last item is the gold machine reply, plus ``persona_grounding`` and
``knowledge_candidates``/``knowledge_answer_index``. Every malformed place raises InputError
naming file, dialog id and field.
"""

from __future__ import annotations


import pyarrow as pa

from persodpo import contracts
from persodpo.errors import InputError
from persodpo.ingest.checks import load_json
from persodpo.ingest.common import history_from_utterances, prompts_table, read_text

SOURCE = "focus"


def _str_list(value, *, file, record, field, allow_empty_list=False) -> list[str]:
    if not isinstance(value, list):
        raise InputError(f"expected a list of strings, got {type(value).__name__}", file=file, record=record,
                         field=field)
    if not value and not allow_empty_list:
        raise InputError("empty list", file=file, record=record, field=field)
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"expected a string, got {type(item).__name__}", file=file, record=record,
                             field=f"{field}[{j}]")
        if not item.strip():
            raise InputError("empty string", file=file, record=record, field=f"{field}[{j}]")
    return [v.strip() for v in value]


def parse_focus(text: str, *, file: str, split: str = "train", knowledge: str = "grounded",
                max_dialogs: int | None = None) -> tuple[pa.Table, int]:
    """Parse FoCus JSON text into the prompts table. Returns (table, number of dialogs)."""
    doc = load_json(text, file=file, what="FoCus")
    if not isinstance(doc, dict) or "data" not in doc:
        raise InputError("missing top-level 'data' list (expected {\"data\": [dialog, ...]})", file=file,
                         field="data")
    dialogs = doc["data"]
    if not isinstance(dialogs, list):
        raise InputError(f"expected a list of dialogs, got {type(dialogs).__name__}", file=file, field="data")
    if not dialogs:
        raise InputError("no dialogs", file=file, field="data")
    if max_dialogs:
        dialogs = dialogs[:max_dialogs]
    rows: list[dict] = []
    seen: set[str] = set()
    for n, dialog in enumerate(dialogs):
        if not isinstance(dialog, dict):
            raise InputError(f"expected a dialog object, got {type(dialog).__name__}", file=file, record=f"#{n}")
        did = dialog.get("dialogID")
        if not isinstance(did, str) or not did.strip():
            raise InputError("missing or empty dialog id", file=file, record=f"#{n}", field="dialogID")
        if did in seen:
            raise InputError("duplicate dialog id", file=file, record=did, field="dialogID")
        seen.add(did)
        if "persona" not in dialog:
            raise InputError("missing persona", file=file, record=did, field="persona")
        persona = _str_list(dialog["persona"], file=file, record=did, field="persona")
        paragraphs = dialog.get("knowledge", [])
        if paragraphs is None:
            paragraphs = []
        paragraphs = _str_list(paragraphs, file=file, record=did, field="knowledge", allow_empty_list=True)
        turns = dialog.get("utterance")
        if not isinstance(turns, list) or not turns:
            raise InputError("missing or empty list of turns", file=file, record=did, field="utterance")
        landmark = dialog.get("landmark_link")
        for i, turn in enumerate(turns, start=1):
            where = f"utterance[{i - 1}]"
            if not isinstance(turn, dict):
                raise InputError("expected a turn object", file=file, record=did, field=where)
            key = f"dialogue{i}"
            if key not in turn:
                found = sorted(k for k in turn if k.startswith("dialogue"))
                raise InputError(f"missing '{key}' (found {found or 'no dialogue key'})", file=file, record=did,
                                 field=f"{where}.{key}")
            utts = _str_list(turn[key], file=file, record=did, field=f"{where}.{key}")
            if len(utts) != 2 * i:
                raise InputError(f"expected {2 * i} utterances (cumulative history ending with the machine reply), "
                                 f"got {len(utts)}", file=file, record=did, field=f"{where}.{key}")
            grounding = turn.get("persona_grounding")
            if grounding is not None:
                if not isinstance(grounding, list) or not all(isinstance(g, bool) for g in grounding):
                    raise InputError("expected a list of booleans", file=file, record=did,
                                     field=f"{where}.persona_grounding")
            knowledge_rows: list[str] = []
            if knowledge == "all":
                knowledge_rows = paragraphs
            elif knowledge == "grounded":
                cands = turn.get("knowledge_candidates")
                idx = turn.get("knowledge_answer_index")
                if cands is not None and idx is not None:
                    if not isinstance(cands, list) or not isinstance(idx, int) or isinstance(idx, bool) \
                            or not 0 <= idx < len(cands):
                        raise InputError(f"knowledge_answer_index {idx!r} does not index knowledge_candidates",
                                         file=file, record=did, field=f"{where}.knowledge_answer_index")
                    if not isinstance(cands[idx], str):
                        raise InputError("expected a string", file=file, record=did,
                                         field=f"{where}.knowledge_candidates[{idx}]")
                    if cands[idx].strip():
                        knowledge_rows = [cands[idx].strip()]
            rows.append({
                "prompt_id": contracts.prompt_id(SOURCE, did, i),
                "source": SOURCE, "dialog_id": did, "turn": i, "split": split,
                "persona": persona, "knowledge": knowledge_rows,
                "history": history_from_utterances(utts[:-1]), "gold": utts[-1],
                "persona_grounding": grounding, "landmark": landmark if isinstance(landmark, str) else None,
            })
    return prompts_table(rows), len(dialogs)


def read_focus(uri: str, storage=None, **kwargs) -> tuple[pa.Table, int]:
    return parse_focus(read_text(uri, storage), file=uri, **kwargs)
