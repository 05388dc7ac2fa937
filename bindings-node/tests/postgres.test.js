'use strict';
// A PostgreSQL store ({ kind: 'postgres', url, key }) against the local
// stack's PostgreSQL, in a schema of the test's own (dropped at the end):
// records survive a reopen, and another key is refused with the same error
// as SQLite's.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const { mailsync, rejectsWith, gmail } = require('./helpers');
const { stack, needsStack } = require('./stack');
const { MailSync, SealKey, defaultOptions } = mailsync;

const psql = (url, sql) => execFileSync('psql', ['-q', '-v', 'ON_ERROR_STOP=1', url, '-c', sql], { stdio: 'ignore' });

test('a postgres store keeps records and refuses another key', needsStack(), async () => {
  const server = stack().postgres.url;
  const schema = `nodetest_${crypto.randomUUID().replace(/-/g, '')}`;
  psql(server, `CREATE SCHEMA "${schema}"`);
  try {
    const url = `${server}?options[search_path]=${schema}`;
    const key = SealKey.generate();
    const sync = await MailSync.open({ kind: 'postgres', url, key, poolSize: 2 }, defaultOptions());
    await sync.directory.createProfile(gmail('Shared'));
    await sync.close();

    const again = await MailSync.open({ kind: 'postgres', url, key });
    assert.equal((await again.directory.findProfile('Shared')).name, 'Shared');
    await again.close();

    await rejectsWith(MailSync.open({ kind: 'postgres', url, key: SealKey.generate() }), 'seal_key_mismatch');
  } finally {
    psql(server, `DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  }
});
