//! Revocation (RFC 7009) against the stack's oidc-provider: deleting a
//! mailbox revokes its grant first; a revocation answered 503, 429 or with
//! something that is not JSON is queued in the store and sent again by
//! `Connections::retry_revocations` once due; so is the revocation of a
//! refused grant (another account consented).
//!
//! The provider's failures come from `POST /__fail?mode=revocation_503|
//! revocation_429|revocation_html` (docs/testing.md). A provider started
//! before those modes existed is restarted once (keeping its settings).
//! The provider revokes like Google (every grant of the account on the
//! client), so these tests use the `short` client with accounts no other
//! suite consents with on it (sync13, sync14, sync15, sync19).

use std::sync::Arc;
use std::time::Duration;

use mailsync::model::{MailboxSpec, OAuthApp, PublishingStatus, ServerProfile, UserType};
use mailsync::{ErrorCode, MailSync, ManualClock, Options, StoreConfig};
use mailsync_e2e::Stack;

struct Env {
    sync: MailSync,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Env {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let mut options = Options::default();
    options.google_issuer_override = Some(stack.oauth.issuer.clone());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    let sync = MailSync::open_with_clock(
        StoreConfig::sqlite(dir.path().join("mailsync.db")),
        options,
        clock.clone(),
    )
    .await
    .unwrap();
    let client = stack.oauth.client("short").clone();
    let app = OAuthApp::google(client.client_id.clone(), client.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap()
        .with_audience(UserType::External, PublishingStatus::Production);
    sync.directory()
        .create_profile(ServerProfile::gmail("Stack Gmail", app).default_for_new_mailboxes())
        .await
        .unwrap();
    Env {
        sync,
        clock,
        _dir: dir,
    }
}

fn account(n: u32) -> String {
    format!("sync{n:02}@example.test")
}

/// Consent as `who` on `mailbox`'s connect page; returns the redirect.
async fn consent(sync: &MailSync, mailbox: &mailsync::model::MailboxId, who: &str) -> String {
    let request = sync.connections().connect(mailbox).await.unwrap();
    let password = Stack::get().account(who).password.clone();
    let who = who.to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::consent(&request.url, &who, &password, false))
        .await
        .unwrap()
}

/// A connected mailbox of `email`; returns it with its refresh token.
async fn connected(env: &Env, email: &str) -> (mailsync::model::MailboxId, String) {
    let m = env
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user(email))
        .await
        .unwrap();
    let callback = consent(&env.sync, &m.id, email).await;
    env.sync.connections().complete(&callback).await.unwrap();
    let grant = env.sync.store().get_grant(&m.id).await.unwrap().unwrap();
    let refresh = grant
        .refresh_token
        .expect("a refresh token")
        .expose()
        .to_owned();
    assert!(introspected(&refresh).await, "active after consent");
    (m.id, refresh)
}

async fn introspected(token: &str) -> bool {
    mailsync_e2e::introspect(token).await["active"] == true
}

/// Arms an injected revocation failure; restarts a provider that predates
/// the revocation modes once.
async fn arm(mode: &str, count: u32) {
    let url = format!(
        "{}/__fail?mode={mode}&count={count}",
        Stack::get().oauth.issuer
    );
    let (status, body) = mailsync_e2e::http("POST", &url, None, Some("")).await;
    if status == 400 && body.contains("unknown mode") {
        let ttl = Stack::get().oauth.access_token_ttl;
        tokio::task::spawn_blocking(move || mailsync_e2e::restart_provider(ttl))
            .await
            .unwrap();
        let (status, body) = mailsync_e2e::http("POST", &url, None, Some("")).await;
        assert_eq!(status, 200, "inject {mode}: {body}");
    } else {
        assert_eq!(status, 200, "inject {mode}: {status} {body}");
    }
}

/// Injected revocation failures not used yet (0: ours reached the provider).
async fn armed() -> u64 {
    mailsync_e2e::stats().await["failures"]["revocation"]
        .as_u64()
        .unwrap_or(0)
}

