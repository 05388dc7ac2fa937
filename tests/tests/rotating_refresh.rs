//! Refresh with rotating refresh tokens (the stack's `rotating` client: every
//! refresh spends the refresh token and returns a new one) across two
//! processes and 100 tasks, while one process is killed (`kill -9`) in the
//! middle of a refresh and a caller is cancelled between the provider's
//! answer and the database write: one refresh per expiry, no refresh token
//! lost, the mailbox stays connected.
//!
//! The provider's fault modes make the two moments reachable: `refresh_hang`
//! holds a refresh request (and drops it unprocessed when its client dies);
//! `refresh_delay` processes it at once (the old refresh token is spent) and
//! answers later.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailsync::lifecycle::GrantStatus;
use mailsync::model::{
    Endpoint, Mailbox, MailboxId, MailboxSpec, OAuthApp, Security, ServerProfile,
};
use mailsync::{MailSync, Options, RetryPolicy, StoreConfig, Timestamp};
use mailsync_e2e::{OAuthServer, Stack};

const CLIENT: &str = "rotating";
const EMAIL: &str = "alice@example.test";
const LOCAL_TASKS: usize = 100;
const CHILD_TASKS: usize = 10;

fn options(issuer: &str) -> Options {
    let mut o = Options::default();
    o.google_issuer_override = Some(issuer.to_owned());
    o.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    // A holder that died is waited for at most one lease period.
    o.http_timeout_secs = 10;
    o.refresh_lease_secs = 12;
    o.refresh_retry = RetryPolicy {
        attempts: 2,
        initial_backoff_ms: 100,
        max_backoff_ms: 500,
    };
    o
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Child process: `MAILSYNC_ROT_TASKS` concurrent token requests, each
/// printing the SHA-256 of the token it got.
#[test]
#[ignore = "run as a child process by rotating_refresh_tokens_survive_a_killed_and_a_cancelled_refresh"]
fn child_token_requests() {
    let Ok(db) = std::env::var("MAILSYNC_ROT_DB") else {
        return;
    };
    let mailbox = MailboxId::parse(&std::env::var("MAILSYNC_ROT_MAILBOX").unwrap()).unwrap();
    let issuer = std::env::var("MAILSYNC_ROT_ISSUER").unwrap();
    let ready = PathBuf::from(std::env::var("MAILSYNC_ROT_READY").unwrap());
    let tasks: usize = std::env::var("MAILSYNC_ROT_TASKS")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sync = MailSync::open(StoreConfig::sqlite(&db), options(&issuer))
            .await
            .unwrap();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (sync, mailbox) = (sync.clone(), mailbox.clone());
                tokio::spawn(async move { sync.connections().access_token(&mailbox).await })
            })
            .collect();
        std::fs::write(&ready, b"ready").unwrap();
        for h in handles {
            let token = h.await.unwrap().unwrap();
            println!("TOKEN_SHA256={}", sha256(token.token.expose()));
        }
        std::io::stdout().flush().unwrap();
        sync.close().await;
    });
}

fn spawn_child(db: &Path, mailbox: &Mailbox, issuer: &str, ready: &Path, tasks: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_token_requests",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAILSYNC_ROT_DB", db)
        .env("MAILSYNC_ROT_MAILBOX", mailbox.id.as_str())
        .env("MAILSYNC_ROT_ISSUER", issuer)
        .env("MAILSYNC_ROT_READY", ready)
        .env("MAILSYNC_ROT_TASKS", tasks.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The token hashes a child printed (it must have succeeded).
async fn child_hashes(child: Child) -> Vec<String> {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            l.split_once("TOKEN_SHA256=")
                .map(|(_, h)| h[..64].to_owned())
        })
        .collect()
}

async fn local_requests(
    sync: &MailSync,
    mailbox: &Mailbox,
) -> Vec<tokio::task::JoinHandle<String>> {
    (0..LOCAL_TASKS)
        .map(|_| {
            let (sync, id) = (sync.clone(), mailbox.id.clone());
            tokio::spawn(async move {
                let token = sync.connections().access_token(&id).await.unwrap();
                sha256(token.token.expose())
            })
        })
        .collect()
}

async fn wait_ready(path: &Path) {
    let path = path.to_owned();
    mailsync_e2e::wait_for(
        "the child process to start",
        Duration::from_secs(60),
        || {
            let path = path.clone();
            async move { path.exists() }
        },
    )
    .await;
}

async fn wait_stat(key: &'static str, value: u64) {
    mailsync_e2e::wait_for(key, Duration::from_secs(60), || async move {
        mailsync_e2e::stat(&mailsync_e2e::stats_of(OAuthServer::Google).await, key) >= value
    })
    .await;
}

async fn expire(sync: &MailSync, mailbox: &Mailbox) {
    let mut g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    g.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&g, g.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
}

/// The stored refresh token's hash.
async fn refresh_token_hash(sync: &MailSync, mailbox: &Mailbox) -> String {
    let g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    sha256(g.refresh_token.expect("a refresh token").expose())
}

async fn refreshes(client_id: &str) -> u64 {
    let stats = mailsync_e2e::stats_of(OAuthServer::Google).await;
    mailsync_e2e::client_token_requests(&stats, client_id, "refresh_token")
}

