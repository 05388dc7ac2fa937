'use strict';
// Options, subscriptions (the listener adapter) and the OAuth / Test & Enable
// entry points that need no network (in-memory stores, Google defaults).
const test = require('node:test');
const assert = require('node:assert/strict');
const { mailsync, rejectsWith, recorder, keepAlive, gmail, memory, ENV_URL, CLIENT_ID, SECRET, UNKNOWN_ID } = require('./helpers');
const { MailSync, defaultFailurePolicy, defaultOptions, userMailbox, validateOptions } = mailsync;

const NO_MESSAGE = { sendTestMessage: false };

async function store(options) {
  const sync = await memory(options);
  const profile = await sync.directory.createProfile(gmail('Gmail', { defaultForNewMailboxes: true }));
  const mailbox = await sync.directory.createMailbox(userMailbox('ann@example.com'));
  return { sync, profile, mailbox };
}

/** Resolves with the next process warning named `name`. */
function nextWarning(name) {
  return keepAlive(new Promise((resolve) => {
    const on = (w) => {
      if (w.name === name) {
        process.off('warning', on);
        resolve(w);
      }
    };
    process.on('warning', on);
  }));
}

test('options: defaults, overrides, shown by sync.options', async () => {
  const d = defaultOptions();
  assert.deepEqual(d, {
    extraRootCertsPem: [],
    tokenRefreshSkewSecs: 300,
    httpTimeoutSecs: 30,
    refreshRetry: { attempts: 4, initialBackoffMs: 250, maxBackoffMs: 4000 },
    refreshLeaseSecs: 60,
    consentTtlSecs: 600,
    failurePolicy: { maxRetries: 10, intervalSecs: 300 },
  });
  assert.deepEqual(defaultFailurePolicy(), d.failurePolicy);
  assert.deepEqual((await memory()).options, d);
  assert.deepEqual((await memory(null)).options, d);
  const changed = {
    ...d,
    googleIssuerOverride: 'http://127.0.0.1:9',
    tokenRefreshSkewSecs: 1,
    httpTimeoutSecs: 2,
    refreshRetry: { ...d.refreshRetry, attempts: 1 },
    refreshLeaseSecs: 30,
    consentTtlSecs: 4,
    failurePolicy: { maxRetries: 0, intervalSecs: 5 },
  };
  assert.equal(validateOptions(changed), undefined);
  assert.deepEqual((await memory(changed)).options, changed);
});

test('options: unusable values are validation errors naming the field, before anything opens', async () => {
  const d = defaultOptions();
  await rejectsWith(memory({ ...d, extraRootCertsPem: ['not a certificate'] }), 'validation');
  await rejectsWith(memory({ ...d, googleIssuerOverride: 'not a url' }), 'validation', 'google_issuer_override');
  await rejectsWith(memory({ ...d, httpTimeoutSecs: 0 }), 'validation', 'http_timeout_secs');
  await rejectsWith(memory({ ...d, httpTimeoutSecs: -1 }), 'validation', 'http_timeout_secs');
  await rejectsWith(memory({ ...d, consentTtlSecs: 1.5 }), 'validation', 'consent_ttl_secs');
  await rejectsWith(memory({ ...d, refreshRetry: { ...d.refreshRetry, maxBackoffMs: NaN } }), 'validation', 'refresh_retry.max_backoff_ms');
  await rejectsWith(memory({ ...d, refreshLeaseSecs: 10 }), 'validation', 'refresh_lease_secs');
  await rejectsWith(() => validateOptions({ ...d, refreshRetry: { ...d.refreshRetry, attempts: 0 } }), 'validation', 'refresh_retry.attempts');
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: '/nonexistent-dir/x/y.db' }, { ...d, httpTimeoutSecs: 0 }), 'validation', 'http_timeout_secs');
  // A partial object or a value of another type is refused by the conversion, with the field named.
  await rejectsWith(memory({ httpTimeoutSecs: 5 }), 'validation', 'extra_root_certs_pem');
  await rejectsWith(memory({ ...d, extraRootCertsPem: 'not an array' }), 'validation', 'extra_root_certs_pem');
  await rejectsWith(memory({ ...d, refreshRetry: { ...d.refreshRetry, attempts: 'four' } }), 'validation', 'refresh_retry.attempts');
});

test('subscribe: a snapshot per mailbox, then each change, in order; cancel and close end it', async () => {
  const { sync, mailbox } = await store();
  const all = recorder();
  const subscription = await sync.subscribe(null, all.listener);
  const snapshot = await all.next('snapshot', mailbox.id);
  assert.equal(snapshot.email, 'ann@example.com');
  assert.deepEqual(snapshot.state.grant, { status: 'not_connected' });
  assert.ok(snapshot.at instanceof Date);

  await sync.connections.disconnect(mailbox.id);
  const event = await all.next('disconnected', mailbox.id);
  assert.deepEqual(Object.keys(event).sort(), ['at', 'email', 'kind', 'mailboxId', 'message', 'state']);
  assert.equal(event.email, 'ann@example.com');
  assert.equal(event.code, undefined);

  // One mailbox only: the other's events do not arrive.
  const other = await sync.directory.createMailbox(userMailbox('bo@example.com'));
  const one = recorder();
  const own = await sync.subscribe(other.id, one.listener);
  await one.next('snapshot', other.id);
  await sync.connections.disconnect(mailbox.id);
  await sync.connections.disconnect(other.id);
  await one.next('disconnected', other.id);
  assert.deepEqual(one.kinds(), ['snapshot', 'disconnected']);

  // Test & Enable of an unconnected mailbox disables both directions: in order.
  await sync.checks.testAndEnable(mailbox.id, NO_MESSAGE);
  await all.next('direction_disabled', mailbox.id);
  const disabled = all.events.filter((e) => e.kind === 'direction_disabled');
  assert.equal(disabled[0].code, 'not_connected');
  assert.deepEqual(all.kinds(mailbox.id).slice(0, 4), ['snapshot', 'disconnected', 'disconnected', 'direction_disabled']);

  subscription.cancel();
  subscription.cancel();
  const [count, before] = [all.events.length, one.events.length];
  await sync.connections.disconnect(mailbox.id);
  await sync.connections.disconnect(other.id);
  while (one.events.length === before) await new Promise((r) => setTimeout(r, 10));
  assert.equal(all.events.length, count, 'a cancelled subscription gets nothing');
  // Closing ends the remaining subscriptions.
  await sync.close();
  assert.equal(own.cancel(), undefined);
});

