// examples/node against the local stack: the service runs as its own process (node server.js)
// with WEBHOOK_URL pointing at a receiver in this test.
//
//   1. consent denied: the callback page shows consent_denied; the webhook gets consent_failed;
//   2. consent allowed: connected, Test & Enable runs at the callback: the webhook gets
//      `connected` and `direction_enabled` for both directions, as JSON;
//   3. mail delivered to the account is synced by the engine inside the service;
//   4. the grant revoked at the provider: the next sync fails and the webhook gets
//      `needs_reconsent` (code token_revoked);
//   5. an account with IMAP disabled: the webhook gets `direction_disabled` (protocol_disabled).
//
// Account: $NODE_EXAMPLE_ACCOUNT (default sync17@example.test; step 4 revokes its grants for the
// stack's web client, so no other suite should be using that account at the same time).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '../../..');
const stackJson = path.join(process.env.MAILSYNC_STACK_DIR || path.join(root, 'tests/stack/run'), 'stack.json');
const stack = JSON.parse(fs.readFileSync(stackJson, 'utf8'));
const account = process.env.NODE_EXAMPLE_ACCOUNT || 'sync17@example.test';
const password = (email) => stack.accounts.find((a) => a.email === email).password;
const bin = (name) => path.join(root, 'tests/stack/bin', name);

let service, serviceUrl, receiver, dataDir, logFile;
const received = []; // webhook bodies, in arrival order

async function waitFor(what, fn, ms = 30_000, every = 100) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

const event = (kind, mailboxId, extra = () => true) => waitFor(`webhook event ${kind}`,
  () => received.find((e) => e.event === kind && e.mailboxId === mailboxId && extra(e)));

/** What a browser does: the consent pages (tests/stack/bin/consent), then the redirect to the service. */
async function consent(connectUrl, email, deny) {
  const r = await fetch(connectUrl, { redirect: 'manual' });
  assert.equal(r.status, 303);
  const args = [r.headers.get('location'), '--email', email, '--password', password(email)];
  if (deny) args.push('--deny');
  const callback = execFileSync(bin('consent'), args, { encoding: 'utf8' }).trim().split('\n').pop();
  assert.ok(callback.startsWith(`${serviceUrl}/_grid/cmds/dlg_gmailoauth.aspx?`), callback);
  const page = await fetch(callback);
  return { status: page.status, html: await page.text() };
}

