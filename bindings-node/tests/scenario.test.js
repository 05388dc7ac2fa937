'use strict';
// The four-language scenario (same steps as core/tests and the other bindings).
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync, tempDb, rejectsWith, ENV_URL, CLIENT_ID, SECRET } = require('./helpers');
const { MailSync, SecretValue, appForEnvironment, googleApp, gmailProfile, userMailbox } = mailsync;

test('four-language scenario', async (t) => {
  const db = tempDb(t);
  const sync = await MailSync.open({ kind: 'sqlite', path: db });
  assert.ok(sync instanceof MailSync);
  const { directory } = sync;

  // Gmail profile from an OAuth app for the environment, marked default.
  const app = appForEnvironment(googleApp(CLIENT_ID, SECRET), ENV_URL);
  assert.deepEqual(app.redirectUris, [`${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`]);
  assert.deepEqual(app.javascriptOrigins, [ENV_URL]);
  assert.ok(app.consentScreen.authorizedDomains.includes('example.com'));
  assert.ok(app.clientSecret instanceof SecretValue);
  const profile = await directory.createProfile({ ...gmailProfile('Gmail - sales', app), defaultForNewMailboxes: true });
  assert.equal(profile.defaultForNewMailboxes, true);
  assert.equal(profile.serverType, 'gmail');
  assert.deepEqual(profile.incoming, { protocol: 'imap', endpoint: { host: 'imap.gmail.com', port: 993, security: 'tls' } });
  assert.deepEqual(profile.outgoing, { host: 'smtp.gmail.com', port: 587, security: 'start_tls' });
  assert.equal(profile.authentication.kind, 'gmail_o_auth');
  assert.deepEqual(profile.authentication.app.redirectUris, [`${ENV_URL}/_grid/cmds/dlg_gmailoauth.aspx`]);
  assert.equal(profile.mailboxCapacity, 100);

  // 100 mailboxes land on the default profile; the 101st is refused.
  for (let i = 0; i < 100; i++) {
    const email = `user${String(i).padStart(3, '0')}@example.com`;
    const mailbox = await directory.createMailbox(userMailbox(email));
    assert.equal(mailbox.profileId, profile.id);
    assert.equal(mailbox.email, email);
  }
  const full = await rejectsWith(directory.createMailbox(userMailbox('user100@example.com')), 'capacity_exceeded');
  assert.equal(full.transient, false);
  assert.equal(full.field, null);
  assert.equal(full.name, 'MailsyncError');
  assert.equal(await directory.mailboxCount(profile.id), 100);

  // An http:// redirect URI is refused with the field named.
  await rejectsWith(() => appForEnvironment(googleApp(CLIENT_ID, SECRET), 'http://contoso.crm.example.com'),
    'validation', 'environment_url');
  const plain = { ...app, redirectUris: [...app.redirectUris, 'http://contoso.crm.example.com/callback'] };
  await rejectsWith(directory.createProfile(gmailProfile('Plain http', plain)), 'validation', 'redirect_uris[1]');

  // The client secret never shows.
  for (const value of [app, profile, profile.authentication, profile.authentication.app]) {
    for (const text of [util.inspect(value, { depth: 10, showHidden: true }), String(value), `${value}`,
      JSON.stringify(value), JSON.stringify({ value }), util.format('%o %O %s %j', value, value, value, value)]) {
      assert.ok(!text.includes(SECRET), `secret leaked: ${text}`);
    }
  }
  const secret = profile.authentication.app.clientSecret;
  for (const text of [String(secret), `${secret}`, JSON.stringify(secret), util.inspect(secret), util.inspect({ secret })]) {
    assert.match(text, /\*{8}/);
    assert.ok(!text.includes(SECRET));
  }
  assert.ok(secret == '********'); // eslint-disable-line eqeqeq
  assert.match(util.inspect(profile, { depth: 10 }), /Gmail - sales/);
  assert.match(JSON.stringify(profile), /imap\.gmail\.com/);
  assert.match(JSON.stringify(profile), /"clientSecret":"\*{8}"/);

  // Reopen: a new object on the same file sees everything, secret included (sealed).
  const reopened = await MailSync.open({ kind: 'sqlite', path: db });
  const again = await reopened.directory.findProfile('gmail - SALES');
  assert.equal(again.id, profile.id);
  assert.equal(again.defaultForNewMailboxes, true);
  assert.ok(again.authentication.app.clientSecret instanceof SecretValue, 'the stored secret is there');
  assert.equal((await reopened.directory.defaultProfile()).id, profile.id);
  const boxes = await reopened.directory.listMailboxes(profile.id);
  assert.equal(boxes.length, 100);
  assert.equal(boxes[0].email, 'user000@example.com');
  assert.equal(boxes[99].email, 'user099@example.com');
  assert.equal((await reopened.directory.listMailboxes()).length, 100);
  await rejectsWith(reopened.directory.createMailbox(userMailbox('user100@example.com')), 'capacity_exceeded');
  await reopened.close();
  await sync.close();
});
