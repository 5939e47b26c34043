"""`persodpo run` end to end on jobs/configs/tiny.yaml (every stage, tiny random models, local
Ray): an uninterrupted run, and a run whose driver is killed with SIGKILL during score, train
and evaluate, rerun each time with the same run id. (A driver killed during generate is
tests/integration/test_generate.py's kill/resume test: only the missing candidates are asked
again and finished parts are untouched.) The final tables must be the same, by ids and
values, with no duplicates; finished stages are reused, not redone."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from persodpo import storage as st

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "jobs" / "configs" / "tiny.yaml")
# Columns that record when or how fast, not what.
VOLATILE = {"generated_at", "latency_s"}
TABLES = {"ingest": "prompt_id", "generate": "candidate_id", "score": "candidate_id", "pairs": "pair_id",
          "evaluate/candidates": "candidate_id", "evaluate/scored": "candidate_id"}


@pytest.fixture(scope="module")
def ray_address(ray_local):
    """Runs join the session's Ray, as `ray job submit` drivers join a cluster."""
    return ray_local.get_runtime_context().gcs_address


def _start(root: Path, address: str, log: Path, *sets: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "persodpo", "run", "--config", CONFIG, "--set", f"run.root={root}",
            "--set", f"ray.address={address}", *sets]
    with open(log, "ab") as err:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> dict:
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log.read_text()[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _table(run: Path, name: str) -> pa.Table:
    t = st.read_table(str(run / name))
    t = t.select([c for c in t.column_names if c not in VOLATILE])
    return t.sort_by(TABLES[name])


def _wait_for(pred, proc: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None, f"the run ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)   # no cleanup runs: the worst case for what it leaves
    proc.wait(30)


@pytest.fixture(scope="module")
def reference(ray_address, tmp_path_factory) -> Path:
    """An uninterrupted run of every stage (its root); the lineage test changes it afterwards."""
    ref_root = tmp_path_factory.mktemp("reference")
    log = ref_root / "ref.log"
    ref = _finish(_start(ref_root, ray_address, log), log)
    assert [s["status"] for s in ref["stages"].values()] == ["ran"] * 6
    return ref_root


@pytest.mark.slow
def test_a_run_killed_in_three_stages_ends_with_the_tables_of_an_uninterrupted_run(reference, ray_address, tmp_path):
    ref_root, root = reference, tmp_path / "killed"

    run, log = root / "runs" / "tiny", tmp_path / "killed.log"

    # 1. during score, once its output is started (generate is complete by then)
    p = _start(root, ray_address, log)
    _wait_for(lambda: (run / "score").exists(), p, log, "score output")
    _kill(p)
    assert (run / "generate" / "_SUCCESS").exists() and not (run / "score" / "_SUCCESS").exists()

    # 2. rerun; killed during train, once Ray Train has registered its first checkpoint (step 2)
    def registered():
        snaps = list((run / "train" / "checkpoints").glob("*/checkpoint_manager_snapshot.json"))
        return bool(snaps) and "checkpoint-0000002" in snaps[0].read_text()

    p = _start(root, ray_address, log)
    _wait_for(registered, p, log, "a registered train checkpoint")
    _kill(p)
    assert not (run / "train" / "_SUCCESS").exists()

    # 3. rerun; killed during evaluate, once its held-out generation has written a part
    p = _start(root, ray_address, log)
    _wait_for(lambda: any((run / "evaluate" / "candidates").glob("part-*.parquet")), p, log, "evaluate parts")
    _kill(p)
    assert (run / "train" / "_SUCCESS").exists() and not (run / "evaluate" / "_SUCCESS").exists()

    # 4. rerun to the end
    final = _finish(_start(root, ray_address, log), log)
    status = {k: v["status"] for k, v in final["stages"].items()}
    assert status == {"ingest": "reused", "generate": "reused", "score": "reused", "pairs": "reused",
                      "train": "reused", "evaluate": "ran"}, status
    trained = json.loads((run / "train" / "train_summary.json").read_text())
    ref_trained = json.loads((ref_root / "runs" / "tiny" / "train" / "train_summary.json").read_text())
    assert trained["global_step"] == ref_trained["global_step"] == 6
    assert trained["resumed_from_step"] == 2 and ref_trained["resumed_from_step"] is None

    ref_run = ref_root / "runs" / "tiny"
    # The browsable pages beside the markdown (their content: tests/integration/test_html_pages.py).
    page = (run / "evaluate" / "report.html").read_text()
    assert "Is the trained model better?" in page and "data:image/png;base64," in page
    assert (run / "pairs" / "pairs.html").read_text().count('"pair_id"') == _table(run, "pairs").num_rows
    for name, key in TABLES.items():
        got, want = _table(run, name), _table(ref_run, name)
        ids = got.column(key).to_pylist()
        assert len(ids) == len(set(ids)), f"{name}: duplicate {key}"
        assert got.equals(want), f"{name}: differs from the uninterrupted run"
    # Training resumed from a checkpoint has the loss curve of the uninterrupted run.
    losses = [m["loss"] for m in trained["history"] if "loss" in m]
    ref_losses = [m["loss"] for m in ref_trained["history"] if "loss" in m]
    assert len(losses) == 6 and losses == pytest.approx(ref_losses, rel=1e-5)


@pytest.mark.slow
def test_changed_pairs_retrain_from_the_base_model_and_evaluate_scores_the_new_weights(reference, ray_address):
    """Lineage, on the finished reference run (after the kill test has compared against it): an
    unchanged rerun reuses every stage; other pairs (a changed recipe setting) retrain from the base
    model, not from the old run's checkpoints, and evaluate scores the new weights (by digest)."""
    ref_root, ref_run, ref_log = reference, reference / "runs" / "tiny", reference / "ref.log"
    same = _finish(_start(ref_root, ray_address, ref_log), ref_log)
    assert {s["status"] for s in same["stages"].values()} == {"reused"}, same["stages"]
    old_train = st.read_manifest(str(ref_run / "train"))
    changed = _finish(_start(ref_root, ray_address, ref_log, "--set", "pairs.persodpo.max_pairs_per_prompt=1"), ref_log)
    status = {k: v["status"] for k, v in changed["stages"].items()}
    assert status == {"ingest": "reused", "generate": "reused", "score": "reused", "pairs": "ran", "train": "ran",
                      "evaluate": "ran"}, status
    train = changed["stages"]["train"]
    assert train["run_name"] != old_train["run_name"] and train["resumed_from_step"] is None
    # Step 1's loss is ln 2 only when the policy still equals the reference: the base model.
    assert train["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    new_train = st.read_manifest(str(ref_run / "train"))
    assert new_train["lineage"]["upstream"]["pairs"] == st.read_manifest(str(ref_run / "pairs"))["lineage"]["hash"]
    assert new_train["weights_digest"] != old_train["weights_digest"]
    assert changed["stages"]["evaluate"]["model_digests"]["dpo"] == new_train["weights_digest"]
