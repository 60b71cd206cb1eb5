"""review.html: one self-contained page for a haematologist, opened from disk (file://), no server.

The batch travels inside the page as JSON (`<script type="application/json" id="batch">`, every
picture a data: URI); a small script shows one image at a time and writes every text through
textContent, never as HTML. Per image: the original field, the model input, a Grad-CAM map per
network, each network's and the ensemble's probabilities and the referral reasons in words; a button
per review label (digits 1-9 choose, arrows move), a note. Audit images show none of the model's
output until the reviewer has decided (no anchoring). Decisions live in the browser's localStorage
under the batch id, so a reload or a crash loses nothing; "Export decisions" downloads the CSV that
`alle-dist review import` reads (decisions.PAGE_COLUMNS).
"""
from __future__ import annotations

import html
import json

from .decisions import PAGE_COLUMNS

TITLE = "alle_dist review"
DISCLAIMER = ("Research tool, not a medical device. Your decisions become the reference for an audit "
              "of the model and may become training data: label what you see, not what the model says.")

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #d5dde5;padding:8px 16px;display:flex;
 flex-wrap:wrap;gap:10px 18px;align-items:center;z-index:2}
header h1{font-size:1.1em;margin:0}#counter{font-weight:600}#warn{color:#b3261e;font-weight:600}
main{max-width:1280px;margin:0 auto;padding:12px 16px 40px}
.disclaimer{background:#fff4d6;border:1px solid #d9a400;padding:6px 10px;border-radius:6px;margin-bottom:10px}
#where{font-family:monospace;font-size:.85em;word-break:break-all;color:#444}
.kind{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:.85em}
.kind.referred{background:#e8f0fe;color:#1a4fa0}.kind.audit{background:#ede7f6;color:#4b2c91}
.pics{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}.pics figure{margin:0;text-align:center}
.pics img{display:block;background:#fff;border:1px solid #d5dde5;image-rendering:auto}
#field{width:384px;max-width:100%;height:auto}.small{width:224px;height:224px;object-fit:contain}
figcaption{font-size:.85em;color:#444;margin-top:3px}
.labels{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.labels button{font-size:1em;padding:8px 14px;border:2px solid #9aa7b4;border-radius:6px;background:#fff;cursor:pointer}
.labels button.chosen{background:#17692f;border-color:#17692f;color:#fff}
.labels kbd{font-size:.8em;border:1px solid #aaa;border-radius:3px;padding:0 4px;margin-right:6px;background:#f3f3f3;color:#333}
textarea{width:min(100%,640px);height:3.2em;font:inherit}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #cfd6dd;padding:3px 10px;text-align:left}
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
#model{background:#fff;border:1px solid #d5dde5;border-radius:6px;padding:8px 12px;margin-top:10px}
#blind{color:#4b2c91;font-style:italic}#decided{color:#17692f;font-weight:600}
nav button{font-size:1em;padding:4px 10px}
"""

_JS = r"""
const B = JSON.parse(document.getElementById('batch').textContent);
const KEY = 'alle_dist.review.' + B.batch_id;
const $ = id => document.getElementById(id);
let S = {reviewer: '', pos: 0, decisions: {}, notes: {}};
try { Object.assign(S, JSON.parse(localStorage.getItem(KEY) || '{}')); } catch (e) {}
function save() { localStorage.setItem(KEY, JSON.stringify(S)); }
function decided() { return B.items.filter(it => S.decisions[it.uri]).length; }
function text(el, t) { el.textContent = t == null ? '' : String(t); return el; }
function make(tag, t, cls) { const e = document.createElement(tag); if (cls) e.className = cls; return text(e, t); }
function img(src, cls, alt) { const i = document.createElement('img'); i.src = src; i.alt = alt; if (cls) i.className = cls; return i; }
function pct(v) { return v == null ? '–' : (100 * v).toFixed(1) + ' %'; }

function render() {
  const it = B.items[S.pos], d = S.decisions[it.uri];
  text($('counter'), decided() + ' of ' + B.items.length + ' decided · ' + (B.items.length - decided()) + ' left');
  text($('position'), 'Image ' + (S.pos + 1) + ' of ' + B.items.length);
  const k = $('kind'); k.className = 'kind ' + it.kind;
  text(k, it.kind === 'audit' ? 'audit sample (accepted by the model; its answer is hidden until you decide)' : 'referred by the model');
  text($('where'), it.path);
  $('field').src = it.field;
  $('input').src = it.input;
  const show = it.kind === 'referred' || !!d;
  const cams = $('cams'); cams.replaceChildren();
  if (show) for (const [b, src] of Object.entries(it.cams)) {
    const f = document.createElement('figure');
    f.append(img(src, 'small', 'Grad-CAM ' + b), make('figcaption', 'Grad-CAM of ' + b + ' for ' + it.model.members[b]));
    cams.append(f);
  }
  $('blind').hidden = show; $('model').hidden = !show;
  if (show) model(it);
  for (const btn of document.querySelectorAll('.labels button')) btn.classList.toggle('chosen', !!d && d.label === btn.dataset.label);
  text($('decided'), d ? 'Decided: ' + B.words[d.label] + ' (' + d.reviewer + ', ' + d.decided_at + ')' : '');
  $('note').value = S.notes[it.uri] || '';
  $('reviewer').value = S.reviewer;
}

function model(it) {
  const m = it.model;
  text($('said'), m.label === 'refer' ? 'Referred; the ensemble leaned to ' + m.predicted + ' (' + pct(m.confidence) + ')'
       : 'The model said ' + m.label + ' (confidence ' + pct(m.confidence) + ')');
  const why = $('reasons'); why.replaceChildren();
  for (const r of m.reasons) why.append(make('li', r));
  $('reasons-head').hidden = !m.reasons.length;
  const t = $('probs'); t.replaceChildren();
  const head = document.createElement('tr'); head.append(make('th', 'class'));
  for (const name of Object.keys(m.probs)) head.append(make('th', name));
  t.append(head);
  B.classes.forEach((c, i) => {
    const tr = document.createElement('tr'); tr.append(make('td', c));
    for (const p of Object.values(m.probs)) tr.append(make('td', pct(p[i]), 'num'));
    t.append(tr);
  });
}

function decide(label) {
  const it = B.items[S.pos];
  S.reviewer = $('reviewer').value.trim();
  if (!S.reviewer) { text($('warn'), 'Type your name first (top of the page): every decision is signed.'); $('reviewer').focus(); return; }
  text($('warn'), '');
  S.decisions[it.uri] = {label: label, sha256: it.sha256, reviewer: S.reviewer, decided_at: new Date().toISOString()};
  save(); render();
}

function go(step) { S.pos = Math.min(B.items.length - 1, Math.max(0, S.pos + step)); save(); render(); }
function nextOpen() {
  for (let k = 1; k <= B.items.length; k++) {
    const i = (S.pos + k) % B.items.length;
    if (!S.decisions[B.items[i].uri]) { S.pos = i; save(); render(); return; }
  }
}

function csvField(v) { return '"' + String(v == null ? '' : v).replace(/"/g, '""') + '"'; }
function exportCsv() {
  const lines = [B.columns.join(',')];
  for (const it of B.items) {
    const d = S.decisions[it.uri];
    if (!d) continue;
    const row = {uri: it.uri, sha256: d.sha256, label: d.label, reviewer: d.reviewer, note: S.notes[it.uri] || '',
                 decided_at: d.decided_at, batch_id: B.batch_id};
    lines.push(B.columns.map(c => csvField(row[c])).join(','));
  }
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], {type: 'text/csv'}));
  a.download = 'decisions-' + B.batch_id + '.csv';
  document.body.append(a); a.click(); a.remove();
  text($('exported'), 'Exported ' + (lines.length - 1) + ' decision(s) to ' + a.download + ' — give it to `alle-dist review import`.');
}

document.addEventListener('keydown', e => {
  const typing = ['INPUT', 'TEXTAREA'].includes(e.target.tagName);
  if (typing) { if (e.key === 'Escape' || e.key === 'Enter' && e.target.tagName === 'INPUT') e.target.blur(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && n <= Math.min(9, B.labels.length)) { decide(B.labels[n - 1]); e.preventDefault(); }
  else if (e.key === 'ArrowRight') { go(1); e.preventDefault(); }
  else if (e.key === 'ArrowLeft') { go(-1); e.preventDefault(); }
});
$('reviewer').addEventListener('input', e => { S.reviewer = e.target.value.trim(); save(); });
$('note').addEventListener('input', e => { S.notes[B.items[S.pos].uri] = e.target.value; save(); });
for (const btn of document.querySelectorAll('.labels button')) btn.addEventListener('click', () => decide(btn.dataset.label));
$('prev').addEventListener('click', () => go(-1));
$('next').addEventListener('click', () => go(1));
$('open').addEventListener('click', nextOpen);
$('export').addEventListener('click', exportCsv);
if (S.pos >= B.items.length) S.pos = 0;
render();
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _buttons(labels: list[str], words: dict[str, str]) -> str:
    keys = [str(i + 1) if i < 9 else "" for i in range(len(labels))]
    return "".join(f'<button type="button" data-label="{_e(lab)}">{f"<kbd>{k}</kbd>" if k else ""}{_e(words[lab])}'
                   "</button>" for lab, k in zip(labels, keys))


def render(batch: dict, items: list[dict], labels: list[str], words: dict[str, str]) -> str:
    """The page for one batch: `batch` (batch_id, table, classes), `items` (each: uri, sha256, path,
    kind, field, input, cams, model {label, predicted, confidence, probs, members, reasons}),
    `labels` in button order with their `words`."""
    data = {"batch_id": batch["batch_id"], "table": batch["table"], "classes": list(batch["classes"]),
            "labels": labels, "words": words, "columns": list(PAGE_COLUMNS), "items": items}
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")   # never closes the script early
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(TITLE)} {_e(batch["batch_id"])}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>Review batch {_e(batch["batch_id"])}</h1>
<label>Reviewer <input id="reviewer" autocomplete="name" placeholder="your name"></label>
<span id="counter"></span><nav><button id="prev" type="button">← previous</button>
<button id="next" type="button">next →</button><button id="open" type="button">next undecided</button></nav>
<button id="export" type="button">Export decisions (CSV)</button><span id="warn"></span></header>
<main><p class="disclaimer">{_e(DISCLAIMER)}</p>
<p><span id="position"></span> · <span id="kind"></span> · <span id="where"></span></p>
<div class="pics"><figure><img id="field" alt="the original field"><figcaption>the original field</figcaption></figure>
<figure><img id="input" class="small" alt="the model input"><figcaption>what the models see (their preprocessing)</figcaption></figure>
<div id="cams" class="pics"></div></div>
<div class="labels">{_buttons(labels, words)}</div>
<p id="decided"></p>
<label>Note (optional)<br><textarea id="note" placeholder="e.g. two cells in the field; stain artefact"></textarea></label>
<p id="blind">The model's answer for this audit image appears once you have decided.</p>
<section id="model" hidden><p id="said"></p><p id="reasons-head">Referred because:</p><ul id="reasons"></ul>
<table id="probs"></table><p>Each network's probabilities as it gave them; the ensemble's after temperature
scaling and weighting.</p></section>
<p id="exported"></p>
<p>Keys: <kbd>1</kbd>–<kbd>{min(9, len(labels))}</kbd> choose a label, <kbd>←</kbd> <kbd>→</kbd> move.
Decisions are kept in this browser (a reload loses nothing) until you export them.</p></main>
<script type="application/json" id="batch">{blob}</script>
<script>{_JS}</script></body></html>
"""
