"""Value checks shared by the row-based readers (BST, PersonaChat, any `datasets` table): each
failure is an InputError naming file, record and field, like the FoCus reader's."""

from __future__ import annotations

from persodpo.errors import InputError

ROLES = ("user", "assistant", "system")


def text(value, *, file, record, field) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {_kind(value)}", file=file, record=record, field=field)
    if not value.strip():
        raise InputError("empty string", file=file, record=record, field=field)
    return value.strip()


def str_list(value, *, file, record, field, allow_empty=False, length: int | None = None) -> list[str]:
    # Arrow/numpy arrays arrive as lists from to_pylist(); tuples are fine too.
    if not isinstance(value, (list, tuple)):
        raise InputError(f"expected a list of strings, got {_kind(value)}", file=file, record=record, field=field)
    if not value and not allow_empty:
        raise InputError("empty list", file=file, record=record, field=field)
    if length is not None and len(value) != length:
        raise InputError(f"expected {length} strings, got {len(value)}", file=file, record=record, field=field)
    return [text(v, file=file, record=record, field=f"{field}[{j}]") for j, v in enumerate(value)]


def messages(value, *, file, record, field) -> list[dict]:
    """{role, content} messages as given; the last one must be the human's (the turn to answer)."""
    out = []
    for j, m in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise InputError("expected a {role, content} message", file=file, record=record, field=where)
        if m["role"] not in ROLES:
            raise InputError(f"role {m['role']!r} is not one of {list(ROLES)}", file=file, record=record,
                             field=f"{where}.role")
        out.append({"role": m["role"], "content": text(m["content"], file=file, record=record,
                                                        field=f"{where}.content")})
    if not out or out[-1]["role"] != "user":
        raise InputError("the history must end with the human's turn (role 'user')", file=file, record=record,
                         field=field)
    return out


def alternating(utterances: list[str]) -> list[dict]:
    """Alternating turns whose LAST one is the human's: roles are counted back from the end, so a
    history that opens with either speaker is labelled right."""
    n = len(utterances)
    return [{"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": u}
            for i, u in enumerate(utterances)]


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def load_json(text: str, *, file: str, what: str):
    """Parse a JSON source file; bad or too deeply nested JSON is an InputError naming the file."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}; truncated file?)",
                         file=file) from None
    except RecursionError:
        raise InputError(f"JSON nested too deeply to be {what} data", file=file) from None
