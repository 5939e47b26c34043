"""Inside `ray job submit`, the driver's runtime env leaves out the job's own variables (Ray
refuses a driver env that names them again); the job-submit integration test runs it for real."""

import json

from persodpo.raycluster import _job_env_vars


def test_the_variable_read_is_the_one_ray_sets_for_submitted_drivers():
    # Fails on a Ray upgrade that renames it, before a cluster job does.
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert RAY_JOB_CONFIG_JSON_ENV_VAR == "RAY_JOB_CONFIG_JSON_ENV_VAR"


def test_job_env_vars_are_read_from_the_job_config(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}))
    assert _job_env_vars() == {"TOKENIZERS_PARALLELISM": "false"}


def test_outside_a_job_or_with_an_unreadable_config_there_are_none(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env_vars() == {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{not json")
    assert _job_env_vars() == {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": None}))
    assert _job_env_vars() == {}


def test_only_demands_that_fit_no_node_and_no_node_type_are_unplaceable():
    from persodpo.raycluster import unplaceable

    nodes = [{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}]
    types = [{"CPU": 192.0, "GPU": 8.0, "train": 8.0}]
    busy = {"CPU": 8.0, "GPU": 1.0}                  # fits a node that is busy now: waits its turn
    later = {"GPU": 1.0, "train": 1.0}               # fits a type the autoscaler can add
    never = {"GPU": 1.0, "accelerator_type:L4": 0.001}
    assert unplaceable([busy, later, never], nodes, types) == [never]
    assert unplaceable([later], nodes, []) == [later]  # no node types known: only alive nodes count
