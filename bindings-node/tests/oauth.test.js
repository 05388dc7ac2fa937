'use strict';
// OAuth lifecycle against the local test stack: connect → consent pages →
// complete → accessToken → disconnect, events through a subscription, and the
// failure codes. Each test has its own SQLite file. The tests that revoke
// (disconnect, a revoked grant, scope_not_granted, account_mismatch) use
// REVOKING's account + client pair, which no other test uses; this file's
// tests run one after the other (see stack.js).
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync, rejectsWith, UNKNOWN_ID } = require('./helpers');
const { needsStack, setup, consent, revoke, connected, REVOKING } = require('./stack');
const { errorNextAction, userMailbox } = mailsync;

const opts = needsStack();
const MAIL_SCOPE = 'https://mail.google.com/';

function param(url, name) {
  return new URL(url, 'http://x').searchParams.get(name);
}

test('connect, consent, complete: connected, event, grant info, access token hidden', opts, async (t) => {
  const env = await setup(t);
  const { directory, connections } = env.sync;
  const mailbox = await directory.createMailbox(userMailbox('alice@example.test'));
  assert.equal((await directory.state(mailbox.id)).grant.status, 'not_connected');

  const request = await connections.connect(mailbox.id);
  assert.equal(request.mailboxId, mailbox.id);
  assert.ok(request.url.startsWith(env.stack.oauth.authorization_endpoint), request.url);
  assert.equal(param(request.url, 'login_hint'), 'alice@example.test');
  assert.equal(param(request.url, 'redirect_uri'), 'http://localhost:8765/_grid/cmds/dlg_gmailoauth.aspx');
  assert.ok(request.expiresAt > new Date());
  assert.ok((await directory.state(mailbox.id)).pendingConsent);

  const back = await consent(request.url, 'alice@example.test');
  assert.ok(param(back, 'code'));
  const done = await connections.complete(back);
  assert.equal(done.mailbox.id, mailbox.id);
  assert.equal(done.state.grant.status, 'connected');
  assert.equal(done.state.grant.account, 'alice@example.test');
  assert.ok(done.state.grant.since instanceof Date);
  assert.equal(done.state.pendingConsent, undefined);
  assert.equal((await directory.state(mailbox.id)).grant.status, 'connected');

  const event = await env.events.next('connected', mailbox.id);
  assert.equal(event.email, 'alice@example.test');
  assert.equal(typeof event.message, 'string');
  assert.ok(event.at instanceof Date);
  assert.equal(event.state.grant.status, 'connected');

  const info = await connections.grantInfo(mailbox.id);
  assert.equal(info.account, 'alice@example.test');
  assert.equal(info.issuer, env.stack.oauth.issuer);
  assert.equal(info.clientId, env.stack.oauth.clients.web.client_id);
  assert.ok(info.scopes.includes(MAIL_SCOPE), info.scopes.join(' '));
  assert.equal(info.hasRefreshToken, true);

  const token = await connections.accessToken(mailbox.id);
  const raw = token.token;
  assert.equal(typeof raw, 'string');
  assert.ok(raw.length > 10);
  assert.equal(token.account, 'alice@example.test');
  assert.ok(token.expiresAt > new Date());
  assert.deepEqual(Object.keys(token).sort(), ['account', 'expiresAt'], 'the token is not enumerable');
  for (const text of [String(token), JSON.stringify(token), util.inspect(token), util.inspect({ token }),
    JSON.stringify(info), JSON.stringify(done), util.inspect(done, { depth: 10 }), JSON.stringify(env.events.events),
    util.inspect(env.events.events, { depth: 10 }), JSON.stringify({ ...token })]) {
    assert.ok(!text.includes(raw), `token leaked in ${text}`);
    assert.ok(!text.includes(env.stack.oauth.clients.web.client_secret), `secret leaked in ${text}`);
  }
});

test('denied consent is consent_denied; the state is then used up (state_invalid)', opts, async (t) => {
  const env = await setup(t);
  const { directory, connections } = env.sync;
  const mailbox = await directory.createMailbox(userMailbox('alice@example.test'));
  const request = await connections.connect(mailbox.id);
  const back = await consent(request.url, 'alice@example.test', '--deny');
  assert.equal(param(back, 'error'), 'access_denied');
  const e = await rejectsWith(connections.complete(back), 'consent_denied');
  assert.equal(e.transient, false);
  await rejectsWith(connections.complete(back), 'state_invalid');
  const status = await directory.status(mailbox.id);
  assert.equal(status.state.grant.status, 'not_connected');
  assert.equal(status.state.pendingConsent, undefined);
  assert.ok(status.alerts.some((a) => a.code === 'consent_denied'));
  assert.equal((await env.events.next('consent_failed', mailbox.id)).code, 'consent_denied');
  assert.equal(await connections.grantInfo(mailbox.id), null);
});

