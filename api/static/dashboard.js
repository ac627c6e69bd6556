// The dashboard: a live feed of changes, counts per table, events per second, row history.

import { subscribe, STATUS } from './pgtide.js';
import { $, BASE, api, clock, el, keyText, login, refuse, statusPill, wireSignOut } from './common.js';

const FEED_MAX = 500; // rows kept in the feed; older ones drop off the bottom
const RATE_WINDOW_MS = 10000;
const FALLBACK_TABLES = ['branches', 'clients', 'appointments', 'orders', 'stock_requests',
  'distributors', 'products'];

const counts = new Map(); // table -> events seen
const arrivals = []; // arrival times within the rate window
let total = 0;
let unsubscribe = null;
let selected = null; // the feed row whose detail is open

wireSignOut();
login(start);

async function start(tok) {
  await Promise.all([loadTables(), loadBranches()]);
  $('#apply').addEventListener('click', () => follow(tok));
  $('#all-tables').addEventListener('change', (e) => {
    for (const box of document.querySelectorAll('#tables input[data-table]')) {
      box.disabled = e.target.checked;
    }
  });
  $('#detail-close').addEventListener('click', closeDetail);
  setInterval(showRate, 1000);
  follow(tok);
}

/** The resources the API serves, from the public OpenAPI document. */
async function loadTables() {
  let names = FALLBACK_TABLES;
  try {
    const doc = await (await fetch(`${BASE}/openapi.json`)).json();
    const found = Object.keys(doc.paths || {})
      .map((p) => /^\/api\/([a-z_][a-z0-9_]*)$/.exec(p))
      .filter((m) => m && m[1] !== 'sync-log')
      .map((m) => m[1]);
    if (found.length) names = found;
  } catch {
    // keep the fallback list: the table choice is a convenience
  }
  const box = $('#tables');
  for (const name of names) {
    box.append(el('label', {}, el('input', { type: 'checkbox', dataset: { table: name }, disabled: true }), ` ${name}`));
  }
}

/** Branches for the filter; a branch-pinned token cannot list them and needs none. */
async function loadBranches() {
  const r = await api('/api/branches?limit=500&order=code');
  if (!r.ok) {
    $('#branch').disabled = true;
    $('#branch-note').textContent = r.status === 403
      ? 'This token is pinned to one branch: it sees only that branch.'
      : `Branches could not be listed: ${r.body.detail}`;
    return;
  }
  for (const b of r.body.data) $('#branch').append(el('option', { value: b.id }, `${b.code} · ${b.name}`));
}

function choice() {
  const tables = $('#all-tables').checked ? null
    : [...document.querySelectorAll('#tables input[data-table]:checked')].map((b) => b.dataset.table);
  const branch = $('#branch').value;
  return { tables, filters: branch ? { branch_id: `eq.${branch}` } : {} };
}

/** (Re)start the stream with the current choice, from now; the feed so far stays. */
function follow(tok) {
  if (unsubscribe) unsubscribe();
  const { tables, filters } = choice();
  if (tables && !tables.length) {
    statusPill($('#status'), 'choose a table');
    return;
  }
  unsubscribe = subscribe({
    base: BASE,
    token: tok,
    tables,
    filters,
    onChange: show,
    onStatus: (s, detail) => {
      statusPill($('#status'), s, detail);
      // A refused token ends the session; other refusals (a filter) stay visible.
      if (s === STATUS.CLOSED && detail && /token/.test(detail)) refuse(detail);
    },
  });
}

