'use strict';
// The rest of the directory API: every operation, through the binding.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { mailsync, tempDb, rejectsWith, ENV_URL, CLIENT_ID, SECRET } = require('./helpers');
const { MailSync, OAuthApp, ServerProfile, MailboxSpec, Authentication, SealKey } = mailsync;

const app = () => OAuthApp.google(CLIENT_ID, SECRET).forEnvironment(ENV_URL);

test('profiles: create, update, get, find, list, default, delete', async () => {
  const sync = MailSync.inMemory();
  assert.equal(await sync.defaultProfile(), null);
  const a = await sync.createProfile(ServerProfile.gmail('A', app()).asDefaultForNewMailboxes());
  const b = await sync.createProfile(ServerProfile.gmail('B', app()).usePop3().useSmtpTls465());
  assert.deepEqual(b.incoming, { protocol: 'pop3', host: 'pop.gmail.com', port: 995, security: 'tls' });
  assert.deepEqual(b.outgoing, { host: 'smtp.gmail.com', port: 465, security: 'tls' });
  // enum strings are the core's serde strings
  assert.equal(b.incoming.protocol, b.toJSON().incoming.protocol);
  const pop = ServerProfile.generic('Pop', { protocol: 'pop3', host: 'mail.example.com', port: 995, security: 'tls' },
    { host: 'mail.example.com', port: 587, security: 'start_tls' }, Authentication.credentialsPerMailbox());
  assert.equal(pop.serverType, 'pop3_smtp');
  assert.equal(pop.toJSON().server_type, 'pop3_smtp');
  assert.equal(pop.outgoing.security, pop.toJSON().outgoing.security);
  await rejectsWith(sync.createProfile(ServerProfile.gmail('a', app())), 'already_exists');

  assert.equal((await sync.getProfile(a.id)).name, 'A');
  assert.equal((await sync.findProfile(b.id)).name, 'B');
  assert.deepEqual((await sync.listProfiles()).map((p) => p.name), ['A', 'B']);

  const changed = await sync.setDefaultProfile(b.id);
  assert.equal(changed.defaultForNewMailboxes, true);
  assert.equal((await sync.defaultProfile()).id, b.id);
  assert.equal((await sync.getProfile(a.id)).defaultForNewMailboxes, false);

  b.name = 'B renamed';
  b.processing = { ...b.processing, connectionTimeoutSecs: 30, processEmailReceivedAfter: '2026-01-01T00:00:00Z' };
  b.mailboxCapacity = 10;
  const updated = await sync.updateProfile(b);
  assert.equal(updated.name, 'B renamed');
  assert.equal((await sync.getProfile(b.id)).processing.connectionTimeoutSecs, 30);
  assert.equal((await sync.getProfile(b.id)).processing.processEmailReceivedAfter, '2026-01-01T00:00:00Z');
  assert.equal((await sync.getProfile(b.id)).mailboxCapacity, 10);

  const box = await sync.createMailbox(MailboxSpec.user('x@example.com').onProfile(a.id));
  await rejectsWith(sync.deleteProfile(a.id), 'profile_in_use');
  await sync.deleteMailbox(box.id);
  await sync.deleteProfile(a.id);
  await rejectsWith(sync.getProfile(a.id), 'not_found');
});

