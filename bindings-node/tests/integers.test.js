'use strict';
// Every number that crosses from JavaScript into Rust is checked by the
// binding before napi converts it (napi would wrap or truncate it: -1, 1.5,
// NaN, 2**32 would arrive as other numbers): a value that is not a whole
// number in range (negative, fractional, NaN, ±Infinity, beyond u16/u32,
// beyond 2**53) is a MailsyncError with code 'validation' naming the field,
// by its path in the record passed ('outgoing.port',
// 'incoming.endpoint.port', 'refresh_retry.attempts') — never a wrapped or
// truncated value. A value of another JS type (a string, a BigInt, an object)
// is the same: napi's conversion refuses it, the binding reports it as
// 'validation' naming the field.
//
// The last test reads index.d.ts: a new `number` input (a number in a type an
// exported function or method takes) without a row here fails the suite.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { mailsync, rejectsWith, gmail, memory } = require('./helpers');
const { Engine, MailSync, defaultEngineOptions, defaultOptions, genericProfile, profileUsePop3, userMailbox, validateOptions,
  validateProfile } = mailsync;

const U16 = 65535;
const U32 = 2 ** 32 - 1;
const I53 = Number.MAX_SAFE_INTEGER;
const endpoint = (port) => ({ host: 'imap.example.com', port, security: 'tls' });
const imap = (port) => ({ protocol: 'imap', endpoint: endpoint(port) });
const smtp = (port) => ({ host: 'smtp.example.com', port, security: 'start_tls' });
const perMailbox = { kind: 'credentials_per_mailbox' };
const processing = (key) => (v) => validateProfile(gmail('N', { processing: { ...gmail().processing, [key]: v } }));
const options = (change) => (v) => validateOptions(change(defaultOptions(), v));
const open = (change) => (v) => MailSync.open({ kind: 'memory' }, change(defaultOptions(), v));
const retry = (key) => (o, v) => ({ ...o, refreshRetry: { ...o.refreshRetry, [key]: v } });
const policy = (key) => (o, v) => ({ ...o, failurePolicy: { ...o.failurePolicy, [key]: v } });
const option = (key) => (o, v) => ({ ...o, [key]: v });
const sink = { deliver: (messages) => messages.map(() => 'stored') };
const engine = (key) => (v) => memory().then((s) => new Engine(s, sink, { ...defaultEngineOptions(), [key]: v }));
const ENGINE_OPTIONS = ['postponeSecs', 'connectionsPerAccount', 'workers', 'batchMessages', 'batchBytes', 'maxMessageBytes',
  'messagesPerCycle', 'minThroughputBytesPerSec', 'sinkTimeoutSecs', 'leaseSecs', 'sendsPerCycle'];
const snakeCase = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

let store;
async function mailbox() {
  store ??= await memory();
  const profile = await store.directory.createProfile(gmail(`P${Math.random()}`, { defaultForNewMailboxes: true }));
  return store.directory.createMailbox({ ...userMailbox(`m${Math.random()}@example.com`), profileId: profile.id });
}

