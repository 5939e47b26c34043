"""The judge cache: judgments already paid for, on the storage layer (local or s3://).

Keyed by a hash of (judge model and request parameters, rubric text, dimension, candidate id,
the exact judge messages), so a rerun, or another run over the same candidates, sends no request
for a judgment it already has, and a changed rubric, reply or persona is judged again.

Layout: ``<cache>/<judge namespace>/<uuid>.parquet``. Only the driver touches it (it holds the
storage credentials): it loads a judge's namespace as one Arrow table (``load_table``) and hands it
to the judge actors through the object store, where each indexes it once (``KnownJudgments``: sorted
fixed-width keys and a float array, no Python object per judgment, so millions of cached judgments
fit beside every actor), and stores the new answers the actors return with their rows, as new parts every
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
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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

# What a judge actor needs of an entry to answer from the cache.
KNOWN_SCHEMA = pa.schema([SCHEMA.field("key"), SCHEMA.field("score"), SCHEMA.field("error")])


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

    def load_table(self, namespace: str) -> pa.Table:
        """``key``, ``score``, ``error`` of a judge's entries, one row per key sorted by key, in Arrow.

        The same entry wins as in ``load`` (the latest ``created_at``, a missing one counting as 0;
        on a tie the later part, then the later row), without a Python object per row."""
        return self._latest(self._files(namespace), KNOWN_SCHEMA)

    def _latest(self, files: list[str], schema: pa.Schema) -> pa.Table:
        wanted = [*schema.names, *([] if "created_at" in schema.names else ["created_at"])]
        parts: list[pa.Table] = []
        for path in files:
            try:
                with self.fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f)
                    names = pf.schema_arrow.names
                    if "key" not in names:
                        raise pa.ArrowInvalid("no key column")
                    t = pf.read(columns=[c for c in wanted if c in names])
            except (OSError, pa.ArrowInvalid) as exc:
                # A foreign or damaged file must not stop scoring: those judgments are asked again.
                log.warning("judge cache: skipping unreadable %s (%s)", path, exc)
                continue
            cols = [t[c].cast(SCHEMA.field(c).type) if c in t.column_names
                    else pa.nulls(t.num_rows, SCHEMA.field(c).type) for c in wanted]
            parts.append(pa.table(cols, names=wanted))
        if not parts:
            return schema.empty_table()
        t = pa.concat_tables(parts)
        t = t.filter(pc.is_valid(t["key"]))
        order = pa.array(np.arange(t.num_rows, dtype=np.int64))
        when = pc.fill_null(t["created_at"], 0.0)
        t = t.take(pc.sort_indices(pa.table({"key": t["key"], "when": when, "order": order}),
                                   sort_keys=[("key", "ascending"), ("when", "descending"), ("order", "descending")]))
        if t.num_rows > 1:
            # After the sort a key's winner is its first row.
            keys = t["key"]
            first = pc.not_equal(keys.slice(1), keys.slice(0, t.num_rows - 1))
            t = t.filter(pa.chunked_array([pa.array([True]), *first.chunks]))
        return t.select(schema.names).cast(schema).combine_chunks()

    def append(self, namespace: str, entries: list[dict]) -> str | None:
        if not entries:
            return None
        now = time.time()
        rows = [{**{f.name: e.get(f.name) for f in SCHEMA}, "created_at": e.get("created_at") or now} for e in entries]
        return self._write(namespace, pa.Table.from_pylist(rows, schema=SCHEMA))

    def _write(self, namespace: str, table: pa.Table) -> str:
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
            return self.load_table(namespace).num_rows if files else 0
        # In Arrow, like load_table: a namespace of millions of entries is merged without a dict each.
        merged = self._latest(files, SCHEMA)
        if merged.num_rows:
            # As append does: an entry without a time is stamped now.
            at = merged.schema.get_field_index("created_at")
            merged = merged.set_column(at, SCHEMA.field("created_at"),
                                       pc.fill_null(merged["created_at"], pa.scalar(time.time())))
            self._write(namespace, merged)
        for f in files:
            try:
                self.fs.delete_file(f)
            except OSError as exc:  # the merged part holds them too: a leftover only costs a read
                log.warning("judge cache: could not delete %s after compaction (%s)", f, exc)
        return merged.num_rows


class KnownJudgments:
    """A judge's cached judgments as an actor looks them up: built once per actor from
    ``JudgeCache.load_table`` (shipped through the object store as Arrow, so it is not copied into
    every actor's heap). Keys are a sorted fixed-width bytes array searched by bisection and scores
    a float64 array (NaN where null); the errors are kept only for the null scores (they are rare),
    because a cached valid score never needs its error."""

    def __init__(self, table: pa.Table):
        table = table.select(KNOWN_SCHEMA.names)
        if table["key"].null_count:  # filter copies even when it keeps every row
            table = table.filter(pc.is_valid(table["key"]))
        self.keys = _fixed_width_keys(_one_chunk(table["key"]))
        scores = _one_chunk(table["score"]).cast(pa.float64())
        self.scores = scores.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        null = scores.is_null().to_numpy(zero_copy_only=False)
        if len(self.keys) > 1 and not bool(np.all(self.keys[1:] > self.keys[:-1])):
            # Only a table that did not come from load_table gets here (unsorted or repeated keys):
            # the last row of a key wins, like a dict built from its rows.
            order = np.argsort(self.keys, kind="stable")
            k = self.keys[order]
            last = np.append(k[1:] != k[:-1], True)
            order = order[last]
            self.keys, self.scores, null = self.keys[order], self.scores[order], null[order]
            table = table.take(pa.array(order))
        self.error_rows = np.flatnonzero(null)
        self.errors = _one_chunk(table["error"]).take(pa.array(self.error_rows))

    @classmethod
    def of(cls, known: Any) -> KnownJudgments:
        """From what a driver ships: a ``load_table`` table, or ``{key: {"score", "error"}}``."""
        if isinstance(known, cls):
            return known
        if isinstance(known, pa.Table):
            return cls(known)
        if isinstance(known, Mapping):
            return cls(pa.table({"key": pa.array(list(known), pa.string()),
                                 "score": pa.array([e.get("score") for e in known.values()], pa.float64()),
                                 "error": pa.array([e.get("error") for e in known.values()], pa.string())}))
        raise TypeError(f"known judgments: expected an Arrow table or a mapping, got {type(known).__name__}")

    def _index(self, key: str) -> int | None:
        b = key.encode("utf-8")
        if len(b) > self.keys.dtype.itemsize or not b or b.endswith(b"\0"):
            return None  # cannot be stored in (or compare equal within) the fixed-width array
        i = int(np.searchsorted(self.keys, b))
        return i if i < len(self.keys) and self.keys[i] == b else None

    def get(self, key: str) -> dict | None:
        i = self._index(key)
        if i is None:
            return None
        s = float(self.scores[i])
        if s == s:
            return {"score": s, "error": None}
        j = int(np.searchsorted(self.error_rows, i))
        if j < len(self.error_rows) and self.error_rows[j] == i:
            return {"score": None, "error": self.errors[j].as_py()}
        return {"score": s, "error": None}  # a NaN that was stored as a number, not a null

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._index(key) is not None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.scores.nbytes + self.error_rows.nbytes + self.errors.nbytes


def _one_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        # combine_chunks copies even a single chunk; that chunk may live in the object store.
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _fixed_width_keys(keys: pa.Array) -> np.ndarray:
    n = len(keys)
    keys = keys.cast(pa.large_string()) if pa.types.is_large_string(keys.type) else keys.cast(pa.string())
    lengths = pc.binary_length(keys).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    width = max(int(lengths.max()) if n else 0, 1)
    if n and int(lengths.min()) == width:
        # Every key is as long as the widest (the 32 hex characters of judgment_key): the Arrow
        # data buffer already is the fixed-width array, so it is viewed, not copied.
        off_type = np.int64 if pa.types.is_large_string(keys.type) else np.int32
        offsets = np.frombuffer(keys.buffers()[1], dtype=off_type, count=keys.offset + n + 1)[keys.offset:]
        return np.frombuffer(keys.buffers()[2], dtype=f"S{width}", count=n, offset=int(offsets[0]))
    return np.asarray(keys.cast(pa.large_binary()).to_numpy(zero_copy_only=False), dtype=f"S{width}")