test('mailboxes: create kinds, get, find, update, assign, delete, spill-over', async () => {
  const sync = MailSync.inMemory();
  const small = await sync.createProfile(ServerProfile.gmail('Small', app()).withMailboxCapacity(1).asDefaultForNewMailboxes());
  const other = await sync.createProfile(ServerProfile.gmail('Other', app()));

  const user = await sync.createMailbox(MailboxSpec.user('Alice@Example.com'));
  assert.equal(user.email, 'alice@example.com');
  assert.deepEqual(user.owner, { kind: 'user', name: 'alice@example.com' });
  assert.equal(user.incomingDelivery, 'server_side_sync');
  assert.equal(user.approval, 'approved');
  assert.equal(user.connection.state, 'not_connected');
  assert.equal(user.incomingTest.status, 'not_run');
  assert.deepEqual(user.alerts, []);
  assert.ok(!Number.isNaN(Date.parse(user.createdAt)));

  await rejectsWith(sync.createMailbox(MailboxSpec.user('bob@example.com')), 'capacity_exceeded');
  const spilled = await sync.createMailbox(MailboxSpec.user('bob@example.com').withSpillOver());
  assert.equal(spilled.profileId, other.id);

  const queue = await sync.createMailbox(MailboxSpec.queue('support@example.com', 'Support').onProfile(other.id));
  assert.deepEqual(queue.owner, { kind: 'queue', name: 'Support' });
  const fwd = MailboxSpec.forward('fwd@example.com');
  assert.equal(fwd.outgoingDelivery, 'none');
  fwd.name = 'Forward';
  assert.equal(fwd.profileId, null);
  const forward = await sync.createMailbox(fwd.onProfile(other.id));
  assert.equal(forward.isForward, true);
  assert.equal(forward.name, 'Forward');

  assert.equal((await sync.getMailbox(user.id)).email, 'alice@example.com');
  assert.equal((await sync.findMailbox('ALICE@example.com')).id, user.id);
  assert.equal((await sync.findMailbox(queue.id)).email, 'support@example.com');
  assert.equal((await sync.listMailboxes(other.id)).length, 3);

  user.name = 'Alice A.';
  user.outgoingEnabled = false;
  const saved = await sync.updateMailbox(user);
  assert.equal(saved.name, 'Alice A.');
  assert.equal((await sync.getMailbox(user.id)).outgoingEnabled, false);

  forward.outgoingDelivery = 'server_side_sync';
  await rejectsWith(sync.updateMailbox(forward), 'validation', 'outgoing_delivery');
  await rejectsWith(() => forward.validate(), 'validation', 'outgoing_delivery');

  const moved = await sync.assignProfile(user.id, other.id);
  assert.equal(moved.profileId, other.id);
  assert.equal((await sync.assignProfile(spilled.id, small.id)).profileId, small.id);
  await rejectsWith(sync.assignProfile(queue.id, small.id), 'capacity_exceeded');
  await rejectsWith(sync.assignProfile(queue.id, '00000000-0000-4000-8000-000000000000'), 'not_found');
  await sync.deleteMailbox(user.id);
  await rejectsWith(sync.getMailbox(user.id), 'not_found');
});

test('app: audience, test users, warnings, ensureMayConnect', async () => {
  const testing = app().withAudience('external', 'testing').withTestUsers(['Tess@Example.com']);
  assert.deepEqual(testing.consentScreen.testUsers, ['tess@example.com']);
  assert.equal(testing.warnings()[0].code, 'testing_refresh_token_expiry');
  testing.ensureMayConnect('tess@example.com');
  await rejectsWith(() => testing.ensureMayConnect('eve@example.com'), 'not_a_test_user');
  const published = app().withAudience('internal', 'production');
  assert.deepEqual(published.warnings(), []);
  assert.equal(published.consentScreen.userType, 'internal');
  assert.equal(published.applicationType, 'web');
  published.validate();
  const custom = OAuthApp.google(CLIENT_ID, SECRET).forEnvironmentWithPath(ENV_URL, '/oauth/callback');
  assert.equal(custom.redirectUri, `${ENV_URL}/oauth/callback`);
  // builders do not change the receiver
  const base = OAuthApp.google(CLIENT_ID, SECRET);
  base.forEnvironment(ENV_URL);
  assert.equal(base.redirectUri, null);
});

test('generic profiles and authentication kinds', async () => {
  const sync = MailSync.inMemory();
  const creds = Authentication.credentialsInProfile('svc', 'p@ss-word-never-shown');
  assert.equal(creds.kind, 'credentials_in_profile');
  assert.equal(creds.hasPassword, true);
  assert.equal(creds.username, 'svc');
  assert.ok(!JSON.stringify(creds).includes('p@ss-word-never-shown'));
  const local = ServerProfile.generic(
    'Local',
    { protocol: 'imap', host: '127.0.0.1', port: 1143, security: 'plaintext' },
    { host: '127.0.0.1', port: 1587, security: 'plaintext' },
    creds,
  );
  assert.equal(local.serverType, 'imap_smtp');
  await rejectsWith(sync.createProfile(local), 'validation', 'incoming.security');
  local.allowPlaintextOnLoopback = true;
  const created = await sync.createProfile(local);
  assert.equal(created.authentication.hasPassword, true);
  assert.ok(!require('node:util').inspect(created).includes('p@ss-word-never-shown'));

  const oidc = Authentication.oauthProvider('https://login.example.com', app());
  assert.equal(oidc.kind, 'o_auth_provider');
  assert.equal(oidc.isOauth, true);
  assert.equal(oidc.app.clientId, CLIENT_ID);
  assert.equal(Authentication.gmailOauth(app()).kind, 'gmail_o_auth');
  assert.equal(Authentication.credentialsPerMailbox().kind, 'credentials_per_mailbox');
  const per = await sync.createMailbox(MailboxSpec.user('p@example.com').withCredentials('p', 'mailbox-pass-xyz'));
  assert.deepEqual(per.credentials, { username: 'p', hasPassword: true });
  assert.ok(!JSON.stringify(per).includes('mailbox-pass-xyz'));
});

