"""A synthetic pairs table with an obvious preference, for tests, benchmarks and smoke runs.

Chosen is always the same polite sentence, rejected is random letters: any working DPO run
learns this in a few steps (the loss must fall and the reward accuracy rise), a broken one does
not. Rows follow the pairs contract (persodpo.contracts.PAIRS) exactly.
"""

from __future__ import annotations

import random

import pyarrow as pa

from persodpo.contracts import PAIRS, candidate_id, pair_id, prompt_id

CHOSEN = "Thank you for asking! I am happy to help you with that."
TOPICS = ("hiking", "music", "cooking", "travel", "painting", "football", "reading", "the sea", "castles",
          "museums", "gardens", "mountains", "rivers", "bridges", "cats", "history")


def easy_pairs(n: int = 32, *, seed: int = 0, recipe: str = "synthetic-easy", rejected_words: int = 8) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pid = prompt_id("synthetic", f"d{seed}-{i}", 0)
        topic = TOPICS[i % len(TOPICS)]
        junk = " ".join("".join(rng.choice("qxzjkvwy") for _ in range(rng.randint(2, 6)))
                        for _ in range(rng.randint(rejected_words // 2, rejected_words)))
        cc, rc = candidate_id(pid, "polite"), candidate_id(pid, "noise")
        score_c = round(rng.uniform(0.6, 1.0), 4)
        score_r = round(rng.uniform(0.0, 0.5), 4)
        rows.append({
            "pair_id": pair_id(recipe, cc, rc), "prompt_id": pid,
            "prompt": [{"role": "system", "content": "You are a friendly assistant."},
                       {"role": "user", "content": f"Tell me something about {topic}, please."}],
            "chosen": [{"role": "assistant", "content": CHOSEN}],
            "rejected": [{"role": "assistant", "content": junk}],
            "chosen_candidate_id": cc, "rejected_candidate_id": rc,
            "chosen_generator": "polite", "rejected_generator": "noise",
            "score_chosen": score_c, "score_rejected": score_r, "margin": round(score_c - score_r, 4),
            "pair_type": "content" if i % 4 else "format", "recipe": recipe,
        })
    return pa.Table.from_pylist(rows, schema=PAIRS)


def write_pairs(uri: str, table: pa.Table, storage=None, *, parts: int = 2) -> str:
    """Write ``table`` as a complete pairs stage output (parts + manifest + _SUCCESS)."""
    from persodpo.storage import StageOutput

    out = StageOutput(uri, storage).begin()
    step = max(1, -(-table.num_rows // parts))
    for start in range(0, table.num_rows, step):
        out.write_table(table.slice(start, step))
    recipes = sorted(set(table.column("recipe").to_pylist()))
    out.commit({"stage": "pairs", "rows": table.num_rows, "recipe": recipes[0] if len(recipes) == 1 else recipes,
                "config_hash": "synthetic"})
    return uri


def focus_pairs(*, shifts: tuple[int, ...] = (1,), template: str = "persobench-json-v1",
                recipe: str = "bundled-gold-vs-other-turn") -> pa.Table:
    """Pairs with realistic prompts from the bundled FoCus sample: the real prompt template, the
    gold reply as chosen and another turn's gold reply as rejected (one pair per turn and shift).
    For benchmarks and smoke runs that need production-like sequence lengths, not for quality."""
    import json

    from persodpo.ingest.focus import read_focus
    from persodpo.ingest.stage import bundled_sample
    from persodpo.prompting import build_messages

    prompts = read_focus(bundled_sample())[0].to_pylist()
    rows = []
    for shift in shifts:
        for i, p in enumerate(prompts):
            other = prompts[(i + shift) % len(prompts)]
            cc, rc = candidate_id(p["prompt_id"], "gold"), candidate_id(p["prompt_id"], f"gold-of-{other['prompt_id']}")
            rows.append({
                "pair_id": pair_id(recipe, cc, rc), "prompt_id": p["prompt_id"],
                "prompt": build_messages(p, template),
                "chosen": [{"role": "assistant", "content": json.dumps({"response": p["gold"]})}],
                "rejected": [{"role": "assistant", "content": json.dumps({"response": other["gold"]})}],
                "chosen_candidate_id": cc, "rejected_candidate_id": rc,
                "chosen_generator": "gold", "rejected_generator": "gold-other-turn",
                "score_chosen": 1.0, "score_rejected": 0.5, "margin": 0.5, "pair_type": "content", "recipe": recipe,
            })
    return pa.Table.from_pylist(rows, schema=PAIRS)
