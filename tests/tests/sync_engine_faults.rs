//! The sync engine when things go wrong, against the real stack:
//!
//! - an access token that expires mid-sync is transparent (the stack's
//!   `short` client issues 5-second tokens; the IMAP session is kicked after
//!   each expiry, so the engine must log in again with a fresh token);
//! - a grant revoked mid-sync ends in needs-re-consent (`token_revoked`)
//!   with the cursor where the last acknowledged batch left it, one refresh
//!   in the cycle and none after;
//! - the failure policy with a `ManualClock`: a closed port is retried
//!   (`Retrying` 1..3, nothing happens before the backoff passed), then the
//!   direction is disabled with an alert; a permanent failure disables at
//!   once; a provider that is down counts as transient.

mod engine_support;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::{Collect, Setup, deliver, enabled, unique};
use mailsync::lifecycle::{DirectionStatus, FailurePolicy, GrantStatus};
use mailsync::model::{AlertLevel, Endpoint, MailboxId, Security};
use mailsync::{Clock as _, Engine, EngineOptions, ErrorCode, MailSync, ManualClock, Timestamp};
use mailsync_e2e::OAuthServer;

type Hook =
    Arc<dyn Fn(usize) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn stored_token_hash(sync: &MailSync, mailbox: &MailboxId) -> String {
    let g = sync.store().get_grant(mailbox).await.unwrap().unwrap();
    sha256(g.access_token.expose().as_bytes())
}

/// Ends `email`'s IMAP sessions (`doveadm kick`) and waits until Dovecot
/// lists none.
async fn kick(email: &str) {
    let email = email.to_owned();
    tokio::task::spawn_blocking({
        let email = email.clone();
        move || mailsync_e2e::doveadm(&["kick", &email])
    })
    .await
    .unwrap();
    mailsync_e2e::wait_for(
        "the kicked IMAP session to end",
        Duration::from_secs(15),
        || {
            let email = email.clone();
            async move {
                tokio::task::spawn_blocking(move || mailsync_e2e::imap_connections(&email))
                    .await
                    .unwrap()
                    == 0
            }
        },
    )
    .await;
}

/// Waits until the mailbox's stored access token has expired.
async fn until_token_expired(sync: &MailSync, mailbox: &MailboxId) {
    let (sync, mailbox) = (sync.clone(), mailbox.clone());
    mailsync_e2e::wait_for(
        "the 5-second access token to expire",
        Duration::from_secs(20),
        || {
            let (sync, mailbox) = (sync.clone(), mailbox.clone());
            async move {
                let g = sync.store().get_grant(&mailbox).await.unwrap().unwrap();
                g.expires_at
                    .is_some_and(|at| at.unix_millis() < Timestamp::now_utc().unix_millis())
            }
        },
    )
    .await;
}

async fn refreshes(client: &str) -> u64 {
    let id = mailsync_e2e::Stack::get()
        .oauth
        .client(client)
        .client_id
        .clone();
    let stats = mailsync_e2e::stats_of(OAuthServer::Google).await;
    mailsync_e2e::client_token_requests(&stats, &id, "refresh_token")
}

// ------------------------------------------------------------------ 3a. a token expiring mid-sync

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_mid_sync_is_transparent() {
    let email = "sync03@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            client: "short",
            ..Setup::default()
        },
    )
    .await;
    assert_eq!(env.stack.oauth.client("short").access_token_ttl, 5);
    let prefix = unique("expiry");
    deliver(email, 30, &prefix).await;

    // On batches 1 and 4 the sink waits until the token has expired, then
    // the server ends the session: the engine logs in again, which needs a
    // fresh token. The cycle spans two token lifetimes.
    let sink = Arc::new(Collect::default());
    let hashes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook: Hook = {
        let (sync, id, hashes) = (env.sync.clone(), env.mailbox.id.clone(), hashes.clone());
        Arc::new(move |batch| {
            let (sync, id, hashes) = (sync.clone(), id.clone(), hashes.clone());
            Box::pin(async move {
                if batch == 1 || batch == 4 {
                    until_token_expired(&sync, &id).await;
                    let hash = stored_token_hash(&sync, &id).await;
                    hashes.lock().unwrap().push(hash);
                    kick("sync03@example.test").await;
                }
            })
        })
    };
    *sink.hook.lock().unwrap() = Some(hook);
    let mut options = EngineOptions::default();
    options.batch_messages = 5;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let before = refreshes("short").await;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(
        report.duration_ms > 5000,
        "the cycle outlived a token: {report:?}"
    );
    let ours = sink.ours(&prefix);
    assert_eq!(ours.len(), 30, "{ours:?}");
    assert!(ours.values().all(|n| *n == 1), "{ours:?}");
    let hashes = hashes.lock().unwrap().clone();
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1], "a fresh token after the first expiry");
    assert_ne!(
        stored_token_hash(&env.sync, &env.mailbox.id).await,
        hashes[1],
        "a fresh token after the second expiry"
    );
    assert!(refreshes("short").await >= before + 2);

    // The next cycle, after the token expired again.
    until_token_expired(&env.sync, &env.mailbox.id).await;
    *sink.hook.lock().unwrap() = None;
    let later = format!("{prefix} later");
    deliver(email, 3, &later).await;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&later).len(), 3);
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(state.grant, GrantStatus::Connected { .. }),
        "{:?}",
        state.grant
    );
}

