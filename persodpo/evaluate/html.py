"""``report.html``: the evaluation report in one self-contained file (persodpo.webpage).

First the answer a reader wants (is the trained model better than the base model, by how much,
beyond noise: paired differences with bootstrap intervals and win/tie/loss), then what could not
be measured and why, the tables and plots of ``report.md``, and every held-out prompt with the
models' replies side by side, filterable by which model won on a chosen metric.
"""

from __future__ import annotations

import pandas as pd

from persodpo import webpage as wp

MAX_PROMPTS = 1000
LAST_TURNS = 4

SCRIPT = """
const sel = {metric: document.getElementById('f-metric'), outcome: document.getElementById('f-outcome'),
             text: document.getElementById('f-text')};
function outcome(p, m){
  const a = p.scores[DATA.trained] ? p.scores[DATA.trained][m] : null;
  const b = p.scores[DATA.baseline] ? p.scores[DATA.baseline][m] : null;
  if (a===null||a===undefined||b===null||b===undefined) return 'missing';
  if (Math.abs(a-b) <= 1e-9) return 'tie';
  return a > b ? 'win' : 'loss';
}
function render(){
  const m = sel.metric.value, want = sel.outcome.value, q = sel.text.value.toLowerCase();
  const box = document.getElementById('prompts'); let shown = 0, html = [];
  for (const p of DATA.prompts){
    if (want !== 'all' && outcome(p, m) !== want) continue;
    if (q && !JSON.stringify(p).toLowerCase().includes(q)) continue;
    shown++;
    if (shown > 300) continue;   // the count stays exact; the page stays fast
    const cols = DATA.models.map(name => {
      const rs = (p.replies[name]||[]);
      const body = rs.length ? rs.map(r => '<div class="reply"><h4>'+esc(name)+' · '+r.words+' words · '+esc(r.parse_status)+
        '</h4>'+esc(r.text===null?'(no usable reply)':r.text)+'<div class="scores">'+scoreList(r.scores)+'</div></div>').join('')
        : '<div class="reply muted">'+esc(name)+': no reply</div>';
      return '<div>'+body+'</div>';
    }).join('');
    html.push('<div class="card prompt-card" data-prompt="'+esc(p.prompt_id)+'"><div class="meta">'+esc(p.prompt_id)+
      (want!=='all'?' · '+esc(DATA.trained)+' '+esc(outcome(p,m))+' on '+esc(m):'')+'</div>'+
      '<div class="persona"><b>persona:</b> '+esc((p.persona||[]).join(' '))+'</div>'+
      '<div class="turns">'+turns(p.history)+'</div>'+
      (p.gold?'<div class="turns"><b>gold:</b> '+esc(p.gold)+'</div>':'')+
      '<div class="side">'+cols+'</div></div>');
  }
  box.innerHTML = html.join('');
  document.getElementById('shown').textContent = shown + ' of ' + DATA.prompts.length + ' prompts' +
    (shown > 300 ? ' (first 300 drawn)' : '');
}
for (const k in sel) sel[k].addEventListener(k==='text'?'input':'change', render);
render();
"""


def _prompt_rows(df: pd.DataFrame, prompts: pd.DataFrame, metrics: list[str]) -> list[dict]:
    by_id = {r["prompt_id"]: r for r in prompts.to_dict("records")} if len(prompts) else {}
    out = []
    for pid, g in list(df.groupby("prompt_id", sort=True))[:MAX_PROMPTS]:
        p = by_id.get(pid, {})
        replies, scores = {}, {}
        for model, mg in g.groupby("model", sort=False):
            replies[model] = [{"text": r["text"], "words": int(r["words"]), "parse_status": r["parse_status"],
                               "scores": {m: r[m] for m in metrics}} for _, r in mg.iterrows()]
            scores[model] = {m: mg[m].mean() for m in metrics}
        history = list(p.get("history") if p.get("history") is not None else [])[-LAST_TURNS:]
        out.append({"prompt_id": pid, "persona": list(p.get("persona") if p.get("persona") is not None else []),
                    "history": [{"role": t["role"], "content": t["content"]} for t in history],
                    "gold": p.get("gold"), "replies": replies, "scores": scores})
    return out


def _paired_html(paired: pd.DataFrame) -> str:
    if paired.empty:
        return "<p class=\"muted\">No paired comparison: the base model was not evaluated.</p>"

    def verdict(r) -> str:
        if r["n_prompts"] < 2:
            return '<span class="muted">too few prompts</span>'
        if r["significant"]:
            return '<span class="good">better</span>' if r["diff"] > 0 else '<span class="bad">worse</span>'
        return '<span class="muted">no evidence either way</span>'

    def ci(r) -> str:
        return f"[{wp.fmt(r['ci_low'])}, {wp.fmt(r['ci_high'])}]"

    def wtl(r) -> str:
        return f"{wp.fmt(r['win'], 2)} / {wp.fmt(r['tie'], 2)} / {wp.fmt(r['loss'], 2)}"

    def matched(r) -> str:
        if "diff_length_matched" not in r or pd.isna(r.get("n_length_matched")):
            return "–"
        return f"{wp.fmt(r['diff_length_matched'])} (n={int(r['n_length_matched'])})"

    cols = ["model", "metric", "n_prompts", "mean_baseline", "mean_model", "diff", "ci", "wtl", "matched", "verdict"]
    return wp.table(paired, cols, headers={"n_prompts": "prompts", "mean_baseline": "base", "mean_model": "model",
                                           "diff": "difference", "ci": "bootstrap 95% CI",
                                           "wtl": "win / tie / loss", "matched": "length-matched difference",
                                           "verdict": "verdict"},
                    cells={"ci": ci, "wtl": wtl, "matched": matched, "verdict": verdict})


