// #/account: change the password; API keys (list, create, revoke), the
// new key's secret shown once with a copy button.

import { api, h, reason, replaceRows, say, when } from '../lib.mjs';
import { on, debounced } from '../events.mjs';

export function render(container, _params, context, { firstPassword = false } = {}) {
  document.title = 'Account · relay';
  const passwordResult = h('span', { id: 'password-result', role: 'status' });
  const passwordForm = h('form', { id: 'password-form' },
    h('label', {}, 'Current password ', h('input', { name: 'current_password', type: 'password', autocomplete: 'current-password', required: true })),
    h('label', {}, 'New password ', h('input', { name: 'new_password', type: 'password', autocomplete: 'new-password', minlength: '10', required: true })),
    h('button', { type: 'submit' }, 'Change'), ' ', passwordResult);
  const first = h('p', { id: 'first-password', class: 'notice', hidden: !firstPassword },
    'Your password was chosen for you and works only once: choose your own to go on. ',
    'Once the cloud has it (a moment), log in with it.');
  const keys = h('tbody');
  const keyError = h('p', { class: 'error', role: 'alert', id: 'keys-error' });
  const secretBox = h('div', { id: 'new-key', hidden: true, role: 'region', 'aria-label': 'Your new API key' });
  const keyForm = h('form', { id: 'key-form', class: 'inline' },
    h('label', {}, 'Name of the new key ', h('input', { name: 'name', maxlength: '200', required: true, autocomplete: 'off' })),
    h('button', { type: 'submit' }, 'Create key'));
  const keySection = h('section', { 'aria-labelledby': 'keys-title', id: 'keys', hidden: firstPassword },
    h('h2', { id: 'keys-title' }, 'API keys'),
    h('p', { class: 'muted' }, 'For tools and scripts: send Authorization: Bearer <key>. A key works until it is revoked.'),
    keyError, secretBox,
    h('table', { id: 'key-list' }, h('thead', {}, h('tr', {}, ...['Name', 'Created', 'State', ''].map((t) => h('th', { scope: 'col' }, t)))), keys),
    keyForm);
  container.append(h('h1', {}, 'Account'),
    h('p', {}, 'Logged in as ', h('strong', {}, context.user?.name ?? '')),
    h('section', { 'aria-labelledby': 'password-title' }, h('h2', { id: 'password-title' }, 'Password'), first, passwordForm),
    keySection);

  let waiting = null;
  passwordForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(passwordForm);
    const answer = await api('POST', 'password', { current_password: form.get('current_password'), new_password: form.get('new_password') });
    say(passwordResult, answer.ok ? 'Sent; it takes effect here once the cloud has it.' : reason(answer), answer.ok ? 'muted' : 'error');
    if (!answer.ok) return;
    passwordForm.reset();
    // The session ends once the new password has reached this edge.
    if (waiting === null) {
      waiting = setInterval(async () => {
        const me = await fetch('/api/v1/me', { credentials: 'same-origin' }).catch(() => null);
        if (me === null) return;
        if (me.status === 401) {
          clearInterval(waiting); waiting = null;
          await context.restart('Your new password is in place: log in with it.');
        } else if (me.ok && firstPassword && !(await me.json()).user.must_change_password) {
          clearInterval(waiting); waiting = null;
          await context.restart('');
        }
      }, 1000);
    }
  });

  function showSecret(secret, name) {
    const field = h('input', { id: 'new-key-secret', readonly: true, value: secret, 'aria-label': `The secret of ${name}`, size: '60' });
    const copied = h('span', { role: 'status', id: 'copy-result' });
    const copy = h('button', { type: 'button', id: 'copy-key', onclick: async () => {
      field.select();
      try { await navigator.clipboard.writeText(secret); say(copied, 'Copied.'); } catch { say(copied, 'Selected: copy it with Ctrl+C.'); }
    } }, 'Copy');
    secretBox.replaceChildren(
      h('p', { class: 'notice' }, `The key ${name}, shown this once: copy it now. relay keeps only its hash.`),
      field, ' ', copy, ' ', copied,
      h('p', {}, h('button', { type: 'button', onclick: () => { secretBox.hidden = true; secretBox.replaceChildren(); } }, 'I have copied it')));
    secretBox.hidden = false;
    field.focus();
    field.select();
  }

  keyForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = new FormData(keyForm).get('name');
    const answer = await api('POST', 'keys', { name });
    say(keyError, answer.ok ? '' : reason(answer), 'error');
    if (!answer.ok) return;
    keyForm.reset();
    const secret = answer.body.secret ?? answer.body.key?.secret;
    if (secret) showSecret(secret, name);
    await loadKeys();
  });

  async function loadKeys() {
    if (firstPassword) return;
    const answer = await api('GET', 'keys');
    if (!answer.ok) { say(keyError, reason(answer), 'error'); return; }
    const list = answer.body.keys ?? [];
    replaceRows(keys, list.map((key) => h('tr', { 'data-key': key.id, class: key.pending ? 'pending' : null },
      h('th', { scope: 'row' }, key.name ?? key.id),
      h('td', {}, when(key.created_at)),
      h('td', { class: 'state' }, key.pending ? `pending (${key.pending})` : 'active'),
      h('td', {}, key.pending === 'revoke' || key.pending === 'delete' ? null : h('button', { type: 'button', class: 'danger', onclick: async () => {
        const done = await api('DELETE', `keys/${key.id}`);
        say(keyError, done.ok ? '' : reason(done), 'error');
        await loadKeys();
      } }, 'Revoke', h('span', { class: 'visually-hidden' }, ` ${key.name ?? ''}`))))));
    if (!list.length) replaceRows(keys, [h('tr', {}, h('td', { colspan: '4' }, 'No API keys.'))]);
  }

  loadKeys().finally(context.shown);
  const refresh = debounced(loadKeys);
  const off = ['replica.changed', 'command.applied', 'command.rejected'].map((kind) => on(kind, refresh));
  return () => { if (waiting !== null) clearInterval(waiting); off.forEach((unsubscribe) => unsubscribe()); };
}
