//! The OAuth lifecycle against the real local authorization server
//! (oidc-provider in tests/stack) and Dovecot: connect → consent pages →
//! complete → access token accepted over IMAP XOAUTH2; every failure path
//! with its error code; single-flight refresh in one process (100 callers)
//! and across two processes on one SQLite file; no secret in logs, Debug
//! output, errors or the database file.
//!
//! Gmail OAuth profiles are pointed at the stack's issuer with
//! `Settings::google_issuer_override`, so the Google dialect (access_type,
//! prompt, include_granted_scopes, login_hint, PKCE) is what is exercised.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mailsync::model::{
    ConnectionState, Mailbox, MailboxId, MailboxSpec, OAuthApp, PublishingStatus, Secret,
    ServerProfile, UserType,
};
use mailsync::oauth::{CollectingListener, MailboxEventKind, RetryPolicy};
use mailsync::{ErrorCode, MailSync, Settings};
use mailsync_e2e::wire::{self, Mech};
use mailsync_e2e::{Stack, stack_src};

// ------------------------------------------------------------------ log capture (TRACE, global)

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<LogBuf> = OnceLock::new();

/// Every test's logs, at TRACE for every crate, captured for the secrets test.
fn logs() -> LogBuf {
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("install subscriber");
        buf
    })
    .clone()
}

// ------------------------------------------------------------------ setup

struct Opts {
    client_secret: Option<String>,
    consent_ttl: Option<Duration>,
    retry: RetryPolicy,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            client_secret: None,
            consent_ttl: None,
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
            },
        }
    }
}

struct Env {
    stack: Stack,
    sync: MailSync,
    mailbox: Mailbox,
    events: Arc<CollectingListener>,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

fn settings(stack: &Stack, opts: &Opts) -> Settings {
    let mut s = Settings::default();
    s.google_issuer_override = Some(stack.oauth.issuer.parse().unwrap());
    s.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    s.refresh_retry = opts.retry;
    if let Some(ttl) = opts.consent_ttl {
        s.consent_ttl = ttl;
    }
    s
}

async fn setup(email: &str, opts: Opts) -> Env {
    logs();
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mailsync.db");
    let events = Arc::new(CollectingListener::new());
    let mut s = settings(&stack, &opts);
    s.event_listener = Some(events.clone());
    let sync = MailSync::open_sqlite_with(&db, s).await.unwrap();
    let secret = opts
        .client_secret
        .unwrap_or_else(|| stack.oauth.client_secret.clone());
    // External + Testing with the stack's users as test users (Google's default for new apps).
    let app = OAuthApp::google(stack.oauth.client_id.clone(), secret)
        .for_environment("http://localhost:8765")
        .unwrap()
        .with_audience(UserType::External, PublishingStatus::Testing)
        .with_test_users(stack.accounts.iter().map(|a| a.email.clone()));
    sync.create_profile(ServerProfile::gmail("Stack Gmail", app).default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync.create_mailbox(MailboxSpec::user(email)).await.unwrap();
    Env {
        stack,
        sync,
        mailbox,
        events,
        db,
        _dir: dir,
    }
}

fn param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// Walks the provider's login + consent pages; returns the redirect URL.
async fn walk(consent_url: &str, email: &str, deny: bool) -> String {
    let stack = Stack::get();
    let password = stack.account(email).password.clone();
    let (url, email) = (consent_url.to_owned(), email.to_owned());
    tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &email, &password, deny))
        .await
        .unwrap()
}

/// Like [`walk`], unchecking one scope on the consent page.
async fn walk_unchecking(consent_url: &str, email: &str, scope: &str) -> String {
    let stack = Stack::get();
    let password = stack.account(email).password.clone();
    let args = [
        consent_url,
        "--email",
        email,
        "--password",
        &password,
        "--uncheck-scope",
        scope,
    ]
    .map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let out = Command::new(stack_src().join("bin").join("consent"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "consent helper: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .await
    .unwrap()
}

async fn connected(env: &Env) -> String {
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), &env.mailbox.email, false).await;
    let mailbox = env.sync.complete_connect(&callback).await.unwrap();
    assert!(
        matches!(mailbox.connection, ConnectionState::Connected { .. }),
        "{:?}",
        mailbox.connection
    );
    callback
}

