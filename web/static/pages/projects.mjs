// #/projects: the caller's projects with their role, file and job counts;
// create, rename, delete (each pending until the cloud has applied it).

import { api, h, pendingLabel, reason, replaceRows, say } from '../lib.mjs';
import { on, debounced } from '../events.mjs';

export function render(container, _params, context) {
  document.title = 'Projects · relay';
  const error = h('p', { class: 'error', role: 'alert', id: 'projects-error' });
  const body = h('tbody');
  const table = h('table', { id: 'projects' },
    h('caption', { class: 'visually-hidden' }, 'Your projects'),
    h('thead', {}, h('tr', {}, ...['Project', 'Your role', 'Files', 'Jobs', 'State', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
    body);
  const create = h('form', { id: 'new-project', class: 'inline' },
    h('label', {}, 'New project ', h('input', { name: 'name', maxlength: '200', required: true, autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Create'),
    h('span', { id: 'new-project-error', class: 'error', role: 'alert' }));
  container.append(h('h1', {}, 'Projects'), error, table, create);

  create.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = new FormData(create).get('name');
    const answer = await api('POST', 'projects', { name });
    say(create.querySelector('#new-project-error'), answer.ok ? '' : reason(answer), 'error');
    if (answer.ok) { create.reset(); context.announce(`Project ${name} created; pending until the cloud has it.`); }
    await load();
    context.refreshNav();
  });

  function row(project) {
    const owner = project.role === 'owner';
    const actions = h('td', { class: 'actions' });
    if (owner && !project.pending) {
      actions.append(h('button', { type: 'button', onclick: () => rename(project, actions) }, 'Rename'));
      if (!project.is_default) {
        actions.append(' ', h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!window.confirm(`Delete the project ${project.name} and its files?`)) return;
          const answer = await api('DELETE', `projects/${project.id}`);
          say(error, answer.ok ? '' : reason(answer), 'error');
          await load();
          context.refreshNav();
        } }, 'Delete'));
      }
    }
    return h('tr', { 'data-project': project.id, class: project.pending ? 'pending' : null },
      h('th', { scope: 'row' }, h('a', { href: `#/projects/${project.id}` }, project.name),
        project.is_default ? h('span', { class: 'muted' }, ' (your own)') : null),
      h('td', {}, project.role ?? ''),
      h('td', { class: 'num' }, String(project.file_count ?? 0)),
      h('td', { class: 'num' }, String(project.job_count ?? 0)),
      h('td', { class: 'state' }, project.pending ? pendingLabel(project.pending) : 'saved'),
      actions);
  }

  function rename(project, cell) {
    const form = h('form', { class: 'inline rename' },
      h('label', {}, h('span', { class: 'visually-hidden' }, `New name for ${project.name}`),
        h('input', { name: 'name', value: project.name, maxlength: '200', required: true })),
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', onclick: () => load() }, 'Cancel'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const answer = await api('PATCH', `projects/${project.id}`, { name: new FormData(form).get('name') });
      say(error, answer.ok ? '' : reason(answer), 'error');
      await load();
      context.refreshNav();
    });
    cell.replaceChildren(form);
    form.querySelector('input').focus();
  }

  async function load() {
    // The counts come with the list: no file or job list is fetched.
    const projects = await api('GET', 'projects');
    if (!projects.ok) { say(error, reason(projects), 'error'); return; }
    const list = projects.body.projects ?? [];
    replaceRows(body, list.length ? list.map(row)
      : [h('tr', {}, h('td', { colspan: '6' }, 'No projects yet.'))]);
  }

  load().finally(context.shown);
  const refresh = debounced(load);
  const off = ['replica.changed', 'command.applied', 'command.rejected', 'reset'].map((kind) => on(kind, refresh));
  return () => off.forEach((unsubscribe) => unsubscribe());
}
