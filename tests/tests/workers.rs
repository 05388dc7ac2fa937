//! Many workers sharing one PostgreSQL store, against the real stack
//! (Dovecot IMAP, the Google-like provider, PostgreSQL): the acceptance of
//! "PostgreSQL store and many workers".
//!
//! * Three `mailsync worker` processes sync 300 mailboxes (the stack's bulk
//!   password accounts) into a table with a unique key; one of them is
//!   killed with SIGKILL mid-sync. Every delivered message ends in the
//!   table exactly once, every cursor counts each message once, the killed
//!   worker's mailboxes are taken over only after their leases expired and
//!   finish soon after, and no two workers' cycles of one mailbox ever
//!   overlap (the maximum of concurrent holders per mailbox is recorded
//!   and must be 1).
//! * A holder paused (SIGSTOP) past its lease's expiry, then resumed
//!   (SIGCONT) after another worker took the mailbox over and synced it,
//!   cannot write: its cycle ends with `conflict` and the cursor stays the
//!   new holder's.
//! * Three processes with 100 tasks each ask for one mailbox's expiring
//!   access token at once: the provider sees exactly one refresh.
//!
//! Each test works in a PostgreSQL schema of its own (dropped at its end).
//! Nothing waits by sleeping: every wait polls an observable condition
//! (table rows, worker output, leases) with a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mailsync::checks::TestOptions;
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingFilter, IncomingProtocol, Mailbox,
    MailboxCredentials, MailboxId, MailboxSpec, OAuthApp, OutgoingDelivery, Security,
    ServerProfile,
};
use mailsync::{MailSync, Options, SealKey, StoreConfig, Timestamp};
use mailsync_e2e::Stack;
use serde_json::Value;

// ------------------------------------------------------------------ PostgreSQL

/// A schema of the test's own, dropped at the end (also when it fails).
struct Schema {
    name: String,
    server: String,
}

impl Schema {
    async fn new(stack: &Stack, tag: &str) -> Schema {
        let name = format!("workers_{tag}_{}", uuid::Uuid::new_v4().simple());
        let server = stack.postgres.url.clone();
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        Schema { name, server }
    }

    fn url(&self) -> String {
        format!("{}?options[search_path]={}", self.server, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&server).await
                {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            })
        })
        .join();
    }
}

/// 32 random bytes in a key file, and the key.
fn key_file(dir: &Path) -> (PathBuf, SealKey) {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let path = dir.join("seal.key");
    std::fs::write(&path, bytes).unwrap();
    (path, SealKey::from_bytes(&bytes).unwrap())
}

const SINK: &str = "worker_sink";

/// `(mailbox_id, message_id, worker, deliveries)` of every row of the sink.
async fn sink_rows(pool: &sqlx::PgPool) -> Vec<(String, String, String, i32)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT mailbox_id, coalesce(message_id, ''), worker, deliveries FROM {SINK}"
    )))
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

async fn sink_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {SINK}")))
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

// ------------------------------------------------------------------ mailboxes

/// A profile with per-mailbox passwords on the stack's plain IMAP port
/// (loopback), polling allowed at any interval.
async fn password_profile(sync: &MailSync, stack: &Stack) -> ServerProfile {
    let incoming = IncomingEndpoint {
        protocol: IncomingProtocol::Imap,
        endpoint: Endpoint::new(&stack.imap.host, stack.imap.plain_port, Security::Plaintext),
    };
    let outgoing = Endpoint::new(
        &stack.smtp.host,
        stack.smtp.starttls_port,
        Security::StartTls,
    );
    let mut profile = ServerProfile::generic(
        "Bulk",
        incoming,
        outgoing,
        Authentication::CredentialsPerMailbox {},
    );
    profile.allow_plaintext_on_loopback = true;
    profile.processing.min_polling_interval_minutes = 0;
    profile.processing.max_concurrent_connections = 300;
    profile.processing.connection_timeout_secs = 30;
    sync.directory().create_profile(profile).await.unwrap()
}

