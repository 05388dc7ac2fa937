'use strict';
// Outgoing sync from Node, against the local stack: a JavaScript object as the
// core's Outbox (plain and async methods), through `Engine.withOutbox`. One
// engine run sends the host's message through Postfix; the host sees `sent`
// with the Message-ID, and the message is read back from the recipient's
// INBOX over IMAP. A sender other than the mailbox's address never leaves:
// the host sees `failed` with `sender_not_allowed`; fixed and handed to
// `engine.resend`, it goes out with the Message-ID it was given.
// `Engine.withOwner` names the leases (read from the SQLite file while the
// engine holds one); `engine.seedOutgoing()` makes an outbox-only mailbox due.
// Senders: sync17 (plain), sync18 (async), sync11 (resend), sync12 (withOwner),
// sync09 (seedOutgoing); recipient: sync20.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const tls = require('node:tls');
const { execFileSync } = require('node:child_process');
const { mailsync, rejectsWith } = require('./helpers');
const { needsStack, setup, connected } = require('./stack');
const { Engine, MailsyncError, defaultEngineOptions } = mailsync;

const opts = needsStack();
const RECIPIENT = 'sync20@example.test';
const unique = (prefix) => `${prefix}-${crypto.randomUUID().slice(0, 12)}`;

/** A connected, tested and enabled mailbox for `email` (fields of `extra` replaced). */
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

/** Incoming mail is not what these tests are about. */
const noSink = { deliver: (messages) => messages.map(() => 'stored') };

/** A host outbox in memory: a message stays pending until reported sent or failed (methods use `this`). */
class PlainOutbox {
  constructor(...messages) {
    this.queue = messages;
    this.asked = [];
    this.reports = [];
  }

  take(mailboxId, limit) {
    assert.ok(this instanceof PlainOutbox, 'the outbox is `this`');
    this.asked.push([mailboxId, limit]);
    return this.queue.slice(0, limit);
  }

  keep(report) {
    if (report.outcome.outcome === 'sent' || report.outcome.outcome === 'failed') {
      this.queue = this.queue.filter((m) => m.id !== report.id);
    }
    this.reports.push(report);
  }

  pending(mailboxId, limit) {
    return this.take(mailboxId, limit);
  }

  report(report) {
    this.keep(report);
  }
}

class AsyncOutbox extends PlainOutbox {
  async pending(mailboxId, limit) {
    await new Promise((resolve) => setImmediate(resolve));
    return this.take(mailboxId, limit);
  }

  async report(report) {
    await new Promise((resolve) => setImmediate(resolve));
    this.keep(report);
  }
}

function composed(id, to, subject, text, from) {
  return {
    id,
    content: {
      kind: 'composed',
      message: {
        from,
        to: to.map((address) => ({ address })),
        cc: [],
        bcc: [],
        subject,
        text,
        attachments: [],
        references: [],
      },
    },
  };
}

/**
 * The bytes of the message with this Message-ID in `address`'s INBOX, read
 * over IMAP (TLS trusting the stack's CA, LOGIN, EXAMINE); waits (bounded)
 * for Postfix to deliver it. Fails if it is there more than once.
 */
async function imapFind(stack, address, messageId, seconds = 30) {
  const password = stack.accounts.find((a) => a.email === address).password;
  const socket = tls.connect({ host: stack.imap.host, port: stack.imap.tls_port, ca: fs.readFileSync(stack.ca_cert), servername: 'localhost' });
  let buffer = Buffer.alloc(0);
  let wake = () => {};
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    wake();
  });
  const closed = new Promise((_, reject) => socket.on('error', reject));
  closed.catch(() => {});
  /** Waits until the buffer holds `tag`'s completion; returns (and consumes) everything up to it. */
  async function until(tag) {
    for (;;) {
      const text = buffer.toString('latin1');
      const at = tag === '*' ? text.indexOf('\r\n') : text.search(new RegExp(`(^|\\r\\n)${tag} (OK|NO|BAD)[^\\r]*\\r\\n`));
      if (at >= 0) {
        const end = tag === '*' ? at + 2 : text.indexOf('\r\n', text.indexOf(`${tag} `, at)) + 2;
        const out = buffer.subarray(0, end);
        buffer = buffer.subarray(end);
        return out;
      }
      await Promise.race([new Promise((resolve) => { wake = resolve; }), closed]);
    }
  }
  let n = 0;
  async function command(text) {
    const tag = `a${++n}`;
    socket.write(`${tag} ${text}\r\n`);
    const out = await until(tag);
    assert.match(out.toString('latin1'), new RegExp(`${tag} OK`), `IMAP ${text.split(' ')[0]}`);
    return out;
  }
  try {
    await until('*'); // the greeting
    await command(`LOGIN "${address}" "${password}"`);
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      await command('EXAMINE INBOX');
      const found = (await command(`UID SEARCH HEADER Message-ID "${messageId}"`)).toString('latin1');
      const uids = /\* SEARCH([ \d]*)/.exec(found)[1].trim().split(/\s+/).filter(Boolean);
      if (uids.length > 0) {
        assert.equal(uids.length, 1, 'received once');
        const fetched = await command(`UID FETCH ${uids[0]} (BODY.PEEK[])`);
        const text = fetched.toString('latin1');
        const literal = /\{(\d+)\}\r\n/.exec(text);
        const start = literal.index + literal[0].length;
        return fetched.subarray(start, start + Number(literal[1]));
      }
      assert.ok(Date.now() < deadline, `<${messageId}> did not arrive in ${address}'s INBOX`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  } finally {
    socket.destroy();
  }
}

