"""``pairs.html``: browse the pairs beside the data card, in one self-contained file.

Each pair shows the prompt's persona and last turns, chosen and rejected side by side with every
metric and judge score of both candidates, the margin and the generators; filters by pair type,
generator, margin range and length relation; and a per-prompt view ranks all candidates of a
prompt by the recipe's score (what the recipe chose from). A run with more pairs than
``pairs.html_max_pairs`` embeds a deterministic sample (the pairs with the smallest ids: ids are
hashes, so a uniform sample that a rerun reproduces) and says so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persodpo import webpage as wp

LAST_TURNS = 4
MAX_TEXT = 4000
# Score columns that are bookkeeping, not a judgement of the reply.
NOT_SCORES = {"candidate_id", "prompt_id", "generator", "score_errors", "judge_tokens", "judge_cost_usd"}

SCRIPT = """
const f = {type: document.getElementById('f-type'), gen: document.getElementById('f-gen'),
           side: document.getElementById('f-side'), lo: document.getElementById('f-margin-min'),
           hi: document.getElementById('f-margin-max'), len: document.getElementById('f-length')};
const CAND = DATA.candidates, PROMPT = DATA.prompts;
function relation(p){ const c = CAND[p.chosen].words, r = p.rejected_words;
  return c < r ? 'shorter' : (c > r ? 'longer' : 'equal'); }