// 'Interface.field' (as in index.d.ts) -> [conversion range, [field named by the error, call]...]
// Each call converts the value (and may go on to use it). Values inside the
// conversion range may still be refused by the core's own rules (with its own
// code and field); the bounds checked below are those of the conversion.
const INPUTS = {
  'Endpoint.port': [0, U16, [
    ['outgoing.port', (v) => validateProfile(gmail('N', { outgoing: smtp(v) }))],
    ['incoming.endpoint.port', (v) => validateProfile(gmail('N', { incoming: imap(v) }))],
    ['incoming.endpoint.port', (v) => genericProfile('G', imap(v), smtp(587), perMailbox)],
    ['outgoing.port', (v) => genericProfile('G', imap(993), smtp(v), perMailbox)],
    ['outgoing.port', (v) => memory().then((s) => s.directory.createProfile(gmail('N', { outgoing: smtp(v) })))],
  ]],
  'ProcessingOptions.minPollingIntervalMinutes': [0, U16,
    [['processing.min_polling_interval_minutes', processing('minPollingIntervalMinutes')]]],
  'ProcessingOptions.maxConcurrentConnections': [0, U16,
    [['processing.max_concurrent_connections', processing('maxConcurrentConnections')]]],
  'ProcessingOptions.connectionTimeoutSecs': [0, U16,
    [['processing.connection_timeout_secs', processing('connectionTimeoutSecs')]]],
  'ServerProfile.mailboxCapacity': [0, U32, [
    ['mailbox_capacity', (v) => profileUsePop3(gmail('N', { mailboxCapacity: v }))],
    ['mailbox_capacity', (v) => memory().then((s) => s.directory.createProfile(gmail('N', { mailboxCapacity: v })))],
  ]],
  'ServerProfile.version': [0, I53, [['version', (v) => profileUsePop3(gmail('N', { version: v }))]]],
  'Mailbox.version': [0, I53, [['version', async (v) => {
    const m = await mailbox();
    return store.directory.updateMailbox({ ...m, version: v });
  }]]],
  'RetryPolicy.attempts': [0, U32, [
    ['refresh_retry.attempts', options(retry('attempts'))],
    ['refresh_retry.attempts', open(retry('attempts'))],
  ]],
  'RetryPolicy.initialBackoffMs': [0, U32, [['refresh_retry.initial_backoff_ms', options(retry('initialBackoffMs'))]]],
  'RetryPolicy.maxBackoffMs': [0, U32, [['refresh_retry.max_backoff_ms', open(retry('maxBackoffMs'))]]],
  'FailurePolicy.maxRetries': [0, U32, [['failure_policy.max_retries', open(policy('maxRetries'))]]],
  'FailurePolicy.intervalSecs': [0, U32, [['failure_policy.interval_secs', options(policy('intervalSecs'))]]],
  'Options.tokenRefreshSkewSecs': [0, U32, [['token_refresh_skew_secs', options(option('tokenRefreshSkewSecs'))]]],
  'Options.httpTimeoutSecs': [0, U32, [
    ['http_timeout_secs', options(option('httpTimeoutSecs'))],
    ['http_timeout_secs', open(option('httpTimeoutSecs'))],
  ]],
  'Options.refreshLeaseSecs': [0, U32, [['refresh_lease_secs', open(option('refreshLeaseSecs'))]]],
  'Options.consentTtlSecs': [0, U32, [['consent_ttl_secs', options(option('consentTtlSecs'))]]],
  ...Object.fromEntries(ENGINE_OPTIONS.map((key) => [`EngineOptions.${key}`, [0, U32, [[snakeCase(key), engine(key)]]]])),
  // Refused before connecting when out of range; in range, the (closed)
  // port refuses the connection.
  'StoreLocation.poolSize': [0, U32, [['pool_size', (v) => MailSync.open(
    { kind: 'postgres', url: 'postgres://mailsync@127.0.0.1:1/none', key: mailsync.SealKey.generate(), poolSize: v })]]],
  'Engine.start': [0, U32, [['max_idle_secs', async (v) => {
    const started = (await engine('workers')(1)).start(v);
    await started.stop();
  }]]],
};

