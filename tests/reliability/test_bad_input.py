"""Bad-input sweep: malformed FoCus JSON, PersoBench CSV, YAML configs and overrides, and the
inputs of later stages, each through the real CLI. Every case must exit 2 with a message that
names the place (file, record, field or config key), print a JSON summary with ok=false, and
leave no output that looks complete; a previous good output at the same URI stays intact.

(tests/unit/test_ingest_focus.py and test_ingest_persobench.py hold the per-field FoCus and CSV
cases; these are the ones they do not cover.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from persodpo import contracts
from persodpo import storage as st
from persodpo.cli import main
from persodpo.pairs.config import AUTHORS_PERSODPO_WEIGHTS
from persodpo.ingest.stage import bundled_sample

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "sk-live-DO-NOT-ECHO-90210"
D0 = "sample_00_eiffel_tower"
CSV_HEADER = "personas,context,act_response\n"
CSV_ROW = '"I like tea.I live in Leeds.","User1: hi\nUser2: hello\nUser1: what do you like?","User2: I like tea."\n'


def _sample() -> dict:
    with open(bundled_sample(), encoding="utf-8") as f:
        return json.load(f)


def _focus(mutate=None) -> bytes:
    doc = copy.deepcopy(_sample())
    if mutate:
        mutate(doc)
    return json.dumps(doc).encode()


def _write(tmp: Path, name: str, data: bytes | str) -> str:
    p = tmp / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


# Each case builds its inputs under tmp and returns (argv without --output, expected fragments).
# "{tmp}" in a fragment stands for the test's directory (so the message must name the file).
def focus_case(data: bytes, *fragments: str):
    def make(tmp: Path):
        src = _write(tmp, "focus.json", data)
        return ["ingest", "--source", "focus", "--input", src], [src, *fragments]
    return make


def csv_case(data: bytes | str, *fragments: str):
    def make(tmp: Path):
        src = _write(tmp, "bench.csv", data)
        return ["ingest", "--source", "persobench", "--input", src], [src, *fragments]
    return make


def config_case(yaml_text: bytes | str | None, overrides: list[str], *fragments: str, names_file: bool = True):
    """A config error on an otherwise valid ingest of the bundled sample (an error in the YAML
    names the file; one in a --set override names the key only)."""
    def make(tmp: Path):
        argv = ["ingest"]
        frags = list(fragments)
        if yaml_text is not None:
            cfg = _write(tmp, "config.yaml", yaml_text)
            argv += ["--config", cfg]
            if names_file:
                frags.insert(0, cfg)
        for o in overrides:
            argv += ["--set", o]
        return argv, frags
    return make


def _output_is_a_file(tmp: Path):
    out = _write(tmp, "prompts.parquet", b"not a folder")
    return ["ingest", "--output", out], [out, "Cannot create directory"]


def _uri_case(uri: str, *fragments: str):
    return lambda tmp: (["ingest", "--input", uri], [uri, *fragments])


def _path_case(kind: str):
    def make(tmp: Path):
        if kind == "directory":
            src = tmp / "a-folder.json"
            src.mkdir()
            return ["ingest", "--input", str(src)], [str(src), "is a directory"]
        src = str(tmp / "no-such-file.json")
        return ["ingest", "--input", src], [src, "not found"]
    return make


def _generate_missing_column(tmp: Path):
    table = _prompts_table().drop_columns(["history"])
    uri = _commit(str(tmp / "prompts"), table)
    return ["generate", "--input", uri], [st.join(uri, "part-00000.parquet"), "not a prompts table",
                                          "field 'history'"]


def _generate_null_field(tmp: Path):
    rows = _prompts_table().to_pylist()
    rows[3]["persona"] = None
    uri = _commit(str(tmp / "prompts"), pa.Table.from_pylist(rows, schema=contracts.PROMPTS))
    return ["generate", "--input", uri], [st.join(uri, "part-00000.parquet"), f"record {rows[3]['prompt_id']}",
                                          "field 'persona'", "missing value"]


def _generate_incomplete_input(tmp: Path):
    uri = str(tmp / "prompts")
    out = st.StageOutput(uri).begin()
    out.write_table(_prompts_table())   # never committed: a crashed ingest
    return ["generate", "--input", uri], [uri]


def _pairs_non_numeric_metric(tmp: Path):
    from tests.unit.test_pairs_stage import write_inputs

    uris = write_inputs(tmp)
    scores = st.read_table(uris["scores"])
    bad = scores.set_column(scores.schema.get_field_index("c_score"), "c_score",
                            pa.array(["high" if v is not None else None for v in scores.column("c_score").to_pylist()]))
    uris["scores"] = _commit(str(tmp / "scores-text"), bad)
    return (["pairs", "--input", uris["scores"], "--candidates", uris["candidates"], "--prompts", uris["prompts"],
             "--recipe", "paper-perso", "--set", "pairs.plots=false"],
            [uris["scores"], "field 'c_score'", "not numeric", "record p1-a"])


def _pairs_unknown_candidate(tmp: Path):
    from tests.unit.test_pairs_stage import write_inputs

    uris = write_inputs(tmp)
    scores = st.read_table(uris["scores"]).to_pylist()
    scores[0]["candidate_id"] = "ghost-candidate"
    uris["scores"] = _commit(str(tmp / "scores-ghost"), pa.Table.from_pylist(scores, schema=contracts.scores_schema(
        ["coh_unieval", "c_score", "ue_score", "persona_distance"])))
    return (["pairs", "--input", uris["scores"], "--candidates", uris["candidates"], "--prompts", uris["prompts"],
             "--set", "pairs.plots=false", "--set", f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}"],
            [uris["scores"], "ghost-candidate", "field 'candidate_id'"])


def _prompts_table() -> pa.Table:
    from persodpo.ingest.focus import parse_focus

    with open(bundled_sample(), encoding="utf-8") as f:
        return parse_focus(f.read(), file="sample.json")[0]


def _commit(uri: str, table: pa.Table) -> str:
    out = st.StageOutput(uri).begin()
    out.write_table(table)
    out.commit({"stage": "test"})
    return uri


def _deep(n: int) -> bytes:
    return b'{"data": ' + b"[" * n + b"]" * n + b"}"


CASES = [
    # -- FoCus JSON ------------------------------------------------------------------------------
    ("focus: top level is a list", focus_case(b"[1, 2]", "field 'data'", "missing top-level")),
    ("focus: UTF-16 file", focus_case('{"data": []}'.encode("utf-16"), "not UTF-8", "offset 0")),
    ("focus: latin-1 persona", focus_case(_focus(lambda d: d["data"][2]["persona"].__setitem__(0, "CAFE"))
                                          .replace(b"CAFE", b"caf\xe9"), "not UTF-8", "byte 0xe9")),
    ("focus: BOM then truncated", focus_case(b"\xef\xbb\xbf" + _focus()[:300], "not valid JSON", "truncated")),
    ("focus: nested too deeply", focus_case(_deep(200_000), "nested too deeply")),
    ("focus: dialog is a string", focus_case(b'{"data": ["hello"]}', "record #0", "expected a dialog object")),
    ("focus: persona is a string", focus_case(_focus(lambda d: d["data"][1].__setitem__("persona", "I like it.")),
                                              "record sample_01", "field 'persona'", "got str")),
    ("focus: grounding not booleans", focus_case(
        _focus(lambda d: d["data"][0]["utterance"][1].__setitem__("persona_grounding", ["yes", "no"])),
        f"record {D0}", "field 'utterance[1].persona_grounding'", "booleans")),
    ("focus: turn is a list", focus_case(_focus(lambda d: d["data"][0]["utterance"].__setitem__(0, ["hi", "ho"])),
                                         f"record {D0}", "field 'utterance[0]'", "turn object")),
    ("focus: NaN utterance", focus_case(
        _focus(lambda d: d["data"][0]["utterance"][0]["dialogue1"].__setitem__(0, 1.5)).replace(b"1.5", b"NaN"),
        f"record {D0}", "field 'utterance[0].dialogue1[0]'", "got float")),
    ("focus: knowledge candidate not text", focus_case(
        _focus(lambda d: d["data"][0]["utterance"][0].update(knowledge_candidates=[None], knowledge_answer_index=0)),
        f"record {D0}", "field 'utterance[0].knowledge_candidates[0]'")),
    ("focus: a directory", _path_case("directory")),
    ("focus: missing file", _path_case("missing")),
    ("focus: unsupported URI scheme", _uri_case("ftp://host/focus.json", "unsupported storage URI")),
    ("focus: S3 URI without a bucket", _uri_case("s3:///focus.json", "no bucket in the S3 URI")),
    ("output: an existing file", _output_is_a_file),
    # -- PersoBench CSV --------------------------------------------------------------------------
    ("csv: missing column", csv_case("personas,context\n\"I like tea.\",\"User1: hi\"\n",
                                     "field 'act_response'", "missing column(s) ['act_response']")),
    ("csv: empty file", csv_case(b"", "file is empty")),
    ("csv: header only", csv_case(CSV_HEADER, "no data rows")),
    ("csv: latin-1 bytes", csv_case((CSV_HEADER + CSV_ROW).encode().replace(b"tea", b"th\xe9"), "not UTF-8",
                                    "line 2")),
    ("csv: context without speakers", csv_case(CSV_HEADER + CSV_ROW + '"I am.","hello there","User2: hi"\n',
                                               "record row 2", "field 'context'", "does not start with 'User1:'")),
    ("csv: context ends with the machine", csv_case(CSV_HEADER + '"I am.","User1: hi\nUser2: yo","User2: hi"\n',
                                                    "record row 1", "field 'context'", "human turn")),
    ("csv: empty gold after prefix", csv_case(CSV_HEADER + CSV_ROW + CSV_ROW.replace("User2: I like tea.", "User2: "),
                                              "record row 2", "field 'act_response'", "empty gold")),
    ("csv: unterminated quote", csv_case(CSV_HEADER + '"I like tea.,"User1: hi","User2: ok"\n' + CSV_ROW,
                                         "record row 1", "field 'act_response'")),
    ("csv: empty persona", csv_case(CSV_HEADER + '"  ","User1: hi","User2: hi"\n', "record row 1",
                                    "field 'personas'", "empty value")),
    # -- configuration: YAML files and dotted overrides ------------------------------------------
    ("config: unknown key", config_case("ingest:\n  sauce: focus\n", [], "key 'ingest.sauce'", "unknown key")),
    ("config: unknown section", config_case("ingests:\n  source: focus\n", [], "key 'ingests'", "unknown key")),
    ("config: wrong type", config_case("ingest:\n  max_dialogs: many\n", [], "key 'ingest.max_dialogs'",
                                       "valid integer")),
    ("config: bad enum", config_case(None, ["ingest.knowledge=some"], "key 'ingest.knowledge'", "'grounded'")),
    ("config: bad source flag value in yaml", config_case("ingest:\n  source: reddit\n", [], "key 'ingest.source'",
                                                          "'focus'")),
    ("config: negative number", config_case(None, ["ingest.max_dialogs=-3"], "key 'ingest.max_dialogs'",
                                            "greater than or equal to 1")),
    ("config: negative learning rate", config_case(None, ["train.learning_rate=-1e-5"], "key 'train.learning_rate'",
                                                   "greater than 0")),
    ("config: unknown stage", config_case("run:\n  stages: [ingest, polish]\n", [], "key 'run.stages'",
                                          "unknown stage(s) ['polish']")),
    ("config: unknown metric", config_case(None, ["score.metrics=[format, bleurt]"], "key 'score.metrics'",
                                           "unknown metric(s) ['bleurt']")),
    ("config: unknown recipe", config_case(None, ["pairs.recipe=magic"], "key 'pairs.recipe'",
                                           "unknown recipe 'magic'")),
    ("config: unknown template", config_case(None, ["generate.template=nope-v9"], "key 'generate.template'",
                                             "unknown prompt template 'nope-v9'")),
    ("config: judge without provider", config_case(
        None, ["score.judges=[{name: j1, model: gpt-4o-mini, api_base: 'http://127.0.0.1:9/v1'}]"],
        "key 'score.judges.0.model'", "provider prefix", "openai/gpt-4o-mini")),
    ("config: inverted judge scale", config_case(None, ["score.panel.scale=[5, 1]"], "key 'score.panel'",
                                                 "low must be below high")),
    ("config: not YAML", config_case("ingest:\n  source: focus\n   output: x\n", [], "not valid YAML", "line 3")),
    ("config: top level a list", config_case("- ingest\n- score\n", [], "top level must be a mapping")),
    ("config: non-UTF-8 YAML", config_case(b"ingest:\n  split: caf\xe9\n", [], "not valid YAML", "0xe9")),
    ("config: override without '='", config_case(None, ["ingest.max_dialogs"], "key 'ingest.max_dialogs'",
                                                 "override must look like")),
    ("config: override into a list index", config_case("score:\n  metrics: [format]\n", ["score.metrics.7.name=x"],
                                                       "key 'score.metrics.7'", "no list item '7'", names_file=False)),
    ("config: missing config file", lambda tmp: (["ingest", "--config", str(tmp / "nope.yaml")],
                                                 [str(tmp / "nope.yaml"), "config file not found"])),
    # -- secrets written into configuration are refused, and not echoed -------------------------
    ("secret: judge api_key field", config_case(
        None, [f"score.judges=[{{name: j1, model: openai/x, api_key: {FAKE_KEY}}}]"], "key 'score.judges.0.api_key'",
        "unknown key")),
    ("secret: judge params api_key", config_case(
        f"score:\n  judges:\n    - {{name: j1, model: openai/x, params: {{api_key: {FAKE_KEY}}}}}\n", [],
        "key 'score.judges.0.params'", "secrets are never configuration")),
    ("secret: generator api_key", config_case(
        f"generate:\n  generators:\n    - {{name: g, backend: api, model: openai/x, api: {{api_key: {FAKE_KEY}}}}}\n",
        [], "key 'generate.generators.0.api.api_key'", "unknown key")),
    ("secret: generator sampling extra", config_case(
        f"generate:\n  generators:\n    - {{name: g, backend: api, model: openai/x, sampling: {{extra: "
        f"{{api_key: {FAKE_KEY}}}}}}}\n", [], "key 'generate.generators.0.sampling.extra'",
        "secrets are never configuration")),
    ("secret: vllm engine env token", config_case(
        f"generate:\n  generators:\n    - {{name: g, backend: vllm, model: tiny:llama, vllm: {{env: "
        f"{{HF_TOKEN: {FAKE_KEY}}}}}}}\n", [], "key 'generate.generators.0.vllm.env'", "['HF_TOKEN']",
        "secrets are never configuration")),
    # -- later stages' inputs (checked before Ray or any model starts) ---------------------------
    ("generate: prompts missing a column", _generate_missing_column),
    ("generate: prompts with a null field", _generate_null_field),
    ("generate: input never committed", _generate_incomplete_input),
    ("pairs: non-numeric metric column", _pairs_non_numeric_metric),
    ("pairs: scores for an unknown candidate", _pairs_unknown_candidate),
]


def _outputs_flag(argv: list[str], out: str) -> list[str]:
    return argv if "--output" in argv else argv + ["--output", out]


def _complete_outputs(root: Path) -> list[str]:
    return [str(p.parent) for p in root.rglob(st.SUCCESS)]


def _run(argv, capsys) -> tuple[int, str, dict]:
    rc = main(argv)
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert lines, f"no JSON summary on stdout; stderr: {cap.err[-2000:]}"
    return rc, cap.err, json.loads(lines[-1])


@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_place_and_leaves_no_complete_output(tmp_path, capsys, name, make):
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv, fragments = make(inputs)
    before = set(_complete_outputs(tmp_path))   # inputs the case committed on purpose
    out = tmp_path / "out"
    rc, err, summary = _run(_outputs_flag(argv, str(out)), capsys)
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"persodpo {argv[0]}: error: " in err, err[-3000:]
    for frag in fragments:
        assert frag in err, f"{frag!r} not in: {err[-2000:]}"
    assert summary["ok"] is False and summary["command"] == argv[0]
    assert summary["error"] and summary["error"] in err
    argv = _outputs_flag(argv, str(out))
    assert not st.is_complete(argv[argv.index("--output") + 1])
    assert set(_complete_outputs(tmp_path)) == before, "a bad input left an output that looks complete"
    assert FAKE_KEY not in err + json.dumps(summary), "a secret from the configuration was echoed"


def test_the_sweep_is_at_least_twenty_cases_across_every_input_kind():
    kinds = {c[0].split(":")[0] for c in CASES}
    assert len(CASES) >= 22 and {"focus", "csv", "config", "secret", "generate", "pairs", "output"} <= kinds


def _fingerprint(uri: str) -> dict[str, str]:
    root = Path(uri)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["focus: BOM then truncated", "csv: missing column", "config: unknown key",
                                  "focus: nested too deeply"])
def test_a_bad_input_leaves_the_previous_good_output_intact(tmp_path, capsys, name):
    out = str(tmp_path / "prompts")
    assert main(["ingest", "--output", out]) == 0
    capsys.readouterr()
    good = _fingerprint(out)
    assert st.is_complete(out) and any(k.endswith(".parquet") for k in good)
    make = dict(CASES)[name]
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv, fragments = make(inputs)
    rc, err, summary = _run(_outputs_flag(argv, out), capsys)
    assert rc == 2 and not summary["ok"] and fragments[-1] in err
    assert _fingerprint(out) == good
    assert st.read_table(out).num_rows == 40


def test_a_generate_error_leaves_the_previous_candidates_intact(tmp_path, capsys):
    """A later stage too: a bad prompts table fails before the existing candidates are touched."""
    out = str(tmp_path / "candidates")
    from tests.support.score_data import make_candidates

    _commit(out, make_candidates(_prompts_table().slice(0, 4)))
    good = _fingerprint(out)
    argv, fragments = _generate_missing_column(tmp_path)
    rc, err, summary = _run(_outputs_flag(argv, out), capsys)
    assert rc == 2 and not summary["ok"] and fragments[-1] in err
    assert _fingerprint(out) == good


def test_bom_files_are_accepted(tmp_path, capsys):
    """A UTF-8 byte-order mark (Excel, Notepad) is not an error, in JSON, CSV or YAML."""
    focus = _write(tmp_path, "f.json", b"\xef\xbb\xbf" + _focus())
    bench = _write(tmp_path, "b.csv", b"\xef\xbb\xbf" + (CSV_HEADER + CSV_ROW).encode())
    cfg = _write(tmp_path, "c.yaml", b"\xef\xbb\xbfingest:\n  split: dev\n")
    rc, err, s = _run(["ingest", "--config", cfg, "--input", focus, "--output", str(tmp_path / "a")], capsys)
    assert rc == 0 and s["n_prompts"] == 40 and s["splits"] == {"dev": 40}, err
    rc, err, s = _run(["ingest", "--source", "persobench", "--input", bench, "--output", str(tmp_path / "b")], capsys)
    assert rc == 0 and s["n_prompts"] == 1, err


@pytest.mark.slow
def test_train_refuses_a_null_chosen_before_training(tmp_path):
    """Train's driver-side check of every pair, through the CLI in its own process (it starts a
    local Ray: the check needs the pairs as a Ray Dataset): exit 2, part file, pair id, field."""
    from persodpo.train.synthetic import easy_pairs, write_pairs

    rows = easy_pairs(8).to_pylist()
    rows[6]["chosen"] = None
    pairs = write_pairs(str(tmp_path / "pairs"), pa.Table.from_pylist(rows, schema=easy_pairs(1).schema))
    out = tmp_path / "dpo"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "persodpo", "train", "--input", pairs, "--output", str(out),
                        "--set", "train.model=tiny:llama", "--set", "ray.num_cpus=2",
                        "--set", "ray.progress_bars=false"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False
    for frag in (f"record {rows[6]['pair_id']}", "field 'chosen'", "part-0000", str(tmp_path / "pairs")):
        assert frag in r.stderr, (frag, r.stderr[-2000:])
    assert not out.exists() or not st.is_complete(str(out))


def test_an_in_process_cli_error_leaves_a_running_ray_up(ray_local, tmp_path, capsys):
    """``main`` called in-process (as these tests do) stops only a Ray it started itself: a bad
    input must not take the test session's Ray (and every later test's cluster) down with it."""
    src = _write(tmp_path, "focus.json", b'{"data": [')
    rc, err, summary = _run(["ingest", "--input", src, "--output", str(tmp_path / "out")], capsys)
    assert rc == 2 and not summary["ok"]
    assert ray_local.is_initialized()
    assert ray_local.get(ray_local.put(41)) + 1 == 42
