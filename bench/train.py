"""Ray Train overhead: the same tiny DPO run through `persodpo train` (Ray Train, 2 workers) and
through the `deepspeed` launcher directly (2 processes), ZeRO-2 over gloo on CPU.

Both build the trainer with the same code (persodpo.train.dpo.dpo_args, same rows, same seed),
log every step, and run with one thread per worker (Ray sets OMP_NUM_THREADS=1 for a 1-CPU
worker; the launcher run gets the same). Start-up (Ray, data read, process launch, imports,
model load) is excluded: the rate is measured between the 5th and the last logged step.
Target: ray_steps_per_s / direct_steps_per_s >= 0.95.

    PYTHONPATH=$PWD .venv/bin/python bench/train.py [--steps 40] [--pairs 256] [--repeats 2]

Prints one JSON line per run and a final JSON summary. The machine may be shared: runs alternate
(ray, direct, ray, direct, ...) so load changes hit both, and the load average is printed.

Padding (no training, seconds): the share of padded positions in the micro-batches TRL builds,
with the default random order and with ``train.group_by_length`` (persodpo.train.batching), on
the bundled FoCus demo pairs and on any pairs output given with ``--pairs-uri`` (target < 15%):

    PYTHONPATH=$PWD .venv/bin/python bench/train.py --padding [--pairs-uri PAIRS] [--batch 4]

Lengths are those of TRL's tokenization (chat template of prompt + reply, cut at --max-length)
with the demo's model tokenizer (--model); both orders are averaged over 3 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def train_overrides(steps: int, batch: int) -> list[str]:
    return ["train.model=tiny:llama", "train.num_workers=2", f"train.per_device_batch_size={batch}",
            "train.gradient_accumulation_steps=1", f"train.max_steps={steps}", f"train.save_steps={10 * steps}",
            "train.logging_steps=1", "train.learning_rate=0.0005", "train.warmup_ratio=0.0", "train.max_length=128",
            "train.zero_stage=2", "train.group_by_length=false", "train.report_to=[none]", "train.sync_check=false",
            "ray.num_cpus=2",
            "ray.progress_bars=false"]


def run_ray(pairs: str, out: str, overrides: list[str]) -> dict:
    from dpo_direct import steady_rate

    cmd = [sys.executable, "-m", "persodpo", "train", "--input", pairs, "--output", out]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=1800)
    wall = time.time() - t0
    if p.returncode:
        raise SystemExit(f"persodpo train failed:\n{p.stderr[-4000:]}")
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {"mode": "ray", "wall_s": round(wall, 2), **steady_rate(rows)}


def run_direct_launcher(pairs: str, work: str, overrides: list[str]) -> dict:
    from dpo_direct import steady_rate

    result = Path(work, "direct.json")
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port",
           str(_free_port()), str(REPO / "bench" / "train.py"), "--direct-worker", "--pairs", pairs,
           "--result", str(result), "--work", work]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=1800)
    wall = time.time() - t0
    if p.returncode or not result.exists():
        raise SystemExit(f"deepspeed launcher run failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    rows = json.loads(result.read_text())["steps"]
    return {"mode": "deepspeed-launcher", "wall_s": round(wall, 2), **steady_rate(rows)}


def direct_worker(ns) -> None:
    """Runs under the deepspeed launcher (one process per rank)."""
    from transformers import AutoTokenizer

    from dpo_direct import init_distributed, run_direct
    from persodpo import storage as st
    from persodpo.config import load_config
    from persodpo.models import resolve_model
    from persodpo.train.data import training_rows

    init_distributed(on_gpu=False)
    c = load_config(None, ns.set).train
    rows = training_rows(st.read_table(ns.pairs), pair_types=c.pair_types)
    path = resolve_model(c.model)
    res = run_direct(c, rows, path, AutoTokenizer.from_pretrained(path), on_gpu=False,
                     output_dir=os.path.join(ns.work, "direct-trainer"))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(ns.result).write_text(json.dumps(res))


def padding_report(table, name: str, *, model: str, batch: int, workers: int, max_length: int,
                   epochs: int = 3) -> dict:
    """Padded share of the per-rank micro-batches, random vs length-grouped order."""
    from transformers import AutoTokenizer

    from persodpo.models import resolve_model
    from persodpo.train.batching import grouped_order, message_pair_lengths, padded_share, random_order

    chosen, rejected = message_pair_lengths(table, AutoTokenizer.from_pretrained(resolve_model(model)), max_length)
    longest = [max(a, b) for a, b in zip(chosen, rejected)]

    def share(order) -> float:    # each rank pads its own micro-batch of `batch` pairs
        return padded_share(chosen, rejected, [order[k:k + batch] for k in range(0, len(order), batch)])

    seeds = range(42, 42 + epochs)
    rand = sum(share(random_order(len(chosen), s)) for s in seeds) / epochs
    grouped = sum(share(grouped_order(longest, batch * workers, s)) for s in seeds) / epochs
    return {"bench": "train-padding", "pairs": name, "n_pairs": len(chosen), "model": model,
            "per_device_batch": batch, "workers": workers, "max_length": max_length,
            "tokens_min_median_max": [min(longest), sorted(longest)[len(longest) // 2], max(longest)],
            "pad_share_random": round(rand, 4), "pad_share_grouped": round(grouped, 4), "target": 0.15}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pairs-n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--padding", action="store_true", help="padded-token share only (no training)")
    ap.add_argument("--pairs-uri", help="--padding: also this pairs output (local or s3://)")
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct", help="--padding: tokenizer")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)   # from the deepspeed launcher
    ns = ap.parse_args()
    if ns.direct_worker:
        return direct_worker(ns)
    if ns.padding:
        from persodpo import storage as st
        from persodpo.train.synthetic import focus_pairs

        sources = [("bundled-focus-demo", focus_pairs(shifts=(1, 2, 3)))]
        if ns.pairs_uri:
            sources.append((ns.pairs_uri, st.read_table(ns.pairs_uri)))
        for name, table in sources:
            print(json.dumps(padding_report(table, name, model=ns.model, batch=ns.batch, workers=ns.workers,
                                            max_length=ns.max_length)), flush=True)
        return

    from persodpo.train.synthetic import easy_pairs, write_pairs

    work = tempfile.mkdtemp(prefix="persodpo-bench-train-")
    try:
        pairs = write_pairs(os.path.join(work, "pairs"), easy_pairs(ns.pairs_n))
        overrides = train_overrides(ns.steps, ns.batch)
        runs = {"ray": [], "deepspeed-launcher": []}
        for r in range(ns.repeats):
            for mode in ("ray", "deepspeed-launcher"):
                load = os.getloadavg()[0]
                if mode == "ray":
                    res = run_ray(pairs, os.path.join(work, f"ray-{r}"), overrides)
                else:
                    res = run_direct_launcher(pairs, work, overrides)
                res["load_avg_1m_before"] = round(load, 2)
                runs[mode].append(res)
                print(json.dumps(res), flush=True)
        best = {m: max(x["steps_per_s"] for x in v) for m, v in runs.items()}
        print(json.dumps({"bench": "train", "steps": ns.steps, "pairs": ns.pairs_n, "per_worker_batch": ns.batch,
                          "workers": 2, "zero_stage": 2, "ray_steps_per_s": round(best["ray"], 4),
                          "direct_steps_per_s": round(best["deepspeed-launcher"], 4),
                          "ratio": round(best["ray"] / best["deepspeed-launcher"], 4), "target": 0.95,
                          "ratio_per_repeat": [round(a["steps_per_s"] / b["steps_per_s"], 4)
                                               for a, b in zip(runs["ray"], runs["deepspeed-launcher"])],
                          "shared_machine_load_avg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
