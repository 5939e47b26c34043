"""`ingest.source: hf`: `datasets.load_dataset` on local Parquet/JSON/CSV, mapped onto the
prompts contract by `ingest.hf.columns`; bad rows name the files, the split and row, the column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.config import load_config
from persodpo.errors import ConfigError, InputError
from persodpo.ingest.stage import run_stage

ROWS = [
    {"conv": "a", "idx": 1, "persona": ["I like tea.", "I live in Leeds."], "context": ["Hi! What do you drink?"],
     "response": "Tea, always tea.", "facts": "Leeds is in Yorkshire."},
    {"conv": "a", "idx": 2, "persona": ["I like tea.", "I live in Leeds."],
     "context": ["Hi! What do you drink?", "Tea, always tea.", "Where are you from?"],
     "response": "From Leeds.", "facts": None},
    {"conv": "b", "idx": 1, "persona": ["I am a pilot."], "context": ["Hello, what is your job?"],
     "response": "I fly planes.", "facts": None},
]
MAPPING = ["ingest.hf.columns.history=context", "ingest.hf.columns.gold=response", "ingest.hf.columns.knowledge=facts",
           "ingest.hf.columns.dialog_id=conv", "ingest.hf.columns.turn=idx"]


def _run(tmp_path, *sets):
    cfg = load_config(None, ["ingest.source=hf", f"ingest.output={tmp_path / 'prompts'}",
                             f"ingest.hf.cache_dir={tmp_path / 'hf-cache'}", *sets])
    return run_stage(cfg), st.read_table(str(tmp_path / "prompts"))


def test_parquet_with_mapping_and_two_splits(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), tmp_path / "validation.parquet")
    files = json.dumps({"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")})
    # the validation split repeats dialog b: same (dialog, turn) twice is an error ...
    summary = None
    with pytest.raises(InputError, match="dialog 'b' turn 1 appears twice"):
        _run(tmp_path, "ingest.hf.path=parquet", f"ingest.hf.data_files={files}", "ingest.hf.split=[train, validation]",
             *MAPPING)
    # ... and without dialog ids every row is its own dialog
    summary, table = _run(tmp_path, "ingest.hf.path=parquet", f"ingest.hf.data_files={files}",
                          "ingest.hf.split=[train, validation]", *MAPPING[:3])
    assert table.schema.equals(contracts.PROMPTS)
    assert summary["splits"] == {"train": 3, "valid": 1} and summary["n_dialogs"] == 4
    rows = table.to_pylist()
    assert rows[1]["dialog_id"] == "train-000001" and rows[1]["turn"] == 2
    assert rows[1]["history"] == [{"role": "user", "content": "Hi! What do you drink?"},
                                  {"role": "assistant", "content": "Tea, always tea."},
                                  {"role": "user", "content": "Where are you from?"}]
    assert rows[0]["knowledge"] == ["Leeds is in Yorkshire."] and rows[1]["knowledge"] == []
    assert rows[0]["prompt_id"] == contracts.prompt_id("hf", "train-000000", 1)


def test_json_lines_with_messages_and_dialog_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    with open(path, "w") as f:
        for r in ROWS:
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(r["context"])]
            f.write(json.dumps({**r, "persona": "\n".join(r["persona"]), "context": msgs}) + "\n")
    _, table = _run(tmp_path, "ingest.hf.path=json", f"ingest.hf.data_files={path}", "ingest.hf.source_name=mine",
                    *MAPPING)
    rows = table.to_pylist()
    assert [(r["dialog_id"], r["turn"]) for r in rows] == [("a", 1), ("a", 2), ("b", 1)]
    assert rows[0]["persona"] == ["I like tea.", "I live in Leeds."] and rows[0]["source"] == "mine"
    assert rows[1]["prompt_id"] == contracts.prompt_id("mine", "a", 2)


def _csv(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


BAD = [
    ("missing column", "persona,history\nI like tea.,x\n", [],
     ["no column(s) ['gold']", "ingest.hf.columns.gold", "field 'gold'"]),
    ("empty gold", "persona,history,gold\nI like tea.,hi,\n", [], ["record train row 0", "field 'gold'"]),
    ("empty history", "persona,history,gold\nI like tea.,,hello\n", [],
     ["record train row 0", "field 'history'", "non-empty list of turns"]),
    ("bad turn", "persona,history,gold,t\nI like tea.,hi,hello,zero\n", ["ingest.hf.columns.turn=t"],
     ["record train row 0", "field 't'", "positive integer"]),
]


@pytest.mark.parametrize("name, text, sets, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_rows_name_files_row_and_column(tmp_path, capsys, name, text, sets, fragments):
    path = _csv(tmp_path, text)
    out = tmp_path / "prompts"
    args = ["ingest", "--source", "hf", "--output", str(out), "--set", "ingest.hf.path=csv",
            "--set", f"ingest.hf.data_files={path}", "--set", f"ingest.hf.cache_dir={tmp_path / 'c'}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not st.is_complete(str(out))


def test_missing_files_and_path(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["ingest", "--source", "hf", "--output", out]) == 2
    assert "key 'ingest.hf.path'" in capsys.readouterr().err
    missing = tmp_path / "nope.parquet"
    assert main(["ingest", "--source", "hf", "--output", out, "--set", "ingest.hf.path=parquet",
                 "--set", f"ingest.hf.data_files={missing}", "--set", f"ingest.hf.cache_dir={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err.lower()


def test_unknown_hf_key_names_it():
    with pytest.raises(ConfigError, match="ingest.hf"):
        load_config(None, ["ingest.hf.colums.gold=x"])


def test_input_folder_is_the_dataset_path(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "ds" / "train.parquet")
    out = tmp_path / "prompts"
    assert main(["ingest", "--source", "hf", "--input", str(tmp_path / "ds"), "--output", str(out),
                 "--set", f"ingest.hf.cache_dir={tmp_path / 'c'}", *[a for m in MAPPING for a in ("--set", m)]]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_prompts"] == 3 and summary["n_dialogs"] == 2 and summary["input"] == str(tmp_path / "ds")
