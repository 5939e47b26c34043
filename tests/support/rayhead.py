"""A real local Ray head with the job server (``ray start --head``), on free ports, for tests of
``ray job submit``. Stopped by killing its own process group: never ``ray stop``, which would kill
every Ray on the machine."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_ports


class RayHead:
    def __init__(self, workdir: str | Path, num_cpus: int = 8):
        self.workdir = Path(workdir)
        self.num_cpus = num_cpus
        self.proc: subprocess.Popen | None = None
        # Ray >= 2.59 enables token auth for local clusters; use our own token, passed by env only.
        self.token = secrets.token_hex(16)

    def start(self, timeout: float = 120) -> "RayHead":
        (gcs, dash, nm, om, client, agent, metrics, rt_env, dash_grpc) = free_ports(9)
        lo = free_ports(1)[0]
        self.gcs_port, self.dashboard_port = gcs, dash
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--node-manager-port={nm}",
               f"--object-manager-port={om}", f"--ray-client-server-port={client}",
               f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={rt_env}", f"--dashboard-agent-grpc-port={dash_grpc}",
               f"--min-worker-port={lo + 1000 if lo < 50000 else 20000}",
               f"--max-worker-port={(lo + 1000 if lo < 50000 else 20000) + 200}",
               "--disable-usage-stats"]
        self.log = open(self.workdir / "ray-head.log", "wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env()}
        env.pop("RAY_ADDRESS", None)
        # Job entrypoints say `python`, as on a cluster node: make it this venv's python.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env, cwd=self.workdir)
        try:
            self._wait_jobs_api(timeout)
        except Exception:
            self.stop()
            raise RuntimeError("ray head did not start: " + (self.workdir / "ray-head.log").read_text()[-3000:])
        return self

    def env(self) -> dict[str, str]:
        """What a client (ray job submit, JobSubmissionClient) needs to talk to this head."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _wait_jobs_api(self, timeout: float) -> None:
        # Plain HTTP with the bearer token: Ray's own client reads RAY_AUTH_MODE once per process,
        # at import, so the test process cannot switch it on after the fact.
        import urllib.request

        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ray start exited")
            req = urllib.request.Request(self.address + "/api/jobs/",
                                         headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(1)
        raise TimeoutError(f"job server not ready: {last}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
