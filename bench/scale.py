"""Scale rehearsal (issue 15): the real generate -> score -> pairs stages on N FoCus-shaped prompts
against OpenAI-compatible loopback servers that behave like providers (run by hand, not in CI).

    PYTHONPATH=$PWD .venv/bin/python bench/scale.py --prompts 1000 [--pilot 200] [--root /tmp/persodpo-scale]

- Prompts: the PersoDPO authors' 1,500 training prompts (``../shared/data/persodpo-focus``),
  repeated with new dialog and prompt ids up to N, so lengths are realistic.
- Servers (in a child process, so their work is not charged to the driver): 4 API generators and
  2 judges (x 2 dimensions), each with lognormal latency (median 0.6 s, p99 3 s), 1% 429 with
  Retry-After 1 s, 0.5% 500, an rpm limit (the clients are set to the same rpm), replies drawn from
  the authors' raw outputs, and registered prices.
- Metrics: format, length, persona coverage, reference metrics and all-MiniLM-L6-v2 persona
  similarity; the ``persodpo`` recipe on the judges' columns.

Reported per stage: wall time, rows in/out, requests, requests/s against the ideal
min(in-flight / mean latency, rpm) of the endpoints it used, driver peak RSS, Ray object store peak
(used bytes) and spilled bytes; and the run's cost against the servers' own token accounting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEDIAN_S, P99_S = 0.6, 3.0
SIGMA = math.log(P99_S / MEDIAN_S) / 2.3263          # lognormal: p99 = median * exp(2.3263 sigma)
MEAN_S = MEDIAN_S * math.exp(SIGMA ** 2 / 2)
FAULTS = {"429": 0.01, "500": 0.005}
PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
GENERATORS = ("gen-a", "gen-b", "gen-c", "gen-d")
JUDGES = ("judge-x", "judge-y")
RPM = 6000                                            # per endpoint (100 requests/s)
IN_FLIGHT = {"gen": (1, 32), "judge": (2, 32)}       # (actors, in flight per actor)


# -- the servers' process --------------------------------------------------------------------
def serve(spec_path: str) -> None:
    from tests.support.openai_server import OpenAIServer

    spec = json.loads(Path(spec_path).read_text())
    replies = spec["replies"]

    def gen_responder(seed):
        rng = random.Random(seed)
        return lambda messages, body: rng.choice(replies)

    def judge_responder(messages, body):
        return json.dumps({"score": 1 + sum(map(ord, messages[-1]["content"][-40:])) % 5})

    def billed_tokens(messages, text):
        # A provider bills with its tokenizer; litellm counts with the same one for OpenAI-style
        # models (tiktoken), which is also what `persodpo plan` counts with.
        import litellm

        return (litellm.token_counter(model="gpt-4o", messages=messages),
                litellm.token_counter(model="gpt-4o", text=text, count_response_tokens=True))

    servers = {}
    for i, name in enumerate([*GENERATORS, *JUDGES]):
        servers[name] = OpenAIServer(gen_responder(i) if name.startswith("gen") else judge_responder,
                                     latency_fn=lambda rng: min(30.0, rng.lognormvariate(math.log(MEDIAN_S), SIGMA)),
                                     fault_mix=FAULTS, seed=i, retry_after_s=1, rpm_limit=RPM, model_name=name,
                                     token_counter=billed_tokens).start()
    Path(spec["ports"]).write_text(json.dumps({n: s.api_base for n, s in servers.items()}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    Path(spec["stats"]).write_text(json.dumps({n: {"stats": dict(s.stats), "times": s.times} for n, s in servers.items()}))
    os._exit(0)


# -- the driver ------------------------------------------------------------------------------
class Sampler:
    """Driver RSS and Ray object store use, sampled every 0.5 s while a stage runs."""

    def __init__(self):
        self.rss = self.store = 0
        self.cpu0 = _cpu_times()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import ray

        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.rss = max(self.rss, int(line.split()[1]) * 1024)
            if ray.is_initialized():
                try:
                    total = ray.cluster_resources().get("object_store_memory", 0)
                    free = ray.available_resources().get("object_store_memory", total)
                    self.store = max(self.store, int(total - free))
                except Exception:  # noqa: BLE001 - a sample missed is not a result
                    pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        busy, total = (b - a for a, b in zip(self.cpu0, _cpu_times()))
        self.cpu_busy = busy / total if total else None    # share of the machine's CPU time in use


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def spilled_bytes() -> int | None:
    import re

    try:
        import ray
        from ray._private.internal_api import memory_summary

        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:  # noqa: BLE001
        return None
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) * 1024 * 1024 if m else 0   # the summary has no "Spilled" line until something spilled


def scaled_prompts(authors: str, n: int, uri: str) -> tuple[int, list[str]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from persodpo import storage as st
    from persodpo.ingest.authors import read_authors

    tables = read_authors(authors)
    base = tables["prompts"].filter(pc.equal(tables["prompts"].column("split"), "train"))
    reps = []
    for k in range(math.ceil(n / base.num_rows)):
        t = base
        for col in ("prompt_id", "dialog_id"):
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pc.binary_join_element_wise(t.column(col), pa.scalar(f"r{k}"), "-"))
        reps.append(t)
    table = pa.concat_tables(reps).slice(0, n)
    out = st.StageOutput(uri).begin()
    for start in range(0, table.num_rows, 5000):
        out.write_table(table.slice(start, 5000))
    out.commit({"stage": "ingest", "rows": table.num_rows, "source": "bench-scale"})
    return table.num_rows, authors_replies(tables)


def authors_replies(tables) -> list[str]:
    """The authors' raw outputs, which the generator servers answer with (realistic lengths)."""
    return tables["candidates"].column("raw").drop_null().to_pylist()


