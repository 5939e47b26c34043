"""Lineage: what a stage output was made from, as one hash chained from the ingest input up.

Every manifest records ``lineage``: its stage's own config hash and the lineage hashes of the
outputs it read. Reuse decisions (``persodpo run`` skipping a stage, generate resuming an
attempt, train resuming a Ray Train run, evaluate's model cache) compare lineage hashes, not
names, so changing anything upstream (an ingest setting, the input file, the pairs recipe)
recomputes everything below it, and an unchanged rerun still reuses everything.

The chain starts at the ingest input: a content hash for files up to ``CONTENT_HASH_MAX_BYTES``
(the bundled sample, a FoCus split), size + modification time above that and for directories
(listing of every file's relative path, size and mtime). On S3, size + mtime of each object.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Mapping

from persodpo import storage as st

if TYPE_CHECKING:
    from persodpo.config import StorageSection

CONTENT_HASH_MAX_BYTES = 512 * 1024 * 1024
_CHUNK = 8 * 1024 * 1024


def digest(payload: object) -> str:
    """A short, stable hash of a JSON-able payload."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def chain(config_hash: str, upstream: Mapping[str, str]) -> dict:
    """A manifest's ``lineage`` field: this stage's config hash plus the lineage of each input."""
    upstream = dict(sorted(upstream.items()))
    return {"hash": digest({"config": config_hash, "upstream": upstream}), "config_hash": config_hash,
            "upstream": upstream}


def file_digest(uri: str, storage: "StorageSection | None" = None) -> str:
    """sha256 of a file's bytes, streamed (also used for model weights)."""
    fs, path = st.resolve(uri, storage)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def input_fingerprint(uri: str, storage: "StorageSection | None" = None) -> str:
    """Fingerprint of an ingest input (file or folder, local or S3); see the module docstring."""
    import pyarrow.fs as pafs

    fs, path = st.resolve(uri, storage)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        if not st.is_s3(uri) and (info.size or 0) <= CONTENT_HASH_MAX_BYTES:
            return "sha256:" + file_digest(uri, storage)[:32]
        return "stat:" + digest([info.size, info.mtime_ns])
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        base = path.rstrip("/") + "/"
        listing = sorted((i.path[len(base):], i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)
        return "dir:" + digest(listing)
    return "missing:" + digest(uri)


def of_manifest(manifest: dict) -> str:
    """The lineage hash of a complete output. Outputs written before lineage existed get one
    from their config hash and write time, so they never match a lineage computed today."""
    lin = manifest.get("lineage")
    if isinstance(lin, dict) and lin.get("hash"):
        return str(lin["hash"])
    return "legacy-" + digest([manifest.get("config_hash"), manifest.get("written_at")])


def of_output(uri: str, storage: "StorageSection | None" = None) -> str:
    """The lineage hash of the complete stage output at ``uri`` (StorageError if not complete)."""
    return of_manifest(st.read_manifest(uri, storage))


def weights_digest(uri: str, storage: "StorageSection | None" = None) -> str | None:
    """sha256 over a model folder's weight files (``*.safetensors``, ``*.bin``), in name order:
    which weights a stage produced or loaded, independent of where they are stored."""
    import pyarrow.fs as pafs

    fs, path = st.resolve(uri, storage)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, OSError):
        return None
    names = sorted(i.path.rsplit("/", 1)[-1] for i in infos
                   if i.type == pafs.FileType.File and i.path.endswith((".safetensors", ".bin")))
    if not names:
        return None
    h = hashlib.sha256()
    for n in names:
        h.update(f"{n}\x1f{file_digest(st.join(uri, n), storage)}\n".encode())
    return h.hexdigest()[:32]
