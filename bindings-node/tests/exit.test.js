'use strict';
// The process (and a worker thread) ends cleanly after using mailsync, also
// while calls are in flight: the tokio runtime's threads must never complete a
// Promise or call a listener into an environment that is being torn down.
// The race is narrow, so every script runs many times, in parallel, half of
// the runs in pairs on one shared database. A run fails on a non-zero exit, a
// signal, a hang or anything on stderr; the failures' stderr is printed.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const PARALLEL = 8;
const RUN_TIMEOUT_MS = 120_000;
const ADDON = path.resolve(__dirname, '..');

const PRELUDE = `
'use strict';
const { MailSync, appForEnvironment, gmailProfile, googleApp } = require(${JSON.stringify(ADDON)});
const db = process.argv[2];
const open = () => MailSync.open({ kind: 'sqlite', path: db });
const listener = (event) => { throw new Error('listener saw ' + event.kind); };
const gmail = (name) => gmailProfile(name,
  appForEnvironment(googleApp('1234-abc.apps.googleusercontent.com', 'secret'), 'https://crm.example.com'));
`;

const SCRIPTS = {
  // Open, subscriptions, a few calls, close, then the event loop empties.
  clean: `
    (async () => {
      const sync = await open();
      await sync.subscribe(null, listener);
      const { directory } = sync;
      await directory.listProfiles();
      await Promise.all([directory.listMailboxes(), directory.defaultProfile(), directory.findProfile('nobody').catch(() => {}),
        sync.subscribe(null, listener)]);
      await sync.close();
    })();
  `,
  // process.exit() while calls are in flight (one of them writes), a subscription open.
  exitInFlight: `
    (async () => {
      const sync = await open();
      await sync.subscribe(null, listener);
      const { directory } = sync;
      await directory.listProfiles();
      directory.listProfiles();
      directory.createProfile(gmail('p' + process.pid)).catch(() => {});
      directory.listMailboxes();
      sync.subscribe(null, listener);
      process.exit(0);
    })();
  `,
  // A worker thread (its own copy of the addon and environment) is terminated
  // with calls in flight; then the main thread exits with calls in flight.
  workerTerminated: `
    const { Worker } = require('node:worker_threads');
    const worker = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      const { MailSync } = require(${JSON.stringify(ADDON)});
      MailSync.open({ kind: 'sqlite', path: process.argv[2] }).then(async (sync) => {
        await sync.subscribe(null, () => {});
        await sync.directory.listProfiles();
        for (let i = 0; i < 20; i++) sync.directory.listProfiles();
        parentPort.postMessage('busy');
      });
    \`, { eval: true, argv: [db] });
    worker.on('error', (e) => { console.error('worker error', e); process.exitCode = 3; });
    worker.once('message', async () => {
      await worker.terminate();
      const sync = await open();
      sync.directory.listProfiles();
      process.exit(0);
    });
  `,
};

function runOne(script, db) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, db], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => { stderr += chunk; });
    const timer = setTimeout(() => { stderr += `(hung: killed after ${RUN_TIMEOUT_MS} ms)\n`; child.kill('SIGKILL'); },
      RUN_TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ db: path.basename(db), code, signal, stderr });
    });
  });
}

/** Runs `group()` for every group, at most PARALLEL groups at a time. */
async function pool(groups, run) {
  const results = [];
  let next = 0;
  async function lane() {
    while (next < groups.length) {
      const group = groups[next++];
      results.push(...(await Promise.all(group.map((db) => run(db)))));
    }
  }
  await Promise.all(Array.from({ length: PARALLEL }, lane));
  return results;
}

async function runMany(t, name, runs, paired) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mailsync-exit-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const script = path.join(dir, `${name}.js`);
  fs.writeFileSync(script, PRELUDE + SCRIPTS[name]);

  // Paired runs share a database that exists already: two processes creating
  // one file at the same moment race in the core's migrations, which is not
  // what this test is about.
  const { MailSync } = require(ADDON);
  const template = path.join(dir, 'template.db');
  const sync = await MailSync.open({ kind: 'sqlite', path: template });
  await sync.close();
  const groups = [];
  for (let i = 0; i < paired / 2; i++) {
    const db = path.join(dir, `shared${i}.db`);
    for (const suffix of ['', '.key']) fs.copyFileSync(template + suffix, db + suffix);
    groups.push([db, db]);
    groups.push([path.join(dir, `solo${i}.db`)]);
  }
  for (let i = paired / 2; i < runs - paired; i++) groups.push([path.join(dir, `solo${i}.db`)]);

  const results = await pool(groups, (db) => runOne(script, db));
  assert.equal(results.length, runs);
  const failures = results.filter((r) => r.code !== 0 || r.signal !== null || r.stderr !== '');
  if (failures.length > 0) {
    const report = failures.slice(0, 10).map((r) =>
      `--- ${r.db}: ${r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`}\n${r.stderr.slice(-3000)}`);
    assert.fail(`${failures.length} of ${runs} runs of '${name}' did not exit cleanly:\n${report.join('\n')}`);
  }
}

test('scripts that close and let the event loop end exit cleanly', (t) => runMany(t, 'clean', 40, 20));
test('process.exit() with calls in flight exits cleanly', (t) => runMany(t, 'exitInFlight', 60, 30));
test('terminating a worker with calls in flight, then exiting, is clean', (t) => runMany(t, 'workerTerminated', 30, 10));