for (const [kind, Outbox, sender] of [
  ['plain', PlainOutbox, 'sync17@example.test'],
  ['async', AsyncOutbox, 'sync18@example.test'],
]) {
  test(`a host outbox (${kind} methods) is sent through Postfix, read back, and refused for a foreign sender`, opts, async (t) => {
    const { env, mailbox } = await enabled(t, sender);
    const tag = unique('node-outbox');
    const outbox = new Outbox(composed('crm-1', [RECIPIENT], `${tag} hello`, 'Hello from the CRM.\n'));
    const engine = Engine.withOutbox(env.sync, noSink, outbox);
    assert.ok(engine instanceof Engine);

    const report = await engine.runOnce(mailbox.id);
    assert.equal(report.outgoingErrorCode ?? null, null, report.outgoingErrorMessage);
    assert.deepEqual([report.sent, report.sendFailed, report.sendDeferred], [1, 0, 0]);
    assert.deepEqual(outbox.asked[0], [mailbox.id, defaultEngineOptions().sendsPerCycle]);

    assert.equal(outbox.reports.length, 1);
    const [sent] = outbox.reports;
    assert.deepEqual([sent.mailboxId, sent.id, sent.attempts], [mailbox.id, 'crm-1', 1]);
    assert.equal(sent.outcome.outcome, 'sent', JSON.stringify(sent));
    assert.match(sent.outcome.reply, /^250/);
    assert.deepEqual(sent.outcome.refused, []);
    assert.ok(sent.messageId && !sent.messageId.includes('<'), sent.messageId);
    assert.deepEqual(outbox.queue, []);

    const raw = (await imapFind(env.stack, RECIPIENT, sent.messageId)).toString('utf8');
    assert.match(raw, new RegExp(`^Message-ID: <${sent.messageId.replace(/[.+]/g, '\\$&')}>\\r$`, 'mi'));
    assert.match(raw, new RegExp(`^Subject: ${tag} hello\\r$`, 'm'));
    assert.match(raw, new RegExp(`^From: .*${sender}`, 'mi'));
    assert.match(raw, /Hello from the CRM\./);

    // Sent once: a second run sends nothing again.
    const again = await engine.runOnce(mailbox.id);
    assert.deepEqual([again.sent, again.sendFailed, again.outgoingErrorCode ?? null], [0, 0, null]);
    assert.equal(outbox.reports.length, 1);

    // A sender other than the mailbox's address never leaves: failed, with its code.
    outbox.queue.push(composed('crm-2', [RECIPIENT], `${tag} forged`, 'no', { name: 'CEO', address: 'ceo@example.test' }));
    const refused = await engine.runOnce(mailbox.id);
    assert.deepEqual([refused.sent, refused.sendFailed], [0, 1]);
    const failed = outbox.reports.at(-1);
    assert.deepEqual([failed.id, failed.attempts], ['crm-2', 0]);
    assert.equal(failed.outcome.outcome, 'failed', JSON.stringify(failed));
    assert.equal(failed.outcome.code, 'sender_not_allowed');
    assert.equal(failed.outcome.smtpCode ?? null, null);
    assert.match(failed.outcome.reply, /ceo@example\.test/);
    assert.deepEqual(outbox.queue, []);
  });
}

