'use strict';
// Shared helpers for the node:test suites.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const assert = require('node:assert/strict');

const mailsync = require('..');

const ENV_URL = 'https://contoso.crm.example.com';
const CLIENT_ID = '1234-abc.apps.googleusercontent.com';
const SECRET = 'GOCSPX-super-secret-value-42';

function tempDb(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailsync-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'mailsync.db');
}

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
  if (field !== undefined) assert.equal(caught.field, field);
  assert.equal(typeof caught.transient, 'boolean');
  assert.equal(typeof caught.nextAction, 'string');
  assert.ok(caught.nextAction.length > 0);
  return caught;
}

module.exports = { mailsync, tempDb, rejectsWith, ENV_URL, CLIENT_ID, SECRET };
