//! Grants are bound to the issuer and client that granted them: when the
//! mailbox's profile names another issuer or client (the mailbox moved, the
//! profile was edited, the issuer override changed), the library sends
//! nothing anywhere and the mailbox needs re-consent with `grant_mismatch`.
//! A Gmail OAuth profile sends Google tokens only to Google's mail hosts
//! unless the issuer override (a test setting) is on: `host_not_allowed`.
//!
//! Two real authorization servers run in the stack: the Google-like provider
//! and the generic one ("provider2"); their `/__stats` counters show that no
//! request reached either token endpoint.

use std::path::Path;
use std::time::Duration;

use mailsync::lifecycle::GrantStatus;
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingProtocol, Mailbox, MailboxSpec, OAuthApp,
    Security, ServerProfile,
};
use mailsync::{ErrorCode, MailSync, Options, StoreConfig, Timestamp};
use mailsync_e2e::{OAuthServer, Stack};

fn options(override_issuer: Option<&str>) -> Options {
    let mut o = Options::default();
    o.google_issuer_override = override_issuer.map(str::to_owned);
    o.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    o
}

/// The Gmail OAuth profile on the Google-like provider's `web` client, with
/// the stack's mail servers (allowed only while the override is on).
fn gmail_profile(stack: &Stack, name: &str) -> ServerProfile {
    let app = OAuthApp::google(
        stack.oauth.client_id.clone(),
        stack.oauth.client_secret.clone(),
    )
    .for_environment("http://localhost:8765")
    .unwrap();
    ServerProfile::gmail(name, app)
        .with_incoming(Endpoint::new(
            &stack.imap.host,
            stack.imap.tls_port,
            Security::Tls,
        ))
        .with_outgoing(Endpoint::new(
            &stack.smtp.host,
            stack.smtp.starttls_port,
            Security::StartTls,
        ))
}

/// An OAuth-provider profile on the generic provider.
fn generic_profile(stack: &Stack, name: &str) -> ServerProfile {
    let g = &stack.oauth2_generic;
    let app = OAuthApp::web(g.client_id.clone(), g.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
    ServerProfile::generic(
        name,
        IncomingEndpoint {
            protocol: IncomingProtocol::Imap,
            endpoint: Endpoint::new(&stack.imap.host, stack.imap.tls_port, Security::Tls),
        },
        Endpoint::new(
            &stack.smtp.host,
            stack.smtp.starttls_port,
            Security::StartTls,
        ),
        Authentication::OAuthProvider {
            issuer: g.issuer.clone(),
            app,
            mail_scopes: vec![g.mail_scope.clone()],
        },
    )
}

async fn open(db: &Path, override_issuer: Option<&str>) -> MailSync {
    MailSync::open(StoreConfig::sqlite(db), options(override_issuer))
        .await
        .unwrap()
}

/// connect → consent pages → complete.
async fn connect(sync: &MailSync, mailbox: &Mailbox) {
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let stack = Stack::get();
    let password = stack.account(&mailbox.email).password.clone();
    let (url, email) = (consent.url.clone(), mailbox.email.clone());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &email, &password, false))
            .await
            .unwrap();
    let status = sync.connections().complete(&callback).await.unwrap();
    assert!(
        matches!(status.state.grant, GrantStatus::Connected { .. }),
        "{:?}",
        status.state.grant
    );
}

/// Makes the stored access token look expired, so the next token request
/// would refresh it.
async fn expire(sync: &MailSync, mailbox: &Mailbox) {
    let mut g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    g.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&g, g.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
}

/// Every request either provider's token and revocation endpoints have seen.
async fn provider_requests() -> u64 {
    let mut total = 0;
    for server in [OAuthServer::Google, OAuthServer::Generic] {
        let s = mailsync_e2e::stats_of(server).await;
        for (_, n) in s["token_requests"].as_object().unwrap() {
            total += n.as_u64().unwrap_or(0);
        }
        total += mailsync_e2e::stat(&s, "revocation_requests");
        total += mailsync_e2e::stat(&s, "held_refresh_requests");
    }
    total
}

