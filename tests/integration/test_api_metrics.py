"""API requests, errors, tokens and cost show up in Ray's metrics export (Prometheus text) while
a run goes on: a local Ray with its metrics port, an actor pool calling a loopback endpoint
that fails some requests, and the endpoint scraped until the counters hold the expected values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openai_server import OpenAIServer, echo_json
from tests.support.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, re, sys, time, urllib.request
import ray
from persodpo.llm_api import ApiEndpoint, call_dataset

port, api_base = int(sys.argv[1]), sys.argv[2]
ray.init(address="local", num_cpus=4, include_dashboard=False, _metrics_export_port=port, logging_level="ERROR")
ds = ray.data.from_items([{"i": i, "messages": [{"role": "user", "content": f"q{i}" + (" [[fault:500,500]]" if i % 4 == 0 else "")}]}
                          for i in range(12)])
ep = ApiEndpoint(model="openai/loopback", api_base=api_base, concurrency=2, batch_size=3, max_retries=1,
                 input_cost_per_token=1e-6, output_cost_per_token=2e-6)
df = call_dataset(ds, ep, name="gen-x").to_pandas()
want = {"ok": int(df["api_error"].isna().sum()), "error": int(df["api_error"].notna().sum())}
pattern = re.compile(r'^ray_persodpo_api_(requests|tokens|cost_usd)\w*\{([^}]*)\}\s+([0-9.e+-]+)$')
found, deadline = {}, time.time() + 90
while time.time() < deadline:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        m = pattern.match(line)
        if m and 'name="gen-x"' in m.group(2):
            tags = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = m.group(1) + ":" + (tags.get("outcome") or tags.get("direction") or "")
            found[key] = found.get(key, 0.0) + float(m.group(3))
    if found.get("requests:ok") == want["ok"] and found.get("requests:error") == want["error"]:
        break
    time.sleep(2)
print("RESULT " + json.dumps({"want": want, "found": found,
                               "cost": float(df["api_cost_usd"].fillna(0).sum()),
                               "prompt_tokens": int(df["api_prompt_tokens"].fillna(0).sum())}))
"""


def test_requests_errors_tokens_and_cost_reach_the_metrics_export(tmp_path):
    (port,) = free_ports(1)
    with OpenAIServer(echo_json(), retry_after_s=0) as server:
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(port), server.api_base], cwd=REPO, capture_output=True,
                           text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    want, found = out["want"], out["found"]
    assert want == {"ok": 9, "error": 3}                   # rows 0, 4, 8 fail twice: past max_retries=1
    assert found.get("requests:ok") == 9 and found.get("requests:error") == 3, found
    assert found.get("tokens:prompt") == out["prompt_tokens"] > 0
    assert found.get("cost_usd:") == pytest.approx(out["cost"], rel=1e-6)
