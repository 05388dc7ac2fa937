//! Two processes on one SQLite file change one mailbox's state 1,000 times
//! each, concurrently: no update is lost. Every change is a read, an apply
//! and a compare-and-swap; a lost race is retried on the new state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mailsync::lifecycle::{Direction, DirectionStatus, FailurePolicy, LifecycleEvent};
use mailsync::model::{MailboxId, MailboxSpec};
use mailsync::{ErrorCode, MailSync, Options, StoreConfig};

const CHANGES: u32 = 1000;

fn options() -> Options {
    let mut o = Options::default();
    // Every transient failure counts; none disables the direction.
    o.failure_policy = FailurePolicy {
        max_retries: u32::MAX,
        interval_secs: 60,
    };
    o
}

async fn open(db: &Path) -> MailSync {
    MailSync::open(StoreConfig::sqlite(db), options())
        .await
        .unwrap()
}

/// Child process: applies `CHANGES` failures of one kind to the mailbox.
#[test]
#[ignore = "run as a child process by two_processes_lose_no_update"]
fn child_changes_state() {
    let Ok(db) = std::env::var("MAILSYNC_CHILD_DB") else {
        return;
    };
    let mailbox = MailboxId::parse(&std::env::var("MAILSYNC_CHILD_MAILBOX").unwrap()).unwrap();
    let as_test = std::env::var("MAILSYNC_CHILD_KIND").unwrap() == "test";
    let go = PathBuf::from(std::env::var("MAILSYNC_CHILD_GO").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sync = open(Path::new(&db)).await;
        std::fs::write(go.with_extension(if as_test { "a" } else { "b" }), b"ready").unwrap();
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for _ in 0..CHANGES {
            let event = if as_test {
                LifecycleEvent::TestFailed {
                    direction: Direction::Incoming,
                    code: ErrorCode::Network,
                    reason: "test".into(),
                }
            } else {
                LifecycleEvent::SyncFailed {
                    direction: Direction::Incoming,
                    code: ErrorCode::Timeout,
                    reason: "sync".into(),
                }
            };
            sync.apply_events(&mailbox, &[event]).await.unwrap();
        }
        sync.close().await;
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let sync = open(&db).await;
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@example.com"))
        .await
        .unwrap();
    sync.apply_events(
        &mailbox.id,
        &[LifecycleEvent::TestPassed {
            direction: Direction::Incoming,
        }],
    )
    .await
    .unwrap();
    let go = dir.path().join("go");
    let children: Vec<_> = ["test", "sync"]
        .iter()
        .map(|kind| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_changes_state",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env("MAILSYNC_CHILD_DB", &db)
                .env("MAILSYNC_CHILD_MAILBOX", mailbox.id.as_str())
                .env("MAILSYNC_CHILD_KIND", kind)
                .env("MAILSYNC_CHILD_GO", &go)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(go.with_extension("a").exists() && go.with_extension("b").exists()) {
        assert!(std::time::Instant::now() < deadline, "children not ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&go, b"go").unwrap();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let state = sync.directory().state(&mailbox.id).await.unwrap();
    match state.incoming.status {
        DirectionStatus::Retrying { failures, .. } => {
            assert_eq!(failures, 2 * CHANGES, "every change is counted once")
        }
        other => panic!("{other:?}"),
    }
    // The test failures also recorded their outcome.
    assert!(matches!(
        state.incoming.last_test,
        mailsync::lifecycle::TestStatus::Failure { .. }
    ));
    sync.close().await;
}

/// Child process: opens the (maybe not yet existing) database once the go
/// file exists and adds one mailbox.
#[test]
#[ignore = "run as a child process by processes_creating_one_database_take_turns"]
fn child_opens_fresh_database() {
    let Ok(db) = std::env::var("MAILSYNC_FRESH_DB") else {
        return;
    };
    let me = std::env::var("MAILSYNC_FRESH_NAME").unwrap();
    let go = PathBuf::from(std::env::var("MAILSYNC_FRESH_GO").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        std::fs::write(go.with_extension(&me), b"ready").unwrap();
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sync = if std::env::var_os("MAILSYNC_FRESH_HOST_KEY").is_some() {
            let key = mailsync::SealKey::from_bytes(&[7; 32]).unwrap();
            MailSync::open(StoreConfig::sqlite_with_key(&db, key), options())
                .await
                .unwrap()
        } else {
            open(Path::new(&db)).await
        };
        sync.directory()
            .create_mailbox(MailboxSpec::user(format!("{me}@example.com")))
            .await
            .unwrap();
        sync.close().await;
    });
}

/// Processes that create the same new database at the same moment take
/// turns: none fails with a half-migrated schema or a half-written key file,
/// with the default key file (rounds 0 and 2) or a key of the host's
/// (round 1).
#[tokio::test(flavor = "multi_thread")]
async fn processes_creating_one_database_take_turns() {
    const PROCESSES: usize = 4;
    for round in 0..3 {
        let host_key = round == 1;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("fresh.db");
        let go = dir.path().join("go");
        let names: Vec<String> = (0..PROCESSES).map(|i| format!("p{i}")).collect();
        let children: Vec<_> = names
            .iter()
            .map(|name| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "child_opens_fresh_database",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env("MAILSYNC_FRESH_DB", &db)
                    .env("MAILSYNC_FRESH_NAME", name)
                    .env("MAILSYNC_FRESH_GO", &go)
                    .env(
                        if host_key {
                            "MAILSYNC_FRESH_HOST_KEY"
                        } else {
                            "MAILSYNC_FRESH_UNUSED"
                        },
                        "1",
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !names.iter().all(|n| go.with_extension(n).exists()) {
            assert!(std::time::Instant::now() < deadline, "children not ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&go, b"go").unwrap();
        for child in children {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "round {round}: a child failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sync = if host_key {
            let key = mailsync::SealKey::from_bytes(&[7; 32]).unwrap();
            MailSync::open(StoreConfig::sqlite_with_key(&db, key), options())
                .await
                .unwrap()
        } else {
            open(&db).await
        };
        assert_eq!(
            sync.directory().list_mailboxes(None).await.unwrap().len(),
            PROCESSES
        );
        sync.close().await;
    }
}
