'use strict';
// The directory API: every operation, through the binding.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const util = require('node:util');
const { mailsync, tempDb, rejectsWith, app, gmail, memory, ENV_URL, CLIENT_ID, SECRET, UNKNOWN_ID } = require('./helpers');
const { MailSync, SealKey, SecretValue, appEnsureMayConnect, appForEnvironment, appWarnings, appWithAudience,
  appWithTestUsers, defaultOptions, forwardMailbox, genericProfile, googleApp, profileUsePop3, profileUseSmtpTls465,
  queueMailbox, userMailbox } = mailsync;

const imap = (host, port, security = 'tls') => ({ protocol: 'imap', endpoint: { host, port, security } });

test('profiles: create, update (versioned), get, find, list, default, count, delete', async () => {
  const { directory } = await memory();
  assert.equal(await directory.defaultProfile(), null);
  const a = await directory.createProfile(gmail('A', { defaultForNewMailboxes: true }));
  const b = await directory.createProfile(profileUseSmtpTls465(profileUsePop3(gmail('B'))));
  assert.deepEqual(b.incoming, { protocol: 'pop3', endpoint: { host: 'pop.gmail.com', port: 995, security: 'tls' } });
  assert.deepEqual(b.outgoing, { host: 'smtp.gmail.com', port: 465, security: 'tls' });
  const pop = genericProfile('Pop', { protocol: 'pop3', endpoint: { host: 'mail.example.com', port: 995, security: 'tls' } },
    { host: 'mail.example.com', port: 587, security: 'start_tls' }, { kind: 'credentials_per_mailbox' });
  assert.equal(pop.serverType, 'pop3_smtp');
  assert.equal(pop.incoming.protocol, 'pop3');
  await rejectsWith(directory.createProfile(gmail('a')), 'already_exists');

  assert.equal((await directory.getProfile(a.id)).name, 'A');
  assert.equal((await directory.findProfile(b.id)).name, 'B');
  assert.equal((await directory.findProfile(' b ')).id, b.id);
  assert.deepEqual((await directory.listProfiles()).map((p) => p.name), ['A', 'B']);

  const changed = await directory.setDefaultProfile(b.id);
  assert.equal(changed.defaultForNewMailboxes, true);
  assert.equal((await directory.defaultProfile()).id, b.id);
  assert.equal((await directory.getProfile(a.id)).defaultForNewMailboxes, false);

  // An update carries the version it was read at; a stale one is a conflict.
  const current = await directory.getProfile(b.id);
  const after = new Date('2026-01-01T00:00:00Z');
  const updated = await directory.updateProfile({
    ...current,
    name: 'B renamed',
    processing: { ...current.processing, connectionTimeoutSecs: 30, processEmailReceivedAfter: after },
    mailboxCapacity: 10,
  });
  assert.equal(updated.name, 'B renamed');
  assert.ok(updated.version > current.version);
  const stored = await directory.getProfile(b.id);
  assert.equal(stored.processing.connectionTimeoutSecs, 30);
  assert.ok(stored.processing.processEmailReceivedAfter instanceof Date);
  assert.equal(stored.processing.processEmailReceivedAfter.getTime(), after.getTime());
  assert.equal(stored.mailboxCapacity, 10);
  assert.ok(stored.authentication.app.clientSecret instanceof SecretValue, 'the secret was kept');
  const stale = await rejectsWith(directory.updateProfile({ ...current, name: 'stale' }), 'conflict');
  assert.equal(stale.transient, true);
  // The mask written back keeps the stored secret; creating with the mask is refused.
  const kept = await directory.updateProfile({ ...stored, authentication: { kind: 'gmail_o_auth', app: { ...stored.authentication.app, clientSecret: '********' } } });
  assert.ok(kept.authentication.app.clientSecret instanceof SecretValue);
  await rejectsWith(directory.createProfile(gmail('Masked', { authentication: { kind: 'gmail_o_auth', app: { ...app(), clientSecret: '********' } } })),
    'validation', 'client_secret');

  const box = await directory.createMailbox({ ...userMailbox('x@example.com'), profileId: a.id });
  assert.equal(await directory.mailboxCount(a.id), 1);
  await rejectsWith(directory.deleteProfile(a.id), 'profile_in_use');
  await directory.deleteMailbox(box.id);
  assert.equal(await directory.deleteProfile(a.id), undefined);
  await rejectsWith(directory.getProfile(a.id), 'not_found');
});

