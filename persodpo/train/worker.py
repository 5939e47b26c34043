"""What every Ray Train worker runs: TRL's DPOTrainer (+ DeepSpeed) on the whole pairs table.

Ray Train builds the torch process group (gloo on CPU, NCCL on GPU) and sets RANK/WORLD_SIZE/
LOCAL_RANK/MASTER_*; DeepSpeed and accelerate pick those up. The dataset is not split by Ray
(``DataConfig(datasets_to_split=[])``): each worker receives every pair and the trainer's
distributed sampler shards the batches, exactly as under ``deepspeed``/``torchrun``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
RUN_FILE = "persodpo_run.json"    # inside each checkpoint: the resolved ZeRO stage it was written under


def _min_over_ranks(value: float, on_gpu: bool) -> float:
    """The smallest ``value`` of all ranks (every rank must choose the same ZeRO stage)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def _device_bytes(on_gpu: bool, local_rank: int, local_world: int) -> float:
    if on_gpu:
        import torch

        return float(torch.cuda.get_device_properties(local_rank).total_memory)
    # CPU workers of one node share its memory.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(local_world, 1)


def _checkpoint_run_info(checkpoint) -> dict | None:
    """RUN_FILE of a Ray Train checkpoint, read alone (not the whole checkpoint), or None."""
    import pyarrow.fs as pafs

    if checkpoint is None:
        return None
    path = checkpoint.path.rstrip("/") + "/" + RUN_FILE
    if checkpoint.filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with checkpoint.filesystem.open_input_stream(path) as f:
        return json.loads(f.read())


def _state_args(c, model_path: str, on_gpu: bool) -> dict:
    """What the ZeRO stage and the micro-batch choices both estimate model states from
    (persodpo.train.zero.state_bytes), the parameters counted once per worker."""
    from persodpo.train.dpo import resolve_precision
    from persodpo.train.zero import model_parameters

    n, trainable = model_parameters(model_path, c.lora.enabled)
    return {"n_params": n, "trainable": trainable, "precision": resolve_precision(c.precision, on_gpu),
            "ref_copy": not (c.lora.enabled or c.precompute_ref_log_probs),
            "offload_optimizer": c.offload_optimizer, "offload_params": c.offload_params}


def resolve_zero_stage(c, *, model_path: str, world: int, on_gpu: bool, local_rank: int, local_world: int,
                       resumed: dict | None) -> tuple[int, str]:
    """train.zero_stage as a number, and why. A resumed run keeps the stage its checkpoint was
    written under (DeepSpeed cannot load another stage's optimizer shards)."""
    from persodpo.train.zero import choose_zero_stage

    if c.zero_stage != "auto":
        return int(c.zero_stage), "set in train.zero_stage"
    if resumed and "zero_stage" in resumed:
        stage = int(resumed["zero_stage"])
        return stage, f"ZeRO-{stage}: the stage the resumed checkpoint was written under"
    return choose_zero_stage(
        world_size=world, on_gpu=on_gpu, grad_accum=c.gradient_accumulation_steps,
        device_bytes=_min_over_ranks(_device_bytes(on_gpu, local_rank, local_world), on_gpu),
        **_state_args(c, model_path, on_gpu))


BATCH_KEYS = ("per_device_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")


