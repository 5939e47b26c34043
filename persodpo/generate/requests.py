"""Prompt rows -> generation requests, one per (prompt, generator, sample): pure functions over
Arrow batches, used by both backends.

A request carries its deterministic ``candidate_id`` from the start, so a resumed run can drop
the requests whose candidates an interrupted run already wrote, and its own ``seed`` derived
from (base seed, prompt, generator, sample), so each sample of a prompt differs and a rerun
samples the same thing whatever the batch it lands in.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from persodpo import contracts
from persodpo.prompting import build_messages


def light_map() -> dict:
    """Ray Data options of the light per-row steps (building requests, shaping rows): two tasks at
    a time per generator are plenty (building a request takes about 25 us of CPU: 40,000 requests/s
    per task on the authors' prompts, far above any endpoint's rate), and every extra worker process
    costs a Python start-up that competes with the engines on small machines. Each worker caches
    what it loads (tokenizer)."""
    from ray.data import TaskPoolStrategy

    return {"num_cpus": 0.25, "compute": TaskPoolStrategy(size=2)}


REQUESTS = pa.schema([
    ("candidate_id", pa.string()),
    ("prompt_id", pa.string()),
    ("generator", pa.string()),
    ("sample_index", pa.int32()),
    ("template", pa.string()),
    ("messages", contracts.MESSAGES),
    ("seed", pa.int64()),
])


def sample_seed(base: int | None, prompt_id: str, generator: str, sample_index: int) -> int | None:
    if base is None:
        return None
    blob = f"{base}\x1f{prompt_id}\x1f{generator}\x1f{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def build_requests(batch: pa.Table, *, generator: str, samples: int, template: str, word_limit: int,
                   seed: int | None, skip_ids: frozenset[str] | set[str] = frozenset(),
                   only_prompts: frozenset[str] | None = None) -> pa.Table:
    """Every prompt of ``batch`` (those in ``only_prompts`` when given) x ``samples`` as request
    rows, minus candidates in ``skip_ids``."""
    cols = {f.name: [] for f in REQUESTS}
    for row in batch.to_pylist():
        pid = row["prompt_id"]
        if only_prompts is not None and pid not in only_prompts:
            continue
        messages = None
        for k in range(samples):
            cid = contracts.candidate_id(pid, generator, k)
            if cid in skip_ids:
                continue
            if messages is None:
                messages = build_messages(row, template, word_limit)
            cols["candidate_id"].append(cid)
            cols["prompt_id"].append(pid)
            cols["generator"].append(generator)
            cols["sample_index"].append(k)
            cols["template"].append(template)
            cols["messages"].append(messages)
            cols["seed"].append(sample_seed(seed, pid, generator, k))
    return pa.table(cols, schema=REQUESTS)


def planned_ids(prompt_ids: list[str], generator: str, samples: int) -> list[str]:
    """Candidate ids a generator will produce for these prompts (to plan a resumed run)."""
    return [contracts.candidate_id(p, generator, k) for p in prompt_ids for k in range(samples)]
