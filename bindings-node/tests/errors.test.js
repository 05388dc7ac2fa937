'use strict';
// Error-code parity with the core, the d.ts union, and the documented mapping.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const { mailsync, rejectsWith, gmail, memory, UNKNOWN_ID } = require('./helpers');
const { appForEnvironment, errorCodes, errorIsTransient, errorNextAction, googleApp, gmailProfile, validateProfile } = mailsync;

const root = path.join(__dirname, '..', '..');

// The core list, read from the source of `ErrorCode` (core/src/error.rs).
function coreCodes() {
  const src = fs.readFileSync(path.join(root, 'core', 'src', 'error.rs'), 'utf8');
  return [...src.matchAll(/=> "([a-z_]+)", transient: (true|false)/g)].map((m) => ({ code: m[1], transient: m[2] === 'true' }));
}

test('errorCodes() equals the core list, in order, with transient and next action', async () => {
  const core = coreCodes();
  assert.ok(core.length >= 30);
  assert.deepEqual(errorCodes(), core.map((c) => c.code));
  assert.deepEqual(Object.values(mailsync.ErrorCode), errorCodes());
  for (const { code, transient } of core) {
    assert.equal(errorIsTransient(code), transient, code);
    assert.ok(errorNextAction(code).length > 0, code);
  }
  await rejectsWith(() => errorIsTransient('nope'), 'validation', 'code');
  await rejectsWith(() => errorNextAction('nope'), 'validation', 'code');
});

test('every code maps to MailsyncError in index.d.ts and docs/node.md', () => {
  const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
  const union = dts.match(/^export type ErrorCode = (.*)$/m)[1];
  assert.deepEqual([...union.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]), errorCodes());
  assert.match(dts, /export declare class MailsyncError extends Error/);
  const doc = fs.readFileSync(path.join(root, 'docs', 'node.md'), 'utf8');
  for (const code of errorCodes()) {
    assert.match(doc, new RegExp(`^\\| \`${code}\` \\| \`MailsyncError\` \\|`, 'm'), `docs/node.md lacks ${code}`);
  }
});

test('MailsyncError shape: our code wins over the napi status', async () => {
  const { directory } = await memory();
  const e = await rejectsWith(directory.getProfile(UNKNOWN_ID), 'not_found');
  assert.equal(e.name, 'MailsyncError');
  assert.equal(e.field, null);
  assert.equal(e.transient, false);
  assert.equal(e.nextAction, errorNextAction('not_found'));
  assert.match(e.message, /does not exist/);
  assert.ok(e.stack.includes('MailsyncError'));
  assert.ok(Object.getPrototypeOf(e) === mailsync.MailsyncError.prototype);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'field', 'nextAction', 'transient']);
  const v = await rejectsWith(() => appForEnvironment(googleApp('x', 'y'), 'http://crm.example.com'), 'validation');
  assert.equal(v.field, 'environment_url');
  // A value napi cannot convert is the same class, code and field naming.
  const c = await rejectsWith(directory.getProfile(12345), 'validation', 'id');
  assert.equal(c.nextAction, errorNextAction('validation'));
  const conflict = await rejectsWith(directory.updateProfile({ ...(await directory.createProfile(gmail('C'))), version: 0 }), 'conflict');
  assert.equal(conflict.transient, true);
});

test('errors never carry the client secret', async () => {
  const secret = 'GOCSPX-error-path-secret';
  const app = appForEnvironment(googleApp('id', secret), 'https://crm.example.com');
  const errors = [
    await rejectsWith(() => validateProfile(gmailProfile('x', { ...app, redirectUris: [...app.redirectUris, 'http://x'] })), 'validation'),
    await rejectsWith(() => validateProfile({ ...gmailProfile('x', app), incoming: secret }), 'validation', 'incoming.protocol'),
    await rejectsWith(() => validateProfile({ ...gmailProfile('x', app), outgoing: { ...gmailProfile('x', app).outgoing, port: -1 } }),
      'validation', 'outgoing.port'),
  ];
  for (const e of errors) {
    for (const text of [e.message, e.stack, String(e), JSON.stringify(e), util.inspect(e)]) {
      assert.ok(!text.includes(secret), text);
    }
  }
});
