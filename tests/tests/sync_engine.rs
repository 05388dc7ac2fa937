//! The sync engine's acceptance against the real stack (Dovecot IMAP and
//! POP3, the Google-like provider), and against a scripted IMAP server on
//! loopback for a server that trickles:
//!
//! - an initial sync of 2,000 messages killed (`kill -9`) mid-way resumes
//!   with every message delivered, none lost (re-delivery of the batch in
//!   flight allowed and counted);
//! - a changed UIDVALIDITY delivers nothing twice;
//! - an oversized message is recorded, alerted and passed, never downloaded;
//! - "process email from" holds on the first sync (INTERNALDATE seconds);
//! - POP3: delivered once, UIDLs as the cursor; a forward mailbox deletes
//!   what the sink acknowledged and nothing else;
//! - a server that trickles a message is cut off within the deadline;
//! - 20 mailboxes synced at once by two engines: never more than one IMAP
//!   session per account, and the cycles run concurrently.
//!
//! Every test uses its own `syncNN@example.test` account(s) under
//! `mailsync_e2e::account_lock(s)`, a unique subject prefix and "process
//! email from" ≈ now (INBOXes keep mail across runs).

mod engine_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine_support::{
    Collect, Setup, bare, deliver, deliver_with, enabled, imap_sessions, server_count, unique,
    user_spec,
};
use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingFilter, IncomingProtocol, MailboxId,
    MailboxSpec, Secret, Security, ServerProfile,
};
use mailsync::store::LeaseKind;
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, ErrorCode, MailSync, Options, StoreConfig, Timestamp};
use mailsync_e2e::{DeliverOpts, Stack};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// ------------------------------------------------------------------ 1. crash and resume

const CRASH_EMAIL: &str = "sync01@example.test";
const CRASH_MESSAGES: usize = 2000;
const CRASH_BATCH: u32 = 50;
/// The child is killed once the sink holds this many files.
const CRASH_KILL_AT: usize = 600;

fn crash_engine_options() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.batch_messages = CRASH_BATCH;
    o.postpone_secs = 0;
    // A killed holder's lease expires soon.
    o.lease_secs = 5;
    o
}

/// A host store on disk: one file per message, named by its key, written
/// and fsynced before the outcome is returned. A key delivered again
/// overwrites its file and is counted.
struct FileSink {
    dir: PathBuf,
    again: AtomicUsize,
}

fn file_name(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl MessageSink for FileSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let dir = self.dir.clone();
        let n = messages.len();
        let again = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut again = 0;
            for m in messages {
                let path = dir.join(file_name(&m.key));
                if path.exists() {
                    again += 1;
                }
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&m.raw).unwrap();
                f.sync_data().unwrap();
            }
            again
        })
        .await
        .unwrap();
        self.again.fetch_add(again, Ordering::SeqCst);
        Ok(vec![DeliveryOutcome::Stored; n])
    }
}

fn crash_options(issuer: &str) -> Options {
    let mut o = Options::default();
    o.google_issuer_override = Some(issuer.to_owned());
    o.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    o
}

/// Child process: one `run_once` of the mailbox into a [`FileSink`].
#[test]
#[ignore = "run as a child process by an_initial_sync_killed_mid_way_resumes_without_loss"]
fn child_initial_sync() {
    let Ok(db) = std::env::var("MAILSYNC_CRASH_DB") else {
        return;
    };
    let mailbox = MailboxId::parse(&std::env::var("MAILSYNC_CRASH_MAILBOX").unwrap()).unwrap();
    let issuer = std::env::var("MAILSYNC_CRASH_ISSUER").unwrap();
    let sink_dir = PathBuf::from(std::env::var("MAILSYNC_CRASH_SINK").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sync = MailSync::open(StoreConfig::sqlite(&db), crash_options(&issuer))
            .await
            .unwrap();
        let sink = Arc::new(FileSink {
            dir: sink_dir,
            again: AtomicUsize::new(0),
        });
        let engine = Engine::new(sync.clone(), sink, crash_engine_options()).unwrap();
        let report = engine.run_once(&mailbox).await.unwrap();
        println!("CHILD_FINISHED {report:?}");
        sync.close().await;
    });
}