test('openSqliteWithKey: a host key; the wrong key cannot read secrets', async (t) => {
  const db = tempDb(t);
  const key = SealKey.fromBytes(new Uint8Array(32).fill(7));
  assert.equal(String(key), 'SealKey([REDACTED])');
  assert.equal(JSON.stringify({ key }), '{"key":"[REDACTED]"}');
  assert.ok(!require('node:util').inspect(key).includes('7,7'));
  const sync = await MailSync.openSqliteWithKey(db, key);
  const p = await sync.createProfile(ServerProfile.gmail('Keyed', app()));
  const again = await MailSync.openSqliteWithKey(db, SealKey.fromBytes(new Uint8Array(32).fill(7)));
  assert.equal((await again.getProfile(p.id)).hasClientSecret, true);
  await rejectsWith(MailSync.openSqliteWithKey(db, SealKey.generate()), 'seal_key_mismatch');
  await rejectsWith(() => SealKey.fromBytes(new Uint8Array(31)), 'validation', 'seal_key');
});

test('openSqliteWithKeyAndSettings: the host key and the settings both apply', async (t) => {
  const db = tempDb(t);
  const bytes = new Uint8Array(32).fill(9);
  const sync = await MailSync.openSqliteWithKeyAndSettings(db, SealKey.fromBytes(bytes), { httpTimeoutMs: 1234, consentTtlMs: 5000 });
  assert.equal(sync.settings.httpTimeoutMs, 1234);
  assert.equal(sync.settings.consentTtlMs, 5000);
  const p = await sync.createProfile(ServerProfile.gmail('Keyed', app()));
  // No <path>.key file: the key is the host's.
  assert.equal(fs.existsSync(`${db}.key`), false);
  const again = await MailSync.openSqliteWithKey(db, SealKey.fromBytes(bytes));
  assert.equal((await again.getProfile(p.id)).hasClientSecret, true);
  await rejectsWith(MailSync.openSqliteWithKeyAndSettings(db, SealKey.generate(), {}), 'seal_key_mismatch');
  await rejectsWith(MailSync.openSqliteWithKeyAndSettings(db, SealKey.fromBytes(bytes), { httpTimeoutMs: -1 }), 'validation', 'http_timeout_ms');
  await rejectsWith(MailSync.openSqliteWithKeyAndSettings(db, SealKey.fromBytes(bytes), { googleIssuerOverride: 'not a url' }), 'validation', 'google_issuer_override');
  await assert.rejects(async () => MailSync.openSqliteWithKeyAndSettings(db, { bytes }, {}), (e) => !(e instanceof mailsync.MailsyncError));
  await sync.close();
  await again.close();
});

test('close: checkpoints the WAL, is idempotent, later calls reject with store; the data survives', async (t) => {
  const db = tempDb(t);
  const sync = await MailSync.openSqlite(db);
  const p = await sync.createProfile(ServerProfile.gmail('Closing', app()).asDefaultForNewMailboxes());
  await sync.createMailbox(MailboxSpec.user('closing@example.com'));
  assert.equal(fs.existsSync(`${db}-wal`), true);
  assert.equal(await sync.close(), undefined);
  assert.equal(fs.existsSync(`${db}-wal`), false);
  await sync.close();
  await rejectsWith(sync.listProfiles(), 'store');
  await rejectsWith(sync.createMailbox(MailboxSpec.user('late@example.com')), 'store');
  const reopened = await MailSync.openSqlite(db);
  assert.equal((await reopened.getProfile(p.id)).hasClientSecret, true);
  assert.deepEqual((await reopened.listMailboxes()).map((m) => m.email), ['closing@example.com']);
  await reopened.close();
  // An in-memory store has nothing to close.
  const memory = MailSync.inMemory();
  await memory.close();
  assert.deepEqual(await memory.listProfiles(), []);
});
