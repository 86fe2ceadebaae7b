// The binaryrepo web page: a client of the management API (/api/...) and of each format's own
// API, which the module formats/<format>.js speaks. Every piece of text from the server goes into
// the page through textContent or an attribute, never as HTML: names are user input.

const TOKEN_KEY = 'binaryrepo.token';
const $ = (id) => document.getElementById(id);

// A signed-in user holds an API token (POST /api/tokens) in sessionStorage: it ends with the tab,
// is sent only by this script as a Bearer header (no cookie, so no cross-site request carries it),
// and is revoked on sign-out.
const session = {
  get() {
    try { return JSON.parse(sessionStorage.getItem(TOKEN_KEY)); } catch { return null; }
  },
  set(value) { if (value) sessionStorage.setItem(TOKEN_KEY, JSON.stringify(value)); else sessionStorage.removeItem(TOKEN_KEY); },
};

/** fetch with the session's credentials; `path` is same-origin. */
export function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const s = session.get();
  if (s && !headers.has('Authorization')) headers.set('Authorization', `Bearer ${s.token}`);
  return fetch(path, { ...options, headers, credentials: 'omit', cache: 'no-store' });
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const opts = { ...options };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers = { ...(opts.headers || {}), 'Content-Type': 'application/json' };
    delete opts.json;
  }
  const resp = await request(path, opts);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!resp.ok) throw new ApiError(resp.status, body?.error?.message || `${resp.status} ${resp.statusText}`);
  return body;
}

