//! The OAuth lifecycle against the real local authorization server
//! (oidc-provider in tests/stack) and Dovecot: connect → consent pages →
//! complete → access token accepted over IMAP XOAUTH2; every failure path
//! with its error code; single-flight refresh in one process (100 callers)
//! and across two processes on one SQLite file; no secret in logs (tracing
//! and `log` records), Debug output, errors, events or the database file.
//!
//! Gmail OAuth profiles are pointed at the stack's issuer with
//! `Options::google_issuer_override`, so the Google dialect (access_type,
//! prompt, include_granted_scopes, login_hint, PKCE) is what is exercised.
//!
//! The stack's providers revoke like Google (any token revokes every grant
//! of the account on the client), and several tests here revoke (disconnect,
//! a revoked grant, a refused consent the library gives back): the tests that
//! use one account's `web` grants take turns through
//! `mailsync_e2e::account_lock`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mailsync::checks::TestOptions;
use mailsync::lifecycle::{ConsentPhase, GrantStatus};
use mailsync::model::{
    Endpoint, Mailbox, MailboxId, MailboxSpec, OAuthApp, PublishingStatus, Secret, Security,
    ServerProfile, UserType,
};
use mailsync::store::{Commit, CommitOutcome, GrantChange, PendingChange};
use mailsync::{
    Clock, ErrorCode, MailSync, MailboxEvent, MailboxEventKind, ManualClock, Options, RetryPolicy,
    StoreConfig, SystemClock, Timestamp,
};
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

/// Every test's logs, at TRACE for every crate, captured for the secrets test: `tracing`
/// events, and `log` records (async-imap, rustls, reqwest log through the `log` crate)
/// bridged into the same subscriber by `tracing_log::LogTracer`.
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
        // `log` records at every level, turned into tracing events.
        tracing_log::LogTracer::init().expect("install the log bridge");
        buf
    })
    .clone()
}

// ------------------------------------------------------------------ events

/// The events of one [`MailSync`] instance, collected by a task from a subscription to
/// every mailbox.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<MailboxEvent>>>);

impl Events {
    fn all(&self) -> Vec<MailboxEvent> {
        self.0.lock().unwrap().clone()
    }

    /// The kinds of the events after the initial snapshots.
    fn kinds(&self) -> Vec<MailboxEventKind> {
        self.all()
            .iter()
            .map(|e| e.kind)
            .filter(|k| *k != MailboxEventKind::Snapshot)
            .collect()
    }

    /// Waits (bounded) until `done` holds for the collected events. Events are published
    /// before the call that caused them returns; the collecting task may still be reading
    /// them.
    async fn wait_until(&self, what: &str, done: impl Fn(&[MailboxEvent]) -> bool) {
        let this = self.clone();
        mailsync_e2e::wait_for(what, Duration::from_secs(10), || {
            let ok = done(&this.all());
            async move { ok }
        })
        .await;
        // Let any event published in the same burst arrive too.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ends the collecting task with the test.
struct Collector(tokio::task::JoinHandle<()>);

impl Drop for Collector {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn collect(sync: &MailSync) -> (Events, Collector) {
    let mut sub = sync.subscribe(None).await.unwrap();
    let events = Events::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Some(e) = sub.next().await {
            sink.0.lock().unwrap().push(e);
        }
    });
    (events, Collector(task))
}

// ------------------------------------------------------------------ setup

struct Opts {
    client_secret: Option<String>,
    retry: RetryPolicy,
    /// A stack client by name (`web` by default; `short` issues 5-second tokens).
    client: &'static str,
    /// Time for the library (the system clock by default).
    clock: Option<Arc<ManualClock>>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            client_secret: None,
            client: "web",
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff_ms: 20,
                max_backoff_ms: 100,
            },
            clock: None,
        }
    }
}

struct Env {
    stack: Stack,
    sync: MailSync,
    mailbox: Mailbox,
    events: Events,
    db: PathBuf,
    _collector: Collector,
    _dir: tempfile::TempDir,
}

