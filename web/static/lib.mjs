// Shared helpers of the pages: the JSON API, building DOM without
// innerHTML (every string a person typed goes in as text), sizes and times.

export const API = '/api/v1';

let csrfToken = null;
export function setCsrfToken(token) { csrfToken = token; }
export function getCsrfToken() { return csrfToken; }

// Called with the answer when the session ended (401): the app shows the login form.
let onUnauthenticated = () => {};
export function whenUnauthenticated(handler) { onUnauthenticated = handler; }

// GET answers asked for early (`prefetch`): each handed to the first api()
// call for its path within two seconds, unless something changed first.
const early = new Map();
const EARLY_FOR_MS = 2000;

/**
 * Start the GET requests a page will make, at once, before the page knows
 * who is logged in: on a slow link the person waits for one round trip
 * instead of one after another.
 */
export function prefetch(...paths) {
  for (const path of paths) {
    if (!early.has(path)) early.set(path, { at: Date.now(), answer: request('GET', path) });
  }
}

/**
 * One JSON request to the edge. Never throws: a network failure answers
 * status 0 with an error that says so.
 */
export async function api(method, path, body) {
  if (method !== 'GET') early.clear();
  const ready = early.get(path);
  early.delete(path);
  if (ready !== undefined && Date.now() - ready.at < EARLY_FOR_MS) return ready.answer;
  return request(method, path, body);
}

async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken ?? '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path.startsWith('/') ? path : `${API}/${path}`, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { status: 0, ok: false, body: { error: 'the edge cannot be reached from this browser' } };
  }
  let document = null;
  try { document = await response.json(); } catch { /* an empty or non-JSON answer */ }
  const answer = { status: response.status, ok: response.ok, body: document ?? {} };
  if (response.status === 401 && !path.endsWith('login')) onUnauthenticated(answer);
  return answer;
}

/** What to tell the person about a refused request. */
export function reason(answer) {
  return answer.body?.error ?? `refused (${answer.status})`;
}

export function text(value) {
  return document.createTextNode(value == null ? '' : String(value));
}

/**
 * An element with attributes (strings; `on*` keys as listeners) and
 * children (nodes or text). Never parses markup.
 */
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === false || value == null) continue;
    if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : text(child));
  }
  return node;
}

export function size(bytes) {
  if (bytes == null) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A time (seconds since the epoch, or an ISO/HTTP date) as the reader's local time. */
export function when(value) {
  if (value == null) return '';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

/** A duration in seconds, as people say it. */
export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** The words for a row's pending command. */
export function pendingLabel(pending) {
  return pending ? `pending (${pending})` : '';
}

/** A small status line that screen readers announce. */
export function say(node, message, kind = 'muted') {
  node.textContent = message ?? '';
  node.className = kind;
}

function rowKey(row) {
  return row?.dataset.file ?? row?.dataset.member ?? row?.dataset.job ?? row?.dataset.project ?? row?.dataset.key ?? null;
}

/**
 * Replace a table's rows, keeping the keyboard's place: the focused link,
 * button or select is focused again in the new row of the same thing. A
 * text field being typed in is left alone (the next redraw brings the rows).
 */
export function replaceRows(tbody, rows) {
  const active = document.activeElement;
  let place = null;
  if (active && active !== document.body && tbody.contains(active)) {
    if (active.matches('input, textarea')) return;
    const row = active.closest('tr');
    place = { key: rowKey(row), index: [...row.querySelectorAll('a, button, select')].indexOf(active) };
  }
  tbody.replaceChildren(...rows);
  if (place === null || place.key === null) return;
  const row = [...tbody.children].find((r) => rowKey(r) === place.key);
  const again = row ? [...row.querySelectorAll('a, button, select')][place.index] : null;
  if (again) again.focus({ preventScroll: true });
}
