"""Are the data-parallel ranks holding the same weights? (torch only, no transformers)

Under data parallelism (DDP, ZeRO-1/2) every rank holds the full, identical weights after each
optimizer step. A difference means the gradients were not averaged (e.g. a CPU run without
``use_cpu=True``, DESIGN.md section 7), a failure that is otherwise silent.
"""

from __future__ import annotations

import hashlib

from persodpo.errors import StageError


def param_digest(model, max_elements: int = 1 << 20) -> str:
    """A hash of (a strided sample of) every parameter's exact bits, identical iff ranks agree."""
    import torch

    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    stride = max(1, total // max_elements)
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in params:
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[::stride].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def check_ranks_in_sync(model, step: int, *, before: str | None = None) -> dict:
    """All-gather every rank's digest (a collective: every rank calls it); StageError if they differ."""
    import torch.distributed as dist

    mine = param_digest(model)
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, mine)
    record = {"step": step, "digests": digests, "changed_since_start": mine != before}
    if len(set(digests)) > 1:
        raise StageError(f"workers diverged at step {step}: parameter digests per rank {digests}. Gradients are "
                         "not being averaged across workers (on CPU, DPOConfig(use_cpu=True) is required)")
    return record