def report_page(*, title: str, lead: str, warnings: list[str], paired: pd.DataFrame, rates: pd.DataFrame,
                unavailable: list[str], model_table: pd.DataFrame, score_columns: list[str],
                length_controlled: pd.DataFrame, per_bucket: pd.DataFrame, correlation: dict[str, float],
                plots: dict[str, bytes], df: pd.DataFrame, prompts: pd.DataFrame, metrics: list[str],
                baseline: str | None, trained: str | None, training_summary: str | None = None) -> str:
    body = [f"<h1>{wp.esc(title)}</h1>", f'<p class="lead">{wp.esc(lead)}</p>']
    body += [f'<div class="warn"><b>Warning:</b> {wp.esc(w)}</div>' for w in warnings]
    body += ["<h2>Is the trained model better?</h2>",
             '<p class="lead">Per metric: the mean per-prompt difference to the base model on the prompts both '
             "answered, its bootstrap 95% interval (prompts resampled), the share of prompts won, tied and lost, and "
             "the difference over prompts whose two replies have similar length (the same length bucket).</p>",
             _paired_html(paired), wp.image(plots.get("paired_differences.png"), "paired differences")]
    if unavailable:
        body += ["<h2>Not measured</h2>"] + [f'<div class="na">{wp.esc(line)}</div>' for line in unavailable]
    if len(rates):
        def rate(r) -> str:
            return f"{wp.fmt(r['rate'])} [{wp.fmt(r['ci_low'])}, {wp.fmt(r['ci_high'])}] ({r['successes']}/{r['n']})"
        body += ["<h2>Rates</h2>", '<p class="lead">Pass/fail metrics: the share that passed, Wilson 95% interval.</p>',
                 wp.table(rates, ["model", "metric", "rate"], cells={"rate": rate},
                          headers={"rate": "rate [95% CI] (passed/n)"})]
    body += ["<h2>Scores per model</h2>",
             '<p class="lead">Error ratio: requests that failed (no reply); format failure ratio: replies that did not '
             "follow the requested format; words: mean words of usable replies.</p>",
             wp.table(model_table, ["model", "n", "error_ratio", "format_failure_ratio", "unusable_ratio",
                                    "mean_words", *score_columns]),
             "<h2>Length-controlled scores</h2>",
             wp.table(length_controlled, ["model", *score_columns]) if len(length_controlled)
             else '<p class="muted">No usable replies.</p>',
             "<h3>Per length bucket</h3>", wp.table(per_bucket, ["model", "bucket", "n", *score_columns]),
             "<h3>Correlation of each metric with reply length (Spearman)</h3>",
             wp.table(pd.DataFrame({"metric": list(correlation), "rho": list(correlation.values())})),
             "<h2>Plots</h2>"]
    body += [wp.image(plots.get(n), n) for n in ("metrics_by_model.png", "length_by_model.png")]
    if plots.get("training_curves.png"):
        body += ["<h2>Training</h2>", f"<p>{wp.esc(training_summary or '')}</p>",
                 wp.image(plots["training_curves.png"], "training curves")]
    options = "".join(f'<option value="{wp.esc(m)}">{wp.esc(m)}</option>' for m in metrics)
    pair_filter = baseline is not None and trained is not None
    body += ["<h2>Held-out prompts, replies side by side</h2>",
             '<div class="controls">'
             f'<label>metric<select id="f-metric">{options}</select></label>'
             '<label>trained vs base<select id="f-outcome"><option value="all">all prompts</option>'
             '<option value="win">trained better</option><option value="tie">tie</option>'
             '<option value="loss">trained worse</option><option value="missing">not comparable</option>'
             f'</select></label><label>text<input id="f-text" type="search" placeholder="search"></label>'
             '<span class="count" id="shown"></span></div>'
             + ("" if pair_filter else '<p class="muted">(one model only: the trained vs base filter has nothing to compare)</p>'),
             '<div id="prompts"></div>']
    models = list(dict.fromkeys(df["model"]))
    if baseline in models:   # the base model's reply on the left
        models = [baseline, *[m for m in models if m != baseline]]
    data = {"models": models, "baseline": baseline, "trained": trained, "metrics": metrics,
            "prompts": _prompt_rows(df, prompts, metrics)}
    return wp.page(title, "\n".join(body), data=data, script=SCRIPT)
