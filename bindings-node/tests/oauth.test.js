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