fn options(stack: &Stack, opts: &Opts) -> Options {
    let mut o = Options::default();
    o.google_issuer_override = Some(stack.oauth.issuer.clone());
    o.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    o.refresh_retry = opts.retry;
    o
}

async fn setup(email: &str, opts: Opts) -> Env {
    logs();
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mailsync.db");
    let clock: Arc<dyn Clock> = match &opts.clock {
        Some(manual) => manual.clone(),
        None => Arc::new(SystemClock),
    };
    let sync = MailSync::open_with_clock(StoreConfig::sqlite(&db), options(&stack, &opts), clock)
        .await
        .unwrap();
    let client = stack.oauth.client(opts.client).clone();
    let secret = opts
        .client_secret
        .unwrap_or_else(|| client.client_secret.clone());
    // External + Testing with the stack's users as test users (Google's default for new apps).
    let app = OAuthApp::google(client.client_id.clone(), secret)
        .for_environment("http://localhost:8765")
        .unwrap()
        .with_audience(UserType::External, PublishingStatus::Testing)
        .with_test_users(stack.accounts.iter().map(|a| a.email.clone()));
    // The stack's mail servers, for the tests that run Test & Enable.
    let mut profile = ServerProfile::gmail("Stack Gmail", app)
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
        ));
    profile.processing.connection_timeout_secs = 10;
    sync.directory().create_profile(profile).await.unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user(email))
        .await
        .unwrap();
    let (events, collector) = collect(&sync).await;
    Env {
        stack,
        sync,
        mailbox,
        events,
        db,
        _collector: collector,
        _dir: dir,
    }
}

impl Env {
    async fn grant(&self) -> GrantStatus {
        self.sync
            .directory()
            .state(&self.mailbox.id)
            .await
            .unwrap()
            .grant
    }