fn spawn_child(db: &Path, mailbox: &MailboxId, issuer: &str, sink: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_initial_sync",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAILSYNC_CRASH_DB", db)
        .env("MAILSYNC_CRASH_MAILBOX", mailbox.as_str())
        .env("MAILSYNC_CRASH_ISSUER", issuer)
        .env("MAILSYNC_CRASH_SINK", sink)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The `Message-ID` (without brackets) of a stored raw message.
fn message_id_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        l.len()
            .ge(&11)
            .then(|| l.split_at(11))
            .filter(|(name, _)| name.eq_ignore_ascii_case("message-id:"))
            .map(|(_, v)| bare(v.trim()))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_initial_sync_killed_mid_way_resumes_without_loss() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(CRASH_EMAIL).await;
    let env = enabled(CRASH_EMAIL, Setup::default()).await;
    let prefix = unique("crash");
    // 2,000 messages, delivered by 8 LMTP sessions at once.
    let t0 = Instant::now();
    let parts: Vec<_> = (0..8)
        .map(|i| {
            let p = format!("{prefix} p{i}");
            let email = env.email().to_owned();
            tokio::spawn(async move { deliver(&email, CRASH_MESSAGES / 8, &p).await })
        })
        .collect();
    let mut expected: HashSet<String> = HashSet::new();
    for p in parts {
        expected.extend(p.await.unwrap().iter().map(|id| bare(id)));
    }
    assert_eq!(expected.len(), CRASH_MESSAGES);
    eprintln!("delivered {CRASH_MESSAGES} messages in {:?}", t0.elapsed());

    let sink_dir = env.dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let t0 = Instant::now();
    let mut child = spawn_child(&env.db, &env.mailbox.id, &env.stack.oauth.issuer, &sink_dir);
    let child_exit: Arc<Mutex<Option<std::process::ExitStatus>>> = Arc::default();
    {
        let (dir, exit) = (sink_dir.clone(), child_exit.clone());
        let child = &mut child;
        mailsync_e2e::wait_for("the child to be syncing", Duration::from_secs(120), || {
            let ready = files_in(&dir) >= CRASH_KILL_AT;
            if let Ok(Some(status)) = child.try_wait() {
                *exit.lock().unwrap() = Some(status);
            }
            let ended = exit.lock().unwrap().is_some();
            async move { ready || ended }
        })
        .await;
    }
    assert!(
        child_exit.lock().unwrap().is_none(),
        "the child ended before it was killed: {:?}",
        child_exit.lock().unwrap()
    );
    child.kill().unwrap(); // SIGKILL
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "killed: {:?}", out.status);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("CHILD_FINISHED"),
        "the child finished its cycle before the kill"
    );
    let at_kill = files_in(&sink_dir);
    eprintln!(
        "killed the child after {:?} with {at_kill} files in the sink",
        t0.elapsed()
    );
    let cursor = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .expect("the child acknowledged some batches");
    assert!(
        (cursor.delivered as usize) < CRASH_MESSAGES,
        "killed mid-sync: {cursor:?}"
    );
    eprintln!("cursor at the kill: {cursor:?}");

    // The dead child's sync lease expires; then this process resumes.
    {
        let (sync, id) = (env.sync.clone(), env.mailbox.id.clone());
        mailsync_e2e::wait_for(
            "the killed child's sync lease to expire",
            Duration::from_secs(30),
            || {
                let (sync, id) = (sync.clone(), id.clone());
                async move {
                    let now = Timestamp::now_utc().unix_millis();
                    !sync.store().list_leases().await.unwrap().iter().any(|l| {
                        l.mailbox_id == id
                            && l.kind == LeaseKind::Sync
                            && l.expires_at.unix_millis() > now
                    })
                }
            },
        )
        .await;
    }
    let sink = Arc::new(FileSink {
        dir: sink_dir.clone(),
        again: AtomicUsize::new(0),
    });
    let engine = Engine::new(env.sync.clone(), sink.clone(), crash_engine_options()).unwrap();
    let t0 = Instant::now();
    loop {
        let report = engine.run_once(&env.mailbox.id).await.unwrap();
        assert!(report.is_success(), "{report:?}");
        if !report.more {
            break;
        }
    }
    eprintln!("resumed in {:?}", t0.elapsed());

    // Every message exactly once by key, none lost.
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for entry in std::fs::read_dir(&sink_dir).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        if let Some(id) = message_id_of(&raw) {
            *by_id.entry(id).or_insert(0) += 1;
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} message(s) lost, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let twice: Vec<(&String, &usize)> = by_id
        .iter()
        .filter(|(id, n)| expected.contains(*id) && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "a message stored under two keys: {twice:?}"
    );
    let again = sink.again.load(Ordering::SeqCst);
    eprintln!(
        "delivered twice (same key, file overwritten): {again}; files: {}",
        files_in(&sink_dir)
    );
    assert!(
        again <= CRASH_BATCH as usize,
        "at most the batch in flight comes again, {again} did"
    );
    let cursor = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert!(cursor.delivered as usize >= CRASH_MESSAGES, "{cursor:?}");
    env.sync.close().await;
}

