"""Errors that reach the user. Each names the place that caused it: file, record, field."""

from __future__ import annotations


class PersoDPOError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""

    exit_code = 2


class InputError(PersoDPOError):
    """Bad input data. Names the file (or URI), the record (dialog id / row) and the field."""

    def __init__(self, message: str, *, file: str | None = None, record: str | int | None = None,
                 field: str | None = None):
        self.file, self.record, self.field, self.reason = file, record, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join(where + [message]) if where else message)


class ConfigError(PersoDPOError):
    """Bad configuration. Names the key (dotted path) and the config file when known."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None):
        self.key, self.file = key, file
        where = [p for p in (file, f"key '{key}'" if key else None) if p]
        super().__init__(": ".join(where + [message]) if where else message)


class StorageError(PersoDPOError):
    """Object storage could not be read or written (names the URI, never the credentials)."""


class StageError(PersoDPOError):
    """A stage could not complete (e.g. every generator failed, budget exhausted before start)."""