function show(ev) {
  if (ev.op === 'SNAPSHOT') return;
  total += 1;
  counts.set(ev.table, (counts.get(ev.table) || 0) + 1);
  arrivals.push(performance.now());
  const key = keyText(ev.pk);
  const row = el('tr', {
    class: `op-${ev.op.toLowerCase()}`,
    dataset: { seq: ev.seq, table: ev.table, key, shownAt: String(performance.timeOrigin + performance.now()) },
    tabindex: 0,
    onclick: () => openDetail(ev, row),
    onkeydown: (e) => { if (e.key === 'Enter') openDetail(ev, row); },
  },
  el('td', { class: 'time', title: ev.at }, clock(ev.at)),
  el('td', {}, el('span', { class: `op op-${ev.op.toLowerCase()}` }, ev.op)),
  el('td', {}, ev.table),
  // The key in a block of its own: a cell's max-width does not bound the table's
  // minimum width, a block's does, so a long key is cut with … instead of widening it.
  el('td', { class: 'key', title: key }, el('span', {}, key)),
  el('td', { class: 'changed' }, (ev.changed || []).join(', ')),
  el('td', {}, ev.actor || ''),
  el('td', {}, ev.origin || ''));
  const feed = $('#feed');
  feed.prepend(row);
  while (feed.rows.length > FEED_MAX) feed.deleteRow(-1);
  $('#feed-empty').hidden = true;
  $('#total').textContent = String(total);
  showCounts();
}

function showCounts() {
  const body = $('#counts tbody');
  body.replaceChildren(...[...counts.entries()].sort((a, b) => b[1] - a[1])
    .map(([t, n]) => el('tr', { dataset: { table: t } }, el('td', {}, t), el('td', { class: 'num' }, String(n)))));
}

function showRate() {
  const now = performance.now();
  while (arrivals.length && arrivals[0] < now - RATE_WINDOW_MS) arrivals.shift();
  $('#rate').textContent = (arrivals.length / (RATE_WINDOW_MS / 1000)).toFixed(1);
}

// --- row detail ------------------------------------------------------------

function closeDetail() {
  $('#detail').hidden = true;
  $('#app').classList.remove('with-detail');
  if (selected) selected.classList.remove('selected');
  selected = null;
}

async function openDetail(ev, rowNode) {
  if (selected) selected.classList.remove('selected');
  selected = rowNode;
  rowNode.classList.add('selected');
  $('#detail').hidden = false;
  $('#app').classList.add('with-detail');
  $('#detail-title').textContent = `${ev.table} ${keyText(ev.pk)}`;
  const meta = { op: ev.op, cursor: ev.cursor, txid: ev.txid, at: ev.at, actor: ev.actor,
    origin: ev.origin, mutation: ev.mutation_id };
  $('#detail-meta').replaceChildren(...Object.entries(meta).filter(([, v]) => v != null)
    .flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  $('#detail-row').textContent = JSON.stringify(ev.row || ev.old, null, 2);
  const history = $('#history');
  const keys = Object.values(ev.pk || {});
  if (keys.length !== 1) {
    history.replaceChildren(el('p', { class: 'note' }, 'History is available for one-column keys.'));
    return;
  }
  history.replaceChildren(el('p', { class: 'note' }, 'Loading…'));
  const r = await api(`/api/${encodeURIComponent(ev.table)}/${encodeURIComponent(keys[0])}/history`);
  if (selected !== rowNode) return; // another row was opened meanwhile
  if (r.status === 403) {
    history.replaceChildren(el('p', { class: 'warn', id: 'history-denied' },
      'Row history needs a token with the audit scope that is not pinned to a branch; ',
      `this one was refused (${r.body.detail}).`));
    return;
  }
  if (!r.ok) {
    history.replaceChildren(el('p', { class: 'error' }, r.body.detail));
    return;
  }
  history.replaceChildren(el('ol', { class: 'history' }, r.body.history.map((h) => el('li', { dataset: { seq: h.seq } },
    el('div', {}, el('span', { class: `op op-${h.op.toLowerCase()}` }, h.op), ` ${clock(h.at)}`,
      el('span', { class: 'note' }, ` seq ${h.seq} · ${h.actor || h.db_role || ''}${h.origin ? ` · ${h.origin}` : ''}`)),
    el('table', { class: 'changes' }, Object.entries(h.changes || {}).map(([col, c]) => el('tr', {},
      el('th', {}, col), el('td', { class: 'before' }, fmt(c.before)), el('td', {}, '→'),
      el('td', { class: 'after' }, fmt(c.after)))))))));
}

function fmt(v) {
  if (v === null || v === undefined) return '∅';
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}
