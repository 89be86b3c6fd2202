// The admin page in a real browser: headless Chromium (Debian's) driven by playwright-core loads
// /admin/ with the admin's Basic credentials, checks that hosts and numbers render, bans a host and
// takes an account down through the page's buttons, checks both took effect through the API, checks
// that a cross-site-style POST (not JSON) is refused, and keeps a screenshot.
//
// Usage: node admin-page.mjs BASE_URL PASSWORD HOSTNAME DID SCREENSHOT.png
// Prints `ADMIN PAGE OK …`; exits 1 on any failure.
import { chromium } from 'playwright-core';

const [, , base, password, hostname, did, screenshot] = process.argv;
const fail = (msg) => { console.error(`ADMIN PAGE FAILED: ${msg}`); process.exit(1); };
const auth = 'Basic ' + Buffer.from(`admin:${password}`).toString('base64');
const api = async (path) => (await fetch(`${base}${path}`, { headers: { authorization: auth } })).json();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ httpCredentials: { username: 'admin', password }, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const resp = await page.goto(`${base}/admin/`);
  if (resp.status() !== 200) fail(`/admin/ answered ${resp.status()}`);
  await page.waitForSelector('body[data-loaded="1"]', { timeout: 10000 });
  const row = page.locator(`#hosts tr[data-hostname="${hostname}"]`);
  if (await row.count() !== 1) fail(`no row for ${hostname}`);
  const numbers = await page.locator('#head').textContent();
  if (!/^\d+$/.test(numbers.trim())) fail(`the last seq is not shown: ${numbers}`);

  // Ban the host with its row's button.
  await row.getByRole('button', { name: 'ban' }).click();
  await page.waitForFunction((h) => document.querySelector(`#hosts tr[data-hostname="${h}"] td:nth-child(2)`)?.textContent === 'banned', hostname, { timeout: 10000 });
  const hosts = (await api('/admin/pds/list')).hosts;
  if (!hosts.find((h) => h.hostname === hostname)?.banned) fail('the ban did not reach the relay');

  // Take an account down.
  await page.fill('#did', did);
  await page.click('#takedown');
  await page.waitForFunction(() => document.querySelector('#message').textContent.includes('done'), null, { timeout: 10000 });
  let status;
  for (let i = 0; i < 50 && status !== 'takendown'; i++) {
    status = (await (await fetch(`${base}/xrpc/com.atproto.sync.getRepoStatus?did=${encodeURIComponent(did)}`)).json()).status;
    if (status !== 'takendown') await new Promise((r) => setTimeout(r, 100));
  }
  if (status !== 'takendown') fail(`the takedown did not reach the relay: ${status}`);

  // A form-style POST from the page (text/plain) is refused: cached credentials cannot be ridden.
  const csrf = await page.evaluate(async () => (await fetch('/admin/pds/block', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' })).status);
  if (csrf !== 415) fail(`a text/plain POST answered ${csrf}`);
  const headers = resp.headers();
  if (!headers['content-security-policy'] || headers['x-frame-options'] !== 'DENY') fail('security headers missing');
  await page.reload();
  await page.waitForSelector('body[data-loaded="1"]', { timeout: 10000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) fail(`script errors: ${errors.join('; ')}`);
  console.log(`ADMIN PAGE OK banned=${hostname} takendown=${did} screenshot=${screenshot}`);
} finally {
  await browser.close();
}
