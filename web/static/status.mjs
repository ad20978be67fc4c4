// The status bar at the foot of every page: the edge <-> cloud link, what
// waits for it, and the browser's own connection to the edge.

import { api, h, size, when } from './lib.mjs';
import { on, onConnection } from './events.mjs';

let latest = null;
let edgeReachable = true;
let timer = null;
let shownWords = '';
const watchers = new Set();

/** The last status the edge told, or null. */
export function current() { return latest; }
/** Call `handler(status)` each time the status changes. */
export function watch(handler) { watchers.add(handler); return () => watchers.delete(handler); }
/** Whether the browser reaches the edge (the page's own connection). */
export function edgeIsReachable() { return edgeReachable; }

const LINK_WORDS = { up: 'Link to the cloud: up', down: 'Link to the cloud: down', connecting: 'Link to the cloud: reconnecting' };

const UPLOAD_WORDS = { receiving: 'being received', staged: 'at the edge', transferring: 'on its way to the cloud', failed: 'at the edge, transfer failed' };

const COMMAND_WORDS = { queued: 'saved here, waiting for the link', sent: 'sent, waiting for the cloud', pending: 'waiting for the cloud' };

function itemState(item) {
  if (item.kind !== 'upload') return COMMAND_WORDS[item.state] ?? item.state ?? '';
  const words = UPLOAD_WORDS[item.state] ?? item.state ?? '';
  return item.bytes ? `${words}, ${size(item.bytes)} to send` : words;
}

function render() {
  const bar = document.getElementById('statusbar');
  if (bar === null) return;
  const link = latest?.link ?? null;
  const pending = latest?.pending ?? { commands: 0, bytes: 0, items: [] };
  const state = !edgeReachable ? 'edge' : (link?.state ?? 'unknown');
  bar.dataset.link = state;
  const parts = [];
  if (!edgeReachable) {
    parts.push(h('strong', { class: 'link-state' }, 'This browser cannot reach the edge: reconnecting…'));
  } else if (link === null) {
    parts.push(h('span', { class: 'link-state' }, 'Link to the cloud: …'));
  } else {
    const since = link.since ? ` since ${when(link.since)}` : '';
    parts.push(h('strong', { class: 'link-state' }, `${LINK_WORDS[link.state] ?? link.state}${link.state === 'up' ? '' : since}`));
  }
  parts.push(h('span', { class: 'waiting' },
    `${pending.commands ?? 0} ${pending.commands === 1 ? 'change' : 'changes'} and ${size(pending.bytes ?? 0)} waiting for the cloud`));
  const explain = edgeReachable && link !== null && link.state !== 'up'
    ? h('p', { class: 'link-down' }, 'Changes are saved here and will reach the cloud when the link is back.')
    : null;
  const items = (pending.items ?? []).slice(0, 20).map((item) => h('li', { 'data-kind': item.kind ?? '', 'data-id': item.id ?? '' },
    `${item.label ?? item.kind ?? ''}: ${itemState(item)}`, item.since ? ` (since ${when(item.since)})` : ''));
  const more = (pending.items ?? []).length > 20 ? h('li', {}, `and ${pending.items.length - 20} more`) : null;
  const details = items.length
    ? h('details', { class: 'pending-items' }, h('summary', {}, `${pending.items.length} waiting`), h('ul', {}, items, more))
    : null;
  const fresh = [h('div', { class: 'status-line' }, ...parts, details), explain].filter(Boolean);
  // A live region: redraw (and so announce) only what changed.
  const words = fresh.map((node) => node.textContent).join('\n');
  if (words === shownWords) return;
  const open = bar.querySelector('details')?.open ?? false;
  shownWords = words;
  bar.replaceChildren(...fresh);
  const list = bar.querySelector('details');
  if (list) list.open = open;
}

function update(status) {
  latest = status;
  render();
  for (const handler of watchers) handler(status);
}

async function poll() {
  const answer = await api('GET', 'status');
  if (answer.status === 0) { edgeReachable = false; render(); return; }
  edgeReachable = true;
  if (answer.ok) update(answer.body);
  else render();
}

export function startStatus() {
  stopStatus();
  poll();
  // The events say each change; this catches a stream a proxy swallowed.
  timer = setInterval(poll, 10000);
}

export function stopStatus() {
  if (timer !== null) { clearInterval(timer); timer = null; }
}

on('status', (data) => { edgeReachable = true; update(data); });
onConnection((state) => {
  const reachable = state === 'open';
  if (reachable !== edgeReachable) {
    edgeReachable = reachable;
    render();
    if (reachable) poll();
  }
});
