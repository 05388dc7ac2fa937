'use strict';
// Shared helpers for the node:test suites.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const assert = require('node:assert/strict');

const mailsync = require('..');
const { MailSync, appForEnvironment, googleApp, gmailProfile } = mailsync;

const ENV_URL = 'https://contoso.crm.example.com';
const CLIENT_ID = '1234-abc.apps.googleusercontent.com';
const SECRET = 'GOCSPX-super-secret-value-42';
const UNKNOWN_ID = '00000000-0000-4000-8000-000000000000';

function tempDb(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailsync-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'mailsync.db');
}

/** The OAuth app of the environment (the client secret inside, shown as '********'). */
const app = (clientId = CLIENT_ID, secret = SECRET) => appForEnvironment(googleApp(clientId, secret), ENV_URL);

/** A Gmail profile record, with fields of `extra` replaced. */
const gmail = (name = 'G', extra = {}) => ({ ...gmailProfile(name, app()), ...extra });

/** An in-memory store. */
const memory = (options) => MailSync.open({ kind: 'memory' }, options);

/** Asserts that `fn` throws (or the promise rejects) with a MailsyncError of `code`. */
async function rejectsWith(fnOrPromise, code, field) {
  let caught;
  try {
    await (typeof fnOrPromise === 'function' ? fnOrPromise() : fnOrPromise);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught, `expected a ${code} error, nothing was thrown`);
  assert.ok(caught instanceof mailsync.MailsyncError, `not a MailsyncError: ${caught && caught.stack}`);
  assert.ok(caught instanceof Error);
  assert.equal(caught.code, code, `code: ${caught.message}`);
  if (field !== undefined) assert.equal(caught.field, field, caught.message);
  assert.equal(typeof caught.transient, 'boolean');
  assert.equal(typeof caught.nextAction, 'string');
  assert.ok(caught.nextAction.length > 0);
  return caught;
}

/** Keeps the event loop alive until `promise` settles: a subscription does not
 *  (its listener is weak), so a test that only waits for an event must. */
function keepAlive(promise) {
  const timer = setInterval(() => {}, 60_000);
  return promise.finally(() => clearInterval(timer));
}

/** Collects the events of a subscription; `next(kind, mailboxId)` resolves on a match. */
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
    return seen ? Promise.resolve(seen) : keepAlive(new Promise((resolve) => waiters.push({ kind, id, resolve })));
  };
  const kinds = (id) => events.filter((e) => !id || e.mailboxId === id).map((e) => e.kind);
  return { events, listener, next, kinds };
}

module.exports = { mailsync, tempDb, rejectsWith, recorder, keepAlive, app, gmail, memory, ENV_URL, CLIENT_ID, SECRET, UNKNOWN_ID };
