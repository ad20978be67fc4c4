// relay's browser front end: a single page of plain ES modules (no build
// step). Everything it reads comes from the edge (its replica, cache and
// spool), so every page answers at once also while the link to the cloud
// is down; changes show as pending until the cloud has applied them.
//
// Routes (the URL's hash): #/projects, #/projects/<id>,
// #/projects/<id>/jobs/new, #/jobs/<id>, #/account.

import './prefetch.mjs';  // first: the page's API calls are on their way while the rest runs
import { api, h, reason, setCsrfToken, whenUnauthenticated } from './lib.mjs';
import * as events from './events.mjs';
import { startStatus, stopStatus } from './status.mjs';
import { resumeUnfinishedUploads, startUploadsSoon } from './uploads.mjs';
import * as projects from './pages/projects.mjs';
import * as project from './pages/project.mjs';
import * as jobNew from './pages/job-new.mjs';
import * as job from './pages/job.mjs';
import * as account from './pages/account.mjs';

const $ = (selector) => document.querySelector(selector);
let user = null;
let cleanup = null;

const ROUTES = [
  [/^#\/projects$/, projects],
  [/^#\/projects\/([0-9a-f]{32})$/, project],
  [/^#\/projects\/([0-9a-f]{32})\/jobs\/new$/, jobNew],
  [/^#\/jobs\/([0-9a-f]{32})$/, job],
  [/^#\/account$/, account],
];

// -- login ------------------------------------------------------------------

function showLogin(message = '') {
  events.stop();
  stopStatus();
  if (cleanup) { cleanup(); cleanup = null; }
  user = null;
  setCsrfToken(null);
  $('#workspace').hidden = true;
  $('#who').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
}

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const answer = await api('POST', 'login', { name: form.get('name'), password: form.get('password') });
  if (!answer.ok) {
    $('#login-error').textContent = reason(answer);
    return;
  }
  $('#login-error').textContent = '';
  event.target.reset();
  await enter(answer.body.user, answer.body.csrf_token);
}

async function logout() {
  await api('POST', 'logout');
  showLogin();
}

// -- the workspace ------------------------------------------------------------

async function enter(who, token) {
  user = who;
  setCsrfToken(token);
  $('#user-name').textContent = who.name;
  $('#who').hidden = false;
  $('#login').hidden = true;
  $('#workspace').hidden = false;
  events.start();
  startStatus();
  if (!who.must_change_password) {
    // Uploads to resume load Uppy at once; otherwise it waits until the
    // page has drawn its data (context.shown), or a few seconds at most.
    resumeUnfinishedUploads();
    setTimeout(context.shown, 3000);
  }
  // The page's own data, the navigation and the notices at once: on a
  // slow link each round trip waited for is one the person waits for.
  route();
  await Promise.all([loadNav(), loadNotices()]);
}

/** What pages get: the user, and ways to refresh the shared parts. */
const context = {
  get user() { return user; },
  refreshNav: () => loadNav(),
  announce(message) { $('#announce').textContent = message; },
  /** The page shows its data: what can wait until then (Uppy's bundle) starts after this frame. */
  shown() { if (user !== null && !user.must_change_password) startUploadsSoon(); },
  /** The session changed (a new password in place): start again from /me. */
  async restart(message) {
    const me = await api('GET', 'me');
    if (me.ok) await enter(me.body.user, me.body.csrf_token);
    else showLogin(message);
  },
};

/** The navigation's link to the project shown carries aria-current. */
function markCurrent() {
  for (const link of document.querySelectorAll('#nav-projects a')) {
    if (location.hash.startsWith(link.getAttribute('href'))) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function loadNav() {
  const answer = await api('GET', 'projects');
  if (!answer.ok) return;
  const items = (answer.body.projects ?? []).map((p) => h('li', { class: p.pending ? 'pending' : null },
    h('a', { href: `#/projects/${p.id}` }, p.name), p.pending ? h('span', { class: 'badge' }, 'pending') : null));
  $('#nav-projects').replaceChildren(...items);
  markCurrent();
}

async function loadNotices() {
  const answer = await api('GET', 'notices');
  const box = $('#notices');
  box.replaceChildren();
  for (const notice of answer.ok ? answer.body.notices ?? [] : []) {
    const dismiss = h('button', { type: 'button', onclick: async () => {
      await api('DELETE', `notices/${encodeURIComponent(notice.command_id)}`);
      await loadNotices();
    } }, 'Dismiss');
    box.append(h('div', { class: 'notice', role: 'alert', 'data-command': notice.command_id },
      `The cloud refused ${notice.type ?? 'a change'}: `, notice.reason ?? '', ' ', dismiss));
  }
}

function route() {
  if (user === null) return;
  if (cleanup) { cleanup(); cleanup = null; }
  const container = $('#page');
  container.replaceChildren();
  document.body.classList.remove('nav-open');
  $('#nav-toggle').setAttribute('aria-expanded', 'false');
  if (user.must_change_password) {
    // A one-time password: nothing but choosing a new one until it is done.
    cleanup = account.render(container, [], context, { firstPassword: true }) ?? null;
    return;
  }
  const hash = location.hash || '#/projects';
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(hash);
    if (match) {
      cleanup = page.render(container, match.slice(1), context) ?? null;
      markCurrent();
      return;
    }
  }
  container.append(h('h1', {}, 'No such page'), h('p', {}, h('a', { href: '#/projects' }, 'Your projects')));
}

// -- start --------------------------------------------------------------------

whenUnauthenticated(() => { if (user !== null) showLogin('Your session ended: log in again.'); });
events.on('replica.changed', events.debounced(loadNav));
events.on('command.applied', events.debounced(loadNav));
events.on('command.rejected', events.debounced(() => { loadNav(); loadNotices(); }));
events.on('reset', () => { loadNav(); loadNotices(); route(); });

$('#login-form').addEventListener('submit', login);
$('#logout').addEventListener('click', logout);
$('#nav-toggle').hidden = false;
$('#nav-toggle').addEventListener('click', () => {
  const open = document.body.classList.toggle('nav-open');
  $('#nav-toggle').setAttribute('aria-expanded', String(open));
});
window.addEventListener('hashchange', () => { route(); $('#main').focus({ preventScroll: true }); });

// Who is logged in: asked for with the page's data (prefetch.mjs).
const me = await api('GET', 'me');
if (me.ok) await enter(me.body.user, me.body.csrf_token);
else showLogin();
