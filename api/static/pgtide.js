// pgtide.js: the browser client of pgtide. A dependency-free ES module.
//
//   subscribe(options)  live changes over EventSource, resumed by cursor; optional local replica
//   Replica             rows per table, kept by applying change events
//   Outbox              offline writes queued in IndexedDB, sent with POST /api/sync/push
//   awaitTxid(txid)     resolves when a change of that transaction arrives on a subscription
//
// docs/browser.md describes the API and the decisions behind it.

export const STATUS = Object.freeze({
  CATCHING_UP: 'catching up', // connected, reading the snapshot or the backlog
  LIVE: 'live', // `synced` received: every change arrives as it is sequenced
  RECONNECTING: 'reconnecting', // connection lost; retrying and resuming from the cursor
  CLOSED: 'closed', // refused for good (bad token, bad filter) or unsubscribed
});

const MAX_BACKOFF_MS = 30000;

// ---------------------------------------------------------------------------
// awaitTxid: every subscription reports the txids it sees here.

const TXIDS_KEPT = 5000;
const seenTxids = new Set(); // recent txids, so a change that beat its write's response still counts
const txidWaiters = new Map(); // txid -> [resolve]

function noteTxid(txid) {
  if (seenTxids.has(txid)) return;
  seenTxids.add(txid);
  if (seenTxids.size > TXIDS_KEPT) seenTxids.delete(seenTxids.values().next().value);
  const waiting = txidWaiters.get(txid);
  if (waiting) {
    txidWaiters.delete(txid);
    for (const resolve of waiting) resolve(txid);
  }
}

/**
 * Resolve when a change with this txid arrives on any subscription of this page.
 * The write responses of pgtide carry `txid`; a write that changed nothing, or
 * one to a table no subscription follows, never arrives: pass `timeout` (ms) to
 * reject instead of waiting for ever.
 */
export function awaitTxid(txid, { timeout } = {}) {
  txid = String(txid);
  if (seenTxids.has(txid)) return Promise.resolve(txid);
  return new Promise((resolve, reject) => {
    let timer = null;
    const done = (value) => { clearTimeout(timer); resolve(value); };
    if (!txidWaiters.has(txid)) txidWaiters.set(txid, []);
    txidWaiters.get(txid).push(done);
    if (timeout != null) {
      timer = setTimeout(() => {
        const list = txidWaiters.get(txid) || [];
        const left = list.filter((r) => r !== done);
        if (left.length) txidWaiters.set(txid, left); else txidWaiters.delete(txid);
        reject(new Error(`txid ${txid} did not arrive within ${timeout} ms`));
      }, timeout);
    }
  });
}

// ---------------------------------------------------------------------------
// Replica

/**
 * The rows of the followed tables, by primary key, kept up to date from change events.
 * It evaluates no filter: the server marks an UPDATE that takes a row out of the
 * subscriber's column filters with `left: true` (docs/stream.md), and sends a
 * branch-pinned subscriber a row leaving its branch as a DELETE.
 */
export class Replica {
  constructor() {
    this.tables = new Map(); // table -> Map(pkKey -> row)
  }

  /** A stable key for a primary key object (column order does not matter). */
  static key(pk) {
    return JSON.stringify(Object.keys(pk).sort().map((k) => [k, pk[k]]));
  }

  table(name) {
    if (!this.tables.has(name)) this.tables.set(name, new Map());
    return this.tables.get(name);
  }

  rows(name) {
    return [...(this.tables.get(name)?.values() || [])];
  }

  get(name, pk) {
    return this.tables.get(name)?.get(Replica.key(pk));
  }

  /** Apply one change event (SNAPSHOT, INSERT, UPDATE, DELETE, TRUNCATE; MESSAGE is ignored). */
  apply(ev) {
    const rows = () => this.table(ev.table);
    switch (ev.op) {
      case 'SNAPSHOT':
      case 'INSERT':
      case 'UPDATE':
        // `left`: this UPDATE took the row out of the subscriber's filters.
        if (ev.left) rows().delete(Replica.key(ev.pk));
        else rows().set(Replica.key(ev.pk), ev.row);
        break;
      case 'DELETE':
        rows().delete(Replica.key(ev.pk));
        break;
      case 'TRUNCATE':
        rows().clear();
        break;
      default:
        break;
    }
  }

