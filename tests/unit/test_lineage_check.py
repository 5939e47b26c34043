"""Lineage hashes and whole-config checks: pure logic, no Ray."""

from __future__ import annotations

import pytest

from persodpo import lineage
from persodpo import storage as st
from persodpo.check import align_word_limits, check_config, raise_on_problems
from persodpo.cli import default_run_config
from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.manifest import expected_lineage, is_current, stage_manifest


def test_a_chain_changes_with_the_config_or_any_upstream_and_only_then():
    a = lineage.chain("cfg1", {"prompts": "x", "model": "y"})
    assert a == lineage.chain("cfg1", {"model": "y", "prompts": "x"})   # order of roles does not matter
    assert a["hash"] != lineage.chain("cfg2", {"prompts": "x", "model": "y"})["hash"]
    assert a["hash"] != lineage.chain("cfg1", {"prompts": "x2", "model": "y"})["hash"]


def test_an_input_fingerprint_follows_the_content(tmp_path):
    f = tmp_path / "focus.json"
    f.write_text('{"data": []}')
    first = lineage.input_fingerprint(str(f))
    assert first == lineage.input_fingerprint(str(f)) and first.startswith("sha256:")
    f.write_text('{"data": [ ]}')
    assert lineage.input_fingerprint(str(f)) != first
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.csv").write_text("x")
    before = lineage.input_fingerprint(str(d))
    (d / "b.csv").write_text("y")
    assert lineage.input_fingerprint(str(d)) != before


def test_a_manifest_without_lineage_never_matches_one_made_today():
    assert lineage.of_manifest({"config_hash": "abc"}).startswith("legacy-")


def test_ingest_output_is_current_until_its_input_or_settings_change(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("{}")
    cfg = load_config(None, [f"ingest.input={src}", f"ingest.output={tmp_path / 'out'}"])
    out = st.StageOutput(str(tmp_path / "out")).begin()
    out.commit(stage_manifest(cfg, "ingest"))
    assert is_current(str(tmp_path / "out"), cfg, "ingest")
    assert not is_current(str(tmp_path / "out"), load_config(None, [f"ingest.input={src}", "ingest.knowledge=all"]),
                          "ingest")
    src.write_text('{"changed": 1}')
    assert not is_current(str(tmp_path / "out"), cfg, "ingest")
    assert expected_lineage(cfg, "ingest") != lineage.of_output(str(tmp_path / "out"))


def test_the_embedded_default_and_the_shipped_configs_pass_every_check():
    from pathlib import Path

    configs = [default_run_config(), *sorted(str(p) for p in (Path(__file__).parents[2] / "jobs" / "configs").glob("*.yaml"))]
    for path in configs:
        failed = [c for c in check_config(load_config(path)) if not c.ok]
        assert not failed, (path, failed)
    assert all(c.ok for c in check_config(load_config(None)))


def test_a_recipe_weight_that_no_metric_writes_is_caught_naming_the_key():
    cfg = load_config(default_run_config(), ["score.judges=[]"])
    bad = [c for c in check_config(cfg) if not c.ok]
    assert [c.key for c in bad] == ["pairs.persodpo.weights"]
    assert "judge_coherence" in bad[0].detail and "no score.judges" in bad[0].detail
    with pytest.raises(ConfigError, match="pairs.persodpo.weights"):
        raise_on_problems(cfg)
    cfg = load_config(None, ["pairs.recipe=paper-perso"])
    assert [c.key for c in check_config(cfg) if not c.ok] == ["pairs.paper_perso.weights"]


def test_one_word_limit_per_run():
    cfg = align_word_limits(load_config(None, ["generate.word_limit=40"]))
    assert cfg.score.word_limit == cfg.pairs.word_limit == 40
    with pytest.raises(ConfigError, match=r"key 'pairs.word_limit'.*generate.word_limit=40"):
        align_word_limits(load_config(None, ["generate.word_limit=40", "pairs.word_limit=50"]))
    assert align_word_limits(load_config(None, ["generate.word_limit=40", "score.word_limit=40"])).score.word_limit == 40


def test_evaluation_that_would_score_with_nothing_or_clashing_judges_is_caught_naming_the_key():
    ok = [c for c in check_config(load_config(default_run_config())) if c.name == "evaluate columns"]
    assert ok and ok[0].ok and "judge_" in ok[0].detail
    cfg = load_config(default_run_config(), ["evaluate.metrics=[]", "evaluate.judges=false"])
    bad = [c for c in check_config(cfg) if not c.ok]
    assert [(c.name, c.key) for c in bad] == [("evaluate columns", "evaluate.metrics")]
    judge = '{name: j, model: openai/x, api_base: "http://127.0.0.1:9/v1"}'
    cfg = load_config(default_run_config(), [f"evaluate.judges=[{judge}, {judge}]"])
    bad = [c for c in check_config(cfg) if not c.ok]
    assert [(c.name, c.key) for c in bad] == [("evaluate columns", "evaluate.judges")]
    assert "used twice" in bad[0].detail
