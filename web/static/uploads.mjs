// Uploads that never give up silently: one Uppy for the whole page (its
// Dashboard moves into the project page shown), tus to the edge, Golden
// Retriever to survive a reload or a closed browser, the page's own stall
// detection, and retries without a final give-up while the edge answers.
//
// Uppy's bundle (about 600 KB of script, 130 KB of style) is loaded only
// when it is needed, never before a page has drawn its data: at once when
// uploads are unfinished (Golden Retriever has them to resume), when the
// person reaches for the upload area or drops files on it, and otherwise
// just after the page shown has drawn its data (`startUploadsSoon`).

import { API, getCsrfToken, h, size, duration } from './lib.mjs';

//: No progress for this long while uploading: abort, ask the edge for the offset, go on.
//: (localStorage 'relay.stall_ms' overrides it, at least 1 s: for tests and odd networks.)
const STALL_MS = Math.max(1000, Number(localStorage.getItem('relay.stall_ms')) || 30000);
//: tus-js-client's own retries, each a fresh HEAD for the offset then PATCH.
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000];
//: Set while this browser has uploads Golden Retriever would resume after a reload.
const UNFINISHED = 'relay.uploads_unfinished';
const BUNDLE = './vendor/uppy.min.mjs';
const STYLE = new URL('./vendor/uppy.min.css', import.meta.url).href;

let uppy = null;
let loading = null;  // the promise of the Uppy, once asked for
let panel = null;
let waiting = null;  // what the upload area shows until Uppy is there
let currentProject = null;
const handlers = new Set();  // [kind, handler] pairs the pages asked for, on the Uppy once it is there
const dropped = [];  // files dropped before Uppy was there: [file, project]
const tracking = new Map();  // file id -> {last, bytes, speed, since, retrying}
export const counters = { stalls: 0, retries: 0, restored: 0, ghosts: [], loaded: false };
window.relayUploads = counters;  // what the browser tests read

function setProgress(file, bytes) {
  const now = Date.now();
  const seen = tracking.get(file.id) ?? { last: now, bytes: 0, speed: 0, since: now };
  if (bytes !== seen.bytes) {
    const rate = (bytes - seen.bytes) / Math.max(1, now - seen.last) * 1000;
    seen.speed = seen.speed ? seen.speed * 0.7 + rate * 0.3 : rate;
    seen.bytes = bytes;
    seen.last = now;
  }
  tracking.set(file.id, seen);
}

async function edgeAnswers() {
  try {
    const response = await fetch(`${API}/status`, { credentials: 'same-origin' });
    return response.status < 500;
  } catch {
    return false;
  }
}

function retryable(error) {
  const status = error?.originalResponse?.getStatus?.() ?? 0;
  return status === 0 || status >= 500 || [408, 409, 423, 429].includes(status);
}

