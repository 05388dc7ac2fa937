'use strict';
// Garbage in: every failure is a MailsyncError with a code, and the process survives.
const test = require('node:test');
const assert = require('node:assert/strict');
const { mailsync, rejectsWith, app, gmail, memory, ENV_URL, CLIENT_ID, SECRET, UNKNOWN_ID } = require('./helpers');
const { MailSync, SealKey, appForEnvironment, appWithAudience, appWithTestUsers, genericProfile, gmailProfile,
  googleApp, userMailbox, validateProfile } = mailsync;

const imap = { protocol: 'imap', endpoint: { host: 'imap.example.com', port: 993, security: 'tls' } };
const smtp = { host: 'smtp.example.com', port: 587, security: 'start_tls' };

test('empty strings', async () => {
  const { directory } = await memory();
  await rejectsWith(() => appForEnvironment(googleApp(CLIENT_ID, SECRET), ''), 'validation', 'environment_url');
  await rejectsWith(() => validateProfile(gmailProfile('x', app('', SECRET))), 'validation', 'client_id');
  await rejectsWith(() => validateProfile(gmailProfile('x', app(CLIENT_ID, ''))), 'validation', 'client_secret');
  await rejectsWith(directory.createProfile(gmail('')), 'validation', 'name');
  await rejectsWith(directory.createMailbox(userMailbox('')), 'validation', 'email');
  // Ids cross as strings; one that names nothing is not_found.
  await rejectsWith(directory.getProfile(''), 'not_found');
  await rejectsWith(directory.findProfile(''), 'not_found');
  await rejectsWith(directory.findMailbox(''), 'not_found');
  await rejectsWith(directory.createMailbox({ ...userMailbox('a@example.com'), profileId: '' }), 'not_found');
  await rejectsWith(() => appForEnvironment(googleApp(CLIENT_ID, SECRET), ENV_URL, ''), 'validation', 'redirect_path');
});

test('absurd ports and numbers are validation errors naming the field', async () => {
  const { directory } = await memory();
  for (const port of [0, 70000, -1, 1.5, NaN, Infinity, 2 ** 40]) {
    // 0 passes the conversion and is refused by the core, which names the
    // incoming endpoint's fields as in the JSON form ('incoming.port').
    const field = port === 0 ? 'incoming.port' : 'incoming.endpoint.port';
    const e = await rejectsWith(directory.createProfile(gmail(`port ${port}`, { incoming: { ...imap, endpoint: { ...imap.endpoint, port } } })),
      'validation', field);
    assert.match(e.message, new RegExp(`^${field.replace('.', '\\.')}: `));
    await rejectsWith(() => validateProfile(gmail('x', { outgoing: { ...smtp, port } })), 'validation', 'outgoing.port');
  }
  await rejectsWith(directory.createProfile(gmail('x', { mailboxCapacity: -1 })), 'validation', 'mailbox_capacity');
  await rejectsWith(directory.createProfile(gmail('x', { mailboxCapacity: 2.5 })), 'validation', 'mailbox_capacity');
  await rejectsWith(directory.createProfile(gmail('x', { mailboxCapacity: 0 })), 'validation', 'mailbox_capacity');
  await rejectsWith(directory.createProfile(gmail('x', { mailboxCapacity: 101 })), 'validation', 'mailbox_capacity');
  const p = gmail();
  await rejectsWith(directory.createProfile({ ...p, processing: { ...p.processing, connectionTimeoutSecs: -1 } }),
    'validation', 'processing.connection_timeout_secs');
  await rejectsWith(directory.createProfile({ ...p, processing: { ...p.processing, processEmailReceivedAfter: 'yesterday' } }),
    'validation', 'processing.process_email_received_after');
  await rejectsWith(directory.createProfile({ ...p, processing: { ...p.processing, processEmailReceivedAfter: new Date('nope') } }),
    'validation', 'processing.process_email_received_after');
  await rejectsWith(directory.createProfile({ ...p, processing: { ...p.processing, connectionTimeoutSecs: 1000 } }),
    'validation', 'processing.connection_timeout_secs');
  await rejectsWith(() => validateProfile(gmail('x', { incoming: { ...imap, endpoint: { ...imap.endpoint, host: '' } } })),
    'validation', 'incoming.host');
});

