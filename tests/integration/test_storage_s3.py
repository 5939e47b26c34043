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