function make({ Uppy, Dashboard, Tus, GoldenRetriever }) {
  const instance = new Uppy({ id: 'relay-uploads', autoProceed: false })
    .use(Dashboard, {
      inline: true, target: panel, height: 340, width: '100%',
      proudlyDisplayPoweredByUppy: false, showProgressDetails: true,
      note: 'Files go to the project shown; they stay at the edge until the cloud has them.',
    })
    .use(Tus, {
      endpoint: '/files/',
      // Each PATCH is a resumption point; a dropped connection costs at most one chunk.
      chunkSize: 16 * 1024 * 1024,
      retryDelays: RETRY_DELAYS,
      // Go on retrying while the edge answers at all; only a refusal (4xx) ends it.
      onShouldRetry: (error, attempt, options, next) => retryable(error) || next(error),
      removeFingerprintOnSuccess: true,
      allowedMetaFields: true,
      headers: () => ({ 'X-CSRF-Token': getCsrfToken() ?? '' }),
    })
    .use(GoldenRetriever, {
      // Blobs up to 1 GiB survive a reload or a closed browser (IndexedDB).
      indexedDB: { maxFileSize: 1024 * 1024 * 1024, maxTotalSize: 4 * 1024 * 1024 * 1024 },
    });

  instance.on('file-added', (file) => {
    if (currentProject && !file.meta.project) instance.setFileMeta(file.id, { project: currentProject });
  });
  instance.on('upload-progress', (file, progress) => { setProgress(file, progress.bytesUploaded ?? 0); renderList(); });
  instance.on('upload-success', (file) => { tracking.delete(file.id); renderList(); });
  // A pause is not a stall: the clock starts again when it resumes.
  const restartClock = (fileId) => { const seen = tracking.get(fileId); if (seen) seen.last = Date.now(); renderList(); };
  instance.on('upload-pause', (fileId) => restartClock(fileId?.id ?? fileId));
  instance.on('resume-all', () => { for (const seen of tracking.values()) seen.last = Date.now(); });
  instance.on('upload-error', async (file, error) => {
    renderList();
    if (!file || !retryable(error)) return;
    // tus-js-client gave up its delays: start again (HEAD, resume) while the edge answers.
    const seen = tracking.get(file.id) ?? { last: Date.now(), bytes: 0, speed: 0, since: Date.now() };
    seen.retrying = true;
    tracking.set(file.id, seen);
    for (let wait = 5000; ; wait = Math.min(wait * 2, 60000)) {
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (!instance.getFile(file.id)) return;
      if (await edgeAnswers()) break;
    }
    counters.retries += 1;
    seen.retrying = false;
    seen.last = Date.now();
    instance.retryUpload(file.id);
  });
  instance.on('restored', () => {
    const files = instance.getFiles();
    counters.restored = files.length;
    counters.ghosts = files.filter((f) => f.isGhost).map((f) => f.name);
    renderGhosts();
    const unfinished = files.filter((f) => !f.progress.uploadComplete);
    // Everything came back: carry on at once, from the offsets the edge holds.
    if (unfinished.length && counters.ghosts.length === 0) instance.emit('restore-confirmed');
  });
  instance.on('file-removed', () => { counters.ghosts = instance.getFiles().filter((f) => f.isGhost).map((f) => f.name); renderGhosts(); renderList(); });
  instance.on('file-added', () => { counters.ghosts = instance.getFiles().filter((f) => f.isGhost).map((f) => f.name); renderGhosts(); });

  // Stall detection: tus-js-client waits forever on a connection that stays
  // open but carries nothing.
  setInterval(() => {
    const now = Date.now();
    for (const file of instance.getFiles()) {
      const p = file.progress;
      if (!p.uploadStarted || p.uploadComplete || file.isPaused || file.error) continue;
      const seen = tracking.get(file.id);
      if (seen === undefined) { tracking.set(file.id, { last: now, bytes: p.bytesUploaded ?? 0, speed: 0, since: now }); continue; }
      if (now - seen.last > STALL_MS) {
        counters.stalls += 1;
        seen.last = now;
        instance.pauseResume(file.id);   // abort the request in flight
        setTimeout(() => instance.pauseResume(file.id), 500);  // HEAD the offset and go on
      }
    }
    renderList();
  }, 5000);

  // Whether a reload must load Uppy at once (for Golden Retriever to resume).
  const remember = () => {
    if (instance.getFiles().some((f) => !f.progress.uploadComplete)) localStorage.setItem(UNFINISHED, '1');
    else localStorage.removeItem(UNFINISHED);
  };
  for (const kind of ['file-added', 'file-removed', 'upload-success', 'complete', 'restored', 'cancel-all']) instance.on(kind, remember);
  return instance;
}

function renderGhosts() {
  const box = panel?.parentElement?.querySelector('#upload-ghosts') ?? document.getElementById('upload-ghosts');
  if (!box) return;
  box.replaceChildren();
  if (!counters.ghosts.length) return;
  box.append(h('p', { class: 'notice', role: 'alert' },
    'These files could not be restored after the page was closed; add them again to continue (what reached the edge is not sent again): ',
    counters.ghosts.join(', ')));
}

function renderList() {
  const list = document.getElementById('upload-progress');
  if (!list || uppy === null) return;
  const files = uppy.getFiles().filter((f) => !f.progress.uploadComplete);
  const total = files.reduce((sum, f) => sum + (f.size ?? 0), 0);
  const done = files.reduce((sum, f) => sum + (f.progress.bytesUploaded ?? 0), 0);
  const speed = files.reduce((sum, f) => sum + (tracking.get(f.id)?.speed ?? 0), 0);
  const rows = files.map((file) => {
    const p = file.progress;
    const seen = tracking.get(file.id);
    const left = seen?.speed > 0 ? duration(((file.size ?? 0) - (p.bytesUploaded ?? 0)) / seen.speed) : '';
    const state = file.isGhost ? 'add it again' : file.error ? (seen?.retrying ? 'retrying' : `failed: ${file.error}`)
      : file.isPaused ? 'paused' : p.uploadStarted ? 'uploading' : 'waiting';
    const toggle = p.uploadStarted && !file.error
      ? h('button', { type: 'button', onclick: () => { uppy.pauseResume(file.id); renderList(); } }, file.isPaused ? 'Resume' : 'Pause')
      : null;
    return h('li', { 'data-file': file.name, 'data-state': state },
      h('span', { class: 'name' }, file.name), ' ',
      h('progress', { max: '100', value: String(p.percentage ?? 0), 'aria-label': `${file.name} uploaded` }), ' ',
      `${size(p.bytesUploaded ?? 0)} of ${size(file.size)}`, left ? `, ${left} left` : '', ` (${state}) `, toggle);
  });
  const summary = files.length
    ? h('p', { class: 'muted', id: 'upload-total' }, `${files.length} ${files.length === 1 ? 'file' : 'files'}: ${size(done)} of ${size(total)}`,
      speed > 0 ? `, about ${duration((total - done) / speed)} left` : '')
    : null;
  list.replaceChildren(...(summary ? [summary] : []), h('ul', {}, rows));
}

