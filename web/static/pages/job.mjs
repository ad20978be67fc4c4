// #/jobs/<id>: a job's state, attempts, progress, live log tail, results
// and cancel.
//
// The log is kept as bytes: the first GET .../log?offset=0, then each
// job.log event's bytes past what is held (an event starting past it, or a
// reconnection, fetches log?offset=<held> first), so nothing is missing
// and nothing shows twice. A new attempt starts the log over.

import { API, api, h, pendingLabel, reason, say, size, when } from '../lib.mjs';
import { on, onConnection, debounced } from '../events.mjs';

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out']);
const encoder = new TextEncoder();

class LogTail {
  constructor(jobId, pre) {
    this.jobId = jobId;
    this.pre = pre;
    this.attempt = null;
    this.held = 0;        // bytes of the log shown (the log's offset up to which we have it)
    this.complete = false;
    this.decoder = new TextDecoder();
    this.chain = Promise.resolve();
    this.stopped = false;
  }

  /** Run `work` after what is queued: fetches and events apply in order. */
  queue(work) {
    this.chain = this.chain.then(() => (this.stopped ? null : work())).catch((error) => console.warn('log', error));
    return this.chain;
  }

  restart(attempt) {
    this.attempt = attempt;
    this.held = 0;
    this.complete = false;
    this.decoder = new TextDecoder();
    this.pre.textContent = '';
  }