// ------------------------------------------------------------------ 3b. a grant revoked mid-sync

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_revoked_mid_sync_needs_reconsent_without_a_retry_loop() {
    // The `rotating` client: no other test of this binary refreshes with it,
    // so the provider's count of its refreshes is this test's.
    let client = "rotating";
    let email = "sync04@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            client,
            ..Setup::default()
        },
    )
    .await;
    let prefix = unique("revoked");
    deliver(email, 20, &prefix).await;

    // On the first batch the owner revokes the grant, and the server ends
    // the session: the engine must log in again.
    let sink = Arc::new(Collect::default());
    let hook: Hook = {
        let (sync, id) = (env.sync.clone(), env.mailbox.id.clone());
        Arc::new(move |batch| {
            let (sync, id) = (sync.clone(), id.clone());
            Box::pin(async move {
                if batch == 1 {
                    let token = sync.connections().access_token(&id).await.unwrap();
                    let token = token.token.expose().to_owned();
                    tokio::task::spawn_blocking(move || {
                        mailsync_e2e::revoke_with(&token, OAuthServer::Google, "rotating")
                    })
                    .await
                    .unwrap();
                    kick("sync04@example.test").await;
                }
            })
        })
    };
    *sink.hook.lock().unwrap() = Some(hook);
    let mut options = EngineOptions::default();
    options.batch_messages = 5;
    let engine = Engine::new(env.sync.clone(), sink.clone(), options).unwrap();
    let before = refreshes(client).await;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(
        report.error_code,
        Some(ErrorCode::TokenRevoked),
        "{report:?}"
    );
    let after = refreshes(client).await;
    assert_eq!(after - before, 1, "one refresh in the cycle, refused");
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(
            state.grant,
            GrantStatus::NeedsReconsent {
                code: ErrorCode::TokenRevoked,
                ..
            }
        ),
        "{:?}",
        state.grant
    );

    // The cursor is where the last acknowledged batch left it.
    let stored = sink.stored.lock().unwrap().clone();
    assert!(
        (5..20).contains(&sink.ours(&prefix).len()),
        "the first batch was acknowledged, the cycle stopped: {:?}",
        sink.ours(&prefix)
    );
    let cursor = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor.delivered as usize, stored.len(), "{cursor:?}");
    assert_eq!(
        cursor.imap.unwrap().last_uid,
        stored.iter().filter_map(|m| m.uid).max().unwrap(),
        "{cursor:?}"
    );

    // No retry loop: not scheduled, and further cycles fail at once
    // without asking the provider.
    let status = engine.status().await.unwrap();
    let mine = status
        .iter()
        .find(|s| s.mailbox_id == env.mailbox.id)
        .unwrap();
    assert_eq!(mine.next_due, None, "{mine:?}");
    assert!(engine.run_due().await.unwrap().is_empty());
    for _ in 0..3 {
        let e = engine.run_once(&env.mailbox.id).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::TokenRevoked, "{e}");
    }
    assert_eq!(refreshes(client).await, after, "no refresh after");
    let unchanged = env
        .sync
        .store()
        .get_cursor(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged, cursor);
}

// ------------------------------------------------------------------ 4. failure policy

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn point_incoming_at(env: &engine_support::Env, endpoint: Endpoint) {
    let mut profile = env
        .sync
        .directory()
        .get_profile(&env.profile.id)
        .await
        .unwrap();
    profile.incoming.endpoint = endpoint;
    env.sync.directory().update_profile(profile).await.unwrap();
}

