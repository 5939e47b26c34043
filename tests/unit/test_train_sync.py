"""The rank-sync check catches diverged workers (two real gloo processes, no Ray, no DeepSpeed)."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

torch = pytest.importorskip("torch")


def _rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from persodpo.errors import StageError
    from persodpo.train.sync import check_ranks_in_sync, param_digest

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for case in ("in-sync", "drifted"):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
            before = param_digest(model)
            with torch.no_grad():
                model[0].weight.add_(0.5)                   # every rank takes the same "step"
                if case == "drifted" and rank == 1:
                    model[1].bias[0] += 1e-6                # one rank drifts by one tiny update
            try:
                out.put((case, rank, "ok", check_ranks_in_sync(model, 1, before=before)))
            except StageError as exc:
                out.put((case, rank, "diverged", str(exc)))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes() -> dict:
    from tests.support.ports import free_ports

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_ports(1)[0]
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results: dict = {}
    for _ in range(4):
        case, rank, status, detail = out.get(timeout=180)
        results.setdefault(case, {})[rank] = (status, detail)
    for p in procs:
        p.join(30)
    return results


def test_identical_ranks_pass_and_record_their_digests(outcomes):
    res = outcomes["in-sync"]
    assert {s for s, _ in res.values()} == {"ok"}
    record = res[0][1]
    assert record["step"] == 1 and record["digests"][0] == record["digests"][1] and record["changed_since_start"]


def test_one_drifted_parameter_fails_every_rank(outcomes):
    res = outcomes["drifted"]
    assert {s for s, _ in res.values()} == {"diverged"}
    assert "workers diverged at step 1" in res[0][1] and "use_cpu=True" in res[0][1]