// Numbers the binding only hands out (never converts from JavaScript).
const OUTPUTS = new Set([
  'DirectionReport.durationMs', 'LastTestResult.durationMs', 'StepResult.durationMs', 'GrantInfo.version',
  'MailboxState.version', 'DirectionStatus.failures', 'Directory.mailboxCount',
  // Queued revocations: how many were sent / are waiting.
  'Connections.retryRevocations', 'Connections.pendingRevocations', 'KeyRotation.resealed',
  ...['delivered', 'skipped', 'filtered', 'oversized', 'retryLater', 'alreadyHad', 'bytes', 'durationMs',
    'sent', 'sendFailed', 'sendDeferred', 'sendUnknown'].map((f) => `CycleReport.${f}`),
  // Outgoing: the outbox is asked for `limit` messages; what it is told.
  'Outbox.pending', 'SendReport.attempts', 'SendOutcome.smtpCode', 'RecipientRefusal.smtpCode',
  'OutboxCursor.sent', 'OutboxCursor.failed', 'OutboxCursor.version',
  ...['messagesDone', 'messagesTotal', 'bytesDone', 'bytesTotal'].map((f) => `SyncProgress.${f}`),
  'SyncCursor.delivered', 'SyncCursor.skipped', 'SyncCursor.version', 'ImapCursor.uidValidity', 'ImapCursor.lastUid',
  'ImapCursor.highestModseq', 'IncomingMessage.uid', 'IncomingMessage.uidValidity', 'IncomingMessage.size',
  'RustSinkForTest.size',
]);

function badValues(low, high) {
  return [
    low - 1, high + 1, -1, 0.5, 1.5, high - 0.5, NaN, Infinity, -Infinity,
    2 ** 16, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 2 ** 70, -(2 ** 70),
    Number.MAX_VALUE, -Number.MAX_VALUE, Number.MIN_VALUE, Number.EPSILON,
  ].filter((v) => !(Number.isInteger(v) && v >= low && v <= high));
}

for (const [input, [low, high, calls]] of Object.entries(INPUTS)) {
  test(`${input}: out-of-range numbers are validation errors naming the field`, async () => {
    for (const [i, [field, call]] of calls.entries()) {
      for (const v of badValues(low, high)) {
        const e = await rejectsWith(() => call(v), 'validation', field).catch((err) => {
          throw new Error(`${input} (call ${i}) with ${v}: ${err.message}`);
        });
        assert.ok(e.message.startsWith(`${field}: must be a whole number`), e.message);
      }
    }
  });

  test(`${input}: the conversion bounds pass, other types are validation errors too`, async () => {
    for (const [field, call] of calls) {
      for (const v of [low, high]) {
        try {
          await call(v);
        } catch (e) {
          // Only the core's own rules may refuse a value the conversion
          // accepted (e.g. a max backoff below the initial one, a stale version).
          assert.ok(e instanceof mailsync.MailsyncError, `${input} with ${v}: ${e && e.stack}`);
          assert.doesNotMatch(e.message, /must be a whole number|convert/, `${input} with ${v}`);
        }
      }
      for (const wrong of ['5', 5n, {}, true]) {
        await rejectsWith(() => call(wrong), 'validation', field);
      }
    }
  });
}

test('accepted values arrive unchanged', async () => {
  assert.equal(profileUsePop3(gmail('N', { mailboxCapacity: U32 })).mailboxCapacity, U32);
  assert.equal(profileUsePop3(gmail('N', { outgoing: smtp(U16) })).outgoing.port, U16);
  assert.equal(profileUsePop3(gmail('N', { version: I53 })).version, I53);
  assert.equal(genericProfile('G', imap(1), smtp(2), perMailbox).incoming.endpoint.port, 1);
  const sync = await MailSync.open({ kind: 'memory' },
    { ...defaultOptions(), httpTimeoutSecs: 3600, refreshLeaseSecs: 86400, refreshRetry: { attempts: 7, initialBackoffMs: 0, maxBackoffMs: 60_000 } });
  assert.equal(sync.options.httpTimeoutSecs, 3600);
  assert.deepEqual(sync.options.refreshRetry, { attempts: 7, initialBackoffMs: 0, maxBackoffMs: 60_000 });
});

/**
 * The numbers of index.d.ts that cross the boundary: each `Type.field` (or
 * `Class.method`) of type `number`, as an input when its type is reachable
 * from a parameter of an exported function or method, else as an output when
 * it is reachable from a result (or from what a listener is given). Types no
 * function uses are left out until one does.
 */