// ------------------------------------------------------------------ 2. UIDVALIDITY

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_uidvalidity_delivers_nothing_twice() {
    let email = "sync02@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(email, Setup::default()).await;
    let prefix = unique("uidvalidity");
    let first = format!("{prefix} old");
    deliver(email, 5, &first).await;
    let sink = Arc::new(Collect::default());
    let mut options = EngineOptions::default();
    options.batch_messages = 2;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&first).len(), 5);
    let had = sink.count();

    let before = mailsync_e2e::uid_validity(email, "INBOX");
    let after = before.wrapping_add(7919).max(1);
    mailsync_e2e::set_uid_validity(email, after);
    assert_eq!(mailsync_e2e::uid_validity(email, "INBOX"), after);
    let second = format!("{prefix} new");
    deliver(email, 3, &second).await;

    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        report.already_had as usize, had,
        "every message of the first cycle was recognised by key: {report:?}"
    );
    assert_eq!(sink.ours(&second).len(), 3, "the new ones arrived");
    let ours = sink.ours(&prefix);
    assert_eq!(ours.len(), 8);
    assert!(ours.values().all(|n| *n == 1), "none twice: {ours:?}");
    let keys: Vec<String> = sink
        .stored
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.key.clone())
        .collect();
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        keys.len(),
        "no key delivered twice"
    );
    assert!(
        sink.ours_messages(&second)
            .iter()
            .all(|m| m.uid_validity == Some(after))
    );
    let cursor = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor.imap.unwrap().uid_validity, after, "{cursor:?}");

    // Settled: the next cycle has nothing to do.
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.already_had, 0, "{report:?}");
    assert_eq!(sink.ours(&prefix).values().sum::<usize>(), 8);
}

// ------------------------------------------------------------------ 6. oversized

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_alerted_skipped_and_passed() {
    let email = "sync07@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(email, Setup::default()).await;
    let prefix = unique("oversized");
    let (before, big, after) = (
        format!("{prefix} before"),
        format!("{prefix} big"),
        format!("{prefix} after"),
    );
    deliver(email, 3, &before).await;
    deliver_with(
        email,
        1,
        DeliverOpts {
            subject_prefix: Some(big.clone()),
            size: Some(100_000),
            ..DeliverOpts::default()
        },
    )
    .await;
    deliver(email, 3, &after).await;

    let sink = Arc::new(Collect::default());
    let mut options = EngineOptions::default();
    options.max_message_bytes = 16 * 1024;
    options.batch_messages = 2;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.oversized, 1, "{report:?}");
    assert!(sink.ours(&big).is_empty(), "not delivered");
    assert_eq!(sink.ours(&before).len(), 3);
    assert_eq!(sink.ours(&after).len(), 3);
    let downloaded: i64 = sink
        .stored
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.raw.len() as i64)
        .sum();
    assert_eq!(report.bytes, downloaded, "the big one was not downloaded");
    assert!(report.bytes < 100_000, "{report:?}");
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    let too_large: Vec<_> = alerts
        .iter()
        .filter(|a| a.code == ErrorCode::MessageTooLarge.as_str())
        .collect();
    assert_eq!(too_large.len(), 1, "{alerts:#?}");

    // The cursor passed it: the next cycle does not see it again.
    let cursor = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    let last_after = sink
        .ours_messages(&after)
        .iter()
        .filter_map(|m| m.uid)
        .max()
        .unwrap();
    assert!(
        cursor.imap.unwrap().last_uid >= last_after,
        "{cursor:?} (last delivered UID {last_after})"
    );
    assert_eq!(cursor.skipped, 1, "{cursor:?}");
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.oversized, 0, "{report:?}");
    assert_eq!(report.delivered, 0, "{report:?}");
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.code == ErrorCode::MessageTooLarge.as_str())
            .count(),
        1,
        "no second alert: {alerts:#?}"
    );
}