async function api(method, p, body) {
  const r = await fetch(serviceUrl + p, {
    method, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  return { status: r.status, body: await r.json() };
}

before(async () => {
  const out = process.env.EXAMPLES_TEST_OUT || fs.mkdtempSync(path.join(os.tmpdir(), 'node-example-out-'));
  fs.mkdirSync(out, { recursive: true });
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      assert.equal(req.headers['content-type'], 'application/json');
      received.push(JSON.parse(body));
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-example-'));
  logFile = path.join(out, 'service.log');
  const log = fs.openSync(logFile, 'w');
  service = spawn(process.execPath, [path.join(__dirname, '..', 'server.js')], {
    env: {
      ...process.env, PORT: '0', DATA_DIR: dataDir, MAILSYNC_STACK: stackJson,
      WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/hooks/mailsync`,
      POSTPONE_SECS: '1', MAX_IDLE_SECS: '1', MIN_POLLING_MINUTES: '0',
    },
    stdio: ['ignore', 'pipe', log],
  });
  service.on('exit', (code, signal) => { service.exited = { code, signal }; });
  let stdout = '';
  service.stdout.on('data', (c) => { stdout += c; fs.appendFileSync(logFile, c); });
  serviceUrl = await waitFor('the service to listen', () => {
    if (service.exited) throw new Error(`server.js exited ${JSON.stringify(service.exited)}; see ${logFile}`);
    return stdout.match(/listening on (\S+)/)?.[1];
  });
});

after(async () => {
  if (service && !service.exited) {
    service.kill('SIGTERM');
    await waitFor('the service to stop', () => service.exited, 15_000).catch(() => service.kill('SIGKILL'));
  }
  receiver?.close();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

let mailbox;

test('consent denied: consent_denied on the page and consent_failed at the webhook', async () => {
  const since = new Date(Date.now() - 2000).toISOString();
  const created = await api('POST', '/mailboxes', { email: account, since, incomingFilter: 'all' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  mailbox = created.body;
  const page = await consent(mailbox.connectUrl, account, true);
  assert.equal(page.status, 400);
  assert.match(page.html, /<p id="code">consent_denied<\/p>/);
  assert.match(page.html, /Next: /);
  const e = await event('consent_failed', mailbox.id);
  assert.equal(e.code, 'consent_denied');
  assert.equal(e.email, account);
  assert.ok(e.nextAction);
});

test('consent allowed: connected and both directions enabled, forwarded as JSON', async () => {
  const page = await consent(mailbox.connectUrl, account, false);
  assert.equal(page.status, 200, page.html);
  assert.match(page.html, /<p id="outcome">success<\/p>/);
  const connected = await event('connected', mailbox.id);
  assert.equal(connected.email, account);
  assert.ok(!Number.isNaN(Date.parse(connected.at)), connected.at);
  // One event when Test & Enable enables both directions at once (direction unset), else one each.
  await event('direction_enabled', mailbox.id, (e) => e.direction !== 'outgoing');
  const status = await api('GET', `/mailboxes/${mailbox.id}`);
  assert.equal(status.body.incoming.status, 'enabled');
  assert.equal(status.body.outgoing.status, 'enabled');
  // In order: connected before enabled.
  const kinds = received.filter((e) => e.mailboxId === mailbox.id).map((e) => e.event);
  assert.ok(kinds.indexOf('connected') < kinds.indexOf('direction_enabled'), kinds.join());
  // No secret reaches the webhook.
  assert.ok(!JSON.stringify(received).includes(stack.oauth.client_secret));
});

test('mail delivered to the account is synced by the engine in the service', async () => {
  const prefix = `node-example-${Date.now().toString(36)}`;
  const ids = execFileSync(bin('deliver'), [account, '--count', '2', '--subject-prefix', prefix], { encoding: 'utf8' })
    .trim().split('\n').map((i) => i.replace(/^<|>$/g, ''));
  const mine = await waitFor('the delivered mail in the service', async () => {
    const { body } = await api('GET', `/mailboxes/${mailbox.id}/messages`);
    const m = body.filter((x) => x.subject?.startsWith(prefix));
    return m.length === 2 && m;
  });
  assert.deepEqual(mine.map((m) => m.messageId).sort(), ids.sort());
});

test('the grant revoked at the provider: needs_reconsent at the webhook', async () => {
  // A token of another consent by the same account and client; revoking it revokes every grant of
  // the account for that client (like Google), the service's too.
  const token = JSON.parse(execFileSync(bin('token'), [account], { encoding: 'utf8' }));
  execFileSync(bin('revoke'), ['--', token.refresh_token]);
  const sync = await api('POST', `/mailboxes/${mailbox.id}/sync`);
  assert.equal(sync.status, 200, JSON.stringify(sync.body));
  const e = await event('needs_reconsent', mailbox.id);
  assert.equal(e.code, 'token_revoked');
  assert.ok(e.nextAction);
  const status = await api('GET', `/mailboxes/${mailbox.id}`);
  assert.equal(status.body.grant.status, 'needs_reconsent');
});

test('IMAP disabled for the account: direction_disabled at the webhook', async () => {
  const dave = (await api('POST', '/mailboxes', { email: 'dave@example.test' })).body;
  const page = await consent(dave.connectUrl, 'dave@example.test', false);
  assert.equal(page.status, 200);
  assert.match(page.html, /<span id="code">protocol_disabled<\/span>/);
  const e = await event('direction_disabled', dave.id);
  assert.equal(e.direction, 'incoming');
  assert.equal(e.code, 'protocol_disabled');
});
