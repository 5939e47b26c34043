"""Length-grouped batches for DPO and the padding they leave (pure functions + a torch Sampler).

TRL pads the chosen and rejected sequences of a micro-batch to the longest of them, so a random
batch of FoCus pairs is mostly padding when lengths vary. transformers 5.19's own
``train_sampling_strategy="group_by_length"`` is not usable here: its ``LengthGroupedSampler``
needs an ``input_ids`` (or ``length``) column that TRL's tokenized pairs do not have, and it draws
its permutation from a generator seeded once (accelerate seeds it from the global RNG) with no
``set_epoch``, so a run resumed in a later epoch would not see the batches the interrupted run
would have seen. :class:`LengthGroupedPairSampler` instead derives each epoch's order from
``seed + epoch`` alone, and the trainer sets the epoch itself (``PersoDPOTrainer._run_epoch``),
because accelerate's ``set_epoch`` does not reach a sampler behind its skip-and-shard wrappers
when several ranks resume mid-epoch.

The order is global (the same on every rank): consecutive ``batch_size`` indices form one global
micro-batch (``per_device_batch_size x world_size``), which accelerate's ``BatchSamplerShard``
splits across ranks exactly as for the default sampler. So a 2-worker run sees the global batches
a 1-worker run with twice the micro-batch sees (the integration tests compare their losses).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

MEGA_BATCHES = 50     # as transformers: sort within groups of up to 50 global batches


def pair_lengths(table: pa.Table, max_length: int | None) -> tuple[list[int], list[int]]:
    """Chosen and rejected sequence lengths (prompt + completion, cut at ``max_length`` as TRL's
    collator cuts them) of TRL's tokenized pairs (prompt_ids, chosen_ids, rejected_ids)."""
    p = pc.list_value_length(table.column("prompt_ids"))
    out = []
    for name in ("chosen_ids", "rejected_ids"):
        n = pc.add(p, pc.list_value_length(table.column(name)))
        if max_length is not None:
            n = pc.min_element_wise(n, max_length)
        out.append(n.to_pylist())
    return out[0], out[1]


def message_pair_lengths(table: pa.Table, tokenizer, max_length: int | None) -> tuple[list[int], list[int]]:
    """Chosen and rejected sequence lengths of pairs still as messages (a pairs table's prompt,
    chosen, rejected): each side with its prompt in the tokenizer's chat template, cut at
    ``max_length``. For estimates made before TRL tokenizes (the padding bench, ``persodpo plan``)."""
    cap = max_length or 10 ** 12

    def n(messages) -> int:
        return min(len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)), cap)

    rows = table.select(["prompt", "chosen", "rejected"]).to_pylist()
    return [n(r["prompt"] + r["chosen"]) for r in rows], [n(r["prompt"] + r["rejected"]) for r in rows]


def padded_share(chosen: Sequence[int], rejected: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions over ``batches`` (lists of pair indices), TRL's layout: each
    batch is 2 x len(batch) rows padded to its longest chosen or rejected sequence."""
    real = total = 0
    for b in batches:
        if not b:
            continue
        longest = max(max(chosen[i], rejected[i]) for i in b)
        real += sum(chosen[i] + rejected[i] for i in b)
        total += 2 * len(b) * longest
    return 1 - real / total if total else 0.0


def grouped_order(lengths: Sequence[int], batch_size: int, seed: int,
                  mega_batches: int = MEGA_BATCHES) -> list[int]:
    """Every index once: a seeded permutation, sorted by length (longest first) within groups
    of ``mega_batches`` global batches, cut into batches whose order is shuffled again, with the
    batch holding the longest pair first (an out-of-memory shows at step 1, not hours in). A last
    partial batch stays last, where the default sampler's remainder would be."""
    import torch

    n = len(lengths)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    mult = max(1, min(mega_batches, n // (batch_size * 4)))
    size = mult * batch_size
    ordered = [i for k in range(0, n, size) for i in sorted(perm[k:k + size], key=lambda i: -lengths[i])]
    full = n // batch_size
    batches = [ordered[k * batch_size:(k + 1) * batch_size] for k in range(full)]
    tail = ordered[full * batch_size:]
    batches = [batches[j] for j in torch.randperm(full, generator=g).tolist()]
    if batches:
        first = max(range(full), key=lambda j: max(lengths[i] for i in batches[j]))
        batches[0], batches[first] = batches[first], batches[0]
    return [i for b in batches for i in b] + tail


def random_order(n: int, seed: int) -> list[int]:
    """What accelerate's SeedableRandomSampler yields for this seed (the default order)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class LengthGroupedPairSampler:
    """torch Sampler over pair indices; the order depends on ``seed + epoch`` only."""

    def __init__(self, lengths: Sequence[int], *, batch_size: int, seed: int, mega_batches: int = MEGA_BATCHES):
        self.lengths, self.batch_size, self.seed, self.mega_batches = list(lengths), batch_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(grouped_order(self.lengths, self.batch_size, self.seed + self.epoch, self.mega_batches))
