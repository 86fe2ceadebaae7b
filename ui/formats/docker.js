// Browsing a Docker / OCI repository through the Registry API, as any client would:
// the catalog, each image's tag list, and each tag's manifest.

export const labels = { item: 'image', items: 'images', version: 'Tag', versions: 'tags' };

const MAX_IMAGES = 200;
// Each tag shown costs a manifest request (for a remote, possibly one upstream): a bounded page.
const MAX_TAGS = 20;

const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** `library/redis` → `library/redis` with each segment escaped (names keep their slashes). */
const path = (name) => name.split('/').map(encodeURIComponent).join('/');

async function json(ctx, url, headers = {}) {
  const resp = await ctx.request(`${ctx.base}${url}`, { headers });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).errors?.[0]?.message || message; } catch { /* not JSON */ }
    throw new Error(`${url}: ${message}`);
  }
  return { resp, body: await resp.json() };
}

export async function items(ctx) {
  const { body } = await json(ctx, `/v2/_catalog?n=${MAX_IMAGES}`);
  return body.repositories || [];
}

export async function versions(ctx, name) {
  const { resp, body } = await json(ctx, `/v2/${path(name)}/tags/list?n=${MAX_TAGS}`);
  const tags = body.tags || [];
  return { versions: tags.slice(0, MAX_TAGS), more: resp.headers.has('Link') || tags.length > MAX_TAGS };
}

/**
 * A tag's digest, size and platforms. A remote lists its upstream's tags too, and asking it about
 * one it does not hold (even a HEAD) fetches that manifest upstream, where registries count a pull:
 * there (unless `full`) nothing is asked until the user does.
 */
export async function describe(ctx, name, tag, full = false) {
  if (ctx.type === 'remote' && !full) return { lazy: true };
  const { resp, body } = await json(ctx, `/v2/${path(name)}/manifests/${encodeURIComponent(tag)}`, { Accept: ACCEPT });
  const digest = resp.headers.get('Docker-Content-Digest') || '';
  if (Array.isArray(body.manifests)) {
    const platforms = body.manifests
      .map((m) => m.platform && `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? `/${m.platform.variant}` : ''}`)
      .filter(Boolean);
    return { digest, kind: `index: ${platforms.join(', ') || `${body.manifests.length} manifests`}` };
  }
  const layers = body.layers || [];
  const size = layers.reduce((sum, l) => sum + (l.size || 0), body.config?.size || 0);
  return { digest, size, kind: `${layers.length} ${layers.length === 1 ? 'layer' : 'layers'}` };
}

export function pullCommand(ctx, name, tag) {
  // The path method: the first segment after /v2/ names the repository, on the main listener.
  return `docker pull ${ctx.host}/${ctx.repo}/${name}:${tag}`;
}
