// The branch app: writes go through the Outbox (POST /api/sync/push), so they
// survive a lost network and a reload; the live stream keeps the pick lists current.

import { Outbox, STATUS, awaitTxid, subscribe } from './pgtide.js';
import { $, BASE, api, clock, el, login, refuse, statusPill, wireSignOut } from './common.js';

const BRANCH_KEY = 'pgtide.branch';
const TABLES = ['clients', 'appointments', 'stock_requests', 'products'];

let outbox = null;
let replica = null;
let queue = []; // the Outbox's records, as last reported
let branch = null; // {id, label, name}
let renderQueued = false;
let queueChanged = false;

wireSignOut();
registerWorker();
showNetwork();
window.addEventListener('online', showNetwork);
window.addEventListener('offline', showNetwork);
login(start);

/** The service worker that lets this page reload offline (docs/browser.md). */
function registerWorker() {
  const note = $('#offline-ready');
  if (!('serviceWorker' in navigator)) {
    // Service workers need a secure context: https, or localhost.
    note.textContent = 'This browser keeps no offline copy of the page here (it needs https or localhost); queued changes are kept all the same.';
    return;
  }
  const ready = () => {
    note.textContent = 'This page also opens offline.';
    note.dataset.ready = 'yes';
  };
  if (navigator.serviceWorker.controller) ready();
  navigator.serviceWorker.addEventListener('controllerchange', ready);
  navigator.serviceWorker.register(`${BASE}/static/sw.js`, { scope: `${BASE}/branch` })
    .catch((err) => { note.textContent = `No offline copy: ${err.message}`; });
}

function showNetwork() {
  const node = $('#network');
  const online = navigator.onLine;
  node.textContent = online ? 'online' : 'offline: changes are queued';
  node.dataset.network = online ? 'online' : 'offline';
}

async function start(tok) {
  branch = await chooseBranch();
  showBranch(branch);
  outbox = new Outbox({
    base: BASE,
    token: tok,
    policy: 'version',
    clientId: 'branch-app',
    onChange: (records) => { queue = records; schedule(true); },
    onApplied: confirmed,
    onConflict: (r, rec) => toast(`Not applied, the row changed on the server: ${describe(rec)}. See Conflicts.`, 'warn'),
    onRejected: (r) => toast(`Refused: ${r.detail}`, 'warn'),
    onError: (detail, status) => {
      if (status === 401) refuse(detail);
      else toast(`Not sent yet: ${detail}`, 'warn');
    },
  });
  await outbox.start();
  if (branch) follow(tok);
  wireForms();
}

// --- branch ------------------------------------------------------------------

/**
 * Which branch this app writes for. A token pinned to a branch lists only its own
 * branch's row. Where an app lets a pinned token read no branch (403), its rows
 * tell which branch it has, and a branch without rows yet is typed in. Remembered
 * for the tab, so an offline reload still knows it.
 */
async function chooseBranch() {
  const stored = JSON.parse(sessionStorage.getItem(BRANCH_KEY) || 'null');
  const note = $('#branch-note');
  const r = await api('/api/branches?limit=500&order=code');
  let options = [];
  if (r.ok) {
    options = r.body.data.map((b) => ({ id: b.id, label: `${b.code} · ${b.name}`, name: b.name }));
  } else if (r.status === 401) {
    refuse(r.body.detail);
    return null;
  } else if (r.status === 403) {
    note.textContent = 'This token is pinned to one branch.';
    options = await pinnedBranch();
    if (!options.length && stored) options = [stored];
  } else if (stored) {
    options = [stored]; // offline: the branch chosen before
    note.textContent = 'Offline: working with the branch chosen before.';
    window.addEventListener('online', () => { note.textContent = ''; }, { once: true });
  }
  if (!options.length) {
    note.textContent = 'No rows tell which branch this token writes for: enter its id.';
    askForBranch();
    return null;
  }
  const select = $('#branch');
  select.replaceChildren(...options.map((b) => el('option', { value: b.id }, b.label)));
  const chosen = options.find((b) => stored && b.id === stored.id) || options[0];
  select.value = chosen.id;
  select.addEventListener('change', () => {
    remember(options.find((b) => b.id === select.value));
    location.reload(); // the stream and pick lists follow one branch
  });
  return remember(chosen);
}

