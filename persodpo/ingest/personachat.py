"""PersonaChat (the truecased JSON release, same layout as ``personachat_self_original.json``)
-> prompts: one per entry of each dialog's ``utterances``.

The file is ``{"train": [dialog, ...], "valid": [dialog, ...]}``; a dialog is ``personality``
(the bot's persona sentences) and ``utterances``: entry k holds ``history`` (every turn so far,
the other speaker first and last, so an odd count) and ``candidates`` (distractors, the gold
reply LAST). The split is the top-level key; dialog ids are ``SPLIT-INDEX``.
"""

from __future__ import annotations


import pyarrow as pa

from persodpo import contracts
from persodpo.errors import InputError
from persodpo.ingest.checks import load_json
from persodpo.ingest import checks
from persodpo.ingest.common import prompts_table, read_text

SOURCE = "personachat"


def parse_personachat(text: str, *, file: str, max_dialogs: int | None = None) -> tuple[pa.Table, int]:
    doc = load_json(text, file=file, what="PersonaChat")
    if not isinstance(doc, dict) or not doc:
        raise InputError('expected {"train": [dialog, ...], "valid": [...]} (splits as top-level keys)', file=file)
    rows, n_dialogs = [], 0
    for split, dialogs in doc.items():
        if not isinstance(dialogs, list):
            raise InputError(f"expected a list of dialogs, got {type(dialogs).__name__}", file=file, field=split)
        for n, dialog in enumerate(dialogs):
            if max_dialogs and n_dialogs >= max_dialogs:
                break
            did = f"{split}-{n:05d}"
            rec = f"{split}[{n}]"
            if not isinstance(dialog, dict):
                raise InputError(f"expected a dialog object, got {type(dialog).__name__}", file=file, record=rec)
            persona = checks.str_list(dialog.get("personality"), file=file, record=rec, field="personality")
            entries = dialog.get("utterances")
            if not isinstance(entries, list) or not entries:
                raise InputError("missing or empty list of utterances", file=file, record=rec, field="utterances")
            for k, entry in enumerate(entries):
                where = f"utterances[{k}]"
                if not isinstance(entry, dict):
                    raise InputError("expected an object with history and candidates", file=file, record=rec,
                                     field=where)
                history = checks.str_list(entry.get("history"), file=file, record=rec, field=f"{where}.history")
                if len(history) % 2 == 0:
                    raise InputError(f"{len(history)} turns: the history must end with the other speaker's turn "
                                     "(an odd count, the other speaker opens)", file=file, record=rec,
                                     field=f"{where}.history")
                cands = checks.str_list(entry.get("candidates"), file=file, record=rec, field=f"{where}.candidates")
                rows.append({"prompt_id": contracts.prompt_id(SOURCE, did, k + 1), "source": SOURCE, "dialog_id": did,
                             "turn": k + 1, "split": split, "persona": persona, "knowledge": [],
                             "history": checks.alternating(history), "gold": cands[-1], "persona_grounding": None,
                             "landmark": None})
            n_dialogs += 1
    if not rows:
        raise InputError("no dialogs", file=file)
    return prompts_table(rows), n_dialogs


def read_personachat(uri: str, storage=None, **kwargs) -> tuple[pa.Table, int]:
    return parse_personachat(read_text(uri, storage), file=uri, **kwargs)
