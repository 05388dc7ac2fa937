'use strict';
// Settings, the event listener adapter and the OAuth/Test & Enable entry
// points that need no network (in-memory stores, Google defaults).
const test = require('node:test');
const assert = require('node:assert/strict');
const { mailsync, rejectsWith, ENV_URL, CLIENT_ID, SECRET } = require('./helpers');
const { recorder } = require('./stack');
const { MailSync, OAuthApp, ServerProfile, MailboxSpec } = mailsync;

async function store(settings) {
  const sync = MailSync.inMemoryWith(settings);
  const app = OAuthApp.google(CLIENT_ID, SECRET).forEnvironment(ENV_URL);
  const profile = await sync.createProfile(ServerProfile.gmail('Gmail', app).asDefaultForNewMailboxes());
  const mailbox = await sync.createMailbox(MailboxSpec.user('ann@example.com'));
  return { sync, profile, mailbox };
}

/** Resolves with the next process warning named `name`. */
function nextWarning(name) {
  return new Promise((resolve) => {
    const on = (w) => {
      if (w.name === name) {
        process.off('warning', on);
        resolve(w);
      }
    };
    process.on('warning', on);
  });
}

test('settings: defaults, overrides in milliseconds, shown by sync.settings', () => {
  const d = MailSync.inMemory().settings;
  assert.deepEqual(d, {
    extraRootCerts: 0,
    tokenRefreshSkewMs: 300000,
    httpTimeoutMs: 30000,
    refreshRetry: { attempts: 4, initialBackoffMs: 250, maxBackoffMs: 4000 },
    refreshLeaseMs: 60000,
    consentTtlMs: 600000,
  });
  const s = MailSync.inMemoryWith({
    googleIssuerOverride: 'http://127.0.0.1:9/',
    tokenRefreshSkewMs: 1000,
    httpTimeoutMs: 2000,
    refreshRetry: { attempts: 1 },
    refreshLeaseMs: 3000,
    consentTtlMs: 4000,
  }).settings;
  assert.equal(s.googleIssuerOverride, 'http://127.0.0.1:9/');
  assert.equal(s.tokenRefreshSkewMs, 1000);
  assert.equal(s.httpTimeoutMs, 2000);
  assert.deepEqual(s.refreshRetry, { attempts: 1, initialBackoffMs: 250, maxBackoffMs: 4000 });
  assert.equal(s.refreshLeaseMs, 3000);
  assert.equal(s.consentTtlMs, 4000);
  assert.deepEqual(MailSync.inMemoryWith({}).settings, d);
});

test('settings: unusable values are validation errors naming the field', async () => {
  await rejectsWith(() => MailSync.inMemoryWith({ extraRootCertsPem: ['not a certificate'] }), 'validation');
  await rejectsWith(() => MailSync.inMemoryWith({ googleIssuerOverride: 'not a url' }), 'validation', 'google_issuer_override');
  await rejectsWith(() => MailSync.inMemoryWith({ httpTimeoutMs: -1 }), 'validation', 'http_timeout_ms');
  await rejectsWith(() => MailSync.inMemoryWith({ consentTtlMs: 1.5 }), 'validation', 'consent_ttl_ms');
  await rejectsWith(() => MailSync.inMemoryWith({ refreshRetry: { maxBackoffMs: NaN } }), 'validation', 'refresh_retry.max_backoff_ms');
  await rejectsWith(MailSync.openSqliteWith('/nonexistent-dir/x/y.db', { httpTimeoutMs: -5 }), 'validation', 'http_timeout_ms');
  assert.throws(() => MailSync.inMemoryWith({ eventListener: 42 }), (e) => !(e instanceof mailsync.MailsyncError));
  assert.throws(() => MailSync.inMemoryWith({ extraRootCertsPem: 'not an array' }), (e) => !(e instanceof mailsync.MailsyncError));
  assert.throws(() => MailSync.inMemoryWith({ refreshRetry: { attempts: 'four' } }), (e) => !(e instanceof mailsync.MailsyncError));
});

