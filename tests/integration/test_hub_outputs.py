"""The pairs folder is a Hub dataset repository as it is: README.md with the Hub's YAML front
matter (checked against the metadata fields the Hub and `datasets` define), Parquet under data/,
`datasets.load_dataset(PAIRS_DIR)` loads the train split; `persodpo push` validates its target and
lists what it would upload (dry run: nothing here ever contacts the Hub)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.hub import card_front_matter, size_category
from persodpo.pairs.config import AUTHORS_PERSODPO_WEIGHTS
from persodpo.pairs.stage import run_stage
from tests.unit.test_pairs_stage import write_inputs

# The Hub's task ids this card uses (huggingface.co/tasks; the list is not shipped offline).
HUB_TASKS = {"text-generation", "text-classification", "question-answering", "summarization", "translation"}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    uris = write_inputs(root)
    out = root / "pairs"
    run_stage(load_config(None, [f"pairs.input={uris['scores']}", f"pairs.candidates={uris['candidates']}",
                                 f"pairs.prompts={uris['prompts']}", f"pairs.output={out}", "pairs.plots=false",
                                 "pairs.persodpo.min_margin=0.1", "pairs.rows_per_part=3",
                                 f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}"]))
    return out


def test_layout_parts_under_data_listed_by_the_manifest(pairs_dir):
    manifest = st.read_manifest(str(pairs_dir))
    assert manifest["parts"] and all(p.startswith("data/train-") and p.endswith(".parquet") for p in manifest["parts"])
    assert sorted(str(p.relative_to(pairs_dir)) for p in (pairs_dir / "data").iterdir()) == sorted(manifest["parts"])
    assert "README.md" in manifest["files"] and "data_card.md" in manifest["files"]
    # what train and the other readers use: only the manifest's parts
    assert st.read_table(str(pairs_dir)).num_rows == manifest["rows"] > 3


def test_card_yaml_uses_the_hubs_metadata_fields(pairs_dir):
    import datasets
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    text = (pairs_dir / "README.md").read_text()
    meta = card_front_matter(text)
    resources = Path(datasets.__file__).parent / "utils" / "resources"
    assert set(meta) <= {"license", "license_name", "language", "task_categories", "tags", "size_categories",
                         "pretty_name", "configs"}
    card = DatasetCard(text)
    assert isinstance(card.data, DatasetCardData)
    assert card.data.license == "other" and meta["license_name"]
    assert set(card.data.size_categories) <= set(json.loads((resources / "size_categories.json").read_text()))
    assert card.data.size_categories == [size_category(st.read_manifest(str(pairs_dir))["rows"])]
    assert set(card.data.language) <= set(json.loads((resources / "languages.json").read_text()))
    assert set(card.data.task_categories) <= HUB_TASKS
    assert all(isinstance(t, str) and t for t in card.data.tags)
    configs = MetadataConfigs.from_dataset_card_data(card.data)   # raises on a malformed configs field
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    # the data card's content follows the front matter
    assert "# Data card: pairs from recipe `persodpo`" in card.text
    assert (pairs_dir / "data_card.md").read_text().strip() in card.text


def test_load_dataset_on_the_folder_loads_the_train_split(pairs_dir, tmp_path):
    import datasets

    ds = datasets.load_dataset(str(pairs_dir), cache_dir=str(tmp_path / "hf-cache"))
    assert list(ds) == ["train"]
    train = ds["train"]
    assert train.num_rows == st.read_manifest(str(pairs_dir))["rows"]
    assert sorted(train["pair_id"]) == sorted(st.read_table(str(pairs_dir)).column("pair_id").to_pylist())
    assert train[0]["chosen"][0]["role"] == "assistant"


@pytest.mark.parametrize("target, fragment", [
    (None, "needs --to"), ("ORG/NAME", "expected hf:ORG/NAME"), ("hf:nameonly", "not a Hub repository id"),
    ("hf:org/na me", "not a Hub repository id"), ("hf:org/../x", "not a Hub repository id"),
    ("hf:-org/name", "not a Hub repository id"), ("s3://b/p", "expected hf:ORG/NAME"),
])
def test_push_target_validation(pairs_dir, capsys, target, fragment):
    args = ["push", "--input", str(pairs_dir), "--dry-run"] + (["--to", target] if target else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "--to" in err


def test_push_refuses_incomplete_and_other_outputs(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert main(["push", "--input", str(tmp_path / "half"), "--to", "hf:org/x", "--dry-run"]) == 2
    assert "no _SUCCESS" in capsys.readouterr().err
    out = st.StageOutput(str(tmp_path / "prompts")).begin()
    out.write_file("README.md", "x")
    out.commit({"stage": "ingest"})
    assert main(["push", "--input", str(tmp_path / "prompts"), "--to", "hf:org/x", "--dry-run"]) == 2
    assert "only pairs (dataset) and train (model)" in capsys.readouterr().err
    assert main(["push", "--input", "s3://bucket/pairs", "--to", "hf:org/x", "--dry-run"]) == 2
    assert "local folder" in capsys.readouterr().err
    assert main(["push", "--input", str(tmp_path / "prompts"), "--to", "hf:org/x", "--set", "a.b=c"]) == 2
    assert "no --config/--set" in capsys.readouterr().err


def test_dry_run_lists_what_upload_folder_would_send(pairs_dir, capsys, monkeypatch):
    # Any Hub request would fail loudly: no endpoint, offline mode.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert main(["push", "--input", str(pairs_dir), "--to", "hf:my-org/persona.pairs_v1", "--dry-run"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["repo_id"] == "my-org/persona.pairs_v1" and summary["repo_type"] == "dataset"
    manifest = st.read_manifest(str(pairs_dir))
    expected = sorted({"README.md", "data_card.md", "pairs.html", "stats.json", "_manifest.json", *manifest["parts"]})
    assert summary["files"] == expected and summary["n_files"] == len(expected)
    assert summary["bytes"] == sum(os.path.getsize(pairs_dir / f) for f in expected)


def test_model_folder_dry_run_leaves_checkpoints_out(tmp_path, capsys):
    from persodpo.train.card import model_card

    out = st.StageOutput(str(tmp_path / "model")).begin()
    card = model_card(base_model="Qwen/Qwen2-0.5B-Instruct", pairs_uri="hf:my-org/pairs", recipe="persodpo",
                      pairs={"used": 4, "rows": 4}, train_config={"zero_stage": 2}, history=[{"loss": 0.69}],
                      summary={"global_step": 1})
    for name, data in (("README.md", card), ("config.json", "{}"), ("model.safetensors", "w"),
                       ("checkpoints/dpo-x/checkpoint-0000001/state.pt", "s"), ("tensorboard/events.out", "e")):
        st.write_bytes(str(tmp_path / "model" / name), data.encode())
    out.commit({"stage": "train"})
    meta = card_front_matter(card)
    assert meta["base_model"] == "Qwen/Qwen2-0.5B-Instruct" and meta["datasets"] == ["my-org/pairs"]
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert main(["push", "--input", str(tmp_path / "model"), "--to", "hf:my-org/model", "--dry-run"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["repo_type"] == "model"
    assert summary["files"] == ["README.md", "_manifest.json", "config.json", "model.safetensors",
                                "tensorboard/events.out"]
