#!/usr/bin/env python3
"""Sync one Gmail mailbox into a SQLite file, once, with mailsync's blocking API.

For an automation script (cron job, one-off export): no web server, no asyncio.

    python gmail_sync.py EMAIL --client-id ID [--client-secret SECRET] [--out mail.sqlite]
                         [--db mailsync.db] [--port 8765] [--since now|RFC3339] [--stack stack.json]

What it does, each step one mailsync call:

1. opens (or creates) the mailsync store `--db` (its seal key lands next to it, `<db>.key`);
2. makes sure a Gmail server profile exists for the Web OAuth client, with the redirect URI
   http://127.0.0.1:PORT/_grid/cmds/dlg_gmailoauth.aspx (register exactly this URI on the client
   in the Google Cloud console) and EMAIL as a test user;
3. makes sure the mailbox exists;
4. if it is not connected: listens on 127.0.0.1:PORT, opens the consent page in a browser
   (Python's `webbrowser`: the BROWSER environment variable picks the command), waits for
   Google's redirect to the listener and completes the connection;
5. runs Test & Enable (IMAP and SMTP) and prints the failing step if one fails;
6. syncs the inbox once into `--out` (table `messages`, one row per message, keyed by
   mailsync's message key, so running again adds only what is new);
7. prints a summary.

On failure it prints `error: <code>: <message>` and `next: <next action>` on stderr and exits
with status 1 (2 for bad arguments). The code is mailsync's stable error code
(docs/errors.md), e.g. `consent_denied`, `protocol_disabled`, `token_revoked`.

`--stack tests/stack/run/stack.json` points everything at the local test stack instead of
Google (its OAuth server, CA, Dovecot and Postfix; its web client when --client-id is left out).
"""

import argparse
import http.server
import json
import os
import sqlite3
import sys
import threading
import webbrowser
from datetime import datetime, timezone

import mailsync
from mailsync.blocking import Engine, MailSync

CALLBACK_PATH = "/_grid/cmds/dlg_gmailoauth.aspx"
PROFILE_NAME = "Gmail (gmail_sync.py)"


class Failed(Exception):
    """A failure with a mailsync error code, for the exit path."""

    def __init__(self, code, message, next_action):
        super().__init__(message)
        self.code, self.next_action = code, next_action


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("email", help="the Gmail address to sync")
    ap.add_argument("--client-id", help="the Web OAuth client's id (Google Cloud console › Credentials)")
    ap.add_argument("--client-secret", default=os.environ.get("GOOGLE_CLIENT_SECRET"),
                    help="its secret (default: $GOOGLE_CLIENT_SECRET)")
    ap.add_argument("--db", default="mailsync.db", help="mailsync's store (default mailsync.db)")
    ap.add_argument("--out", default="mail.sqlite", help="where the mail goes (default mail.sqlite)")
    ap.add_argument("--port", type=int, default=8765, help="the loopback redirect listener's port (default 8765)")
    ap.add_argument("--since", default=None,
                    help="for a new mailbox: take in mail received from this time on (now, or RFC 3339); default all")
    ap.add_argument("--consent-timeout", type=int, default=300, help="seconds to wait for the browser (default 300)")
    ap.add_argument("--stack", help="the local test stack's stack.json instead of Google")
    a = ap.parse_args()
    if a.stack:
        a.stack = json.load(open(a.stack))
        a.client_id = a.client_id or a.stack["oauth"]["client_id"]
        a.client_secret = a.client_secret or a.stack["oauth"]["client_secret"]
    if not a.client_id or not a.client_secret:
        ap.error("--client-id and --client-secret (or $GOOGLE_CLIENT_SECRET) are required")
    return a


def open_store(a):
    options = mailsync.default_options()
    if a.stack:  # the stack's OAuth server plays Google, its CA signs its mail servers
        options.google_issuer_override = a.stack["oauth"]["issuer"]
        options.extra_root_certs_pem = [open(a.stack["ca_cert"]).read()]
    return MailSync.open(mailsync.StoreLocation.sqlite(a.db), options)


def ensure_profile(sync, a, environment_url):
    """The Gmail profile for this client and redirect URI (created, or updated when they changed)."""
    app = mailsync.google_app(a.client_id, a.client_secret)
    app = mailsync.app_for_environment(app, environment_url, None)  # redirect: <url>/_grid/cmds/dlg_gmailoauth.aspx
    app = mailsync.app_with_audience(app, "external", "testing")
    app = mailsync.app_with_test_users(app, [a.email])
    wanted = mailsync.gmail_profile(PROFILE_NAME, app)  # imap.gmail.com:993 TLS, smtp.gmail.com:587 STARTTLS
    if a.stack:
        wanted.incoming = mailsync.IncomingEndpoint(
            "imap", mailsync.Endpoint(a.stack["imap"]["host"], a.stack["imap"]["tls_port"], "tls"))
        wanted.outgoing = mailsync.Endpoint(a.stack["smtp"]["host"], a.stack["smtp"]["starttls_port"], "start_tls")
    existing = [p for p in sync.directory.list_profiles() if p.name == PROFILE_NAME]
    if not existing:
        wanted.default_for_new_mailboxes = True
        return sync.directory.create_profile(wanted)
    profile = existing[0]
    auth = profile.authentication
    if (isinstance(auth, mailsync.Authentication.GmailOAuth) and auth.app.client_id == a.client_id
            and auth.app.redirect_uris == app.redirect_uris and profile.incoming == wanted.incoming
            and profile.outgoing == wanted.outgoing):
        return profile
    profile.authentication, profile.incoming, profile.outgoing = wanted.authentication, wanted.incoming, wanted.outgoing
    return sync.directory.update_profile(profile)


