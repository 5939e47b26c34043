"""Ingest to a real S3 server (SeaweedFS on 127.0.0.1), read back with pyarrow and boto3."""

import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from persodpo import storage as st
from persodpo.errors import StorageError


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "persodpo", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_ingest_to_s3_and_read_back(s3_env):
    bucket = s3_env["bucket"]
    uri = f"s3://{bucket}/runs/x/prompts"
    r = _cli("ingest", "--output", uri)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_prompts"] == 40 and summary["output"] == uri
    # pyarrow, through our storage layer
    table = st.read_table(uri)
    assert table.num_rows == 40
    # boto3, independently: the manifest lists the part and _SUCCESS exists
    s3 = s3_env["server"].client()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/x/prompts/")["Contents"]}
    assert {"runs/x/prompts/_SUCCESS", "runs/x/prompts/_manifest.json"} <= keys
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/x/prompts/_manifest.json")["Body"].read())
    body = s3.get_object(Bucket=bucket, Key="runs/x/prompts/" + manifest["parts"][0])["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows == 40
    # No credentials in the manifest.
    raw = json.dumps(manifest)
    assert s3_env["server"].secret_key not in raw and s3_env["server"].access_key not in raw


def test_wrong_credentials_give_a_clear_error(s3_env):
    r = _cli("ingest", "--output", f"s3://{s3_env['bucket']}/p", env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert r.returncode == 2
    assert "access denied" in r.stderr and f"s3://{s3_env['bucket']}/p" in r.stderr
    assert "not-the-secret" not in r.stderr + r.stdout


def test_missing_bucket(s3_env):
    r = _cli("ingest", "--output", "s3://no-such-bucket-xyz/p")
    assert r.returncode == 2
    assert "no-such-bucket-xyz" in r.stderr and "not found" in r.stderr.lower()


def test_reading_an_incomplete_s3_output_is_refused(s3_env):
    uri = f"s3://{s3_env['bucket']}/half"
    out = st.StageOutput(uri).begin()
    import pyarrow as pa

    out.write_table(pa.table({"x": [1]}))
    with pytest.raises(StorageError, match="not a complete stage output"):
        st.read_table(uri)


def test_a_rounds_model_on_s3_is_published_without_checkpoints_and_keeps_its_lineage(s3_env, tmp_path, monkeypatch):
    """Iterative DPO on object storage: the next round's policy and trainer load a copy of the
    round's train output without its checkpoints (object to object), and the lineage of that copy
    is the train output's (lineage hash and weights digest), so later rounds chain it."""
    from persodpo.config import load_config
    from persodpo.models import resolve_model, stage_model_lineage
    from persodpo.rounds.wiring import policy_model

    root = f"s3://{s3_env['bucket']}/iter"
    train = st.join(root, "runs", "r", "train")
    out = st.StageOutput(train).begin()
    out.write_file("config.json", '{"model_type": "llama"}')
    out.write_file("model.safetensors", b"weights" * 100)
    out.write_file("checkpoints/dpo-x/checkpoint_000001/model.safetensors", b"old" * 1000)
    out.commit({"stage": "train", "weights_digest": "w123", "lineage": {"hash": "L1", "upstream": {}}})
    cfg = load_config(None, [f"run.root={root}", "run.rounds=2"])
    published = policy_model(cfg, train)
    assert published.startswith(st.join(root, "models", "policy-train-")), published
    assert policy_model(cfg, train) == published                          # once per version
    assert stage_model_lineage(published) == stage_model_lineage(train) == {"lineage": "L1", "weights": "w123"}
    monkeypatch.setenv("PERSODPO_CACHE_DIR", str(tmp_path / "worker-node"))
    local = resolve_model(published)
    from pathlib import Path

    assert sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()) == [
        ".complete", ".published", "config.json", "model.safetensors"]   # no checkpoints/, no manifest
    assert open(f"{local}/model.safetensors", "rb").read() == b"weights" * 100
