"""pairs.html and report.html in a real browser: headless Chromium (Debian's package, installed
when missing) loads each file from disk with the network closed, the page logs no console error,
a filter changes the visible rows to exactly the rows it should keep, and a screenshot of each is
written beside the page (the test's output)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from persodpo import storage as st
from persodpo.pairs.stage import run_stage
from tests.support.browser import Page, chromium_path
from tests.unit.test_pairs_stage import cand, cfg_for, write_inputs

VISIBLE = "document.querySelectorAll('{sel}').length"


@pytest.fixture(scope="module")
def chromium():
    path, why = chromium_path()
    if not path:
        pytest.skip(f"no headless browser: {why}")
    return path


def _set(page: Page, element: str, value: str, event: str = "change") -> None:
    page.evaluate(f"(() => {{const e = document.getElementById({element!r}); e.value = {value!r}; "
                  f"e.dispatchEvent(new Event({event!r})); }})()")


def _pairs_inputs(root):
    """Four prompts, five generators each, one of which fails the format: content and format pairs."""
    cands = []
    for i, p in enumerate(("p1", "p2", "p3", "p4")):
        for j, gen in enumerate(("gpt-4o-mini", "Qwen2-7B-Instruct", "Llama-3.1-8B-Instruct", "gemma-2-9b-it")):
            words = " ".join(["lighthouse"] * (3 + 4 * j + i))
            cands.append(cand(f"{p}-{j}", p, gen, text=f"Reply {p}-{j} </script><u>{words}</u>",
                              coh_unieval=0.5 + 0.1 * j, c_score=float(j % 3 - 1), ue_score=float(j),
                              persona_distance=0.2 * j + 0.05 * i))
        cands.append(cand(f"{p}-f", p, "Mistral-7B-Instruct-v0.2", status="fallback",
                          raw='{"response": "A long reply that was cut off befo'))
    return write_inputs(root, cands, prompts=("p1", "p2", "p3", "p4"))


def test_pairs_html_shows_every_pair_and_its_filters_keep_exactly_the_matching_ones(chromium, tmp_path):
    uris = _pairs_inputs(tmp_path)
    out = tmp_path / "pairs"
    summary = run_stage(cfg_for(uris, str(out), "persodpo", "pairs.plots=true", "pairs.persodpo.min_margin=0.05"))
    pairs = st.read_table(str(out)).to_pandas()
    assert summary["n_pairs"] == len(pairs) and set(pairs["pair_type"]) == {"content", "format"}
    html = (out / "pairs.html").read_text()
    assert "pairs.html" in st.read_manifest(str(out))["files"]
    assert "http://" not in html and "https://" not in html and "data:image/png;base64," in html
    with Page(chromium) as page:
        page.open(out / "pairs.html")
        assert page.evaluate(VISIBLE.format(sel=".pair-card")) == len(pairs)
        assert page.evaluate("document.getElementById('shown').textContent") == f"{len(pairs)} of {len(pairs)} pairs"
        # A reply's markup is text, not elements: no <u> from a reply made it into the DOM.
        assert page.evaluate("document.querySelectorAll('.reply u').length") == 0
        _set(page, "f-type", "format")
        n_format = int((pairs["pair_type"] == "format").sum())
        assert 0 < n_format < len(pairs)
        assert page.evaluate(VISIBLE.format(sel=".pair-card")) == n_format
        shown = page.evaluate("[...document.querySelectorAll('.pair-card')].map(e => e.dataset.pair).sort()")
        assert shown == sorted(pairs.loc[pairs["pair_type"] == "format", "pair_id"])
        _set(page, "f-type", "all")
        cut = float(pairs["margin"].median())
        _set(page, "f-margin-min", str(cut), "input")
        assert page.evaluate(VISIBLE.format(sel=".pair-card")) == int((pairs["margin"] >= cut).sum())
        _set(page, "f-margin-min", "", "input")
        _set(page, "f-gen", "Mistral-7B-Instruct-v0.2")
        _set(page, "f-side", "rejected")
        assert page.evaluate(VISIBLE.format(sel=".pair-card")) == \
            int((pairs["rejected_generator"] == "Mistral-7B-Instruct-v0.2").sum())
        _set(page, "f-gen", "all")
        # The per-prompt view ranks all five candidates of a prompt, the chosen ones marked.
        _set(page, "f-prompt", "p3")
        assert page.evaluate("document.querySelectorAll('#prompt-view tbody tr').length") == 5
        assert page.errors() == []
        shot = page.screenshot(out.parent / "pairs.png")
    assert shot.stat().st_size > 10_000
    print(f"\npairs.html: {len(pairs)} pairs ({n_format} format); screenshot {shot} ({shot.stat().st_size} bytes)")


def test_report_html_answers_trained_vs_base_and_filters_prompts_by_who_won(chromium, tmp_path):
    from persodpo.evaluate import report
    from persodpo.evaluate.stage import render_report

    cands, scores = [], []
    for i in range(12):
        for model, bonus in (("base", 0.0), ("dpo", 0.3 if i % 3 else -0.2)):
            cid = f"{model}-{i}"
            cands.append({"candidate_id": cid, "prompt_id": f"p{i:02d}", "generator": model, "parse_ok": True,
                          "parse_status": "valid", "text": "word " * (8 + i % 4) + ("<i>x</i>" if i == 0 else "")})
            scores.append({"candidate_id": cid, "prompt_id": f"p{i:02d}", "generator": model, "judge_tokens": None,
                           "judge_cost_usd": None, "persona_coverage": 0.4 + bonus + 0.01 * i,
                           "format_ok": 1.0 if (i + (model == "dpo")) % 4 else 0.0, "judge_j1_persona": float("nan"),
                           "score_errors": json.dumps({"judge_j1_persona": "judge j1: InternalServerError: 500"})})
    cands, scores = pd.DataFrame(cands), pd.DataFrame(scores)
    df = report.join(cands, scores)
    prompts = pd.DataFrame([{"prompt_id": f"p{i:02d}", "persona": ["I love iron architecture."],
                             "history": [{"role": "user", "content": f"Tell me about tower {i}."}], "gold": "It is old."}
                            for i in range(12)])
    md, html, files = render_report(df, report.metric_columns(scores), models=["base", "dpo"], history=[],
                                    pairs_stats=None, n_prompts=12, split="valid", buckets=2, scores=scores,
                                    prompts=prompts, baseline="base", trained="dpo")
    path = tmp_path / "report.html"
    path.write_text(html)
    with Page(chromium) as page:
        page.open(path)
        assert page.evaluate(VISIBLE.format(sel=".prompt-card")) == 12
        body = page.evaluate("document.body.innerText")
        assert "Is the trained model better?" in body and "bootstrap 95% CI" in body
        assert "judge_j1_persona (dpo): 12 of 12 replies have no value: judge j1: InternalServerError: 500" in body
        _set(page, "f-metric", "persona_coverage")
        _set(page, "f-outcome", "win")
        assert page.evaluate(VISIBLE.format(sel=".prompt-card")) == 8      # bonus 0.3 on 8 of 12 prompts
        _set(page, "f-outcome", "loss")
        assert page.evaluate(VISIBLE.format(sel=".prompt-card")) == 4
        assert page.evaluate("document.querySelectorAll('.reply i').length") == 0
        assert page.errors() == []
        shot = page.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 10_000
    print(f"\nreport.html: screenshot {shot} ({shot.stat().st_size} bytes)")
