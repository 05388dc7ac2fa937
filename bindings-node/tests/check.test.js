'use strict';
// Test & Enable against the local test stack.
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync } = require('./helpers');
const { needsStack, setup, connected } = require('./stack');
const { MailboxSpec, TestReport } = mailsync;

const opts = needsStack();

function steps(direction) {
  return direction.steps.map((s) => `${s.step}:${s.ok ? 'ok' : 'failed'}`);
}

test('IMAP + SMTP STARTTLS: success, steps listed, both directions enabled', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'alice@example.test');
  const report = await env.sync.testAndEnable(mailbox.id);
  assert.ok(report instanceof TestReport);
  assert.equal(report.isSuccess(), true, JSON.stringify(report, null, 1));
  assert.equal(report.outcome, 'success');
  assert.equal(report.firstFailure(), null);
  assert.equal(report.mailboxId, mailbox.id);
  assert.equal(report.email, 'alice@example.test');
  assert.equal(report.incomingEnabled, true);
  assert.equal(report.outgoingEnabled, true);
  assert.ok(!Number.isNaN(Date.parse(report.testedAt)));
  const incoming = report.incoming;
  assert.equal(incoming.direction, 'incoming');
  assert.equal(incoming.protocol, 'IMAP');
  assert.equal(incoming.server, `${env.stack.imap.host}:${env.stack.imap.tls_port}`);
  assert.equal(incoming.success, true);
  assert.ok(incoming.diagnosis == null);
  assert.deepEqual(steps(incoming).slice(0, 1), ['credentials:ok']);
  assert.ok(steps(incoming).includes('authenticate:ok'), steps(incoming).join());
  assert.ok(steps(incoming).includes('select_inbox:ok'), steps(incoming).join());
  assert.ok(incoming.steps.every((s) => typeof s.durationMs === 'number' && s.durationMs >= 0));
  const outgoing = report.outgoing;
  assert.equal(outgoing.direction, 'outgoing');
  assert.equal(outgoing.protocol, 'SMTP');
  assert.ok(steps(outgoing).includes('ehlo:ok'), steps(outgoing).join());
  assert.ok(steps(outgoing).includes('authenticate:ok'), steps(outgoing).join());

  const stored = await env.sync.getMailbox(mailbox.id);
  assert.equal(stored.incomingEnabled, true);
  assert.equal(stored.outgoingEnabled, true);
  assert.equal(stored.incomingTest.status, 'success');
  assert.equal(stored.outgoingTest.status, 'success');
  assert.equal((await env.sync.getProfile(env.imap.id)).lastTest.outcome, 'success');

  const json = report.toJSON();
  assert.equal(json.email, 'alice@example.test');
  assert.equal(json.outcome, 'success');
  const token = (await env.sync.accessToken(mailbox.id)).reveal();
  for (const text of [JSON.stringify(report), util.inspect(report), String(report)]) {
    assert.ok(!text.includes(token));
  }
  assert.equal(String(report), 'TestReport(alice@example.test, success)');
});

test('POP3 + SMTP TLS: success, STAT step, enabled', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'bob@example.test', env.pop3);
  assert.equal(mailbox.profileId, env.pop3.id);
  const report = await env.sync.testAndEnableWith(mailbox.id, { sendTestMessage: false });
  assert.equal(report.isSuccess(), true, JSON.stringify(report, null, 1));
  assert.equal(report.incoming.protocol, 'POP3');
  assert.equal(report.incoming.server, `${env.stack.pop3.host}:${env.stack.pop3.tls_port}`);
  assert.ok(steps(report.incoming).includes('stat:ok'), steps(report.incoming).join());
  assert.equal(report.outgoing.server, `${env.stack.smtp.host}:${env.stack.smtp.tls_port}`);
  assert.equal(report.incomingEnabled, true);
  assert.equal(report.outgoingEnabled, true);
});

test('IMAP/POP disabled for the account: protocol_disabled at authenticate, incoming not enabled', opts, async (t) => {
  const env = await setup(t);
  const mailbox = await connected(env, 'dave@example.test');
  const report = await env.sync.testAndEnable(mailbox.id);
  assert.equal(report.isSuccess(), false);
  assert.equal(report.outcome, 'failure');
  const d = report.incoming.diagnosis;
  assert.equal(d.step, 'authenticate');
  assert.equal(d.code, 'protocol_disabled');
  assert.equal(d.transient, false);
  assert.equal(d.nextAction, mailsync.nextAction('protocol_disabled'));
  assert.deepEqual(report.firstFailure(), d);
  assert.equal(report.incoming.steps.at(-1).step, 'authenticate');
  assert.equal(report.incoming.steps.at(-1).ok, false);
  assert.equal(report.incomingEnabled, false);
  const stored = await env.sync.getMailbox(mailbox.id);
  assert.equal(stored.incomingTest.status, 'failure');
  assert.equal(stored.incomingTest.code, 'protocol_disabled');
});

test('never-connected mailbox: not_connected at credentials; testAllMailboxes in address order', opts, async (t) => {
  const env = await setup(t);
  const alice = await connected(env, 'alice@example.test');
  const carol = await env.sync.createMailbox(MailboxSpec.user('carol@example.test'));
  const report = await env.sync.testAndEnable(carol.id);
  const d = report.firstFailure();
  assert.equal(d.step, 'credentials');
  assert.equal(d.code, 'not_connected');
  assert.equal(report.incoming.diagnosis.code, 'not_connected');
  assert.equal(report.incomingEnabled, false);
  assert.equal(report.outgoingEnabled, false);

  const reports = await env.sync.testAllMailboxes(env.imap.id);
  assert.deepEqual(reports.map((r) => r.email), ['alice@example.test', 'carol@example.test']);
  assert.equal(reports[0].mailboxId, alice.id);
  assert.equal(reports[0].isSuccess(), true, JSON.stringify(reports[0], null, 1));
  assert.equal(reports[1].firstFailure().code, 'not_connected');
});
