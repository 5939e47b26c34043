"""Blended Skill Talk Parquet (the Hub's public schema) -> one prompt per guided turn; every bad
input names file, row and field and leaves no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.ingest.bst import read_bst, split_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bst"
TRAIN = FIXTURES / "data" / "train-00000-of-00001.parquet"


def test_folder_one_prompt_per_guided_turn_splits_from_file_names():
    table, n = read_bst(str(FIXTURES))
    assert table.schema.equals(contracts.PROMPTS)
    assert n == 5
    raw = {s: pq.read_table(FIXTURES / "data" / f"{s}-00000-of-00001.parquet").to_pylist() for s in ("train", "validation")}
    assert table.num_rows == sum(len(r["guided_messages"]) for rows in raw.values() for r in rows) == 9
    rows = table.to_pylist()
    assert {r["split"] for r in rows} == {"train", "valid"}
    assert len({r["prompt_id"] for r in rows}) == 9
    d0 = raw["train"][0]
    second = next(r for r in rows if r["dialog_id"] == "train-00000" and r["turn"] == 2)
    assert second["persona"] == d0["personas"]
    assert second["gold"] == d0["guided_messages"][1]
    assert [m["content"] for m in second["history"]] == [*d0["previous_utterance"], d0["free_messages"][0],
                                                          d0["guided_messages"][0], d0["free_messages"][1]]
    assert [m["role"] for m in second["history"]] == ["user", "assistant", "user", "assistant", "user"]
    assert second["knowledge"] == ["Beekeeping"]
    assert second["prompt_id"] == contracts.prompt_id("blended_skill_talk", "train-00000", 2)
    assert next(r for r in rows if r["dialog_id"] == "train-00001")["knowledge"] == []


def test_split_names():
    assert split_of("x/data/validation-00000-of-00001.parquet", "train") == "valid"
    assert split_of("x/default/test/0000.parquet", "train") == "test"
    assert split_of("x/bst.parquet", "mine") == "mine"


def _write(tmp_path, mutate) -> Path:
    rows = pq.read_table(TRAIN).to_pylist()
    schema = pq.read_schema(TRAIN)
    table = mutate(rows, schema)
    out = tmp_path / "bst.parquet"
    if isinstance(table, bytes):
        out.write_bytes(table)
    else:
        pq.write_table(table, out)
    return out


def _set(i, key, value):
    def fn(rows, schema):
        rows[i][key] = value
        return pa.Table.from_pylist(rows, schema=schema)
    return fn


def _drop(col):
    return lambda rows, schema: pa.Table.from_pylist(rows, schema=schema).drop_columns([col])


BAD = [
    ("missing column", _drop("guided_messages"), ["field 'guided_messages'", "missing column"]),
    ("null personas", _set(1, "personas", None), ["record row 1", "field 'personas'", "got null"]),
    ("empty persona sentence", _set(0, "personas", ["i keep bees.", " "]),
     ["record row 0", "field 'personas[1]'", "empty string"]),
    ("one seed utterance", _set(2, "previous_utterance", ["hi"]),
     ["record row 2", "field 'previous_utterance'", "expected 2 strings"]),
    ("free/guided mismatch", _set(0, "free_messages", ["only one"]),
     ["record row 0", "field 'guided_messages'", "1 free_messages but 3 guided_messages"]),
    ("empty guided message", _set(1, "guided_messages", ["fine", ""]),
     ["record row 1", "field 'guided_messages[1]'", "empty string"]),
    ("no guided messages", lambda rows, schema: pa.Table.from_pylist(
        [{**r, "free_messages": [], "guided_messages": []} for r in rows], schema=schema),
     ["record row 0", "field 'free_messages'", "empty list"]),
    ("not parquet", lambda rows, schema: b"PAR1 this is not parquet", ["not a readable Parquet file"]),
]


@pytest.mark.parametrize("name, mutate, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_place_and_leaves_nothing(tmp_path, capsys, name, mutate, fragments):
    src = _write(tmp_path, mutate)
    out = tmp_path / "prompts"
    rc = main(["ingest", "--source", "blended_skill_talk", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(src) in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not st.is_complete(str(out))


def test_empty_folder_and_missing_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["ingest", "--source", "blended_skill_talk", "--input", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "no .parquet files" in capsys.readouterr().err
    assert main(["ingest", "--source", "blended_skill_talk", "--output", str(tmp_path / "o")]) == 2
    assert "key 'ingest.input'" in capsys.readouterr().err


def test_cli_writes_the_prompts_and_max_dialogs(tmp_path, capsys):
    shutil.copytree(FIXTURES, tmp_path / "bst")
    out = tmp_path / "prompts"
    assert main(["ingest", "--source", "blended_skill_talk", "--input", str(tmp_path / "bst"), "--output", str(out),
                 "--max-dialogs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_dialogs"] == 2 and summary["n_prompts"] == 5 and summary["splits"] == {"train": 5}
    assert st.read_table(str(out)).num_rows == 5


def test_bst_paper_config_ingests_the_hub_layout(tmp_path):
    from persodpo.config import load_config
    from persodpo.ingest.stage import run_stage

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(str(repo / "jobs" / "configs" / "bst_paper.yaml"),
                      [f"ingest.input={FIXTURES / 'data'}", f"ingest.output={tmp_path / 'prompts'}"])
    summary = run_stage(cfg)
    # generate answers the train split, evaluate holds out valid: both exist after ingest
    assert cfg.generate.split in summary["splits"] and cfg.evaluate.split in summary["splits"]