test('a listener may call back into the library (same mailbox too) without deadlock', async () => {
  const { sync, mailbox } = await store();
  const seen = [];
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  await sync.subscribe(mailbox.id, async (event) => {
    const state = await sync.directory.state(event.mailboxId);
    seen.push([event.kind, state.grant.status]);
    if (event.kind === 'snapshot') await sync.connections.disconnect(event.mailboxId);
    else done();
  });
  await keepAlive(finished);
  assert.deepEqual(seen, [['snapshot', 'not_connected'], ['disconnected', 'not_connected']]);
  await sync.close();
});

test('a listener that throws neither crashes nor poisons the library (process warning)', async () => {
  const { sync, mailbox } = await store();
  const seen = [];
  const boom = new Error('listener boom');
  const warned = nextWarning('MailsyncListenerWarning');
  const sub = await sync.subscribe(mailbox.id, (e) => {
    seen.push(e.kind);
    throw boom;
  });
  const warning = await warned;
  assert.equal(warning.cause, boom);
  assert.match(warning.message, /listener boom/);
  // Still working, and the listener still called.
  const warned2 = nextWarning('MailsyncListenerWarning');
  const after = await sync.connections.disconnect(mailbox.id);
  assert.equal(after.state.grant.status, 'not_connected');
  await warned2;
  assert.deepEqual(seen, ['snapshot', 'disconnected']);
  assert.equal((await sync.directory.getMailbox(mailbox.id)).email, 'ann@example.com');
  sub.cancel();

  // An async listener whose promise rejects, and a throw of a non-Error.
  const rejected = nextWarning('MailsyncListenerWarning');
  const asyncSub = await sync.subscribe(mailbox.id, async () => {
    throw new Error('async boom');
  });
  assert.match((await rejected).message, /async boom/);
  asyncSub.cancel();
  const str = nextWarning('MailsyncListenerWarning');
  await sync.subscribe(mailbox.id, () => {
    throw 'a string'; // eslint-disable-line no-throw-literal
  });
  assert.equal((await str).cause, 'a string');
  await sync.close();
});

test('connect without a provider call; unknown ids and unconnected mailboxes map to codes', async () => {
  const { sync, profile, mailbox } = await store();
  const { connections, checks, directory } = sync;
  const request = await connections.connect(mailbox.id);
  const url = new URL(request.url);
  assert.equal(url.origin, 'https://accounts.google.com');
  assert.equal(url.searchParams.get('redirect_uri'), `${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`);
  assert.equal(url.searchParams.get('client_id'), CLIENT_ID);
  assert.equal(url.searchParams.get('access_type'), 'offline');
  assert.equal(url.searchParams.get('login_hint'), 'ann@example.com');
  assert.ok(!request.url.includes(SECRET));
  assert.equal(request.mailboxId, mailbox.id);
  assert.ok(request.expiresAt instanceof Date && request.expiresAt > new Date());
  const pending = (await directory.state(mailbox.id)).pendingConsent;
  assert.equal(pending.expiresAt.getTime(), request.expiresAt.getTime());
  assert.equal(await connections.grantInfo(mailbox.id), null);

  for (const id of [UNKNOWN_ID, 'garbage']) {
    await rejectsWith(connections.connect(id), 'not_found');
    await rejectsWith(connections.disconnect(id), 'not_found');
    await rejectsWith(checks.testAndEnable(id, NO_MESSAGE), 'not_found');
    await rejectsWith(checks.testAll(id, NO_MESSAGE), 'not_found');
  }
  await rejectsWith(connections.accessToken(mailbox.id), 'not_connected');
  await rejectsWith(connections.accessToken(''), 'not_found');
  await rejectsWith(connections.complete(''), 'state_invalid');
  await rejectsWith(connections.complete('https://crm.example.com/cb?code=x&state=y'), 'state_invalid');
  await rejectsWith(connections.connect(42), 'validation', 'mailbox');
  await rejectsWith(sync.subscribe(null, 'not a function'), 'validation', 'listener');
  assert.equal(await checks.lastProfileTest(profile.id), null);

  // The credentials step fails before any connection is made.
  const report = await checks.testAndEnable(mailbox.id, NO_MESSAGE);
  assert.equal(report.outcome, 'failure');
  assert.deepEqual({ step: report.incoming.diagnosis.step, code: report.incoming.diagnosis.code },
    { step: 'credentials', code: 'not_connected' });
  assert.equal(report.outgoing.diagnosis.code, 'not_connected');
  assert.equal((await checks.lastProfileTest(profile.id)).outcome, 'failure');
  assert.deepEqual((await checks.testAll(profile.id, NO_MESSAGE)).map((r) => r.email), ['ann@example.com']);
  await sync.close();
});