/// Makes the stored access token look expired (as an hour passing would).
async fn expire(sync: &MailSync, mailbox: &MailboxId) {
    let mut t = sync.store().get_tokens(mailbox).await.unwrap().unwrap();
    t.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    sync.store()
        .put_tokens(&t, Some(t.version))
        .await
        .unwrap()
        .expect("CAS");
}

async fn refresh_requests() -> u64 {
    mailsync_e2e::stats().await["token_requests"]["refresh_token"]
        .as_u64()
        .unwrap_or(0)
}

async fn imap_accepts(stack: &Stack, email: &str, token: &str) -> bool {
    let mut c = wire::connect_tls(&stack.imap.host, stack.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let r = wire::imap_auth(
        &mut c,
        Mech::XOAuth2,
        email,
        token,
        &stack.imap.host,
        stack.imap.tls_port,
    )
    .await;
    r.ok
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------------------ happy path

#[tokio::test(flavor = "multi_thread")]
async fn connect_complete_and_dovecot_accepts_the_token() {
    let _p = mailsync_e2e::provider_shared().await;
    let t0 = Instant::now();
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    assert_eq!(
        param(consent.url.as_str(), "login_hint").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(
        param(consent.url.as_str(), "code_challenge_method").as_deref(),
        Some("S256")
    );
    let record = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(matches!(
        record.connection,
        ConnectionState::AwaitingConsent { .. }
    ));

    let callback = walk(consent.url.as_str(), "alice@example.test", false).await;
    let mailbox = env.sync.complete_connect(&callback).await.unwrap();
    match &mailbox.connection {
        ConnectionState::Connected { account, .. } => assert_eq!(account, "alice@example.test"),
        other => panic!("not connected: {other:?}"),
    }
    assert!(mailbox.alerts.iter().any(|a| a.code == "connected"));
    let info = env.sync.token_info(&env.mailbox.id).await.unwrap().unwrap();
    assert!(info.has_refresh_token);
    assert!(
        info.scopes.iter().any(|s| s == "https://mail.google.com/"),
        "{:?}",
        info.scopes
    );

    let token = env.sync.access_token(&env.mailbox.id).await.unwrap();
    assert_eq!(token.account, "alice@example.test");
    assert!(imap_accepts(&env.stack, "alice@example.test", token.token.expose()).await);

    // A forced refresh gives a new token that Dovecot also accepts.
    expire(&env.sync, &env.mailbox.id).await;
    let refreshed = env.sync.access_token(&env.mailbox.id).await.unwrap();
    assert_ne!(refreshed.token, token.token);
    assert!(imap_accepts(&env.stack, "alice@example.test", refreshed.token.expose()).await);
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .unwrap()
            .has_refresh_token
    );

    // Disconnect revokes the grant; twice is fine.
    let mailbox = env.sync.disconnect(&env.mailbox.id).await.unwrap();
    assert_eq!(mailbox.connection, ConnectionState::NotConnected);
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none()
    );
    let introspected = mailsync_e2e::introspect(refreshed.token.expose()).await;
    assert_eq!(introspected["active"], false, "revoked at the provider");
    assert!(!imap_accepts(&env.stack, "alice@example.test", refreshed.token.expose()).await);
    env.sync.disconnect(&env.mailbox.id).await.unwrap();
    let e = env.sync.access_token(&env.mailbox.id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotConnected);

    let kinds: Vec<_> = env.events.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            MailboxEventKind::Connected,
            MailboxEventKind::Refreshed,
            MailboxEventKind::Disconnected,
            MailboxEventKind::Disconnected
        ]
    );
    eprintln!("happy path: {:?}", t0.elapsed());
}

// ------------------------------------------------------------------ failure paths