test('mailboxes: kinds, state, get, find, update, move, delete, spill-over', async () => {
  const { directory } = await memory();
  const small = await directory.createProfile(gmail('Small', { mailboxCapacity: 1, defaultForNewMailboxes: true }));
  const other = await directory.createProfile(gmail('Other'));

  const user = await directory.createMailbox(userMailbox('Alice@Example.com'));
  assert.equal(user.email, 'alice@example.com');
  assert.deepEqual(user.owner, { kind: 'user', name: 'alice@example.com' });
  assert.equal(user.incomingDelivery, 'server_side_sync');
  assert.equal(user.approval, 'approved');
  assert.ok(user.createdAt instanceof Date && !Number.isNaN(user.createdAt.getTime()));
  const state = await directory.state(user.id);
  assert.equal(state.mailboxId, user.id);
  assert.deepEqual(state.grant, { status: 'not_connected' });
  assert.deepEqual(state.incoming, { status: { status: 'not_tested' }, lastTest: { status: 'not_run' } });
  assert.equal(state.pendingConsent, undefined);
  assert.deepEqual(await directory.alerts(user.id), []);
  const status = await directory.status(user.id);
  assert.deepEqual([status.mailbox.id, status.state.grant.status, status.alerts.length], [user.id, 'not_connected', 0]);

  await rejectsWith(directory.createMailbox(userMailbox('bob@example.com')), 'capacity_exceeded');
  const spilled = await directory.createMailbox({ ...userMailbox('bob@example.com'), allowSpillOver: true });
  assert.equal(spilled.profileId, other.id);

  const queue = await directory.createMailbox({ ...queueMailbox('support@example.com', 'Support'), profileId: other.id });
  assert.deepEqual(queue.owner, { kind: 'queue', name: 'Support' });
  const fwd = forwardMailbox('fwd@example.com');
  assert.equal(fwd.outgoingDelivery, 'none');
  assert.equal(fwd.incomingDelivery, 'forward_mailbox');
  assert.equal(fwd.profileId, undefined);
  const forward = await directory.createMailbox({ ...fwd, name: 'Forward', profileId: other.id });
  assert.equal(forward.name, 'Forward');

  assert.equal((await directory.getMailbox(user.id)).email, 'alice@example.com');
  assert.equal((await directory.findMailbox('ALICE@example.com')).id, user.id);
  assert.equal((await directory.findMailbox(queue.id)).email, 'support@example.com');
  assert.equal((await directory.listMailboxes(other.id)).length, 3);
  assert.deepEqual((await directory.listMailboxes()).map((m) => m.email),
    ['alice@example.com', 'bob@example.com', 'fwd@example.com', 'support@example.com']);

  const saved = await directory.updateMailbox({ ...user, name: 'Alice A.' });
  assert.equal(saved.name, 'Alice A.');
  assert.equal((await directory.getMailbox(user.id)).name, 'Alice A.');
  await rejectsWith(directory.updateMailbox({ ...user, name: 'stale' }), 'conflict');
  await rejectsWith(directory.updateMailbox({ ...forward, outgoingDelivery: 'server_side_sync' }), 'validation', 'outgoing_delivery');

  const moved = await directory.moveMailbox(user.id, other.id);
  assert.equal(moved.profileId, other.id);
  assert.equal((await directory.moveMailbox(spilled.id, small.id)).profileId, small.id);
  await rejectsWith(directory.moveMailbox(queue.id, small.id), 'capacity_exceeded');
  await rejectsWith(directory.moveMailbox(queue.id, UNKNOWN_ID), 'not_found');
  await directory.deleteMailbox(user.id);
  await rejectsWith(directory.getMailbox(user.id), 'not_found');
});

