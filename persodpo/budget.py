"""Budget caps for paid requests: one ledger shared by every actor that spends from it (a Ray
actor), so the cap holds across actors and machines. The judges' panel has one
(``score.panel.budget_usd``); API generation has one for all its generators
(``generate.budget_usd``) and one per generator (``generate.generators[].budget_usd``).

A request first *reserves* an upper bound of its cost (prompt tokens estimated with a safety
factor, completion at ``max_tokens``); the ledger grants it only if spent + outstanding
reservations + this one stay within the cap. After the response the reservation is *settled*
with the real cost litellm reported. So the cap is never crossed as long as the estimate is an
upper bound, and when it is not (a provider counting more tokens than estimated) the overrun is
counted and reported, never hidden.
"""

from __future__ import annotations


class Ledger:
    def __init__(self, cap_usd: float):
        self.cap = float(cap_usd)
        self.spent = 0.0
        self.reserved = 0.0
        self.granted = 0
        self.refused = 0
        self.overruns = 0

    def reserve(self, amount: float) -> bool:
        amount = max(0.0, float(amount))
        if self.spent + self.reserved + amount > self.cap:
            self.refused += 1
            return False
        self.reserved += amount
        self.granted += 1
        return True

    def settle(self, reserved: float, actual: float) -> None:
        reserved, actual = max(0.0, float(reserved)), max(0.0, float(actual))
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual
        if actual > reserved:
            self.overruns += 1

    def state(self) -> dict:
        return {"cap_usd": self.cap, "spent_usd": round(self.spent, 8), "reserved_usd": round(self.reserved, 8),
                "granted": self.granted, "refused": self.refused, "overruns": self.overruns}


def ledger_actor(cap_usd: float):
    """The shared ledger as a Ray actor (no CPU reserved: it only does arithmetic), on the driver's
    node: a lost spot worker must not take what was spent with it."""
    import ray

    from persodpo.raycluster import on_driver_node

    return ray.remote(num_cpus=0, max_concurrency=1)(Ledger).options(
        scheduling_strategy=on_driver_node()).remote(cap_usd)


def worst_case_cost(model: str, messages: list[dict], max_tokens: int, safety: float = 1.25) -> float:
    """An upper bound of one request's cost in USD from litellm's prices (or the prices the config
    registered): the prompt's tokens with a margin, and ``max_tokens`` of completion."""
    import litellm

    try:
        n_in = litellm.token_counter(model=model, messages=messages)
    except Exception:  # noqa: BLE001 - no tokenizer for this model: characters bound tokens
        n_in = sum(len(str(m.get("content", ""))) for m in messages)
    n_in = int(n_in * safety) + 16
    p, c = litellm.cost_per_token(model=model, prompt_tokens=n_in, completion_tokens=int(max_tokens))
    return float(p) + float(c)


async def reserve_all(ledgers: list, amount: float) -> bool:
    """Reserve ``amount`` on every ledger, or on none: a refusal by one releases the others."""
    granted = []
    for led in ledgers:
        if await led.reserve.remote(amount):
            granted.append(led)
        else:
            for g in granted:
                await g.settle.remote(amount, 0.0)
            return False
    return True
