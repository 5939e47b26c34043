"""Huge inputs are data, not crashes: a FoCus dialog with a 1 MB utterance, very long dialogs
(FoCus and PersoBench), and a 1 MB utterance pushed through the prompt builder and the score
stage's deterministic metrics.

A FoCus turn i repeats the whole history (2*i utterances), so a FoCus dialog's size grows with
the square of its turns: a 10,000-turn FoCus dialog is 10^8 strings (GBs of JSON) that no one can
write. The 10,000-turn dialog is therefore a PersoBench CSV context (one prompt with 10,000
messages); the FoCus one has 1,000 turns (10^6 utterances, 8 MB of JSON).
"""

from __future__ import annotations

import copy
import csv
import io
import json

import pyarrow as pa
import pytest

from persodpo import storage as st
from persodpo.cli import main
from persodpo.ingest.stage import bundled_sample
from persodpo.prompting import build_messages, get_template

WORDS = "the lighthouse keeper walked along the white cliffs of Dover at dawn, café in hand ".split()
BIG = (" ".join(WORDS * 20_000))[:1_000_000]   # 1 MB of text (non-ASCII included)
D0 = "sample_00_eiffel_tower"


def _ingest(capsys, *argv) -> dict:
    rc = main(["ingest", *argv])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    return json.loads(cap.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_prompts(tmp_path_factory):
    """The bundled sample with dialog 0's first user utterance replaced by 1 MB of text (it then
    appears in the history of every later turn of that dialog, as FoCus repeats histories)."""
    with open(bundled_sample(), encoding="utf-8") as f:
        doc = json.load(f)
    d = doc["data"][0]
    for i, turn in enumerate(d["utterance"], start=1):
        turn[f"dialogue{i}"][0] = BIG
    # and one machine reply (a gold) of 1 MB in dialog 1, turn 2
    d1 = doc["data"][1]
    d1["utterance"][1]["dialogue2"][3] = BIG
    for i in range(3, len(d1["utterance"]) + 1):
        d1["utterance"][i - 1][f"dialogue{i}"][3] = BIG
    root = tmp_path_factory.mktemp("huge")
    src = root / "focus-1mb.json"
    src.write_text(json.dumps({"data": [copy.deepcopy(d), copy.deepcopy(d1), *doc["data"][2:]]}), encoding="utf-8")
    return src, root / "prompts", doc


def test_a_1mb_utterance_is_ingested_intact(big_prompts, capsys):
    src, out, doc = big_prompts
    s = _ingest(capsys, "--input", str(src), "--output", str(out))
    assert s["n_dialogs"] == 12 and s["n_prompts"] == 40
    rows = {(r["dialog_id"], r["turn"]): r for r in st.read_table(str(out)).to_pylist()}
    assert len(rows) == 40
    n0 = len(doc["data"][0]["utterance"])
    for turn in range(1, n0 + 1):
        r = rows[(D0, turn)]
        assert r["history"][0] == {"role": "user", "content": BIG}
        assert len(r["history"]) == 2 * turn - 1
    d1 = doc["data"][1]["dialogID"]
    assert rows[(d1, 2)]["gold"] == BIG
    assert rows[(d1, 3)]["history"][3] == {"role": "assistant", "content": BIG}


def test_a_1000_turn_focus_dialog_and_a_10000_turn_persobench_context(tmp_path, capsys):
    n = 1000
    utts = [f"utterance number {j}" for j in range(2 * n)]
    dialog = {"dialogID": "very-long", "persona": ["I like tea.", "I live in Leeds."], "knowledge": [],
              "utterance": [{f"dialogue{i}": utts[: 2 * i]} for i in range(1, n + 1)]}
    src = tmp_path / "long.json"
    src.write_text(json.dumps({"data": [dialog]}))
    s = _ingest(capsys, "--input", str(src), "--output", str(tmp_path / "p1"))
    assert s["n_prompts"] == n
    last = st.read_table(str(tmp_path / "p1")).sort_by("turn").slice(n - 1).to_pylist()[0]
    assert last["turn"] == n and len(last["history"]) == 2 * n - 1 and last["gold"] == utts[-1]

    turns = 10_000
    lines = [f"User{1 + (i % 2)}: line {i} of a very long chat" for i in range(turns + 1)]   # ends with User1
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["personas", "context", "act_response"])
    w.writerow(["I like tea.I live in Leeds.", "\n".join(lines), "User2: I am still here."])
    w.writerow(["I like tea.", f"User1: {BIG}", "User2: That was long."])   # a 1 MB CSV field
    csv_src = tmp_path / "long.csv"
    csv_src.write_text(buf.getvalue(), encoding="utf-8")
    s = _ingest(capsys, "--source", "persobench", "--input", str(csv_src), "--output", str(tmp_path / "p2"))
    assert s["n_prompts"] == 2
    rows = st.read_table(str(tmp_path / "p2")).sort_by("dialog_id").to_pylist()
    assert len(rows[0]["history"]) == turns + 1 and rows[0]["history"][-1]["content"] == lines[-1][7:]
    assert rows[0]["turn"] == turns // 2 + 1
    assert rows[1]["history"] == [{"role": "user", "content": BIG}]


def test_the_prompt_builder_keeps_a_1mb_utterance(big_prompts, capsys):
    src, out, _ = big_prompts
    if not st.is_complete(str(out)):
        _ingest(capsys, "--input", str(src), "--output", str(out))
    row = [r for r in st.read_table(str(out)).to_pylist() if r["dialog_id"] == D0 and r["turn"] == 2][0]
    for name in ("persobench-json-v1", "persobench-json-knowledge-v1", "plain-v1"):
        get_template(name)
        msgs = build_messages(row, name, 110)
        text = "\n".join(m["content"] for m in msgs)
        assert BIG in text, name
        assert len(text) < len(BIG) + 10_000, name   # the utterance once, not once per use


def test_deterministic_metrics_score_1mb_texts(big_prompts):
    """The score stage's CPU metrics, called on an Arrow batch as its Ray wrapper does: a reply
    scored against a 1 MB gold, a 1 MB reply (raw and text), a persona with a 1 MB sentence."""
    from persodpo.score.batch import deterministic
    from persodpo.score.config import ScoreConfig
    from persodpo.score.registry import build_metrics

    short = "I love the lighthouse in Dover and the cliffs nearby, lovely at dawn."
    persona = ["I love lighthouses.", "I live in Dover."]
    rows = [
        {"text": short, "raw": json.dumps({"response": short}), "gold": BIG, "persona": persona,
         "template": "persobench-json-v1", "parse_status": "valid"},
        {"text": BIG, "raw": json.dumps({"response": BIG}), "gold": short, "persona": persona,
         "template": "persobench-json-v1", "parse_status": "valid"},
        {"text": short, "raw": short, "gold": short, "persona": persona + [BIG], "template": "plain-v1",
         "parse_status": "valid"},
    ]
    metrics = build_metrics(ScoreConfig(metrics=["format", "length", "persona_coverage", "reference"], word_limit=30))
    out = deterministic(pa.Table.from_pylist(rows), metrics).to_pylist()
    assert len(out) == 3
    for r in out:
        for col in ("format_ok", "length_ok", "persona_coverage", "ref_bleu", "ref_chrf", "ref_rouge_l"):
            assert r[col] is not None and 0.0 <= r[col] <= 1.0 + 1e-9, (col, r[col])
    assert out[1]["length_ok"] == 0.0 and out[1]["length_words"] > 100_000   # the 1 MB reply breaks the limit
    assert out[0]["length_ok"] == 1.0 and out[2]["ref_rouge_l"] == pytest.approx(1.0)
