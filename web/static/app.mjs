// relay's browser front end: log in, upload with Uppy over tus, watch
// uploads reach the cloud, see projects and refused commands. Everything it
// reads comes from the edge (its replica and spool), so it answers at once
// also while the international link is down.

import { Uppy, Dashboard, Tus } from './vendor/uppy.min.mjs';

const $ = (selector) => document.querySelector(selector);
let csrfToken = null;
let events = null;
let pollTimer = null;

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = csrfToken ?? '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let document = null;
  try { document = await response.json(); } catch { /* an empty or non-JSON answer */ }
  return { status: response.status, ok: response.ok, body: document ?? {} };
}

function text(value) {
  return document.createTextNode(value == null ? '' : String(value));
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : text(child));
  return node;
}

function size(bytes) {
  if (bytes == null) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

// -- login ------------------------------------------------------------------

function showLogin() {
  stopLive();
  csrfToken = null;
  $('#workspace').hidden = true;
  $('#who').hidden = true;
  $('#login').hidden = false;
}

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const answer = await api('POST', '/api/login', { name: form.get('name'), password: form.get('password') });
  if (!answer.ok) {
    $('#login-error').textContent = answer.body.error ?? `login failed (${answer.status})`;
    return;
  }
  $('#login-error').textContent = '';
  event.target.reset();
  await enter(answer.body.user, answer.body.csrf_token);
}

async function logout() {
  await api('POST', '/api/logout');
  showLogin();
}

// -- the workspace -------------------------------------------------------------

let uppy = null;

async function enter(user, token) {
  csrfToken = token;
  $('#user-name').textContent = user.name;
  $('#who').hidden = false;
  $('#login').hidden = true;
  $('#workspace').hidden = false;
  // A one-time password: nothing but choosing a new one until it is done.
  $('#first-password').hidden = !user.must_change_password;
  $('#work').hidden = user.must_change_password;
  if (user.must_change_password) {
    waitForNewPassword();
    return;
  }
  if (uppy === null) uppy = makeUppy();
  await Promise.all([loadProjects(), loadUploads(), loadNotices()]);
  startLive();
}

function makeUppy() {
  const instance = new Uppy({ autoProceed: false })
    .use(Dashboard, { inline: true, target: '#dashboard', height: 320, proudlyDisplayPoweredByUppy: false })
    .use(Tus, {
      endpoint: '/files/',
      // Each PATCH is a resumption point; a dropped connection costs at most one chunk.
      chunkSize: 16 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000, 30000],
      removeFingerprintOnSuccess: true,
      // Every field the file has: 'project' only when one was chosen (the
      // edge then puts the file in the user's own project).
      allowedMetaFields: true,
      headers: () => ({ 'X-CSRF-Token': csrfToken ?? '' }),
    });
  instance.on('file-added', (file) => {
    const project = $('#project').value;
    if (project) instance.setFileMeta(file.id, { project });
  });
  instance.on('upload-success', () => loadUploads());
  instance.on('upload-error', () => loadUploads());
  return instance;
}