// ------------------------------------------------------------------ 9. process email from

#[tokio::test(flavor = "multi_thread")]
async fn process_email_from_holds_on_the_first_sync() {
    process_email_from_holds("sync10@example.test", false).await;
}

/// POP3 has no INTERNALDATE: the `Date` header decides, read with `TOP`
/// before the message is downloaded.
#[tokio::test(flavor = "multi_thread")]
async fn process_email_from_holds_on_the_first_pop3_sync() {
    process_email_from_holds("sync11@example.test", true).await;
}

async fn process_email_from_holds(email: &str, pop3: bool) {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            pop3,
            ..Setup::default()
        },
    )
    .await;
    let prefix = unique("from");
    let old = format!("{prefix} old");
    deliver(email, 4, &old).await;
    // INTERNALDATE has whole seconds: the old mail is at or before this second.
    let delivered_by = Timestamp::now_utc().unix_millis() / 1000;
    mailsync_e2e::wait_for(
        "the wall clock to pass a second boundary",
        Duration::from_secs(5),
        || async move { Timestamp::now_utc().unix_millis() / 1000 > delivered_by },
    )
    .await;
    let from = Timestamp::from_unix_millis(Timestamp::now_utc().unix_millis() / 1000 * 1000);
    let mut mailbox = env
        .sync
        .directory()
        .get_mailbox(&env.mailbox.id)
        .await
        .unwrap();
    mailbox.process_email_received_after = Some(from);
    env.sync.directory().update_mailbox(mailbox).await.unwrap();
    let new = format!("{prefix} new");
    deliver(email, 3, &new).await;

    let sink = Arc::new(Collect::default());
    // Fewer than the old ones: mail before "process email from" must not
    // use up a cycle's share.
    let mut options = EngineOptions::default();
    options.messages_per_cycle = 3;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(sink.ours(&old).is_empty(), "{:?}", sink.ours(&old));
    assert_eq!(sink.ours(&new).len(), 3, "{report:?}");
    for m in sink.ours_messages(&new) {
        let at = if pop3 { m.date } else { m.received_at };
        assert!(at.unwrap().unix_millis() >= from.unix_millis(), "{at:?}");
    }
    if pop3 {
        // The old ones were decided from their headers, not downloaded.
        let new_bytes: i64 = sink
            .ours_messages(&new)
            .iter()
            .map(|m| m.raw.len() as i64)
            .sum();
        assert!(report.bytes <= new_bytes + 1, "{report:?}");
    }
    // Not later either.
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(sink.ours(&old).is_empty());
}

// ------------------------------------------------------------------ 8. POP3