/** An element with attributes (properties for on*) and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function say(text) { $('status').textContent = text; $('error').textContent = ''; }
function fail(e) { $('error').textContent = e instanceof Error ? e.message : String(e); }

let me = null;
let formats = ['docker'];
let editing = null;

async function loadMe() {
  me = null;
  if (session.get()) {
    try { me = await api('/api/users/me'); } catch (e) { if (e.status === 401) session.set(null); else fail(e); }
  }
  const admin = Boolean(me?.admin);
  document.body.classList.toggle('admin', admin);
  for (const node of document.querySelectorAll('section.admin-only')) node.hidden = !admin;
  $('login').hidden = Boolean(me);
  $('whoami').hidden = !me;
  $('whoami-name').textContent = me?.name || '';
  $('whoami-admin').textContent = admin ? ' (admin)' : '';
}

async function loadRepositories() {
  const tbody = $('repos').tBodies[0];
  let list;
  try { list = (await api('/api/stats')).repositories; } catch (e) {
    tbody.replaceChildren(el('tr', {}, el('td', { colspan: 8 }, `Repositories unavailable: ${e.message}`)));
    return;
  }
  if (!list.length) {
    tbody.replaceChildren(el('tr', {}, el('td', { colspan: 8 }, me ? 'No repositories you may read.' : 'No repositories visible without signing in.')));
    return;
  }
  tbody.replaceChildren(...list.map((r) => {
    const remote = r.type === 'remote';
    const num = (value, text) => el('td', { class: 'num', 'data-bytes': value ?? '' }, text);
    return el('tr', { 'data-repository': r.name },
      el('th', { scope: 'row' }, el('button', { type: 'button', class: 'link', onclick: () => browse(r) , 'aria-label': `Browse ${r.name}` }, r.name)),
      el('td', {}, r.type, r.members?.length ? el('div', { class: 'hint' }, `members: ${r.members.join(', ')}`) : null),
      el('td', {}, r.format),
      num(r.size_bytes, r.size_bytes === null ? '—' : `${bytes(r.size_bytes)} (${r.blobs} blobs)`),
      el('td', { class: 'num', 'data-count': r.cache.served_from_store }, remote ? String(r.cache.served_from_store) : '—'),
      el('td', { class: 'num', 'data-count': r.cache.fetched_upstream }, remote ? `${r.cache.fetched_upstream} (${bytes(r.cache.upstream_bytes)})` : '—'),
      remote ? el('td', { class: 'num saved', 'data-bytes': r.bytes_saved }, bytes(r.bytes_saved)) : el('td', { class: 'num' }, '—'),
      el('td', { class: 'admin-only' },
        el('button', { type: 'button', onclick: () => edit(r.name), 'aria-label': `Edit ${r.name}` }, 'Edit'), ' ',
        el('button', { type: 'button', onclick: () => remove(r.name), 'aria-label': `Delete ${r.name}` }, 'Delete')));
  }));
}

async function loadPlugins() {
  const box = $('plugins');
  if (!me?.admin) {
    box.replaceChildren(el('p', {}, 'Plugins unavailable: sign in as an admin to see them.'));
    return;
  }
  let list;
  try { list = await api('/api/plugins'); } catch (e) {
    const why = e.status === 404 ? 'this server does not list its plugins'
      : e.status === 401 || e.status === 403 ? 'sign in as an admin to see them' : e.message;
    box.replaceChildren(el('p', {}, `Plugins unavailable: ${why}.`));
    return;
  }
  const loaded = list.plugins || [];
  const refused = list.refused || [];
  formats = loaded.map((p) => p.format);
  $('repo-format').replaceChildren(...formats.map((f) => el('option', { value: f }, f)));
  const parts = [el('table', {},
    el('thead', {}, el('tr', {}, ['Format', 'Contract', 'Roots', 'File', 'Loaded'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, loaded.map((p) => el('tr', {},
      el('td', {}, p.format), el('td', {}, el('code', {}, p.contract ?? '')),
      el('td', {}, el('code', {}, (p.roots || []).join(' '))), el('td', {}, el('code', {}, p.file ?? '')),
      el('td', {}, p.loaded_at ?? '')))))];
  if (refused.length) {
    parts.push(el('table', {},
      el('caption', {}, 'Plugin files not loaded'),
      el('thead', {}, el('tr', {}, ['File', 'Reason'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, refused.map((r) => el('tr', {}, el('td', {}, el('code', {}, r.file)), el('td', {}, r.reason))))));
  }
  box.replaceChildren(...parts);
}

// ---- browsing: the format module lists items (images, charts, modules) and their versions ----

async function formatModule(format) {
  if (!/^[a-z0-9][a-z0-9_-]*$/.test(format)) throw new Error(`format ${format} has no browser here`);
  try { return await import(`./formats/${format}.js`); } catch { throw new Error(`browsing ${format} repositories is not supported by this page yet`); }
}

async function browse(repo) {
  const section = $('browse');
  const body = $('browse-body');
  section.hidden = false;
  $('browse-title').textContent = `Contents of ${repo.name}`;
  body.replaceChildren(el('p', {}, 'Loading…'));
  $('browse-title').focus();
  try {
    const mod = await formatModule(repo.format);
    const ctx = { repo: repo.name, type: repo.type, base: `/repo/${encodeURIComponent(repo.name)}`, host: location.host, request };
    const items = await mod.items(ctx);
    if (!items.length) { body.replaceChildren(el('p', {}, `Nothing in ${repo.name} yet.`)); return; }
    body.replaceChildren(el('p', { class: 'hint' }, `${items.length} ${items.length === 1 ? mod.labels.item : mod.labels.items}; open one to see its ${mod.labels.versions}.`),
      ...items.map((name) => itemView(mod, ctx, name)));
  } catch (e) {
    body.replaceChildren(el('p', { class: 'error' }, e.message));
  }
}

function itemView(mod, ctx, name) {
  const content = el('div', {}, el('p', {}, 'Loading…'));
  const details = el('details', { 'data-item': name }, el('summary', {}, name), content);
  let loaded = false;
  details.addEventListener('toggle', async () => {
    if (!details.open || loaded) return;
    loaded = true;
    try {
      const { versions, more } = await mod.versions(ctx, name);
      const rows = await Promise.all(versions.map(async (v) => {
        const d = await mod.describe(ctx, name, v).catch((e) => ({ error: e.message }));
        const cmd = mod.pullCommand(ctx, name, v, d.digest);
        const input = el('input', { class: 'pull', readonly: true, value: cmd, 'aria-label': `Pull command for ${name}:${v}` });
        const copy = el('button', { type: 'button', onclick: () => copyText(input), 'aria-label': `Copy pull command for ${name}:${v}` }, 'Copy');
        const digest = el('td', { class: 'digest' }, d.digest || d.error || '');
        return el('tr', { 'data-version': v },
          el('th', { scope: 'row' }, v),
          digest,
          d.lazy ? lazyDetails(mod, ctx, name, v, digest) : sizeCell(d),
          el('td', {}, input, ' ', copy));
      }));
      content.replaceChildren(
        el('table', {},
          el('caption', { class: 'hint' }, `${mod.labels.versions} of ${name}`),
          el('thead', {}, el('tr', {}, [mod.labels.version, 'Digest', 'Size', 'Pull command'].map((h) => el('th', { scope: 'col' }, h)))),
          el('tbody', {}, rows)),
        ...(more ? [el('p', { class: 'hint' }, `Only the first ${versions.length} ${mod.labels.versions} are shown.`)] : []));
    } catch (e) {
      content.replaceChildren(el('p', { class: 'error' }, e.message));
    }
  });
  return details;
}

function sizeCell(d) {
  return el('td', { class: 'num size', 'data-bytes': d.size ?? '' }, d.size === undefined ? '—' : bytes(d.size),
    d.kind ? el('div', { class: 'hint' }, d.kind) : null);
}

/** Digest and size that cost a request (one that may go upstream): asked for by the user. */
function lazyDetails(mod, ctx, name, version, digestCell) {
  const cell = el('td', { class: 'num size' });
  const button = el('button', { type: 'button', 'aria-label': `Show digest and size of ${name}:${version}`, onclick: async () => {
    button.disabled = true;
    try {
      const d = await mod.describe(ctx, name, version, true);
      digestCell.textContent = d.digest || '';
      const filled = sizeCell(d);
      cell.replaceWith(filled);
      digestCell.tabIndex = -1;
      digestCell.focus();
    } catch (e) { button.disabled = false; fail(e); }
  } }, 'Details');
  cell.append(button);
  return cell;
}