  /**
   * Show `bytes`, the log's from `offset` (to `end`: an event's text, made
   * bytes again, may differ in length where the edge replaced bytes that
   * were not UTF-8; the edge's offsets stay the truth).
   */
  append(bytes, offset, end = offset + bytes.length) {
    if (offset > this.held) {
      this.pre.append(`\n[… ${offset - this.held} bytes of the log are no longer at the edge …]\n`);
      this.decoder = new TextDecoder();
    }
    const skip = Math.max(0, this.held - offset);
    if (skip >= bytes.length || end <= this.held) return;
    const fresh = bytes.subarray(skip);
    this.pre.append(this.decoder.decode(fresh, { stream: true }));
    this.held = end;
    this.pre.dataset.bytes = String(this.held);
    const box = this.pre.parentElement;
    if (box && box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }

  /** Fetch what the edge holds past what is shown (queued). */
  fetch() { return this.queue(() => this.pull()); }

  /** Fetch what the edge holds past what is shown (inside a queued step). */
  async pull() {
    if (this.complete) return;
    let response;
    try {
      response = await fetch(`${API}/jobs/${this.jobId}/log?offset=${this.held}`, { credentials: 'same-origin', cache: 'no-store' });
    } catch { return; }  // the stream's reconnection fetches again
    if (response.status === 416) {
      // The edge holds less than is shown: the log started over.
      this.restart(this.attempt);
      return this.pull();
    }
    if (!response.ok) return;
    const attempt = Number(response.headers.get('X-Log-Attempt') ?? 0);
    const offset = Number(response.headers.get('X-Log-Offset') ?? this.held);
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (attempt === 0) return;
    if (this.attempt !== attempt) {
      if (this.attempt !== null && attempt < this.attempt) return;
      this.restart(attempt);
      if (offset > 0) return this.pull();
    }
    this.append(bytes, offset);
    this.complete = response.headers.get('X-Log-Complete') === '1';
  }

  event(data) {
    if (data.job_id !== this.jobId) return;
    this.queue(async () => {
      if (this.attempt !== null && data.attempt < this.attempt) return;
      if (this.attempt === null || data.attempt > this.attempt) {
        this.restart(data.attempt);
      }
      if (data.offset > this.held) await this.pull();
      if (data.end > this.held) this.append(encoder.encode(data.text ?? ''), data.offset, data.end);
      if (data.eof) this.complete = true;
    });
  }
}

export function render(container, [jobId], context) {
  document.title = 'Job · relay';
  const title = h('h1', {}, 'Job');
  const error = h('p', { class: 'error', role: 'alert', id: 'job-error' });
  const facts = h('dl', { class: 'facts', id: 'job-facts' });
  const bar = h('progress', { id: 'job-progress', max: '1', value: '0', 'aria-label': 'Progress' });
  const status = h('span', { id: 'job-status', class: 'muted' });
  const cancel = h('button', { type: 'button', id: 'cancel-job', class: 'danger', hidden: true }, 'Cancel job');
  const back = h('p', {});
  const pre = h('pre', { id: 'job-log', 'aria-label': 'Log' });
  const results = h('ul', { id: 'job-results' });
  container.append(title, back, error, facts, h('p', {}, bar, ' ', status), cancel,
    h('section', { 'aria-labelledby': 'log-title' }, h('h2', { id: 'log-title' }, 'Log'), h('div', { class: 'log', tabindex: '0' }, pre)),
    h('section', { 'aria-labelledby': 'results-title' }, h('h2', { id: 'results-title' }, 'Results'), results));

  const tail = new LogTail(jobId, pre);

  cancel.addEventListener('click', async () => {
    const answer = await api('POST', `jobs/${jobId}/cancel`);
    say(error, answer.ok ? '' : reason(answer), 'error');
    if (answer.ok) context.announce('Cancel sent; pending until the cloud has it.');
    await load();
  });

  function fact(name, value) { return [h('dt', {}, name), h('dd', { 'data-fact': name }, value ?? '')]; }

  async function load() {
    const answer = await api('GET', `jobs/${jobId}`);
    if (!answer.ok) {
      title.textContent = answer.status === 404 ? 'No such job' : 'Job';
      say(error, reason(answer), 'error');
      return;
    }
    const job = answer.body.job;
    document.title = `${job.kind} ${job.id.slice(0, 8)} · relay`;
    title.textContent = `${job.kind} ${job.id.slice(0, 8)}`;
    back.replaceChildren(h('a', { href: `#/projects/${job.project_id}` }, 'Back to the project'));
    facts.dataset.state = job.state;
    facts.replaceChildren(
      ...fact('State', job.pending ? `${job.state}, ${pendingLabel(job.pending)}` : job.state),
      ...fact('Attempts', String(job.attempts ?? 0)),
      ...fact('Submitted', when(job.created_at)),
      ...fact('Started', when(job.started_at)),
      ...fact('Finished', when(job.finished_at)),
      ...(job.inputs && job.pending !== 'submit' ? fact('Inputs', `${job.inputs.length} ${job.inputs.length === 1 ? 'file' : 'files'}`) : []),
      ...(job.error ? fact('Error', job.error) : []));
    bar.value = job.progress ?? 0;
    // A submission still pending cannot be cancelled yet; a cancel pending is on its way.
    cancel.hidden = FINAL.has(job.state) || Boolean(job.pending);
    results.replaceChildren(...(job.results ?? []).map((r) => h('li', { 'data-result': r.name },
      h('a', { href: `${API}/files/${r.id}/content`, download: r.name }, r.name), ` ${size(r.size)}`,
      r.sha256 ? h('span', { class: 'muted' }, ` sha256 ${r.sha256.slice(0, 12)}…`) : null)));
    if (!(job.results ?? []).length) results.append(h('li', { class: 'muted' }, FINAL.has(job.state) ? 'No results.' : 'Not yet.'));
  }

  load().finally(context.shown);
  tail.fetch();
  const refresh = debounced(load, 300);
  const off = [
    on('job.log', (data) => tail.event(data)),
    on('job.progress', (data) => {
      if (data.job_id !== jobId) return;
      bar.value = data.progress ?? bar.value;
      status.textContent = data.status ?? '';
    }),
    on('job.state', (data) => { if (data.job_id === jobId) refresh(); }),
    on('command.applied', refresh), on('command.rejected', refresh), on('replica.changed', refresh),
    on('reset', () => { refresh(); tail.fetch(); }),
    // Back after a cut: what came meanwhile, from the last byte held.
    onConnection((state) => { if (state === 'open') { tail.fetch(); refresh(); } }),
  ];
  return () => { tail.stopped = true; off.forEach((unsubscribe) => unsubscribe()); };
}
