"""TRL DPOTrainer + DeepSpeed without Ray: the baseline of bench/train.py and the GPU smoke run.

It builds the trainer exactly as the Ray Train worker does (``persodpo.train.dpo.dpo_args`` from a
``TrainConfig``, rows from ``persodpo.train.data.training_rows``), so the only difference left
between the two is how the processes are started and connected. The caller sets up the process
group (``deepspeed`` launcher, torchrun, or env vars for one process) before calling
:func:`run_direct`.
"""

from __future__ import annotations

import os
import time


def init_distributed(on_gpu: bool) -> None:
    """One process without a launcher gets a world of 1; under a launcher the env is already set."""
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")


def run_direct(c, rows, model_path: str, tokenizer, *, on_gpu: bool, output_dir: str) -> dict:
    """Train; returns per-step (time, num_tokens, loss) as logged on this rank."""
    import datasets
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from persodpo.train.data import WEIGHT
    from persodpo.train.dpo import dpo_args, weighted_trainer_class

    class StepLog(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.rows.append({"step": state.global_step, "timestamp": time.time(),
                                  "num_tokens": float(logs.get("num_tokens", 0)), "loss": float(logs["loss"])})

    args = dpo_args(c, output_dir=output_dir, world_size=int(os.environ.get("WORLD_SIZE", "1")), on_gpu=on_gpu)
    args.save_strategy = "no"
    steps = StepLog()
    cls = weighted_trainer_class() if WEIGHT in rows.column_names else DPOTrainer
    t0 = time.time()
    trainer = cls(model=model_path, args=args, train_dataset=datasets.Dataset(datasets.table.InMemoryTable(rows)),
                  processing_class=tokenizer, callbacks=[steps])
    t1 = time.time()
    trainer.train()
    return {"trainer_init_s": t1 - t0, "train_s": time.time() - t1, "steps": steps.rows}


def steady_rate(rows: list[dict], skip: int = 5) -> dict:
    """Steps/s and tokens/s between the ``skip``-th logged step and the last (start-up excluded)."""
    rows = [r for r in rows if "loss" in r and "timestamp" in r]
    if len(rows) <= skip + 1:
        raise ValueError(f"need more than {skip + 1} logged steps, got {len(rows)}")
    a, b = rows[skip], rows[-1]
    dt = b["timestamp"] - a["timestamp"]
    return {"steps_per_s": (b["step"] - a["step"]) / dt,
            "tokens_per_s": (b.get("num_tokens", 0) - a.get("num_tokens", 0)) / dt,
            "window_steps": b["step"] - a["step"], "window_s": dt}