test('Engine.withOutbox checks the outbox, and a pending that throws fails the outgoing cycle', opts, async (t) => {
  const { env, mailbox } = await enabled(t, 'sync17@example.test');
  assert.throws(() => Engine.withOutbox(env.sync, noSink, { pending: () => [] }), (e) =>
    e instanceof MailsyncError && e.code === 'validation' && e.field === 'outbox.report');
  assert.throws(() => Engine.withOutbox(env.sync, noSink, 42), (e) =>
    e instanceof MailsyncError && e.code === 'validation' && e.field === 'outbox');

  const broken = {
    pending() { throw new Error('the CRM is down'); },
    report() { throw new Error('nothing to report'); },
  };
  const report = await Engine.withOutbox(env.sync, noSink, broken).runOnce(mailbox.id);
  assert.equal(report.outgoingErrorCode, 'sink_failed');
  assert.match(report.outgoingErrorMessage, /the CRM is down/);
});

/**
 * [kind, owner] of the leases held on a mailbox, read from the SQLite file as
 * an operator would (`mailsync workers` lists the same rows). Node 20 has no
 * SQLite module: python3's, which the stack runs on anyway.
 */
function leases(db, mailboxId) {
  const script = [
    'import json, sqlite3, sys',
    'db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)',
    'rows = db.execute("SELECT kind, owner FROM leases WHERE mailbox_id = ? ORDER BY kind", (sys.argv[2],))',
    'print(json.dumps(rows.fetchall()))',
  ].join('\n');
  return JSON.parse(execFileSync('python3', ['-c', script, db, mailboxId], { encoding: 'utf8' }));
}

test('engine.resend sends a failed message again, with the Message-ID it was given', opts, async (t) => {
  const sender = 'sync11@example.test';
  const { env, mailbox } = await enabled(t, sender);
  const tag = unique('node-resend');
  const forged = composed('crm-r', [RECIPIENT], `${tag} resent`, 'Sent on the second try.\n', { name: 'CEO', address: 'ceo@example.test' });
  const fixed = composed('crm-r', [RECIPIENT], `${tag} resent`, 'Sent on the second try.\n');
  const outbox = new PlainOutbox(forged);
  const engine = Engine.withOutbox(env.sync, noSink, outbox);

  const first = await engine.runOnce(mailbox.id);
  assert.deepEqual([first.sent, first.sendFailed], [0, 1]);
  const failed = outbox.reports.at(-1);
  assert.equal(failed.outcome.outcome, 'failed', JSON.stringify(failed));
  assert.equal(failed.outcome.code, 'sender_not_allowed');
  const { messageId } = failed;
  assert.ok(messageId && !messageId.includes('<'), messageId);

  // Fixed by the host but not handed to resend: reported failed again, never sent by itself.
  outbox.queue.push(fixed);
  const still = await engine.runOnce(mailbox.id);
  assert.equal(still.sent, 0);
  const again = outbox.reports.at(-1);
  assert.deepEqual([again.id, again.messageId, again.outcome.outcome], ['crm-r', messageId, 'failed']);

  // resend: back to pending; the next cycle sends it with its Message-ID.
  outbox.queue.push(fixed);
  assert.equal(await engine.resend(mailbox.id, 'crm-r'), undefined);
  const report = await engine.runOnce(mailbox.id);
  assert.deepEqual([report.sent, report.sendFailed, report.outgoingErrorCode ?? null], [1, 0, null]);
  const sent = outbox.reports.at(-1);
  assert.deepEqual([sent.id, sent.messageId, sent.outcome.outcome], ['crm-r', messageId, 'sent']);
  assert.deepEqual(outbox.queue, []);
  const raw = (await imapFind(env.stack, RECIPIENT, messageId)).toString('utf8');
  assert.match(raw, new RegExp(`^Subject: ${tag} resent\\r$`, 'm'));
  assert.match(raw, new RegExp(`^From: .*${sender}`, 'mi'));

  // A sent message is never sent again; an unknown id is not found; arguments are checked.
  await rejectsWith(engine.resend(mailbox.id, 'crm-r'), 'validation', 'id');
  await rejectsWith(engine.resend(mailbox.id, 'crm-none'), 'not_found');
  await rejectsWith(engine.resend(mailbox.id, 5), 'validation', 'id');
  await rejectsWith(engine.resend(5, 'crm-r'), 'validation', 'mailbox');
});