async fn incoming(env: &engine_support::Env) -> DirectionStatus {
    env.sync
        .directory()
        .state(&env.mailbox.id)
        .await
        .unwrap()
        .incoming
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_then_the_direction_is_disabled() {
    let email = "sync05@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let clock = Arc::new(ManualClock::starting_now());
    let env = enabled(
        email,
        Setup {
            clock: Some(clock.clone()),
            failure_policy: Some(FailurePolicy {
                max_retries: 3,
                interval_secs: 60,
            }),
            connection_timeout_secs: 3,
            ..Setup::default()
        },
    )
    .await;
    point_incoming_at(
        &env,
        Endpoint::new("127.0.0.1", closed_port(), Security::Tls),
    )
    .await;
    let sink = Arc::new(Collect::default());
    let engine = Engine::new(env.sync.clone(), sink, EngineOptions::default()).unwrap();

    for failure in 1..=3u32 {
        let reports = engine.run_due().await.unwrap();
        assert_eq!(reports.len(), 1, "due: {reports:?}");
        assert_eq!(
            reports[0].error_code,
            Some(ErrorCode::Network),
            "{reports:?}"
        );
        let next = match incoming(&env).await {
            DirectionStatus::Retrying {
                failures,
                code,
                next_attempt,
                ..
            } => {
                assert_eq!(failures, failure);
                assert_eq!(code, ErrorCode::Network);
                assert_eq!(
                    next_attempt.unix_millis(),
                    clock.now().plus(Duration::from_secs(60)).unix_millis()
                );
                next_attempt
            }
            other => panic!("after failure {failure}: {other:?}"),
        };
        // Nothing happens before the backoff has passed.
        assert!(engine.run_due().await.unwrap().is_empty());
        clock.advance(Duration::from_secs(59));
        assert!(engine.run_due().await.unwrap().is_empty());
        clock.set(next);
    }
    // Retries spent: disabled, with an alert.
    let reports = engine.run_due().await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    match incoming(&env).await {
        DirectionStatus::Disabled { code, .. } => assert_eq!(code, ErrorCode::Network),
        other => panic!("{other:?}"),
    }
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.level == AlertLevel::Error && a.code == ErrorCode::Network.as_str()),
        "{alerts:#?}"
    );
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.level == AlertLevel::Warning && a.code == ErrorCode::Network.as_str())
            .count(),
        3,
        "one warning per retry: {alerts:#?}"
    );
    clock.advance(Duration::from_secs(3600));
    assert!(engine.run_due().await.unwrap().is_empty());
    let e = engine.run_once(&env.mailbox.id).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotEnabled, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_disables_at_once() {
    let email = "sync06@example.test";
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            failure_policy: Some(FailurePolicy {
                max_retries: 3,
                interval_secs: 60,
            }),
            connection_timeout_secs: 3,
            ..Setup::default()
        },
    )
    .await;
    // TLS spoken to Dovecot's plaintext port.
    let plain = env.stack.imap.plain_port;
    point_incoming_at(&env, Endpoint::new("127.0.0.1", plain, Security::Tls)).await;
    let sink = Arc::new(Collect::default());
    let engine = Engine::new(env.sync.clone(), sink, EngineOptions::default()).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    let code = report.error_code.expect("the cycle failed");
    assert!(
        matches!(code, ErrorCode::ProtocolError | ErrorCode::Tls),
        "{report:?}"
    );
    assert!(!code.is_transient());
    match incoming(&env).await {
        DirectionStatus::Disabled { code: c, .. } => assert_eq!(c, code),
        other => panic!("disabled at once: {other:?}"),
    }
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.level == AlertLevel::Error && a.code == code.as_str()),
        "{alerts:#?}"
    );
    assert!(engine.run_due().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_is_down_is_a_transient_failure() {
    let email = "sync12@example.test";
    let _p = mailsync_e2e::provider_exclusive().await;
    let _a = mailsync_e2e::account_lock(email).await;
    let env = enabled(
        email,
        Setup {
            failure_policy: Some(FailurePolicy {
                max_retries: 3,
                interval_secs: 60,
            }),
            ..Setup::default()
        },
    )
    .await;
    let prefix = unique("down");
    deliver(email, 2, &prefix).await;
    let mut g = env
        .sync
        .store()
        .get_grant(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    g.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    env.sync
        .store()
        .put_grant(&g, g.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
    let sink = Arc::new(Collect::default());
    let engine = Engine::new(env.sync.clone(), sink.clone(), EngineOptions::default()).unwrap();
    // Every refresh attempt of the cycle (Setup: 2) gets a 503.
    mailsync_e2e::inject_failure("refresh_503", 2).await;
    let started = Instant::now();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    mailsync_e2e::inject_failure("clear", 0).await;
    eprintln!("failed after {:?}", started.elapsed());
    assert_eq!(
        report.error_code,
        Some(ErrorCode::ProviderUnavailable),
        "{report:?}"
    );
    match incoming(&env).await {
        DirectionStatus::Retrying { failures, code, .. } => {
            assert_eq!((failures, code), (1, ErrorCode::ProviderUnavailable));
        }
        other => panic!("{other:?}"),
    }
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(state.grant, GrantStatus::Connected { .. }),
        "the grant is fine: {:?}",
        state.grant
    );
    assert!(sink.ours(&prefix).is_empty());

    // The provider is back: the next cycle syncs and the direction is enabled.
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&prefix).len(), 2);
    assert!(
        matches!(incoming(&env).await, DirectionStatus::Enabled { .. }),
        "{:?}",
        incoming(&env).await
    );
}