test('tampered state is state_invalid, nothing stored; the genuine callback still works', opts, async (t) => {
  const env = await setup(t);
  const { directory, connections } = env.sync;
  const mailbox = await directory.createMailbox(userMailbox('alice@example.test'));
  const request = await connections.connect(mailbox.id);
  const back = await consent(request.url, 'alice@example.test');
  const url = new URL(back);
  const state = url.searchParams.get('state');
  url.searchParams.set('state', state.slice(0, -1) + (state.endsWith('A') ? 'B' : 'A'));
  await rejectsWith(connections.complete(url.toString()), 'state_invalid');
  await rejectsWith(connections.complete('?code=abc'), 'state_invalid');
  assert.equal(await connections.grantInfo(mailbox.id), null);
  // Only the query is enough.
  const done = await connections.complete(new URL(back).search);
  assert.equal(done.state.grant.status, 'connected');
});

test('refreshAccessToken: replaces a rejected token once (single-flight), refreshed event', opts, async (t) => {
  const env = await setup(t);
  const { directory, connections } = env.sync;
  const { mailbox } = await connected(env, 'alice@example.test');
  const t1 = await connections.accessToken(mailbox.id);
  const v1 = (await connections.grantInfo(mailbox.id)).version;

  const t2 = await connections.refreshAccessToken(mailbox.id, t1.token);
  assert.notEqual(t2.token, t1.token);
  assert.equal(t2.account, 'alice@example.test');
  assert.ok(t2.expiresAt > new Date());
  const event = await env.events.next('refreshed', mailbox.id);
  assert.equal(event.email, 'alice@example.test');
  assert.ok(!JSON.stringify(event).includes(t2.token));
  const v2 = (await connections.grantInfo(mailbox.id)).version;
  assert.ok(v2 > v1, `version ${v1} -> ${v2}`);

  // t1 was already replaced: the stored t2, no second provider request.
  const again = await connections.refreshAccessToken(mailbox.id, t1.token);
  assert.equal(again.token, t2.token);
  assert.equal((await connections.grantInfo(mailbox.id)).version, v2);
  assert.equal((await connections.accessToken(mailbox.id)).token, t2.token);

  // Concurrent callers reporting the same rejected token share one refresh.
  const [a, b, c] = await Promise.all([0, 1, 2].map(() => connections.refreshAccessToken(mailbox.id, t2.token)));
  assert.notEqual(a.token, t2.token);
  assert.equal(b.token, a.token);
  assert.equal(c.token, a.token);
  const v3 = (await connections.grantInfo(mailbox.id)).version;
  assert.ok(v3 > v2);
  assert.equal((await connections.refreshAccessToken(mailbox.id, t2.token)).token, a.token);
  assert.equal((await connections.grantInfo(mailbox.id)).version, v3);

  // Unknown ids, with a real token in hand; the wrong kind of `rejected`.
  await rejectsWith(connections.refreshAccessToken('garbage', t1.token), 'not_found');
  await rejectsWith(connections.refreshAccessToken(UNKNOWN_ID, t1.token), 'not_found');
  await rejectsWith(connections.refreshAccessToken(mailbox.id, t1), 'validation', 'rejected');
  await rejectsWith(connections.refreshAccessToken(mailbox.id, 42), 'validation', 'rejected');
  const other = await directory.createMailbox(userMailbox('bob@example.test'));
  await rejectsWith(connections.refreshAccessToken(other.id, t1.token), 'not_connected');
});

// From here on, the tests revoke: REVOKING's pair only.