async fn revocation_requests() -> u64 {
    mailsync_e2e::stats().await["revocation_requests"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_mailbox_revokes_its_grant() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = setup().await;
    let email = account(13);
    let (id, refresh) = connected(&env, &email).await;
    env.sync.directory().delete_mailbox(&id).await.unwrap();
    assert!(!introspected(&refresh).await, "revoked before the delete");
    let gone = env.sync.directory().get_mailbox(&id).await.unwrap_err();
    assert_eq!(gone.code(), ErrorCode::NotFound);
    assert_eq!(
        env.sync.connections().pending_revocations().await.unwrap(),
        0
    );
}

/// 503, 429 and a non-JSON page: the mailbox is deleted, the revocation
/// queued; it is not sent again before it is due, a second failure
/// reschedules it, and once the provider answers it is sent and dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_transiently_failed_revocation_is_queued_and_retried() {
    let _p = mailsync_e2e::provider_exclusive().await;
    for (n, mode) in [
        (14, "revocation_503"),
        (14, "revocation_429"),
        (14, "revocation_html"),
    ] {
        let env = setup().await;
        let email = account(n);
        let (id, refresh) = connected(&env, &email).await;
        arm(mode, 1).await;
        env.sync.directory().delete_mailbox(&id).await.unwrap();
        assert_eq!(armed().await, 0, "{mode}: the injected failure was used");
        let gone = env.sync.directory().get_mailbox(&id).await.unwrap_err();
        assert_eq!(gone.code(), ErrorCode::NotFound, "{mode}");
        assert!(introspected(&refresh).await, "{mode}: not revoked yet");
        let queued = env.sync.store().list_revocations().await.unwrap();
        assert_eq!(queued.len(), 1, "{mode}");
        assert_eq!(queued[0].attempts, 1);
        assert_eq!(
            queued[0].last_error.as_deref(),
            Some("provider_unavailable"),
            "{mode}"
        );
        assert_eq!(queued[0].mailbox_id, id);

        // Not due yet: nothing is sent.
        let before = revocation_requests().await;
        assert_eq!(env.sync.connections().retry_revocations().await.unwrap(), 0);
        assert_eq!(
            revocation_requests().await,
            before,
            "{mode}: sent before due"
        );

        // Due, and failing again: rescheduled with a longer wait.
        env.clock.advance(Duration::from_secs(61));
        arm(mode, 1).await;
        assert_eq!(env.sync.connections().retry_revocations().await.unwrap(), 0);
        assert_eq!(armed().await, 0, "{mode}: the injected failure was used");
        let queued = env.sync.store().list_revocations().await.unwrap();
        assert_eq!(queued.len(), 1, "{mode}");
        assert_eq!(queued[0].attempts, 2, "{mode}");
        assert!(introspected(&refresh).await, "{mode}: still not revoked");

        // Due again, the provider answers: revoked and dropped from the queue.
        env.clock.advance(Duration::from_secs(121));
        assert_eq!(
            env.sync.connections().retry_revocations().await.unwrap(),
            1,
            "{mode}"
        );
        assert!(
            !introspected(&refresh).await,
            "{mode}: revoked by the retry"
        );
        assert_eq!(
            env.sync.connections().pending_revocations().await.unwrap(),
            0
        );
        env.sync.close().await;
    }
}

/// Another account consents on a mailbox's connect page: its grant is
/// refused and given back; when the revocation fails it is queued and sent
/// later, like a deleted mailbox's.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_grant_whose_revocation_fails_is_queued() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup().await;
    let m = env
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user(account(19)))
        .await
        .unwrap();
    let intruder = account(15);
    let callback = consent(&env.sync, &m.id, &intruder).await;
    arm("revocation_503", 1).await;
    let e = env
        .sync
        .connections()
        .complete(&callback)
        .await
        .unwrap_err();
    assert_eq!(armed().await, 0, "the injected failure was used");
    assert_eq!(e.code(), ErrorCode::AccountMismatch, "{e}");
    let queued = env.sync.store().list_revocations().await.unwrap();
    assert_eq!(queued.len(), 1, "the refused grant's revocation is queued");
    let token = queued[0].token.expose().to_owned();
    assert!(introspected(&token).await, "not revoked yet");
    env.clock.advance(Duration::from_secs(61));
    assert_eq!(env.sync.connections().retry_revocations().await.unwrap(), 1);
    assert!(!introspected(&token).await, "revoked by the retry");
    assert_eq!(
        env.sync.connections().pending_revocations().await.unwrap(),
        0
    );
}

/// A sink for engines that find no mail to deliver here.
struct NoMail;

#[async_trait::async_trait]
impl mailsync::sync::MessageSink for NoMail {
    async fn deliver(
        &self,
        messages: Vec<mailsync::sync::IncomingMessage>,
    ) -> mailsync::Result<Vec<mailsync::sync::DeliveryOutcome>> {
        Ok(vec![
            mailsync::sync::DeliveryOutcome::Stored;
            messages.len()
        ])
    }
}

/// The engine sends the queued revocations that are due itself: once per
/// `run_due`, and in the background while it runs (`start`).
#[tokio::test(flavor = "multi_thread")]
async fn the_engine_sends_queued_revocations_when_due() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let env = setup().await;
    let engine = mailsync::sync::Engine::new(
        env.sync.clone(),
        Arc::new(NoMail),
        mailsync::sync::EngineOptions::default(),
    )
    .unwrap();

    // run_due: not before the revocation is due, then at once.
    let (id, refresh) = connected(&env, &account(14)).await;
    arm("revocation_503", 1).await;
    env.sync.directory().delete_mailbox(&id).await.unwrap();
    assert_eq!(armed().await, 0, "the injected failure was used");
    assert_eq!(env.sync.store().list_revocations().await.unwrap().len(), 1);
    engine.run_due().await.unwrap();
    assert!(introspected(&refresh).await, "sent before it was due");
    env.clock.advance(Duration::from_secs(61));
    engine.run_due().await.unwrap();
    assert!(!introspected(&refresh).await, "revoked by run_due");
    assert_eq!(
        env.sync.connections().pending_revocations().await.unwrap(),
        0
    );

    // start: the running engine sends it.
    let (id, refresh) = connected(&env, &account(14)).await;
    arm("revocation_503", 1).await;
    env.sync.directory().delete_mailbox(&id).await.unwrap();
    assert_eq!(armed().await, 0, "the injected failure was used");
    env.clock.advance(Duration::from_secs(61));
    let handle = engine.start(Duration::from_millis(200));
    let sync = env.sync.clone();
    mailsync_e2e::wait_for(
        "the running engine to send the queued revocation",
        Duration::from_secs(30),
        || {
            let sync = sync.clone();
            async move { sync.connections().pending_revocations().await.unwrap() == 0 }
        },
    )
    .await;
    handle.stop().await;
    assert!(
        !introspected(&refresh).await,
        "revoked by the running engine"
    );
    env.sync.close().await;
}
