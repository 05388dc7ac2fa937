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
    let status: serde_json::Value = serde_json::from_slice(&completed.stdout).unwrap();
    assert_eq!(status["state"]["grant"]["status"], "connected");
    assert_eq!(status["state"]["grant"]["account"], email);

    let printed = mailsync(&stack, &db, &["mailbox", "token", email, "--print"]);
    let token = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
    assert!(token.len() > 10);
    let check = mailsync(&stack, &db, &["mailbox", "token", email, "--check"]);
    assert!(
        check.status.success() && text(&check).contains("is valid until"),
        "{}",
        text(&check)
    );

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

/// `mailbox complete` prints a sentence in table mode, not a JSON object.
#[test]
fn complete_prints_the_connection_for_people() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let email = "carol@example.test";
    setup(&stack, &db, email);
    let url = consent_url(&stack, &db, email);
    let callback = mailsync_e2e::consent(&url, email, &stack.account(email).password, false);
    let completed = mailsync(&stack, &db, &["mailbox", "complete", &callback]);
    assert!(completed.status.success(), "{}", text(&completed));
    let out = String::from_utf8_lossy(&completed.stdout).into_owned();
    assert_eq!(out.trim(), format!("{email}: connected ({email})"));
}

/// Reads the consent URL that `connect --listen` prints on stderr.
fn listen_url(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut next_is_url = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if next_is_url {
            // Keep draining stderr so the child never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return line;
        }
        next_is_url = line.starts_with("Open this URL");
    }
    panic!("connect --listen printed no consent URL");
}

/// What the browser is shown when it lands on the redirect URI.
fn browser_lands_on(redirect: &str) -> String {
    use std::io::{Read, Write};
    let url = url::Url::parse(redirect).unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", url.port().unwrap())).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    write!(
        conn,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    page
}

/// `connect --listen` tells the browser what happened: declined with its
/// code and next action, or connected.
#[test]
fn listen_shows_the_outcome_in_the_browser() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let email = "dave@example.test";
    setup(&stack, &db, email);
    let password = stack.account(email).password.clone();
    for deny in [true, false] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .arg("--db")
            .arg(&db)
            .args(["mailbox", "connect", email, "--listen", "--no-browser"])
            .env("MAILSYNC_CLIENT_SECRET", &stack.oauth.client_secret)
            .env("MAILSYNC_EXTRA_ROOT_CERT", &stack.ca_cert)
            .env("MAILSYNC_GOOGLE_ISSUER_OVERRIDE", &stack.oauth.issuer)
            .env_remove("MAILSYNC_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let url = listen_url(&mut child);
        let redirect = mailsync_e2e::consent(&url, email, &password, deny);
        let page = browser_lands_on(&redirect);
        let out = child.wait_with_output().unwrap();
        if deny {
            assert!(page.contains("Access declined"), "{page}");
            assert!(page.contains("[consent_denied]"), "{page}");
            assert!(page.contains("connect again"), "{page}");
            assert_eq!(out.status.code(), Some(1));
        } else {
            assert!(page.contains("Connected"), "{page}");
            assert!(page.contains(&format!("{email} is connected")), "{page}");
            assert!(out.status.success());
        }
        assert!(!page.contains("Done."), "{page}");
    }
}

/// Two CLI processes asking for a token at once, with 5-second tokens
/// (shorter than the refresh skew), make one refresh and print one token.
#[test]
fn two_cli_processes_with_five_second_tokens_refresh_once() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let email = "alice@example.test";
    let short = stack.oauth.client("short").clone();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mailsync"))
            .arg("--db")
            .arg(&db)
            .args(args)
            .env("MAILSYNC_CLIENT_SECRET", &short.client_secret)
            .env("MAILSYNC_EXTRA_ROOT_CERT", &stack.ca_cert)
            .env("MAILSYNC_GOOGLE_ISSUER_OVERRIDE", &stack.oauth.issuer)
            .env_remove("MAILSYNC_LOG")
            .output()
            .unwrap()
    };
    let created = run(&[
        "profile",
        "create-gmail",
        "--name",
        "Short",
        "--client-id",
        &short.client_id,
        "--environment-url",
        "http://localhost:8765",
        "--default",
    ]);
    assert!(created.status.success(), "{}", text(&created));
    assert!(run(&["mailbox", "add", email]).status.success());
    let connect = run(&["--json", "mailbox", "connect", email]);
    let url: serde_json::Value = serde_json::from_slice(&connect.stdout).unwrap();
    let callback = mailsync_e2e::consent(
        url["url"].as_str().unwrap(),
        email,
        &stack.account(email).password,
        false,
    );
    assert!(run(&["mailbox", "complete", &callback]).status.success());

    // Make the stored token stale, as its expiry passing would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = mailsync::Options::default();
        options.google_issuer_override = Some(stack.oauth.issuer.clone());
        let sync = mailsync::MailSync::open(mailsync::StoreConfig::sqlite(&db), options)
            .await
            .unwrap();
        let mailbox = sync.directory().find_mailbox(email).await.unwrap();
        let mut g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
        g.expires_at =
            Some(mailsync::Timestamp::now_utc().minus(std::time::Duration::from_secs(1)));
        sync.store().put_grant(&g, g.version, None).await.unwrap();
        sync.close().await;
    });
    let before = rt.block_on(async {
        mailsync_e2e::client_token_requests(
            &mailsync_e2e::stats().await,
            &short.client_id,
            "refresh_token",
        )
    });
    let handles: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_mailsync"))
                .arg("--db")
                .arg(&db)
                .args(["mailbox", "token", email, "--print"])
                .env("MAILSYNC_CLIENT_SECRET", &short.client_secret)
                .env("MAILSYNC_EXTRA_ROOT_CERT", &stack.ca_cert)
                .env("MAILSYNC_GOOGLE_ISSUER_OVERRIDE", &stack.oauth.issuer)
                .env_remove("MAILSYNC_LOG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let tokens: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let out = h.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out));
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    let after = rt.block_on(async {
        mailsync_e2e::client_token_requests(
            &mailsync_e2e::stats().await,
            &short.client_id,
            "refresh_token",
        )
    });
    assert_eq!(after - before, 1, "one refresh across both processes");
    assert_eq!(tokens[0], tokens[1], "both processes print the same token");
}
