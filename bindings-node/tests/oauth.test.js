'use strict';
// OAuth lifecycle against the local test stack: connect → consent pages →
// completeConnect → accessToken → disconnect, events through the host
// listener, and the failure codes. Each test has its own SQLite file.
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync, rejectsWith } = require('./helpers');
const { needsStack, setup, consent, revoke, connected } = require('./stack');
const { MailboxSpec, AccessToken } = mailsync;

const opts = needsStack();

function param(url, name) {
  return new URL(url, 'http://x').searchParams.get(name);
}

test('connect, consent, completeConnect: connected, event, access token hidden', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await env.sync.createMailbox(MailboxSpec.user('alice@example.test'));
  assert.equal(mailbox.connection.state, 'not_connected');

  const request = await env.sync.connect(mailbox.id);
  assert.equal(request.mailboxId, mailbox.id);
  assert.ok(request.url.startsWith(env.stack.oauth.authorization_endpoint), request.url);
  assert.equal(param(request.url, 'login_hint'), 'alice@example.test');
  assert.equal(param(request.url, 'redirect_uri'), 'http://localhost:8765/_grid/cmds/dlg_gmailoauth.aspx');
  assert.ok(Date.parse(request.expiresAt) > Date.now());
  assert.equal((await env.sync.getMailbox(mailbox.id)).connection.state, 'awaiting_consent');

  const back = await consent(request.url, 'alice@example.test');
  assert.ok(param(back, 'code'));
  const done = await env.sync.completeConnect(back);
  assert.equal(done.id, mailbox.id);
  assert.equal(done.connection.state, 'connected');
  assert.equal(done.connection.account, 'alice@example.test');
  assert.equal((await env.sync.getMailbox(mailbox.id)).connection.state, 'connected');

  const event = await env.events.next('connected', mailbox.id);
  assert.equal(event.email, 'alice@example.test');
  assert.equal(typeof event.message, 'string');
  assert.ok(!Number.isNaN(Date.parse(event.at)));

  const info = await env.sync.tokenInfo(mailbox.id);
  assert.equal(info.account, 'alice@example.test');
  assert.ok(info.scopes.includes('https://mail.google.com/'), info.scopes.join(' '));
  assert.equal(info.hasRefreshToken, true);

  const token = await env.sync.accessToken(mailbox.id);
  assert.ok(token instanceof AccessToken);
  const raw = token.reveal();
  assert.equal(typeof raw, 'string');
  assert.ok(raw.length > 10);
  assert.equal(token.account, 'alice@example.test');
  assert.ok(Date.parse(token.expiresAt) > Date.now());
  for (const text of [String(token), JSON.stringify(token), util.inspect(token), util.inspect({ token }),
    JSON.stringify(info), JSON.stringify(done), util.inspect(done), JSON.stringify(env.events.events)]) {
    assert.ok(!text.includes(raw), `token leaked in ${text}`);
    assert.ok(!text.includes(env.stack.oauth.client_secret), `secret leaked in ${text}`);
  }
  assert.match(String(token), /REDACTED/);
  assert.equal(JSON.parse(JSON.stringify(token)).token, '[REDACTED]');
});

test('denied consent is consent_denied; the state is then used up (state_invalid)', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await env.sync.createMailbox(MailboxSpec.user('alice@example.test'));
  const request = await env.sync.connect(mailbox.id);
  const back = await consent(request.url, 'alice@example.test', '--deny');
  assert.equal(param(back, 'error'), 'access_denied');
  const e = await rejectsWith(env.sync.completeConnect(back), 'consent_denied');
  assert.equal(e.transient, false);
  await rejectsWith(env.sync.completeConnect(back), 'state_invalid');
  const after = await env.sync.getMailbox(mailbox.id);
  assert.equal(after.connection.state, 'not_connected');
  assert.ok(after.alerts.some((a) => a.code === 'consent_denied'));
  assert.equal(await env.sync.tokenInfo(mailbox.id), null);
});

test('tampered state is state_invalid, nothing stored; the genuine callback still works', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await env.sync.createMailbox(MailboxSpec.user('alice@example.test'));
  const request = await env.sync.connect(mailbox.id);
  const back = await consent(request.url, 'alice@example.test');
  const url = new URL(back);
  const state = url.searchParams.get('state');
  url.searchParams.set('state', state.slice(0, -1) + (state.endsWith('A') ? 'B' : 'A'));
  await rejectsWith(env.sync.completeConnect(url.toString()), 'state_invalid');
  await rejectsWith(env.sync.completeConnect('?code=abc'), 'state_invalid');
  assert.equal(await env.sync.tokenInfo(mailbox.id), null);
  // Only the query is enough.
  const done = await env.sync.completeConnect(new URL(back).search);
  assert.equal(done.connection.state, 'connected');
});

