'use strict';
// The sync engine from Node: a JavaScript object as the core's MessageSink
// (plain and async methods), sink failures, the incoming filter's question,
// progress, start/stop (against the local stack); EngineOptions and argument
// checks, and what keeps the process alive (in memory).
//
// Each stack test connects its own account (sync13, sync14, sync15, sync16,
// sync17, sync19) and delivers its own mail (tests/stack/bin/deliver) with a unique
// subject prefix: INBOXes keep mail across runs (and may get mail from other
// suites), so mailboxes take in mail received from 2 s before they were
// created, and the assertions look at this test's messages only.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { mailsync, rejectsWith, memory } = require('./helpers');
const { needsStack, setup, connected, deliver } = require('./stack');
const { Engine, EngineHandle, MailsyncError, Subscription, defaultEngineOptions } = mailsync;

const opts = needsStack();
const unique = (prefix) => `${prefix}-${crypto.randomUUID().slice(0, 12)}`;
/** This test's messages: subjects "<prefix> i/n". */
const mine = (messages, prefix) => messages.filter((m) => (m.subject ?? '').startsWith(`${prefix} `));
/** i of a subject "<prefix> i/n". */
const index = (m) => Number(m.subject.split(' ').pop().split('/')[0]);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const sorted = (numbers) => [...numbers].sort((a, b) => a - b);

/** The core's key: `mid:<Message-ID>#<SHA-256 of the header section, first 16 bytes, hex>`. */
function expectedKey(raw, messageId) {
  const end = raw.indexOf('\r\n\r\n');
  const header = end >= 0 ? raw.subarray(0, end + 2) : raw;
  return `mid:${messageId}#${crypto.createHash('sha256').update(header).digest().subarray(0, 16).toString('hex')}`;
}