test('Engine.withOwner names the leases and takes an optional outbox', opts, async (t) => {
  const { env, mailbox } = await enabled(t, 'sync12@example.test');
  const owner = 'crm-worker-7';
  const seen = [];
  class Watching extends PlainOutbox {
    pending(mailboxId, limit) {
      seen.push(leases(env.db, mailboxId)); // while the engine holds the send lease
      return super.pending(mailboxId, limit);
    }
  }
  const outbox = new Watching();
  const engine = Engine.withOwner(env.sync, noSink, defaultEngineOptions(), owner, outbox);
  assert.ok(engine instanceof Engine);
  assert.equal(engine.owner, owner);
  assert.deepEqual(engine.options, defaultEngineOptions());
  const report = await engine.runOnce(mailbox.id);
  assert.equal(report.errorCode ?? report.outgoingErrorCode ?? null, null, JSON.stringify(report));
  assert.deepEqual(outbox.asked, [[mailbox.id, defaultEngineOptions().sendsPerCycle]]); // the outbox is used
  assert.equal(seen.length, 1);
  assert.ok(seen[0].some(([kind, who]) => kind === 'send' && who === owner), JSON.stringify(seen));
  assert.ok(seen[0].every(([, who]) => who === owner), JSON.stringify(seen));
  for (const deadline = Date.now() + 10_000; leases(env.db, mailbox.id).length > 0;) { // given back
    assert.ok(Date.now() < deadline, JSON.stringify(leases(env.db, mailbox.id)));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  // Without an outbox (and with the default options): no outgoing cycle.
  const bare = Engine.withOwner(env.sync, noSink, null, 'crm-worker-8');
  assert.equal(bare.owner, 'crm-worker-8');
  assert.deepEqual(bare.options, defaultEngineOptions());
  const plain = await bare.runOnce(mailbox.id);
  assert.equal(plain.errorCode ?? null, null, plain.errorMessage);
  assert.equal(plain.sent, 0);
  assert.equal(outbox.asked.length, 1);

  // The others are named by the engine; an empty name and bad arguments are refused.
  assert.match(new Engine(env.sync, noSink).owner, /^engine-/);
  await rejectsWith(() => Engine.withOwner(env.sync, noSink, null, '  ', outbox), 'validation', 'owner');
  await rejectsWith(() => Engine.withOwner(env.sync, noSink, null, 5), 'validation', 'owner');
  await rejectsWith(() => Engine.withOwner(env.sync, noSink, null, owner, 42), 'validation', 'outbox');
  await rejectsWith(() => Engine.withOwner(env.sync, noSink, null, owner, { pending: () => [] }), 'validation', 'outbox.report');
});

test('engine.seedOutgoing makes an outbox-only mailbox due', opts, async (t) => {
  const { env, mailbox } = await enabled(t, 'sync09@example.test', { incomingDelivery: 'none' });
  const tag = unique('node-seed');
  const outbox = new PlainOutbox(composed('crm-s', [RECIPIENT], `${tag} seeded`, 'Sent by a scheduled cycle.\n'));
  const engine = Engine.withOutbox(env.sync, noSink, outbox);
  const row = async () => (await engine.status()).find((s) => s.mailboxId === mailbox.id);

  // Enabled, but with no incoming cycle nothing ever scheduled its outgoing mail.
  const before = await row();
  assert.equal(before.outgoing.status, 'enabled');
  assert.deepEqual([before.outbox ?? null, before.nextSendDue ?? null, before.nextDue ?? null], [null, null, null]);

  // An engine without an outbox seeds nothing.
  assert.equal(await new Engine(env.sync, noSink).seedOutgoing(), undefined);
  assert.equal((await row()).nextSendDue ?? null, null);

  assert.equal(await engine.seedOutgoing(), undefined);
  const seeded = await row();
  assert.equal(seeded.outbox.mailboxId, mailbox.id);
  assert.ok(seeded.nextSendDue instanceof Date && seeded.nextSendDue <= new Date(), String(seeded.nextSendDue));
  assert.deepEqual(outbox.asked, []); // scheduled, not sent

  // Due: the next scheduled run sends its mail.
  const reports = (await engine.runDue()).filter((r) => r.mailboxId === mailbox.id);
  assert.deepEqual(reports.map((r) => [r.sent, r.outgoingErrorCode ?? null]), [[1, null]], JSON.stringify(reports));
  assert.equal(outbox.reports.at(-1).outcome.outcome, 'sent');
  assert.ok((await row()).nextSendDue > new Date());
});
