// #/projects/<id>/jobs/new: a job's form, generated from the kind's JSON
// Schema (GET /api/v1/job-kinds), with the project's files as inputs.

import { api, h, reason, say, size } from '../lib.mjs';

/**
 * The schema's pattern as an HTML pattern attribute, when the browser can
 * take it (it compiles patterns with the `v` flag, stricter than JSON
 * Schema's); else none: the edge checks the pattern anyway.
 */
function htmlPattern(pattern) {
  if (typeof pattern !== 'string') return null;
  try { new RegExp(pattern, 'v'); return pattern; } catch { return null; }
}

/** One form control for one property of the kind's schema. */
function field(name, schema, required) {
  const id = `param-${name}`;
  const label = schema.title ?? name;
  const help = schema.description ? h('small', { class: 'muted', id: `${id}-help` }, schema.description) : null;
  const common = { id, name, 'data-param': name, 'aria-describedby': help ? `${id}-help` : null, required: required || null };
  let control;
  if (Array.isArray(schema.enum)) {
    control = h('select', common, ...(required ? [] : [h('option', { value: '' }, '')]),
      ...schema.enum.map((value) => h('option', { value: JSON.stringify(value), selected: value === schema.default }, String(value))));
    control.dataset.type = 'enum';
  } else if (schema.type === 'boolean') {
    control = h('input', { ...common, type: 'checkbox', checked: schema.default === true, required: null });
    control.dataset.type = 'boolean';
    return h('div', { class: 'field' }, h('label', { for: id }, control, ' ', label), help);
  } else if (schema.type === 'integer' || schema.type === 'number') {
    control = h('input', { ...common, type: 'number', step: schema.type === 'integer' ? '1' : 'any',
      min: schema.minimum ?? null, max: schema.maximum ?? null, value: schema.default ?? null });
    control.dataset.type = schema.type;
  } else {
    control = h('input', { ...common, type: 'text', value: schema.default ?? null,
      minlength: schema.minLength ?? null, maxlength: schema.maxLength ?? null, pattern: htmlPattern(schema.pattern) });
    control.dataset.type = 'string';
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label, required ? ' (required)' : ''), control, help);
}

function values(form) {
  const parameters = {};
  for (const control of form.querySelectorAll('[data-param]')) {
    const name = control.dataset.param;
    const type = control.dataset.type;
    if (type === 'boolean') { parameters[name] = control.checked; continue; }
    if (control.value === '') continue;
    if (type === 'enum') parameters[name] = JSON.parse(control.value);
    else if (type === 'integer') parameters[name] = Number.parseInt(control.value, 10);
    else if (type === 'number') parameters[name] = Number(control.value);
    else parameters[name] = control.value;
  }
  return parameters;
}

export function render(container, [projectId], context) {
  document.title = 'New job · relay';
  const error = h('p', { class: 'error', role: 'alert', id: 'job-error' });
  const kindSelect = h('select', { id: 'job-kind', name: 'kind', required: true });
  const description = h('p', { class: 'muted', id: 'kind-description' });
  const params = h('fieldset', { id: 'job-parameters' }, h('legend', {}, 'Parameters'));
  const inputs = h('fieldset', { id: 'job-inputs' }, h('legend', {}, 'Input files'));
  const form = h('form', { id: 'job-form' },
    h('div', { class: 'field' }, h('label', { for: 'job-kind' }, 'Kind'), kindSelect), description, params, inputs,
    h('button', { type: 'submit' }, 'Submit'), error);
  container.append(h('h1', {}, 'New job'),
    h('p', {}, h('a', { href: `#/projects/${projectId}` }, 'Back to the project')), form);
  let kinds = [];

  function showKind() {
    const kind = kinds.find((k) => k.name === kindSelect.value);
    description.textContent = kind?.description ?? '';
    const schema = kind?.parameters ?? {};
    const required = new Set(schema.required ?? []);
    const properties = Object.entries(schema.properties ?? {});
    params.replaceChildren(h('legend', {}, 'Parameters'),
      ...(properties.length ? properties.map(([name, s]) => field(name, s, required.has(name))) : [h('p', { class: 'muted' }, 'This kind takes no parameters.')]));
    const legend = inputs.querySelector('legend');
    const min = kind?.min_inputs ?? 0;
    const max = kind?.max_inputs ?? null;
    legend.textContent = `Input files (${max == null ? `at least ${min}` : min === max ? `${min}` : `${min} to ${max}`})`;
    inputs.dataset.min = String(min);
    inputs.dataset.max = max == null ? '' : String(max);
  }

  kindSelect.addEventListener('change', showKind);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = [...inputs.querySelectorAll('input[type=checkbox]:checked')].map((c) => c.value);
    const min = Number(inputs.dataset.min || 0);
    const max = inputs.dataset.max ? Number(inputs.dataset.max) : Infinity;
    if (chosen.length < min || chosen.length > max) {
      say(error, `Choose ${max === Infinity ? `at least ${min}` : `${min} to ${max}`} input files (${chosen.length} chosen).`, 'error');
      return;
    }
    const answer = await api('POST', 'jobs', { project_id: projectId, kind: kindSelect.value, parameters: values(form), inputs: chosen });
    if (!answer.ok) { say(error, reason(answer), 'error'); return; }
    context.announce('Job submitted; pending until the cloud has it.');
    location.hash = `#/jobs/${answer.body.job.id}`;
  });

  (async () => {
    const [kindList, files] = await Promise.all([api('GET', 'job-kinds'), api('GET', `files?project=${projectId}`)]);
    if (!kindList.ok) { say(error, reason(kindList), 'error'); return; }
    if (!files.ok) { say(error, reason(files), 'error'); return; }
    kinds = kindList.body.kinds ?? [];
    kindSelect.replaceChildren(...kinds.map((k) => h('option', { value: k.name }, k.name)));
    const stored = (files.body.files ?? []).filter((f) => !f.pending);
    inputs.append(...(stored.length
      ? stored.map((f) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'inputs', value: f.id }), ` ${f.name} `,
        h('span', { class: 'muted' }, size(f.size))))
      : [h('p', { class: 'muted' }, 'This project has no files in the cloud yet.')]));
    showKind();
  })().finally(context.shown);
}