    async fn has_grant_info(&self) -> bool {
        self.sync
            .connections()
            .grant_info(&self.mailbox.id)
            .await
            .unwrap()
            .is_some()
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
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let callback = walk(&consent.url, &env.mailbox.email, false).await;
    let status = env.sync.connections().complete(&callback).await.unwrap();
    assert!(
        matches!(status.state.grant, GrantStatus::Connected { .. }),
        "{:?}",
        status.state.grant
    );
    callback
}

/// Makes the stored access token look expired (as an hour passing would).
async fn expire(sync: &MailSync, mailbox: &MailboxId) {
    let mut g = sync.store().get_grant(mailbox).await.unwrap().unwrap();
    g.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&g, g.version, None)
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
    // The disconnect revokes alice's `web` grants (all of them, Google-like).
    let _alice = mailsync_e2e::account_lock("alice@example.test").await;
    let t0 = Instant::now();
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    assert_eq!(
        param(&consent.url, "login_hint").as_deref(),
        Some("alice@example.test")
    );
    assert_eq!(
        param(&consent.url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(state.pending_consent.is_some(), "{state:?}");
    assert_eq!(state.grant, GrantStatus::NotConnected {});

    let callback = walk(&consent.url, "alice@example.test", false).await;
    let status = env.sync.connections().complete(&callback).await.unwrap();
    match &status.state.grant {
        GrantStatus::Connected { account, .. } => assert_eq!(account, "alice@example.test"),
        other => panic!("not connected: {other:?}"),
    }
    assert!(status.state.pending_consent.is_none());
    assert!(status.alerts.iter().any(|a| a.code == "connected"));
    let info = env
        .sync
        .connections()
        .grant_info(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert!(info.has_refresh_token);
    assert!(
        info.scopes.iter().any(|s| s == "https://mail.google.com/"),
        "{:?}",
        info.scopes
    );
    assert_eq!(info.account, "alice@example.test");
    assert_eq!(info.issuer, env.stack.oauth.issuer.trim_end_matches('/'));
    assert_eq!(info.client_id, env.stack.oauth.client_id);

    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    assert_eq!(token.account, "alice@example.test");
    assert!(imap_accepts(&env.stack, "alice@example.test", token.token.expose()).await);

    // A forced refresh gives a new token that Dovecot also accepts.
    expire(&env.sync, &env.mailbox.id).await;
    let refreshed = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    assert_ne!(refreshed.token, token.token);
    assert!(imap_accepts(&env.stack, "alice@example.test", refreshed.token.expose()).await);
    assert!(
        env.sync
            .connections()
            .grant_info(&env.mailbox.id)
            .await
            .unwrap()
            .unwrap()
            .has_refresh_token
    );

    // Disconnect revokes the grant; twice is fine.
    let status = env
        .sync
        .connections()
        .disconnect(&env.mailbox.id)
        .await
        .unwrap();
    assert_eq!(status.state.grant, GrantStatus::NotConnected {});
    assert!(!env.has_grant_info().await);
    let introspected = mailsync_e2e::introspect(refreshed.token.expose()).await;
    assert_eq!(introspected["active"], false, "revoked at the provider");
    assert!(!imap_accepts(&env.stack, "alice@example.test", refreshed.token.expose()).await);
    env.sync
        .connections()
        .disconnect(&env.mailbox.id)
        .await
        .unwrap();
    let e = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotConnected);

    let expected = [
        MailboxEventKind::Connected,
        MailboxEventKind::Refreshed,
        MailboxEventKind::Disconnected,
        MailboxEventKind::Disconnected,
    ];
    env.events
        .wait_until("four events after the snapshot", |all| {
            all.len() > expected.len()
        })
        .await;
    let all = env.events.all();
    assert_eq!(all[0].kind, MailboxEventKind::Snapshot, "{all:?}");
    assert_eq!(env.events.kinds(), expected);
    eprintln!("happy path: {:?}", t0.elapsed());
}

// ------------------------------------------------------------------ failure paths

#[tokio::test(flavor = "multi_thread")]
async fn denied_consent_is_consent_denied() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let callback = walk(&consent.url, "alice@example.test", true).await;
    assert_eq!(param(&callback, "error").as_deref(), Some("access_denied"));
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConsentDenied, "{e}");
    let status = env.sync.directory().status(&env.mailbox.id).await.unwrap();
    // The mailbox was never connected: still no grant (a denied consent leaves the grant
    // as it was), and the consent is no longer pending.
    assert_eq!(status.state.grant, GrantStatus::NotConnected {});
    assert!(status.state.pending_consent.is_none(), "{:?}", status.state);
    assert!(status.alerts.iter().any(|a| a.code == "consent_denied"));
    // The state was consumed.
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(!env.has_grant_info().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_missing_tampered_replayed_or_expired_is_state_invalid() {
    let _p = mailsync_e2e::provider_shared().await;
    // The genuine callback exchanges a code of alice's on the `web` client: a concurrent
    // revocation of alice's grants would spend it.
    let _alice = mailsync_e2e::account_lock("alice@example.test").await;
    let env = setup("alice@example.test", Opts::default()).await;
    let connections = env.sync.connections();
    let consent = connections.connect(&env.mailbox.id).await.unwrap();
    let callback = walk(&consent.url, "alice@example.test", false).await;

    let state = param(&callback, "state").unwrap();
    let mut tampered_state = state.clone();
    let last = tampered_state.pop().unwrap();
    tampered_state.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = with_param(&callback, "state", &tampered_state);
    assert_eq!(
        connections.complete(&tampered).await.unwrap_err().code(),
        ErrorCode::StateInvalid
    );
    let missing = format!("?code={}", param(&callback, "code").unwrap());
    assert_eq!(
        connections.complete(&missing).await.unwrap_err().code(),
        ErrorCode::StateInvalid
    );
    assert!(!env.has_grant_info().await, "nothing stored");

    // The genuine callback still works once (the query alone is enough) ...
    let query = url::Url::parse(&callback)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    connections.complete(&query).await.unwrap();
    // ... and never twice.
    let e = connections.complete(&callback).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(!e.is_transient());

    // Expired: the consent lifetime can no longer be zero (Options takes whole seconds,
    // at least one), so the library's clock is moved past it instead.
    let clock = Arc::new(ManualClock::starting_now());
    let env2 = setup(
        "bob@example.test",
        Opts {
            clock: Some(clock.clone()),
            ..Opts::default()
        },
    )
    .await;
    let consent = env2
        .sync
        .connections()
        .connect(&env2.mailbox.id)
        .await
        .unwrap();
    let callback = walk(&consent.url, "bob@example.test", false).await;
    clock.advance(env2.sync.options().consent_ttl() + Duration::from_secs(1));
    let e = env2
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::StateInvalid);
    assert!(e.message().contains("expired"), "{e}");
    assert!(!env2.has_grant_info().await);
    let state = env2.sync.directory().state(&env2.mailbox.id).await.unwrap();
    assert_eq!(state.grant, GrantStatus::NotConnected {});
    assert_eq!(state.consent_phase(clock.now()), ConsentPhase::NoConsent);
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_code_is_refused() {
    let _p = mailsync_e2e::provider_shared().await;
    // carol's `web` grants: the secrets test disconnects (revokes) them.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let env = setup("carol@example.test", Opts::default()).await;
    let first = connected(&env).await;
    let code = param(&first, "code").unwrap();
    // A fresh, valid state with the already used code.
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let state = param(&consent.url, "state").unwrap();
    let forged = with_param(&with_param(&first, "state", &state), "code", &code);
    let e = env.sync.connections().complete(&forged).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConsentFailed, "{e}");
    assert!(e.message().contains("invalid_grant"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unchecked_mail_scope_is_scope_not_granted() {
    let _p = mailsync_e2e::provider_shared().await;
    // The refused grant is given back (revoked): that reaches all of alice's `web` grants.
    let _alice = mailsync_e2e::account_lock("alice@example.test").await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let callback = walk_unchecking(
        &consent.url,
        "alice@example.test",
        "https://mail.google.com/",
    )
    .await;
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ScopeNotGranted, "{e}");
    assert!(!env.has_grant_info().await);
    assert_eq!(env.grant().await, GrantStatus::NotConnected {});
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts.iter().any(|a| a.code == "scope_not_granted"),
        "{alerts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_account_consenting_is_account_mismatch() {
    let _p = mailsync_e2e::provider_shared().await;
    // bob's refused grant is given back (revoked): that reaches all of bob's `web` grants.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = setup("alice@example.test", Opts::default()).await;
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let callback = walk(&consent.url, "bob@example.test", false).await;
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountMismatch, "{e}");
    assert!(
        e.message().contains("bob@example.test") && e.message().contains("alice@example.test"),
        "{e}"
    );
    assert!(!env.has_grant_info().await, "nothing stored");
}

/// At Google, revoking any token of a grant revokes the account's whole
/// grant for the client. So when bob consents on alice's connect page while
/// bob's own mailbox is connected on the same client, the refused grant is
/// discarded, not revoked, and bob's mailbox keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_account_with_its_own_mailbox_keeps_its_grant() {
    let _p = mailsync_e2e::provider_shared().await;
    // bob's `web` grants: other tests here revoke them.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = setup("bob@example.test", Opts::default()).await;
    connected(&env).await;
    let alice = env
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    let consent = env.sync.connections().connect(&alice.id).await.unwrap();
    let callback = walk(&consent.url, "bob@example.test", false).await;
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccountMismatch, "{e}");

