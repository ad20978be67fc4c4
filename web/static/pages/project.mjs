// #/projects/<id>: the project's files (with uploads still on their way),
// its members, its jobs, and the upload area for files into it.

import { API, api, h, pendingLabel, reason, replaceRows, say, size, when } from '../lib.mjs';
import { on, debounced } from '../events.mjs';
import { mountUploader, onUploadEvent } from '../uploads.mjs';

const UPLOAD_STATES = { in_cloud: 'in the cloud', receiving: 'receiving', staged: 'at the edge', transferring: 'at the edge', failed: 'at the edge' };
const CACHE_WORDS = { cached: 'cached here', fetching: 'fetching', remote: 'not cached here' };

const listedFiles = new Set(JSON.parse(sessionStorage.getItem('relay.listed_files') ?? '[]'));

function progress(value, label) {
  return h('progress', { max: '1', value: String(value ?? 0), 'aria-label': label });
}

export function render(container, [projectId], context) {
  const title = h('h1', {}, 'Project');
  const error = h('p', { class: 'error', role: 'alert', id: 'project-error' });
  const summary = h('p', { class: 'muted' });
  const files = h('tbody');
  const members = h('tbody');
  const jobs = h('tbody');
  const uploader = h('div', { class: 'uploader' });
  const uploadSection = h('section', { 'aria-labelledby': 'upload-title', id: 'upload-section' },
    h('h2', { id: 'upload-title' }, 'Upload into this project'), uploader);
  const newJob = h('a', { href: `#/projects/${projectId}/jobs/new`, class: 'button', id: 'new-job' }, 'New job');
  const memberForm = h('form', { id: 'add-member', class: 'inline' },
    h('label', {}, 'Name ', h('input', { name: 'name', required: true, autocomplete: 'off' })),
    h('label', {}, 'Role ', h('select', { name: 'role' }, h('option', { value: 'member' }, 'member'), h('option', { value: 'viewer' }, 'viewer'))),
    h('button', { type: 'submit' }, 'Add'),
    h('span', { class: 'error', role: 'alert', id: 'add-member-error' }));

  const head = (...names) => h('thead', {}, h('tr', {}, ...names.map((n) => h('th', { scope: 'col' }, n))));
  container.append(
    title, summary, error,
    h('section', { 'aria-labelledby': 'files-title' }, h('h2', { id: 'files-title' }, 'Files'),
      h('table', { id: 'files' }, head('Name', 'Size', 'State', 'Here', 'Uploaded by', ''), files)),
    uploadSection,
    h('section', { 'aria-labelledby': 'jobs-title' }, h('h2', { id: 'jobs-title' }, 'Jobs'), newJob,
      h('table', { id: 'jobs' }, head('Job', 'State', 'Progress', 'Submitted', 'By'), jobs)),
    h('section', { 'aria-labelledby': 'members-title' }, h('h2', { id: 'members-title' }, 'Members'),
      h('table', { id: 'members' }, head('Name', 'Role', 'State', ''), members), memberForm),
  );

  let project = null;

  memberForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(memberForm);
    const answer = await api('POST', `projects/${projectId}/members`, { name: form.get('name'), role: form.get('role') });
    say(memberForm.querySelector('#add-member-error'), answer.ok ? '' : reason(answer), 'error');
    if (answer.ok) memberForm.reset();
    await load();
  });

  function fileRow(file) {
    const cache = file.cache?.state;
    return h('tr', { 'data-file': file.id, 'data-state': 'in_cloud', class: file.pending ? 'pending' : null },
      h('th', { scope: 'row' }, file.name, file.kind === 'result' ? h('span', { class: 'muted' }, ' (job result)') : null),
      h('td', { class: 'num' }, size(file.size)),
      h('td', { class: 'state' }, file.pending ? pendingLabel(file.pending) : 'in the cloud'),
      h('td', { class: 'cache', 'data-cache': cache ?? '' }, CACHE_WORDS[cache] ?? '',
        cache === 'fetching' && file.cache.size ? ` ${Math.round(100 * file.cache.fetched / file.cache.size)}%` : ''),
      h('td', { class: 'uploaded-by' }, file.uploaded_by?.name ?? '', file.kind === 'result' ? h('span', { class: 'muted' }, file.uploaded_by ? ' (their job)' : 'a job') : null),
      h('td', { class: 'actions' }, h('a', { href: `${API}/files/${file.id}/content`, download: file.name, class: 'download' },
        'Download', h('span', { class: 'visually-hidden' }, ` ${file.name}`)),
      canWrite() && !file.pending ? [' ', h('button', { type: 'button', class: 'danger delete-file', onclick: async () => {
        if (!window.confirm(`Delete ${file.name}?`)) return;
        const answer = await api('DELETE', `files/${file.id}`);
        say(error, answer.ok ? '' : reason(answer), 'error');
        await load();
      } }, 'Delete', h('span', { class: 'visually-hidden' }, ` ${file.name}`))] : null));
  }

  /** A user's name, from the project's members (an id only when they left). */
  function memberName(userId) {
    if (userId == null) return '';
    if (userId === context.user?.id) return context.user.name;
    return (project?.members ?? []).find((m) => m.user_id === userId)?.name ?? userId.slice(0, 8);
  }

  function canWrite() { return project?.role === 'owner' || project?.role === 'member'; }

  function uploadRow(upload) {
    const received = upload.length ? upload.offset / upload.length : 0;
    const inCloud = upload.length ? (upload.transferred ?? 0) / upload.length : 0;
    const words = UPLOAD_STATES[upload.state] ?? upload.state;
    return h('tr', { 'data-file': upload.id, 'data-state': upload.state, 'data-upload': upload.id },
      h('th', { scope: 'row' }, upload.filename ?? upload.id),
      h('td', { class: 'num' }, size(upload.length)),
      h('td', { class: 'state' }, words, ' ',
        upload.state === 'receiving' ? progress(received, `${upload.filename} received`) : progress(inCloud, `${upload.filename} in the cloud`),
        upload.state === 'failed' ? h('span', { class: 'error' }, ` ${upload.error ?? ''} `) : null,
        upload.state === 'failed' ? h('button', { type: 'button', onclick: async () => {
          const answer = await api('POST', `uploads/${upload.id}/retry`);
          say(error, answer.ok ? '' : reason(answer), 'error');
          await load();
        } }, 'Retry') : null),
      h('td', { class: 'cache', 'data-cache': 'cached' }, 'held here'),
      h('td', { class: 'uploaded-by' }, context.user?.name ?? ''),
      h('td', {}));
  }

  function memberRow(member) {
    const owner = project?.role === 'owner';
    const self = member.user_id === context.user?.id;
    const cell = h('td', { class: 'actions' });
    let role = member.role;
    if (owner && member.role !== 'owner' && !member.pending) {
      const roles = project.is_default ? ['member', 'viewer'] : ['member', 'viewer', 'owner'];
      const select = h('select', { 'aria-label': `Role of ${member.name}`, class: 'role' },
        ...roles.map((r) => h('option', { value: r, selected: r === member.role }, r === 'owner' ? 'owner (hand the project over)' : r)));
      select.addEventListener('change', async () => {
        if (select.value === 'owner' && !window.confirm(`Make ${member.name} the owner? You become a member.`)) {
          select.value = member.role;
          return;
        }
        const answer = await api('PATCH', `projects/${projectId}/members/${member.user_id}`, { role: select.value });
        say(error, answer.ok ? '' : reason(answer), 'error');
        await load();
      });
      role = select;
    }
    if ((owner && member.role !== 'owner') || (self && member.role !== 'owner')) {
      cell.append(h('button', { type: 'button', class: 'danger', onclick: async () => {
        const answer = await api('DELETE', `projects/${projectId}/members/${member.user_id}`);
        say(error, answer.ok ? '' : reason(answer), 'error');
        if (answer.ok && self) { location.hash = '#/projects'; return; }
        await load();
      } }, self ? 'Leave' : 'Remove', h('span', { class: 'visually-hidden' }, ` ${member.name}`)));
    }
    return h('tr', { 'data-member': member.name, class: member.pending ? 'pending' : null },
      h('th', { scope: 'row' }, member.name), h('td', {}, role),
      h('td', { class: 'state' }, member.pending ? pendingLabel(member.pending) : 'saved'), cell);
  }

  function jobRow(job) {
    return h('tr', { 'data-job': job.id, 'data-state': job.state, class: job.pending ? 'pending' : null },
      h('th', { scope: 'row' }, h('a', { href: `#/jobs/${job.id}` }, job.kind, h('span', { class: 'muted' }, ` ${job.id.slice(0, 8)}`))),
      h('td', { class: 'state' }, job.pending ? pendingLabel(job.pending) : job.state),
      h('td', {}, progress(job.progress, `progress of ${job.kind} ${job.id.slice(0, 8)}`)),
      h('td', {}, when(job.created_at)),
      h('td', {}, job.submitted_by_name ?? memberName(job.submitted_by)));
  }

  async function load() {
    const [detail, fileList, uploads, jobList] = await Promise.all([
      api('GET', `projects/${projectId}`), api('GET', `files?project=${projectId}`),
      api('GET', 'uploads'), api('GET', `jobs?project=${projectId}`),
    ]);
    if (!detail.ok) {
      title.textContent = detail.status === 404 ? 'No such project' : 'Project';
      say(error, reason(detail), 'error');
      for (const section of container.querySelectorAll('section')) section.hidden = true;
      return;
    }
    project = detail.body.project;
    document.title = `${project.name} · relay`;
    title.textContent = project.name;
    summary.textContent = `Your role: ${project.role}${project.pending ? ` · ${pendingLabel(project.pending)}` : ''}`;
    const stored = fileList.ok ? fileList.body.files ?? [] : project.files ?? [];
    const known = new Set(stored.map((f) => f.id));
    const coming = (uploads.ok ? uploads.body.uploads ?? [] : [])
      .filter((u) => u.project === projectId && u.state !== 'in_cloud' && !known.has(u.id));
    // An upload the cloud has just confirmed, whose row has not reached the
    // edge yet, still shows as an upload (for a minute: after that a missing
    // row means the file was deleted).
    // A file this tab has listed and no longer sees was deleted.
    for (const id of known) listedFiles.add(id);
    sessionStorage.setItem('relay.listed_files', JSON.stringify([...listedFiles].slice(-5000)));
    const arrived = (uploads.ok ? uploads.body.uploads ?? [] : [])
      .filter((u) => u.project === projectId && u.state === 'in_cloud' && !known.has(u.id)
        && !listedFiles.has(u.id) && Date.now() - Date.parse(u.updated) < 60000);
    const fileRows = [...coming.map(uploadRow), ...arrived.map(uploadRow), ...stored.map(fileRow)];
    replaceRows(files, fileRows.length ? fileRows : [h('tr', {}, h('td', { colspan: '6' }, 'No files yet: drop some below.'))]);
    replaceRows(members, (project.members ?? []).map(memberRow));
    memberForm.hidden = project.role !== 'owner';
    const canWrite = project.role === 'owner' || project.role === 'member';
    newJob.hidden = !canWrite;
    // (Its own element: an answer may come after the person left the page.)
    uploadSection.hidden = !canWrite;
    const jobRows = jobList.ok ? jobList.body.jobs ?? [] : project.jobs ?? [];
    replaceRows(jobs, jobRows.length ? jobRows.map(jobRow) : [h('tr', {}, h('td', { colspan: '5' }, 'No jobs yet.'))]);
  }

  mountUploader(uploader, projectId);
  load().finally(context.shown);
  const refresh = debounced(load, 400);
  const off = ['replica.changed', 'command.applied', 'command.rejected', 'reset', 'upload.state', 'upload.progress',
    'transfer.progress', 'upload.removed', 'file.cache', 'job.state', 'job.progress'].map((kind) => on(kind, refresh));
  off.push(onUploadEvent('upload-success', refresh), onUploadEvent('upload-error', refresh));
  return () => off.forEach((unsubscribe) => unsubscribe());
}
