//! The OAuth and Test & Enable commands against the real local stack:
//! connect → consent → complete → token → test-enable → disconnect, and a
//! denied consent, as a script would drive them.

use mailsync_e2e::Stack;
use std::path::Path;
use std::process::{Command, Output};

fn mailsync(stack: &Stack, db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("MAILSYNC_CLIENT_SECRET", &stack.oauth.client_secret)
        .env("MAILSYNC_EXTRA_ROOT_CERT", &stack.ca_cert)
        .env("MAILSYNC_GOOGLE_ISSUER_OVERRIDE", &stack.oauth.issuer)
        .env_remove("MAILSYNC_LOG")
        .output()
        .expect("run mailsync")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup(stack: &Stack, db: &Path, email: &str) {
    let imap = stack.imap.tls_port.to_string();
    let smtp = stack.smtp.starttls_port.to_string();
    let created = mailsync(
        stack,
        db,
        &[
            "profile",
            "create-gmail",
            "--name",
            "Local",
            "--client-id",
            &stack.oauth.client_id,
            "--environment-url",
            "http://localhost:8765",
            "--default",
            "--incoming-host",
            &stack.imap.host,
            "--incoming-port",
            &imap,
            "--outgoing-host",
            &stack.smtp.host,
            "--outgoing-port",
            &smtp,
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    let added = mailsync(stack, db, &["mailbox", "add", email]);
    assert!(added.status.success(), "{}", text(&added));
}

fn consent_url(stack: &Stack, db: &Path, email: &str) -> String {
    let out = mailsync(stack, db, &["--json", "mailbox", "connect", email]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["url"].as_str().unwrap().to_owned()
}

#[test]
fn connect_complete_test_enable_disconnect() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let email = "alice@example.test";
    setup(&stack, &db, email);

    let url = consent_url(&stack, &db, email);
    let callback = mailsync_e2e::consent(&url, email, &stack.account(email).password, false);
    let completed = mailsync(&stack, &db, &["--json", "mailbox", "complete", &callback]);
    assert!(completed.status.success(), "{}", text(&completed));
    let mailbox: serde_json::Value = serde_json::from_slice(&completed.stdout).unwrap();
    assert_eq!(mailbox["connection"]["state"], "connected");

    let printed = mailsync(&stack, &db, &["mailbox", "token", email, "--print"]);
    let token = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
    assert!(token.len() > 10);
    let check = mailsync(&stack, &db, &["mailbox", "token", email, "--check"]);
    assert!(check.status.success() && text(&check).contains("valid access token"));

    let tested = mailsync(&stack, &db, &["mailbox", "test-enable", email]);
    assert!(tested.status.success(), "{}", text(&tested));
    assert!(text(&tested).contains("ENABLED") && text(&tested).contains("select_inbox"));

    let disconnected = mailsync(&stack, &db, &["mailbox", "disconnect", email]);
    assert!(disconnected.status.success(), "{}", text(&disconnected));
    let after = mailsync(&stack, &db, &["mailbox", "token", email]);
    assert_eq!(after.status.code(), Some(1));
    assert!(text(&after).contains("[not_connected]"), "{}", text(&after));

    // Only --print ever shows the token.
    for o in [&completed, &check, &tested, &disconnected, &after] {
        assert!(!text(o).contains(&token), "token leaked");
    }
}

#[test]
fn denied_consent_is_consent_denied() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let email = "bob@example.test";
    setup(&stack, &db, email);
    let url = consent_url(&stack, &db, email);
    let callback = mailsync_e2e::consent(&url, email, &stack.account(email).password, true);
    let out = mailsync(&stack, &db, &["mailbox", "complete", &callback]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("[consent_denied]"), "{}", text(&out));
}