def ensure_mailbox(sync, a, profile):
    for m in sync.directory.list_mailboxes(profile.id):
        if m.email == a.email.lower():
            return m
    spec = mailsync.user_mailbox(a.email)
    spec.profile_id = profile.id
    spec.incoming_filter = "all"
    if a.since:
        spec.process_email_received_after = (
            datetime.now(timezone.utc) if a.since == "now" else datetime.fromisoformat(a.since.replace("Z", "+00:00")))
    return sync.directory.create_mailbox(spec)


class CallbackListener:
    """A one-shot HTTP listener on 127.0.0.1 that catches Google's redirect."""

    def __init__(self, port):
        self.url = None
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not self.path.startswith(CALLBACK_PATH + "?"):
                    self.send_error(404)
                    return
                outer.url = f"http://127.0.0.1:{outer.port}{self.path}"
                body = b"<!doctype html><p>Thanks: you can close this window and go back to the terminal.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.arrived.set()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout):
        if not self.arrived.wait(timeout):
            raise Failed("timeout", f"no redirect came back within {timeout} s",
                         "Open the consent link again and finish it in the browser.")
        return self.url

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def connect(sync, mailbox, listener, timeout):
    """Consent in the browser, then complete with the URL the browser came back with."""
    request = sync.connections.connect(mailbox.id)  # ConsentRequest: url, expires_at
    print(f"Opening the consent page for {mailbox.email} (if no browser opens, visit):\n  {request.url}", flush=True)
    webbrowser.open(request.url)
    callback_url = listener.wait(timeout)
    status = sync.connections.complete(callback_url)  # raises ConsentDeniedError, StateInvalidError, ...
    print(f"Connected as {status.state.grant.account}.")


class SqliteSink:
    """The engine's sink: one row per message, keyed (delivery is at least once)."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("""create table if not exists messages (
            key text primary key, mailbox_id text not null, message_id text, thread_id text,
            in_reply_to text, subject text, sender text, date text, size integer, raw blob)""")
        self.db.commit()
        self.new = 0

    def deliver(self, messages):
        for m in messages:
            sender = ", ".join(f"{x.name} <{x.address}>" if x.name else x.address for x in m.from_)
            cur = self.db.execute(
                "insert or ignore into messages values (?,?,?,?,?,?,?,?,?,?)",
                (m.key, m.mailbox_id, m.message_id, m.thread_id, " ".join(m.in_reply_to), m.subject, sender,
                 m.date.isoformat() if m.date else None, m.size, m.raw))
            self.new += cur.rowcount
        self.db.commit()
        return ["stored"] * len(messages)

    def count(self, mailbox_id):
        return self.db.execute("select count(*) from messages where mailbox_id = ?", (mailbox_id,)).fetchone()[0]


def test_and_enable(sync, mailbox):
    report = sync.checks.test_and_enable(mailbox.id, mailsync.TestOptions(False))
    for d in (report.incoming, report.outgoing):
        if d is None:
            continue
        steps = " ".join(f"{s.step}:{'ok' if s.ok else 'FAILED'}" for s in d.steps)
        print(f"Test & Enable {d.direction} {d.protocol} {d.server}: {steps}")
        if d.diagnosis:
            x = d.diagnosis
            raise Failed(x.code, f"{d.direction} failed at step {x.step}: {x.message}", x.next_action)


def run(a):
    sync = open_store(a)
    listener = None
    try:
        # The listener's port is part of the redirect URI, so it is bound first (--port 0: any free port).
        listener = CallbackListener(a.port)
        profile = ensure_profile(sync, a, f"http://127.0.0.1:{listener.port}")
        mailbox = ensure_mailbox(sync, a, profile)
        if not isinstance(sync.directory.state(mailbox.id).grant, mailsync.GrantStatus.Connected):
            connect(sync, mailbox, listener, a.consent_timeout)
        listener.close()
        listener = None
        state = sync.directory.state(mailbox.id)
        if not isinstance(state.incoming.status, mailsync.DirectionStatus.Enabled):
            test_and_enable(sync, mailbox)
        sink = SqliteSink(a.out)
        engine = Engine(sync, sink, mailsync.default_engine_options())
        totals = dict(delivered=0, skipped=0, filtered=0, already_had=0, bytes=0)
        while True:
            r = engine.run_once(mailbox.id)  # CycleReport; a failed cycle is reported, not raised
            if r.error_code:
                raise Failed(r.error_code, r.error_message or "", mailsync.error_next_action(r.error_code))
            for k in totals:
                totals[k] += getattr(r, k)
            if not r.more:
                break
        print(f"Synced {mailbox.email}: {totals['delivered']} delivered ({sink.new} new rows), "
              f"{totals['skipped']} skipped, {totals['filtered']} filtered, {totals['already_had']} already had, "
              f"{totals['bytes']} bytes; {sink.count(mailbox.id)} messages in {a.out}")
    finally:
        if listener:
            listener.close()
        sync.close()


def main():
    a = parse_args()
    try:
        run(a)
    except mailsync.MailsyncError as e:
        fail(e.code, str(e), e.next_action)
    except Failed as e:
        fail(e.code, str(e), e.next_action)
    return 0


def fail(code, message, next_action):
    print(f"error: {code}: {message}", file=sys.stderr)
    print(f"next: {next_action}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
