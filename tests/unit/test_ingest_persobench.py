"""The authors' PersoBench CSV -> prompts."""

import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.ingest.persobench import parse_context, split_persona

HEADER = "personas,context,act_response\n"
GOOD = HEADER + '"I like cats.I live in Paris.","User1: Hi\nUser2: Hello, cat lover.\nUser1: Where am I?","User2: In Paris."\n'


def test_split_persona():
    assert split_persona("I like X.I live in Y.Ive never flown!Im 30.") == [
        "I like X.", "I live in Y.", "Ive never flown!", "Im 30."]


def test_parse_context_roles_and_continuations():
    msgs = parse_context("User1: Hi\nUser2: Hello\nthere\nUser1: What?")
    assert msgs == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\nthere"},
                    {"role": "user", "content": "What?"}]


def test_good_csv(tmp_path):
    src = tmp_path / "p.csv"
    src.write_text(GOOD)
    assert main(["ingest", "--source", "persobench", "--input", str(src), "--output", str(tmp_path / "o")]) == 0
    row = st.read_table(str(tmp_path / "o")).to_pylist()[0]
    assert row["persona"] == ["I like cats.", "I live in Paris."]
    assert row["gold"] == "In Paris."
    assert row["turn"] == 2 and row["history"][-1] == {"role": "user", "content": "Where am I?"}


BAD = [
    ("missing column", "personas,context\nx,y\n", ["missing column(s) ['act_response']"]),
    ("empty file", "", ["file is empty"]),
    ("header only", HEADER, ["no data rows"]),
    ("empty persona", HEADER + '"","User1: Hi","User2: x"\n', ["record row 1", "field 'personas'"]),
    ("no speaker", HEADER + '"I a.","Hello there","User2: x"\n', ["record row 1", "field 'context'", "User1:"]),
    ("ends with machine", HEADER + '"I a.","User1: Hi\nUser2: Yo","User2: x"\n',
     ["record row 1", "field 'context'", "human turn"]),
    ("empty gold", GOOD + '"I a.","User1: Hi","User2:  "\n', ["record row 2", "field 'act_response'"]),
]


@pytest.mark.parametrize("name, text, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_csv(tmp_path, capsys, name, text, fragments):
    src = tmp_path / "p.csv"
    src.write_text(text)
    out = tmp_path / "o"
    assert main(["ingest", "--source", "persobench", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not st.is_complete(str(out))


def test_non_utf8_csv(tmp_path, capsys):
    src = tmp_path / "p.csv"
    src.write_bytes(GOOD.encode() + b'"caf\xe9.","User1: a","User2: b"\n')
    assert main(["ingest", "--source", "persobench", "--input", str(src), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "line 5" in err
