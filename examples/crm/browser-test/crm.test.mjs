// The CRM in a real browser: Debian's chromium driven by playwright-core (no browser download),
// headless, against the app (scripts/crm) and the local stack's real consent pages.
//
//   1. the admin enters the OAuth client and the audience, and creates a Gmail profile;
//   2. the user creates a mailbox, connects, and denies consent: consent_denied with its next action;
//   3. the user connects again and allows: back at /_grid/cmds/dlg_gmailoauth.aspx, connected;
//   4. Test & Enable: the per-step report, both directions enabled;
//   5. a message delivered to the mailbox (tests/stack/bin/deliver) appears on the mailbox page,
//      synced by the engine running inside the app (polled with a deadline);
//   6. the user composes a message to another stack account: it is queued in the CRM's outbox,
//      the engine inside the app sends it through the stack's Postfix, the outbox row shows
//      `sent` with its Message-ID and the server's 250 (polled with a deadline), and the
//      recipient's INBOX holds it (tests/stack/bin/doveadm, polled with a deadline).
//
// Environment: CRM_TEST_OUT (screenshots; default <target>/crm-browser-test), CRM_TEST_ACCOUNT
// (default sync18@example.test), CRM_TEST_RECIPIENT (step 6; default dave@example.test),
// CHROMIUM (default /usr/bin/chromium), MAILSYNC_STACK_DIR (the stack's state dir; default
// tests/stack/run). Run by scripts/examples-test.
import { test as nodeTest, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const out = process.env.CRM_TEST_OUT || path.join(target, 'crm-browser-test');
const account = process.env.CRM_TEST_ACCOUNT || 'sync18@example.test';
const recipient = process.env.CRM_TEST_RECIPIENT || 'dave@example.test';
const stackDir = process.env.MAILSYNC_STACK_DIR || path.join(root, 'tests/stack/run');
const stack = JSON.parse(fs.readFileSync(path.join(stackDir, 'stack.json'), 'utf8'));
const password = stack.accounts.find((a) => a.email === account).password;
const CALLBACK = '/_grid/cmds/dlg_gmailoauth.aspx';

let crm, crmLog, baseUrl, browser, page, dataDir, shot = 0;

async function waitFor(what, fn, ms = 60_000, every = 250) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

async function screenshot(name) {
  shot += 1;
  const file = path.join(out, `${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Clicks a button that submits a form, and waits for the page it leads to. */
async function submit(selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(selector)]);
}

/** The flash banner of the current page (notice or error), as text. */
async function banner() {
  const b = page.locator('main > .notice, main > .error');
  return (await b.count()) ? (await b.allInnerTexts()).join('\n') : '';
}

before(async () => {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'crm-browser-'));
  const urlFile = path.join(dataDir, 'url');
  // Port 0: a free port (the stack accepts any loopback redirect port). The engine postpones a
  // mailbox 2 s after a cycle and looks for due mailboxes at least every 2 s.
  crmLog = fs.openSync(path.join(out, 'crm.log'), 'w');
  crm = spawn(path.join(root, 'scripts/crm'),
    ['--no-build', '--port', '0', '--data', path.join(dataDir, 'data'), '--url-file', urlFile,
      '--postpone-secs', '2', '--max-idle-secs', '2'],
    { stdio: ['ignore', crmLog, crmLog], env: { ...process.env, RUST_LOG: 'warn,mailsync=info,mailsync_crm=debug' } });
  crm.on('exit', (code, signal) => { crm.exited = { code, signal }; });
  baseUrl = (await waitFor('the CRM to print its URL', () => {
    if (crm.exited) throw new Error(`scripts/crm exited ${JSON.stringify(crm.exited)}; see ${out}/crm.log`);
    return fs.existsSync(urlFile) && fs.readFileSync(urlFile, 'utf8');
  }, 60_000)).replace(/\/$/, '');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // root on CI: chromium's sandbox needs a user namespace it does not get there.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await browser?.close();
  if (crm && !crm.exited) {
    crm.kill('SIGTERM');
    await waitFor('the CRM to stop', () => crm.exited, 15_000).catch(() => crm.kill('SIGKILL'));
  }
  if (crmLog !== undefined) fs.closeSync(crmLog);
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

let mailboxUrl;
let broken = null; // the first step that failed: the later ones depend on it and are skipped

function test(name, fn) {
  nodeTest(name, async (t) => {
    if (broken) return t.skip(`after the failure of "${broken}"`);
    try {
      await fn(t);
    } catch (e) {
      broken = name;
      await screenshot('FAILED').catch(() => {});
      throw e;
    }
  });
}

test('1. the admin enters the OAuth client and audience and creates a Gmail profile', async () => {
  await page.goto(`${baseUrl}/admin`);
  // The session cookie: HttpOnly and SameSite.
  const cookie = (await page.context().cookies()).find((c) => c.name === 'crm_session');
  assert.ok(cookie, 'session cookie set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Lax');

  await page.fill('#client_id', stack.oauth.client_id);
  await page.fill('#client_secret', stack.oauth.client_secret);
  assert.equal(await page.inputValue('#environment_url'), baseUrl);
  await submit('#save-client');
  assert.match(await banner(), /OAuth client saved/);
  assert.equal(await page.textContent('#derived-redirect'), `${baseUrl}${CALLBACK}`);
  assert.equal(await page.textContent('#derived-origin'), baseUrl);
  // The secret is write-only: never sent back to the browser.
  assert.ok(!(await page.content()).includes(stack.oauth.client_secret));

  await page.check('#ut-external');
  await page.check('#ps-testing');
  await page.fill('#test_users', account);
  await submit('#save-audience');
  assert.match(await banner(), /Audience saved/);

  await page.fill('#name', 'Gmail - browser test');
  await page.fill('#min_polling', '0'); // so the engine picks new mail up within seconds
  await submit('#create-profile');
  assert.match(await banner(), /Profile Gmail - browser test created/);
  const row = page.locator('#profiles tr', { hasText: 'Gmail - browser test' });
  assert.match(await row.innerText(), /0 of 100/);
  assert.match(await row.innerText(), /default/);
  await screenshot('admin');
});

test('2. the user connects and denies consent: consent_denied with its next action', async () => {
  await page.goto(`${baseUrl}/`);
  await page.fill('#email', account);
  // Dynamics' default tracks only replies to CRM email; this test wants every new message.
  await page.selectOption('#filter', 'all');
  await submit('#create-mailbox');
  assert.match(await banner(), /Next: Connect to Gmail/);
  mailboxUrl = page.url();
  assert.match(mailboxUrl, /\/mailboxes\/[^/]+$/);
  assert.equal(await page.textContent('#grant-status'), 'not_connected');
  await screenshot('mailbox-new');

  await page.click('#connect');
  // The stack's real login and consent pages (they play accounts.google.com).
  await page.waitForSelector('form#login');
  assert.ok(page.url().startsWith(stack.oauth.issuer), `at the provider: ${page.url()}`);
  assert.equal(await page.inputValue('form#login input[name=email]'), account, 'login_hint');
  await page.fill('form#login input[name=password]', password);
  await page.click('#signin');
  await page.waitForSelector('form#consent');
  await screenshot('consent-page');
  await page.click('#deny');
  await page.waitForURL((u) => u.pathname === CALLBACK);
  assert.ok(page.url().startsWith(`${baseUrl}${CALLBACK}?`), page.url());
  assert.equal(await page.textContent('#error-code'), 'consent_denied');
  const next = (await page.textContent('#next-action')).trim();
  assert.ok(next.length > 10, `a next action: ${next}`);
  await screenshot('consent-denied');
  await page.click('#back');
  assert.equal(page.url(), mailboxUrl);
  assert.equal(await page.textContent('#grant-status'), 'not_connected');
});

test('3. the user connects again and allows: back at the callback, connected', async () => {
  await page.click('#connect');
  // The provider remembers the login of step 2 in its own session, or asks again.
  await page.waitForSelector('form#consent, form#login');
  if (await page.locator('form#login').count()) {
    await page.fill('form#login input[name=password]', password);
    await page.click('#signin');
    await page.waitForSelector('form#consent');
  }
  await page.click('#allow');
  await page.waitForURL((u) => u.pathname === CALLBACK);
  assert.match(await page.textContent('#connected'), new RegExp(`connected to Gmail as ${account.replace('.', '\\.')}`));
  await screenshot('connected');
  await page.click('#back');
  assert.equal(page.url(), mailboxUrl);
  assert.equal(await page.textContent('#grant-status'), 'connected');
});

test('4. Test & Enable: the per-step report, both directions enabled', async () => {
  await submit('#test-and-enable');
  await page.waitForSelector('#report');
  assert.equal(await page.textContent('#report-outcome'), 'success');
  const steps = await page.locator('#report table.steps td.mono').allInnerTexts();
  for (const step of ['credentials', 'connect', 'tls', 'authenticate', 'select_inbox', 'ehlo']) {
    assert.ok(steps.includes(step), `step ${step} in the report: ${steps}`);
  }
  assert.match(await page.locator('#status-incoming').innerText(), /enabled/);
  assert.match(await page.locator('#status-outgoing').innerText(), /enabled/);
  await screenshot('test-and-enable');
});

test('5. a message delivered to the mailbox appears on the page', async () => {
  const subject = `Browser test ${Date.now().toString(36)}`;
  const ids = execFileSync(path.join(root, 'tests/stack/bin/deliver'),
    [account, '--count', '1', '--subject-prefix', subject, '--from', 'Dana Customer <dana@customer.example>'],
    { encoding: 'utf8' }).trim().split('\n');
  const messageId = ids[0].replace(/^<|>$/g, '');
  // The engine inside the app syncs it; reload the page until it shows (no fixed sleep).
  const row = page.locator('#messages tr.message', { hasText: subject });
  await waitFor(`"${subject}" on the mailbox page`, async () => {
    await page.goto(mailboxUrl);
    return (await row.count()) > 0;
  }, 60_000, 1000);
  const text = await row.innerText();
  assert.match(text, /dana@customer\.example/);
  assert.ok(text.includes(`Message-ID: <${messageId}>`), `correlation key Message-ID in: ${text}`);
  assert.match(text, /key: \S+/);
  await row.scrollIntoViewIfNeeded();
  await screenshot('mailbox-synced');
});

test('6. the user composes a message: queued in the outbox, sent by the engine, received', async () => {
  await page.goto(mailboxUrl);
  const subject = `CRM compose ${Date.now().toString(36)}`;
  await page.fill('#compose-to', recipient);
  await page.fill('#compose-subject', subject);
  await page.fill('#compose-body', 'Hello from the CRM.\nThis went out through the outbox.');
  await submit('#compose-send');
  assert.match(await banner(), new RegExp(`Queued: from ${account.replace('.', '\\.')} to ${recipient.replace('.', '\\.')}`));
  const row = page.locator('#outbox tr.outgoing', { hasText: subject });
  assert.equal(await row.count(), 1, 'the message is in the outbox');
  const state = () => row.locator('.state').innerText();
  assert.ok(['queued', 'pending', 'sending', 'sent'].includes(await state()), await state());
  await screenshot('outbox-queued');

  // The engine inside the app sends it in the mailbox's next cycle; reload until it says so.
  await waitFor(`"${subject}" sent`, async () => {
    await page.goto(mailboxUrl);
    const now = await state();
    if (now === 'failed') throw new Error(`the message failed: ${await row.innerText()}`);
    return now === 'sent';
  }, 60_000, 1000);
  const messageId = (await row.locator('.message-id').innerText()).trim();
  assert.match(messageId, /^<[^<>@\s]+@[^<>@\s]+>$/, 'a Message-ID');
  assert.match(await row.locator('.last-error').innerText(), /250/, "the server's 250");
  assert.match(await page.locator('#status-outgoing').innerText(), /1 sent, 0 failed/);
  await row.scrollIntoViewIfNeeded();
  const file = await screenshot('outbox-sent');
  fs.copyFileSync(file, path.join(out, 'crm-mailbox.png'));

  // The recipient got it: Postfix delivered it into their INBOX (read with doveadm, as root).
  const doveadm = path.join(root, 'tests/stack/bin/doveadm');
  const headers = await waitFor(`${messageId} in ${recipient}'s INBOX`, () => execFileSync(doveadm,
    ['fetch', '-u', recipient, 'hdr.subject hdr.from', 'mailbox', 'INBOX', 'header', 'Message-ID', messageId.slice(1, -1)],
    { encoding: 'utf8' }).trim(), 30_000, 500);
  assert.ok(headers.includes(`hdr.subject: ${subject}`), headers);
  assert.ok(headers.includes(account), `From is the mailbox: ${headers}`);
});
