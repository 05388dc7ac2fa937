//! `mailsync worker` and `mailsync workers` against the stack's PostgreSQL
//! and Dovecot: a worker syncs a mailbox into its table, `workers` shows
//! the sync lease it holds while a cycle runs, the metrics endpoint
//! answers in the Prometheus text format, and SIGTERM stops the worker and
//! gives its leases back. Each test works in a PostgreSQL schema of its
//! own (dropped at its end) and on a bulk account no other suite uses.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailsync::checks::TestOptions;
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingFilter, IncomingProtocol,
    MailboxCredentials, MailboxSpec, OutgoingDelivery, Security, ServerProfile,
};
use mailsync::{MailSync, Options, SealKey, StoreConfig, Timestamp};
use mailsync_e2e::{DeliverOpts, Stack};
use serde_json::Value;

/// The bulk accounts this file uses (workers.rs takes 1–310).
const WORKER_ACCOUNT: u32 = 311;
/// Messages delivered for the worker to sync.
const MESSAGES: usize = 40;

/// A schema of the test's own, dropped at the end.
struct Schema {
    name: String,
    server: String,
}

impl Schema {
    async fn new(stack: &Stack) -> Schema {
        let name = format!("clitest_{}", std::process::id()) + &format!("_{}", nanos());
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

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// 32 random bytes in a key file.
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

/// A password profile on the stack's plain IMAP port and `email`
/// connected, tested and enabled, taking in mail from 2 s ago on.
async fn enabled_mailbox(sync: &MailSync, stack: &Stack, email: &str) -> mailsync::model::Mailbox {
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
    profile.processing.connection_timeout_secs = 20;
    let profile = sync.directory().create_profile(profile).await.unwrap();
    let mut spec = MailboxSpec::user(email)
        .on_profile(profile.id.clone())
        .with_incoming_filter(IncomingFilter::All);
    spec.outgoing_delivery = OutgoingDelivery::None;
    spec.credentials = Some(MailboxCredentials {
        username: email.to_owned(),
        password: Some(stack.bulk().password.clone().into()),
    });
    spec.process_email_received_after = Some(Timestamp::now_utc().minus(Duration::from_secs(2)));
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    mailbox
}

fn mailsync(db: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailsync"));
    c.arg("--db").arg(db).args(args).env_remove("MAILSYNC_LOG");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The JSON lines a child prints, collected as they come.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<Value>>> {
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
    lines
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics`, the body.
fn scrape(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The value of one sample line (`name{labels} value`).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn leases(db: &str, key: &Path) -> Vec<Value> {
    let o = mailsync(db, &["--json", "workers", "--key-file"])
        .arg(key)
        .output()
        .unwrap();
    assert!(o.status.success(), "workers: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_syncs_into_its_table_shows_its_lease_serves_metrics_and_stops_on_sigterm() {
    let stack = Stack::get();
    let email = stack.bulk().email(WORKER_ACCOUNT);
    let schema = Schema::new(&stack).await;
    let db = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, key) = key_file(dir.path());
    let sync = MailSync::open(StoreConfig::postgres(db.clone(), key), Options::default())
        .await
        .unwrap();
    let mailbox = enabled_mailbox(&sync, &stack, &email).await;
    let prefix = format!("worker cli {}", nanos());
    // Enough one-message batches that the cycle is still running when the
    // test pauses the worker after its first progress line.
    let ids = mailsync_e2e::deliver(
        &email,
        MESSAGES,
        &DeliverOpts {
            subject_prefix: Some(prefix.clone()),
            ..DeliverOpts::default()
        },
    );

    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut worker = mailsync(&db, &["--json", "worker", "--key-file"])
        .arg(&key_path)
        .args([
            "--name",
            "cli-test-worker",
            "--concurrency",
            "2",
            "--metrics",
            &metrics,
            "--max-idle-secs",
            "1",
            "--lease-secs",
            "60",
            "--batch-messages",
            "1",
            "--gauge-secs",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = collect(&mut worker);
    let has = |f: &dyn Fn(&Value) -> bool| lines.lock().unwrap().iter().any(f);

    // While its cycle runs (paused, so it stays running), `workers` shows
    // the worker's sync lease on the mailbox.
    wait_until(
        "the cycle's first progress",
        Duration::from_secs(60),
        async || {
            has(&|v| {
                v["type"] == "progress" && v["email"] == email.as_str() && v["finished"] == false
            })
        },
    )
    .await;
    signal(&worker, "STOP");
    let held = leases(&db, &key_path);
    signal(&worker, "CONT");
    let ours: Vec<&Value> = held
        .iter()
        .filter(|l| l["owner"] == "cli-test-worker")
        .collect();
    assert_eq!(ours.len(), 1, "{held:#?}");
    assert_eq!(ours[0]["kind"], "sync");
    assert_eq!(ours[0]["email"], email.as_str());
    assert_eq!(ours[0]["mailbox_id"], mailbox.id.as_str());
    assert_eq!(ours[0]["expired"], false);
    assert!(ours[0]["fence"].as_i64().unwrap() > 0, "{held:#?}");

    // Every message lands in the table once.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    wait_until(
        "every row in the table",
        Duration::from_secs(60),
        async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM mailsync_inbox WHERE mailbox_id = $1 AND subject LIKE $2",
            )
            .bind(mailbox.id.as_str())
            .bind(format!("{prefix}%"))
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
            n == MESSAGES as i64
        },
    )
    .await;
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT message_id, worker, deliveries FROM mailsync_inbox WHERE mailbox_id = $1",
    )
    .bind(mailbox.id.as_str())
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut got: Vec<String> = rows.iter().map(|r| format!("<{}>", r.0)).collect();
    let mut want = ids.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(
        rows.iter().all(|r| r.1 == "cli-test-worker" && r.2 == 1),
        "{rows:?}"
    );
    wait_until("the cycle's report", Duration::from_secs(30), async || {
        has(&|v| v["type"] == "cycle" && v["email"] == email.as_str() && v["delivered"] == MESSAGES)
    })
    .await;

    // The metrics endpoint answers in the Prometheus text format.
    let mut body = String::new();
    wait_until("the mailbox gauge", Duration::from_secs(30), async || {
        body = scrape(port);
        sample(&body, "mailsync_mailboxes{state=\"enabled\"}") == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(&body, "mailsync_messages_in_total{outcome=\"stored\"}"),
        Some(MESSAGES as f64),
        "{body}"
    );
    assert!(sample(&body, "mailsync_sync_cycles_total{outcome=\"ok\"}").unwrap_or(0.0) >= 1.0);
    assert!(sample(&body, "mailsync_lease_claims_total").unwrap_or(0.0) >= 1.0);
    assert!(
        body.contains("# TYPE mailsync_sync_cycles_total counter"),
        "{body}"
    );
    assert_eq!(
        sample(&body, "mailsync_sync_cycles_running"),
        Some(0.0),
        "{body}"
    );

    // SIGTERM: a clean stop, no lease left behind.
    signal(&worker, "TERM");
    let status = worker.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(has(
        &|v| v["type"] == "stopped" && v["owner"] == "cli-test-worker"
    ));
    let left = leases(&db, &key_path);
    assert!(
        !left
            .iter()
            .any(|l| l["owner"] == "cli-test-worker" && l["expired"] == false),
        "{left:#?}"
    );
    sync.close().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_commands_need_postgres_and_the_stores_key() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, _) = key_file(dir.path());
    let sqlite = dir.path().join("m.db");
    let o = mailsync(sqlite.to_str().unwrap(), &["worker", "--key-file"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("[validation]"), "{}", text(&o));
    assert!(text(&o).contains("postgres://"), "{}", text(&o));

    // A store created with another key: refused before anything changes.
    let schema = Schema::new(&stack).await;
    let other = tempfile::tempdir().unwrap();
    let (right_path, right) = key_file(other.path());
    let sync = MailSync::open(
        StoreConfig::postgres(schema.url(), right),
        Options::default(),
    )
    .await
    .unwrap();
    sync.close().await;
    let o = mailsync(&schema.url(), &["workers", "--key-file"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("[seal_key_mismatch]"), "{}", text(&o));
    let o = mailsync(&schema.url(), &["--json", "workers", "--key-file"])
        .arg(&right_path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );

    // A worker that cannot serve its metrics does not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = mailsync(&schema.url(), &["worker", "--metrics", &addr, "--key-file"])
        .arg(&right_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot serve metrics"), "{}", text(&o));
}