def resolve_batch(c, *, model_path: str, world: int, on_gpu: bool, local_rank: int, local_world: int,
                  resumed: dict | None) -> dict:
    """train.per_device_batch_size / gradient_checkpointing as values, with the estimate and why
    (``c.zero_stage`` already resolved). A resumed run keeps what its checkpoint was written with:
    another micro-batch would change the batches the remaining steps see."""
    from persodpo.train.memory import choose_micro_batch, model_shape
    from persodpo.train.zero import state_bytes

    if "auto" not in (c.per_device_batch_size, c.gradient_checkpointing):
        return {**{k: getattr(c, k) for k in BATCH_KEYS}, "batch_reason": "set in the train section"}
    if resumed and all(k in resumed for k in BATCH_KEYS):
        return {**{k: resumed[k] for k in BATCH_KEYS},
                "batch_reason": "what the resumed checkpoint was written with"}
    args = _state_args(c, model_path, on_gpu)
    states = state_bytes(int(c.zero_stage), world_size=world, **args)
    precision = args["precision"]
    shape = model_shape(model_path)
    seq_len = c.max_length or 4096
    if c.per_device_batch_size == "auto":
        pairs_per_step, fixed = c.pairs_per_worker_step, None
    else:   # only checkpointing is auto: the batch is the configured one
        fixed = c.per_device_batch_size
        pairs_per_step = fixed * c.gradient_accumulation_steps
    return choose_micro_batch(
        shape=shape, seq_len=seq_len, states_bytes=states, precision=precision, on_gpu=on_gpu,
        device_bytes=_min_over_ranks(_device_bytes(on_gpu, local_rank, local_world), on_gpu),
        pairs_per_step=pairs_per_step, checkpointing=c.gradient_checkpointing, micro_batch=fixed)


def _dataset_table(shard):
    import pyarrow as pa

    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(tables, promote_options="permissive")


def upload_dir(local: str, uri: str, storage=None) -> None:
    """Copy a local directory tree to a local path or an s3:// URI."""
    import pyarrow.fs as pafs

    from persodpo import storage as st

    fs, path = st.resolve(uri, storage)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def merge_lora(model_path: str, adapter_dir: str, out_dir: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)