/** Rejects after `ms` unless `promise` settles first. */
function within(ms, promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A connected, tested and enabled mailbox for `email`, taking in all mail received from 2 s ago. */
async function enabled(t, email, extra = {}) {
  const env = await setup(t);
  const { mailbox } = await connected(env, email, undefined, {
    incomingFilter: 'all',
    processEmailReceivedAfter: new Date(Date.now() - 2000),
    ...extra,
  });
  const report = await env.sync.checks.testAndEnable(mailbox.id, { sendTestMessage: false });
  assert.equal(report.outcome, 'success', JSON.stringify(report, null, 1));
  return { env, mailbox };
}

/** A sink that stores by key and keeps what it was handed (methods use `this`). */
class PlainSink {
  constructor() {
    this.handed = [];
    this.byKey = new Map();
    this.batches = 0;
  }

  store(messages) {
    assert.ok(this instanceof PlainSink, 'the sink is `this`');
    this.batches += 1;
    this.handed.push(...messages);
    for (const m of messages) this.byKey.set(m.key, m);
    return messages.map(() => 'stored');
  }

  deliver(messages) {
    return this.store(messages);
  }
}

class AsyncSink extends PlainSink {
  async deliver(messages) {
    await new Promise((resolve) => setImmediate(resolve));
    return this.store(messages);
  }
}

for (const [kind, Sink, email] of [
  ['plain', PlainSink, 'sync13@example.test'],
  ['async', AsyncSink, 'sync14@example.test'],
]) {
  test(`(a) a real sync hands every message once, with its fields (${kind} deliver)`, opts, async (t) => {
    const { env, mailbox } = await enabled(t, email);
    const prefix = unique('node-engine-a');
    const ids = await deliver(email, 20, prefix);
    const sink = new Sink();
    const engine = new Engine(env.sync, sink, defaultEngineOptions());
    assert.ok(engine instanceof Engine);
    assert.deepEqual(engine.options, defaultEngineOptions());

    const report = await engine.runOnce(mailbox.id);
    assert.equal(report.errorCode, undefined, report.errorMessage);
    assert.equal(report.errorMessage, undefined);
    assert.equal(report.mailboxId, mailbox.id);
    assert.equal(report.email, email);
    const got = mine(sink.handed, prefix);
    assert.deepEqual(got.map((m) => m.messageId).sort(), [...ids].sort()); // every message, once
    assert.deepEqual(sorted(got.map(index)), range(1, 20));
    assert.ok(report.delivered >= 20);
    assert.equal(report.delivered, sink.handed.length);
    assert.equal(report.bytes, sink.handed.reduce((n, m) => n + m.raw.length, 0));

    for (const m of got) {
      assert.equal(m.mailboxId, mailbox.id);
      assert.ok(Buffer.isBuffer(m.raw), 'raw is a Buffer');
      assert.equal(m.raw.length, m.size);
      assert.equal(m.unparsed, false);
      assert.equal(m.key, expectedKey(m.raw, m.messageId));
      assert.deepEqual(m.from, [{ name: 'Test Sender', address: 'sender@outside.example' }]);
      assert.deepEqual(m.to.map((a) => a.address), [email]);
      assert.deepEqual([m.cc, m.inReplyTo, m.references], [[], [], []]);
      const text = m.raw.toString('latin1');
      assert.ok(text.includes(`\r\nMessage-ID: <${m.messageId}>\r\n`), text.slice(0, 400));
      assert.ok(text.includes(`\r\nSubject: ${m.subject}\r\n`), text.slice(0, 400));
      assert.ok(Number.isInteger(m.uid) && m.uid > 0 && m.uidValidity > 0);
      assert.equal(m.uidl ?? null, null);
      assert.equal(m.providerId ?? null, null);
      assert.ok(m.date instanceof Date && m.receivedAt instanceof Date);
    }

    // Nothing new: nothing handed again.
    const again = await engine.runOnce(mailbox.id);
    assert.equal(again.errorCode, undefined, again.errorMessage);
    assert.equal(mine(sink.handed, prefix).length, 20);

    const [row] = (await engine.status()).filter((s) => s.mailboxId === mailbox.id);
    assert.equal(row.incoming.status, 'enabled');
    assert.equal(row.cursor.delivered, report.delivered + again.delivered);
    assert.ok(row.cursor.imap.lastUid >= Math.max(...got.map((m) => m.uid)));
  });
}

test('(b) a sink that fails at the 7th message fails the cycle; the next run hands the 7th again', opts, async (t) => {
  const email = 'sync16@example.test';
  const { env, mailbox } = await enabled(t, email);
  const prefix = unique('node-engine-b');
  await deliver(email, 10, prefix);
  const runs = [];
  let atSeventh = null; // what the sink does with a batch holding the 7th message
  const sink = {
    stored: 0,
    deliver(messages) {
      runs.at(-1).push(...messages);
      if (atSeventh && mine(messages, prefix).some((m) => index(m) === 7)) return atSeventh(messages);
      this.stored += messages.length;
      return messages.map(() => 'stored');
    },
  };
  // One message per batch: the batches before the 7th are acknowledged.
  const engine = new Engine(env.sync, sink, { ...defaultEngineOptions(), batchMessages: 1 });
  async function run(behaviour) {
    atSeventh = behaviour;
    runs.push([]);
    const before = sink.stored;
    const report = await engine.runOnce(mailbox.id);
    assert.equal(report.delivered, sink.stored - before);
    return [report, mine(runs.at(-1), prefix).map(index)];
  }

  let [report, handed] = await run(() => {
    throw new Error('boom at 7');
  });
  assert.equal(report.errorCode, 'sink_failed');
  assert.match(report.errorMessage, /^the sink failed: Error: boom at 7 \[sink_failed\]$/);
  assert.deepEqual(handed, range(1, 7)); // 1-6 stored, the 7th threw

  // The cursor stayed before the 7th: every failure hands it (alone) again.
  const failures = [
    [async () => { throw new TypeError('rejected at 7'); }, /: TypeError: rejected at 7 \[sink_failed\]$/],
    [() => { throw 'a plain string'; }, /: a plain string \[sink_failed\]$/], // eslint-disable-line no-throw-literal
    [() => { throw new MailsyncError('disk full', 'store'); }, /: disk full \[store\]$/],
    [() => ['bogus'], /the sink's deliver must return one outcome per message \('stored', 'skip' or 'retry_later'\)/],
    [async () => null, /the sink's deliver must return one outcome per message/],
    [() => [], /the sink returned 0 outcomes for 1 messages/],
  ];
  for (const [behaviour, message] of failures) {
    [report, handed] = await run(behaviour);
    assert.equal(report.errorCode, 'sink_failed', String(behaviour));
    assert.match(report.errorMessage, message);
    assert.deepEqual(handed, [7]);
    assert.equal(report.delivered, 0);
  }

  // A mailbox is not blamed for its host's sink.
  assert.equal((await env.sync.directory.state(mailbox.id)).incoming.status.status, 'enabled');

  [report, handed] = await run(null);
  assert.equal(report.errorCode, undefined, report.errorMessage);
  assert.deepEqual(handed, range(7, 10));
  const all = new Set(mine(runs.flat(), prefix).map(index));
  assert.deepEqual(sorted(all), range(1, 10));
});

test('(c) replies_to_tracked_email asks the sink\'s tracked(); without it nothing is tracked', opts, async (t) => {
  const email = 'sync17@example.test';
  const { env, mailbox } = await enabled(t, email, { incomingFilter: 'replies_to_tracked_email' });
  const prefix = unique('node-engine-c');
  const ours = `tracked.${crypto.randomUUID()}@crm.example.com`;
  const theirs = `other.${crypto.randomUUID()}@elsewhere.example`;
  await deliver(email, 3, `${prefix}-tracked`, '--in-reply-to', ours);
  await deliver(email, 2, `${prefix}-references`, '--references', `${theirs} ${ours}`);
  await deliver(email, 2, `${prefix}-untracked`, '--in-reply-to', theirs);
  await deliver(email, 2, `${prefix}-new`);

  class Crm extends PlainSink {
    constructor() {
      super();
      this.questions = [];
    }

    async tracked(mailboxId, messageIds) {
      assert.ok(this instanceof Crm, 'the sink is `this`');
      this.questions.push([mailboxId, messageIds]);
      return messageIds.map((id) => id === ours);
    }
  }
  const crm = new Crm();
  const report = await new Engine(env.sync, crm).runOnce(mailbox.id);
  assert.equal(report.errorCode, undefined, report.errorMessage);
  assert.deepEqual(mine(crm.handed, `${prefix}-tracked`).map((m) => m.subject).sort(),
    range(1, 3).map((i) => `${prefix}-tracked ${i}/3`));
  assert.equal(mine(crm.handed, `${prefix}-references`).length, 2);
  assert.deepEqual([...mine(crm.handed, `${prefix}-untracked`), ...mine(crm.handed, `${prefix}-new`)], []);
  assert.ok(report.filtered >= 4, JSON.stringify(report));
  assert.ok(crm.questions.length >= 1);
  assert.ok(crm.questions.every(([id]) => id === mailbox.id));
  const asked = crm.questions.flatMap(([, ids]) => ids);
  assert.ok(asked.includes(ours) && asked.includes(theirs), asked.join(' ')); // without angle brackets

  // A tracked() that throws fails the cycle; a sink without tracked() tracks nothing.
  await deliver(email, 1, `${prefix}-late`, '--in-reply-to', ours);
  const failing = Object.assign(new PlainSink(), {
    tracked() {
      throw new Error('crm down');
    },
  });
  const failed = await new Engine(env.sync, failing).runOnce(mailbox.id);
  assert.equal(failed.errorCode, 'sink_failed');
  assert.match(failed.errorMessage, /incoming filter failed: Error: crm down/);
  assert.deepEqual(mine(failing.handed, `${prefix}-late`), []);
  const plain = new PlainSink();
  const left = await new Engine(env.sync, plain).runOnce(mailbox.id);
  assert.equal(left.errorCode, undefined, left.errorMessage);
  assert.deepEqual(mine(plain.handed, `${prefix}-late`), []);
  assert.ok(left.filtered >= 1, JSON.stringify(left));
});

test('(d) progress values arrive while a started engine syncs; stop() ends it', opts, async (t) => {
  const email = 'sync19@example.test';
  const { env, mailbox } = await enabled(t, email);
  const prefix = unique('node-engine-d');
  await deliver(email, 12, prefix);
  const sink = new AsyncSink();
  const engine = new Engine(env.sync, sink, { ...defaultEngineOptions(), batchMessages: 5 });
  const values = [];
  let finished;
  const done = new Promise((resolve) => {
    finished = resolve;
  });
  const subscription = engine.progress((p) => {
    if (p.mailboxId !== mailbox.id) return;
    values.push(p);
    if (p.finished) finished(p);
  });
  assert.ok(subscription instanceof Subscription);

  const handle = engine.start(1);
  assert.ok(handle instanceof EngineHandle);
  const last = await within(30_000, done, 'finished progress value');
  await handle.stop();
  await handle.stop(); // idempotent
  subscription.cancel();

  assert.deepEqual(sorted(mine(sink.handed, prefix).map(index)), range(1, 12));
  assert.ok(values.length >= 2, JSON.stringify(values));
  assert.equal(values[0].finished, false);
  assert.equal(values[0].email, email);
  const running = values.slice(0, -1);
  const done_ = running.map((p) => p.messagesDone);
  assert.deepEqual(done_, sorted(done_));
  assert.ok(running.every((p) => p.messagesDone <= p.messagesTotal && p.bytesDone <= p.bytesTotal));
  assert.equal(last, values.at(-1));
  assert.ok(last.messagesDone >= 12 && last.messagesDone === last.messagesTotal, JSON.stringify(last));
  assert.equal(last.bytesDone, sink.handed.reduce((n, m) => n + m.raw.length, 0));

  const [row] = (await engine.status()).filter((s) => s.mailboxId === mailbox.id);
  assert.ok(row.cursor.lastCycleAt instanceof Date);
  assert.ok(row.nextDue instanceof Date);
});

test('reports: the listener gets the CycleReport of each cycle, the one runOnce returns', opts, async (t) => {
  const email = 'sync15@example.test';
  const { env, mailbox } = await enabled(t, email);
  const prefix = unique('node-engine-reports');
  await deliver(email, 3, prefix);
  const sink = new PlainSink();
  const engine = new Engine(env.sync, sink, defaultEngineOptions());
  await rejectsWith(() => engine.reports('not a function'), 'validation', 'listener');
  const reports = [];
  let arrived = () => {};
  const subscription = engine.reports((report) => {
    reports.push(report);
    arrived();
  });
  assert.ok(subscription instanceof Subscription);
  const count = (n) => within(10_000, new Promise((resolve) => {
    const check = () => (reports.length >= n ? resolve() : (arrived = check));
    check();
  }), `${n} reports`);

  const report = await engine.runOnce(mailbox.id);
  assert.equal(report.errorCode, undefined, report.errorMessage);
  await count(1);
  assert.deepEqual(reports[0], report); // every field: counts, bytes, duration, errors
  assert.deepEqual([reports[0].mailboxId, reports[0].email], [mailbox.id, email]);
  assert.equal(mine(sink.handed, prefix).length, 3);
  assert.ok(reports[0].delivered >= 3 && reports[0].delivered === sink.handed.length, JSON.stringify(reports[0]));
  assert.equal(reports[0].bytes, sink.handed.reduce((n, m) => n + m.raw.length, 0));

  // One report per cycle, in order.
  const again = await engine.runOnce(mailbox.id);
  await count(2);
  assert.deepEqual(reports[1], again);

  // Cancelled: the next cycle is not reported.
  subscription.cancel();
  await engine.runOnce(mailbox.id);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(reports.length, 2);
});

test('(e) EngineOptions and sinks are checked: validation naming the field', async () => {
  const sync = await memory();
  const sink = new PlainSink();
  const make = (change) => () => new Engine(sync, sink, { ...defaultEngineOptions(), ...change });
  // Numbers napi would wrap or truncate, then the core's own rules.
  for (const [change, field] of [
    [{ workers: -1 }, 'workers'],
    [{ batchBytes: 2 ** 32 }, 'batch_bytes'],
    [{ leaseSecs: 1.5 }, 'lease_secs'],
    [{ sinkTimeoutSecs: NaN }, 'sink_timeout_secs'],
    [{ postponeSecs: -0.5 }, 'postpone_secs'],
  ]) {
    const e = await rejectsWith(make(change), 'validation', field);
    assert.ok(e.message.startsWith(`${field}: must be a whole number`), e.message);
  }
  for (const [change, field] of [
    [{ workers: 0 }, 'workers'],
    [{ connectionsPerAccount: 0 }, 'connections_per_account'],
    [{ batchBytes: 1023 }, 'batch_bytes'],
    [{ leaseSecs: 4 }, 'lease_secs'],
    [{ postponeSecs: 86_401 }, 'postpone_secs'],
    [{ messagesPerCycle: '5' }, 'messages_per_cycle'],
    [{ maxMessageBytes: undefined }, 'max_message_bytes'],
  ]) {
    await rejectsWith(make(change), 'validation', field);
  }
  await rejectsWith(() => new Engine(sync, sink, { workers: 4 }), 'validation', 'postpone_secs');
  const e = new Engine(sync, sink, { ...defaultEngineOptions(), postponeSecs: 0, workers: 2 ** 32 - 1 });
  assert.equal(e.options.workers, 2 ** 32 - 1);
  assert.deepEqual(new Engine(sync, sink).options, defaultEngineOptions());
  assert.deepEqual(new Engine(sync, sink, null).options, defaultEngineOptions());

  // The sink and the other arguments.
  await rejectsWith(() => new Engine(sync, {}), 'validation', 'sink.deliver');
  await rejectsWith(() => new Engine(sync, { deliver: 'x' }), 'validation', 'sink.deliver');
  await rejectsWith(() => new Engine(sync, { deliver() {}, tracked: 1 }), 'validation', 'sink.tracked');
  await rejectsWith(() => new Engine(sync, { deliver() {}, knownSenders: {} }), 'validation', 'sink.known_senders');
  await rejectsWith(() => new Engine(sync, 5), 'validation', 'sink');
  await rejectsWith(() => new Engine(sync), 'validation', 'sink');
  await rejectsWith(() => new Engine({}, sink), 'validation', 'sync');
  assert.ok(new Engine(sync, { deliver() {}, tracked: null, knownSenders: undefined }));
  await rejectsWith(() => e.start(-1), 'validation', 'max_idle_secs');
  await rejectsWith(() => e.progress('not a function'), 'validation', 'listener');
  await rejectsWith(e.runOnce('not-an-id'), 'not_found');
  await rejectsWith(e.runOnce(5), 'validation', 'mailbox');
  assert.deepEqual(await e.runDue(), []);
  assert.deepEqual(await e.status(), []);
  await sync.close();
});

/** Runs `script` in a child process (the binding as `m`); its exit code and
 *  stderr, or `alive: true` if it still runs after `ms`. */
function child(script, ms = 5000) {
  const binding = path.join(__dirname, '..');
  const code = `const m = require(${JSON.stringify(binding)});\n(async () => { ${script} })();`;
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      resolve({ alive: true, stderr });
    }, ms);
    proc.on('exit', (status, signal) => {
      clearTimeout(timer);
      resolve({ alive: false, status, signal, stderr });
    });
  });
}

test('a started engine keeps the process alive until stop() or close(); progress subscriptions do not', async () => {
  const open = `const sync = await m.MailSync.open({ kind: 'memory' });
    const engine = new m.Engine(sync, { deliver: (b) => b.map(() => 'stored') });`;
  const results = await Promise.all([
    child(`${open} const h = engine.start(1); setTimeout(() => h.stop(), 300);`),
    child(`${open} engine.start(1); setTimeout(() => sync.close(), 300);`),
    child(`${open} engine.progress(() => {});`),
    child(`${open} engine.start(1);`, 2500),
  ]);
  const [stopped, closed, progress, running] = results;
  for (const r of [stopped, closed, progress]) assert.deepEqual(r, { alive: false, status: 0, signal: null, stderr: '' });
  assert.deepEqual(running, { alive: true, stderr: '' });
});
