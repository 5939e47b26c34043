"""Self-contained HTML pages (``report.html``, ``pairs.html``): one file each, no network.

Plots are inline PNG (data: URIs), the rows a page browses are embedded as JSON in a
``<script type="application/json">`` element and drawn by a little plain JavaScript, so the file
opens from an object store download, an email attachment or a laptop without a server. No
library is vendored: what the pages do (filter, sort, show side by side) is a few dozen lines.
"""

from __future__ import annotations

import base64
import html
import json
import math

import numpy as np
import pandas as pd

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
p.lead{color:#555;margin:4px 0 12px}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f3;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:6px 10px;margin:8px 0}
.na{background:#f4f4f6;border-left:4px solid #999;padding:6px 10px;margin:4px 0;font-size:13px}
.good{color:#1e7b34;font-weight:600}.bad{color:#b03a2e;font-weight:600}.muted{color:#777}
img{max-width:100%;height:auto;background:#fff;border:1px solid #e4e4e4;margin:6px 0}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:end;background:#fff;border:1px solid #ddd;padding:8px 10px;
  position:sticky;top:0;z-index:2}
.controls label{display:flex;flex-direction:column;font-size:12px;color:#444}
.controls select,.controls input{font:inherit;padding:2px 4px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:8px 12px}
.card .meta{font-size:12px;color:#555;margin-bottom:6px}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:10px}
.reply{border:1px solid #e0e0e0;border-radius:4px;padding:6px 8px;white-space:pre-wrap;word-break:break-word}
.reply.chosen{border-color:#7bc48a;background:#f3fbf4}.reply.rejected{border-color:#e3a29b;background:#fdf5f4}
.reply h4{margin:0 0 4px;font-size:12px;color:#333}
.scores{font-size:12px;color:#333;margin-top:4px}
.turns{font-size:12.5px;color:#333}.turns div{margin:2px 0}.turns b{color:#555}
.persona{font-size:12.5px;color:#2d4f7c}
.count{font-weight:600}
.scroll{overflow-x:auto;max-width:100%}
"""

# Shared by both pages: escaping, number formatting, and a score list.
JS_COMMON = """
const DATA = JSON.parse(document.getElementById('page-data').textContent);
function esc(s){return String(s===null||s===undefined?'':s).replace(/[&<>"']/g,
  c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
function num(x,d){return (x===null||x===undefined||Number.isNaN(x))?'–':Number(x).toFixed(d===undefined?3:d);}
function scoreList(s){return Object.keys(s||{}).map(k=>esc(k)+' <b>'+num(s[k])+'</b>').join(' · ');}
function turns(h){return (h||[]).map(t=>'<div><b>'+esc(t.role)+':</b> '+esc(t.content)+'</div>').join('');}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if math.isnan(float(x)) else f"{float(x):.{digits}f}"
    return str(x)


def table(df: pd.DataFrame, columns: list[str] | None = None, *, headers: dict[str, str] | None = None,
          cells: dict | None = None) -> str:
    """An HTML table of ``df``'s ``columns``; ``cells[col](row) -> html`` overrides a column."""
    cols = columns or list(df.columns)
    headers, cells = headers or {}, cells or {}
    out = ['<div class="scroll"><table><thead><tr>', *[f"<th>{esc(headers.get(c, c))}</th>" for c in cols], "</tr></thead><tbody>"]
    for _, r in df.iterrows():
        out.append("<tr>")
        for c in cols:
            if c in cells:
                out.append(f"<td>{cells[c](r)}</td>")
            else:
                v = r[c]
                numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                out.append(f"<td class=\"num\">{fmt(v)}</td>" if numeric else f"<td>{esc(fmt(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def image(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def json_for_script(data) -> str:
    """JSON that cannot end its ``<script>`` element early (a reply may contain ``</script>``)."""
    text = json.dumps(data, ensure_ascii=False, default=_jsonable, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def clean(x):
    """Floats that JSON can carry: NaN and infinities become null (recursively)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if (math.isnan(float(x)) or math.isinf(float(x))) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def page(title: str, body: str, *, data=None, script: str = "") -> str:
    """The whole document: CSS, body, embedded data and the page's script."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>", body, "</main>"]
    if data is not None:
        parts.append(f'<script type="application/json" id="page-data">{json_for_script(clean(data))}</script>')
        parts.append(f"<script>{JS_COMMON}{script}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)
