"""The judges' budget cap: one ledger shared by every judge actor (a Ray actor), so the cap holds
across judges, actors and machines.

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
    """The shared ledger as a Ray actor (no CPU reserved: it only does arithmetic)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1)(Ledger).remote(cap_usd)
