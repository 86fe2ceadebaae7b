// Browsing a Helm chart repository through its ChartMuseum API (`/api/charts`, JSON), which a
// local repository serves. Remote and virtual repositories publish only `index.yaml`, which is
// read by helm itself (`helm search repo`), not by this page.

export const labels = { item: 'chart', items: 'charts', version: 'Version', versions: 'versions' };

const MAX_VERSIONS = 20;

async function json(ctx, url) {
  const resp = await ctx.request(`${ctx.base}${url}`, {});
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).error || message; } catch { /* not JSON */ }
    throw new Error(`${url}: ${message}`);
  }
  return resp.json();
}

export async function items(ctx) {
  if (ctx.type !== 'local') {
    throw new Error(`a ${ctx.type} Helm repository is browsed with helm: helm repo add ${ctx.repo} ${location.protocol}//${ctx.host}${ctx.base} && helm search repo ${ctx.repo}/`);
  }
  return Object.keys(await json(ctx, '/api/charts')).sort();
}

export async function versions(ctx, name) {
  const list = await json(ctx, `/api/charts/${encodeURIComponent(name)}`);
  ctx.charts = ctx.charts || {};
  for (const v of list) ctx.charts[`${name}@${v.version}`] = v;
  return { versions: list.slice(0, MAX_VERSIONS).map((v) => v.version), more: list.length > MAX_VERSIONS };
}

export async function describe(ctx, name, version) {
  const v = (ctx.charts || {})[`${name}@${version}`] || await json(ctx, `/api/charts/${encodeURIComponent(name)}/${encodeURIComponent(version)}`);
  return { digest: v.digest ? `sha256:${v.digest}` : '', kind: v.appVersion ? `app ${v.appVersion}` : (v.description || '') };
}

export function pullCommand(ctx, name, version) {
  return `helm pull --repo ${location.protocol}//${ctx.host}${ctx.base} ${name} --version ${version}`;
}