/** The branch's name in the header bar (and the tab's title), once it is known. */
function showBranch(b) {
  const node = $('#branch-name');
  node.hidden = !b;
  if (!b) return;
  node.textContent = b.name || b.label;
  node.title = b.label;
  document.title = `${b.name || b.label} · pgtide branch app`;
}

function remember(b) {
  sessionStorage.setItem(BRANCH_KEY, JSON.stringify(b));
  return b;
}

async function pinnedBranch() {
  for (const table of ['clients', 'products', 'stock_requests']) {
    const rows = await api(`/api/${table}?limit=1`);
    if (rows.ok && rows.body.data.length) {
      return [{ id: rows.body.data[0].branch_id, label: "this token's branch" }];
    }
  }
  return [];
}

function askForBranch() {
  $('#branch').hidden = true;
  const form = $('#branch-manual');
  form.hidden = false;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('#branch-id').value.trim().toLowerCase();
    remember({ id, label: `branch ${id}` });
    location.reload();
  });
}

// --- the stream --------------------------------------------------------------

function follow(tok) {
  const stop = subscribe({
    base: BASE,
    token: tok,
    tables: TABLES,
    filters: { branch_id: `eq.${branch.id}` },
    snapshot: true,
    replica: true,
    onChange: () => schedule(),
    onStatus: (s, detail) => {
      statusPill($('#status'), s, detail);
      if (s === STATUS.CLOSED && detail && /token/.test(detail)) refuse(detail);
    },
  });
  replica = stop.replica;
}

function confirmed(result, record) {
  toast(`Saved: ${describe(record)}.`);
  // The write's own change coming back on the stream: the pick lists now show it.
  awaitTxid(result.txid, { timeout: 15000 })
    .then(() => toast(`Saved and seen on the live stream: ${describe(record)}.`))
    .catch(() => {});
}

// --- forms -------------------------------------------------------------------

function wireForms() {
  const start = $('#appointment-start');
  if (!start.value) {
    const d = new Date(Date.now() + 86400000);
    d.setMinutes(0, 0, 0);
    start.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const optional = (v) => (v.trim() ? v.trim() : undefined);

  submit('#client-form', () => outbox.enqueue({
    resource: 'clients',
    op: 'insert',
    data: {
      branch_id: branch.id,
      full_name: $('#client-name').value.trim(),
      email: optional($('#client-email').value),
      phone: optional($('#client-phone').value),
    },
  }));

  submit('#appointment-form', () => outbox.enqueue({
    resource: 'appointments',
    op: 'insert',
    data: {
      branch_id: branch.id,
      client_id: $('#appointment-client').value,
      starts_at: new Date($('#appointment-start').value).toISOString(),
      duration_minutes: Number($('#appointment-minutes').value),
      notes: optional($('#appointment-notes').value),
    },
  }), ['#appointment-notes']);

  submit('#stock-form', () => {
    const id = $('#stock-request').value;
    return outbox.enqueue({
      resource: 'stock_requests',
      op: 'update',
      id,
      data: { status: $('#stock-status').value },
      base_version: expectedVersion(id),
    });
  }, []);
}

/** Run a form's action on submit; clear the given fields (all inputs by default). */
function submit(selector, action, clear) {
  const form = $(selector);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!branch) return toast('Choose a branch first.');
    const record = await action();
    toast(`Queued: ${describe(record)}.`);
    const fields = clear ? clear.map((s) => $(s)) : form.querySelectorAll('input');
    for (const f of fields) f.value = '';
  });
}

/**
 * The version an update expects. A change queued earlier for the same row will
 * raise it by one when it applies, so a second offline edit builds on the first.
 */
function expectedVersion(id) {
  const earlier = queue.filter((r) => r.resource === 'stock_requests' && r.id === id && r.state === 'pending');
  if (earlier.length) return earlier[earlier.length - 1].base_version + 1;
  return replica.get('stock_requests', { id }).version;
}

// --- rendering -----------------------------------------------------------------

/**
 * Redraw on the next frame: a snapshot is hundreds of events, drawn once. The
 * outbox lists are redrawn only when the outbox changed, so a stream event never
 * replaces a button under the user's pointer.
 */
function schedule(outboxChanged = false) {
  queueChanged = queueChanged || outboxChanged === true;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderClients();
    renderStock();
    if (queueChanged) renderQueue();
    queueChanged = false;
  });
}

function keep(select, options) {
  const value = select.value;
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === value)) select.value = value;
}