function stylesheet(href) {
  return new Promise((resolve, reject) => {
    const link = h('link', { rel: 'stylesheet', href });
    link.addEventListener('load', resolve);
    link.addEventListener('error', () => reject(new Error('the upload area\'s style did not load')));
    // Before the page's own style, as it was in the page's head: app.css has the last word.
    document.head.insertBefore(link, document.head.querySelector('link[rel=stylesheet]'));
  });
}

function showWaiting(message, kind = 'muted') {
  waiting.textContent = message;
  waiting.className = kind;
  // Only a failure is announced: the loading line is gone in a moment.
  if (kind === 'error') waiting.setAttribute('role', 'alert'); else waiting.removeAttribute('role');
  waiting.hidden = false;
}

async function load() {
  const [bundle] = await Promise.all([import(BUNDLE), stylesheet(STYLE)]);
  uppy = make(bundle);
  counters.loaded = true;
  waiting.hidden = true;
  for (const [kind, handler] of handlers) uppy.on(kind, handler);
  for (const [file, project] of dropped.splice(0)) {
    try {
      uppy.addFile({ name: file.name, type: file.type, data: file, source: 'drop', meta: { project } });
    } catch (error) {
      showWaiting(`${file.name}: ${error.message}`, 'error');  // Uppy's own refusal (a duplicate, say)
    }
  }
  renderGhosts();
  renderList();
  return uppy;
}

function panels() {
  if (panel !== null) return;
  panel = h('div', { id: 'dashboard' });
  waiting = h('p', { class: 'muted' });
  waiting.hidden = true;
}

/** Load Uppy now (once); resolves to it. */
export function startUploads() {
  panels();
  if (loading === null) {
    loading = load().catch((error) => {
      loading = null;  // asked for again on the next occasion
      showWaiting(`The upload area could not be loaded (${error.message}); reload the page to try again.`, 'error');
      throw error;
    });
  }
  return loading;
}

/**
 * Load Uppy at once if this browser has unfinished uploads: Golden
 * Retriever resumes them as soon as it is there.
 */
export function resumeUnfinishedUploads() {
  if (localStorage.getItem(UNFINISHED) !== null) startUploads().catch(() => {});
}

/** Load Uppy just after the page's next frame (a page shows its data first). */
export function startUploadsSoon() {
  if (loading !== null) return;
  requestAnimationFrame(() => setTimeout(() => { startUploads().catch(() => {}); }, 0));
}

/** Put the upload area in `container`, for files into `projectId`. */
export function mountUploader(container, projectId) {
  panels();
  currentProject = projectId;
  if (uppy === null) {
    showWaiting('The upload area is loading…');
    // The person reaching for it, or dropping files on it: at once.
    const now = () => { startUploads().catch(() => {}); };
    for (const kind of ['pointerenter', 'focusin', 'dragenter']) container.addEventListener(kind, now, { once: true });
    container.addEventListener('dragover', (event) => { if (uppy === null) event.preventDefault(); });
    container.addEventListener('drop', (event) => {
      if (uppy !== null) return;
      event.preventDefault();
      for (const file of event.dataTransfer?.files ?? []) dropped.push([file, projectId]);
      if (dropped.length) showWaiting(`${dropped.length} ${dropped.length === 1 ? 'file' : 'files'} dropped; the upload area is loading…`);
      now();
    });
  }
  container.replaceChildren(waiting, panel, h('div', { id: 'upload-ghosts' }), h('div', { id: 'upload-progress', 'aria-live': 'off' }));
  renderGhosts();
  renderList();
}

/** The uploader's events, for the page that shows files (also before Uppy is loaded). */
export function onUploadEvent(kind, handler) {
  const entry = [kind, handler];
  handlers.add(entry);
  uppy?.on(kind, handler);
  return () => { handlers.delete(entry); uppy?.off(kind, handler); };
}