#[tokio::test(flavor = "multi_thread")]
async fn denied_consent_is_consent_denied() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), "alice@example.test", true).await;
    assert_eq!(param(&callback, "error").as_deref(), Some("access_denied"));
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConsentDenied, "{e}");
    let mb = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert_eq!(mb.connection, ConnectionState::NotConnected);
    assert!(mb.alerts.iter().any(|a| a.code == "consent_denied"));
    // The state was consumed.
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_missing_tampered_replayed_or_expired_is_state_invalid() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), "alice@example.test", false).await;

    let state = param(&callback, "state").unwrap();
    let mut tampered_state = state.clone();
    let last = tampered_state.pop().unwrap();
    tampered_state.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = with_param(&callback, "state", &tampered_state);
    assert_eq!(
        env.sync
            .complete_connect(&tampered)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::StateInvalid
    );
    let missing = format!("?code={}", param(&callback, "code").unwrap());
    assert_eq!(
        env.sync
            .complete_connect(&missing)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::StateInvalid
    );
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none(),
        "nothing stored"
    );

    // The genuine callback still works once (the query alone is enough) ...
    let query = url::Url::parse(&callback)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    env.sync.complete_connect(&query).await.unwrap();
    // ... and never twice.
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(!e.is_transient());

    // Expired: a consent link with no lifetime.
    let env2 = setup(
        "bob@example.test",
        Opts {
            consent_ttl: Some(Duration::ZERO),
            ..Opts::default()
        },
    )
    .await;
    let consent = env2.sync.connect(&env2.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), "bob@example.test", false).await;
    let e = env2.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(e.message().contains("expired"), "{e}");
    assert!(
        env2.sync
            .token_info(&env2.mailbox.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        env2.sync
            .get_mailbox(&env2.mailbox.id)
            .await
            .unwrap()
            .connection,
        ConnectionState::NotConnected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_code_is_refused() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("carol@example.test", Opts::default()).await;
    let first = connected(&env).await;
    let code = param(&first, "code").unwrap();
    // A fresh, valid state with the already used code.
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let state = param(consent.url.as_str(), "state").unwrap();
    let forged = with_param(&with_param(&first, "state", &state), "code", &code);
    let e = env.sync.complete_connect(&forged).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConsentFailed, "{e}");
    assert!(e.message().contains("invalid_grant"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unchecked_mail_scope_is_scope_not_granted() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk_unchecking(
        consent.url.as_str(),
        "alice@example.test",
        "https://mail.google.com/",
    )
    .await;
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ScopeNotGranted, "{e}");
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none()
    );
    let mb = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert_eq!(mb.connection, ConnectionState::NotConnected);
    assert!(mb.alerts.iter().any(|a| a.code == "scope_not_granted"));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_account_consenting_is_account_mismatch() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), "bob@example.test", false).await;
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountMismatch, "{e}");
    assert!(
        e.message().contains("bob@example.test") && e.message().contains("alice@example.test"),
        "{e}"
    );
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_client_secret_is_invalid_client() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup(
        "alice@example.test",
        Opts {
            client_secret: Some("not-the-secret".into()),
            ..Opts::default()
        },
    )
    .await;
    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(consent.url.as_str(), "alice@example.test", false).await;
    let e = env.sync.complete_connect(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidClient, "{e}");
    assert!(!e.message().contains("not-the-secret"));
    assert!(
        env.sync
            .token_info(&env.mailbox.id)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_grant_on_refresh_needs_reconsent_and_is_not_retried() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup("bob@example.test", Opts::default()).await;
    connected(&env).await;
    let token = env.sync.access_token(&env.mailbox.id).await.unwrap();
    let raw = token.token.expose().to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::revoke(&raw))
        .await
        .unwrap();
    expire(&env.sync, &env.mailbox.id).await;

    let before = refresh_requests().await;
    let e = env.sync.access_token(&env.mailbox.id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TokenRevoked, "{e}");
    assert!(e.message().contains("7 days"), "Testing-mode hint: {e}");
    assert_eq!(
        refresh_requests().await,
        before + 1,
        "invalid_grant is not retried"
    );
    let mb = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    match &mb.connection {
        ConnectionState::NeedsReconsent { code, reason } => {
            assert_eq!(code, "token_revoked");
            assert!(reason.contains("7 days"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        env.events
            .events()
            .iter()
            .any(|e| e.kind == MailboxEventKind::NeedsReconsent
                && e.code.as_deref() == Some("token_revoked"))
    );
    // Later calls fail at once, without asking the provider.
    let e = env.sync.access_token(&env.mailbox.id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TokenRevoked);
    assert_eq!(refresh_requests().await, before + 1);
    // Re-consent heals it.
    connected(&env).await;
    env.sync.access_token(&env.mailbox.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_during_refresh_is_transient_then_recovers() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup("carol@example.test", Opts::default()).await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    let before = refresh_requests().await;
    mailsync_e2e::inject_failure("refresh_503", 3).await;
    let e = env.sync.access_token(&env.mailbox.id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProviderUnavailable, "{e}");
    assert!(e.is_transient());
    assert_eq!(
        refresh_requests().await,
        before + 3,
        "3 attempts with backoff"
    );
    let mb = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(mb.connection, ConnectionState::Connected { .. }),
        "still connected"
    );

    // 500 twice, then it works within one call's retries.
    mailsync_e2e::inject_failure("refresh_500", 2).await;
    let token = env.sync.access_token(&env.mailbox.id).await.unwrap();
    assert!(imap_accepts(&env.stack, "carol@example.test", token.token.expose()).await);
    assert_eq!(refresh_requests().await, before + 6);
    mailsync_e2e::inject_failure("clear", 0).await;
}

// ------------------------------------------------------------------ single flight

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn hundred_concurrent_callers_cause_one_refresh() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup("alice@example.test", Opts::default()).await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    mailsync_e2e::reset_stats().await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let sync = env.sync.clone();
        let id = env.mailbox.id.clone();
        tasks.push(tokio::spawn(async move { sync.access_token(&id).await }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().token.expose().to_owned());
    }
    eprintln!("100 concurrent access_token(): {:?}", t0.elapsed());
    assert_eq!(tokens.len(), 1, "all callers get the same token");
    assert_eq!(refresh_requests().await, 1, "exactly one refresh request");
    let token = tokens.into_iter().next().unwrap();
    assert!(imap_accepts(&env.stack, "alice@example.test", &token).await);
}

/// Child process of `two_processes_on_one_sqlite_file_refresh_once`.
#[test]
#[ignore = "run as a child process by two_processes_on_one_sqlite_file_refresh_once"]
fn child_access_token() {
    let Ok(db) = std::env::var("MAILSYNC_OAUTH_CHILD_DB") else {
        return;
    };
    let mailbox =
        MailboxId::parse(&std::env::var("MAILSYNC_OAUTH_CHILD_MAILBOX").unwrap()).unwrap();
    let ready = PathBuf::from(std::env::var("MAILSYNC_OAUTH_CHILD_READY").unwrap());
    let go = PathBuf::from(std::env::var("MAILSYNC_OAUTH_CHILD_GO").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = Settings::default();
        s.google_issuer_override = Some(
            std::env::var("MAILSYNC_OAUTH_CHILD_ISSUER")
                .unwrap()
                .parse()
                .unwrap(),
        );
        let sync = MailSync::open_sqlite_with(&db, s).await.unwrap();
        std::fs::write(&ready, b"ready").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !go.exists() {
            assert!(Instant::now() < deadline, "no go signal");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let token = sync.access_token(&mailbox).await.unwrap();
        println!("TOKEN_SHA256={}", sha256(token.token.expose()));
        std::io::stdout().flush().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_sqlite_file_refresh_once() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup("bob@example.test", Opts::default()).await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    mailsync_e2e::reset_stats().await;
    let dir = env.db.parent().unwrap().to_path_buf();
    let go = dir.join("go");
    let t0 = Instant::now();
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_access_token",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MAILSYNC_OAUTH_CHILD_DB", &env.db)
                .env("MAILSYNC_OAUTH_CHILD_MAILBOX", env.mailbox.id.as_str())
                .env("MAILSYNC_OAUTH_CHILD_READY", dir.join(format!("ready-{i}")))
                .env("MAILSYNC_OAUTH_CHILD_GO", &go)
                .env("MAILSYNC_OAUTH_CHILD_ISSUER", &env.stack.oauth.issuer)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    mailsync_e2e::wait_for("both children ready", Duration::from_secs(30), || {
        let dir = dir.clone();
        async move { dir.join("ready-0").exists() && dir.join("ready-1").exists() }
    })
    .await;
    std::fs::write(&go, b"go").unwrap();
    let outputs: Vec<_> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    })
    .await
    .unwrap();
    eprintln!("two processes: {:?}", t0.elapsed());
    let mut hashes = Vec::new();
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = stdout
            .lines()
            .find_map(|l| l.split_once("TOKEN_SHA256=").map(|(_, h)| &h[..64]))
            .unwrap_or_else(|| panic!("no token line in {stdout}"))
            .to_owned();
        hashes.push(hash);
    }
    assert_eq!(hashes[0], hashes[1], "both processes got the same token");
    assert_eq!(
        refresh_requests().await,
        1,
        "exactly one refresh across processes"
    );
    let mine = env.sync.access_token(&env.mailbox.id).await.unwrap();
    assert_eq!(sha256(mine.token.expose()), hashes[0]);
}

