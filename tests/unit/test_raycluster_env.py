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
