"""`persodpo run` end to end on jobs/configs/tiny.yaml with two rounds of iterative DPO (every
stage, tiny random models, local Ray): an uninterrupted run, and a run whose driver is killed with
SIGKILL during round 1's score and round 2's generate, train and evaluate, rerun each time with the
same run id. (A driver killed during round 1's generate is tests/integration/test_generate.py's
kill/resume test.) The final tables of both rounds must be the same, by ids and values, with no
duplicates; finished stages and rounds are reused, not redone."""

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
ROUND_TABLES = {"generate": "candidate_id", "score": "candidate_id", "pairs": "pair_id",
                "evaluate/candidates": "candidate_id", "evaluate/scored": "candidate_id"}
TABLES = {"ingest": "prompt_id", **ROUND_TABLES, **{f"round-2/{k}": v for k, v in ROUND_TABLES.items()}}
ROUNDS = ("--set", "run.rounds=2")


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


def _registered(train: Path):
    """Ray Train has registered the checkpoint of step 2 under ``train``."""
    def check() -> bool:
        snaps = list((train / "checkpoints").glob("*/checkpoint_manager_snapshot.json"))
        return bool(snaps) and "checkpoint-0000002" in snaps[0].read_text()
    return check


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
    """An uninterrupted two-round run of every stage (its root); the lineage test changes it afterwards."""
    ref_root = tmp_path_factory.mktemp("reference")
    log = ref_root / "ref.log"
    ref = _finish(_start(ref_root, ray_address, log, *ROUNDS), log)
    assert [s["status"] for s in ref["stages"].values()] == ["ran"] * 6
    assert [s["status"] for s in ref["rounds"][1]["stages"].values()] == ["ran"] * 5
    (ref_root / "summary.json").write_text(json.dumps(ref))
    return ref_root