    // Bob's grant is alive: a refresh succeeds and Dovecot takes the token.
    expire(&env.sync, &env.mailbox.id).await;
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    assert!(imap_accepts(&env.stack, "bob@example.test", token.token.expose()).await);
    let bob = env.grant().await;
    assert!(matches!(bob, GrantStatus::Connected { .. }), "{bob:?}");
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
    let consent = env
        .sync
        .connections()
        .connect(&env.mailbox.id)
        .await
        .unwrap();
    let callback = walk(&consent.url, "alice@example.test", false).await;
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidClient, "{e}");
    assert!(!e.message().contains("not-the-secret"));
    assert!(!env.has_grant_info().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_grant_on_refresh_needs_reconsent_and_is_not_retried() {
    let _p = mailsync_e2e::provider_exclusive().await;
    // The revocation reaches all of bob's `web` grants.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = setup("bob@example.test", Opts::default()).await;
    connected(&env).await;
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    let raw = token.token.expose().to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::revoke(&raw))
        .await
        .unwrap();
    expire(&env.sync, &env.mailbox.id).await;

    let before = refresh_requests().await;
    let e = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TokenRevoked, "{e}");
    assert!(e.message().contains("7 days"), "Testing-mode hint: {e}");
    assert_eq!(
        refresh_requests().await,
        before + 1,
        "invalid_grant is not retried"
    );
    match env.grant().await {
        GrantStatus::NeedsReconsent { code, reason, .. } => {
            assert_eq!(code, ErrorCode::TokenRevoked);
            assert!(reason.contains("7 days"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    env.events
        .wait_until("a needs_reconsent event", |all| {
            all.iter().any(|e| {
                e.kind == MailboxEventKind::NeedsReconsent
                    && e.code == Some(ErrorCode::TokenRevoked)
            })
        })
        .await;
    // Later calls fail at once, without asking the provider.
    let e = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TokenRevoked);
    assert_eq!(refresh_requests().await, before + 1);
    // Re-consent heals it.
    connected(&env).await;
    env.sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_during_refresh_is_transient_then_recovers() {
    let _p = mailsync_e2e::provider_exclusive().await;
    // carol's `web` grants: the secrets test disconnects (revokes) them.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let env = setup("carol@example.test", Opts::default()).await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    let before = refresh_requests().await;
    mailsync_e2e::inject_failure("refresh_503", 3).await;
    let e = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProviderUnavailable, "{e}");
    assert!(e.is_transient());
    assert_eq!(
        refresh_requests().await,
        before + 3,
        "3 attempts with backoff"
    );
    let grant = env.grant().await;
    assert!(
        matches!(grant, GrantStatus::Connected { .. }),
        "still connected: {grant:?}"
    );

    // 500 twice, then it works within one call's retries.
    mailsync_e2e::inject_failure("refresh_500", 2).await;
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    assert!(imap_accepts(&env.stack, "carol@example.test", token.token.expose()).await);
    assert_eq!(refresh_requests().await, before + 6);
    mailsync_e2e::inject_failure("clear", 0).await;
}

// ------------------------------------------------------------------ single flight

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn hundred_concurrent_callers_cause_one_refresh() {
    let _p = mailsync_e2e::provider_exclusive().await;
    // alice's `web` grants: other tests here revoke them.
    let _alice = mailsync_e2e::account_lock("alice@example.test").await;
    let env = setup("alice@example.test", Opts::default()).await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    mailsync_e2e::reset_stats().await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let connections = env.sync.connections();
        let id = env.mailbox.id.clone();
        tasks.push(tokio::spawn(
            async move { connections.access_token(&id).await },
        ));
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

/// Tests that count the `short` client's refreshes take turns.
static SHORT_CLIENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// With 5-second access tokens (shorter than the 5-minute refresh skew),
/// 500 concurrent callers still cause one refresh: a freshly refreshed
/// token never counts as expired.
///
/// carol on the `short` client: nothing here revokes that pair (the carol
/// revocations in this binary are on `web`), so no account lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn five_hundred_callers_with_five_second_tokens_cause_one_refresh() {
    let _p = mailsync_e2e::provider_shared().await;
    let _short = SHORT_CLIENT.lock().await;
    let env = setup(
        "carol@example.test",
        Opts {
            client: "short",
            ..Opts::default()
        },
    )
    .await;
    connected(&env).await;
    expire(&env.sync, &env.mailbox.id).await;
    let short_id = env.stack.oauth.client("short").client_id.clone();
    let before = mailsync_e2e::client_token_requests(
        &mailsync_e2e::stats().await,
        &short_id,
        "refresh_token",
    );
    let count_refreshed = |events: &[MailboxEvent]| {
        events
            .iter()
            .filter(|e| e.kind == MailboxEventKind::Refreshed)
            .count()
    };
    let refreshed_before = count_refreshed(&env.events.all());
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let connections = env.sync.connections();
        let id = env.mailbox.id.clone();
        tasks.push(tokio::spawn(
            async move { connections.access_token(&id).await },
        ));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().token.expose().to_owned());
    }
    let after = mailsync_e2e::client_token_requests(
        &mailsync_e2e::stats().await,
        &short_id,
        "refresh_token",
    );
    assert_eq!(after - before, 1, "exactly one refresh request");
    assert_eq!(tokens.len(), 1, "all 500 callers get the same token");
    env.events
        .wait_until("the refreshed event", |all| {
            count_refreshed(all) > refreshed_before
        })
        .await;
    assert_eq!(
        count_refreshed(&env.events.all()) - refreshed_before,
        1,
        "one refreshed event"
    );
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
        let mut o = Options::default();
        o.google_issuer_override = Some(std::env::var("MAILSYNC_OAUTH_CHILD_ISSUER").unwrap());
        let sync = MailSync::open(StoreConfig::sqlite(&db), o).await.unwrap();
        std::fs::write(&ready, b"ready").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !go.exists() {
            assert!(Instant::now() < deadline, "no go signal");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let token = sync.connections().access_token(&mailbox).await.unwrap();
        println!("TOKEN_SHA256={}", sha256(token.token.expose()));
        std::io::stdout().flush().unwrap();
        sync.close().await;
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_sqlite_file_refresh_once() {
    let _p = mailsync_e2e::provider_exclusive().await;
    // bob's `web` grants: other tests here revoke them.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
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
    let mine = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
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

/// The forms a secret takes in text: as is; form-encoded (token requests are form posts);
/// and base64-encoded inside a longer value, as SASL XOAUTH2 / OAUTHBEARER carry a token
/// ("user=…\x01auth=Bearer <token>\x01\x01"): for each of the three alignments, the part of
/// the encoding that depends on the secret's bytes only, in the standard and the URL-safe
/// alphabet.
fn leak_forms(secret: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut forms = vec![("as is".to_owned(), secret.to_owned())];
    let encoded = mailsync_e2e::form_encode(secret);
    if encoded != secret {
        forms.push(("form-encoded".to_owned(), encoded));
    }
    for skip in 0..3 {
        let mut bytes = vec![0u8; skip];
        bytes.extend_from_slice(secret.as_bytes());
        // Whole 3-byte groups only; the first one mixes in the padding when skip > 0.
        let whole = bytes.len() / 3 * 4;
        let first = if skip == 0 { 0 } else { 4 };
        for (alphabet, text) in [
            ("base64", STANDARD.encode(&bytes)),
            ("base64url", URL_SAFE.encode(&bytes)),
        ] {
            let core = text[first..whole].to_owned();
            assert!(core.len() >= 16, "secret too short for its {alphabet} form");
            forms.push((format!("{alphabet} at offset {skip}"), core));
        }
    }
    forms
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_debug_errors_or_the_database() {
    let _p = mailsync_e2e::provider_exclusive().await;
    // The final disconnect revokes carol's `web` grants.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let log = logs();
    let env = setup("carol@example.test", Opts::default()).await;
    let mut debug = String::new();
    let connections = env.sync.connections();
    let store = env.sync.store();

    let consent = connections.connect(&env.mailbox.id).await.unwrap();
    let state = param(&consent.url, "state").unwrap();
    // Peek at the stored verifier (and put it back).
    let pending = store
        .take_pending(&Secret::new(state.clone()))
        .await
        .unwrap()
        .unwrap();
    let current = store.get_state(&env.mailbox.id).await.unwrap().unwrap();
    let put_back = store
        .commit(&Commit {
            mailbox_id: &env.mailbox.id,
            expected_state_version: current.version,
            state: None,
            grant: GrantChange::Keep,
            pending: PendingChange::Put(&pending),
            alerts: &[],
        })
        .await
        .unwrap();
    assert!(
        matches!(put_back, CommitOutcome::Committed { .. }),
        "{put_back:?}"
    );
    let verifier = pending.pkce_verifier.expose().to_owned();
    debug.push_str(&format!("{pending:?}{consent:?}"));

    let callback = walk(&consent.url, "carol@example.test", false).await;
    let code = param(&callback, "code").unwrap();
    let status = connections.complete(&callback).await.unwrap();
    debug.push_str(&format!("{status:?}{:?}", env.sync));
    let first = connections.access_token(&env.mailbox.id).await.unwrap();
    let stored = store.get_grant(&env.mailbox.id).await.unwrap().unwrap();
    let refresh = stored.refresh_token.as_ref().unwrap().expose().to_owned();
    debug.push_str(&format!(
        "{first:?}{stored:?}{:?}",
        connections.grant_info(&env.mailbox.id).await.unwrap()
    ));
    expire(&env.sync, &env.mailbox.id).await;
    let second = connections.access_token(&env.mailbox.id).await.unwrap();
    debug.push_str(&format!("{second:?}{:?}", env.sync.options()));
    let profile_id = status.mailbox.profile_id.clone().unwrap();
    debug.push_str(&format!(
        "{:?}",
        env.sync.directory().get_profile(&profile_id).await.unwrap()
    ));

    // The token on the wire: Test & Enable authenticates over IMAP and SMTP (and sends the
    // Test Message), then over POP3, so the library's and its dependencies' logs of those
    // sessions are in the capture.
    let with_message = TestOptions {
        send_test_message: true,
    };
    let imap_smtp = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &with_message)
        .await
        .unwrap();
    assert!(imap_smtp.is_success(), "{imap_smtp:#?}");
    assert_eq!(imap_smtp.incoming.as_ref().unwrap().protocol, "IMAP");
    let mut profile = env.sync.directory().get_profile(&profile_id).await.unwrap();
    profile = profile.use_pop3().with_incoming(Endpoint::new(
        &env.stack.pop3.host,
        env.stack.pop3.tls_port,
        Security::Tls,
    ));
    env.sync.directory().update_profile(profile).await.unwrap();
    let pop3 = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(pop3.is_success(), "{pop3:#?}");
    assert_eq!(pop3.incoming.as_ref().unwrap().protocol, "POP3");
    debug.push_str(&format!("{imap_smtp:?}{pop3:?}"));
    // Test & Enable used the stored token, not a new one.
    assert_eq!(
        connections
            .access_token(&env.mailbox.id)
            .await
            .unwrap()
            .token,
        second.token
    );

    // Failure paths produce errors; their Debug and Display must be clean too.
    for e in [
        connections.complete(&callback).await.unwrap_err(),
        connections
            .complete(&with_param(&callback, "state", "x"))
            .await
            .unwrap_err(),
    ] {
        debug.push_str(&format!("{e:?} {e}"));
    }
    mailsync_e2e::inject_failure("refresh_503", 3).await;
    expire(&env.sync, &env.mailbox.id).await;
    let e = connections.access_token(&env.mailbox.id).await.unwrap_err();
    debug.push_str(&format!("{e:?} {e}"));
    mailsync_e2e::inject_failure("clear", 0).await;
    debug.push_str(&format!(
        "{:?}",
        env.sync.directory().status(&env.mailbox.id).await.unwrap()
    ));
    let events = format!("{:?}", env.events.all());
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
    assert!(
        contains(&logged, "async_imap"),
        "async-imap's `log` records were not captured: the log bridge is not working"
    );
    // Every finding, named without the secret itself.
    let mut found = Vec::new();
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} too short to grep");
        for (form, text) in leak_forms(secret) {
            if let Some(line) = String::from_utf8_lossy(&logged)
                .lines()
                .find(|l| l.contains(text.as_str()))
            {
                // The log line, with the secret cut out, as evidence.
                let line: String = line
                    .replace(text.as_str(), "<SECRET>")
                    .chars()
                    .take(300)
                    .collect();
                found.push(format!("{what} ({form}) in the logs: {line}"));
            }
            for (place, present) in [
                ("Debug/Display output", debug.contains(&text)),
                ("events", events.contains(&text)),
                ("the database file in clear", contains(&db_bytes, &text)),
            ] {
                if present {
                    found.push(format!("{what} ({form}) in {place}"));
                }
            }
        }
    }
    if contains(&db_bytes, &state) {
        found.push("state in the database file in clear".to_owned());
    }
    assert!(found.is_empty(), "secrets leaked: {found:#?}");
    connections.disconnect(&env.mailbox.id).await.unwrap();
}