/// Bulk accounts `numbers` as mailboxes of `profile`, taking in all mail
/// received from 2 s ago on, tested and enabled (16 at a time).
async fn enabled_bulk(
    sync: &MailSync,
    stack: &Stack,
    profile: &ServerProfile,
    numbers: std::ops::RangeInclusive<u32>,
) -> Vec<Mailbox> {
    let from = Timestamp::now_utc().minus(Duration::from_secs(2));
    let mut mailboxes = Vec::new();
    for n in numbers {
        let email = stack.bulk().email(n);
        let mut spec = MailboxSpec::user(&email)
            .on_profile(profile.id.clone())
            .with_incoming_filter(IncomingFilter::All);
        spec.outgoing_delivery = OutgoingDelivery::None;
        spec.credentials = Some(MailboxCredentials {
            username: email.clone(),
            password: Some(stack.bulk().password.clone().into()),
        });
        spec.process_email_received_after = Some(from);
        mailboxes.push(sync.directory().create_mailbox(spec).await.unwrap());
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut checks = tokio::task::JoinSet::new();
    for m in &mailboxes {
        let (sync, id, limit) = (sync.clone(), m.id.clone(), limit.clone());
        checks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let report = sync
                .checks()
                .test_and_enable(&id, &TestOptions::default())
                .await
                .unwrap();
            assert!(report.is_success(), "{report:#?}");
        });
    }
    while let Some(done) = checks.join_next().await {
        done.unwrap();
    }
    mailboxes
}

/// Delivers `per_mailbox` new messages to each address over one LMTP
/// session; returns each address's Message-IDs (without brackets).
fn deliver_lmtp(
    stack: &Stack,
    emails: &[String],
    per_mailbox: usize,
    tag: &str,
    body_bytes: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    let filler: String = (0..body_bytes / 64)
        .map(|i| format!("{i:>8} filler filler filler filler filler filler filler.\r\n"))
        .collect();
    let stream = std::os::unix::net::UnixStream::connect(&stack.lmtp_socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = |expect: &str| {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(
                line.starts_with(expect),
                "LMTP: expected {expect}, got {line:?}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
    };
    reply("220");
    writer.write_all(b"LHLO workers.test\r\n").unwrap();
    reply("250");
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap();
    let mut sent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for email in emails {
        for i in 1..=per_mailbox {
            let id = format!("{}.{tag}@workers.test", uuid::Uuid::new_v4().simple());
            let message = format!(
                "From: Sender <sender@outside.example>\r\nTo: {email}\r\nSubject: {tag} {i}/{per_mailbox}\r\n\
                 Date: {date}\r\nMessage-ID: <{id}>\r\n\r\nMessage {i} for {email}.\r\n{filler}"
            );
            writer
                .write_all(
                    format!("MAIL FROM:<sender@outside.example>\r\nRCPT TO:<{email}>\r\nDATA\r\n")
                        .as_bytes(),
                )
                .unwrap();
            reply("250");
            reply("250");
            reply("354");
            writer.write_all(message.as_bytes()).unwrap();
            writer.write_all(b".\r\n").unwrap();
            reply("250");
            sent.entry(email.clone()).or_default().insert(id);
        }
    }
    writer.write_all(b"QUIT\r\n").unwrap();
    sent
}

// ------------------------------------------------------------------ worker processes

/// The `mailsync` binary next to this test's directory of the target dir
/// (`cargo test --workspace` builds it); built here only when it is
/// missing or predates `mailsync worker`.
fn mailsync_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/debug/deps/workers-<hash> → target/debug/mailsync
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("mailsync");
        let current = || {
            Command::new(&bin)
                .args(["worker", "--help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !current() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "mailsync-cli",
                    "--bin",
                    "mailsync",
                ])
                .current_dir(root)
                .status()
                .expect("run cargo build -p mailsync-cli");
            assert!(status.success(), "cargo build -p mailsync-cli failed");
            assert!(current(), "{} has no `worker` command", bin.display());
        }
        bin
    })
}