test('revoked grant, then disconnect: disconnected event, accessToken is not_connected', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'carol@example.test');
  const token = await env.sync.accessToken(mailbox.id);
  await revoke(token.reveal());
  const after = await env.sync.disconnect(mailbox.id);
  assert.equal(after.connection.state, 'not_connected');
  const event = await env.events.next('disconnected', mailbox.id);
  assert.equal(event.email, 'carol@example.test');
  assert.equal(await env.sync.tokenInfo(mailbox.id), null);
  const e = await rejectsWith(env.sync.accessToken(mailbox.id), 'not_connected');
  assert.equal(e.nextAction, mailsync.nextAction('not_connected'));
  // Idempotent.
  assert.equal((await env.sync.disconnect(mailbox.id)).connection.state, 'not_connected');
});

test('disconnect a connected mailbox: not_connected, event, token gone', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'alice@example.test');
  assert.equal(mailbox.connection.state, 'connected');
  const after = await env.sync.disconnect(mailbox.id);
  assert.equal(after.connection.state, 'not_connected');
  const kinds = [];
  await env.events.next('disconnected', mailbox.id);
  for (const e of env.events.events) kinds.push(e.kind);
  assert.deepEqual(kinds, ['connected', 'disconnected']);
  await rejectsWith(env.sync.accessToken(mailbox.id), 'not_connected');
});

test('refreshAccessToken: replaces a rejected token once (single-flight), refreshed event, then token_revoked', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'alice@example.test');
  const t1 = await env.sync.accessToken(mailbox.id);
  const v1 = (await env.sync.tokenInfo(mailbox.id)).version;

  const t2 = await env.sync.refreshAccessToken(mailbox.id, t1);
  assert.ok(t2 instanceof AccessToken);
  assert.notEqual(t2.reveal(), t1.reveal());
  assert.equal(t2.account, 'alice@example.test');
  assert.ok(Date.parse(t2.expiresAt) > Date.now());
  const event = await env.events.next('refreshed', mailbox.id);
  assert.equal(event.email, 'alice@example.test');
  assert.ok(!JSON.stringify(event).includes(t2.reveal()));
  const v2 = (await env.sync.tokenInfo(mailbox.id)).version;
  assert.ok(v2 > v1, `version ${v1} -> ${v2}`);

  // t1 was already replaced: the stored t2, no second provider request.
  const again = await env.sync.refreshAccessToken(mailbox.id, t1);
  assert.equal(again.reveal(), t2.reveal());
  assert.equal((await env.sync.tokenInfo(mailbox.id)).version, v2);
  assert.equal((await env.sync.accessToken(mailbox.id)).reveal(), t2.reveal());

  // Concurrent callers reporting the same rejected token share one refresh.
  const [a, b, c] = await Promise.all([0, 1, 2].map(() => env.sync.refreshAccessToken(mailbox.id, t2)));
  assert.notEqual(a.reveal(), t2.reveal());
  assert.equal(b.reveal(), a.reveal());
  assert.equal(c.reveal(), a.reveal());
  const v3 = (await env.sync.tokenInfo(mailbox.id)).version;
  assert.ok(v3 > v2);
  assert.equal((await env.sync.refreshAccessToken(mailbox.id, t2)).reveal(), a.reveal());
  assert.equal((await env.sync.tokenInfo(mailbox.id)).version, v3);

  // Garbage and unknown ids, with a real token in hand; the wrong kind of `rejected`.
  await rejectsWith(env.sync.refreshAccessToken('garbage', t1), 'validation', 'id');
  await rejectsWith(env.sync.refreshAccessToken('', t1), 'validation', 'id');
  await rejectsWith(env.sync.refreshAccessToken('00000000-0000-4000-8000-000000000000', t1), 'not_found');
  assert.throws(() => env.sync.refreshAccessToken(mailbox.id, { token: t1.reveal() }), (e) => !(e instanceof mailsync.MailsyncError));
  assert.throws(() => env.sync.refreshAccessToken(mailbox.id, t1.reveal()), (e) => !(e instanceof mailsync.MailsyncError));
  const other = await env.sync.createMailbox(MailboxSpec.user('bob@example.test'));
  await rejectsWith(env.sync.refreshAccessToken(other.id, t1), 'not_connected');

  // A revoked grant surfaces as token_revoked; the mailbox needs re-consent.
  await revoke(a.reveal());
  await rejectsWith(env.sync.refreshAccessToken(mailbox.id, a), 'token_revoked');
  await env.events.next('needs_reconsent', mailbox.id);
  assert.equal((await env.sync.getMailbox(mailbox.id)).connection.state, 'needs_reconsent');
  await env.sync.close();
});
