// ESM: `import { … } from 'mailsync'` exposes every export of the binding.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import * as esm from '../index.mjs';
import { MailSync, MailsyncError } from '../index.mjs';

const cjs = createRequire(import.meta.url)('..');

test('index.mjs re-exports every binding export', async () => {
  const expected = Object.keys(cjs).filter((n) => n !== '__napiBindingTarget').sort();
  const actual = Object.keys(esm).filter((n) => n !== 'default').sort();
  assert.deepEqual(actual, expected);
  assert.ok(expected.includes('MailsyncError'));
  assert.equal(esm.default, cjs);
  const sync = await MailSync.open({ kind: 'memory' });
  await assert.rejects(sync.directory.getProfile('00000000-0000-4000-8000-000000000000'),
    (e) => e instanceof MailsyncError && e.code === 'not_found');
});
