"""A Ray Train worker killed mid-epoch: FailureConfig(max_failures) restarts the worker group
from the last checkpoint inside the same run; the final step count is right and no pair is
consumed twice in the epoch (the whole loss curve equals the single-process one, which sees
every pair once in a fixed order).

The run is ZeRO-3 on pairs of the bundled FoCus sample with the real prompt template (450-610
tokens each with the tiny model's tokenizer), so the restore of partitioned weights and optimizer
state from a checkpoint is what gets tested, with long sequences. (A killed driver, a fresh job
resuming from the store's checkpoint, is tests/integration/test_pipeline.py's kill test.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from persodpo.train.synthetic import focus_pairs, write_pairs
from tests.integration.test_train_stage import REPO, STEPS, TRAIN, _single_process_losses
from tests.support.procs import descendants_titled

pytestmark = pytest.mark.slow


def test_a_killed_train_worker_is_restarted_from_the_last_checkpoint(tmp_path):
    pairs, out = str(tmp_path / "pairs"), tmp_path / "dpo"
    table = focus_pairs()
    write_pairs(pairs, table)
    long = ["train.max_length=640", "train.zero_stage=3"]
    cmd = [sys.executable, "-m", "persodpo", "train", "--input", pairs, "--output", str(out)]
    for o in TRAIN + long + ["train.max_failures=1"]:
        cmd += ["--set", o]
    # Every rank pauses after the step-3 checkpoint (only in the first attempt: the restarted
    # group's next save is step 6), so the kill lands at a known point mid-epoch.
    env = dict(os.environ, PYTHONPATH=str(REPO), PERSODPO_TRAIN_HANG_AFTER_SAVE="3")
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and killed is None:
            snaps = list((out / "checkpoints").glob("*/checkpoint_manager_snapshot.json"))
            if snaps and "checkpoint-0000003" in snaps[0].read_text():
                workers = descendants_titled([proc.pid], "ray::RayTrainWorker")
                if workers:
                    workers[-1].send_signal(signal.SIGKILL)
                    killed = workers[-1].pid
            time.sleep(0.5)
        assert killed, "no checkpoint and worker to kill before the deadline:\n" + (tmp_path / "train.log").read_text()[-3000:]
        stdout, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    err = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, err[-4000:]
    import json

    s = json.loads(stdout.strip().splitlines()[-1])
    assert s["global_step"] == STEPS and s["resumed_from_step"] == 3 and s["zero_stage"] == 3, s
    assert s["n_pairs"] == table.num_rows
    assert (out / "_SUCCESS").exists() and (out / "model.safetensors").exists()
    single = _single_process_losses(tmp_path, ["train.max_length=640"], table)
    assert single == pytest.approx(s["losses"], rel=1e-4), (single, s["losses"])
    print(json.dumps({"killed_worker_pid": killed, "global_step": s["global_step"],
                      "resumed_from_step": s["resumed_from_step"], "losses": s["losses"]}))
