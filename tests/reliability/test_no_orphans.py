"""A killed run leaves no process behind: `persodpo run` with a vLLM generator (its engine core a
child of a Ray actor, the way ray.data.llm runs it) is killed with its whole process group while
the engine generates. Every process that carries this run's environment (Ray's, the actor's,
vLLM's engine core and workers) must be gone shortly after: an orphaned `VLLM::` process keeps a
core (or a GPU) busy until someone finds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TAG = "PERSODPO_TEST_RUN_TAG"


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get(TAG) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _title(p: psutil.Process) -> str:
    """The process title (vLLM renames its processes), or "" for one that is already gone."""
    try:
        return " ".join(p.cmdline()) or p.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} ppid={p.ppid()} pgid={os.getpgid(p.pid)} {' '.join(p.cmdline())[:120]!r}")
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return out


def test_killing_the_driver_during_vllm_generation_leaves_no_process(tmp_path):
    tag = uuid.uuid4().hex
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["run"] = {"root": str(tmp_path / "root"), "run_id": "orphans", "stages": ["ingest", "generate"]}
    cfg["ray"] = {"num_cpus": 4, "progress_bars": False}
    cfg["generate"]["generators"] = [{
        "name": "tiny-vllm", "backend": "vllm", "model": "tiny:llama", "samples": 8,
        "sampling": {"temperature": 1.0, "seed": 0, "max_tokens": 32},
        "vllm": {"device": "cpu", "max_model_len": 1024, "dtype": "float32", "batch_size": 4}}]
    path = tmp_path / "orphans.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, TAG: tag, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp_path / "run.log", "wb")
    driver = subprocess.Popen([sys.executable, "-m", "persodpo", "run", "--config", str(path)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Wait for the engine to generate: its first finished part is on disk.
        parts = tmp_path / "root" / "runs" / "orphans" / "generate"
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            if list(parts.glob("part-*.parquet")):
                break
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert list(parts.glob("part-*.parquet")), "the engine produced nothing within 600 s"
        engine = sorted({name for name in map(_title, _tagged(tag)) if "VLLM" in name or "EngineCore" in name})
        assert engine, "no vLLM engine process found: the test would not test anything"
        n_tagged = len(_tagged(tag))
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
        killed = time.time()
        deadline = killed + 60
        while time.time() < deadline and _tagged(tag):
            time.sleep(1)
        left = _tagged(tag)
        assert not left, "processes of the killed run survive:\n" + "\n".join(_describe(left))
        print(f"\n{n_tagged} processes of the run (engine: {engine}) all gone "
              f"{time.time() - killed:.1f} s after the driver's process group was killed")
    finally:
        for p in _tagged(tag):  # never leave them to the next test
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()