def test_round_two_trains_from_round_one_on_pairs_of_its_own_replies(reference):
    run = reference / "runs" / "tiny"
    ref = json.loads((reference / "summary.json").read_text())
    round1 = st.read_manifest(str(run / "train"))
    gen2 = st.read_manifest(str(run / "round-2" / "generate"))
    train2 = st.read_manifest(str(run / "round-2" / "train"))
    # The policy generator is round 1's trained model, by the digest of its weights.
    assert gen2["generators"].keys() == {"policy"} and gen2["rows"] == 15 * 3   # 15 prompts x policy_samples
    assert gen2["model_lineage"] == {"model:policy": round1["lineage"]["hash"],
                                     "model:policy:weights": round1["weights_digest"]}
    assert gen2["lineage"]["upstream"]["model:policy:weights"] == round1["weights_digest"]
    # On-policy pairs: chosen and rejected are both the policy's replies.
    pairs2 = _table(run, "round-2/pairs")
    assert pairs2.num_rows > 0
    assert set(pairs2.column("chosen_generator").to_pylist()) == {"policy"}
    assert set(pairs2.column("rejected_generator").to_pylist()) == {"policy"}
    assert f"{pairs2.num_rows} content and 0 format pairs" in (run / "round-2" / "pairs" / "data_card.md").read_text()
    # Training starts from round 1's weights (digest of what it loaded at step 0), its reference is
    # the same model: step 1's loss is ln 2, and the weights it ends with are new.
    assert train2["start_weights_digest"] == round1["weights_digest"] != train2["weights_digest"]
    assert train2["model"] == str(run / "train") and train2["lineage"]["upstream"]["model:weights"] == round1["weights_digest"]
    assert train2["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    # Evaluate every round on the same held-out prompts; the report puts base, round 1 and round 2 side by side.
    ev1, ev2 = _table(run, "evaluate/candidates"), _table(run, "round-2/evaluate/candidates")
    assert set(ev1.column("prompt_id").to_pylist()) == set(ev2.column("prompt_id").to_pylist())
    assert st.read_manifest(str(run / "round-2" / "evaluate"))["model_digests"]["dpo"] == train2["weights_digest"]
    table = ref["rounds_report"]["table"]
    assert [(r["round"], r["model"]) for r in table] == [(0, "base"), (1, "round-1"), (2, "round-2")]
    assert all(r["n"] == ev1.num_rows // 2 for r in table) and all("ref_chrf" in r for r in table)
    report = (run / "rounds" / "report.md").read_text()
    assert "| 2 | round-2 | 3 |" in report and (run / "rounds" / "rounds.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_run_killed_in_four_places_of_two_rounds_ends_with_the_tables_of_an_uninterrupted_run(reference, ray_address, tmp_path):
    ref_root, root = reference, tmp_path / "killed"

    run, log = root / "runs" / "tiny", tmp_path / "killed.log"

    # 1. during round 1's score, once its output is started (generate is complete by then)
    p = _start(root, ray_address, log, *ROUNDS)
    _wait_for(lambda: (run / "score").exists(), p, log, "score output")
    _kill(p)
    assert (run / "generate" / "_SUCCESS").exists() and not (run / "score" / "_SUCCESS").exists()

    # 2. rerun; killed during round 2's generate, once the policy's replies fill a part
    p = _start(root, ray_address, log, *ROUNDS)
    _wait_for(lambda: any((run / "round-2" / "generate").glob("part-*.parquet")), p, log, "round-2 candidates")
    _kill(p)
    assert (run / "evaluate" / "_SUCCESS").exists() and not (run / "round-2" / "generate" / "_SUCCESS").exists()

    # 3. rerun; killed during round 2's train, once Ray Train has registered its first checkpoint (step 2)
    p = _start(root, ray_address, log, *ROUNDS)
    _wait_for(_registered(run / "round-2" / "train"), p, log, "a registered round-2 train checkpoint")
    _kill(p)
    assert not (run / "round-2" / "train" / "_SUCCESS").exists()

    # 4. rerun; killed during round 2's evaluate, once its held-out generation has written a part
    p = _start(root, ray_address, log, *ROUNDS)
    _wait_for(lambda: any((run / "round-2" / "evaluate" / "candidates").glob("part-*.parquet")), p, log,
              "round-2 evaluate parts")
    _kill(p)
    assert (run / "round-2" / "train" / "_SUCCESS").exists() and not (run / "round-2" / "evaluate" / "_SUCCESS").exists()

    # 5. rerun to the end
    final = _finish(_start(root, ray_address, log, *ROUNDS), log)
    assert {v["status"] for v in final["stages"].values()} == {"reused"}, final["stages"]
    status = {k: v["status"] for k, v in final["rounds"][1]["stages"].items()}
    assert status == {"generate": "reused", "score": "reused", "pairs": "reused", "train": "reused",
                      "evaluate": "ran"}, status
    gen2 = st.read_manifest(str(run / "round-2" / "generate"))
    assert gen2["resumed_rows"] > 0 and gen2["resumed_rows"] + gen2["new_rows"] == 45
    trained = json.loads((run / "round-2" / "train" / "train_summary.json").read_text())
    ref_trained = json.loads((ref_root / "runs" / "tiny" / "round-2" / "train" / "train_summary.json").read_text())
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
    assert (st.read_manifest(str(run / "rounds"))["rounds"] == st.read_manifest(str(ref_run / "rounds"))["rounds"])
    # Training resumed from a checkpoint has the loss curve of the uninterrupted run.
    losses = [m["loss"] for m in trained["history"] if "loss" in m]
    ref_losses = [m["loss"] for m in ref_trained["history"] if "loss" in m]
    assert len(losses) == 6 and losses == pytest.approx(ref_losses, rel=1e-5)


@pytest.mark.slow
def test_changed_pairs_retrain_from_the_base_model_and_evaluate_scores_the_new_weights(reference, ray_address):
    """Lineage, on the finished reference run (after the kill test has compared against it): an
    unchanged rerun reuses every stage of both rounds, and a one-round rerun its round 1; other pairs
    (a changed recipe setting) retrain from the base model, not from the old run's checkpoints, and
    evaluate scores the new weights (by digest)."""
    ref_root, ref_run, ref_log = reference, reference / "runs" / "tiny", reference / "ref.log"
    same = _finish(_start(ref_root, ray_address, ref_log, *ROUNDS), ref_log)
    assert {s["status"] for r in same["rounds"] for s in r["stages"].values()} == {"reused"}, same["rounds"]
    same = _finish(_start(ref_root, ray_address, ref_log), ref_log)
    assert {s["status"] for s in same["stages"].values()} == {"reused"}, same["stages"]
    assert "rounds" not in same
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