def train_loop(config: dict) -> None:
    import datasets
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from persodpo.config import PersoDPOConfig
    from persodpo.errors import ConfigError
    from persodpo.models import resolve_model
    from persodpo.storage import join
    from persodpo.train.callbacks import METRICS_FILE, RayTrainReport, SyncCheck
    from persodpo.train.card import model_card
    from persodpo.train.data import training_rows
    from persodpo.train.dpo import dpo_args, lora_config, trainer_class
    from persodpo.train.weighting import margin_weights

    timings = {"start": time.time()}
    cfg = PersoDPOConfig.model_validate(config["cfg"])
    c = cfg.train
    ctx = ray.train.get_context()
    rank, world, local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    on_gpu = bool(config["use_gpu"]) and torch.cuda.is_available()
    model_path = resolve_model(c.model)
    checkpoint = ray.train.get_checkpoint()
    resumed_run = _checkpoint_run_info(checkpoint)
    stage, stage_reason = resolve_zero_stage(c, model_path=model_path, world=world, on_gpu=on_gpu,
                                             local_rank=local_rank, local_world=ctx.get_local_world_size(),
                                             resumed=resumed_run)
    c = c.model_copy(update={"zero_stage": stage})
    batch = resolve_batch(c, model_path=model_path, world=world, on_gpu=on_gpu, local_rank=local_rank,
                          local_world=ctx.get_local_world_size(), resumed=resumed_run)
    if rank == 0:
        log.info("train.zero_stage -> %s", stage_reason)
        log.info("train.per_device_batch_size -> %s", batch["batch_reason"])
    c = c.model_copy(update={k: batch[k] for k in BATCH_KEYS})
    if c.zero_stage:
        import deepspeed

        # The shared-memory comm op is compiled at first use (~78 s on 2 cores) and only helps CPU
        # inference; gloo does the training collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        # ZeRO-3 partitions the model while TRL loads it (zero.Init), which needs DeepSpeed's
        # communication backend before the trainer exists; it reuses Ray Train's process group.
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")

    # The same path on every rank: DeepSpeed writes each rank's shard into the same checkpoint dir.
    local = config["local_dir"]
    out_dir = os.path.join(local, "trainer")
    os.makedirs(out_dir, exist_ok=True)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", os.path.join(local, "tensorboard"))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    weights_fn = None
    if c.margin_weighting != "none":
        weights_fn = partial(margin_weights, mode=c.margin_weighting, scale=c.margin_scale, lo=c.margin_weight_min,
                             hi=c.margin_weight_max)
    rows = training_rows(_dataset_table(ray.train.get_dataset_shard("train")), pair_types=c.pair_types,
                         weights_fn=weights_fn)
    train_dataset = datasets.Dataset(datasets.table.InMemoryTable(rows))

    history: list[dict] = []
    sync_record: list[dict] = []
    resumed_step = None

    def after_save(ckpt_dir: str) -> None:
        # TensorBoard events so far, next to the checkpoints (rank 0 only writes them).
        tb = os.environ["TENSORBOARD_LOGGING_DIR"]
        if "tensorboard" in c.report_to and os.path.isdir(tb):
            upload_dir(tb, join(c.output, "tensorboard"), cfg.storage)

    callbacks = [RayTrainReport(world_rank=rank, local_rank=local_rank, history=history,
                                report_every=c.ray_report_steps, after_save=after_save,
                                extra_files={RUN_FILE: {"zero_stage": stage, "zero_stage_reason": stage_reason,
                                                        **{k: batch[k] for k in BATCH_KEYS}}})]
    if c.sync_check and world > 1 and c.zero_stage < 3:
        callbacks.append(SyncCheck(sync_record))
    trainer_cls = trainer_class(weighted=weights_fn is not None, group_by_length=c.group_by_length)
    args = dpo_args(c, output_dir=out_dir, world_size=world, on_gpu=on_gpu)
    ref_model = None
    if c.ref_model:
        # Loaded like TRL loads its own reference (after the args: under ZeRO-3 it is partitioned too).
        from trl.trainer.utils import create_model_from_path

        ref_model = create_model_from_path(resolve_model(c.ref_model), **{**(args.model_init_kwargs or {}),
                                                                           "device_map": None})
    trainer = trainer_cls(model=model_path, ref_model=ref_model, args=args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=lora_config(c), callbacks=callbacks)

    # TRL drops pairs whose prompt alone fills max_length; with none left the sampler fails obscurely.
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ConfigError(f"every one of the {rows.num_rows} pairs has a prompt of {c.max_length} tokens or more, "
                          "so nothing is left to train on: raise train.max_length", key="train.max_length")
    timings["trainer_ready"] = time.time()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            with open(os.path.join(ckpt_dir, "trainer_state.json")) as f:
                resumed_step = json.load(f)["global_step"]
            prior = os.path.join(ckpt_dir, METRICS_FILE)
            if os.path.exists(prior):
                with open(prior) as f:
                    history.extend(json.loads(line) for line in f if line.strip())
            log.info("resuming %s from step %s (%s)", ctx.get_experiment_name(), resumed_step, ckpt_dir)
            trainer.train(resume_from_checkpoint=ckpt_dir)
    else:
        trainer.train()

    timings["train_end"] = time.time()
    # save_model is collective under ZeRO-3 (it gathers the partitions); every rank calls it.
    final = os.path.join(local, "final")
    trainer.save_model(final)
    timings["saved"] = time.time()
    summary = {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch, "pairs_trained": kept,
               "pairs_dropped_too_long": rows.num_rows - kept,
               "resumed_from_step": resumed_step, "world_size": world, "on_gpu": on_gpu,
               "zero_stage": stage, "zero_stage_reason": stage_reason, **batch,
               # The measured peak beside the estimate (memory_estimate_bytes, when auto chose the batch).
               "peak_device_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
               "sync_check": sync_record, "timings": {k: round(v - timings["start"], 3) for k, v in timings.items()},
               "history": history}
    if rank == 0:
        if c.lora.enabled and c.lora.merge:
            adapter = os.path.join(local, "adapter")
            os.replace(final, adapter)
            merge_lora(model_path, adapter, final)
            tokenizer.save_pretrained(final)
            os.replace(adapter, os.path.join(final, "adapter"))
        pairs = config["pairs"]
        with open(os.path.join(final, "README.md"), "w") as f:
            f.write(model_card(base_model=c.model, pairs_uri=c.input, recipe=pairs.get("recipe"), pairs=pairs,
                               train_config=c.model_dump(mode="json"), history=history, summary=summary))
        with open(os.path.join(final, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in history)
        # Ray Train's result carries the metrics of the last checkpoint only: the driver reads this.
        with open(os.path.join(final, SUMMARY_FILE), "w") as f:
            json.dump(summary, f)
        upload_dir(final, c.output, cfg.storage)
        after_save(final)
