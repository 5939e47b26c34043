"""The score section: metrics and judges are configuration, and mistakes name the key."""

import pytest

from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.score.config import ScoreConfig
from persodpo.score.registry import REGISTRY, build_metrics, columns_of, describe


def test_defaults_run_offline_and_cover_three_families():
    cfg = ScoreConfig()
    metrics = build_metrics(cfg)
    assert {m.kind for m in metrics} == {"deterministic", "model"}
    assert all(m.model.startswith("packaged:") for m in metrics if m.kind == "model")
    assert cfg.word_limit == 110 and cfg.judges == []


def test_registry_declares_reads_writes_and_kind():
    kinds = {d["name"]: d["kind"] for d in describe()}
    assert kinds["format"] == "deterministic" and kinds["c_score"] == "model" and kinds["persona_similarity"] == "model"
    metrics = build_metrics(ScoreConfig(metrics=list(REGISTRY)))
    cols = columns_of(metrics)
    assert len(cols) == len(set(cols))
    assert {"format_ok", "length_ok", "c_score", "persona_similarity", "coherence_nli", "ref_chrf"} <= set(cols)
    for m in metrics:
        assert m.reads and m.writes()


def test_unknown_metric_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("score:\n  metrics: [format, bleurt]\n")
    with pytest.raises(ConfigError, match=r"key 'score.metrics'.*unknown metric\(s\) \['bleurt'\]"):
        load_config(f)


def test_judges_and_panel_validate():
    cfg = load_config(None, ["score.judges=[{name: j1, model: openai/gpt-4o-mini, api_key_env: K}]"])
    assert cfg.score.judges[0].params["max_tokens"] == 16 and cfg.score.judges[0].constrained == "json_schema"
    with pytest.raises(ConfigError, match="score.judges.0.name"):
        load_config(None, ["score.judges=[{name: 'GPT 4', model: openai/gpt-4o}]"])
    with pytest.raises(ConfigError, match="used twice"):
        load_config(None, ["score.judges=[{name: a, model: openai/m1}, {name: a, model: openai/m2}]"])
    with pytest.raises(ConfigError, match="no rubric for dimension"):
        load_config(None, ["score.panel.dimensions=[coherence, fluency]"])
    with pytest.raises(ConfigError, match="secrets are never configuration"):
        load_config(None, ["score.judges=[{name: a, model: openai/m, params: {api_key: sk-x}}]"])


def test_evaluate_names_its_own_judges_and_warns_when_it_reuses_a_training_judge():
    from persodpo.evaluate.config import EvaluateConfig
    from persodpo.score.heldout import evaluation_judges, evaluation_metrics, reuse_warning

    train = ScoreConfig(judges=[{"name": "gpt", "model": "openai/gpt-4o-mini"}]).judges
    held = EvaluateConfig(judges=[{"name": "claude", "model": "anthropic/claude-3-5-haiku-latest"}],
                          metrics=["format", "length"])
    assert [j.name for j in evaluation_judges(held.judges, train)] == ["claude"]
    assert [m.name for m in evaluation_metrics(held.metrics, ScoreConfig().metrics)] == ["format", "length"]
    assert reuse_warning(evaluation_judges(held.judges, train), train) is None
    default = EvaluateConfig()
    assert default.judges is True and default.metrics is None
    reused = evaluation_judges(default.judges, train)
    assert [j.name for j in reused] == ["gpt"] and evaluation_judges(False, train) == []
    msg = reuse_warning(reused, train)
    assert "reuses judge(s) ['gpt'] (openai/gpt-4o-mini)" in msg and "evaluate.judges" in msg
    # A renamed copy of a training judge is still that judge.
    renamed = EvaluateConfig(judges=[{"name": "other", "model": "openai/gpt-4o-mini"}]).judges
    assert "['other']" in reuse_warning(renamed, train)
