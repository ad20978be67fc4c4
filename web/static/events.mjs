// The one live event stream of the page (Server-Sent Events from the
// edge). Pages subscribe to the kinds they show; EventSource reconnects by
// itself (with Last-Event-ID, so missed events are replayed or a `reset`
// says to reload everything).

import { API } from './lib.mjs';

const listeners = new Map();   // kind -> Set of handlers
const connection = new Set();  // handlers of 'open' / 'error'
let source = null;

function dispatch(kind, event) {
  let data = {};
  try { data = JSON.parse(event.data || '{}'); } catch { /* keepalive or junk */ }
  for (const handler of listeners.get(kind) ?? []) {
    try { handler(data, event); } catch (error) { console.warn('event handler failed', kind, error); }
  }
}

const KINDS = [
  'ready', 'reset', 'status', 'command.pending', 'command.applied', 'command.rejected', 'replica.changed',
  'upload.state', 'upload.progress', 'transfer.progress', 'upload.removed', 'file.cache',
  'job.state', 'job.progress', 'job.log',
];

export function start() {
  stop();
  if (!('EventSource' in window)) return;
  source = new EventSource(`${API}/events`);
  for (const kind of KINDS) source.addEventListener(kind, (event) => dispatch(kind, event));
  source.onopen = () => { for (const handler of connection) handler('open'); };
  source.onerror = () => { for (const handler of connection) handler(source?.readyState === 2 ? 'closed' : 'error'); };
}

export function stop() {
  if (source !== null) { source.close(); source = null; }
}

/** Call `handler(data)` for each event of `kind`; returns the unsubscribe function. */
export function on(kind, handler) {
  if (!listeners.has(kind)) listeners.set(kind, new Set());
  listeners.get(kind).add(handler);
  return () => listeners.get(kind)?.delete(handler);
}

/** Call `handler('open' | 'error' | 'closed')` as the stream's connection changes. */
export function onConnection(handler) {
  connection.add(handler);
  return () => connection.delete(handler);
}

/**
 * A redraw at most every `ms` however many events ask for it.
 */
export function debounced(work, ms = 300) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => { timer = null; work(); }, ms);
  };
}
