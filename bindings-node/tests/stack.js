'use strict';
// Helpers for the suites that run against the local test stack (tests/stack/up,
// called by test.sh; docs/testing.md). Each test gets its own SQLite file.
//
// The providers revoke like Google: revoking any token (which disconnect,
// scope_not_granted and account_mismatch do too) revokes every grant of that
// account on that OAuth client, in every suite sharing the stack. So the tests
// that revoke use dave on the `short` client (5-second access tokens), a pair
// no other test of this suite nor of the Rust suites uses, and they all live in
// oauth.test.js, whose tests run one after the other; the other stack tests use
// the `web` client and never revoke.
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { mailsync, tempDb, recorder } = require('./helpers');
const { MailSync, appForEnvironment, appWithAudience, appWithTestUsers, defaultOptions, googleApp, gmailProfile,
  profileUsePop3, userMailbox } = mailsync;

const repo = path.join(__dirname, '..', '..');
const stackDir = process.env.MAILSYNC_STACK_DIR || path.join(repo, 'tests', 'stack', 'run');
const run = promisify(execFile);

/** The account + client pair of the tests that revoke (see above). */
const REVOKING = { email: 'dave@example.test', client: 'short' };

let cached;
/** stack.json, or null when the stack is not up (test.sh brings it up). */
function stack() {
  if (cached === undefined) {
    const file = path.join(stackDir, 'stack.json');
    cached = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null;
  }
  return cached;
}

/** Skip option for node:test when the stack is not running. */
function needsStack() {
  // test.sh brings the stack up and sets MAILSYNC_NODE_REQUIRE_STACK: there a
  // missing stack fails the suite instead of skipping it.
  if (stack() || process.env.MAILSYNC_NODE_REQUIRE_STACK) return {};
  return { skip: 'the test stack is not running (run tests/stack/up or test.sh)' };
}

/** Options pointing Gmail OAuth at the stack's provider, trusting its CA. */
function options(extra = {}) {
  const s = stack();
  return { ...defaultOptions(), googleIssuerOverride: s.oauth.issuer, extraRootCertsPem: [fs.readFileSync(s.ca_cert, 'utf8')], ...extra };
}

/**
 * A fresh store (its SQLite file: `db`) subscribed to every event, with the
 * stack's Gmail app (client `client`), an IMAP+SMTP(STARTTLS) default profile
 * and a POP3+SMTP(TLS) profile.
 */
async function setup(t, client = 'web') {
  const s = stack();
  const c = s.oauth.clients[client];
  const events = recorder();
  const db = tempDb(t);
  const sync = await MailSync.open({ kind: 'sqlite', path: db }, options());
  t.after(() => sync.close());
  await sync.subscribe(null, events.listener);
  const app = appWithTestUsers(
    appWithAudience(appForEnvironment(googleApp(c.client_id, c.client_secret), 'http://localhost:8765'), 'external', 'testing'),
    s.accounts.map((a) => a.email));
  const imap = await sync.directory.createProfile({
    ...gmailProfile('Stack IMAP', app),
    defaultForNewMailboxes: true,
    incoming: { protocol: 'imap', endpoint: { host: s.imap.host, port: s.imap.tls_port, security: 'tls' } },
    outgoing: { host: s.smtp.host, port: s.smtp.starttls_port, security: 'start_tls' },
  });
  const pop3 = await sync.directory.createProfile({
    ...profileUsePop3(gmailProfile('Stack POP3', app)),
    incoming: { protocol: 'pop3', endpoint: { host: s.pop3.host, port: s.pop3.tls_port, security: 'tls' } },
    outgoing: { host: s.smtp.host, port: s.smtp.tls_port, security: 'tls' },
  });
  return { stack: s, client, db, sync, events, imap, pop3 };
}

/** Walks the provider's consent pages; resolves with the redirect URL. */
async function consent(url, email, ...flags) {
  const { stdout } = await run(path.join(repo, 'tests', 'stack', 'bin', 'consent'), [url, '--email', email, ...flags]);
  return stdout.trim();
}

/** Revokes the whole grant of `token` at the provider as `client` (its owner), like
 *  tests/stack/bin/revoke (which refuses a token that starts with '-', as a random one can). */
async function revoke(token, client) {
  const o = stack().oauth;
  const c = o.clients[client];
  const res = await fetch(o.revocation_endpoint, {
    method: 'POST',
    body: new URLSearchParams({ token, client_id: c.client_id, client_secret: c.client_secret }),
  });
  if (res.status !== 200) throw new Error(`revoke: provider answered ${res.status}: ${await res.text()}`);
}

/** Creates a mailbox (on `profile`, else the default; fields of `extra` replaced) and
 *  connects it through the consent pages. */
async function connected(env, email, profile, extra = {}) {
  const mailbox = await env.sync.directory.createMailbox({ ...userMailbox(email), profileId: profile && profile.id, ...extra });
  const request = await env.sync.connections.connect(mailbox.id);
  const back = await consent(request.url, email);
  return env.sync.connections.complete(back);
}

/**
 * Delivers `count` messages (subjects "<prefix> i/count") into the INBOX of
 * `email` over LMTP (tests/stack/bin/deliver; `extra`: its other flags);
 * resolves with their Message-IDs, without angle brackets.
 */
async function deliver(email, count, prefix, ...extra) {
  const bin = path.join(repo, 'tests', 'stack', 'bin', 'deliver');
  const { stdout } = await run(bin, [email, '--count', String(count), '--subject-prefix', prefix, ...extra]);
  return stdout.split('\n').map((line) => line.trim().replace(/^<|>$/g, '')).filter(Boolean);
}

module.exports = { stack, needsStack, options, setup, consent, revoke, connected, deliver, REVOKING };