test('scope_not_granted: the mail scope unchecked; nothing stored, the mailbox not connected', opts, async (t) => {
  const env = await setup(t, REVOKING.client);
  const { directory, connections } = env.sync;
  const mailbox = await directory.createMailbox(userMailbox(REVOKING.email));
  const request = await connections.connect(mailbox.id);
  const back = await consent(request.url, REVOKING.email, '--uncheck-scope', MAIL_SCOPE);
  assert.ok(param(back, 'code'), back);
  const e = await rejectsWith(connections.complete(back), 'scope_not_granted');
  assert.equal(e.transient, false);
  assert.equal(e.nextAction, errorNextAction('scope_not_granted'));
  const status = await directory.status(mailbox.id);
  assert.equal(status.state.grant.status, 'not_connected');
  assert.ok(status.alerts.some((a) => a.code === 'scope_not_granted'));
  assert.equal((await env.events.next('consent_failed', mailbox.id)).code, 'scope_not_granted');
  assert.equal(await connections.grantInfo(mailbox.id), null);
  await rejectsWith(connections.accessToken(mailbox.id), 'not_connected');
});

test('account_mismatch: another account consented; nothing stored, the mailbox not connected', opts, async (t) => {
  const env = await setup(t, REVOKING.client);
  const { directory, connections } = env.sync;
  const mailbox = await directory.createMailbox(userMailbox('bob@example.test'));
  const request = await connections.connect(mailbox.id);
  assert.equal(param(request.url, 'login_hint'), 'bob@example.test');
  const back = await consent(request.url, REVOKING.email);
  const e = await rejectsWith(connections.complete(back), 'account_mismatch');
  assert.equal(e.nextAction, errorNextAction('account_mismatch'));
  assert.ok(!e.message.includes(param(back, 'code')), 'the code is not in the message');
  const status = await directory.status(mailbox.id);
  assert.equal(status.state.grant.status, 'not_connected');
  assert.ok(status.alerts.some((a) => a.code === 'account_mismatch'));
  assert.equal((await env.events.next('consent_failed', mailbox.id)).code, 'account_mismatch');
  assert.equal(await connections.grantInfo(mailbox.id), null);
});

test('disconnect a connected mailbox: not_connected, events in order, token gone', opts, async (t) => {
  const env = await setup(t, REVOKING.client);
  const { connections } = env.sync;
  const { mailbox, state } = await connected(env, REVOKING.email);
  assert.equal(state.grant.status, 'connected');
  const after = await connections.disconnect(mailbox.id);
  assert.equal(after.state.grant.status, 'not_connected');
  await env.events.next('disconnected', mailbox.id);
  assert.deepEqual(env.events.kinds(mailbox.id), ['connected', 'disconnected']);
  await rejectsWith(connections.accessToken(mailbox.id), 'not_connected');
  assert.equal(await connections.grantInfo(mailbox.id), null);
});

test('revoked grant, then disconnect: disconnected event, accessToken is not_connected', opts, async (t) => {
  const env = await setup(t, REVOKING.client);
  const { connections } = env.sync;
  const { mailbox } = await connected(env, REVOKING.email);
  const token = await connections.accessToken(mailbox.id);
  await revoke(token.token, REVOKING.client);
  const after = await connections.disconnect(mailbox.id);
  assert.equal(after.state.grant.status, 'not_connected');
  const event = await env.events.next('disconnected', mailbox.id);
  assert.equal(event.email, REVOKING.email);
  assert.equal(await connections.grantInfo(mailbox.id), null);
  const e = await rejectsWith(connections.accessToken(mailbox.id), 'not_connected');
  assert.equal(e.nextAction, errorNextAction('not_connected'));
  // Idempotent.
  assert.equal((await connections.disconnect(mailbox.id)).state.grant.status, 'not_connected');
});

test('a revoked grant: refreshAccessToken is token_revoked, the mailbox needs re-consent', opts, async (t) => {
  const env = await setup(t, REVOKING.client);
  const { directory, connections } = env.sync;
  const { mailbox } = await connected(env, REVOKING.email);
  // Revoked at once: an access token of the `short` client lives 5 s, an
  // expired one could no longer be revoked.
  const token = await connections.accessToken(mailbox.id);
  await revoke(token.token, REVOKING.client);
  const revoked = await rejectsWith(connections.refreshAccessToken(mailbox.id, token.token), 'token_revoked');
  assert.equal(revoked.transient, false);
  const needs = await env.events.next('needs_reconsent', mailbox.id);
  assert.equal(needs.code, 'token_revoked');
  const grant = (await directory.state(mailbox.id)).grant;
  assert.deepEqual([grant.status, grant.code], ['needs_reconsent', 'token_revoked']);
  await rejectsWith(connections.accessToken(mailbox.id), 'token_revoked');
});
