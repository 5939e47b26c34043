"""The model card (README.md) written next to the trained weights."""

from __future__ import annotations

import json

import yaml

# Metrics shown in the card's table, in this order, when the run logged them.
CARD_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "logps/rejected", "tokens_per_s", "learning_rate", "grad_norm")


def last_values(history: list[dict]) -> dict:
    out: dict = {}
    for m in history:
        out.update({k: v for k, v in m.items() if k in CARD_METRICS})
    return out


def first_values(history: list[dict]) -> dict:
    out: dict = {}
    for m in reversed(history):
        out.update({k: v for k, v in m.items() if k in CARD_METRICS})
    return out


def model_card(*, base_model: str, pairs_uri: str, recipe, pairs: dict, train_config: dict, history: list[dict],
               summary: dict) -> str:
    first, last = first_values(history), last_values(history)
    rows = "\n".join(f"| {k} | {first[k]:.4g} | {last[k]:.4g} |" for k in CARD_METRICS if k in last and k in first)
    from persodpo.hub import hub_dataset_id, model_card_metadata

    dataset = hub_dataset_id(pairs_uri)
    front = yaml.safe_dump(model_card_metadata(base_model=base_model, datasets=[dataset] if dataset else None),
                           sort_keys=False)
    recipes = recipe if isinstance(recipe, str) else ", ".join(map(str, recipe or [])) or "unknown"
    return f"""---
{front.strip()}
---

# DPO fine-tune of {base_model}

Trained by persodpo (TRL DPOTrainer, DeepSpeed ZeRO-{train_config.get('zero_stage')}, Ray Train,
{summary.get('world_size')} workers) on persona-grounded preference pairs.

## Training data
- pairs: `{pairs_uri}`
- recipe: {recipes}
- pairs used: {pairs.get('used')} of {pairs.get('rows')} (by type: {json.dumps(pairs.get('by_type', {}))})
- score margin: min {pairs.get('margin_min')}, mean {pairs.get('margin_mean')}, max {pairs.get('margin_max')}
- pairs stage config hash: {pairs.get('config_hash')}

## Training
- optimizer steps: {summary.get('global_step')}, epochs: {summary.get('epoch')}
- resumed from step: {summary.get('resumed_from_step')}
- margin weighting: {train_config.get('margin_weighting')}

| metric | first log | last log |
|---|---|---|
{rows}

## Configuration (`train` section)
```yaml
{yaml.safe_dump(train_config, sort_keys=True).strip()}
```
"""
