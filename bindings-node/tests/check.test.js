'use strict';
// Test & Enable against the local test stack (the `web` client; nothing here revokes).
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const { mailsync } = require('./helpers');
const { needsStack, setup, connected } = require('./stack');
const { errorNextAction, userMailbox } = mailsync;

const opts = needsStack();
const NO_MESSAGE = { sendTestMessage: false };

function steps(direction) {
  return direction.steps.map((s) => `${s.step}:${s.ok ? 'ok' : 'failed'}`);
}

test('IMAP + SMTP STARTTLS: success, steps listed, both directions enabled', opts, async (t) => {
  const env = await setup(t);
  const { checks, directory, connections } = env.sync;
  const { mailbox } = await connected(env, 'alice@example.test');
  const report = await checks.testAndEnable(mailbox.id, NO_MESSAGE);
  assert.equal(report.outcome, 'success', JSON.stringify(report, null, 1));
  assert.equal(report.mailboxId, mailbox.id);
  assert.equal(report.email, 'alice@example.test');
  assert.equal(report.incomingEnabled, true);
  assert.equal(report.outgoingEnabled, true);
  assert.ok(report.testedAt instanceof Date);
  const incoming = report.incoming;
  assert.equal(incoming.direction, 'incoming');
  assert.equal(incoming.protocol, 'IMAP');
  assert.equal(incoming.server, `${env.stack.imap.host}:${env.stack.imap.tls_port}`);
  assert.equal(incoming.success, true);
  assert.equal(incoming.diagnosis, undefined);
  assert.deepEqual(steps(incoming).slice(0, 1), ['credentials:ok']);
  assert.ok(steps(incoming).includes('authenticate:ok'), steps(incoming).join());
  assert.ok(steps(incoming).includes('select_inbox:ok'), steps(incoming).join());
  assert.ok(incoming.steps.every((s) => Number.isInteger(s.durationMs) && s.durationMs >= 0));
  const outgoing = report.outgoing;
  assert.equal(outgoing.direction, 'outgoing');
  assert.equal(outgoing.protocol, 'SMTP');
  assert.ok(steps(outgoing).includes('ehlo:ok'), steps(outgoing).join());
  assert.ok(steps(outgoing).includes('authenticate:ok'), steps(outgoing).join());

  const state = await directory.state(mailbox.id);
  assert.equal(state.incoming.status.status, 'enabled');
  assert.equal(state.outgoing.status.status, 'enabled');
  assert.equal(state.incoming.lastTest.status, 'success');
  assert.equal(state.outgoing.lastTest.status, 'success');
  assert.equal((await checks.lastProfileTest(env.imap.id)).outcome, 'success');
  const enabled = await env.events.next('direction_enabled', mailbox.id);
  // One event for both directions (no `direction`), with the state after it.
  assert.equal(enabled.direction, undefined);
  assert.deepEqual([enabled.state.incoming.status.status, enabled.state.outgoing.status.status], ['enabled', 'enabled']);

  const token = (await connections.accessToken(mailbox.id)).token;
  for (const text of [JSON.stringify(report), util.inspect(report, { depth: 10 }), JSON.stringify(env.events.events)]) {
    assert.ok(!text.includes(token));
  }
});

test('POP3 + SMTP TLS: success, STAT step, enabled', opts, async (t) => {
  const env = await setup(t);
  const { mailbox } = await connected(env, 'bob@example.test', env.pop3);
  assert.equal(mailbox.profileId, env.pop3.id);
  const report = await env.sync.checks.testAndEnable(mailbox.id, NO_MESSAGE);
  assert.equal(report.outcome, 'success', JSON.stringify(report, null, 1));
  assert.equal(report.incoming.protocol, 'POP3');
  assert.equal(report.incoming.server, `${env.stack.pop3.host}:${env.stack.pop3.tls_port}`);
  assert.ok(steps(report.incoming).includes('stat:ok'), steps(report.incoming).join());
  assert.equal(report.outgoing.server, `${env.stack.smtp.host}:${env.stack.smtp.tls_port}`);
  assert.equal(report.incomingEnabled, true);
  assert.equal(report.outgoingEnabled, true);
});

test('IMAP/POP disabled for the account: protocol_disabled at authenticate, incoming not enabled', opts, async (t) => {
  const env = await setup(t);
  const { mailbox } = await connected(env, 'dave@example.test');
  const report = await env.sync.checks.testAndEnable(mailbox.id, NO_MESSAGE);
  assert.equal(report.outcome, 'failure');
  const d = report.incoming.diagnosis;
  assert.equal(d.step, 'authenticate');
  assert.equal(d.code, 'protocol_disabled');
  assert.equal(d.transient, false);
  assert.equal(d.nextAction, errorNextAction('protocol_disabled'));
  assert.equal(report.incoming.steps.at(-1).step, 'authenticate');
  assert.equal(report.incoming.steps.at(-1).ok, false);
  assert.equal(report.incomingEnabled, false);
  assert.equal(report.outgoingEnabled, true);
  const state = await env.sync.directory.state(mailbox.id);
  assert.equal(state.incoming.lastTest.status, 'failure');
  assert.equal(state.incoming.lastTest.code, 'protocol_disabled');
  assert.equal(state.incoming.status.status, 'disabled');
  assert.equal((await env.events.next('direction_disabled', mailbox.id)).code, 'protocol_disabled');
});

test('never-connected mailbox: not_connected at credentials; testAll in address order', opts, async (t) => {
  const env = await setup(t);
  const { checks, directory } = env.sync;
  const alice = (await connected(env, 'alice@example.test')).mailbox;
  const carol = await directory.createMailbox(userMailbox('carol@example.test'));
  const report = await checks.testAndEnable(carol.id, NO_MESSAGE);
  assert.equal(report.incoming.diagnosis.step, 'credentials');
  assert.equal(report.incoming.diagnosis.code, 'not_connected');
  assert.equal(report.incomingEnabled, false);
  assert.equal(report.outgoingEnabled, false);

  const reports = await checks.testAll(env.imap.id, NO_MESSAGE);
  assert.deepEqual(reports.map((r) => r.email), ['alice@example.test', 'carol@example.test']);
  assert.equal(reports[0].mailboxId, alice.id);
  assert.equal(reports[0].outcome, 'success', JSON.stringify(reports[0], null, 1));
  assert.equal(reports[1].incoming.diagnosis.code, 'not_connected');
});
