'use strict';
// Helpers for the suites that run against the local test stack (tests/stack/up,
// called by test.sh; docs/testing.md). Each test gets its own SQLite file.
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { mailsync, tempDb } = require('./helpers');
const { MailSync, OAuthApp, ServerProfile, MailboxSpec } = mailsync;

const repo = path.join(__dirname, '..', '..');
const stackDir = process.env.MAILSYNC_STACK_DIR || path.join(repo, 'tests', 'stack', 'run');
const run = promisify(execFile);

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

/** Collects events from a MailSync listener; `next(kind, mailboxId)` resolves on a match. */
function recorder() {
  const events = [];
  const waiters = [];
  const matches = (e, kind, id) => e.kind === kind && (!id || e.mailboxId === id);
  const listener = (event) => {
    events.push(event);
    for (const w of waiters.filter((w) => matches(event, w.kind, w.id))) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(event);
    }
  };
  const next = (kind, id) => {
    const seen = events.find((e) => matches(e, kind, id));
    return seen ? Promise.resolve(seen) : new Promise((resolve) => waiters.push({ kind, id, resolve }));
  };
  return { events, listener, next };
}

function settings(extra = {}) {
  const s = stack();
  return {
    googleIssuerOverride: s.oauth.issuer,
    extraRootCertsPem: [fs.readFileSync(s.ca_cert, 'utf8')],
    ...extra,
  };
}

/** A fresh store with the stack's Gmail app, an IMAP+SMTP(STARTTLS) default profile and a POP3+SMTP(TLS) profile. */
async function setup(t) {
  const s = stack();
  const events = recorder();
  const sync = await MailSync.openSqliteWith(tempDb(t), settings({ eventListener: events.listener }));
  const app = OAuthApp.google(s.oauth.client_id, s.oauth.client_secret)
    .forEnvironment('http://localhost:8765')
    .withAudience('external', 'testing')
    .withTestUsers(s.accounts.map((a) => a.email));
  const imap = await sync.createProfile(
    ServerProfile.gmail('Stack IMAP', app)
      .asDefaultForNewMailboxes()
      .withIncoming({ host: s.imap.host, port: s.imap.tls_port, security: 'tls' })
      .withOutgoing({ host: s.smtp.host, port: s.smtp.starttls_port, security: 'start_tls' }));
  const pop3 = await sync.createProfile(
    ServerProfile.gmail('Stack POP3', app)
      .usePop3()
      .withIncoming({ host: s.pop3.host, port: s.pop3.tls_port, security: 'tls' })
      .withOutgoing({ host: s.smtp.host, port: s.smtp.tls_port, security: 'tls' }));
  return { stack: s, sync, events, imap, pop3 };
}

/** Walks the provider's consent pages; resolves with the redirect URL. */
async function consent(url, email, ...flags) {
  const { stdout } = await run(path.join(repo, 'tests', 'stack', 'bin', 'consent'), [url, '--email', email, ...flags]);
  return stdout.trim();
}

/** Revokes the whole grant of `token` at the provider, like tests/stack/bin/revoke (which
 *  refuses a token that starts with '-', as a random one sometimes does). */
async function revoke(token) {
  const o = stack().oauth;
  const res = await fetch(o.revocation_endpoint, {
    method: 'POST',
    body: new URLSearchParams({ token, client_id: o.client_id, client_secret: o.client_secret }),
  });
  if (res.status !== 200) throw new Error(`revoke: provider answered ${res.status}: ${await res.text()}`);
}

/** Creates a mailbox (on `profile`, else the default) and connects it through the consent pages. */
async function connected(env, email, profile) {
  let spec = MailboxSpec.user(email);
  if (profile) spec = spec.onProfile(profile.id);
  const mailbox = await env.sync.createMailbox(spec);
  const request = await env.sync.connect(mailbox.id);
  const back = await consent(request.url, email);
  return env.sync.completeConnect(back);
}

module.exports = { stack, needsStack, recorder, settings, setup, consent, revoke, connected };
