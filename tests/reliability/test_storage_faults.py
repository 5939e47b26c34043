"""Object storage faults: the server stops mid-write, wrong credentials, a missing bucket. Clear
errors, and never a half-written output that a later stage would trust."""

import pyarrow as pa
import pytest

from persodpo import storage as st
from persodpo.config import StorageSection
from persodpo.errors import StorageError
from tests.support.s3 import WeedS3


@pytest.fixture
def private_s3(tmp_path, monkeypatch):
    server = WeedS3(tmp_path / "s3").start()
    server.create_bucket("faults")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    yield server
    server.stop()


def _table(n):
    return pa.table({"x": list(range(n))})


def test_server_stopped_mid_write_then_restarted(private_s3):
    uri = "s3://faults/out"
    fast = StorageSection(retry_max_attempts=2, connect_timeout_s=1, request_timeout_s=3)
    out = st.StageOutput(uri, fast).begin()
    out.write_table(_table(10))
    private_s3.stop()
    with pytest.raises(StorageError) as err:
        out.write_table(_table(10))
        out.commit({"rows": 20})
    assert uri in str(err.value)
    private_s3.restart()
    # Nothing that looks complete was left behind by the interrupted attempt.
    assert not st.is_complete(uri, fast)
    with pytest.raises(StorageError, match="not a complete stage output"):
        st.read_table(uri, fast)
    # The rerun writes the whole output; readers see exactly its rows.
    again = st.StageOutput(uri, fast).begin()
    again.write_table(_table(10))
    again.write_table(_table(5))
    again.commit({"rows": 15})
    assert st.read_table(uri, fast).num_rows == 15


def test_wrong_credentials_and_missing_bucket(private_s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(StorageError) as err:
        st.StageOutput("s3://faults/x").begin()
    assert "access denied" in str(err.value) and "definitely-wrong-secret" not in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", private_s3.secret_key)
    with pytest.raises(StorageError, match="no-bucket-here"):
        st.StageOutput("s3://no-bucket-here/x").begin()