def config(root: str, prompts: str, ports: dict):
    from persodpo.config import load_config

    cfg = load_config(None, [f"run.root={root}", "ray.num_cpus=8", "ray.progress_bars=false"])
    actors, flight = IN_FLIGHT["gen"]
    gens = [{"name": g, "backend": "api", "model": f"openai/{g}", "samples": 1,
             "sampling": {"temperature": 0.7, "seed": 0, "max_tokens": 200},
             "api": {"api_base": ports[g], "concurrency": actors, "max_in_flight": flight, "batch_size": 64,
                     "rpm": RPM, "max_retries": 3, "timeout_s": 60, **PRICES}} for g in GENERATORS]
    actors, flight = IN_FLIGHT["judge"]
    judges = [{"name": j.replace("-", ""), "model": f"openai/{j}", "api_base": ports[j], "concurrency": actors,
               "max_in_flight": flight, "batch_size": 64, "rpm": RPM, "max_retries": 3, "timeout_s": 60,
               "constrained": "none", **PRICES} for j in JUDGES]
    out = f"{root}/runs/scale"
    cfg.generate = cfg.generate.model_validate({"input": prompts, "output": f"{out}/generate", "generators": gens,
                                                 "template": "persobench-json-v1", "word_limit": 110,
                                                 "rows_per_part": 5000})
    cfg.score = cfg.score.model_validate({
        "input": f"{out}/generate", "prompts": prompts, "output": f"{out}/score", "word_limit": 110,
        "metrics": ["format", "length", "persona_coverage", "reference",
                    {"name": "persona_similarity", "model": "packaged:all-minilm-l6-v2"}],
        "judges": judges, "panel": {"dimensions": ["coherence", "personalization"]}})
    cfg.pairs = cfg.pairs.model_validate({
        "input": f"{out}/score", "candidates": f"{out}/generate", "prompts": prompts, "output": f"{out}/pairs",
        "word_limit": 110, "html_max_pairs": 0,
        "persodpo": {"weights": {"judge_coherence": 1.0, "judge_personalization": 1.0, "persona_similarity": 0.5}}})
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--root", default=None)
    ap.add_argument("--authors", default=str(ROOT.parent / "shared" / "data" / "persodpo-focus"))
    ap.add_argument("--pilot", type=int, default=0, help="first plan the run from a pilot on this many prompts "
                    "(persodpo plan --pilot) and report predicted vs measured cost and wall time")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pilot-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve(a.serve)
    if not Path(a.authors, "prompts").is_dir():
        sys.exit(f"skipped: the authors' data is not at {a.authors}")
    root = a.root or tempfile.mkdtemp(prefix="persodpo-scale-")
    prompts = f"{root}/runs/scale/prompts"
    if a.pilot_out:
        return pilot_child(a, root, prompts)
    t0 = time.time()
    n, replies = scaled_prompts(a.authors, a.prompts, prompts)
    from persodpo.generate.stage import run_stage as generate
    from persodpo.pairs.stage import run_stage as pairs
    from persodpo.score.stage import run_stage as score

    planned = None
    if a.pilot:
        # As `persodpo plan --pilot` then `persodpo run`: the pilot in a process (and Ray) of its
        # own, so the run below starts as cold as a real one and its driver RSS is the run's alone.
        out = Path(root, "pilot-plan.json")
        subprocess.run([sys.executable, __file__, "--prompts", str(n), "--pilot", str(a.pilot), "--root", root,
                        "--authors", a.authors, "--pilot-out", str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        planned = json.loads(out.read_text())
        print(json.dumps({"plan": planned}), flush=True)
    child, ports, stats_path = start_servers(replies)
    cfg = config(root, prompts, ports)

    rows = {}
    try:
        for name, fn in (("generate", generate), ("score", score), ("pairs", pairs)):
            with Sampler() as s:
                t = time.time()
                summary = fn(cfg)
                end = time.time()
            rows[name] = {"start": t, "end": end, "summary": summary, "rss": s.rss, "store": s.store,
                          "spilled": spilled_bytes(), "cpu_busy": s.cpu_busy}
            print(f"{name}: {rows[name]['end'] - t:.1f} s", flush=True)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
    served = json.loads(Path(stats_path).read_text())

    def in_window(names, r):
        return sum(sum(r["start"] <= x <= r["end"] for x in served[nm]["times"]) for nm in names)

    report = {"prompts": n, "median_latency_s": MEDIAN_S, "mean_latency_s": round(MEAN_S, 3), "stages": {}}
    for name, r in rows.items():
        wall = r["end"] - r["start"]
        names = GENERATORS if name == "generate" else JUDGES if name == "score" else ()
        kind = "gen" if name == "generate" else "judge"
        reqs = in_window(names, r)
        ideal = sum(min(IN_FLIGHT[kind][0] * IN_FLIGHT[kind][1] / MEAN_S, RPM / 60) for _ in names)
        s = r["summary"]
        report["stages"][name] = {
            "wall_s": round(wall, 1), "s_per_prompt": round(wall / n, 5),
            "rows_out": s.get("rows", s.get("n_scored", s.get("n_pairs"))), "requests": reqs,
            "requests_per_s": round(reqs / wall, 2) if names else None,
            "ideal_requests_per_s": round(ideal, 2) if names else None,
            "share_of_ideal": round(reqs / wall / ideal, 3) if names else None,
            "driver_peak_rss_mb": round(r["rss"] / 2 ** 20), "object_store_peak_mb": round(r["store"] / 2 ** 20),
            "spilled_mb": None if r["spilled"] is None else round(r["spilled"] / 2 ** 20),
            "cpu_busy_share": None if r["cpu_busy"] is None else round(r["cpu_busy"], 3),
            "cost_usd": s.get("cost_usd")}
    billed = sum(v["stats"].get("prompt_tokens", 0) * PRICES["input_cost_per_token"]
                 + v["stats"].get("completion_tokens", 0) * PRICES["output_cost_per_token"] for v in served.values())
    run_cost = sum(float(r["summary"].get("cost_usd") or 0) for r in rows.values())
    g = rows["generate"]["summary"]
    report.update({"candidates": g["rows"], "candidate_errors": g["errors"], "rows_lost": n * len(GENERATORS) - g["rows"],
                   "scored": rows["score"]["summary"].get("n_scored"), "pairs": rows["pairs"]["summary"].get("n_pairs"),
                   "run_cost_usd": round(run_cost, 6), "servers_billed_usd": round(billed, 6),
                   "server_requests": {k: v["stats"].get("requests") for k, v in served.items()},
                   "server_faults": {k: {f: v["stats"].get(f, 0) for f in ("429", "500", "over_quota")}
                                     for k, v in served.items()},
                   "cpus": os.cpu_count(), "total_s": round(time.time() - t0, 1)})
    if planned:
        report["plan_vs_measured"] = {
            st: {"predicted_cost_usd": planned[st]["cost_usd"], "measured_cost_usd": rows[st]["summary"].get("cost_usd"),
                 "predicted_wall_s": planned[st]["wall_s"], "measured_wall_s": report["stages"][st]["wall_s"],
                 "predicted_requests": planned[st]["requests"], "measured_requests": report["stages"][st]["requests"]}
            for st in ("generate", "score")}
        report["pilot"] = {k: planned[k] for k in ("pilot_prompts", "pilot_s")}
    print(json.dumps(report, indent=1))


def start_servers(replies: list[str]) -> tuple[subprocess.Popen, dict, str]:
    """The loopback servers in a child process: (process, ports by endpoint, path of its stats)."""
    work = Path(tempfile.mkdtemp(prefix="persodpo-scale-servers-"))
    spec = {"replies": replies, "ports": str(work / "ports.json"), "stats": str(work / "stats.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "spec.json")],
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    while not Path(spec["ports"]).exists():
        time.sleep(0.2)
    return child, json.loads(Path(spec["ports"]).read_text()), spec["stats"]


def pilot_child(a, root: str, prompts: str) -> None:
    """The pilot's own process: servers of its own (the run's billing is then the run's alone)."""
    from persodpo.ingest.authors import read_authors

    child, ports, _ = start_servers(authors_replies(read_authors(a.authors)))
    try:
        planned = pilot_plan(config(root, prompts, ports), root, a.pilot, prompts)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
    Path(a.pilot_out).write_text(json.dumps(planned))


def pilot_plan(cfg, root: str, n_pilot: int, prompts: str) -> dict:
    """``persodpo plan --pilot N`` on the rehearsal: generate and score for real on the first N
    prompts (own outputs and judge cache), then the plan of the whole run calibrated from them."""
    import shutil

    from persodpo import storage as st
    from persodpo.generate.stage import run_stage as generate
    from persodpo.plan import pilot_measurements, plan_generate, plan_score
    from persodpo.score.stage import run_stage as score

    out = f"{root}/runs/scale-pilot"
    shutil.rmtree(out, ignore_errors=True)
    c = cfg.model_copy(deep=True)
    c.generate.output, c.generate.max_prompts = f"{out}/generate", n_pilot
    c.score.input, c.score.output = c.generate.output, f"{out}/score"
    t = time.time()
    measured = pilot_measurements({"generate": generate(c), "score": score(c)}, c.storage)
    pilot_s = round(time.time() - t, 1)
    rows = st.read_table(prompts).to_pylist()
    gen_plan, cands = plan_generate(cfg, rows, pilot=measured)
    score_plan = plan_score(cfg, cands, cfg.score.judges, pilot=measured)
    return {"pilot_prompts": n_pilot, "pilot_s": pilot_s, "measured": measured,
            "generate": gen_plan.as_dict(), "score": score_plan.as_dict()}


if __name__ == "__main__":
    main()
