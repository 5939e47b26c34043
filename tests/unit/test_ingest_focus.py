"""FoCus JSON -> one prompt per machine turn; every bad input names file, dialog and field."""

import copy
import json

import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.ingest.focus import parse_focus
from persodpo.ingest.stage import bundled_sample


def sample() -> dict:
    with open(bundled_sample(), encoding="utf-8") as f:
        return json.load(f)


def test_bundled_sample_one_row_per_machine_turn():
    doc = sample()
    table, n = parse_focus(json.dumps(doc), file="s.json")
    assert n == 12
    assert table.num_rows == sum(len(d["utterance"]) for d in doc["data"]) == 40
    rows = table.to_pylist()
    assert len({r["prompt_id"] for r in rows}) == 40


def test_history_is_everything_before_the_gold_reply():
    doc = sample()
    d0 = doc["data"][0]
    table, _ = parse_focus(json.dumps({"data": [d0]}), file="s.json")
    third = table.to_pylist()[2]
    utts = d0["utterance"][2]["dialogue3"]
    assert third["turn"] == 3
    assert third["gold"] == utts[-1]
    assert [m["content"] for m in third["history"]] == utts[:-1]
    assert [m["role"] for m in third["history"]] == ["user", "assistant", "user", "assistant", "user"]
    assert third["persona"] == d0["persona"]
    assert third["knowledge"] == [d0["utterance"][2]["knowledge_candidates"][0]]
    assert third["persona_grounding"] == d0["utterance"][2]["persona_grounding"]


def test_knowledge_modes():
    doc = {"data": [sample()["data"][0]]}
    all_k, _ = parse_focus(json.dumps(doc), file="s", knowledge="all")
    none_k, _ = parse_focus(json.dumps(doc), file="s", knowledge="none")
    assert all_k.column("knowledge")[0].as_py() == doc["data"][0]["knowledge"]
    assert none_k.column("knowledge")[0].as_py() == []


def _mutate(fn):
    doc = copy.deepcopy(sample())
    fn(doc)
    return json.dumps(doc).encode()


D0 = "sample_00_eiffel_tower"
BAD_INPUTS = [
    # (name, file bytes, expected fragments of the message)
    ("empty file", b"", ["file is empty"]),
    ("whitespace only", b"  \n ", ["file is empty"]),
    ("truncated json", json.dumps(sample()).encode()[:500], ["not valid JSON", "truncated"]),
    ("non utf8", b'{"data": [{"dialogID": "x\xff\xfe"}]}', ["not UTF-8", "offset 25"]),
    ("missing data", b'{"dialogs": []}', ["field 'data'", "missing top-level"]),
    ("data not a list", b'{"data": {}}', ["field 'data'", "expected a list"]),
    ("no dialogs", b'{"data": []}', ["field 'data'", "no dialogs"]),
    ("missing persona", _mutate(lambda d: d["data"][0].pop("persona")), [f"record {D0}", "field 'persona'"]),
    ("empty persona sentence", _mutate(lambda d: d["data"][0]["persona"].__setitem__(2, "  ")),
     [f"record {D0}", "field 'persona[2]'", "empty string"]),
    ("missing dialog id", _mutate(lambda d: d["data"][1].pop("dialogID")), ["record #1", "field 'dialogID'"]),
    ("wrong dialogue key", _mutate(lambda d: d["data"][0]["utterance"][1].update(
        {"dialogue3": d["data"][0]["utterance"][1].pop("dialogue2")})),
     [f"record {D0}", "field 'utterance[1].dialogue2'", "missing 'dialogue2'"]),
    ("wrong dialogue length", _mutate(lambda d: d["data"][0]["utterance"][2]["dialogue3"].pop()),
     [f"record {D0}", "field 'utterance[2].dialogue3'", "expected 6 utterances"]),
    ("empty utterance", _mutate(lambda d: d["data"][3]["utterance"][0]["dialogue1"].__setitem__(1, "")),
     ["record sample_03_sydney_opera_house", "field 'utterance[0].dialogue1[1]'", "empty string"]),
    ("no turns", _mutate(lambda d: d["data"][0].__setitem__("utterance", [])), [f"record {D0}", "field 'utterance'"]),
    ("bad knowledge index", _mutate(lambda d: d["data"][0]["utterance"][0].__setitem__("knowledge_answer_index", 9)),
     [f"record {D0}", "field 'utterance[0].knowledge_answer_index'"]),
    ("duplicate dialog id", _mutate(lambda d: d["data"][1].__setitem__("dialogID", D0)), [f"record {D0}", "duplicate"]),
    ("utterance not strings", _mutate(lambda d: d["data"][0]["utterance"][0].__setitem__("dialogue1", ["a", 3])),
     [f"record {D0}", "field 'utterance[0].dialogue1[1]'"]),
]


@pytest.mark.parametrize("name, data, fragments", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_place_and_leaves_nothing(tmp_path, capsys, name, data, fragments):
    src = tmp_path / "focus.json"
    src.write_bytes(data)
    out = tmp_path / "prompts"
    rc = main(["ingest", "--source", "focus", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(src) in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not st.is_complete(str(out))


def test_bad_input_does_not_destroy_a_previous_good_output(tmp_path, capsys):
    out = tmp_path / "prompts"
    assert main(["ingest", "--output", str(out)]) == 0
    src = tmp_path / "bad.json"
    src.write_text('{"data": [')
    assert main(["ingest", "--input", str(src), "--output", str(out)]) == 2
    # Parsing fails before the output is touched: the earlier complete output is still there.
    assert st.is_complete(str(out))
    assert st.read_table(str(out)).num_rows == 40


def test_summary_line(tmp_path, capsys):
    rc = main(["ingest", "--output", str(tmp_path / "p"), "--max-dialogs", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["n_dialogs"] == 2 and summary["n_prompts"] == 8
    assert summary["output"] == str(tmp_path / "p")
