// Browsing a Go module repository: a local one lists its modules (`/@modules`, JSON), and every
// module its versions through the GOPROXY protocol (`/<module>/@v/list`, `.info`). Remote and
// virtual repositories have no catalog: modules are found with `go list -m -versions`.

export const labels = { item: 'module', items: 'modules', version: 'Version', versions: 'versions' };

const MAX_VERSIONS = 20;

/** GOPROXY escaping: each upper-case letter becomes `!` and its lower-case form. */
const esc = (s) => s.replace(/[A-Z]/g, (c) => `!${c.toLowerCase()}`);
const path = (mod) => esc(mod).split('/').map(encodeURIComponent).join('/');

async function get(ctx, url) {
  const resp = await ctx.request(`${ctx.base}${url}`, {});
  if (!resp.ok) throw new Error(`${url}: ${resp.status} ${(await resp.text()).trim() || resp.statusText}`);
  return resp;
}

export async function items(ctx) {
  if (ctx.type !== 'local') {
    throw new Error(`a ${ctx.type} Go repository has no module list: GOPROXY=${location.protocol}//${ctx.host}${ctx.base} go list -m -versions <module>`);
  }
  return (await (await get(ctx, '/@modules')).json()).modules || [];
}

export async function versions(ctx, name) {
  const list = (await (await get(ctx, `/${path(name)}/@v/list`)).text()).split('\n').filter(Boolean).reverse();
  return { versions: list.slice(0, MAX_VERSIONS), more: list.length > MAX_VERSIONS };
}

export async function describe(ctx, name, version) {
  const info = await (await get(ctx, `/${path(name)}/@v/${encodeURIComponent(esc(version))}.info`)).json();
  return { digest: '', kind: info.Time ? `published ${info.Time}` : '' };
}

export function pullCommand(ctx, name, version) {
  return `GOPROXY=${location.protocol}//${ctx.host}${ctx.base} go get ${name}@${version}`;
}
