"""The judge cache: judgments already paid for, on the storage layer (local or s3://).

Keyed by a hash of (judge model and request parameters, rubric text, dimension, candidate id,
the exact judge messages), so a rerun, or another run over the same candidates, sends no request
for a judgment it already has, and a changed rubric, reply or persona is judged again.

Layout: ``<cache>/<judge namespace>/<uuid>.parquet``. Only the driver touches it (it holds the
storage credentials): it loads a judge's namespace and hands it to the judge actors through the
object store, and stores the new answers the actors return with their rows, as new parts every
thousand answers and when the stage ends or fails (whole files only: a temporary name then a
move locally, single PUTs on S3, so concurrent runs never clobber each other). The stage then
compacts a namespace into one part. Only answers are cached (valid scores and malformed
judgments, which are as final at temperature 0); failed requests and budget refusals are not,
so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from persodpo import storage as st

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("score", pa.float64()),
    ("error", pa.string()),        # why score is null (malformed / out of range), else null
    ("status", pa.string()),       # ok | malformed | out_of_range
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("created_at", pa.float64()),
])


def _h(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def judge_namespace(name: str, model: str, params: dict) -> str:
    """A judge's folder: the model and everything in the request that changes its answer."""
    return f"{name}-{_h(model, params)[:16]}"


def judgment_key(namespace: str, dimension: str, rubric_hash: str, candidate_id: str, messages: list[dict]) -> str:
    return _h(namespace, dimension, rubric_hash, candidate_id, messages)[:32]


class JudgeCache:
    def __init__(self, uri: str, storage=None):
        self.uri, self.storage = uri, storage
        self.fs, self.root = st.resolve(uri, storage)
        self.local = not st.is_s3(uri) and "://" not in uri

    def _dir(self, namespace: str) -> str:
        return os.path.join(self.root, namespace) if self.local else posixpath.join(self.root, namespace)

    def _files(self, namespace: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self._dir(namespace), allow_not_found=True))
        except OSError as exc:
            raise st.explain_error(self.uri, exc) from None
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

    def load(self, namespace: str) -> dict[str, dict]:
        """{key: entry} for a judge (the latest entry of a key wins)."""
        rows: list[dict] = []
        for path in self._files(namespace):
            try:
                table = pq.read_table(path, filesystem=self.fs)
            except (OSError, pa.ArrowInvalid) as exc:
                # A foreign or damaged file must not stop scoring: those judgments are asked again.
                log.warning("judge cache: skipping unreadable %s (%s)", path, exc)
                continue
            rows += table.to_pylist()
        rows.sort(key=lambda r: r.get("created_at") or 0.0)
        return {r["key"]: r for r in rows}

    def append(self, namespace: str, entries: list[dict]) -> str | None:
        if not entries:
            return None
        now = time.time()
        rows = [{**{f.name: e.get(f.name) for f in SCHEMA}, "created_at": e.get("created_at") or now} for e in entries]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        d = self._dir(namespace)
        name = f"{uuid.uuid4().hex}.parquet"
        path = os.path.join(d, name) if self.local else posixpath.join(d, name)
        try:
            if self.local:
                self.fs.create_dir(d, recursive=True)
                tmp = path + ".tmp"
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.move(tmp, path)
            else:
                pq.write_table(table, path, filesystem=self.fs)
        except OSError as exc:
            raise st.explain_error(self.uri, exc) from None
        return path

    def compact(self, namespace: str) -> int:
        """Merge a namespace's parts into one (later entries win); returns the number of entries."""
        files = self._files(namespace)
        if len(files) <= 1:
            return len(self.load(namespace)) if files else 0
        entries = self.load(namespace)
        self.append(namespace, list(entries.values()))
        for f in files:
            try:
                self.fs.delete_file(f)
            except OSError as exc:  # the merged part holds them too: a leftover only costs a read
                log.warning("judge cache: could not delete %s after compaction (%s)", f, exc)
        return len(entries)
