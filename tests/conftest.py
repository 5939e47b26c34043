"""Shared fixtures: a real S3 server, a local Ray, the authors' shared data, offline env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet for everything the tests start (also inherited by Ray workers and servers).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERSODPO_SHARED_DATA", REPO.parent / "shared" / "data" / "persodpo-focus"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The authors' published data (never copied into the repo); skip clearly when absent."""
    if not (SHARED_DATA / "prompts" / "FoCus-train.csv").exists():
        pytest.skip(f"authors' shared data not found at {SHARED_DATA} (set PERSODPO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (free ports), stopped at the end of the session."""
    from tests.support.s3 import WeedS3

    server = WeedS3(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS_* variables pointing at the test server, and a fresh bucket for this test."""
    import uuid

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = "t-" + uuid.uuid4().hex[:12]
    s3_server.create_bucket(bucket)
    return {"bucket": bucket, "server": s3_server}


TEST_API_KEY_ENV, TEST_API_KEY = "PERSODPO_TEST_API_KEY", "sk-test-secret-4711"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the whole session: explicit logical CPUs (the vLLM processor's stages
    need more logical CPUs than the 2 physical cores), no dashboard."""
    import ray

    from persodpo.config import RaySection
    from persodpo.raycluster import init_ray

    if ray.is_initialized():
        ray.shutdown()
    # Workers inherit the environment the local Ray starts with, as the pipeline's own local Ray
    # does: a fake key set now is what API actors read by name (``api_key_env``).
    os.environ.setdefault(TEST_API_KEY_ENV, TEST_API_KEY)
    init_ray(RaySection(num_cpus=int(os.environ.get("PERSODPO_TEST_RAY_CPUS", "8")), progress_bars=False))
    yield ray
    ray.shutdown()