function keep(p){
  if (f.type.value !== 'all' && p.pair_type !== f.type.value) return false;
  const g = f.gen.value, cg = CAND[p.chosen].generator, rg = CAND[p.rejected].generator;
  if (g !== 'all'){
    if (f.side.value === 'chosen' && cg !== g) return false;
    if (f.side.value === 'rejected' && rg !== g) return false;
    if (f.side.value === 'either' && cg !== g && rg !== g) return false;
  }
  const lo = parseFloat(f.lo.value), hi = parseFloat(f.hi.value);
  if (!Number.isNaN(lo) && !(p.margin >= lo)) return false;
  if (!Number.isNaN(hi) && !(p.margin <= hi)) return false;
  if (f.len.value !== 'all' && relation(p) !== f.len.value) return false;
  return true;
}
function side(p, which){
  const c = CAND[which === 'chosen' ? p.chosen : p.rejected];
  const text = which === 'rejected' && p.rejected_raw ? p.rejected_text : c.text;
  const words = which === 'rejected' ? p.rejected_words : c.words;
  return '<div class="reply '+which+'"><h4>'+which+' · '+esc(c.generator)+' · '+words+' words · '+esc(c.parse_status)+
    (which==='rejected' && p.rejected_raw ? ' · raw output shown' : '')+
    ' · score '+num(which==='chosen'?p.score_chosen:p.score_rejected)+'</h4>'+esc(text)+
    '<div class="scores">'+scoreList(c.scores)+'</div></div>';
}
function renderPairs(){
  const box = document.getElementById('pairs'); let shown = 0; const html = [];
  for (const p of DATA.pairs){
    if (!keep(p)) continue;
    shown++;
    if (shown > 200) continue;   // the count stays exact; the page stays fast
    const pr = PROMPT[p.prompt_id] || {};
    html.push('<div class="card pair-card" data-pair="'+esc(p.pair_id)+'"><div class="meta">'+esc(p.pair_type)+
      ' pair · margin '+num(p.margin,4)+' · chosen '+relation(p)+' · prompt <a href="#prompt-view" data-prompt="'+
      esc(p.prompt_id)+'" class="to-prompt">'+esc(p.prompt_id)+'</a></div>'+
      '<div class="persona"><b>persona:</b> '+esc((pr.persona||[]).join(' '))+'</div>'+
      '<div class="turns">'+turns(pr.history)+'</div>'+
      '<div class="side">'+side(p,'chosen')+side(p,'rejected')+'</div></div>');
  }
  box.innerHTML = html.join('');
  document.getElementById('shown').textContent = shown+' of '+DATA.pairs.length+' pairs'+(shown>200?' (first 200 drawn)':'');
  for (const a of box.querySelectorAll('a.to-prompt')) a.addEventListener('click', () => showPrompt(a.dataset.prompt));
}
function showPrompt(pid){
  const s = document.getElementById('f-prompt'); s.value = pid;
  const pr = PROMPT[pid] || {}; const ids = pr.ranked || [];
  const rows = ids.map((cid, i) => { const c = CAND[cid];
    return '<tr><td class="num">'+(i+1)+'</td><td>'+esc(c.generator)+'</td><td class="num">'+num(c.recipe_score,4)+
      '</td><td>'+esc(c.roles.join(', '))+'</td><td class="num">'+c.words+'</td><td>'+esc(c.parse_status)+
      '</td><td class="reply">'+esc(c.text===null?'(no usable reply)':c.text)+'</td><td class="scores">'+scoreList(c.scores)+'</td></tr>'; });
  document.getElementById('prompt-view').innerHTML = '<div class="persona"><b>persona:</b> '+esc((pr.persona||[]).join(' '))+
    '</div><div class="turns">'+turns(pr.history)+'</div><table><thead><tr><th>rank</th><th>generator</th><th>recipe score</th>'+
    '<th>in pairs as</th><th>words</th><th>parse</th><th>reply</th><th>scores</th></tr></thead><tbody>'+rows.join('')+'</tbody></table>';
}
for (const k in f) f[k].addEventListener(k==='lo'||k==='hi' ? 'input' : 'change', renderPairs);
document.getElementById('f-prompt').addEventListener('change', e => showPrompt(e.target.value));
renderPairs();
if (DATA.prompt_order.length) showPrompt(DATA.prompt_order[0]);
"""


def _score_columns(scores: pa.Table) -> list[str]:
    return [c for c in scores.column_names if c not in NOT_SCORES and (
        pa.types.is_floating(scores.schema.field(c).type) or pa.types.is_integer(scores.schema.field(c).type)
        or pa.types.is_boolean(scores.schema.field(c).type))]


def _truncate(text):
    # A failed candidate has no text: null in Arrow, NaN once pandas holds the column.
    if not isinstance(text, str):
        return None
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" … ({len(text) - MAX_TEXT} more characters)"


def _count(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)


def sample_positions(pair_ids: np.ndarray, max_pairs: int) -> np.ndarray:
    """Positions of the pairs to embed, in output order: all, or the ``max_pairs`` smallest ids."""
    if len(pair_ids) <= max_pairs:
        return np.arange(len(pair_ids))
    return np.sort(np.argsort(pair_ids, kind="stable")[:max_pairs])


def browser_data(pool: pd.DataFrame, builder, recipe_score: pd.Series, scores: pa.Table, prompts: pa.Table, *,
                 max_pairs: int) -> dict:
    """What pairs.html embeds: the sampled pairs, every candidate of their prompts (text, words,
    parse status, recipe score, all score columns) and those prompts (persona, last turns)."""
    keep = sample_positions(builder.pair_ids, max_pairs)
    chosen, rejected = builder.chosen[keep], builder.rejected[keep]
    pcodes = np.unique(pool["pcode"].to_numpy()[chosen]) if len(keep) else np.zeros(0, dtype=np.int64)
    members = np.flatnonzero(np.isin(pool["pcode"].to_numpy(), pcodes))
    cids = pool["candidate_id"].to_numpy(dtype=object)
    member_ids = cids[members]
    cols = _score_columns(scores)
    wanted = scores.filter(pc.is_in(scores.column("candidate_id"), value_set=pa.array(member_ids, type=pa.string())))
    by_cid = {r["candidate_id"]: r for r in wanted.select(["candidate_id", *cols]).to_pylist()}
    roles: dict[str, list[str]] = {}
    for c, r in zip(chosen, rejected):
        roles.setdefault(cids[c], []).append("chosen")
        roles.setdefault(cids[r], []).append("rejected")
    rs = recipe_score.to_numpy(dtype="float64")
    candidates = {}
    for i in members:
        cid = cids[i]
        s = by_cid.get(cid, {})
        candidates[cid] = {"generator": pool["generator"].iat[i], "text": _truncate(pool["text"].iat[i]),
                           "words": _count(pool["words"].iat[i]), "parse_status": pool["parse_status"].iat[i],
                           "recipe_score": rs[i],
                           "roles": sorted(set(roles.get(cid, [])), key=["chosen", "rejected"].index),
                           "scores": {k: (float(v) if v is not None else None) for k, v in s.items()
                                      if k != "candidate_id"}}
    pids = pool["prompt_id"].to_numpy(dtype=object)
    p_rows = prompts.filter(pc.is_in(prompts.column("prompt_id"),
                                     value_set=pa.array(sorted(set(pids[members])), type=pa.string())))
    prompt_info = {}
    ranked: dict[str, list] = {}
    for i in members:
        ranked.setdefault(pids[i], []).append(i)
    for r in p_rows.select([c for c in ("prompt_id", "persona", "history") if c in p_rows.column_names]).to_pylist():
        order = sorted(ranked.get(r["prompt_id"], []), key=lambda i: (np.isnan(rs[i]), -np.nan_to_num(rs[i]), cids[i]))
        prompt_info[r["prompt_id"]] = {"persona": r.get("persona") or [],
                                       "history": [{"role": t["role"], "content": _truncate(t["content"])}
                                                   for t in (r.get("history") or [])[-LAST_TURNS:]],
                                       "ranked": [cids[i] for i in order]}
    raw = pool["raw"]
    words = pool["words"].to_numpy()
    pairs = []
    from persodpo.words import word_counts

    for k, c, r in zip(keep, chosen, rejected):
        row = builder.sel.iloc[k]
        raw_side = bool(builder.rejected_raw[k])
        rejected_text = _truncate(raw.iat[r]) if raw_side else None
        pairs.append({"pair_id": builder.pair_ids[k].decode(), "prompt_id": pids[c], "pair_type": row["pair_type"],
                      "chosen": cids[c], "rejected": cids[r], "rejected_raw": raw_side,
                      "rejected_text": rejected_text,
                      "rejected_words": int(word_counts(pa.array([raw.iat[r]]))[0]) if raw_side else int(words[r]),
                      "score_chosen": float(row["score_chosen"]), "score_rejected": float(row["score_rejected"]),
                      "margin": float(row["score_chosen"] - row["score_rejected"])})
    order = [p for p in dict.fromkeys(p["prompt_id"] for p in pairs)]
    return {"n_pairs_total": int(len(builder.pair_ids)), "pairs": pairs, "candidates": candidates,
            "prompts": prompt_info, "prompt_order": order}


def pairs_page(stats: dict, data: dict, images: dict[str, bytes]) -> str:
    types = sorted({p["pair_type"] for p in data["pairs"]})
    gens = sorted({data["candidates"][p[s]]["generator"] for p in data["pairs"] for s in ("chosen", "rejected")})
    b = stats.get("balance") or {}
    sampled = data["n_pairs_total"] > len(data["pairs"])

    def opts(values, first="all") -> str:
        return f'<option value="all">{first}</option>' + "".join(
            f'<option value="{wp.esc(v)}">{wp.esc(v)}</option>' for v in values)

    summary = pd.DataFrame([
        {"pairs": t, "n": bb.get("n_pairs"), "chosen shorter": bb.get("chosen_shorter_share"),
         "words chosen": bb.get("mean_words_chosen"), "words rejected": bb.get("mean_words_rejected"),
         "rejected failed parsing": bb.get("rejected_failed_parsing_share"),
         "mean margin": (bb.get("margin") or {}).get("mean")}
        for t, bb in [("all", b), *(stats.get("balance_by_pair_type") or {}).items()] if bb.get("n_pairs")])
    body = [f"<h1>Pairs from recipe <code>{wp.esc(stats.get('recipe'))}</code></h1>",
            f'<p class="lead">{stats.get("n_pairs")} pairs over {stats.get("n_prompts_with_pairs")} of '
            f'{stats.get("n_prompts")} prompts ({stats.get("n_candidates")} candidates); prompt template '
            f'<code>{wp.esc(stats.get("template"))}</code>. The full numbers are in data_card.md and stats.json.</p>']
    if sampled:
        body.append(f'<div class="warn">This page embeds {len(data["pairs"])} of {data["n_pairs_total"]} pairs '
                    "(a deterministic sample: the smallest pair ids; raise pairs.html_max_pairs for more).</div>")
    if len(summary):
        body += ["<h2>Balance</h2>", wp.table(summary)]
    body += ["<h2>Plots</h2>", *[wp.image(png, name) for name, png in images.items()],
             "<h2>Pairs</h2>",
             '<div class="controls">'
             f'<label>pair type<select id="f-type">{opts(types)}</select></label>'
             f'<label>generator<select id="f-gen">{opts(gens)}</select></label>'
             '<label>generator is<select id="f-side"><option value="either">chosen or rejected</option>'
             '<option value="chosen">chosen</option><option value="rejected">rejected</option></select></label>'
             '<label>margin from<input id="f-margin-min" type="number" step="any"></label>'
             '<label>margin to<input id="f-margin-max" type="number" step="any"></label>'
             '<label>chosen reply is<select id="f-length"><option value="all">any length</option>'
             '<option value="shorter">shorter</option><option value="longer">longer</option>'
             '<option value="equal">same length</option></select></label>'
             '<span class="count" id="shown"></span></div>',
             '<div id="pairs"></div>',
             "<h2>One prompt, all its candidates ranked by the recipe's score</h2>",
             '<div class="controls"><label>prompt<select id="f-prompt">'
             + "".join(f'<option value="{wp.esc(p)}">{wp.esc(p)}</option>' for p in data["prompt_order"])
             + "</select></label></div>", '<div id="prompt-view"></div>']
    return wp.page(f"pairs: {stats.get('recipe')}", "\n".join(body), data=data, script=SCRIPT)