test('listener in settings receives events; setEventListener replaces and removes it', async () => {
  const first = recorder();
  const { sync, mailbox } = await store({ eventListener: first.listener });
  await sync.disconnect(mailbox.id);
  const event = await first.next('disconnected', mailbox.id);
  assert.deepEqual(Object.keys(event).sort(), ['at', 'email', 'kind', 'mailboxId', 'message']);
  assert.equal(event.email, 'ann@example.com');
  assert.equal(event.code ?? null, null);

  const second = recorder();
  sync.setEventListener(second.listener);
  await sync.disconnect(mailbox.id);
  await second.next('disconnected', mailbox.id);
  sync.setEventListener(null);
  const third = recorder();
  sync.setEventListener(third.listener);
  sync.setEventListener(null);
  await sync.disconnect(mailbox.id);
  // The listener that is set now sees the next event; removed ones never do.
  const fourth = recorder();
  sync.setEventListener(fourth.listener);
  await sync.disconnect(mailbox.id);
  await fourth.next('disconnected', mailbox.id);
  assert.equal(fourth.events.length, 1);
  assert.equal(first.events.length, 1);
  assert.equal(second.events.length, 1);
  assert.equal(third.events.length, 0);
});

test('a listener that throws neither crashes nor poisons the library (process warning)', async () => {
  const seen = [];
  const boom = new Error('listener boom');
  const { sync, mailbox } = await store({
    eventListener: (e) => {
      seen.push(e.kind);
      throw boom;
    },
  });
  const warned = nextWarning('MailsyncListenerWarning');
  const after = await sync.disconnect(mailbox.id);
  assert.equal(after.connection.state, 'not_connected');
  const warning = await warned;
  assert.equal(warning.cause, boom);
  assert.match(warning.message, /listener boom/);
  // Still working, and the listener still called.
  const warned2 = nextWarning('MailsyncListenerWarning');
  await sync.disconnect(mailbox.id);
  await warned2;
  assert.deepEqual(seen, ['disconnected', 'disconnected']);
  assert.equal((await sync.getMailbox(mailbox.id)).email, 'ann@example.com');

  // An async listener whose promise rejects, and a throw of a non-Error.
  sync.setEventListener(async () => {
    throw new Error('async boom');
  });
  const rejected = nextWarning('MailsyncListenerWarning');
  await sync.disconnect(mailbox.id);
  assert.match((await rejected).message, /async boom/);
  sync.setEventListener(() => {
    throw 'a string';
  });
  const str = nextWarning('MailsyncListenerWarning');
  await sync.disconnect(mailbox.id);
  assert.equal((await str).cause, 'a string');
});

test('connect without a provider call; wrong ids and unconnected mailboxes map to codes', async () => {
  const { sync, profile, mailbox } = await store({});
  const request = await sync.connect(mailbox.id);
  const url = new URL(request.url);
  assert.equal(url.origin, 'https://accounts.google.com');
  assert.equal(url.searchParams.get('redirect_uri'), `${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`);
  assert.equal(url.searchParams.get('client_id'), CLIENT_ID);
  assert.equal(url.searchParams.get('access_type'), 'offline');
  assert.ok(!request.url.includes(SECRET));
  assert.equal(request.mailboxId, mailbox.id);
  assert.equal((await sync.getMailbox(mailbox.id)).connection.state, 'awaiting_consent');
  assert.equal(await sync.tokenInfo(mailbox.id), null);

  const unknown = '00000000-0000-4000-8000-000000000000';
  await rejectsWith(sync.connect(unknown), 'not_found');
  await rejectsWith(sync.connect('garbage'), 'validation', 'id');
  await rejectsWith(sync.accessToken(mailbox.id), 'not_connected');
  await rejectsWith(sync.accessToken(''), 'validation', 'id');
  await rejectsWith(sync.tokenInfo('nope'), 'validation', 'id');
  await rejectsWith(sync.disconnect(unknown), 'not_found');
  await rejectsWith(sync.completeConnect(''), 'state_invalid');
  await rejectsWith(sync.completeConnect('https://crm.example.com/cb?code=x&state=y'), 'state_invalid');
  await rejectsWith(sync.testAndEnable(unknown), 'not_found');
  await rejectsWith(sync.testAndEnableWith('bad', {}), 'validation', 'id');
  await rejectsWith(sync.testAllMailboxes('bad'), 'validation', 'id');
  await assert.rejects(async () => sync.connect(42), (e) => !(e instanceof mailsync.MailsyncError));
  assert.throws(() => sync.setEventListener('not a function'));

  // The credentials step fails before any connection is made.
  const report = await sync.testAndEnable(mailbox.id);
  assert.equal(report.isSuccess(), false);
  assert.deepEqual(
    { step: report.firstFailure().step, code: report.firstFailure().code },
    { step: 'credentials', code: 'not_connected' });
  assert.deepEqual((await sync.testAllMailboxes(profile.id, { sendTestMessage: false })).map((r) => r.email), ['ann@example.com']);
});