// ------------------------------------------------------------------ secrets

fn file_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(p)) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_debug_errors_or_the_database() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let log = logs();
    let env = setup("carol@example.test", Opts::default()).await;
    let mut debug = String::new();

    let consent = env.sync.connect(&env.mailbox.id).await.unwrap();
    let state = param(consent.url.as_str(), "state").unwrap();
    // Peek at the stored verifier (and put it back).
    let pending = env
        .sync
        .store()
        .take_pending_authorization(&Secret::new(state.clone()))
        .await
        .unwrap()
        .unwrap();
    env.sync
        .store()
        .put_pending_authorization(&pending)
        .await
        .unwrap();
    let verifier = pending.pkce_verifier.expose().to_owned();
    debug.push_str(&format!("{pending:?}"));

    let callback = walk(consent.url.as_str(), "carol@example.test", false).await;
    let code = param(&callback, "code").unwrap();
    let mailbox = env.sync.complete_connect(&callback).await.unwrap();
    debug.push_str(&format!("{mailbox:?}{:?}", env.sync));
    let first = env.sync.access_token(&env.mailbox.id).await.unwrap();
    let stored = env
        .sync
        .store()
        .get_tokens(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    let refresh = stored.refresh_token.as_ref().unwrap().expose().to_owned();
    debug.push_str(&format!(
        "{first:?}{stored:?}{:?}",
        env.sync.token_info(&env.mailbox.id).await.unwrap()
    ));
    expire(&env.sync, &env.mailbox.id).await;
    let second = env.sync.access_token(&env.mailbox.id).await.unwrap();
    debug.push_str(&format!("{second:?}{:?}", env.sync.settings()));
    debug.push_str(&format!(
        "{:?}",
        env.sync
            .get_profile(mailbox.profile_id.as_ref().unwrap())
            .await
            .unwrap()
    ));

    // Failure paths produce errors; their Debug and Display must be clean too.
    for e in [
        env.sync.complete_connect(&callback).await.unwrap_err(),
        env.sync
            .complete_connect(&with_param(&callback, "state", "x"))
            .await
            .unwrap_err(),
    ] {
        debug.push_str(&format!("{e:?} {e}"));
    }
    mailsync_e2e::inject_failure("refresh_503", 3).await;
    expire(&env.sync, &env.mailbox.id).await;
    let e = env.sync.access_token(&env.mailbox.id).await.unwrap_err();
    debug.push_str(&format!("{e:?} {e}"));
    mailsync_e2e::inject_failure("clear", 0).await;
    let events = format!("{:?}", env.events.events());
    let db_bytes = file_bytes(&env.db);

    let secrets = [
        ("client secret", env.stack.oauth.client_secret.clone()),
        ("authorization code", code),
        ("PKCE verifier", verifier),
        ("access token", first.token.expose().to_owned()),
        ("refreshed access token", second.token.expose().to_owned()),
        ("refresh token", refresh),
    ];
    let logged = log.0.lock().unwrap().clone();
    assert!(!logged.is_empty(), "TRACE logs were captured");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} too short to grep");
        assert!(!contains(&logged, secret), "{what} in the logs");
        assert!(
            !debug.contains(secret.as_str()),
            "{what} in Debug/Display output"
        );
        assert!(!events.contains(secret.as_str()), "{what} in events");
        assert!(
            !contains(&db_bytes, secret),
            "{what} in the database file in clear"
        );
    }
    assert!(
        !contains(&db_bytes, &state),
        "state in the database file in clear"
    );
    env.sync.disconnect(&env.mailbox.id).await.unwrap();
}
