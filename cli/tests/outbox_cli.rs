//! `mailsync send`, `mailsync sync once` sending the CLI's outbox, and
//! `mailsync outbox list`, against the real local stack (Postfix over
//! STARTTLS, Dovecot IMAP, the Google-like provider): a queued message goes
//! out once and comes back in through the mailbox's own incoming sync; a
//! refused recipient and a foreign sender fail with their codes, shown by
//! `outbox list`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mailsync_e2e::Stack;
use serde_json::Value;

const EMAIL: &str = "sync10@example.test";

fn command(stack: &Stack, db: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailsync"));
    c.arg("--db")
        .arg(db)
        .args(args)
        .env("MAILSYNC_CLIENT_SECRET", &stack.oauth.client_secret)
        .env("MAILSYNC_EXTRA_ROOT_CERT", &stack.ca_cert)
        .env("MAILSYNC_GOOGLE_ISSUER_OVERRIDE", &stack.oauth.issuer)
        .env_remove("MAILSYNC_LOG")
        .env_remove("MAILSYNC_OUT");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Env {
    stack: Stack,
    dir: tempfile::TempDir,
    db: PathBuf,
    _locks: (
        tokio::sync::RwLockReadGuard<'static, ()>,
        mailsync_e2e::AccountGuard,
    ),
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        command(&self.stack, &self.db, args)
            .output()
            .expect("run mailsync")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "mailsync {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// `outbox list --json`, by id.
    fn outbox(&self) -> Vec<Value> {
        self.json(&["outbox", "list", EMAIL])
            .as_array()
            .unwrap()
            .clone()
    }

    fn entry(&self, id: &str) -> Value {
        self.outbox()
            .into_iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the outbox"))
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("mail")
    }
}

/// A store with the stack's profile (IMAP TLS in, SMTP STARTTLS out) and
/// the mailbox connected, tested and enabled, taking in all mail from now on.
fn setup() -> Env {
    let stack = Stack::get();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let locks = rt.block_on(async {
        let p = mailsync_e2e::provider_shared().await;
        (p, mailsync_e2e::account_lock(EMAIL).await)
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let env = Env {
        stack,
        db,
        dir,
        _locks: locks,
    };
    let s = &env.stack;
    let imap = s.imap.tls_port.to_string();
    let smtp = s.smtp.starttls_port.to_string();
    env.ok(&[
        "profile",
        "create-gmail",
        "--name",
        "Local",
        "--client-id",
        &s.oauth.client_id,
        "--environment-url",
        "http://localhost:8765",
        "--default",
        "--incoming-host",
        &s.imap.host,
        "--incoming-port",
        &imap,
        "--outgoing-host",
        &s.smtp.host,
        "--outgoing-port",
        &smtp,
    ]);
    env.ok(&["profile", "update", "Local", "--polling-interval", "0"]);
    env.ok(&[
        "mailbox",
        "add",
        EMAIL,
        "--incoming-filter",
        "all",
        "--process-from",
        "now",
    ]);
    let connect = env.json(&["mailbox", "connect", EMAIL]);
    let callback = mailsync_e2e::consent(
        connect["url"].as_str().unwrap(),
        EMAIL,
        &s.account(EMAIL).password,
        false,
    );
    env.ok(&["mailbox", "complete", &callback]);
    env.ok(&["mailbox", "test-enable", EMAIL]);
    env
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix} {nanos:x}{:x}", std::process::id())
}

fn index(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("index.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn send_queues_sync_once_sends_and_outbox_list_shows_each_outcome() {
    let env = setup();
    let out = env.out();
    let out_arg = out.to_str().unwrap();
    let subject = unique("cli-send");

    // Queued: nothing sent yet.
    let queued = env.json(&[
        "send",
        EMAIL,
        "--to",
        EMAIL,
        "--subject",
        &subject,
        "--body",
        "Hello from the CLI's outbox.",
    ]);
    let id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(queued["state"], "queued");
    let entry = env.entry(&id);
    assert_eq!(entry["state"], "queued", "{entry}");
    assert!(entry["message_id"].is_null());

    // A recipient Postfix refuses (relay denied), and a foreign sender.
    let refused = env.json(&[
        "send",
        EMAIL,
        "--to",
        "someone@outside.example.org",
        "--subject",
        &format!("{subject} refused"),
        "--body",
        "x",
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = env.dir.path().join("spoof.eml");
    std::fs::write(
        &raw,
        format!("From: ceo@example.test\r\nTo: {EMAIL}\r\nSubject: {subject} spoof\r\n\r\nx\r\n"),
    )
    .unwrap();
    let spoofed = env.json(&["send", EMAIL, "--raw", raw.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // One cycle sends what is pending: one sent, two failed (exit 0: a
    // message's refusal is not the mailbox's failure).
    let cycle = env.ok(&["sync", "once", EMAIL, "--out", out_arg]);
    let last = cycle
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["type"] == "cycle")
        .unwrap_or_else(|| panic!("no cycle line: {cycle}"));
    assert_eq!(
        (last["sent"].as_u64(), last["send_failed"].as_u64()),
        (Some(1), Some(2)),
        "{last}"
    );

    let sent = env.entry(&id);
    assert_eq!(sent["state"], "sent", "{sent}");
    assert_eq!(sent["attempts"], 1);
    assert!(sent["last_error"].is_null(), "{sent}");
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    assert!(message_id.ends_with("@example.test"), "{message_id}");

    let failed = env.entry(&refused);
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.starts_with("send_rejected 5"), "{error}");
    assert!(error.contains("Relay access denied"), "{error}");

    let foreign = env.entry(&spoofed);
    assert_eq!(foreign["state"], "failed", "{foreign}");
    assert_eq!(
        foreign["attempts"], 0,
        "refused before connecting: {foreign}"
    );
    assert!(
        foreign["last_error"]
            .as_str()
            .unwrap()
            .starts_with("sender_not_allowed"),
        "{foreign}"
    );

    // `sync status` counts what the mailbox sent.
    let status = env.json(&["sync", "status"]);
    let mine = &status.as_array().unwrap()[0];
    assert_eq!(mine["sent"], 1, "{mine}");
    assert_eq!(mine["send_failed"], 2, "{mine}");
    assert_eq!(mine["outgoing"]["status"], "enabled", "{mine}");
    assert!(mine["next_send_due"].is_string(), "{mine}");

    // The human table names each state and the error.
    let table = env.ok(&["outbox", "list"]);
    for needle in [
        id.as_str(),
        "sent",
        "failed",
        "Relay access denied",
        "sender_not_allowed",
    ] {
        assert!(table.contains(needle), "{needle:?} not in:\n{table}");
    }

    // Nothing goes out twice: a second cycle sends nothing.
    let again = env.ok(&["sync", "once", EMAIL, "--out", out_arg]);
    let again = again
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["type"] == "cycle")
        .unwrap();
    assert_eq!(again["sent"], 0, "{again}");

    // The message comes back in through the mailbox's own incoming sync (Postfix
    // delivers in the background: cycles until it is there).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Vec<Value> = index(&out)
            .into_iter()
            .filter(|m| m["message_id"] == message_id.as_str())
            .collect();
        if let Some(m) = found.first() {
            assert_eq!(found.len(), 1);
            assert_eq!(m["subject"], subject.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "the sent message never arrived");
        env.ok(&["sync", "once", EMAIL, "--out", out_arg]);
    }

    // Unknown mailbox: a clear code.
    let o = env.run(&[
        "send",
        "nobody@example.test",
        "--to",
        EMAIL,
        "--subject",
        "x",
        "--body",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("[not_found]"), "{}", text(&o));
}