/// A running `mailsync worker` and the JSON lines it printed so far.
struct Worker {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Worker {
    fn start(db: &str, key: &Path, name: &str, extra: &[&str]) -> Worker {
        let mut child = Command::new(mailsync_bin())
            .args(["--db", db, "--json", "worker", "--key-file"])
            .arg(key)
            .args(["--name", name, "--table", SINK, "--max-idle-secs", "1"])
            .args(["--postpone-secs", "3600"])
            .args(extra)
            .env("MAILSYNC_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Worker {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    fn any(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(f)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {}", self.name);
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mailsync workers --json`: every lease.
fn leases(db: &str, key: &Path) -> Vec<Value> {
    let o = Command::new(mailsync_bin())
        .args(["--db", db, "--json", "workers", "--key-file"])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mailsync workers: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cycle a worker reported: `(mailbox_id, worker, started ms, ended ms, error code)`.
type Cycle = (String, String, i64, i64, Option<String>);

fn cycles(worker: &Worker) -> Vec<Cycle> {
    worker
        .lines()
        .iter()
        .filter(|v| v["type"] == "cycle")
        .map(|v| {
            let end = v["at"].as_i64().unwrap();
            (
                v["mailbox_id"].as_str().unwrap().to_owned(),
                worker.name.clone(),
                end - v["duration_ms"].as_i64().unwrap(),
                end,
                v["error_code"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The most cycles of one mailbox running at one moment, over all mailboxes.
fn max_concurrent_holders(cycles: &[Cycle]) -> usize {
    let mut by_mailbox: HashMap<&str, Vec<(i64, i32)>> = HashMap::new();
    for (mailbox, _, start, end, _) in cycles {
        let events = by_mailbox.entry(mailbox).or_default();
        events.push((*start, 1));
        events.push((*end, -1));
    }
    let mut max = 0;
    for events in by_mailbox.values_mut() {
        // Ends before starts at the same instant.
        events.sort();
        let mut now = 0;
        for (_, d) in events.iter() {
            now += d;
            max = max.max(now as usize);
        }
    }
    max
}

// ------------------------------------------------------------------ tests

/// Three workers, 300 mailboxes, one worker killed mid-sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_sync_300_mailboxes_each_message_once_and_survive_a_kill() {
    const MAILBOXES: u32 = 300;
    const PER_MAILBOX: usize = 3;
    const LEASE_SECS: u64 = 10;
    let stack = Stack::get();
    let schema = Schema::new(&stack, "many").await;
    let db = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = key_file(dir.path());
    let sync = MailSync::open(StoreConfig::postgres(db.clone(), key), Options::default())
        .await
        .unwrap();
    let setup = Instant::now();
    let profile = password_profile(&sync, &stack).await;
    let mailboxes = enabled_bulk(&sync, &stack, &profile, 1..=MAILBOXES).await;
    let emails: Vec<String> = mailboxes.iter().map(|m| m.email.clone()).collect();
    let tag = format!("many-{}", uuid::Uuid::new_v4().simple());
    let sent = {
        let (stack, emails, tag) = (stack.clone(), emails.clone(), tag.clone());
        tokio::task::spawn_blocking(move || deliver_lmtp(&stack, &emails, PER_MAILBOX, &tag, 0))
            .await
            .unwrap()
    };
    let total = (MAILBOXES as usize * PER_MAILBOX) as i64;
    eprintln!("setup of {MAILBOXES} mailboxes took {:?}", setup.elapsed());

    let lease = LEASE_SECS.to_string();
    let args = [
        "--concurrency",
        "8",
        "--lease-secs",
        lease.as_str(),
        "--batch-messages",
        "1",
    ];
    let started = Instant::now();
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start(&db, &key_path, &format!("w{i}"), &args))
        .collect();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();

    // Mid-sync: a third of the mail is in; w0 is holding mailboxes.
    wait_until("a third of the mail", Duration::from_secs(90), async || {
        sink_count(&pool).await >= total / 3
    })
    .await;
    let victim = workers.remove(0);
    victim.signal("KILL");
    let killed_at = Timestamp::now_utc();
    let victim_cycles = cycles(&victim);
    drop(victim);
    let orphans: Vec<Value> = leases(&db, &key_path)
        .into_iter()
        .filter(|l| l["owner"] == "w0" && l["kind"] == "sync" && l["expired"] == false)
        .collect();
    assert!(
        !orphans.is_empty(),
        "w0 held no lease when it was killed (it finished too early?)"
    );
    let orphan_ids: BTreeSet<String> = orphans
        .iter()
        .map(|l| l["mailbox_id"].as_str().unwrap().to_owned())
        .collect();
    // When each orphan's lease ran out (ms).
    let orphan_expiry: HashMap<String, i64> = orphans
        .iter()
        .map(|l| {
            let at = l["expires_at"]
                .as_str()
                .and_then(|s| {
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap_or_else(|| panic!("expires_at of {l}"));
            (l["mailbox_id"].as_str().unwrap().to_owned(), at)
        })
        .collect();
    let last_expiry = *orphan_expiry.values().max().unwrap();

    // The others take the orphans over once their leases expire, and the
    // whole mail arrives.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink_count(&pool).await < total {
        if Instant::now() > deadline {
            let failed: Vec<Cycle> = workers
                .iter()
                .flat_map(cycles)
                .filter(|c| c.4.is_some())
                .collect();
            panic!(
                "{} of {total} messages after 120 s; failed cycles: {failed:?}; leases: {:?}",
                sink_count(&pool).await,
                leases(&db, &key_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished_at = Timestamp::now_utc();
    eprintln!(
        "{MAILBOXES} mailboxes synced by 3 workers in {:?}; {} orphaned by the kill, all done {} ms after it",
        started.elapsed(),
        orphans.len(),
        finished_at.unix_millis() - killed_at.unix_millis()
    );
    // Every orphan's report is in (the rows come before the report).
    wait_until(
        "the orphans' cycle reports",
        Duration::from_secs(30),
        async || {
            let done: BTreeSet<String> = workers
                .iter()
                .flat_map(cycles)
                .filter(|c| c.4.is_none())
                .map(|c| c.0)
                .collect();
            orphan_ids.is_subset(&done)
        },
    )
    .await;

    // Exactly once: each mailbox's rows are the messages delivered to it.
    let rows = sink_rows(&pool).await;
    assert_eq!(rows.len() as i64, total);
    let id_of: HashMap<String, String> = mailboxes
        .iter()
        .map(|m| (m.id.as_str().to_owned(), m.email.clone()))
        .collect();
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (mailbox, message_id, _, _) in &rows {
        let email = id_of[mailbox].clone();
        assert!(
            got.entry(email).or_default().insert(message_id.clone()),
            "{message_id} twice"
        );
    }
    assert_eq!(got, sent, "the sink holds exactly the delivered mail");
    // Only a batch the killed worker delivered but did not record comes
    // again (the table keeps one row); no other message is delivered twice.
    for (mailbox, message_id, _, deliveries) in &rows {
        assert!(
            *deliveries == 1 || orphan_ids.contains(mailbox),
            "{message_id} of a mailbox w0 did not hold was delivered {deliveries} times"
        );
    }
    // The store counts each message once.
    for m in &mailboxes {
        let cursor = sync.store().get_cursor(&m.id).await.unwrap().unwrap();
        assert_eq!(cursor.delivered, PER_MAILBOX as i64, "{}", m.email);
    }

    // Takeover only after expiry; one holder at a time.
    let mut all: Vec<Cycle> = victim_cycles;
    for w in &workers {
        all.extend(cycles(w));
    }
    for (mailbox, worker, start, _, _) in &all {
        if let Some(expiry) = orphan_expiry.get(mailbox)
            && worker != "w0"
        {
            assert!(
                start >= expiry,
                "{mailbox} was taken over at {start}, before its lease ran out at {expiry}"
            );
        }
    }
    let takeover_done = finished_at.unix_millis() - last_expiry;
    assert!(
        takeover_done < 30_000,
        "the orphans were done {takeover_done} ms after their leases ran out"
    );
    let holders = max_concurrent_holders(&all);
    eprintln!(
        "max concurrent holders per mailbox: {holders} ({} cycles over {MAILBOXES} mailboxes)",
        all.len()
    );
    assert_eq!(holders, 1);
    let synced_by: BTreeSet<String> = all.iter().map(|c| c.1.clone()).collect();
    assert!(synced_by.len() >= 2, "{synced_by:?}");

    for w in workers {
        let status = w.stop();
        assert!(status.success(), "{status}");
    }
    sync.close().await;
    pool.close().await;
}

/// A holder paused past its lease's expiry cannot write after the takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_cannot_write_after_its_lease_was_taken_over() {
    // Enough mail (200 × 64 KB, one per batch) that the cycle is still
    // running when the test pauses it right after its first progress.
    const MESSAGES: usize = 200;
    let stack = Stack::get();
    let schema = Schema::new(&stack, "stale").await;
    let db = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = key_file(dir.path());
    let sync = MailSync::open(StoreConfig::postgres(db.clone(), key), Options::default())
        .await
        .unwrap();
    let profile = password_profile(&sync, &stack).await;
    let mailbox = enabled_bulk(&sync, &stack, &profile, 301..=301)
        .await
        .remove(0);
    let tag = format!("stale-{}", uuid::Uuid::new_v4().simple());
    let sent = {
        let (stack, email, tag) = (stack.clone(), mailbox.email.clone(), tag.clone());
        tokio::task::spawn_blocking(move || {
            deliver_lmtp(&stack, &[email], MESSAGES, &tag, 64 * 1024)
        })
        .await
        .unwrap()
    };
    let id = mailbox.id.as_str().to_owned();

    // A holds the mailbox, mid-cycle, and is paused.
    let a = Worker::start(
        &db,
        &key_path,
        "stale-a",
        // Its sink prints: no transaction of its own the pause could hold open.
        &[
            "--concurrency",
            "1",
            "--lease-secs",
            "5",
            "--batch-messages",
            "1",
            "--sink",
            "print",
        ],
    );
    // Paused as soon as its cycle reports progress (polled every 5 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.any(|v| {
        v["type"] == "progress" && v["mailbox_id"] == id.as_str() && v["finished"] == false
    }) {
        assert!(Instant::now() < deadline, "A never started its cycle");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.signal("STOP");
    assert!(
        !a.any(|v| v["type"] == "cycle"),
        "A finished its cycle before it was paused"
    );
    let held = leases(&db, &key_path);
    let a_lease = held
        .iter()
        .find(|l| l["owner"] == "stale-a" && l["mailbox_id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("A holds no lease: {held:#?}"));
    let a_fence = a_lease["fence"].as_i64().unwrap();

    // B takes it over once A's lease expired, and syncs it all.
    let b = Worker::start(
        &db,
        &key_path,
        "fresh-b",
        &["--concurrency", "1", "--lease-secs", "30"],
    );
    wait_until("B's cycle", Duration::from_secs(60), async || {
        b.any(|v| {
            v["type"] == "cycle" && v["mailbox_id"] == id.as_str() && v["error_code"].is_null()
        })
    })
    .await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(sink_count(&pool).await, MESSAGES as i64);
    let before = sync.store().get_cursor(&mailbox.id).await.unwrap().unwrap();
    assert_eq!(before.delivered, MESSAGES as i64);
    let b_fence = leases(&db, &key_path)
        .iter()
        .filter(|l| l["mailbox_id"] == id.as_str())
        .map(|l| l["fence"].as_i64().unwrap())
        .max();
    if let Some(f) = b_fence {
        assert!(f > a_fence, "a takeover gets a larger fencing token");
    }

    // A resumes: its next write is refused; its cycle stops.
    a.signal("CONT");
    wait_until("A's refused cycle", Duration::from_secs(60), async || {
        a.any(|v| v["type"] == "cycle" && v["mailbox_id"] == id.as_str())
    })
    .await;
    let a_cycle: Vec<Cycle> = cycles(&a);
    assert_eq!(a_cycle.len(), 1, "{a_cycle:?}");
    // `conflict`: its write was refused by the fencing token; `store`: it
    // was paused inside a store transaction, which the server ended
    // (idle_in_transaction_session_timeout) so the takeover could proceed.
    assert!(
        matches!(a_cycle[0].4.as_deref(), Some("conflict" | "store")),
        "{:?}",
        a.lines()
    );
    let after = sync.store().get_cursor(&mailbox.id).await.unwrap().unwrap();
    assert_eq!(after, before, "the paused holder changed the cursor");
    let rows = sink_rows(&pool).await;
    let got: BTreeSet<String> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(&got, &sent[&mailbox.email]);

    assert!(b.stop().success());
    assert!(a.stop().success());
    sync.close().await;
    pool.close().await;
}

// ------------------------------------------------------------------ refresh across workers

const TASKS: usize = 100;
const CHILD_ENV: &str = "MAILSYNC_WORKERS_REFRESH_CHILD";

/// One of the three processes of the refresh test (run by it, never alone):
/// opens the store, says READY, waits for the go time on stdin, then asks
/// for the access token from 100 tasks at once and prints what it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of three_workers_times_100_tasks_refresh_an_expiring_token_once"]
async fn refresh_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let key = SealKey::from_file(spec["key"].as_str().unwrap()).unwrap();
    let mut options = Options::default();
    options.google_issuer_override = Some(spec["issuer"].as_str().unwrap().to_owned());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    let sync = MailSync::open(
        StoreConfig::postgres(spec["db"].as_str().unwrap(), key),
        options,
    )
    .await
    .unwrap();
    let mailbox = MailboxId::parse(spec["mailbox"].as_str().unwrap()).unwrap();
    // Warm up (store and profile) without asking for a token.
    sync.connections().grant_info(&mailbox).await.unwrap();
    println!("CHILD READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let go: i64 = line.trim().parse().unwrap();
    let wait = go - Timestamp::now_utc().unix_millis();
    if wait > 0 {
        // The agreed start instant (a barrier across processes), not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (sync, mailbox) = (sync.clone(), mailbox.clone());
        tasks.spawn(async move { sync.connections().access_token(&mailbox).await });
    }
    let mut tokens = BTreeSet::new();
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(t) => {
                tokens.insert(t.token.expose().to_owned());
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let digest: Vec<String> = tokens
        .iter()
        .map(|t| {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(t.as_bytes()))
        })
        .collect();
    println!(
        "CHILD RESULT {}",
        serde_json::json!({"ok": TASKS - errors.len(), "errors": errors, "tokens": digest})
    );
    sync.close().await;
}

struct RefreshChild {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for RefreshChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three processes × 100 tasks on one expiring token: one refresh request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_times_100_tasks_refresh_an_expiring_token_once() {
    const EMAIL: &str = "sync19@example.test";
    let _provider = mailsync_e2e::provider_shared().await;
    let _account = mailsync_e2e::account_lock(EMAIL).await;
    let stack = Stack::get();
    let schema = Schema::new(&stack, "refresh").await;
    let db = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = key_file(dir.path());
    let mut options = Options::default();
    options.google_issuer_override = Some(stack.oauth.issuer.clone());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    let sync = MailSync::open(StoreConfig::postgres(db.clone(), key), options)
        .await
        .unwrap();
    // The `short` client: 5-second access tokens, refreshed in their last 2.5 s.
    let client = stack.oauth.client("short").clone();
    let app = OAuthApp::google(client.client_id.clone(), client.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
    let profile = ServerProfile::gmail("Short", app)
        .default_for_new_mailboxes()
        .with_incoming(Endpoint::new(
            &stack.imap.host,
            stack.imap.tls_port,
            Security::Tls,
        ));
    sync.directory().create_profile(profile).await.unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user(EMAIL))
        .await
        .unwrap();

    // Three processes, ready before the token is connected.
    let spec = serde_json::json!({
        "db": db,
        "key": key_path,
        "issuer": stack.oauth.issuer,
        "mailbox": mailbox.id.as_str(),
    })
    .to_string();
    let mut children: Vec<RefreshChild> = (0..3)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "refresh_child",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, &spec)
                .env("MAILSYNC_LOG", "error")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let out = child.stdout.take().unwrap();
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            RefreshChild {
                child,
                stdin,
                lines,
            }
        })
        .collect();
    // Connect (a fresh 5-second token) only once every process is ready
    // (child processes read the grant after this; warm-up needs it).
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let password = stack.account(EMAIL).password.clone();
    let url = consent.url.clone();
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, EMAIL, &password, false))
            .await
            .unwrap();
    sync.connections().complete(&callback).await.unwrap();
    let connected = Timestamp::now_utc();
    wait_until(
        "three ready processes",
        Duration::from_secs(60),
        async || {
            children.iter().all(|c| {
                c.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("CHILD READY"))
            })
        },
    )
    .await;

    let refreshes = |stats: &Value| {
        mailsync_e2e::client_token_requests(stats, &client.client_id, "refresh_token")
    };
    let before = refreshes(&mailsync_e2e::stats().await);
    // Go when the token is due for a refresh (its last 2.5 s), all at once.
    let go = (connected.unix_millis() + 3_000).max(Timestamp::now_utc().unix_millis() + 300);
    for c in &mut children {
        writeln!(c.stdin, "{go}").unwrap();
    }
    let mut tokens = BTreeSet::new();
    for c in &mut children {
        let status = c.child.wait().unwrap();
        assert!(
            status.success(),
            "a child failed: {:?}",
            c.lines.lock().unwrap()
        );
        let lines = c.lines.lock().unwrap().clone();
        let result: Value = lines
            .iter()
            .find_map(|l| l.split_once("CHILD RESULT ").map(|(_, r)| r))
            .map(|r| serde_json::from_str(r).unwrap())
            .unwrap_or_else(|| panic!("no result: {lines:?}"));
        assert_eq!(result["ok"], TASKS, "{result}");
        for t in result["tokens"].as_array().unwrap() {
            tokens.insert(t.as_str().unwrap().to_owned());
        }
    }
    let after = refreshes(&mailsync_e2e::stats().await);
    assert_eq!(after - before, 1, "refresh requests for 3 × {TASKS} tasks");
    assert_eq!(tokens.len(), 1, "every task got the one refreshed token");
    sync.close().await;
}
