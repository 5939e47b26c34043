"""GPU smoke and throughput: TRL DPOTrainer + DeepSpeed ZeRO-2 and ZeRO-3 on one GPU, no Ray.

Model: Qwen2-0.5B's architecture (values below, from its public config.json) with random
weights, in bf16 under DeepSpeed. Tokenizer: persodpo's locally trained byte-level BPE (1,024
tokens, ChatML) while the model keeps Qwen2's 151,936-row vocabulary, so every matrix has the
real 0.5B shape (the LM head costs what it costs in production); only the text -> token ratio
differs from Qwen's tokenizer. Data: pairs built from the bundled FoCus sample with the real
prompt template (persodpo.train.synthetic.focus_pairs), so sequence lengths are realistic.

Each ZeRO stage runs in its own process (one DeepSpeed/NCCL world per process) and prints one
JSON line. Throughput is measured between the 5th and the last step (start-up excluded):

    tokens/s  = non-padding tokens of chosen+rejected sequences per second (TRL's num_tokens)
    MFU       = achieved FLOP/s / peak bf16 dense FLOP/s of the GPU, with
    FLOPs     = 8 * N_body * tokens + 8 * N_head * completion_tokens
                (policy forward+backward 6N, reference forward 2N; N_body = parameters except the
                embedding/LM-head matrix, N_head = that matrix, which TRL's fused LM head applies
                to completion positions only; attention-score FLOPs, ~4*L*s*d per token and
                pass, are not counted)

Run via bench/train_gpu.sh (installs the carried wheels first). For a CPU check of the whole
path: python bench/train_gpu.py --allow-cpu --tiny --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Qwen/Qwen2-0.5B config.json (architecture only; weights are random).
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False,
                 sliding_window=32768, max_window_layers=24, attention_dropout=0.0, initializer_range=0.02)
TINY = dict(QWEN2_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_window_layers=2)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def build_model(out: Path, *, tiny: bool) -> Path:
    """Random Qwen2-0.5B-shaped model + local tokenizer, saved once (bf16 safetensors)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from persodpo.models import train_chat_tokenizer

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = train_chat_tokenizer(out)
    cfg = Qwen2Config(**(TINY if tiny else QWEN2_05B), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()      # the runs are separate processes: leave them the whole GPU
    return out


def run_one(ns) -> dict:
    import torch
    from transformers import AutoTokenizer

    from dpo_direct import init_distributed, run_direct, steady_rate
    from persodpo.config import load_config
    from persodpo.train.data import training_rows
    from persodpo.train.synthetic import easy_pairs, focus_pairs

    on_gpu = torch.cuda.is_available()
    t0 = time.time()
    init_distributed(on_gpu)
    c = load_config(None, [
        f"train.model={ns.model_dir}", f"train.zero_stage={ns.zero}", "train.num_workers=1",
        f"train.precision={'bf16' if on_gpu else 'fp32'}", f"train.per_device_batch_size={ns.batch}",
        "train.gradient_accumulation_steps=1", f"train.max_steps={ns.steps}", "train.logging_steps=1",
        f"train.learning_rate={ns.lr}", "train.warmup_ratio=0.0", f"train.max_length={ns.max_length}",
        "train.report_to=[none]", "train.gradient_checkpointing=false", "train.num_epochs=100",
    ]).train
    pairs = focus_pairs(shifts=(1, 2, 3, 4, 5)) if ns.data == "focus" else easy_pairs(256)
    rows = training_rows(pairs, pair_types=c.pair_types)
    tok = AutoTokenizer.from_pretrained(ns.model_dir)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    res = run_direct(c, rows, ns.model_dir, tok, on_gpu=on_gpu, output_dir=f"/tmp/persodpo-gpu-out-{ns.zero}")
    rate = steady_rate(res["steps"], skip=min(5, len(res["steps"]) - 2))

    # Shares of completion tokens, from the tokenized pairs (the same tokenizer and template).
    prompt_t = completion_t = 0
    for r in rows.to_pylist():
        p = len(tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
        for side in ("chosen", "rejected"):
            full = len(tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=True)["input_ids"])
            full = min(full, ns.max_length)
            prompt_t += min(p, full)
            completion_t += max(full - p, 0)
    completion_share = completion_t / max(prompt_t + completion_t, 1)

    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(ns.model_dir)
    n_head = mcfg.vocab_size * mcfg.hidden_size
    n_total = _param_count(mcfg)
    n_body = n_total - n_head
    flops_per_s = rate["tokens_per_s"] * (8 * n_body + 8 * n_head * completion_share)
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = ns.peak_tflops or peak_tflops(device)
    return {
        "run": "dpo-direct", "zero_stage": ns.zero, "device": device, "torch": torch.__version__,
        "model": "Qwen2-0.5B architecture, random weights" if not ns.tiny else "tiny Qwen2 (CPU check)",
        "params": n_total, "vocab": mcfg.vocab_size, "precision": c.precision if not on_gpu else "bf16",
        "per_device_batch_pairs": ns.batch, "max_length": ns.max_length, "steps": ns.steps,
        "data": ns.data, "pairs": rows.num_rows, "mean_tokens_per_pair": round((prompt_t * 2 + completion_t) / 2 / rows.num_rows, 1),
        "completion_token_share": round(completion_share, 4),
        "steps_per_s": round(rate["steps_per_s"], 4), "tokens_per_s": round(rate["tokens_per_s"], 1),
        "achieved_tflops": round(flops_per_s / 1e12, 2), "peak_bf16_tflops": peak,
        "mfu": round(flops_per_s / (peak * 1e12), 4) if peak else None,
        "flops_formula": "8*N_body*tokens + 8*N_head*completion_tokens (policy fwd+bwd 6N + reference fwd 2N; "
                         "attention scores not counted)",
        "loss_first": res["steps"][0]["loss"], "loss_last": res["steps"][-1]["loss"],
        "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "trainer_init_s": round(res["trainer_init_s"], 1), "wall_s": round(time.time() - t0, 1),
    }


def _param_count(cfg) -> int:
    """Qwen2 parameters from the config (tied embeddings counted once)."""
    d, f, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    attn = d * d + d + 2 * (d * kv + kv) + d * d           # q (bias), k, v (bias), o
    mlp = 3 * d * f
    layer = attn + mlp + 2 * d                               # two RMSNorms
    return v * d * (1 if cfg.tie_word_embeddings else 2) + L * layer + d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (each pair = 2 sequences)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--data", choices=["focus", "easy"], default="focus",
                    help="focus: realistic prompts (bundled sample); easy: the synthetic set any run learns")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 dense peak")
    ap.add_argument("--tiny", action="store_true", help="2-layer model (CPU check of the script)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (gloo, fp32): checks the path only")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--zero", type=int, default=2, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not ns.allow_cpu:
        print(json.dumps({"run": "dpo-direct", "skipped": "no CUDA device (use --allow-cpu for a CPU check)"}))
        return 2
    if ns.run:
        print(json.dumps(run_one(ns)), flush=True)
        return 0

    t0 = time.time()
    model_dir = Path(ns.model_dir or f"/tmp/persodpo-qwen2-05b{'-tiny' if ns.tiny else ''}-random")
    build_model(model_dir, tiny=ns.tiny)
    print(json.dumps({"built_model": str(model_dir), "s": round(time.time() - t0, 1)}), flush=True)
    failed = 0
    for stage in ns.stages:
        cmd = [sys.executable, __file__, "--run", "--zero", str(stage), "--model-dir", str(model_dir),
               "--steps", str(ns.steps), "--batch", str(ns.batch), "--max-length", str(ns.max_length),
               "--lr", str(ns.lr), "--data", ns.data]
        cmd += (["--tiny"] if ns.tiny else []) + (["--allow-cpu"] if ns.allow_cpu else [])
        cmd += ["--peak-tflops", str(ns.peak_tflops)] if ns.peak_tflops else []
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in p.stdout.splitlines() if line.startswith('{"run"')]
        if p.returncode or not lines:
            failed += 1
            print(json.dumps({"run": "dpo-direct", "zero_stage": stage, "failed": p.returncode,
                              "stderr_tail": p.stderr[-3000:]}), flush=True)
        else:
            print(lines[-1], flush=True)
    print(json.dumps({"total_wall_s": round(time.time() - t0, 1), "failed_runs": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
