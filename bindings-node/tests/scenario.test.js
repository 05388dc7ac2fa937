'use strict';
// The four-language scenario (same steps as core/tests and the other bindings).
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync, tempDb, rejectsWith, ENV_URL, CLIENT_ID, SECRET } = require('./helpers');
const { MailSync, OAuthApp, ServerProfile, MailboxSpec } = mailsync;

test('four-language scenario', async (t) => {
  const db = tempDb(t);
  const sync = await MailSync.openSqlite(db);
  assert.ok(sync instanceof MailSync);

  // Gmail profile from an OAuth app for the environment, marked default.
  const app = OAuthApp.google(CLIENT_ID, SECRET).forEnvironment(ENV_URL);
  assert.equal(app.redirectUri, `${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`);
  assert.deepEqual(app.javascriptOrigins, [ENV_URL]);
  assert.ok(app.consentScreen.authorizedDomains.includes('example.com'));
  assert.equal(app.hasClientSecret, true);
  const profile = await sync.createProfile(ServerProfile.gmail('Gmail - sales', app).asDefaultForNewMailboxes());
  assert.ok(profile instanceof ServerProfile);
  assert.equal(profile.defaultForNewMailboxes, true);
  assert.equal(profile.serverType, 'gmail');
  assert.deepEqual(profile.incoming, { protocol: 'imap', host: 'imap.gmail.com', port: 993, security: 'tls' });
  assert.deepEqual(profile.outgoing, { host: 'smtp.gmail.com', port: 587, security: 'start_tls' });
  assert.equal(profile.oauthApp.redirectUri, `${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`);
  assert.equal(profile.mailboxCapacity, 100);
  assert.equal(profile.authentication.kind, profile.toJSON().authentication.kind);

  // 100 mailboxes land on the default profile; the 101st is refused.
  for (let i = 0; i < 100; i++) {
    const email = `user${String(i).padStart(3, '0')}@example.com`;
    const mailbox = await sync.createMailbox(MailboxSpec.user(email));
    assert.equal(mailbox.profileId, profile.id);
    assert.equal(mailbox.email, email);
  }
  const full = await rejectsWith(sync.createMailbox(MailboxSpec.user('user100@example.com')), 'capacity_exceeded');
  assert.equal(full.transient, false);
  assert.equal(full.field, null);
  assert.equal(full.name, 'MailsyncError');

  // An http:// redirect URI is refused with the field named.
  const http = await rejectsWith(
    () => OAuthApp.google(CLIENT_ID, SECRET).forEnvironment('http://contoso.crm.example.com'),
    'validation',
  );
  assert.ok(http.field, 'the field is named');
  const plain = OAuthApp.google(CLIENT_ID, SECRET)
    .forEnvironment(ENV_URL)
    .withRedirectUri('http://contoso.crm.example.com/callback');
  await rejectsWith(sync.createProfile(ServerProfile.gmail('Plain http', plain)), 'validation', 'redirect_uris[1]');

  // The client secret never shows.
  for (const value of [app, profile, profile.authentication, profile.oauthApp]) {
    for (const text of [util.inspect(value, { depth: 10, showHidden: true }), String(value), `${value}`,
      JSON.stringify(value), JSON.stringify({ value }), util.format('%o %O %s %j', value, value, value, value)]) {
      assert.ok(!text.includes(SECRET), `secret leaked: ${text}`);
    }
  }
  assert.match(util.inspect(profile), /ServerProfile/);
  assert.match(util.inspect(profile), /Gmail - sales/);
  assert.match(JSON.stringify(profile), /imap\.gmail\.com/);
  assert.ok(!Object.values(Object.getOwnPropertyDescriptors(Object.getPrototypeOf(app)))
    .some((d) => d.get && String(d.get.call(app)).includes(SECRET)), 'no getter returns the secret');

  // Reopen: a new object on the same file sees everything, secret included (sealed).
  const reopened = await MailSync.openSqlite(db);
  const again = await reopened.findProfile('gmail - SALES');
  assert.equal(again.id, profile.id);
  assert.equal(again.defaultForNewMailboxes, true);
  assert.equal(again.hasClientSecret, true);
  assert.equal(again.oauthApp.hasClientSecret, true);
  assert.equal((await reopened.defaultProfile()).id, profile.id);
  const boxes = await reopened.listMailboxes(profile.id);
  assert.equal(boxes.length, 100);
  assert.equal(boxes[0].email, 'user000@example.com');
  assert.equal(boxes[99].email, 'user099@example.com');
  assert.equal((await reopened.listMailboxes()).length, 100);
  await rejectsWith(reopened.createMailbox(MailboxSpec.user('user100@example.com')), 'capacity_exceeded');
});