function renderClients() {
  const known = replica ? replica.rows('clients') : [];
  const queued = queue.filter((r) => r.resource === 'clients' && r.op === 'insert' && r.state === 'pending');
  const options = [
    ...queued.map((r) => el('option', { value: r.id }, `${r.data.full_name} (not sent yet)`)),
    ...known.sort((a, b) => a.full_name.localeCompare(b.full_name))
      .map((c) => el('option', { value: c.id }, c.full_name)),
  ];
  keep($('#appointment-client'), options);
}

function renderStock() {
  const rows = replica ? replica.rows('stock_requests') : [];
  const products = new Map((replica ? replica.rows('products') : []).map((p) => [p.id, p]));
  const options = rows.sort((a, b) => a.created_at.localeCompare(b.created_at)).map((s) => {
    const product = products.get(s.product_id);
    const pending = queue.filter((r) => r.id === s.id && r.state === 'pending').pop();
    const label = `${product ? product.name : s.product_id.slice(0, 8)} × ${s.quantity} · ${s.status}`
      + (pending ? ` → ${pending.data.status} (not sent yet)` : '') + ` · v${s.version}`;
    return el('option', { value: s.id }, label);
  });
  keep($('#stock-request'), options);
}

function describe(r) {
  const d = r.data || {};
  if (r.resource === 'clients' && r.op === 'insert') return `new client ${d.full_name}`;
  if (r.resource === 'appointments' && r.op === 'insert') {
    return `appointment ${new Date(d.starts_at).toLocaleString()}`;
  }
  if (r.op === 'update') return `${r.resource} ${r.id.slice(0, 8)}: ${Object.entries(d).map(([k, v]) => `${k} → ${v}`).join(', ')}`;
  return `${r.op} ${r.resource} ${(r.id || '').slice(0, 8)}`;
}

function renderQueue() {
  const pending = queue.filter((r) => r.state === 'pending');
  const held = queue.filter((r) => r.state !== 'pending');
  $('#pending').replaceChildren(...pending.map((r) => el('li', {
    dataset: { mutationId: r.mutation_id, state: r.state, id: r.id, resource: r.resource },
  }, el('span', { class: 'what' }, describe(r)),
  el('span', { class: 'note' }, `queued ${clock(r.client_ts)} · not sent yet`))));
  $('#pending-empty').hidden = pending.length > 0;
  $('#pending-count').textContent = pending.length ? `${pending.length} waiting` : '';
  $('#conflicts').replaceChildren(...held.map(heldItem));
  $('#conflict-count').textContent = held.length ? String(held.length) : '';
}

function heldItem(r) {
  const result = r.result || {};
  const server = result.row;
  const li = el('li', {
    dataset: { mutationId: r.mutation_id, state: r.state, id: r.id, resource: r.resource,
      serverVersion: server ? server.version : '' },
  }, el('span', { class: 'what' }, `${r.state === 'conflict' ? 'Conflict' : 'Refused'}: ${describe(r)}`),
  el('span', { class: 'note' }, result.detail || ''));
  if (server) {
    const fields = ['version', ...Object.keys(r.data || {})];
    li.append(el('table', { class: 'server-row' },
      el('tr', {}, el('th', {}, ''), el('th', {}, 'yours'), el('th', {}, 'server now')),
      fields.map((f) => el('tr', { dataset: { field: f } }, el('th', {}, f),
        el('td', { class: 'mine' }, f === 'version' ? `based on ${r.base_version ?? '–'}` : String(r.data[f])),
        el('td', { class: 'theirs' }, String(server[f]))))));
    li.append(el('span', { class: 'note' }, `changed on the server ${clock(server.updated_at)}`));
  } else if (r.state === 'conflict') {
    li.append(el('span', { class: 'note' }, 'The row no longer exists on the server.'));
  }
  const actions = el('div', { class: 'actions' },
    el('button', { type: 'button', class: 'secondary', dataset: { action: 'discard' }, onclick: () => outbox.discard(r.mutation_id) },
      server ? "Keep the server's" : 'Discard'));
  if (r.state === 'conflict' && server && r.op !== 'insert') {
    actions.append(el('button', { type: 'button', dataset: { action: 'retry' },
      onclick: () => outbox.retry(r.mutation_id, { base_version: server.version }) }, 'Apply mine on top'));
  }
  li.append(actions);
  return li;
}

let toastTimer = null;
function toast(text, kind = 'ok') {
  const node = $('#toast');
  node.textContent = text;
  node.dataset.kind = kind;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.textContent = ''; }, 6000);
}
