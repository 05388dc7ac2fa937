'use strict';
// Garbage in: every failure is a typed error and the process survives.
const test = require('node:test');
const assert = require('node:assert/strict');
const { mailsync, rejectsWith, ENV_URL, CLIENT_ID, SECRET } = require('./helpers');
const { MailSync, OAuthApp, ServerProfile, MailboxSpec, Authentication } = mailsync;

const app = () => OAuthApp.google(CLIENT_ID, SECRET).forEnvironment(ENV_URL);
const gmail = (name = 'G') => ServerProfile.gmail(name, app());
const UNKNOWN_ID = '00000000-0000-4000-8000-000000000000';

test('empty strings', async () => {
  const sync = MailSync.inMemory();
  await rejectsWith(() => OAuthApp.google(CLIENT_ID, SECRET).forEnvironment(''), 'validation', 'environment_url');
  await rejectsWith(() => OAuthApp.google('', SECRET).forEnvironment(ENV_URL).validate(), 'validation', 'client_id');
  await rejectsWith(() => OAuthApp.google(CLIENT_ID, '').forEnvironment(ENV_URL).validate(), 'validation', 'client_secret');
  await rejectsWith(sync.createProfile(gmail('')), 'validation', 'name');
  await rejectsWith(sync.createMailbox(MailboxSpec.user('')), 'validation', 'email');
  await rejectsWith(sync.getProfile(''), 'validation', 'id');
  await rejectsWith(sync.findProfile(''), 'not_found');
  await rejectsWith(sync.findMailbox(''), 'not_found');
  await rejectsWith(() => MailboxSpec.user('a@example.com').onProfile(''), 'validation', 'id');
  await rejectsWith(() => OAuthApp.google(CLIENT_ID, SECRET).forEnvironmentWithPath(ENV_URL, ''), 'validation', 'redirect_path');
});

test('absurd ports and numbers are validation errors naming the field', async () => {
  const sync = MailSync.inMemory();
  for (const port of [0, 70000, -1, 1.5, NaN, Infinity, 2 ** 40]) {
    const e = await rejectsWith(async () => {
      const p = gmail(`port ${port}`).withIncoming({ host: 'imap.example.com', port, security: 'tls' });
      await sync.createProfile(p);
    }, 'validation', 'incoming.port');
    assert.match(e.message, /incoming\.port/);
    await rejectsWith(() => gmail().withOutgoing({ host: 'smtp.example.com', port, security: 'tls' }).validate(),
      'validation', 'outgoing.port');
  }
  await rejectsWith(() => gmail().withMailboxCapacity(-1), 'validation', 'mailbox_capacity');
  await rejectsWith(() => gmail().withMailboxCapacity(2.5), 'validation', 'mailbox_capacity');
  await rejectsWith(sync.createProfile(gmail().withMailboxCapacity(0)), 'validation', 'mailbox_capacity');
  await rejectsWith(sync.createProfile(gmail().withMailboxCapacity(101)), 'validation', 'mailbox_capacity');
  const p = gmail();
  await rejectsWith(() => { p.mailboxCapacity = -5; }, 'validation', 'mailbox_capacity');
  await rejectsWith(() => { p.processing = { ...p.processing, connectionTimeoutSecs: -1 }; },
    'validation', 'processing.connection_timeout_secs');
  await rejectsWith(() => { p.processing = { ...p.processing, processEmailReceivedAfter: 'yesterday' }; },
    'validation', 'processing.process_email_received_after');
  p.processing = { ...p.processing, connectionTimeoutSecs: 1000 };
  await rejectsWith(sync.createProfile(p), 'validation', 'processing.connection_timeout_secs');
  await rejectsWith(() => gmail().withIncoming({ host: '', port: 993, security: 'tls' }).validate(),
    'validation', 'incoming.host');
});

test('unknown and malformed ids, malformed emails', async () => {
  const sync = MailSync.inMemory();
  await sync.createProfile(gmail().asDefaultForNewMailboxes());
  await rejectsWith(sync.getProfile(UNKNOWN_ID), 'not_found');
  await rejectsWith(sync.getProfile('not-a-uuid'), 'validation', 'id');
  await rejectsWith(sync.getMailbox(UNKNOWN_ID), 'not_found');
  await rejectsWith(sync.setDefaultProfile(UNKNOWN_ID), 'not_found');
  await rejectsWith(sync.deleteProfile(UNKNOWN_ID), 'not_found');
  await rejectsWith(sync.deleteMailbox(UNKNOWN_ID), 'not_found');
  await rejectsWith(sync.listMailboxes('garbage'), 'validation', 'id');
  await rejectsWith(sync.createMailbox(MailboxSpec.user('x@example.com').onProfile(UNKNOWN_ID)), 'not_found');
  await rejectsWith(sync.assignProfile(UNKNOWN_ID, UNKNOWN_ID), 'not_found');
  for (const email of ['no-at-sign', 'a@', '@example.com', 'a b@example.com', 'x'.repeat(400) + '@example.com']) {
    await rejectsWith(sync.createMailbox(MailboxSpec.user(email)), 'validation', 'email');
  }
  await rejectsWith(() => OAuthApp.google(CLIENT_ID, SECRET).forEnvironment('not a url'), 'validation', 'environment_url');
  await rejectsWith(
    sync.createProfile(ServerProfile.gmail('Bad users', app().withTestUsers(['not-an-email']))),
    'validation', 'consent_screen.test_users[0]');
  await rejectsWith(() => Authentication.oauthProvider('ftp://issuer', app()) && ServerProfile.generic('O',
    { protocol: 'imap', host: 'imap.example.com', port: 993, security: 'tls' },
    { host: 'smtp.example.com', port: 587, security: 'start_tls' },
    Authentication.oauthProvider('ftp://issuer', app())).validate(), 'validation', 'authentication.issuer');
});

test('wrong types: conversion errors are thrown as Errors, the process survives', async () => {
  const sync = MailSync.inMemory();
  const wrong = [
    () => OAuthApp.google(42, SECRET),
    () => OAuthApp.google(),
    () => OAuthApp.google(CLIENT_ID, SECRET).withAudience('nobody', 'testing'),
    () => OAuthApp.google(CLIENT_ID, SECRET).withTestUsers('not-an-array'),
    () => ServerProfile.gmail('x', { clientId: 'forged' }),
    () => ServerProfile.gmail('x', null),
    () => gmail().withIncoming({ host: 'h', port: 'x', security: 'tls' }),
    () => gmail().withIncoming({ host: 'h', port: 993, security: 'rot13' }),
    () => gmail().withIncoming('imap.example.com:993'),
    () => sync.createProfile({ name: 'plain object' }),
    () => sync.createMailbox('a@example.com'),
    () => sync.getProfile(12345),
    () => mailsync.SealKey.fromBytes('thirty-two-bytes-of-text........'),
  ];
  for (const call of wrong) {
    let caught;
    try {
      await call();
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof Error, `no error for ${call}`);
    assert.equal(typeof caught.code, 'string');
    assert.ok(caught.message.length > 0);
  }
  // Still alive and working.
  const p = await sync.createProfile(gmail('after garbage'));
  assert.equal((await sync.getProfile(p.id)).name, 'after garbage');
});
