// A small Node back-end integration on mailsync (Express):
//
//   - serves Google's redirect endpoint, <PUBLIC_URL>/_grid/cmds/dlg_gmailoauth.aspx, completes the
//     connection there and runs Test & Enable right after;
//   - runs the sync engine, keeping the synced mail in a JSON-lines file (keyed: delivery is at
//     least once);
//   - forwards mailbox lifecycle events (connected, needs re-consent, disabled, ...) to a
//     webhook as JSON.
//
// Configuration (environment):
//   PORT                  listen port on 127.0.0.1 (default 8765; 0 = any free port)
//   PUBLIC_URL            the URL users reach this service at (default http://127.0.0.1:<port>);
//                         the redirect URI is PUBLIC_URL + /_grid/cmds/dlg_gmailoauth.aspx
//   GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET   the Web OAuth client (Google Cloud console)
//   DATA_DIR              mailsync.db (+ .key) and mail.jsonl (default ./data)
//   WEBHOOK_URL           where events go (POST, JSON); unset: events are only logged
//   WEBHOOK_EVENTS        comma-separated event kinds to forward (default
//                         connected,consent_failed,needs_reconsent,disconnected,direction_enabled,direction_disabled)
//   MAILSYNC_STACK        the local test stack's stack.json instead of Google (its OAuth server,
//                         CA, Dovecot and Postfix; its web client when GOOGLE_CLIENT_ID is unset)
//   POSTPONE_SECS, MAX_IDLE_SECS   the engine's pace (defaults 300 and 30)
//   MIN_POLLING_MINUTES   the profile's minimum polling interval (default: the Gmail preset's)
//
// The HTTP API (JSON):
//   POST /mailboxes {email, since?, incomingFilter?}  → 201 {id, email, connectUrl}
//   GET  /mailboxes/:id            → {mailbox, grant, incoming, outgoing, alerts, messages}
//   GET  /mailboxes/:id/connect    → 302 to Google's consent page
//   POST /mailboxes/:id/test       → the Test & Enable report
//   POST /mailboxes/:id/sync       → one sync cycle's report
//   GET  /mailboxes/:id/messages   → the synced messages (key, messageId, subject, from, date)
//   GET  /_grid/cmds/dlg_gmailoauth.aspx?code=…&state=…   (the browser, back from consent)
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const express = require('express');
const {
  MailSync, MailsyncError, Engine, defaultOptions, defaultEngineOptions, googleApp, appForEnvironment,
  appWithAudience, appWithTestUsers, gmailProfile, userMailbox, errorNextAction,
} = require('mailsync');

const CALLBACK_PATH = '/_grid/cmds/dlg_gmailoauth.aspx';
const PROFILE_NAME = 'Gmail (node example)';
const env = process.env;
const DEFAULT_EVENTS = 'connected,consent_failed,needs_reconsent,disconnected,direction_enabled,direction_disabled';

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const log = (...a) => console.log(new Date().toISOString(), ...a);

/** The synced mail: an append-only JSON-lines file, one line per message key. */
class MailFile {
  constructor(file) {
    this.file = file;
    this.byKey = new Map();
    if (fs.existsSync(file)) {
      for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
        if (line) { const m = JSON.parse(line); this.byKey.set(m.key, m); }
      }
    }
  }

  // The engine's sink: one outcome per message, in order.
  async deliver(messages) {
    const lines = [];
    for (const m of messages) {
      if (this.byKey.has(m.key)) continue; // delivered again after a crash: already here
      const row = {
        key: m.key, mailboxId: m.mailboxId, messageId: m.messageId, threadId: m.threadId,
        inReplyTo: m.inReplyTo, subject: m.subject, from: m.from.map((a) => a.address),
        date: m.date, size: m.size,
      };
      this.byKey.set(m.key, row);
      lines.push(JSON.stringify(row));
    }
    if (lines.length) await fs.promises.appendFile(this.file, lines.join('\n') + '\n');
    return messages.map(() => 'stored');
  }

  of(mailboxId) {
    return [...this.byKey.values()].filter((m) => m.mailboxId === mailboxId);
  }
}

/** Forwards events to the webhook, in order, one at a time (a slow webhook delays, never drops). */
class Webhook {
  constructor(url, kinds) {
    this.url = url;
    this.kinds = new Set(kinds.split(',').map((k) => k.trim()).filter(Boolean));
    this.queue = Promise.resolve();
  }

