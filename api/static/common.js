// What the dashboard and the branch app share: the token login, API calls, small DOM helpers.

const TOKEN_KEY = 'pgtide.token';

// The pages may be served under a path prefix (a reverse proxy): API calls go
// relative to the folder the page is in, never to a fixed root.
export const BASE = new URL('.', location.href).pathname.replace(/\/$/, '');

/** The token of this tab (sessionStorage: it survives a reload, not the tab). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signOut() {
  sessionStorage.clear(); // the token and what the pages remembered with it
  location.reload();
}

/** Create an element: el('li', {class: 'x', dataset: {id: 1}}, 'text', child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const $ = (sel) => document.querySelector(sel);

/** GET/POST the API with the tab's token; resolves to {ok, status, body}. */
export async function api(path, init = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(init.headers || {}) };
  let response;
  try {
    response = await fetch(`${BASE}${path}`, { ...init, headers });
  } catch (err) {
    return { ok: false, status: 0, body: { detail: `network error: ${err.message}` } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { detail: `${response.status} ${response.statusText}` };
  }
  return { ok: response.ok, status: response.status, body };
}

/**
 * Show the login form until a token is given; then call start(token).
 * A token is checked by the page using it: a refused one comes back here with the reason.
 */
export function login(start, message) {
  const form = $('#login');
  const main = $('#app');
  if (token() && !message) {
    form.hidden = true;
    main.hidden = false;
    $('#signout').hidden = false;
    start(token());
    return;
  }
  main.hidden = true;
  form.hidden = false;
  $('#login-error').textContent = message || '';
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('#token').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    location.reload(); // start clean, with the token in place
  }, { once: true });
}

/** A login refused by the server: forget the token and ask again. */
export function refuse(detail) {
  sessionStorage.removeItem(TOKEN_KEY);
  login(() => {}, `The server refused this token: ${detail}`);
}

export function wireSignOut() {
  $('#signout').addEventListener('click', signOut);
}

/** A short clock time with milliseconds, in the browser's time zone. */
export function clock(iso) {
  const d = iso ? new Date(iso) : new Date();
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A primary key as text: the value alone for a one-column key. */
export function keyText(pk) {
  if (!pk) return '';
  const values = Object.values(pk);
  return values.length === 1 ? String(values[0]) : JSON.stringify(pk);
}

export function statusPill(node, status, detail) {
  node.textContent = status;
  node.dataset.status = status;
  node.title = detail || '';
}
