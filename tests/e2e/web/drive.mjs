// Drives binaryrepo's web page in headless Chromium and prints what a user saw, as JSON, for
// tests/e2e/test_30_web.py to check.
//
//   node drive.mjs '{"url": "http://127.0.0.1:PORT", "repo": "...", "image": "...", "tag": "...", "admin": ["user", "pw"],
//                    "create": "name", "screenshots": "/tmp/dir"}'
import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const out = { console: [], pageErrors: [], failedRequests: [], screenshots: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // root in a container: Chromium's sandbox needs user namespaces it may not get
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});

async function shot(page, name) {
  const path = `${args.screenshots}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  out.screenshots.push(path);
}

async function repositories(page) {
  return page.$$eval('#repos tbody tr[data-repository]', (rows) => rows.map((tr) => ({
    name: tr.dataset.repository,
    cells: [...tr.cells].map((c) => c.textContent.trim()),
    saved: tr.querySelector('.saved')?.dataset.bytes ?? null,
  })));
}

async function visibleAdminControls(page) {
  return page.$$eval('.admin-only, #repo-form, #gc', (nodes) => nodes.filter((n) => n.checkVisibility()).map((n) => n.id || n.className || n.tagName));
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') out.console.push(m.text()); });
  page.on('pageerror', (e) => out.pageErrors.push(String(e)));
  page.on('response', (r) => { if (r.status() >= 400) out.failedRequests.push(`${r.status()} ${r.request().method()} ${r.url()}`); });

  // Anonymous: the page loads, lists the repository and what its cache saved.
  const resp = await page.goto(`${args.url}/`);
  out.finalUrl = page.url();
  out.status = resp.status();
  await page.waitForSelector('body[data-ready="true"]');
  out.title = await page.title();
  out.anonymous = { repositories: await repositories(page), adminControls: await visibleAdminControls(page) };
  out.anonymous.plugins = (await page.textContent('#plugins')).trim();

  // Browse with the keyboard only: focus the repository's button, Enter; then open the image.
  await page.focus(`#repos tr[data-repository="${args.repo}"] button`);
  await page.keyboard.press('Enter');
  const item = page.locator(`#browse details[data-item="${args.image}"]`);
  await item.waitFor();
  await item.locator('summary').focus();
  await page.keyboard.press('Enter');
  await item.locator('tbody tr[data-version]').first().waitFor();
  // A remote's tag details wait for the user (they may cost an upstream pull): ask with the keyboard.
  out.anonymous.digestsBeforeAsking = await item.locator('td.digest').evaluateAll((tds) => tds.map((td) => td.textContent));
  const sizeButton = item.locator(`tr[data-version="${args.tag}"] button`, { hasText: 'Details' });
  if (await sizeButton.count()) {
    await sizeButton.focus();
    await page.keyboard.press('Enter');
    await item.locator(`tr[data-version="${args.tag}"] td.size[data-bytes]`).waitFor();
  }
  out.anonymous.items = await page.$$eval('#browse details', (ds) => ds.map((d) => d.dataset.item));
  out.anonymous.versions = await item.locator('tbody tr[data-version]').evaluateAll((rows) => rows.map((tr) => ({
    version: tr.dataset.version,
    digest: tr.querySelector('.digest').textContent.trim(),
    size: tr.querySelector('[data-bytes]')?.dataset.bytes ?? null,
    pull: tr.querySelector('input.pull').value,
  })));
  await shot(page, 'anonymous');

  // An admin signs in and creates a repository through the form.
  await page.getByLabel('User').fill(args.admin[0]);
  await page.getByLabel('Password').fill(args.admin[1]);
  await page.getByLabel('Password').press('Enter');
  await page.waitForSelector('#whoami:not([hidden])');
  await page.waitForSelector('body.admin');
  out.admin = { whoami: (await page.textContent('#whoami')).replace(/\s+/g, ' ').trim(), loginVisible: await page.isVisible('#login') };
  out.admin.plugins = await page.$$eval('#plugins tbody tr', (rows) => rows.map((tr) => [...tr.cells].map((c) => c.textContent.trim())));
  await page.getByLabel('Name', { exact: true }).fill(args.create);
  await page.getByLabel('Type').selectOption('local');
  await page.getByRole('button', { name: 'Create' }).press('Enter');
  await page.waitForSelector(`#repos tr[data-repository="${args.create}"]`);
  out.admin.status = (await page.textContent('#status')).trim();
  out.admin.repositories = await repositories(page);
  out.admin.adminControls = await visibleAdminControls(page);
  await shot(page, 'admin');

  // Signing out revokes the page's token and hides the admin controls again.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForSelector('#login:not([hidden])');
  out.signedOut = { adminControls: await visibleAdminControls(page), loginVisible: await page.isVisible('#login') };
} catch (e) {
  out.failure = String(e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
