'use strict';
// Error-code parity with the core, the d.ts union, and the documented mapping.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { mailsync, rejectsWith } = require('./helpers');

const root = path.join(__dirname, '..', '..');

// The core list, read from the source of `ErrorCode` (core/src/error.rs).
function coreCodes() {
  const src = fs.readFileSync(path.join(root, 'core', 'src', 'error.rs'), 'utf8');
  return [...src.matchAll(/=> "([a-z_]+)", transient: (true|false)/g)].map((m) => ({ code: m[1], transient: m[2] === 'true' }));
}

test('errorCodes() equals the core list, in order', () => {
  const core = coreCodes();
  assert.ok(core.length >= 30);
  assert.deepEqual(mailsync.errorCodes(), core.map((c) => c.code));
  for (const { code, transient } of core) {
    assert.equal(mailsync.isTransient(code), transient, code);
    assert.ok(mailsync.nextAction(code).length > 0, code);
  }
  assert.equal(mailsync.isTransient('nope'), null);
  assert.equal(mailsync.nextAction('nope'), null);
});

test('every code maps to MailsyncError in index.d.ts and docs/node.md', () => {
  const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
  const union = dts.match(/export type ErrorCode =([^;]*?)\n\n/s)[1];
  assert.deepEqual([...union.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]), mailsync.errorCodes());
  assert.match(dts, /export declare class MailsyncError extends Error/);
  const doc = fs.readFileSync(path.join(root, 'docs', 'node.md'), 'utf8');
  for (const code of mailsync.errorCodes()) {
    assert.match(doc, new RegExp(`^\\| \`${code}\` \\| \`MailsyncError\` \\|`, 'm'), `docs/node.md lacks ${code}`);
  }
});

test('MailsyncError shape: our code wins over the napi status', async () => {
  const e = await rejectsWith(mailsync.MailSync.inMemory().getProfile('00000000-0000-4000-8000-000000000000'), 'not_found');
  assert.equal(e.name, 'MailsyncError');
  assert.equal(e.field, null);
  assert.equal(e.transient, false);
  assert.equal(e.nextAction, mailsync.nextAction('not_found'));
  assert.match(e.message, /does not exist/);
  assert.ok(e.stack.includes('MailsyncError'));
  assert.ok(Object.getPrototypeOf(e) === mailsync.MailsyncError.prototype);
  const v = await rejectsWith(() => mailsync.OAuthApp.google('x', 'y').forEnvironment('http://crm.example.com'), 'validation');
  assert.equal(typeof v.field, 'string');
  assert.ok(!String(v).includes('y,'));
});

test('errors never carry the client secret', async () => {
  const secret = 'GOCSPX-error-path-secret';
  const e = await rejectsWith(
    () => mailsync.OAuthApp.google('id', secret).forEnvironment('https://crm.example.com').withRedirectUri('http://x').validate(),
    'validation');
  for (const text of [e.message, e.stack, String(e), JSON.stringify(e), require('node:util').inspect(e)]) {
    assert.ok(!text.includes(secret));
  }
});