  forward(event) {
    if (!this.kinds.has(event.kind)) return;
    const body = {
      event: event.kind, mailboxId: event.mailboxId, email: event.email, direction: event.direction ?? null,
      code: event.code ?? null, message: event.message, at: event.at,
      nextAction: event.code ? errorNextAction(event.code) : null,
    };
    log('event', event.kind, event.email, event.direction ?? '', event.code ?? '');
    if (!this.url) return;
    this.queue = this.queue.then(async () => {
      for (let attempt = 1; attempt <= 3; attempt++) {
        try {
          const r = await fetch(this.url, {
            method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
            signal: AbortSignal.timeout(10_000),
          });
          if (r.ok) return;
          log(`webhook answered ${r.status} (attempt ${attempt})`);
        } catch (e) {
          log(`webhook failed: ${e.message} (attempt ${attempt})`);
        }
        await new Promise((res) => setTimeout(res, 500 * attempt));
      }
    });
  }
}

async function main() {
  const stack = env.MAILSYNC_STACK ? JSON.parse(fs.readFileSync(env.MAILSYNC_STACK, 'utf8')) : null;
  const clientId = env.GOOGLE_CLIENT_ID || stack?.oauth.client_id;
  const clientSecret = env.GOOGLE_CLIENT_SECRET || stack?.oauth.client_secret;
  if (!clientId || !clientSecret) throw new Error('set GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET (or MAILSYNC_STACK)');
  const dataDir = env.DATA_DIR || 'data';
  fs.mkdirSync(dataDir, { recursive: true });

  const app = express();
  app.use(express.json());
  // Listen first: with PORT=0 the port (and so the redirect URI) is known only then.
  const server = await new Promise((resolve) => {
    const s = app.listen(Number(env.PORT ?? 8765), '127.0.0.1', () => resolve(s));
  });
  const publicUrl = (env.PUBLIC_URL || `http://127.0.0.1:${server.address().port}`).replace(/\/$/, '');

  const options = { ...defaultOptions() };
  if (stack) {
    options.googleIssuerOverride = stack.oauth.issuer;
    options.extraRootCertsPem = [fs.readFileSync(stack.ca_cert, 'utf8')];
  }
  const sync = await MailSync.open({ kind: 'sqlite', path: path.join(dataDir, 'mailsync.db') }, options);
  const webhook = new Webhook(env.WEBHOOK_URL, env.WEBHOOK_EVENTS || DEFAULT_EVENTS);
  const subscription = await sync.subscribe(null, (event) => webhook.forward(event));

  // The Gmail profile for this client and redirect URI (created, or updated when they changed).
  let oauthApp = appForEnvironment(googleApp(clientId, clientSecret), publicUrl);
  oauthApp = appWithAudience(oauthApp, 'external', 'testing');
  const wanted = gmailProfile(PROFILE_NAME, oauthApp);
  if (env.MIN_POLLING_MINUTES) {
    wanted.processing = { ...wanted.processing, minPollingIntervalMinutes: Number(env.MIN_POLLING_MINUTES) };
  }
  if (stack) {
    wanted.incoming = { protocol: 'imap', endpoint: { host: stack.imap.host, port: stack.imap.tls_port, security: 'tls' } };
    wanted.outgoing = { host: stack.smtp.host, port: stack.smtp.starttls_port, security: 'start_tls' };
  }
  let profile = (await sync.directory.listProfiles()).find((p) => p.name === PROFILE_NAME);
  if (!profile) {
    profile = await sync.directory.createProfile({ ...wanted, defaultForNewMailboxes: true });
  } else {
    // Keep the test users added so far; take the client, redirect URI and endpoints from now.
    const users = profile.authentication.app?.consentScreen.testUsers ?? [];
    const app = appWithTestUsers(wanted.authentication.app, users);
    profile = await sync.directory.updateProfile({
      ...profile, authentication: { ...wanted.authentication, app }, incoming: wanted.incoming, outgoing: wanted.outgoing,
      processing: wanted.processing,
    });
  }

  const mail = new MailFile(path.join(dataDir, 'mail.jsonl'));
  const engine = new Engine(sync, mail, {
    ...defaultEngineOptions(), postponeSecs: Number(env.POSTPONE_SECS ?? 300),
  });
  const handle = engine.start(Number(env.MAX_IDLE_SECS ?? 30));

  // Errors: mailsync's stable code, message and next action.
  const failure = (res, e) => {
    if (e instanceof MailsyncError) {
      const status = e.code === 'not_found' ? 404 : e.code === 'validation' ? 400 : 409;
      return res.status(status).json({ code: e.code, message: e.message, field: e.field ?? null, nextAction: e.nextAction });
    }
    log('internal error', e);
    return res.status(500).json({ code: 'internal', message: String(e?.message ?? e) });
  };
  const route = (fn) => async (req, res) => { try { await fn(req, res); } catch (e) { failure(res, e); } };

  app.post('/mailboxes', route(async (req, res) => {
    const email = String(req.body?.email ?? '');
    // Google's Testing audience admits only its test users: add the address first.
    const p = await sync.directory.getProfile(profile.id);
    const users = p.authentication.app.consentScreen.testUsers;
    if (!users.includes(email.toLowerCase())) {
      profile = await sync.directory.updateProfile({
        ...p, authentication: { ...p.authentication, app: appWithTestUsers(p.authentication.app, [...users, email]) },
      });
    }
    const m = await sync.directory.createMailbox({
      ...userMailbox(email),
      profileId: profile.id,
      // The library's default (Dynamics') tracks only replies to CRM mail; this service has no
      // tracked mail of its own, so it takes everything unless told otherwise.
      incomingFilter: req.body?.incomingFilter ?? 'all',
      processEmailReceivedAfter: req.body?.since ? new Date(req.body.since) : undefined,
    });
    res.status(201).json({ id: m.id, email: m.email, connectUrl: `${publicUrl}/mailboxes/${m.id}/connect` });
  }));

  app.get('/mailboxes/:id', route(async (req, res) => {
    const s = await sync.directory.status(req.params.id);
    res.json({
      mailbox: { id: s.mailbox.id, email: s.mailbox.email }, grant: s.state.grant,
      incoming: s.state.incoming.status, outgoing: s.state.outgoing.status,
      alerts: s.alerts, messages: mail.of(req.params.id).length,
    });
  }));

  app.get('/mailboxes/:id/messages', route(async (req, res) => {
    await sync.directory.getMailbox(req.params.id);
    res.json(mail.of(req.params.id));
  }));

  app.get('/mailboxes/:id/connect', route(async (req, res) => {
    const { url } = await sync.connections.connect(req.params.id);
    res.redirect(303, url);
  }));

  app.post('/mailboxes/:id/test', route(async (req, res) => {
    res.json(await sync.checks.testAndEnable(req.params.id, { sendTestMessage: false }));
  }));

  app.post('/mailboxes/:id/sync', route(async (req, res) => {
    res.json(await engine.runOnce(req.params.id));
  }));

  // Google sends the browser back here: complete, then Test & Enable.
  app.get(CALLBACK_PATH, async (req, res) => {
    const page = (status, title, body) => res.status(status).type('html')
      .send(`<!doctype html><meta charset="utf-8"><title>${escapeHtml(title)}</title><h1>${escapeHtml(title)}</h1>${body}`);
    let status;
    try {
      status = await sync.connections.complete(publicUrl + req.originalUrl);
    } catch (e) {
      if (!(e instanceof MailsyncError)) { log('internal error', e); return page(500, 'Something went wrong', ''); }
      return page(400, 'Gmail was not connected',
        `<p id="code">${escapeHtml(e.code)}</p><p>${escapeHtml(e.message)}</p><p>Next: ${escapeHtml(e.nextAction)}</p>`);
    }
    const report = await sync.checks.testAndEnable(status.mailbox.id, { sendTestMessage: false });
    const d = report.incoming?.diagnosis ?? report.outgoing?.diagnosis;
    page(200, `${status.mailbox.email} is connected`,
      report.outcome === 'success'
        ? '<p id="outcome">success</p><p>Test &amp; Enable passed: mail sync is on. You can close this window.</p>'
        : `<p id="outcome">${escapeHtml(report.outcome)}</p><p>Test &amp; Enable failed at ${escapeHtml(d?.step)}: `
          + `<span id="code">${escapeHtml(d?.code)}</span> ${escapeHtml(d?.message)}</p><p>Next: ${escapeHtml(d?.nextAction)}</p>`);
  });

  app.get('/healthz', (req, res) => res.json({ ok: true }));

  console.log(`listening on ${publicUrl} (redirect URI ${publicUrl}${CALLBACK_PATH})`);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    server.close();
    await handle.stop();
    await webhook.queue;
    subscription.cancel();
    await sync.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e instanceof MailsyncError ? `error: ${e.code}: ${e.message}\nnext: ${e.nextAction}` : e);
  process.exit(1);
});
