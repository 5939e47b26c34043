"""jobs/submit.py waits out a job server that is up but not yet taking jobs (the head's agent still
starting: Ray answers 500 "No available agent to submit job, please try again later"), and never
submits twice. The real job server is exercised in tests/integration/test_cluster_jobs.py; this
fake only injects the refusal, which a real head gives for a moment that cannot be timed."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("submit", Path(__file__).parents[2] / "jobs" / "submit.py")
submit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit)

NOT_READY = RuntimeError("Request failed with status code 500: No available agent to submit job, "
                         "please try again later..")


class FlakyJobServer:
    def __init__(self, refusals: int, error: Exception = NOT_READY, appears_after: int | None = None):
        self.refusals, self.error, self.appears_after = refusals, error, appears_after
        self.calls: list[dict] = []
        self.jobs: dict[str, str] = {}

    def submit_job(self, **kw):
        self.calls.append(kw)
        if len(self.calls) <= self.refusals:
            if self.appears_after == len(self.calls):
                self.jobs[kw["submission_id"]] = "RUNNING"  # taken although the answer was an error
            raise self.error
        self.jobs[kw["submission_id"]] = "PENDING"
        return kw["submission_id"]

    def get_job_status(self, sid):
        if sid not in self.jobs:
            raise RuntimeError(f"Job {sid} does not exist")
        return self.jobs[sid]


def test_not_ready_refusals_are_retried_with_backoff_until_the_job_is_taken():
    server, sleeps = FlakyJobServer(refusals=3), []
    out = submit.submit_with_retry(server, "persodpo-x-run", entrypoint="true", sleep=sleeps.append)
    assert out == "SUBMITTED"
    assert len(server.calls) == 4 and server.jobs == {"persodpo-x-run": "PENDING"}
    assert sleeps == [1.0, 2.0, 4.0]


def test_a_job_that_appeared_despite_the_error_is_followed_not_submitted_again():
    server = FlakyJobServer(refusals=5, appears_after=1)
    out = submit.submit_with_retry(server, "persodpo-x-run", entrypoint="true", sleep=lambda s: None)
    assert out == "RUNNING" and len(server.calls) == 1


def test_other_errors_are_raised_at_once():
    server = FlakyJobServer(refusals=1, error=RuntimeError("Request failed with status code 400: bad runtime_env"))
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        submit.submit_with_retry(server, "persodpo-x-run", entrypoint="true", sleep=lambda s: None)
    assert len(server.calls) == 1


def test_the_refusal_is_raised_once_the_wait_is_spent():
    server = FlakyJobServer(refusals=100)
    with pytest.raises(RuntimeError, match="No available agent"):
        submit.submit_with_retry(server, "persodpo-x-run", entrypoint="true", wait_s=0.5, sleep=lambda s: None)
    assert len(server.calls) == 1  # the first backoff (1 s) would already pass the 0.5 s wait