async fn assert_connected_and_accepted(stack: &Stack, sync: &MailSync, mailbox: &Mailbox) {
    let state = sync.directory().state(&mailbox.id).await.unwrap();
    assert!(
        matches!(state.grant, GrantStatus::Connected { .. }),
        "{:?}",
        state.grant
    );
    let token = sync.connections().access_token(&mailbox.id).await.unwrap();
    let mut c = mailsync_e2e::wire::connect_tls(&stack.imap.host, stack.imap.tls_port).await;
    mailsync_e2e::wire::imap_greeting(&mut c).await;
    let auth = mailsync_e2e::wire::imap_auth(
        &mut c,
        mailsync_e2e::wire::Mech::XOAuth2,
        &mailbox.email,
        token.token.expose(),
        &stack.imap.host,
        stack.imap.tls_port,
    )
    .await;
    assert!(auth.ok, "Dovecot accepts the refreshed token: {auth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_refresh_tokens_survive_a_killed_and_a_cancelled_refresh() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let stack = Stack::get();
    let client = stack.oauth.client(CLIENT).clone();
    assert!(client.rotate_refresh_tokens);
    let issuer = stack.oauth.issuer.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), options(&issuer))
        .await
        .unwrap();
    let app = OAuthApp::google(client.client_id.clone(), client.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
    sync.directory()
        .create_profile(
            ServerProfile::gmail("Rotating", app)
                .default_for_new_mailboxes()
                .with_incoming(Endpoint::new(
                    &stack.imap.host,
                    stack.imap.tls_port,
                    Security::Tls,
                ))
                .with_outgoing(Endpoint::new(
                    &stack.smtp.host,
                    stack.smtp.starttls_port,
                    Security::StartTls,
                )),
        )
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user(EMAIL))
        .await
        .unwrap();
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let password = stack.account(EMAIL).password.clone();
    let url = consent.url.clone();
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, EMAIL, &password, false))
            .await
            .unwrap();
    sync.connections().complete(&callback).await.unwrap();
    let consented = refresh_token_hash(&sync, &mailbox).await;

    // 1. A process is killed while its refresh request is in flight (held by
    //    the provider, refresh token not yet spent); the other process and
    //    100 tasks wait for its lease to expire, then one of them refreshes.
    expire(&sync, &mailbox).await;
    mailsync_e2e::reset_stats().await;
    mailsync_e2e::hold_refreshes(CLIENT, 1).await;
    let mut killed = spawn_child(&db, &mailbox, &issuer, &dir.path().join("ready-a"), 1);
    wait_stat("held_refresh_requests_pending", 1).await;
    let ready_b = dir.path().join("ready-b");
    let other = spawn_child(&db, &mailbox, &issuer, &ready_b, CHILD_TASKS);
    wait_ready(&ready_b).await;
    let local = local_requests(&sync, &mailbox).await;
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    let t0 = Instant::now();
    let mut hashes = child_hashes(other).await;
    for h in local {
        hashes.push(h.await.unwrap());
    }
    eprintln!("taken over from the killed holder in {:?}", t0.elapsed());
    assert_eq!(hashes.len(), LOCAL_TASKS + CHILD_TASKS);
    assert!(
        hashes.iter().all(|h| h == &hashes[0]),
        "every caller got the same token"
    );
    wait_stat("held_refresh_requests_dropped", 1).await;
    assert_eq!(
        refreshes(&client.client_id).await,
        1,
        "one refresh for this expiry (the killed one never reached oidc-provider)"
    );
    let after_kill = refresh_token_hash(&sync, &mailbox).await;
    assert_ne!(after_kill, consented, "the rotated refresh token is stored");
    assert_connected_and_accepted(&stack, &sync, &mailbox).await;

    // 2. A caller is cancelled after the provider spent the old refresh
    //    token and before its answer arrived; the answer is still written.
    expire(&sync, &mailbox).await;
    mailsync_e2e::reset_stats().await;
    mailsync_e2e::delay_refreshes(CLIENT, 1, Duration::from_secs(2)).await;
    let cancelled = {
        let (sync, id) = (sync.clone(), mailbox.id.clone());
        tokio::spawn(async move { sync.connections().access_token(&id).await })
    };
    wait_stat("delayed_refresh_requests", 1).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    let ready_c = dir.path().join("ready-c");
    let other = spawn_child(&db, &mailbox, &issuer, &ready_c, CHILD_TASKS);
    let local = local_requests(&sync, &mailbox).await;
    let mut hashes = child_hashes(other).await;
    for h in local {
        hashes.push(h.await.unwrap());
    }
    assert!(
        hashes.iter().all(|h| h == &hashes[0]),
        "every caller got the same token"
    );
    let stats = mailsync_e2e::stats_of(OAuthServer::Google).await;
    assert_eq!(
        mailsync_e2e::stat(&stats, "delayed_refresh_responses_lost"),
        0
    );
    assert_eq!(
        mailsync_e2e::stat(&stats, "delayed_refresh_responses_delivered"),
        1
    );
    assert_eq!(
        refreshes(&client.client_id).await,
        1,
        "one refresh for this expiry"
    );
    let after_cancel = refresh_token_hash(&sync, &mailbox).await;
    assert_ne!(
        after_cancel, after_kill,
        "the rotated refresh token is stored"
    );
    assert_connected_and_accepted(&stack, &sync, &mailbox).await;

    // 3. The stored refresh token is the live one: the next expiry refreshes.
    expire(&sync, &mailbox).await;
    mailsync_e2e::reset_stats().await;
    assert_connected_and_accepted(&stack, &sync, &mailbox).await;
    assert_eq!(refreshes(&client.client_id).await, 1);
    assert_ne!(refresh_token_hash(&sync, &mailbox).await, after_cancel);

    mailsync_e2e::revoke_with(
        sync.connections()
            .access_token(&mailbox.id)
            .await
            .unwrap()
            .token
            .expose(),
        OAuthServer::Google,
        CLIENT,
    );
    sync.close().await;
}