#[tokio::test(flavor = "multi_thread")]
async fn pop3_delivers_once_with_uidls_as_the_cursor() {
    let email = "sync08@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            pop3: true,
            ..Setup::default()
        },
    )
    .await;
    let prefix = unique("pop3");
    deliver(email, 12, &prefix).await;
    let sink = Arc::new(Collect::default());
    let mut options = EngineOptions::default();
    options.batch_messages = 5;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    let ours = sink.ours(&prefix);
    assert_eq!(ours.len(), 12, "{ours:?}");
    assert!(ours.values().all(|n| *n == 1), "{ours:?}");
    let uidls: HashSet<String> = sink
        .ours_messages(&prefix)
        .iter()
        .map(|m| m.uidl.clone().expect("a POP3 message carries its UIDL"))
        .collect();
    assert_eq!(uidls.len(), 12, "one UIDL each");
    let recorded = env
        .sync
        .store()
        .recorded_uidls(&env.mailbox.id)
        .await
        .unwrap();
    assert!(uidls.is_subset(&recorded), "the UIDLs are the cursor");

    let delivered = sink.count();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        report.delivered as usize,
        sink.count() - delivered,
        "{report:?}"
    );
    assert_eq!(
        sink.ours(&prefix).values().sum::<usize>(),
        12,
        "nothing again"
    );
    // A user mailbox keeps its mail on the server.
    assert_eq!(server_count(email, &prefix).await, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pop3_forward_mailbox_deletes_what_the_sink_acknowledged() {
    let email = "sync09@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let mut spec = MailboxSpec::forward(email).with_incoming_filter(IncomingFilter::All);
    spec.delete_after_processing = true;
    spec.process_email_received_after = Some(Timestamp::now_utc());
    let env = enabled(
        email,
        Setup {
            pop3: true,
            spec: Some(spec),
            ..Setup::default()
        },
    )
    .await;
    let prefix = unique("forward");
    deliver(email, 12, &prefix).await;
    assert_eq!(server_count(email, &prefix).await, 12);
    let sink = Arc::new(Collect::default());
    let mut options = EngineOptions::default();
    options.batch_messages = 5;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();

    // The sink fails on the first batch: nothing is deleted.
    *sink.fail_on.lock().unwrap() = Some(format!("{prefix} 1/12"));
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.error_code, Some(ErrorCode::SinkFailed), "{report:?}");
    assert!(sink.ours(&prefix).is_empty());
    assert_eq!(server_count(email, &prefix).await, 12, "nothing deleted");

    // It fails on a later batch: the batches before it were acknowledged.
    *sink.fail_on.lock().unwrap() = Some(format!("{prefix} 7/12"));
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.error_code, Some(ErrorCode::SinkFailed), "{report:?}");
    // POP3 takes the whole maildrop (older mail of the account comes first),
    // so where the batches start depends on it; 1–6 precede 7.
    let acknowledged = sink.ours(&prefix).len();
    assert!((2..=6).contains(&acknowledged), "{:?}", sink.ours(&prefix));
    let left = server_count(email, &prefix).await;
    assert_eq!(
        left,
        12 - acknowledged,
        "the acknowledged messages are deleted, the others not"
    );

    // Fixed: every message arrives once and is deleted after its ack.
    *sink.fail_on.lock().unwrap() = None;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    let ours = sink.ours(&prefix);
    assert_eq!(ours.len(), 12, "{ours:?}");
    assert!(ours.values().all(|n| *n == 1), "{ours:?}");
    assert_eq!(
        server_count(email, &prefix).await,
        0,
        "every acknowledged message is deleted on the server"
    );
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&prefix).values().sum::<usize>(), 12);
}

// ------------------------------------------------------------------ 7. a trickling server

/// A scripted IMAP server on loopback: logs anyone in, has one message in
/// INBOX, and sends its body one byte every 200 ms.
async fn trickling_server(
    size: usize,
    body_fetches: Arc<AtomicUsize>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body_fetches = body_fetches.clone();
            tokio::spawn(async move {
                let _ = serve_trickle(stream, size, body_fetches).await;
            });
        }
    });
    (port, task)
}

