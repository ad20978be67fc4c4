// Uploads that never give up silently: one Uppy for the whole page (its
// Dashboard moves into the project page shown), tus to the edge, Golden
// Retriever to survive a reload or a closed browser, the page's own stall
// detection, and retries without a final give-up while the edge answers.

import { Uppy, Dashboard, Tus, GoldenRetriever } from './vendor/uppy.min.mjs';
import { API, getCsrfToken, h, size, duration } from './lib.mjs';

//: No progress for this long while uploading: abort, ask the edge for the offset, go on.
//: (localStorage 'relay.stall_ms' overrides it, at least 1 s: for tests and odd networks.)
const STALL_MS = Math.max(1000, Number(localStorage.getItem('relay.stall_ms')) || 30000);
//: tus-js-client's own retries, each a fresh HEAD for the offset then PATCH.
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000];

let uppy = null;
let panel = null;
let currentProject = null;
const tracking = new Map();  // file id -> {last, bytes, speed, since, retrying}
export const counters = { stalls: 0, retries: 0, restored: 0, ghosts: [] };
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

function make() {
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

export function startUploads() {
  if (uppy !== null) return uppy;
  panel = h('div', { id: 'dashboard' });
  uppy = make();
  return uppy;
}

/** Put the upload area in `container`, for files into `projectId`. */
export function mountUploader(container, projectId) {
  startUploads();
  currentProject = projectId;
  container.replaceChildren(panel, h('div', { id: 'upload-ghosts' }), h('div', { id: 'upload-progress', 'aria-live': 'off' }));
  renderGhosts();
  renderList();
}

/** The uploader's events, for the page that shows files. */
export function onUploadEvent(kind, handler) {
  startUploads();
  uppy.on(kind, handler);
  return () => uppy.off(kind, handler);
}
