"""Stage outputs are complete (manifest + _SUCCESS) or visibly not; readers trust only complete ones."""

import json

import pyarrow as pa
import pytest

from persodpo import storage as st
from persodpo.errors import StorageError


def _t(n, start=0):
    return pa.table({"x": list(range(start, start + n))})


def test_commit_writes_manifest_then_success(tmp_path):
    uri = str(tmp_path / "out")
    out = st.StageOutput(uri).begin()
    out.write_table(_t(3))
    out.write_table(_t(2, 3))
    assert not st.is_complete(uri)
    with pytest.raises(StorageError, match="not a complete stage output"):
        st.read_table(uri)
    m = out.commit({"rows": 5})
    assert st.is_complete(uri)
    assert m["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert st.read_table(uri).column("x").to_pylist() == [0, 1, 2, 3, 4]
    on_disk = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert on_disk["rows"] == 5 and "package_versions" in on_disk and "code_version" in on_disk


def test_reader_ignores_stray_parts(tmp_path):
    uri = str(tmp_path / "out")
    out = st.StageOutput(uri).begin()
    out.write_table(_t(2))
    out.commit({})
    # A crashed later attempt may leave parts behind: they are not in the manifest, so not read.
    import pyarrow.parquet as pq

    pq.write_table(_t(100), str(tmp_path / "out" / "part-99999.parquet"))
    assert st.read_table(uri).num_rows == 2


def test_rewrite_removes_success_first_and_stale_files(tmp_path):
    uri = str(tmp_path / "out")
    out = st.StageOutput(uri).begin()
    out.write_table(_t(2))
    out.commit({})
    again = st.StageOutput(uri).begin()
    # Between begin() and commit() the old output must not look complete.
    assert not st.is_complete(uri)
    assert again.list_files() == []
    again.write_table(_t(1))
    again.commit({})
    assert st.read_table(uri).num_rows == 1


def test_resume_keeps_finished_parts(tmp_path):
    uri = str(tmp_path / "out")
    out = st.StageOutput(uri, resume=True).begin()
    out.write_table(_t(2), "part-a.parquet")
    # crash: no commit
    out2 = st.StageOutput(uri, resume=True).begin()
    assert out2.list_files() == ["part-a.parquet"]
    assert not st.is_complete(uri)


def test_no_tmp_files_left(tmp_path):
    uri = str(tmp_path / "out")
    out = st.StageOutput(uri).begin()
    out.write_table(_t(2))
    out.commit({})
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_join_and_resolve(tmp_path):
    assert st.join("s3://b/p", "x", "y") == "s3://b/p/x/y"
    fs, path = st.resolve("s3://bucket/a/b/")
    assert path == "bucket/a/b"
    with pytest.raises(StorageError, match="no bucket"):
        st.resolve("s3:///x")
