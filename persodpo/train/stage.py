"""The train stage: pairs (object storage) -> DPO fine-tuned model, under Ray Train.

Driver side: read and check the pairs (the whole table, before any worker starts), then a
``TorchTrainer`` with workers running :func:`persodpo.train.worker.train_loop`. Output layout::

    OUTPUT/                       a Hugging Face model directory
      config.json, model.safetensors, tokenizer*, chat_template.jinja, README.md (model card)
      metrics.jsonl               every logged step (loss, rewards/*, tokens_per_s, ...)
      tensorboard/                TensorBoard events (report_to includes tensorboard)
      checkpoints/RUN_NAME/       Ray Train storage: checkpoint-0000050/ ... (resumable)
      _manifest.json, _SUCCESS

A run restarted with the same name (by default a hash of the train section and of the pairs'
lineage) resumes from the newest checkpoint under ``checkpoints/RUN_NAME``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid

from persodpo import storage as st
from persodpo.config import PersoDPOConfig, section_hash
from persodpo.errors import ConfigError, InputError, PersoDPOError, StageError
from persodpo.manifest import stage_manifest
from persodpo.train.worker import SUMMARY_FILE

log = logging.getLogger(__name__)

# Fields that do not change what is trained: a restart that changes only these resumes.
_NOT_IN_RUN_NAME = {"run_name", "resume", "max_failures", "report_to", "logging_steps", "keep_checkpoints",
                    "ray_report_steps",
                    "local_dir", "sync_check", "output", "save_steps", "resources_per_worker", "placement_strategy"}


def run_name(cfg: PersoDPOConfig, pairs_lineage: str = "") -> str:
    """The Ray Train run (checkpoint folder) this training resumes: the train settings that change
    what is trained and the lineage of the pairs it reads, so other pairs never resume (or skip to)
    a checkpoint trained on these."""
    if cfg.train.run_name:
        return cfg.train.run_name
    from persodpo.lineage import digest

    return "dpo-" + digest([section_hash(cfg, "train", exclude=_NOT_IN_RUN_NAME), pairs_lineage])[:12]


def check_input(cfg: PersoDPOConfig, ds) -> dict:
    """Check every pair (names part file, pair id and field on error); statistics for the card."""
    from persodpo.train.data import PairStats, check_pairs

    c = cfg.train
    stats, offset = PairStats(), 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=8192):
        check_pairs(batch, source=c.input, need_margin=c.margin_weighting != "none", pair_types=list(c.pair_types),
                    stats=stats, row_offset=offset)
        offset += batch.num_rows
    if stats.used == 0:
        raise InputError(f"no pairs of type(s) {list(c.pair_types)} among {stats.rows} rows", file=c.input,
                         field="pair_type")
    if c.margin_weighting != "none" and not stats.margin_max > 0:
        raise InputError("every margin is 0: margin weighting is undefined", file=c.input, field="margin")
    # auto: the micro-batch is chosen on the workers, at least 1.
    micro = 1 if c.per_device_batch_size == "auto" else c.per_device_batch_size
    if stats.used < c.num_workers * micro:
        raise InputError(f"{stats.used} pairs are fewer than one global batch ({c.num_workers} workers x "
                         f"{micro})", file=c.input)
    return stats.as_dict()


def _check_tokenizer(model_path: str, source: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if not tok.chat_template:
        raise ConfigError(f"{source}: the tokenizer has no chat template; conversational pairs need one",
                          key="train.model")


def _raise_worker_error(exc: BaseException) -> None:
    """Re-raise our own error from a worker (e.g. diverged ranks) as itself, anything else as a
    StageError carrying the end of the worker traceback."""
    failures = getattr(exc, "worker_failures", None) or {}
    for err in failures.values():
        # Ray Train 2.60 wraps a worker's exception in UserExceptionWithTraceback(_base_exc).
        for e in (err, getattr(err, "_base_exc", None), getattr(err, "cause", None)):
            if isinstance(e, PersoDPOError):
                raise e from exc
    if failures:
        rank, err = min(failures.items())
        raise StageError(f"training failed on worker rank {rank}: {str(err)[-4000:]}") from exc
    raise StageError(f"training failed: {str(exc)[-4000:]}") from exc


def _thin(values: list, keep: int = 100) -> list:
    """At most ``keep`` evenly spaced values, always the last (metrics.jsonl has them all)."""
    if len(values) <= keep:
        return values
    step = len(values) / keep
    return [values[int(i * step)] for i in range(keep - 1)] + [values[-1]]


def run_stage(cfg: PersoDPOConfig) -> dict:
    c = cfg.train
    if not c.input:
        raise ConfigError("no pairs URI (use --input or train.input)", key="train.input")
    if not c.output:
        raise ConfigError("no output URI (use --output or train.output)", key="train.output")
    t0 = time.time()
    # Workers run in other directories (Ray sets their cwd): relative local paths would land there.
    cfg = cfg.model_copy(deep=True)
    c = cfg.train
    for key in ("input", "output", "local_dir"):
        value = getattr(c, key)
        if value and "://" not in value:
            setattr(c, key, os.path.abspath(value))
    if "://" not in c.model and os.path.isdir(c.model):
        c.model = os.path.abspath(c.model)
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from persodpo.models import resolve_model
    from persodpo.raycluster import init_ray, read_output
    from persodpo.train.worker import train_loop

    pairs_manifest = st.read_manifest(c.input, cfg.storage)
    from persodpo.lineage import digest, of_manifest, weights_digest

    pairs_lineage = of_manifest(pairs_manifest)
    from persodpo.manifest import model_lineage

    # A start (or reference) model made by a stage, an iterative round's policy, is part of the lineage.
    upstream = {"pairs": pairs_lineage, **model_lineage(cfg, "train")}
    init_ray(cfg.ray, cfg.storage)
    start_path = resolve_model(c.model)
    _check_tokenizer(start_path, c.model)
    # The weights training starts from (a local folder: the start model, or its copy on this node).
    start_digest = weights_digest(start_path, cfg.storage) if os.path.isdir(start_path) else None
    # Materialised on the driver: workers then only fetch blocks, and Ray Data read tasks cannot
    # starve behind the training workers when they hold every CPU (DESIGN.md section 7).
    ds = read_output(c.input, cfg.storage, include_paths=True).materialize()
    pairs = check_input(cfg, ds)
    pairs.update(recipe=pairs_manifest.get("recipe") or sorted(pairs["recipes"]),
                 config_hash=pairs_manifest.get("config_hash"))
    # (The "path" column stays: dropping it here would add a Ray Data task per block that the
    # workers would wait for, on CPUs they hold themselves. training_rows() selects columns.)

    if c.use_gpu is not None:
        use_gpu = c.use_gpu
    else:  # GPU node types the autoscaler can add count, not only the GPUs alive now
        from persodpo.feasibility import connected_cluster_has_gpus

        use_gpu = connected_cluster_has_gpus()
    resources = c.resources_per_worker or ({"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1})
    name = run_name(cfg, digest([pairs_lineage, upstream]) if len(upstream) > 1 else pairs_lineage)
    # resume=True keeps checkpoints/ (a restarted run continues from them); only _SUCCESS and the
    # previous run's summary go, so nothing of an older run can pass for this one's result.
    out = st.StageOutput(c.output, cfg.storage, resume=True).begin()
    out.delete_file(SUMMARY_FILE)
    ckpt_fs, ckpt_path = st.resolve(st.join(c.output, "checkpoints"), cfg.storage)
    run_path = ckpt_path.rstrip("/") + "/" + name
    if not c.resume:
        import pyarrow.fs as pafs

        if ckpt_fs.get_file_info(run_path).type != pafs.FileType.NotFound:
            log.info("train.resume=false: deleting the checkpoints of %s", name)
            ckpt_fs.delete_dir(run_path)
    # Ray Train's print patch also logs what libraries print into a captured stream on purpose
    # (dill disassembles every function datasets fingerprints: thousands of lines per worker).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    local_dir = c.local_dir or os.path.join(tempfile.gettempdir(), "persodpo-train", f"{name}-{uuid.uuid4().hex[:8]}")

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "use_gpu": use_gpu, "local_dir": local_dir,
                           "pairs": pairs},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=c.placement_strategy),
        run_config=RunConfig(name=name, storage_path=ckpt_path,
                             storage_filesystem=ckpt_fs if st.is_s3(c.output) else None,
                             failure_config=FailureConfig(max_failures=c.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=c.keep_checkpoints)),
        datasets={"train": ds},
        # TRL's distributed sampler shards the batches; Ray must not split the data as well.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    log.info("train: %d pairs, %d workers (gpu=%s, ZeRO-%s), run %s -> %s", pairs["used"], c.num_workers, use_gpu,
             c.zero_stage, name, c.output)
    try:
        result = trainer.fit()
    except PersoDPOError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; unwrap ours, name the rest
        _raise_worker_error(exc)
    summary = json.loads(st.read_bytes(st.join(c.output, SUMMARY_FILE), cfg.storage))
    history = summary.pop("history", [])
    losses = [m["loss"] for m in history if "loss" in m]
    tokens_per_s = [m["tokens_per_s"] for m in history if "tokens_per_s" in m]
    checkpoint = result.checkpoint.path if result.checkpoint else None
    fields = dict(run_name=name, pairs_uri=c.input, pairs=pairs, rows=pairs["used"], model=c.model,
                  ref_model=c.ref_model or c.model, start_weights_digest=start_digest,
                  weights_digest=weights_digest(c.output, cfg.storage),
                  checkpoints=st.join(c.output, "checkpoints", name), last_checkpoint=checkpoint,
                  first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                  mean_tokens_per_s=sum(tokens_per_s) / len(tokens_per_s) if tokens_per_s else None,
                  **summary)
    out.commit(stage_manifest(cfg, "train", upstream=upstream, **fields))
    log.info("train: %s steps, loss %s -> %s, model in %s", summary.get("global_step"), fields["first_loss"],
             fields["last_loss"], c.output)
    return {"stage": "train", "output": c.output, "input": c.input, "run_name": name, "n_pairs": pairs["used"],
            "pairs_dropped_too_long": summary.get("pairs_dropped_too_long"),
            "global_step": summary.get("global_step"), "resumed_from_step": summary.get("resumed_from_step"),
            "first_loss": fields["first_loss"], "last_loss": fields["last_loss"], "losses": _thin(losses),
            "mean_tokens_per_s": fields["mean_tokens_per_s"], "sync_check": summary.get("sync_check"),
            "world_size": summary.get("world_size"), "zero_stage": summary.get("zero_stage"),
            "zero_stage_reason": summary.get("zero_stage_reason"),
            **{k: summary.get(k) for k in ("per_device_batch_size", "gradient_accumulation_steps",
                                           "gradient_checkpointing", "batch_reason")},
            "weights_digest": fields["weights_digest"],
            "start_weights_digest": start_digest,
            "wall_time_s": round(time.time() - t0, 2)}
