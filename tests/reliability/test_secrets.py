"""Secrets are never written: `persodpo run` of ingest through train (jobs/configs/tiny.yaml) with
its run root on a real S3 server (real credentials in play) and an LLM judge whose API key comes from the
environment (its endpoint fails some requests, so error messages are written too); then every
byte the run wrote is searched for the key and the S3 credentials: every object under the run
root (Parquet, manifests, data card, judge cache, train checkpoints), the driver's stdout and
stderr, its local Ray's whole session directory (every log of every worker), the local model
server's log and any other temporary file. Zero hits. Prompts and replies are not logged at INFO
either.

The driver starts its own local Ray, inheriting the secrets in its environment as a developer's
run does: every Ray process then holds them, so any place that dumps an environment, a request
or a header is caught. (It cannot join the test session's Ray: that Ray's workers were started
before the S3 credentials were set, and credentials never travel in a runtime_env.) TMPDIR points
the Ray session, the local server's log and the train scratch directory into one folder that is
scanned whole.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from persodpo import storage as st
from tests.support.openai_server import OpenAIServer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny.yaml"
KEY_ENV = "PERSODPO_TEST_API_KEY"


def judge_responder(messages, body):
    return json.dumps({"score": 1 + len(messages[-1]["content"]) % 5})


def _haystacks(name: str, data: bytes) -> list[bytes]:
    """The raw bytes, plus what compression would hide: decoded Parquet values and gzip."""
    out = [data]
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(io.BytesIO(data))
        out.append(json.dumps(f.read().to_pylist(), default=str).encode())
        out.append(repr(f.schema_arrow.metadata).encode())
    elif name.endswith(".gz"):
        out.append(gzip.decompress(data))
    return out


def _scan(files: dict[str, bytes], needles: dict[str, str]) -> list[str]:
    hits = []
    for name, data in files.items():
        for hay in _haystacks(name, data):
            hits += [f"{what} in {name}" for what, needle in needles.items() if needle.encode() in hay]
    return sorted(set(hits))


def _local_files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                out[str(p)] = p.read_bytes()
            except OSError:   # a socket or a file removed while we walk
                continue
    return out


def _s3_files(client, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[f"s3://{bucket}/{obj['Key']}"] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.mark.slow
def test_a_full_run_writes_no_secret_anywhere_and_logs_no_prompt_or_reply(s3_env, tmp_path):
    bucket, server3 = s3_env["bucket"], s3_env["server"]
    api_key = "sk-leakcheck-" + secrets.token_hex(12)
    needles = {"API key": api_key, "S3 secret key": server3.secret_key, "S3 access key id": server3.access_key}
    root = f"s3://{bucket}/persodpo"
    scratch = Path(tempfile.mkdtemp(prefix="psec", dir="/tmp"))   # short: Ray's socket paths live here
    try:
        # Some requests fail (500, twice for some rows): error paths write messages too.
        with OpenAIServer(responder=judge_responder, fault_mix={"500": 0.4}, retry_after_s=0) as judge:
            cfg = yaml.safe_load(TINY.read_text())
            # Every stage that writes something new (evaluate reruns generate and score: the suite's
            # time budget leaves it to the other tests).
            cfg["run"].update(root=root, run_id="secrets", stages=["ingest", "generate", "score", "pairs", "train"])
            cfg["ray"]["object_store_memory"] = 300_000_000
            cfg["score"]["judges"] = [{
                "name": "loop", "model": "openai/loop-judge", "api_base": judge.api_base, "api_key_env": KEY_ENV,
                "concurrency": 1, "max_in_flight": 4, "batch_size": 8, "timeout_s": 30, "max_retries": 1}]
            config = tmp_path / "secrets.yaml"
            config.write_text(yaml.safe_dump(cfg))
            env = {**os.environ, KEY_ENV: api_key, "TMPDIR": str(scratch), "RAY_TMPDIR": str(scratch),
                   "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            for k in ("RAY_ADDRESS", "PERSODPO_LOG_LEVEL"):
                env.pop(k, None)
            assert env["AWS_SECRET_ACCESS_KEY"] == server3.secret_key
            r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(config)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
            auth = dict(judge.authorizations)
        assert r.returncode == 0, r.stderr[-5000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["ok"] and [s["status"] for s in summary["stages"].values()] == ["ran"] * 5, summary
        judged = summary["stages"]["score"]["judges"]["loop"]
        # The key really reached the endpoint, on every request the judge sent.
        assert judged["ok"] > 0 and auth == {f"Bearer {api_key}": sum(auth.values())}, (judged, list(auth))
        # Recorded errors were written as well (a row fails when both tries do: ~16% of ~100).
        assert judged["request_error"] > 0, judged

        written = _s3_files(server3.client(), bucket)
        names = list(written)
        run = f"{root}/runs/secrets"
        for what in ("ingest/_manifest.json", "generate/_manifest.json", "score/_manifest.json", "pairs/data_card.md",
                     "pairs/stats.json", "train/_manifest.json"):
            assert f"{run}/{what}" in written, (what, names[:50])
        assert any(n.startswith(f"{run}/score.judge-cache/") for n in names), "the judge cache was not written"
        assert any("/train/checkpoints/" in n and n.endswith(".safetensors") for n in names), \
            "no train checkpoint on S3"
        local = _local_files(scratch)
        assert any("/session_" in n and "/logs/" in n for n in local), "no Ray session logs under TMPDIR"
        assert any("persodpo-server-" in n for n in local), "no local model server log under TMPDIR"
        written.update(local)
        written.update({"driver stdout": r.stdout.encode(), "driver stderr": r.stderr.encode()})
        hits = _scan(written, needles)
        assert not hits, f"secrets written: {hits}"

        # Prompts and replies are not logged at INFO (the driver's stderr holds its logs and, with
        # log_to_driver, every worker's).
        cands = st.read_table(f"{run}/generate", columns=["text"]).column("text").to_pylist()
        prompts = st.read_table(f"{run}/ingest", columns=["gold"]).column("gold").to_pylist()
        replies = sorted({t.strip() for t in cands if t and len(t.strip()) >= 20})[:20]
        golds = sorted({g for g in prompts if len(g) >= 20})[:20]
        assert replies and golds
        assert "INFO" in r.stderr, "the driver logged nothing at INFO: the check would be empty"
        logged = [t for t in replies + golds if t in r.stderr]
        assert not logged, f"prompt/reply text in the INFO log: {logged[:3]}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_scan_finds_a_key_hidden_in_compressed_parquet_gzip_or_a_log(tmp_path):
    """The search above can fail: a key inside a compressed Parquet column, a gzip file, a
    manifest or a log line is found and named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = "sk-leakcheck-" + secrets.token_hex(12)
    pq.write_table(pa.table({"text": [f"{i:03d}" + "x" * 5000 + key + "y" * 5000 for i in range(50)]}),
                   tmp_path / "part-0.parquet", compression="zstd", write_statistics=False)
    assert key.encode() not in (tmp_path / "part-0.parquet").read_bytes()   # compression hides it from grep
    (tmp_path / "trace.json.gz").write_bytes(gzip.compress(json.dumps({"headers": {"auth": key}}).encode()))
    (tmp_path / "clean.log").write_text("nothing to see\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "worker.log").write_text(f"INFO request with Authorization: Bearer {key}\n")
    hits = _scan(_local_files(tmp_path), {"API key": key})
    assert hits == sorted(f"API key in {tmp_path / n}" for n in ("part-0.parquet", "sub/worker.log", "trace.json.gz"))