test('unknown ids, malformed emails, URLs and lists', async () => {
  const { directory } = await memory();
  await directory.createProfile(gmail('G', { defaultForNewMailboxes: true }));
  for (const id of [UNKNOWN_ID, 'not-a-uuid']) {
    await rejectsWith(directory.getProfile(id), 'not_found');
    await rejectsWith(directory.getMailbox(id), 'not_found');
    await rejectsWith(directory.setDefaultProfile(id), 'not_found');
    await rejectsWith(directory.deleteProfile(id), 'not_found');
    await rejectsWith(directory.deleteMailbox(id), 'not_found');
    await rejectsWith(directory.state(id), 'not_found');
    await rejectsWith(directory.moveMailbox(id, id), 'not_found');
    await rejectsWith(directory.createMailbox({ ...userMailbox('x@example.com'), profileId: id }), 'not_found');
    assert.deepEqual(await directory.listMailboxes(id), []);
  }
  for (const email of ['no-at-sign', 'a@', '@example.com', 'a b@example.com', 'x'.repeat(400) + '@example.com']) {
    await rejectsWith(directory.createMailbox(userMailbox(email)), 'validation', 'email');
  }
  await rejectsWith(() => appForEnvironment(googleApp(CLIENT_ID, SECRET), 'not a url'), 'validation', 'environment_url');
  await rejectsWith(directory.createProfile(gmailProfile('Bad users', appWithTestUsers(app(), ['not-an-email']))),
    'validation', 'consent_screen.test_users[0]');
  await rejectsWith(() => validateProfile(genericProfile('O', imap, smtp,
    { kind: 'o_auth_provider', issuer: 'ftp://issuer', app: app(), mailScopes: ['mail'] })), 'validation', 'authentication.issuer');
});

test('wrong types: validation errors naming the parameter or field; the process survives', async () => {
  const sync = await memory();
  const { directory } = sync;
  const wrong = [
    [() => googleApp(42, SECRET), 'client_id'],
    [() => googleApp(), 'client_id'],
    [() => googleApp(CLIENT_ID), 'client_secret'],
    [() => appWithAudience(app(), 'nobody', 'testing'), 'user_type'],
    [() => appWithTestUsers(app(), 'not-an-array'), 'users'],
    [() => gmailProfile('x', { clientId: 'forged' }), 'app.application_type'],
    [() => gmailProfile('x', null), 'app'],
    [() => gmailProfile('x', { ...app(), clientSecret: 42 }), 'app.client_secret'],
    [() => validateProfile(gmail('x', { incoming: { ...imap, endpoint: { host: 'h', port: 'x', security: 'tls' } } })), 'incoming.endpoint.port'],
    [() => validateProfile(gmail('x', { incoming: { ...imap, endpoint: { host: 'h', port: 993, security: 'rot13' } } })), 'incoming.endpoint.security'],
    [() => validateProfile(gmail('x', { incoming: 'imap.example.com:993' })), 'incoming.protocol'],
    [() => validateProfile(gmail('x', { authentication: { kind: 'carrier_pigeon' } })), 'authentication'],
    [() => directory.createProfile({ name: 'plain object' }), 'id'],
    [() => directory.createMailbox('a@example.com'), 'email'],
    [() => directory.getProfile(12345), 'id'],
    [() => directory.moveMailbox(UNKNOWN_ID, 7), 'profile'],
    [() => sync.connections.refreshAccessToken(UNKNOWN_ID, { token: 'x' }), 'rejected'],
    [() => sync.checks.testAndEnable(UNKNOWN_ID), 'options'],
    [() => sync.subscribe(null, 'not a function'), 'listener'],
    [() => MailSync.open({ kind: 'sqlite', path: 42 }), 'path'],
    [() => MailSync.open('memory'), 'kind'],
    [() => SealKey.fromBytes('thirty-two-bytes-of-text........'), 'bytes'],
  ];
  for (const [call, field] of wrong) {
    const e = await rejectsWith(call, 'validation', field).catch((err) => {
      throw new Error(`${call}: ${err.message}`);
    });
    assert.ok(e.message.startsWith(`${field}: `), e.message);
  }
  // Still alive and working.
  const p = await directory.createProfile(gmail('after garbage'));
  assert.equal((await directory.getProfile(p.id)).name, 'after garbage');
});