test('app: audience, test users, warnings, appEnsureMayConnect; functions return new records', async () => {
  const testing = appWithTestUsers(appWithAudience(app(), 'external', 'testing'), ['Tess@Example.com']);
  assert.deepEqual(testing.consentScreen.testUsers, ['tess@example.com']);
  assert.equal(appWarnings(testing)[0].code, 'testing_refresh_token_expiry');
  assert.equal(appEnsureMayConnect(testing, 'tess@example.com'), undefined);
  await rejectsWith(() => appEnsureMayConnect(testing, 'eve@example.com'), 'not_a_test_user');
  const published = appWithAudience(app(), 'internal', 'production');
  assert.deepEqual(appWarnings(published), []);
  assert.equal(published.consentScreen.userType, 'internal');
  assert.equal(published.applicationType, 'web');
  const custom = appForEnvironment(googleApp(CLIENT_ID, SECRET), ENV_URL, '/oauth/callback');
  assert.deepEqual(custom.redirectUris, [`${ENV_URL}/oauth/callback`]);
  // The functions leave their arguments unchanged.
  const base = googleApp(CLIENT_ID, SECRET);
  appForEnvironment(base, ENV_URL);
  assert.deepEqual(base.redirectUris, []);
});

test('generic profiles and authentication kinds; passwords never show', async () => {
  const { directory } = await memory();
  const creds = { kind: 'credentials_in_profile', username: 'svc', password: 'p@ss-word-never-shown' };
  const local = genericProfile('Local', imap('127.0.0.1', 1143, 'plaintext'), { host: '127.0.0.1', port: 1587, security: 'plaintext' }, creds);
  assert.equal(local.serverType, 'imap_smtp');
  assert.equal(local.mailboxCapacity, 2 ** 32 - 1);
  assert.ok(local.authentication.password instanceof SecretValue);
  assert.ok(!JSON.stringify(local).includes('p@ss-word-never-shown'));
  await rejectsWith(directory.createProfile(local), 'validation', 'incoming.security');
  const created = await directory.createProfile({ ...local, allowPlaintextOnLoopback: true });
  assert.ok(created.authentication.password instanceof SecretValue);
  assert.equal(created.authentication.username, 'svc');
  assert.ok(!util.inspect(created, { depth: 10 }).includes('p@ss-word-never-shown'));

  const oidc = { kind: 'o_auth_provider', issuer: 'https://login.example.com', app: app(), mailScopes: ['mail'] };
  const provider = await directory.createProfile(genericProfile('OIDC', imap('imap.example.com', 993),
    { host: 'smtp.example.com', port: 587, security: 'start_tls' }, oidc));
  assert.equal(provider.authentication.kind, 'o_auth_provider');
  assert.equal(provider.authentication.app.clientId, CLIENT_ID);
  assert.equal(provider.mailboxCapacity, 100);

  const per = await directory.createProfile(genericProfile('Per mailbox', imap('imap.example.com', 993),
    { host: 'smtp.example.com', port: 587, security: 'start_tls' }, { kind: 'credentials_per_mailbox' }));
  const box = await directory.createMailbox({ ...userMailbox('p@example.com'), profileId: per.id,
    credentials: { username: 'p', password: 'mailbox-pass-xyz' } });
  assert.equal(box.credentials.username, 'p');
  assert.ok(box.credentials.password instanceof SecretValue);
  assert.ok(!JSON.stringify(box).includes('mailbox-pass-xyz'));
  assert.deepEqual(JSON.parse(JSON.stringify(box.credentials)), { username: 'p', password: '********' });
});