/// The token request fails with `code`, nothing reaches either provider, and
/// (for `grant_mismatch`) the mailbox needs re-consent and its grant is gone.
async fn assert_refused_without_a_request(sync: &MailSync, mailbox: &Mailbox, code: ErrorCode) {
    let before = provider_requests().await;
    let err = sync
        .connections()
        .access_token(&mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    // Again: still refused, still nothing sent.
    let err = sync
        .connections()
        .access_token(&mailbox.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    assert_eq!(
        provider_requests().await,
        before,
        "no request reached either provider"
    );
    let state = sync.directory().state(&mailbox.id).await.unwrap();
    if code == ErrorCode::GrantMismatch {
        assert!(
            matches!(
                &state.grant,
                GrantStatus::NeedsReconsent {
                    code: ErrorCode::GrantMismatch,
                    ..
                }
            ),
            "{:?}",
            state.grant
        );
        assert!(
            sync.connections()
                .grant_info(&mailbox.id)
                .await
                .unwrap()
                .is_none(),
            "the mismatched grant is deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_a_mailbox_to_another_issuer_sends_nothing_and_needs_reconsent() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let _a = mailsync_e2e::account_lock("carol@example.test").await;
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let sync = open(&db, Some(&stack.oauth.issuer)).await;
    let google = sync
        .directory()
        .create_profile(gmail_profile(&stack, "Google-like").default_for_new_mailboxes())
        .await
        .unwrap();
    let generic = sync
        .directory()
        .create_profile(generic_profile(&stack, "Generic"))
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("carol@example.test"))
        .await
        .unwrap();
    assert_eq!(mailbox.profile_id, Some(google.id.clone()));
    connect(&sync, &mailbox).await;

    // The access token is still fresh: it must not be handed out for the
    // other issuer's mail servers either.
    sync.directory()
        .move_mailbox(&mailbox.id, &generic.id)
        .await
        .unwrap();
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::GrantMismatch).await;

    // Consent at the new issuer repairs it.
    connect(&sync, &mailbox).await;
    let info = sync
        .connections()
        .grant_info(&mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        info.issuer,
        stack.oauth2_generic.issuer.trim_end_matches('/')
    );
    sync.connections().access_token(&mailbox.id).await.unwrap();
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_the_profiles_issuer_or_client_sends_nothing_and_needs_reconsent() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let _a = mailsync_e2e::account_lock("dave@example.test").await;
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let sync = open(&dir.path().join("m.db"), None).await;
    let profile = sync
        .directory()
        .create_profile(generic_profile(&stack, "Generic").default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("dave@example.test"))
        .await
        .unwrap();

    // The issuer changes (the client id stays): the refresh token and the
    // client secret must not go to the new issuer.
    connect(&sync, &mailbox).await;
    expire(&sync, &mailbox).await;
    let mut edited = profile.clone();
    if let Authentication::OAuthProvider { issuer, .. } = &mut edited.authentication {
        *issuer = stack.oauth.issuer.clone();
    }
    let edited = sync.directory().update_profile(edited).await.unwrap();
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::GrantMismatch).await;

    // Back to the generic issuer, reconnect; now the client changes.
    let mut back = edited.clone();
    if let Authentication::OAuthProvider { issuer, .. } = &mut back.authentication {
        *issuer = stack.oauth2_generic.issuer.clone();
    }
    let back = sync.directory().update_profile(back).await.unwrap();
    connect(&sync, &mailbox).await;
    expire(&sync, &mailbox).await;
    let mut other_client = back.clone();
    if let Authentication::OAuthProvider { app, .. } = &mut other_client.authentication {
        app.client_id = "another-client".into();
    }
    sync.directory().update_profile(other_client).await.unwrap();
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::GrantMismatch).await;
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_issuer_override_sends_nothing_and_needs_reconsent() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let _a = mailsync_e2e::account_lock("alice@example.test").await;
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let sync = open(&db, Some(&stack.oauth.issuer)).await;
    sync.directory()
        .create_profile(gmail_profile(&stack, "Google-like").default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    connect(&sync, &mailbox).await;
    expire(&sync, &mailbox).await;
    sync.close().await;

    // The same store, now with the override pointing at the other provider.
    let sync = open(&db, Some(&stack.oauth2_generic.issuer)).await;
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::GrantMismatch).await;
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gmail_profile_with_a_non_google_host_gets_no_token_without_the_override() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let _a = mailsync_e2e::account_lock("bob@example.test").await;
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");

    // Without the override, such a profile is refused when it is saved.
    let sync = open(&db, None).await;
    let err = sync
        .directory()
        .create_profile(gmail_profile(&stack, "Pointed elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::HostNotAllowed, "{err}");
    assert_eq!(err.field(), Some("incoming.host"));
    sync.close().await;

    // One saved while the override was on, connected, then used without it.
    let sync = open(&db, Some(&stack.oauth.issuer)).await;
    sync.directory()
        .create_profile(gmail_profile(&stack, "Pointed elsewhere").default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("bob@example.test"))
        .await
        .unwrap();
    connect(&sync, &mailbox).await;
    // Make the grant look like Google's own (the issuer Gmail OAuth uses
    // without the override); it is still refreshed at the stack's token
    // endpoint, so a wrongly sent request would show in the stats.
    let mut g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    g.issuer = "https://accounts.google.com".into();
    g.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&g, g.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
    sync.close().await;

    let sync = open(&db, None).await;
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::HostNotAllowed).await;
    // A fresh token is not handed out for those hosts either.
    let mut g = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    g.expires_at = Some(Timestamp::now_utc().plus(Duration::from_secs(3600)));
    sync.store()
        .put_grant(&g, g.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
    assert_refused_without_a_request(&sync, &mailbox, ErrorCode::HostNotAllowed).await;
    sync.close().await;
}
