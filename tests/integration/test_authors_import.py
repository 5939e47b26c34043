"""The authors' shared data imports into prompts / candidates / scores, parsed as their code does."""

import json
import subprocess
import sys

import pyarrow.compute as pc

from persodpo import storage as st


def test_import_counts_and_parse_outcomes(shared_data, tmp_path):
    out = tmp_path / "authors"
    r = subprocess.run([sys.executable, "-m", "persodpo", "ingest", "--source", "persodpo-authors",
                        "--input", str(shared_data), "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_train_prompts"] == 1500 and summary["n_valid_prompts"] == 1000
    assert summary["n_candidates"] == 10500
    ps = summary["parse_status"]
    assert ps["valid"] + ps["fallback"] + ps["unusable"] == 10500

    cands = st.read_table(str(out / "candidates"))
    scores = st.read_table(str(out / "scores"))
    assert cands.num_rows == scores.num_rows == 10500
    assert len(set(cands.column("candidate_id").to_pylist())) == 10500
    assert sorted(set(cands.column("generator").to_pylist())) == sorted([
        "Llama-3.1-8B-Instruct", "Mistral-7B-Instruct-v0.2", "Qwen2-7B-Instruct", "Qwen2-0.5B-Instruct",
        "gpt-3.5-turbo", "gpt-4o-mini", "gpt-4-turbo"])
    # Our parser's "valid" set is exactly the authors' (their scored gen_response is non-empty).
    import pandas as pd

    n_authors_valid = 0
    for f in (shared_data / "scored_responses").glob("*-train-results.csv"):
        d = pd.read_csv(f)
        n_authors_valid += int(d.gen_response.fillna("").str.strip().ne("").sum())
    assert ps["valid"] == n_authors_valid
    # Scores only for valid outputs; the reason is recorded otherwise.
    valid = pc.equal(cands.column("parse_status"), "valid")
    assert pc.sum(pc.is_valid(scores.column("coh_unieval"))).as_py() == pc.sum(valid).as_py()
    assert scores.filter(pc.is_null(scores.column("c_score"))).column("score_errors").null_count == 0
    # The held-out outputs are there for evaluation.
    assert st.read_table(str(out / "eval_candidates")).num_rows == 5000