function boundaryNumbers(dts) {
  const types = new Map(); // name -> { numbers, refs }
  const inputs = new Set();
  const outputs = new Set();
  const numbersIn = { inputs: new Set(), outputs: new Set() };
  const names = (text) => new Set(text.match(/\b[A-Z]\w*/g) ?? []);
  const signature = (owner, name, args, ret) => {
    const listeners = [...args.matchAll(/\((?:\w+): ([^)]*)\) =>/g)].map((m) => m[1]).join(' ');
    const params = args.replace(/\((?:\w+): ([^)]*)\) =>/g, '');
    for (const n of names(params)) inputs.add(n);
    for (const n of names(`${listeners} ${ret}`)) outputs.add(n);
    const key = owner ? `${owner}.${name}` : name;
    if (/\bnumber\b/.test(params)) numbersIn.inputs.add(key);
    else if (/\bnumber\b/.test(`${listeners} ${ret}`)) numbersIn.outputs.add(key);
  };
  let current = null;
  for (const line of dts.split('\n')) {
    const fn = line.match(/^export declare function (\w+)\((.*)\): (.*)$/);
    if (fn) {
      signature(null, fn[1], fn[2], fn[3]);
      current = null;
      continue;
    }
    const decl = line.match(/^export (?:declare )?(class|interface|type) (\w+)(.*)$/);
    if (decl) {
      current = { name: decl[2], kind: decl[1], numbers: [], refs: names(decl[3]) };
      types.set(current.name, current);
      continue;
    }
    if (!current) continue;
    const code = line.replace(/\/\*\*.*?\*\//g, '').replace(/^\s*\*.*$/, '');
    const member = code.match(/^\s+(?:static )?(?:get )?(\w+)\((.*)\): (.*)$/);
    if (current.kind === 'class' && member) {
      signature(current.name, member[1], member[2], member[3]);
      continue;
    }
    const constructor = code.match(/^\s+constructor\((.*)\)$/);
    if (current.kind === 'class' && constructor) {
      signature(current.name, 'constructor', constructor[1], '');
      continue;
    }
    // A method of an interface the host implements (MessageSink): the binding
    // hands its arguments out and takes its answer in.
    const callback = code.match(/^\s+(\w+)\??\((.*)\): (.*)$/);
    if (current.kind === 'interface' && callback) {
      for (const n of names(callback[2])) outputs.add(n);
      for (const n of names(callback[3])) current.refs.add(n);
      if (/\bnumber\b/.test(callback[2])) numbersIn.outputs.add(`${current.name}.${callback[1]}`);
      continue;
    }
    for (const m of code.matchAll(/(\w+)\??: number\b/g)) current.numbers.push(m[1]);
    for (const n of names(code)) current.refs.add(n);
  }
  const reach = (roots) => {
    const seen = new Set();
    const todo = [...roots];
    while (todo.length) {
      const n = todo.pop();
      if (seen.has(n) || !types.has(n)) continue;
      seen.add(n);
      todo.push(...types.get(n).refs);
    }
    return seen;
  };
  const into = reach(inputs);
  for (const n of into) for (const f of types.get(n).numbers) numbersIn.inputs.add(`${n}.${f}`);
  for (const n of reach(outputs)) {
    if (!into.has(n)) for (const f of types.get(n).numbers) numbersIn.outputs.add(`${n}.${f}`);
  }
  return numbersIn;
}

test('every number crossing into Rust (per index.d.ts) is covered here', () => {
  const { inputs, outputs } = boundaryNumbers(fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8'));
  assert.deepEqual([...inputs].sort(), Object.keys(INPUTS).sort(), 'number inputs of index.d.ts vs the rows here');
  assert.deepEqual([...outputs].sort(), [...OUTPUTS].sort(), 'number outputs of index.d.ts vs OUTPUTS');
});