  clear() {
    this.tables.clear();
  }
}

// ---------------------------------------------------------------------------
// subscribe

function backoff(attempt) {
  const ms = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempt);
  return ms * (0.8 + Math.random() * 0.4); // jitter: many tabs must not retry in step
}

async function problemDetail(response) {
  try {
    const body = await response.json();
    return body.detail || `${response.status}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/**
 * Follow changes on GET /events.
 *
 * options: base ('' = this origin), token, tables [..], ops [..], topics [..],
 * filters {col: 'op.value'}, since ('now' | 'earliest' | cursor), snapshot (bool),
 * replica (true or a Replica), onChange(event, replica), onStatus(status, detail),
 * onSynced({cursor}), onReset(info).
 *
 * Returns a function that unsubscribes; it carries `.replica` and `.cursor()`.
 */
export function subscribe(options) {
  const {
    base = '', token, tables, ops, topics, filters = {}, since, snapshot = false,
    onChange, onStatus, onSynced, onReset,
  } = options;
  const replica = options.replica === true ? new Replica() : options.replica || null;

  let cursor = null; // the last `id:` seen: a change's cursor or `synced`'s position
  let restart = false; // after `reset`: start over instead of resuming
  let source = null;
  let timer = null;
  let attempt = 0;
  let stopped = false;
  let status = null;

  const setStatus = (s, detail) => {
    if (s === status && !detail) return;
    status = s;
    if (onStatus) onStatus(s, detail);
  };

  function url() {
    const q = new URLSearchParams();
    if (tables && tables.length) q.set('tables', tables.join(','));
    if (ops && ops.length) q.set('ops', ops.join(','));
    if (topics && topics.length) q.set('topics', topics.join(','));
    for (const [col, spec] of Object.entries(filters)) q.set(col, spec);
    if (cursor !== null) q.set('since', cursor); // resume where we were
    else if (snapshot) q.set('snapshot', 'true');
    else if (since != null && !restart) q.set('since', since); // after `reset`: from now
    if (token) q.set('access_token', token); // EventSource cannot send headers
    return `${base}/events?${q}`;
  }

  function open() {
    clearTimeout(timer);
    if (stopped) return;
    const es = new EventSource(url());
    source = es;
    setStatus(attempt > 0 || cursor !== null ? STATUS.RECONNECTING : STATUS.CATCHING_UP);

    es.onopen = () => {
      setStatus(STATUS.CATCHING_UP);
      // No cursor yet means the server starts over (a new snapshot): replace, not merge.
      if (cursor === null && replica && snapshot) replica.clear();
    };

    es.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (m.lastEventId) cursor = m.lastEventId;
      if (ev.txid) noteTxid(ev.txid);
      if (replica) replica.apply(ev);
      if (onChange) onChange(ev, replica);
    };

    es.addEventListener('synced', (m) => {
      if (m.lastEventId) cursor = m.lastEventId;
      attempt = 0;
      restart = false;
      setStatus(STATUS.LIVE);
      if (onSynced) onSynced(JSON.parse(m.data));
    });

    es.addEventListener('reset', (m) => {
      // The cursor is older than the log keeps: what we hold may miss changes.
      es.close();
      cursor = null;
      restart = true;
      if (replica) replica.clear();
      if (onReset) onReset(JSON.parse(m.data));
      open();
    });

    es.onerror = () => {
      if (stopped || es !== source) return;
      if (es.readyState === EventSource.CONNECTING) {
        // The browser retries by itself and sends Last-Event-ID: nothing to do.
        setStatus(STATUS.RECONNECTING);
        return;
      }
      // CLOSED: the server answered with something other than a stream (401, 503, ...)
      // and EventSource gave up. Ask why; retry unless the answer is final.
      es.close();
      diagnose();
    };
  }

  async function diagnose() {
    setStatus(STATUS.RECONNECTING);
    const abort = new AbortController();
    let response = null;
    try {
      response = await fetch(url(), { signal: abort.signal, headers: { Accept: 'text/event-stream' } });
    } catch {
      response = null; // a network error: retry later
    }
    if (stopped) { abort.abort(); return; }
    if (response && response.ok) {
      abort.abort(); // it works again: let EventSource have it
      attempt = 0;
      open();
      return;
    }
    if (response && [400, 401, 403, 404].includes(response.status)) {
      setStatus(STATUS.CLOSED, await problemDetail(response));
      return;
    }
    timer = setTimeout(open, backoff(attempt++));
  }

  function onOnline() {
    // Back online: reconnect now rather than after the browser's or our own retry pause.
    if (stopped || status !== STATUS.RECONNECTING) return;
    if (source) source.close();
    open();
  }

  window.addEventListener('online', onOnline);
  open();

  const unsubscribe = () => {
    stopped = true;
    clearTimeout(timer);
    window.removeEventListener('online', onOnline);
    if (source) source.close();
    setStatus(STATUS.CLOSED);
  };
  unsubscribe.replica = replica;
  unsubscribe.cursor = () => cursor;
  return unsubscribe;
}

// ---------------------------------------------------------------------------
// Outbox

/** A random UUID v4 (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function uuid() {
  if (globalThis.crypto && crypto.randomUUID) {
    try { return crypto.randomUUID(); } catch { /* not a secure context */ }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function shortHash(text) {
  // cyrb53: only names the database, so that the token itself is not written down.
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

const req = (r) => new Promise((resolve, reject) => {
  r.onsuccess = () => resolve(r.result);
  r.onerror = () => reject(r.error);
});

const done = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
});

function openDb(name) {
  const r = indexedDB.open(name, 1);
  r.onupgradeneeded = () => {
    // `seq` keeps the order the mutations were made in; mutation_id finds one.
    const store = r.result.createObjectStore('mutations', { keyPath: 'seq', autoIncrement: true });
    store.createIndex('mutation_id', 'mutation_id', { unique: true });
  };
  return req(r);
}

const WIRE_FIELDS = ['mutation_id', 'resource', 'op', 'id', 'data', 'base_version', 'client_ts'];

/**
 * Mutations queued in IndexedDB and sent with POST /api/sync/push.
 *
 * A mutation is written to IndexedDB before enqueue() resolves, and removed only
 * after the server's answer says `applied` or `duplicate`; a tab closed mid-push
 * resends it on the next start, and its mutation id makes the resend a
 * `duplicate`. `conflict` and `rejected` mutations stay in the queue, held (not
 * sent again) until the app calls retry() or discard().
 *
 * options: base, token, policy ('version' | 'lww'), clientId, name (the IndexedDB
 * database; default: one per base and token), onChange(records), onApplied(result,
 * record), onConflict(result, record), onRejected(result, record), onError(detail, status).
 */
export class Outbox {
  constructor(options) {
    this.base = options.base || '';
    this.token = options.token;
    this.policy = options.policy || 'version';
    this.clientId = options.clientId || null;
    this.batch = options.batch || 200; // the server takes at most 1,000 per push
    this.cb = options;
    const origin = new URL(this.base || '/', location.href).href;
    this.name = options.name || `pgtide-outbox-${shortHash(`${origin}\n${this.token || ''}`)}`;
    this.db = null;
    this.flushing = null; // the running flush, so that flushes never overlap
    this.again = false; // something was queued during a flush: run once more
    this.attempt = 0;
    this.timer = null;
    this.onOnline = () => { this.attempt = 0; this.flush(); };
  }

  /**
   * Open the queue, start sending what an earlier visit left behind, and flush
   * whenever the browser is back online. Resolves once the queue is open (await
   * flush() to wait for the sending too).
   */
  async start() {
    this.db = await openDb(this.name);
    window.addEventListener('online', this.onOnline);
    this.changed();
    this.flush();
    return this;
  }

  stop() {
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.timer);
    if (this.db) this.db.close();
    this.db = null;
  }

  /** Every queued mutation in the order made: state 'pending', 'conflict' or 'rejected'. */
  async list() {
    const tx = this.db.transaction('mutations', 'readonly');
    return req(tx.objectStore('mutations').getAll());
  }

  /**
   * Queue a mutation: {resource, op: 'insert'|'update'|'delete', id, data, base_version}.
   * An insert without an id gets one here, so later mutations can refer to the row.
   * Resolves with the stored record once it is durable; then tries to send it.
   */
  async enqueue(m) {
    const record = {
      mutation_id: uuid(),
      resource: m.resource,
      op: m.op,
      id: m.id || (m.op === 'insert' ? uuid() : undefined),
      data: m.data,
      base_version: m.base_version,
      client_ts: new Date().toISOString(),
      state: 'pending',
    };
    if (record.op === 'insert' && record.data && record.data.id === undefined) {
      record.data = { ...record.data, id: record.id };
    }
    // strict: on disk before we say it is queued
    const tx = this.db.transaction('mutations', 'readwrite', { durability: 'strict' });
    record.seq = await req(tx.objectStore('mutations').add(record));
    await done(tx);
    this.changed();
    this.flush();
    return record;
  }

  /** Drop a held (conflicting or rejected) mutation. */
  async discard(mutationId) {
    await this.update(mutationId, () => null);
  }

  /** Send a held mutation again, with changes (e.g. {base_version: the server's version}). */
  async retry(mutationId, changes = {}) {
    await this.update(mutationId, (r) => ({ ...r, ...changes, state: 'pending', result: undefined }));
    this.flush();
  }

  async update(mutationId, fn) {
    const tx = this.db.transaction('mutations', 'readwrite', { durability: 'strict' });
    const store = tx.objectStore('mutations');
    const record = await req(store.index('mutation_id').get(mutationId));
    if (record) {
      const next = fn(record);
      if (next === null) store.delete(record.seq); else store.put(next);
    }
    await done(tx);
    this.changed();
  }

  async changed() {
    if (this.cb.onChange && this.db) this.cb.onChange(await this.list());
  }

  /** Send the pending mutations now. Safe to call at any time; flushes never overlap. */
  flush() {
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    const run = async () => {
      do {
        this.again = false;
        // Across tabs of the same outbox, one sends at a time (where Web Locks exist).
        if (navigator.locks) await navigator.locks.request(this.name, () => this.flushOnce());
        else await this.flushOnce();
      } while (this.again && this.db);
    };
    this.flushing = run()
      .catch((err) => { if (this.cb.onError) this.cb.onError(String(err), 0); })
      .finally(() => { this.flushing = null; });
    return this.flushing;
  }

  async flushOnce() {
    if (!this.db) return;
    clearTimeout(this.timer);
    const pending = (await this.list()).filter((r) => r.state === 'pending');
    for (let i = 0; i < pending.length; i += this.batch) {
      const ok = await this.push(pending.slice(i, i + this.batch));
      if (!ok) return;
    }
  }

  async push(chunk) {
    if (navigator.onLine === false) return false; // the `online` event flushes again
    let response;
    try {
      response = await fetch(`${this.base}/api/sync/push`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${this.token}` },
        body: JSON.stringify({
          client_id: this.clientId || undefined,
          policy: this.policy,
          mutations: chunk.map((r) => Object.fromEntries(WIRE_FIELDS.map((f) => [f, r[f]]))),
        }),
      });
    } catch {
      this.later(); // network error: everything stays queued
      return false;
    }
    if (!response.ok) {
      const detail = await problemDetail(response);
      // 5xx (database away) and 429 are passing; 4xx means this client must change.
      if (response.status >= 500 || response.status === 429) this.later();
      if (this.cb.onError) this.cb.onError(detail, response.status);
      return false;
    }
    let results;
    try {
      results = (await response.json()).results;
    } catch {
      this.later(); // the answer was cut off: nothing is removed; ids make the resend safe
      return false;
    }
    this.attempt = 0;
    await this.settle(chunk, results);
    return true;
  }

  async settle(chunk, results) {
    // One transaction for the whole answer: a tab closed now keeps all or none of it,
    // and what it keeps is resent as `duplicate`.
    const tx = this.db.transaction('mutations', 'readwrite', { durability: 'strict' });
    const store = tx.objectStore('mutations');
    const calls = [];
    for (const result of results) {
      const record = chunk[result.index];
      if (!record || record.mutation_id !== result.mutation_id) continue;
      if (result.status === 'applied' || result.status === 'duplicate') {
        store.delete(record.seq);
        calls.push([this.cb.onApplied, result, record]);
      } else {
        store.put({ ...record, state: result.status, result });
        calls.push([result.status === 'conflict' ? this.cb.onConflict : this.cb.onRejected,
          result, record]);
      }
    }
    await done(tx);
    for (const [fn, result, record] of calls) if (fn) fn(result, record);
    this.changed();
  }

  later() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), backoff(this.attempt++));
  }
}
