"""A run that needs the driver's machine is refused on a multi-node or autoscaling cluster,
before any work starts, with what to do instead."""

from pathlib import Path

import pytest
import yaml

from persodpo.config import PersoDPOConfig
from persodpo.errors import ConfigError
from persodpo.raycluster import driver_local_problems

REPO = Path(__file__).resolve().parents[2]


def _cfg(**run):
    doc = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    doc["run"].update(run)
    doc["score"]["judges"] = [{"name": "j", "model": "openai/j", "api_base": "local+vllm:tiny:llama"},
                              {"name": "k", "model": "openai/k", "api_base": "http://judge.example:8000/v1"}]
    return PersoDPOConfig.model_validate(doc)


ONE, MANY, ZERO_WORKERS = {"nodes": 1, "autoscaler": False}, {"nodes": 3, "autoscaler": False}, \
    {"nodes": 1, "autoscaler": True}


def test_one_node_without_an_autoscaler_accepts_local_roots_and_local_servers():
    assert driver_local_problems(_cfg(root="/tmp/r"), ONE) == []


@pytest.mark.parametrize("shape", [MANY, ZERO_WORKERS], ids=["three-nodes", "autoscaler-no-workers-yet"])
def test_a_cluster_refuses_a_local_root_and_each_local_server(shape):
    problems = driver_local_problems(_cfg(root="/tmp/r"), shape)
    assert len(problems) == 3, problems
    assert "run.root='/tmp/r'" in problems[0] and "s3://" in problems[0]
    assert problems[1].startswith("generate.generators[0].api.api_base='local:tiny:llama'")
    assert problems[2].startswith("score.judges[0].api_base='local+vllm:tiny:llama'")
    assert all("vLLM" in p for p in problems[1:])
    # A remote root and real URLs are fine: only the two local servers stay.
    assert len(driver_local_problems(_cfg(root="s3://b/p"), shape)) == 2


def test_refuse_driver_local_raises_a_config_error_listing_every_problem(monkeypatch):
    from persodpo import raycluster

    monkeypatch.setattr(raycluster, "cluster_shape", lambda: MANY)
    with pytest.raises(ConfigError, match=r"depends on the driver's machine:\n  - run.root=.*\n  - generate"):
        raycluster.refuse_driver_local(_cfg(root="/tmp/r"))