test('a host key (SealKey); the wrong key cannot open the store', async (t) => {
  const db = tempDb(t);
  const key = SealKey.fromBytes(new Uint8Array(32).fill(7));
  assert.equal(String(key), 'SealKey([REDACTED])');
  assert.equal(JSON.stringify({ key }), '{"key":"[REDACTED]"}');
  assert.ok(!util.inspect(key).includes('7,7'));
  const sync = await MailSync.open({ kind: 'sqlite', path: db, key });
  const p = await sync.directory.createProfile(gmail('Keyed'));
  const again = await MailSync.open({ kind: 'sqlite', path: db, key: SealKey.fromBytes(new Uint8Array(32).fill(7)) });
  assert.ok((await again.directory.getProfile(p.id)).authentication.app.clientSecret instanceof SecretValue);
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db, key: SealKey.generate() }), 'seal_key_mismatch');
  await rejectsWith(() => SealKey.fromBytes(new Uint8Array(31)), 'validation', 'seal_key');
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db, key: { bytes: new Uint8Array(32) } }), 'validation', 'key');
  await sync.close();
  await again.close();

  // A key file: created once (0600), then read back.
  const keyFile = `${db}.host-key`;
  const created = SealKey.loadOrCreate(keyFile);
  assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600);
  const other = tempDb(t);
  const first = await MailSync.open({ kind: 'sqlite', path: other, key: created });
  await first.directory.createProfile(gmail('From key file'));
  await first.close();
  for (const key of [SealKey.loadOrCreate(keyFile), SealKey.fromFile(keyFile)]) {
    const reopened = await MailSync.open({ kind: 'sqlite', path: other, key });
    assert.equal((await reopened.directory.findProfile('From key file')).name, 'From key file');
    await reopened.close();
  }
  assert.equal(fs.existsSync(`${other}.key`), false, 'no key file next to the database');
  await rejectsWith(() => SealKey.fromFile(`${db}.missing`), 'store');
});

test('open with a host key and options: both apply; bad options are refused first', async (t) => {
  const db = tempDb(t);
  const bytes = new Uint8Array(32).fill(9);
  const sync = await MailSync.open({ kind: 'sqlite', path: db, key: SealKey.fromBytes(bytes) },
    { ...defaultOptions(), httpTimeoutSecs: 12, consentTtlSecs: 50 });
  assert.equal(sync.options.httpTimeoutSecs, 12);
  assert.equal(sync.options.consentTtlSecs, 50);
  const p = await sync.directory.createProfile(gmail('Keyed'));
  assert.equal(fs.existsSync(`${db}.key`), false);
  const again = await MailSync.open({ kind: 'sqlite', path: db, key: SealKey.fromBytes(bytes) });
  assert.equal((await again.directory.getProfile(p.id)).name, 'Keyed');
  assert.deepEqual(again.options, defaultOptions());
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db, key: SealKey.generate() }, defaultOptions()), 'seal_key_mismatch');
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db, key: SealKey.fromBytes(bytes) }, { ...defaultOptions(), httpTimeoutSecs: 0 }),
    'validation', 'http_timeout_secs');
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db }, { ...defaultOptions(), googleIssuerOverride: 'not a url' }),
    'validation', 'google_issuer_override');
  await rejectsWith(MailSync.open({ kind: 'sqlite', path: db }, { httpTimeoutSecs: 5 }), 'validation', 'extra_root_certs_pem');
  await rejectsWith(MailSync.open({ kind: 'floppy' }), 'validation', 'store');
  await sync.close();
  await again.close();
});

test('close: checkpoints the WAL, is idempotent, later calls reject with store; the data survives', async (t) => {
  const db = tempDb(t);
  const sync = await MailSync.open({ kind: 'sqlite', path: db });
  const p = await sync.directory.createProfile(gmail('Closing', { defaultForNewMailboxes: true }));
  await sync.directory.createMailbox(userMailbox('closing@example.com'));
  assert.equal(fs.existsSync(`${db}-wal`), true);
  assert.equal(await sync.close(), undefined);
  assert.equal(fs.existsSync(`${db}-wal`), false);
  await sync.close();
  await rejectsWith(sync.directory.listProfiles(), 'store');
  await rejectsWith(sync.directory.createMailbox(userMailbox('late@example.com')), 'store');
  const reopened = await MailSync.open({ kind: 'sqlite', path: db });
  assert.ok((await reopened.directory.getProfile(p.id)).authentication.app.clientSecret instanceof SecretValue);
  assert.deepEqual((await reopened.directory.listMailboxes()).map((m) => m.email), ['closing@example.com']);
  await reopened.close();
  // An in-memory store closes too.
  const inMemory = await memory();
  await inMemory.close();
  await rejectsWith(inMemory.directory.listProfiles(), 'store');
});