async fn serve_trickle(
    stream: tokio::net::TcpStream,
    size: usize,
    body_fetches: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let date = "01-Jan-2030 00:00:00 +0000";
    write.write_all(b"* OK scripted IMAP ready\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let cmd = rest.to_ascii_uppercase();
        let reply = if cmd.starts_with("CAPABILITY") {
            format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("AUTHENTICATE") {
            if rest.split_whitespace().count() < 3 {
                write.write_all(b"+ \r\n").await?;
                lines.next_line().await?;
            }
            format!("{tag} OK logged in\r\n")
        } else if cmd.starts_with("EXAMINE") || cmd.starts_with("SELECT") {
            format!(
                "* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen)\r\n* OK [UIDVALIDITY 7] ok\r\n\
                 * OK [UIDNEXT 2] ok\r\n{tag} OK [READ-ONLY] done\r\n"
            )
        } else if cmd.starts_with("UID SEARCH") {
            format!("* SEARCH 1\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("UID FETCH") && cmd.contains("BODY.PEEK[]") {
            body_fetches.fetch_add(1, Ordering::SeqCst);
            write
                .write_all(
                    format!(
                        "* 1 FETCH (UID 1 RFC822.SIZE {size} INTERNALDATE \"{date}\" FLAGS () BODY[] {{{size}}}\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            let body = format!(
                "Subject: trickle\r\nMessage-ID: <trickle@example.test>\r\n\r\n{}",
                "x".repeat(size)
            );
            for b in body.as_bytes()[..size].iter() {
                write.write_all(&[*b]).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            format!(")\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("UID FETCH") {
            format!(
                "* 1 FETCH (UID 1 RFC822.SIZE {size} INTERNALDATE \"{date}\")\r\n{tag} OK done\r\n"
            )
        } else if cmd.starts_with("LOGOUT") {
            write
                .write_all(format!("* BYE bye\r\n{tag} OK done\r\n").as_bytes())
                .await?;
            return Ok(());
        } else {
            format!("{tag} OK done\r\n")
        };
        write.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_trickles_is_cut_off_within_the_deadline() {
    // 100 bytes at 5 bytes/s would take 20 s.
    let size = 100;
    let body_fetches = Arc::new(AtomicUsize::new(0));
    let (port, server) = trickling_server(size, body_fetches.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        Options::default(),
    )
    .await
    .unwrap();
    let mut profile = ServerProfile::generic(
        "Trickle",
        IncomingEndpoint {
            protocol: IncomingProtocol::Imap,
            endpoint: Endpoint::new("127.0.0.1", port, Security::Plaintext),
        },
        Endpoint::new("127.0.0.1", 1, Security::Plaintext),
        Authentication::CredentialsInProfile {
            username: "trickle".into(),
            password: Some(Secret::new("anything")),
        },
    )
    .default_for_new_mailboxes();
    profile.allow_plaintext_on_loopback = true;
    profile.processing.connection_timeout_secs = 2;
    sync.directory().create_profile(profile).await.unwrap();
    let mut spec =
        MailboxSpec::user("trickle@example.test").with_incoming_filter(IncomingFilter::All);
    spec.process_email_received_after = None;
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    sync.apply_events(
        &mailbox.id,
        &[LifecycleEvent::TestPassed {
            direction: Direction::Incoming,
        }],
    )
    .await
    .unwrap();

    let sink = Arc::new(Collect::default());
    let mut options = EngineOptions::default();
    // The deadline is the inactivity timeout (2 s) plus size / this rate (0 s).
    options.min_throughput_bytes_per_sec = 1_000_000;
    let engine = Engine::new(sync.clone(), sink.clone(), options).unwrap();
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(60), engine.run_once(&mailbox.id))
        .await
        .expect("the cycle ended")
        .unwrap();
    let took = started.elapsed();
    eprintln!("cut off after {took:?}: {report:?}");
    assert_eq!(report.error_code, Some(ErrorCode::Timeout), "{report:?}");
    assert_eq!(
        body_fetches.load(Ordering::SeqCst),
        1,
        "a timed-out fetch is not tried again"
    );
    assert!(
        took < Duration::from_millis(3500),
        "ended within the deadline (2 s) plus setup: {took:?}"
    );
    assert_eq!(sink.count(), 0);
    let cursor = sync.store().get_cursor(&mailbox.id).await.unwrap();
    assert!(
        cursor
            .as_ref()
            .is_none_or(|c| c.imap.is_none_or(|i| i.last_uid == 0)),
        "the cursor did not move: {cursor:?}"
    );
    server.abort();
}

// ------------------------------------------------------------------ 5. connection budget

/// A sink that holds each batch until the poller has looked at the server
/// twice while the batch is in flight (so every cycle's session is seen,
/// and the cycles overlap).
struct Watched {
    inner: Collect,
    rounds: Arc<AtomicU64>,
}

#[async_trait]
impl MessageSink for Watched {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let start = self.rounds.load(Ordering::SeqCst);
        let rounds = self.rounds.clone();
        mailsync_e2e::wait_for("the poller to look twice", Duration::from_secs(30), || {
            let r = rounds.load(Ordering::SeqCst);
            async move { r >= start + 2 }
        })
        .await;
        self.inner.deliver(messages).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_mailboxes_sync_at_once_within_one_connection_per_account() {
    const PER_MAILBOX: usize = 15;
    let _p = mailsync_e2e::provider_shared().await;
    let accounts = mailsync_e2e::sync_accounts();
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let _a = mailsync_e2e::account_locks(&refs).await;
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        engine_support::options(&stack, &setup),
    )
    .await
    .unwrap();
    let mut profile = engine_support::stack_profile(&stack, "web", false);
    profile.processing.max_concurrent_connections = 40;
    sync.directory().create_profile(profile).await.unwrap();
    let mut tasks = Vec::new();
    for email in &accounts {
        let mailbox = sync
            .directory()
            .create_mailbox(user_spec(email))
            .await
            .unwrap();
        let sync = sync.clone();
        tasks.push(tokio::spawn(async move {
            engine_support::connect(&sync, &mailbox).await;
            engine_support::test_and_enable(&sync, &mailbox).await;
            mailbox
        }));
    }
    let mut mailboxes = Vec::new();
    for t in tasks {
        mailboxes.push(t.await.unwrap());
    }
    let prefix = unique("budget");
    let deliveries: Vec<_> = accounts
        .iter()
        .map(|email| {
            let (email, prefix) = (email.clone(), prefix.clone());
            tokio::spawn(async move { deliver(&email, PER_MAILBOX, &prefix).await })
        })
        .collect();
    for d in deliveries {
        d.await.unwrap();
    }
    // Test & Enable's sessions are gone.
    {
        let accounts = accounts.clone();
        mailsync_e2e::wait_for(
            "no IMAP session of the sync accounts",
            Duration::from_secs(30),
            || {
                let accounts = accounts.clone();
                async move {
                    let s = tokio::task::spawn_blocking(imap_sessions).await.unwrap();
                    accounts.iter().all(|a| !s.contains_key(a))
                }
            },
        )
        .await;
    }

    // The poller: one `doveadm who` per round.
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (rounds, stop, accounts) = (rounds.clone(), stop.clone(), accounts.clone());
        tokio::spawn(async move {
            let mut per_account: BTreeMap<String, usize> = BTreeMap::new();
            let mut max_total = 0;
            while !stop.load(Ordering::SeqCst) {
                let s = tokio::task::spawn_blocking(imap_sessions).await.unwrap();
                let mut total = 0;
                for a in &accounts {
                    let n = s.get(a).copied().unwrap_or(0);
                    total += n;
                    let m = per_account.entry(a.clone()).or_insert(0);
                    *m = (*m).max(n);
                }
                max_total = max_total.max(total);
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            (per_account, max_total)
        })
    };
    let sink = Arc::new(Watched {
        inner: Collect::default(),
        rounds: rounds.clone(),
    });
    let mut options = EngineOptions::default();
    options.connections_per_account = 1;
    options.workers = 20;
    options.batch_messages = 5;
    // Two engines over one store, as two hosts would run them.
    let a = Engine::new(sync.clone(), sink.clone(), options.clone()).unwrap();
    let b = Engine::new(sync.clone(), sink.clone(), options).unwrap();
    let started = Instant::now();
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (per_account, max_total) = poller.await.unwrap();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    eprintln!(
        "{} + {} cycles in {took:?}; most IMAP sessions at once: {max_total}; per account: {per_account:?}",
        ra.len(),
        rb.len()
    );
    for (account, n) in &per_account {
        assert_eq!(
            *n, 1,
            "{account}: at most one IMAP session at a time, and it was seen"
        );
    }
    assert!(
        max_total >= 5,
        "the cycles ran concurrently (at most {max_total} sessions at once)"
    );
    for r in ra.iter().chain(&rb) {
        assert!(r.is_success(), "{r:?}");
    }
    let synced: Vec<&MailboxId> = ra.iter().chain(&rb).map(|r| &r.mailbox_id).collect();
    assert_eq!(synced.len(), 20, "each mailbox synced once, by one engine");
    assert_eq!(synced.iter().collect::<HashSet<_>>().len(), 20);
    let stored = sink.inner.stored.lock().unwrap();
    for m in &mailboxes {
        let mine: Vec<&IncomingMessage> = stored
            .iter()
            .filter(|s| {
                s.mailbox_id == m.id && s.subject.as_deref().is_some_and(|x| x.starts_with(&prefix))
            })
            .collect();
        assert_eq!(mine.len(), PER_MAILBOX, "{}", m.email);
        assert_eq!(
            mine.iter().map(|s| &s.key).collect::<HashSet<_>>().len(),
            PER_MAILBOX
        );
    }
}