async function loadProjects() {
  const answer = await api('GET', '/api/projects');
  if (answer.status === 401) return showLogin();
  const select = $('#project');
  const chosen = select.value;
  select.replaceChildren(element('option', { value: '' }, 'my own project'));
  const list = $('#projects');
  list.replaceChildren();
  for (const project of answer.ok ? answer.body.projects ?? [] : []) {
    const mine = project.role === 'owner' || project.role === 'member';
    if (mine && !project.pending) select.append(element('option', { value: project.id }, project.name));
    const item = element('li', project.pending ? { class: 'pending' } : {},
      project.name, ' ', element('span', { class: 'muted' }, `(${project.role ?? ''})`));
    if (project.pending) item.append(' ', element('span', { class: 'muted' }, `${project.pending} pending`));
    list.append(item);
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : '';
}

function uploadRow(upload) {
  const received = upload.length ? upload.offset / upload.length : 0;
  const inCloud = upload.length ? (upload.transferred ?? 0) / upload.length : 0;
  const row = element('tr', { 'data-upload': upload.id, 'data-state': upload.state },
    element('td', {}, upload.filename ?? upload.id),
    element('td', { class: 'num' }, size(upload.length)),
    element('td', { class: 'state' }, upload.state.replace('_', ' ')),
    element('td', {}, element('progress', { max: '1', value: String(received) })),
    element('td', {}, element('progress', { max: '1', value: String(inCloud), class: 'cloud' })),
    element('td', {}),
  );
  if (upload.state === 'failed') {
    const retry = element('button', { type: 'button' }, 'Retry');
    retry.addEventListener('click', async () => {
      const answer = await api('POST', `/api/uploads/${upload.id}/retry`);
      if (!answer.ok) alert(answer.body.error ?? `retry failed (${answer.status})`);
      await loadUploads();
    });
    row.lastChild.append(element('span', { class: 'error' }, upload.error ?? ''), ' ', retry);
  }
  return row;
}

async function loadUploads() {
  const answer = await api('GET', '/api/uploads');
  if (answer.status === 401) return showLogin();
  if (!answer.ok) return;
  const uploads = [...(answer.body.uploads ?? [])].sort((a, b) => Date.parse(b.created) - Date.parse(a.created));
  $('#uploads tbody').replaceChildren(...uploads.map(uploadRow));
}

async function loadNotices() {
  const answer = await api('GET', '/api/notices');
  const box = $('#notices');
  box.replaceChildren();
  for (const notice of answer.ok ? answer.body.notices ?? [] : []) {
    const dismiss = element('button', { type: 'button' }, 'Dismiss');
    dismiss.addEventListener('click', async () => {
      await api('DELETE', `/api/notices/${encodeURIComponent(notice.command_id)}`);
      await loadNotices();
    });
    box.append(element('div', { class: 'notice', 'data-command': notice.command_id },
      `${notice.type ?? 'a request'} was refused: `, notice.reason ?? '', ' ', dismiss));
  }
}

async function createProject(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const answer = await api('POST', '/api/projects', { name: form.get('name') });
  $('#new-project-error').textContent = answer.ok ? '' : answer.body.error ?? `refused (${answer.status})`;
  if (answer.ok) event.target.reset();
  await loadProjects();
}

let passwordTimer = null;

function waitForNewPassword() {
  // The session ends once the new password has reached this edge.
  if (passwordTimer !== null) return;
  passwordTimer = setInterval(async () => {
    const me = await api('GET', '/api/me');
    if (me.ok && !me.body.user.must_change_password) {
      clearInterval(passwordTimer);
      passwordTimer = null;
      await enter(me.body.user, me.body.csrf_token);
    } else if (me.status === 401) {
      clearInterval(passwordTimer);
      passwordTimer = null;
      showLogin();
      $('#login-error').textContent = 'Your new password is in place: log in with it.';
    }
  }, 1000);
}

async function changePassword(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const answer = await api('POST', '/api/password', {
    current_password: form.get('current_password'), new_password: form.get('new_password'),
  });
  $('#password-result').textContent = answer.ok
    ? 'sent; it takes effect here once the cloud has it'
    : answer.body.error ?? `refused (${answer.status})`;
  $('#password-result').className = answer.ok ? 'muted' : 'error';
  if (answer.ok) event.target.reset();
}

// -- live updates ------------------------------------------------------------------

let reloadSoon = null;

function refresh(what) {
  // Progress events come several times a second: redraw at most every 300 ms.
  if (reloadSoon !== null) return;
  reloadSoon = setTimeout(async () => {
    reloadSoon = null;
    await Promise.all(what.map((load) => load()));
  }, 300);
}

function startLive() {
  stopLive();
  if ('EventSource' in window) {
    events = new EventSource('/api/events');
    events.onopen = () => { $('#link-state').textContent = ''; };
    events.onmessage = () => refresh([loadUploads]);
    for (const kind of ['upload.progress', 'upload.state', 'upload.removed', 'transfer.progress']) {
      events.addEventListener(kind, () => refresh([loadUploads]));
    }
    for (const kind of ['replica.changed', 'command.applied', 'command.rejected', 'reset']) {
      events.addEventListener(kind, () => refresh([loadProjects, loadNotices, loadUploads]));
    }
    events.onerror = () => { $('#link-state').textContent = 'reconnecting to the edge…'; };
  }
  // A slow safety net (EventSource reconnects by itself; this covers proxies that eat it).
  pollTimer = setInterval(() => loadUploads(), 10000);
}

function stopLive() {
  if (events !== null) { events.close(); events = null; }
  if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
}

// -- start -------------------------------------------------------------------------

$('#login-form').addEventListener('submit', login);
$('#logout').addEventListener('click', logout);
$('#new-project').addEventListener('submit', createProject);
$('#password-form').addEventListener('submit', changePassword);

const me = await api('GET', '/api/me');
if (me.ok) await enter(me.body.user, me.body.csrf_token);
else showLogin();
