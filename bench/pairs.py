"""Benchmark the pairs stage on synthetic scored candidates (target: < 60 s for 1M candidates).

    .venv/bin/python bench/pairs.py                       # 1,000,000 candidates, all four recipes
    .venv/bin/python bench/pairs.py --candidates 200000 --recipes persodpo paper-perso

Inputs are written once under --workdir (not timed): N candidates over N/8 prompts (8
generators per prompt), ~70% valid / 27% fallback / 3% unusable like the authors' data, replies
of 5-120 words, the authors' four metric columns. Each recipe then runs as the real command
(``python -m persodpo pairs``, plots on) in its own process; the stage's own wall time and its
phase timings come from the JSON summary, peak memory from the child's rusage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from persodpo import contracts  # noqa: E402
from persodpo import storage as st  # noqa: E402

GENERATORS = ["gpt-4o-mini", "gpt-4-turbo", "gpt-3.5-turbo", "Llama-3.1-8B-Instruct", "Mistral-7B-Instruct-v0.2",
              "Qwen2-7B-Instruct", "Qwen2-0.5B-Instruct", "gemma-2-9b-it"]
VOCAB = ("the a lighthouse museum visit you love history built years city river old famous tower bridge "
         "church castle park art music travel would like to see it is was in of and for with your").split()


def synth(n_candidates: int, seed: int = 0) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    g = len(GENERATORS)
    n_prompts = n_candidates // g
    n = n_prompts * g
    # A bank of distinct replies, sampled per candidate (text content does not matter to the stage).
    bank = [" ".join(rng.choice(VOCAB, rng.integers(5, 121))) for _ in range(20_000)]
    pids = np.array([f"p_{i:08d}" for i in range(n_prompts)], dtype=object)
    prompt_of = np.repeat(pids, g)
    gens = np.tile(np.array(GENERATORS, dtype=object), n_prompts)
    cids = np.array([f"c_{i:09d}" for i in range(n)], dtype=object)
    status = rng.choice(np.array(["valid", "fallback", "unusable"], dtype=object), size=n, p=[0.70, 0.27, 0.03])
    pick = rng.integers(0, len(bank), n)
    valid, fallback = status == "valid", status == "fallback"
    # Index into per-bank raw outputs: object arrays of shared strings, not n fresh copies.
    raw_valid = np.array(['{"response": "' + t + '"}' for t in bank], dtype=object)
    raw_fallback = np.array(['{"response": "' + t for t in bank], dtype=object)
    raw = np.full(n, "Sorry, I cannot help.", dtype=object)
    raw[valid] = raw_valid[pick[valid]]
    raw[fallback] = raw_fallback[pick[fallback]]
    text = np.array(bank, dtype=object)[pick]
    text[status == "unusable"] = None
    candidates = pa.table({
        "candidate_id": cids, "prompt_id": prompt_of, "generator": gens, "sample_index": np.zeros(n, dtype=np.int32),
        "raw": raw, "text": text, "parse_ok": valid, "parse_status": status,
        "n_tokens": pa.nulls(n, pa.int64()), "latency_s": rng.random(n), "error": pa.nulls(n, pa.string()),
        "template": np.full(n, "persobench-json-v1", dtype=object)}, schema=contracts.CANDIDATES)

    def metric(values):
        return pa.array(np.where(valid, values, np.nan), mask=~valid, type=pa.float64())

    scores = pa.table({
        "candidate_id": cids, "prompt_id": prompt_of, "generator": gens, "score_errors": pa.nulls(n, pa.string()),
        "judge_tokens": pa.nulls(n, pa.int64()), "judge_cost_usd": pa.nulls(n, pa.float64()),
        "coh_unieval": metric(1 - rng.beta(1, 30, n)), "c_score": metric(rng.choice([-1.0, 0.0, 1.0], n, p=[.1, .4, .5])),
        "ue_score": metric(rng.choice([0.0, 1.0, 2.0], n, p=[.8, .1, .1])),
        "persona_distance": metric(rng.normal(0.54, 0.13, n).clip(0, 1))},
        schema=contracts.scores_schema(["coh_unieval", "c_score", "ue_score", "persona_distance"]))
    persona = [f"I like {w}." for w in VOCAB[:5]]
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(VOCAB[i:i + 15])} for i in range(7)]
    prompts = pa.table({
        "prompt_id": pids, "source": np.full(n_prompts, "bench", dtype=object), "dialog_id": pids,
        "turn": np.full(n_prompts, 4, dtype=np.int32), "split": np.full(n_prompts, "train", dtype=object),
        "persona": [persona] * n_prompts, "knowledge": [[]] * n_prompts, "history": [history] * n_prompts,
        "gold": np.full(n_prompts, "gold", dtype=object), "persona_grounding": pa.nulls(n_prompts, pa.list_(pa.bool_())),
        "landmark": pa.nulls(n_prompts, pa.string())}, schema=contracts.PROMPTS)
    return {"prompts": prompts, "candidates": candidates, "scores": scores}


def write(tables: dict[str, pa.Table], root: str, rows_per_part: int = 200_000) -> dict[str, str]:
    uris = {}
    for name, table in tables.items():
        uri = st.join(root, name)
        out = st.StageOutput(uri).begin()
        for start in range(0, table.num_rows, rows_per_part):
            out.write_table(table.slice(start, rows_per_part))
        out.commit({"stage": "bench", "rows": table.num_rows})
        uris[name] = uri
    return uris


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--recipes", nargs="+", default=["persodpo", "paper-length-prior", "paper-perso", "simple"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--target-s", type=float, default=60.0)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-pairs-")
    t0 = time.time()
    uris = {k: st.join(work, k) for k in ("prompts", "candidates", "scores")}
    if not all(st.is_complete(u) for u in uris.values()):     # reuse inputs a previous run wrote
        uris = write(synth(args.candidates), work)
    print(f"inputs: {args.candidates} candidates written to {work} in {time.time() - t0:.1f} s", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for recipe in args.recipes:
        out = st.join(work, "pairs-" + recipe)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "persodpo", "pairs", "--input", uris["scores"], "--candidates",
                            uris["candidates"], "--prompts", uris["prompts"], "--output", out, "--recipe", recipe,
                            "--log-level", "WARNING"], capture_output=True, text=True, env=env, cwd=str(REPO))
        wall = time.time() - t
        if r.returncode != 0:
            sys.exit(f"{recipe} failed:\n{r.stderr}")
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the child (user + system): on a shared machine wall time inflates with
        # the load, CPU time much less; on an idle machine the two are close.
        cpu = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
        res = {"recipe": recipe, "candidates": args.candidates, "pairs": summary["n_pairs"],
               "stage_s": summary["wall_time_s"], "process_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
               "load_avg_1m": round(os.getloadavg()[0], 1),
               "ratio_to_target": round(summary["wall_time_s"] / args.target_s, 3),
               "peak_rss_gib_max_so_far": round(ru.ru_maxrss / 2**20, 2), "timings_s": summary["timings_s"]}
        results.append(res)
        print(json.dumps(res))
    print(json.dumps({"machine": f"{os.cpu_count()} cores (shared)", "results": [
        {k: r[k] for k in ("recipe", "pairs", "stage_s", "process_cpu_s", "ratio_to_target", "load_avg_1m")}
        for r in results]}))


if __name__ == "__main__":
    main()