async function copyText(input) {
  input.select();
  try { await navigator.clipboard.writeText(input.value); say('Pull command copied.'); } catch { say('Press Ctrl+C to copy the selected command.'); }
}

// ---- signing in ----

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const user = $('login-user').value;
  const password = $('login-password').value;
  // Basic needs Latin-1 for btoa; UTF-8 bytes first.
  const basic = btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`)));
  try {
    const created = await api('/api/tokens', {
      method: 'POST', headers: { Authorization: `Basic ${basic}` },
      json: { name: 'web page', expires_in_seconds: 8 * 3600 },
    });
    session.set({ token: created.token, id: created.id });
    $('login-password').value = '';
    await refresh();
    say(`Signed in as ${me?.name ?? user}.`);
  } catch (e) {
    fail(e.status === 401 ? 'Wrong user name or password.' : e);
  }
});

$('logout').addEventListener('click', async () => {
  const s = session.get();
  if (s?.id) await api(`/api/tokens/${encodeURIComponent(s.id)}`, { method: 'DELETE' }).catch(() => {});
  session.set(null);
  await refresh();
  say('Signed out.');
  $('login-user').focus();
});

// ---- administration ----

function showKindFields() {
  const type = $('repo-type').value;
  for (const p of document.querySelectorAll('.for-remote')) p.hidden = type !== 'remote';
  for (const p of document.querySelectorAll('.for-virtual')) p.hidden = type !== 'virtual';
}
$('repo-type').addEventListener('change', showKindFields);

function resetForm() {
  editing = null;
  $('repo-form').reset();
  $('repo-name').readOnly = false;
  $('repo-form-legend').textContent = 'Create a repository';
  $('repo-submit').textContent = 'Create';
  $('repo-cancel').hidden = true;
  showKindFields();
}
$('repo-cancel').addEventListener('click', resetForm);

async function edit(name) {
  try {
    const repo = await api(`/api/repositories/${encodeURIComponent(name)}`);
    editing = repo;
    $('repo-name').value = repo.name;
    $('repo-name').readOnly = true;
    $('repo-type').value = repo.type;
    if (!formats.includes(repo.format)) $('repo-format').append(el('option', { value: repo.format }, repo.format));
    $('repo-format').value = repo.format;
    $('repo-url').value = repo.url || '';
    $('repo-members').value = (repo.members || []).join(', ');
    $('repo-delete').checked = Boolean(repo.delete_enabled);
    $('repo-form-legend').textContent = `Edit repository ${repo.name}`;
    $('repo-submit').textContent = 'Save';
    $('repo-cancel').hidden = false;
    showKindFields();
    $('repo-url').closest('section').scrollIntoView();
    $('repo-type').focus();
  } catch (e) { fail(e); }
}

async function remove(name) {
  if (!confirm(`Delete repository ${name}? Its tags and metadata go; blobs go at the next garbage collection.`)) return;
  try {
    await api(`/api/repositories/${encodeURIComponent(name)}`, { method: 'DELETE' });
    say(`Repository ${name} deleted.`);
    if (editing?.name === name) resetForm();
    await loadRepositories();
  } catch (e) { fail(e); }
}

$('repo-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const type = $('repo-type').value;
  // An edit keeps what the form does not show (port, host names, access); the server never
  // shows an upstream password, so a PUT without one would drop it.
  const body = editing ? { ...editing } : {};
  delete body.has_credentials; delete body.access_default;
  if (editing?.access_default) delete body.access;
  Object.assign(body, { name: $('repo-name').value.trim(), type, format: $('repo-format').value, delete_enabled: $('repo-delete').checked });
  if (type === 'remote') body.url = $('repo-url').value.trim(); else delete body.url;
  if (type === 'virtual') body.members = $('repo-members').value.split(',').map((m) => m.trim()).filter(Boolean); else delete body.members;
  if (type !== 'local') delete body.cleanup; // cleanup rules are for local repositories only
  if (editing?.has_credentials) { fail('This remote has upstream credentials, which this page cannot show or keep: change it through the API.'); return; }
  try {
    if (editing) await api(`/api/repositories/${encodeURIComponent(body.name)}`, { method: 'PUT', json: body });
    else await api('/api/repositories', { method: 'POST', json: body });
    say(`Repository ${body.name} ${editing ? 'saved' : 'created'}.`);
    resetForm();
    await loadRepositories();
  } catch (e) { fail(e); }
});

// A collection runs in the background: start it (or follow the one running) and show its progress.
$('gc').addEventListener('click', async () => {
  const out = $('gc-result');
  out.textContent = 'Collecting…';
  try {
    let run;
    try { run = await api('/api/gc', { method: 'POST' }); } catch (e) {
      if (e.status !== 409) throw e;
      run = await api('/api/gc');
    }
    const id = run.id;
    while (run.state === 'running') {
      out.textContent = `Collecting: ${run.phase}, ${run.repositories_done}/${run.repositories_total} repositories, ${run.removed} blobs removed…`;
      await new Promise((r) => setTimeout(r, 500));
      run = await api('/api/gc');
      if (run.id !== id) break;
    }
    if (run.state === 'failed') throw new Error(`garbage collection failed: ${run.error}`);
    out.textContent = `Removed ${run.removed} blobs (${bytes(run.removed_bytes)}), kept ${run.kept}`
      + (run.evicted ? `; evicted ${run.evicted} (${bytes(run.evicted_bytes)}) for cache limits` : '')
      + (run.tags_removed || run.manifests_removed
        ? `; cleanup rules removed ${run.tags_removed} tags, ${run.manifests_removed} manifests.` : '.');
    await loadRepositories();
  } catch (e) { out.textContent = ''; fail(e); }
});

async function refresh() {
  await loadMe();
  await Promise.all([loadRepositories(), loadPlugins()]);
  document.body.dataset.ready = 'true';
}

showKindFields();
refresh();
