"""PersonaChat (truecased JSON release layout) -> one prompt per utterances entry, gold = the last
candidate, split = the top-level key; bad input names file, dialog and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.ingest.personachat import parse_personachat

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "personachat" / "personachat_truecased_sample.json"


def doc() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_one_prompt_per_entry_gold_last_candidate_split_from_key():
    d = doc()
    table, n = parse_personachat(json.dumps(d), file="pc.json")
    assert table.schema.equals(contracts.PROMPTS)
    assert n == 4
    assert table.num_rows == sum(len(x["utterances"]) for s in d.values() for x in s) == 8
    rows = table.to_pylist()
    assert [r["split"] for r in rows].count("valid") == 2
    third = next(r for r in rows if r["dialog_id"] == "train-00001" and r["turn"] == 3)
    entry = d["train"][1]["utterances"][2]
    assert third["gold"] == entry["candidates"][-1]
    assert [m["content"] for m in third["history"]] == entry["history"]
    assert [m["role"] for m in third["history"]] == ["user", "assistant", "user", "assistant", "user"]
    assert third["persona"] == d["train"][1]["personality"]
    assert third["prompt_id"] == contracts.prompt_id("personachat", "train-00001", 3)
    assert len({r["prompt_id"] for r in rows}) == 8


def _mutate(fn) -> bytes:
    d = copy.deepcopy(doc())
    fn(d)
    return json.dumps(d).encode()


BAD = [
    ("truncated", FIXTURE.read_bytes()[:300], ["not valid JSON", "truncated"]),
    ("empty file", b"", ["file is empty"]),
    ("a list at the top", b"[]", ["splits as top-level keys"]),
    ("split not a list", b'{"train": {}}', ["field 'train'", "expected a list of dialogs"]),
    ("missing personality", _mutate(lambda d: d["train"][1].pop("personality")),
     ["record train[1]", "field 'personality'"]),
    ("no utterances", _mutate(lambda d: d["valid"][0].__setitem__("utterances", [])),
     ["record valid[0]", "field 'utterances'", "empty list"]),
    ("even history", _mutate(lambda d: d["train"][0]["utterances"][1]["history"].pop()),
     ["record train[0]", "field 'utterances[1].history'", "odd count"]),
    ("empty candidate", _mutate(lambda d: d["train"][2]["utterances"][0]["candidates"].__setitem__(1, "")),
     ["record train[2]", "field 'utterances[0].candidates[1]'", "empty string"]),
    ("history not strings", _mutate(lambda d: d["train"][0]["utterances"][0].__setitem__("history", [3])),
     ["record train[0]", "field 'utterances[0].history[0]'", "expected a string"]),
]


@pytest.mark.parametrize("name, data, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_place_and_leaves_nothing(tmp_path, capsys, name, data, fragments):
    src = tmp_path / "pc.json"
    src.write_bytes(data)
    out = tmp_path / "prompts"
    rc = main(["ingest", "--source", "personachat", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(src) in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not st.is_complete(str(out))


def test_cli_summary(tmp_path, capsys):
    out = tmp_path / "prompts"
    assert main(["ingest", "--source", "personachat", "--input", str(FIXTURE), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["splits"] == {"train": 6, "valid": 2} and summary["n_dialogs"] == 4
