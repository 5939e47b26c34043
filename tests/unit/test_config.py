"""One typed config: YAML + dotted overrides; unknown keys and wrong types name the key."""

import pytest

from persodpo.config import PersoDPOConfig, apply_overrides, load_config, section_hash
from persodpo.errors import ConfigError


def test_defaults_are_valid():
    cfg = load_config(None)
    assert isinstance(cfg, PersoDPOConfig)
    assert cfg.ingest.source == "focus"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest:\n  source: persobench\n  max_dialogs: 3\nray:\n  num_cpus: 4\n")
    cfg = load_config(p, ["ingest.max_dialogs=7", "run.run_id=abc"])
    assert cfg.ingest.source == "persobench"
    assert cfg.ingest.max_dialogs == 7
    assert cfg.ray.num_cpus == 4
    assert cfg.run.run_id == "abc"


@pytest.mark.parametrize("yaml_text, overrides, key", [
    ("ingest:\n  sorce: focus\n", [], "ingest.sorce"),
    ("", ["ray.num_cpu=3"], "ray.num_cpu"),
    ("ray:\n  num_cpus: many\n", [], "ray.num_cpus"),
    ("", ["ingest.max_dialogs=0"], "ingest.max_dialogs"),
    ("nosuchsection: {}\n", [], "nosuchsection"),
    ("", ["ingest.source=csv"], "ingest.source"),
])
def test_errors_name_the_key(tmp_path, yaml_text, overrides, key):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(p, overrides)
    assert f"'{key}'" in str(err.value)
    assert str(p) in str(err.value)


def test_bad_yaml_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(p)
    assert str(p) in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/c.yaml")


def test_override_syntax_and_list_items():
    data = {"a": [{"b": 1}, {"b": 2}]}
    apply_overrides(data, ["a.1.b=5", "c.d=[1, 2]", "e=true"])
    assert data == {"a": [{"b": 1}, {"b": 5}], "c": {"d": [1, 2]}, "e": True}
    with pytest.raises(ConfigError, match="no list item"):
        apply_overrides({"a": [1]}, ["a.3=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


def test_section_hash_tracks_its_section_only():
    a = load_config(None)
    b = load_config(None, ["ingest.max_dialogs=2"])
    c = load_config(None, ["ray.num_cpus=3"])
    assert section_hash(a, "ingest") == section_hash(c, "ingest")
    assert section_hash(a, "ingest") != section_hash(b, "ingest")
