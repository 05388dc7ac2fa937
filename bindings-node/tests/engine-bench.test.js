'use strict';
// Opt-in benchmark (MAILSYNC_BENCH=1): an initial sync of 5,000 messages into
// a JavaScript sink against the same sync into a sink written in Rust
// (`RustSinkForTest`, which keeps each message's bytes by key). The
// JavaScript sinks do the same: `kept.set(m.key, m.raw)`. Each run is a new
// store syncing the same 5,000 messages of one INBOX (the first 5,000 UIDs;
// the account and the filling are those of the Python benchmark); runs
// alternate, the first is a warm-up, the medians are compared.
//
//   cd bindings-node && npx napi build --platform --release && MAILSYNC_BENCH=1 node --test tests/engine-bench.test.js
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { mailsync } = require('./helpers');
const { needsStack, setup, connected } = require('./stack');
const { Engine, RustSinkForTest, defaultEngineOptions } = mailsync;

const ACCOUNT = 'sync10@example.test';
const MESSAGES = 5000;
const ROUNDS = Number(process.env.MAILSYNC_BENCH_ROUNDS || 3);
const LIMIT = 1.1;
const bench = process.env.MAILSYNC_BENCH === '1' ? needsStack() : { skip: 'benchmark: set MAILSYNC_BENCH=1' };

class Plain {
  constructor() {
    this.kept = new Map();
  }

  deliver(messages) {
    const { kept } = this;
    for (const m of messages) kept.set(m.key, m.raw);
    return messages.map(() => 'stored');
  }
}

class Async extends Plain {
  async deliver(messages) {
    return Plain.prototype.deliver.call(this, messages);
  }
}

const KINDS = { rust: () => new RustSinkForTest(), node: () => new Plain(), 'node-async': () => new Async() };

async function oneRun(t, kind) {
  const env = await setup(t);
  const { mailbox } = await connected(env, ACCOUNT, undefined, { incomingFilter: 'all' }); // the whole INBOX
  const report = await env.sync.checks.testAndEnable(mailbox.id, { sendTestMessage: false });
  assert.equal(report.outcome, 'success', JSON.stringify(report));
  const engine = new Engine(env.sync, KINDS[kind](), { ...defaultEngineOptions(), messagesPerCycle: MESSAGES });
  const started = process.hrtime.bigint();
  const cycle = await engine.runOnce(mailbox.id);
  const took = Number(process.hrtime.bigint() - started) / 1e9;
  assert.equal(cycle.errorCode, undefined, cycle.errorMessage);
  await env.sync.close();
  return [took, cycle];
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

test('a JavaScript sink is within 10% of the Rust one', bench, async (t) => {
  let [, report] = await oneRun(t, 'rust'); // warm-up; is the INBOX full enough?
  if (report.delivered < MESSAGES) {
    const per = Math.ceil((MESSAGES - report.delivered) / 10);
    const deliver = path.join(__dirname, '..', '..', 'tests', 'stack', 'bin', 'deliver');
    await Promise.all(Array.from({ length: 10 }, (_, i) => promisify(execFile)(deliver,
      [ACCOUNT, '--count', String(per), '--size', '1024', '--subject-prefix', `bench-${MESSAGES} fill${i}`],
      { maxBuffer: 1 << 24 })));
    [, report] = await oneRun(t, 'rust');
  }
  assert.equal(report.delivered, MESSAGES);
  const times = Object.fromEntries(Object.keys(KINDS).map((k) => [k, []]));
  for (let n = 0; n < ROUNDS; n++) {
    const order = n % 2 === 0 ? Object.keys(KINDS) : Object.keys(KINDS).reverse();
    for (const kind of order) {
      const [took, r] = await oneRun(t, kind);
      assert.equal(r.delivered, MESSAGES, kind);
      times[kind].push(took);
    }
  }
  const medians = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  console.log(`${MESSAGES} messages, ${ROUNDS} rounds, ${Math.round(report.bytes / MESSAGES)} bytes each on average`);
  for (const [kind, runs] of Object.entries(times)) {
    console.log(`  ${kind.padEnd(11)} median ${medians[kind].toFixed(3)} s  (${(medians[kind] / medians.rust).toFixed(3)}x rust)`
      + `  runs ${runs.map((x) => x.toFixed(3)).join(', ')}`);
  }
  assert.ok(medians.node <= LIMIT * medians.rust, JSON.stringify(medians));
});
