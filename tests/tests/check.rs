//! "Test and enable" against the real stack: every step reported, mailbox
//! state updated, and each failure path with its step and code.

use mailsync::checks::{Direction, TestOptions, TestReport};
use mailsync::lifecycle::{DirectionStatus, GrantStatus, TestStatus};
use mailsync::model::{
    AlertLevel, Endpoint, Mailbox, MailboxId, MailboxSpec, OAuthApp, Security, ServerProfile,
    TestOutcome,
};
use mailsync::store::Grant;
use mailsync::{ErrorCode, MailSync, Options, StoreConfig, Timestamp};
use mailsync_e2e::Stack;
use std::time::Duration;

struct Env {
    sync: MailSync,
    mailbox: Mailbox,
    _dir: tempfile::TempDir,
}

fn settings(stack: &Stack, trust_stack_ca: bool) -> Options {
    let mut s = Options::default();
    s.google_issuer_override = Some(stack.oauth.issuer.clone());
    if trust_stack_ca {
        s.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    }
    s
}

/// A Gmail-type profile pointed at the stack (IMAP TLS + SMTP STARTTLS unless
/// `shape` changes it), a mailbox for `email`, connected through the real
/// consent pages.
async fn connected(
    email: &str,
    trust_stack_ca: bool,
    shape: impl FnOnce(ServerProfile, &Stack) -> ServerProfile,
) -> Env {
    connected_on("web", email, trust_stack_ca, shape).await
}

/// [`connected`] with another of the stack's OAuth clients (`web`, `short`, `rotating`,
/// `short_rotating`).
async fn connected_on(
    client: &str,
    email: &str,
    trust_stack_ca: bool,
    shape: impl FnOnce(ServerProfile, &Stack) -> ServerProfile,
) -> Env {
    let stack = Stack::get();
    let client = stack.oauth.client(client).clone();
    let dir = tempfile::tempdir().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        settings(&stack, trust_stack_ca),
    )
    .await
    .unwrap();
    let app = OAuthApp::google(client.client_id.clone(), client.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
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
    let profile = shape(profile, &stack);
    sync.directory().create_profile(profile).await.unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user(email))
        .await
        .unwrap();
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let password = stack.account(email).password.clone();
    let (url, who) = (consent.url.clone(), email.to_owned());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &who, &password, false))
            .await
            .unwrap();
    let mailbox = sync
        .connections()
        .complete(&callback)
        .await
        .unwrap()
        .mailbox;
    Env {
        sync,
        mailbox,
        _dir: dir,
    }
}

/// The stored grant, its access token made to look expired (as an hour passing would).
async fn expire(sync: &MailSync, mailbox: &MailboxId) -> Grant {
    let mut grant = sync.store().get_grant(mailbox).await.unwrap().unwrap();
    grant.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&grant, grant.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
    grant
}

fn steps(report: &TestReport, direction: Direction) -> Vec<String> {
    let d = match direction {
        Direction::Incoming => report.incoming.as_ref(),
        Direction::Outgoing => report.outgoing.as_ref(),
    };
    d.unwrap()
        .steps
        .iter()
        .map(|s| format!("{}:{}", s.step, if s.ok { "ok" } else { "failed" }))
        .collect()
}

#[tokio::test]
async fn imap_and_smtp_mailbox_passes_and_is_enabled() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", true, |p, _| p).await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(
        steps(&report, Direction::Incoming),
        [
            "credentials:ok",
            "connect:ok",
            "tls:ok",
            "greeting:ok",
            "capabilities:ok",
            "authenticate:ok",
            "select_inbox:ok"
        ]
    );
    let outgoing = steps(&report, Direction::Outgoing);
    for step in [
        "credentials:ok",
        "connect:ok",
        "ehlo:ok",
        "tls:ok",
        "authenticate:ok",
    ] {
        assert!(outgoing.contains(&step.to_string()), "{outgoing:?}");
    }
    assert_eq!(report.incoming.as_ref().unwrap().protocol, "IMAP");

    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(matches!(
        state.incoming.last_test,
        TestStatus::Success { .. }
    ));
    assert!(matches!(
        state.outgoing.last_test,
        TestStatus::Success { .. }
    ));
    assert!(
        matches!(state.incoming.status, DirectionStatus::Enabled { .. })
            && matches!(state.outgoing.status, DirectionStatus::Enabled { .. }),
        "{state:?}"
    );
    assert!(report.incoming_enabled && report.outgoing_enabled);
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert_eq!(alerts.last().unwrap().code, "mailbox_enabled");
    let last = env
        .sync
        .checks()
        .last_profile_test(env.mailbox.profile_id.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(last.unwrap().outcome, TestOutcome::Success);
}

#[tokio::test]
async fn pop3_and_smtp_465_mailbox_passes() {
    let _provider = mailsync_e2e::provider_shared().await;
    // bob's `web` grants: revoked_grant_fails_at_credentials_with_token_revoked revokes them.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = connected("bob@example.test", true, |p, stack| {
        let mut p = p.use_pop3();
        p.incoming.endpoint = Endpoint::new(&stack.pop3.host, stack.pop3.tls_port, Security::Tls);
        p.with_outgoing(Endpoint::new(
            &stack.smtp.host,
            stack.smtp.tls_port,
            Security::Tls,
        ))
    })
    .await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(report.incoming.as_ref().unwrap().protocol, "POP3");
    assert!(steps(&report, Direction::Incoming).contains(&"stat:ok".to_string()));
}

/// The Test Message arrives in the mailbox itself. Its subject is always "Test Message" and
/// carol's INBOX keeps mail across runs, so the test looks for this run's message by its
/// unique Message-ID, which the report names as the `send` step's detail.
#[tokio::test]
async fn test_message_reaches_the_mailbox_itself() {
    let _provider = mailsync_e2e::provider_shared().await;
    // carol's `web` grants: revoked_grant_with_an_unexpired_token_is_still_token_revoked
    // revokes them.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let env = connected("carol@example.test", true, |p, _| p).await;
    let options = TestOptions {
        send_test_message: true,
    };
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &options)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert!(steps(&report, Direction::Outgoing).contains(&"send:ok".to_string()));
    let send = report
        .outgoing
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .find(|s| s.step == "send")
        .unwrap();
    let detail = send.detail.as_deref().unwrap_or_default();
    let message_id = detail
        .strip_prefix("Message-ID ")
        .unwrap_or_else(|| panic!("the send step names no Message-ID: {detail:?}"))
        .trim()
        .to_owned();
    assert!(
        message_id.starts_with('<') && message_id.ends_with('>') && message_id.len() > 20,
        "{message_id}"
    );
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    let stack = Stack::get();
    let headers = mailsync_e2e::imap_wait_for_message_id(
        &stack,
        "carol@example.test",
        token.token.expose(),
        &message_id,
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|| panic!("the test message {message_id} did not arrive in carol's INBOX"));
    assert!(headers.contains("Subject: Test Message"), "{headers}");
    assert!(headers.contains("From: carol@example.test"), "{headers}");
    assert!(headers.contains("To: carol@example.test"), "{headers}");
}

#[tokio::test]
async fn expired_access_token_is_refreshed_and_the_test_passes() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", true, |p, _| p).await;
    let old = expire(&env.sync, &env.mailbox.id)
        .await
        .access_token
        .expose()
        .to_owned();
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    let now = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    assert_ne!(
        now.token.expose(),
        old,
        "the expired token should have been refreshed"
    );
}

#[tokio::test]
async fn revoked_grant_fails_at_credentials_with_token_revoked() {
    let _provider = mailsync_e2e::provider_shared().await;
    // The revocation reaches every grant of bob on the `web` client (Google-like): the other
    // tests of this binary that use bob wait.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = connected("bob@example.test", true, |p, _| p).await;
    let grant = expire(&env.sync, &env.mailbox.id).await;
    mailsync_e2e::revoke(grant.access_token.expose());
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, TestOutcome::Failure);
    let d = report
        .incoming
        .as_ref()
        .unwrap()
        .diagnosis
        .as_ref()
        .unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str(), d.transient),
        ("credentials", "token_revoked", false)
    );
    assert!(d.next_action.contains("connect"), "{}", d.next_action);
    assert!(
        !report.incoming_enabled,
        "a permanent failure disables the direction"
    );
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(
            state.incoming.status,
            DirectionStatus::Disabled {
                code: ErrorCode::TokenRevoked,
                ..
            }
        ),
        "{state:?}"
    );
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.level == AlertLevel::Error && a.code == "token_revoked"),
        "{alerts:?}"
    );
}

#[tokio::test]
async fn server_not_listening_is_network_and_stays_retryable() {
    let _provider = mailsync_e2e::provider_shared().await;
    // carol's `web` grants: revoked_grant_with_an_unexpired_token_is_still_token_revoked
    // revokes them.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = connected("carol@example.test", true, |p, s| {
        p.with_incoming(Endpoint::new(&s.imap.host, closed, Security::Tls))
    })
    .await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str(), d.transient),
        ("connect", "network", true)
    );
    // New design: a transient failure puts the direction in Retrying (tried again later,
    // not disabled) instead of leaving it enabled, so the report says "not enabled" now.
    assert!(
        !report.incoming_enabled,
        "a retrying direction is not enabled"
    );
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(
            state.incoming.status,
            DirectionStatus::Retrying {
                failures: 1,
                code: ErrorCode::Network,
                ..
            }
        ),
        "a transient failure leaves the mailbox retryable: {state:?}"
    );
    assert!(report.outgoing.as_ref().unwrap().success);
    assert!(report.outgoing_enabled);
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.level == AlertLevel::Warning && a.code == "network"),
        "{alerts:?}"
    );
}

#[tokio::test]
async fn certificate_from_unknown_ca_is_tls() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", false, |p, _| p).await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    for direction in [&report.incoming, &report.outgoing] {
        let d = direction.as_ref().unwrap().diagnosis.clone().unwrap();
        assert_eq!((d.step.as_str(), d.code.as_str()), ("tls", "tls"), "{d:?}");
        assert!(
            d.message.contains("not trusted") || d.message.contains("certificate"),
            "{}",
            d.message
        );
    }
    assert!(!report.incoming_enabled && !report.outgoing_enabled);
}

#[tokio::test]
async fn imap_disabled_for_the_account_is_protocol_disabled() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("dave@example.test", true, |p, _| p).await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str()),
        ("authenticate", "protocol_disabled")
    );
    assert!(d.next_action.contains("Enable IMAP"), "{}", d.next_action);
    assert!(
        report.outgoing.as_ref().unwrap().success,
        "dave may still send"
    );
}

#[tokio::test]
async fn silent_server_times_out_within_the_connection_timeout() {
    let _provider = mailsync_e2e::provider_shared().await;
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // bob's `web` grants: revoked_grant_fails_at_credentials_with_token_revoked revokes them.
    let _bob = mailsync_e2e::account_lock("bob@example.test").await;
    let env = connected("bob@example.test", true, |p, s| {
        let mut p = p.with_incoming(Endpoint::new(&s.imap.host, port, Security::Tls));
        p.processing.connection_timeout_secs = 1;
        p
    })
    .await;
    let started = std::time::Instant::now();
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str(), d.transient),
        ("tls", "timeout", true)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the exchange must not hang"
    );
    hold.abort();
}

#[tokio::test]
async fn test_all_mailboxes_of_a_profile() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", true, |p, _| p).await;
    let second = env
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user("carol@example.test"))
        .await
        .unwrap();
    let profile = env.mailbox.profile_id.clone().unwrap();
    let reports = env
        .sync
        .checks()
        .test_all(&profile, &TestOptions::default())
        .await
        .unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].email, "alice@example.test");
    assert!(reports[0].is_success(), "{:#?}", reports[0]);
    // carol never connected: her check stops at credentials with not_connected.
    assert_eq!(reports[1].mailbox_id, second.id);
    let d = reports[1].first_failure().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str()),
        ("credentials", "not_connected")
    );
}

#[tokio::test]
async fn revoked_grant_with_an_unexpired_token_is_still_token_revoked() {
    let _provider = mailsync_e2e::provider_shared().await;
    // The revocation reaches every grant of carol on the `web` client (Google-like): the
    // other tests of this binary that use carol wait.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let env = connected("carol@example.test", true, |p, _| p).await;
    let grant = env
        .sync
        .store()
        .get_grant(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    // The user revokes access; the stored token still looks valid for an hour.
    mailsync_e2e::revoke(grant.access_token.expose());
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str()),
        ("credentials", "token_revoked"),
        "{d:?}"
    );
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
}

#[tokio::test]
async fn smtp_without_auth_before_starttls_is_mechanism_unsupported() {
    let _provider = mailsync_e2e::provider_shared().await;
    // Postfix offers AUTH only after STARTTLS; speaking plaintext to the
    // submission port (allowed on loopback, explicitly) finds no mechanism.
    let env = connected("alice@example.test", true, |p, s| {
        let mut p = p.with_outgoing(Endpoint::new(
            &s.smtp.host,
            s.smtp.starttls_port,
            Security::Plaintext,
        ));
        p.allow_plaintext_on_loopback = true;
        p
    })
    .await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.incoming.as_ref().unwrap().success);
    let d = report.outgoing.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str()),
        ("ehlo", "mechanism_unsupported"),
        "{d:?}"
    );
    assert!(!report.outgoing_enabled);
}

#[tokio::test]
async fn smtp_refusing_the_sender_is_send_rejected_with_password_credentials() {
    use mailsync::model::{Authentication, IncomingEndpoint, IncomingProtocol, MailboxCredentials};
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        settings(&stack, true),
    )
    .await
    .unwrap();
    // A generic IMAP/SMTP profile with per-mailbox passwords (app passwords).
    let incoming = IncomingEndpoint {
        protocol: IncomingProtocol::Imap,
        endpoint: Endpoint::new(&stack.imap.host, stack.imap.tls_port, Security::Tls),
    };
    let outgoing = Endpoint::new(
        &stack.smtp.host,
        stack.smtp.starttls_port,
        Security::StartTls,
    );
    let profile = sync
        .directory()
        .create_profile(ServerProfile::generic(
            "Passwords",
            incoming,
            outgoing,
            Authentication::CredentialsPerMailbox {},
        ))
        .await
        .unwrap();
    // alice's mailbox, but it logs in as bob: the server refuses alice as sender.
    let bob = stack.account("bob@example.test");
    let mut spec = MailboxSpec::user("alice@example.test").on_profile(profile.id.clone());
    spec.credentials = Some(MailboxCredentials {
        username: bob.email.clone(),
        password: Some(bob.password.clone().into()),
    });
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    let options = TestOptions {
        send_test_message: true,
    };
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &options)
        .await
        .unwrap();
    let incoming = report.incoming.as_ref().unwrap();
    assert!(incoming.success, "{incoming:?}");
    assert!(
        incoming
            .steps
            .iter()
            .any(|s| s.step == "authenticate" && s.detail.as_deref() == Some("PLAIN")),
        "{incoming:?}"
    );
    let d = report.outgoing.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str(), d.transient),
        ("send", "send_rejected", false),
        "{d:?}"
    );
    assert!(
        d.message.contains("553") || d.message.contains("5.7.1"),
        "the server's reply code is kept: {}",
        d.message
    );
    // The password is sealed and never shown.
    assert!(!format!("{report:?}").contains(&bob.password));
    let stored = sync.directory().get_mailbox(&mailbox.id).await.unwrap();
    assert!(
        !serde_json::to_string(&stored)
            .unwrap()
            .contains(&bob.password)
    );
}

/// A hung provider costs Test & Enable one credentials attempt, shared by
/// both directions, not one per direction.
///
/// The grant is bound to the issuer and token endpoint it came from, so the
/// hang is now the stack provider's own (`refresh_hang`: the request is held
/// and never answered) rather than another issuer pointed at a silent port,
/// which the library would refuse with `grant_mismatch` without asking anyone.
/// The hang is armed for the `short_rotating` client only, which no other test
/// of this binary (nor the other suites but smoke) uses, so no one else's
/// refresh is held.
#[tokio::test]
async fn a_hung_provider_is_asked_once_per_test_run() {
    // The failure is armed on the shared provider: no other test of this binary runs.
    let _provider = mailsync_e2e::provider_exclusive().await;
    let client = "short_rotating";
    let env = connected_on(client, "carol@example.test", true, |p, _| p).await;
    // Make the stored access token stale, so a refresh is due.
    let mut grant = env
        .sync
        .store()
        .get_grant(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    let now = Timestamp::now_utc();
    grant.obtained_at = now.minus(Duration::from_secs(2 * 3600));
    grant.expires_at = Some(now.minus(Duration::from_secs(3600)));
    env.sync
        .store()
        .put_grant(&grant, grant.version, None)
        .await
        .unwrap()
        .expect("grant CAS");

    let stack = Stack::get();
    let client_id = stack.oauth.client(client).client_id.clone();
    let before = mailsync_e2e::stats().await;
    // The provider holds the next refresh of the client and never answers it; a second
    // refresh would reach the provider (and be counted there).
    mailsync_e2e::inject_failure_for(
        mailsync_e2e::OAuthServer::Google,
        "refresh_hang",
        1,
        Some(client),
        &[],
    )
    .await;
    let mut hung = settings(&stack, true);
    hung.http_timeout_secs = 1;
    hung.refresh_retry.attempts = 1;
    let sync = MailSync::with_store(env.sync.store().clone(), hung).unwrap();
    let report = sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await;
    let after = mailsync_e2e::stats().await;
    // Disarmed before any assertion can fail.
    mailsync_e2e::release_held_refreshes().await;
    let report = report.unwrap();
    for direction in [report.incoming.as_ref(), report.outgoing.as_ref()] {
        let d = direction.unwrap().diagnosis.clone().unwrap();
        assert_eq!(
            (d.step.as_str(), d.code.as_str()),
            ("credentials", "provider_unavailable"),
            "{d:?}"
        );
    }
    assert_eq!(
        mailsync_e2e::stat(&after, "held_refresh_requests")
            - mailsync_e2e::stat(&before, "held_refresh_requests"),
        1,
        "one request to the provider for the whole run: {after}"
    );
    assert_eq!(
        mailsync_e2e::client_token_requests(&after, &client_id, "refresh_token")
            - mailsync_e2e::client_token_requests(&before, &client_id, "refresh_token"),
        0,
        "no second refresh reached the provider: {}",
        after["token_requests_by_client"]
    );
}

/// TLS to a port that speaks plaintext says the port or security setting is
/// wrong, instead of blaming certificates.
#[tokio::test]
async fn tls_to_a_plaintext_port_names_the_port_setting() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("dave@example.test", true, |p, s| {
        p.with_incoming(Endpoint::new(
            &s.imap.host,
            s.imap.plain_port,
            Security::Tls,
        ))
        .with_outgoing(Endpoint::new(
            &s.smtp.host,
            s.smtp.starttls_port,
            Security::Tls,
        ))
    })
    .await;
    let report = env
        .sync
        .checks()
        .test_and_enable(&env.mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    for (direction, greeting) in [
        (report.incoming.as_ref(), "an IMAP greeting"),
        (report.outgoing.as_ref(), "an SMTP greeting"),
    ] {
        let d = direction.unwrap().diagnosis.clone().unwrap();
        assert_eq!(
            (d.step.as_str(), d.code.as_str()),
            ("tls", "protocol_error")
        );
        assert!(d.message.contains(greeting), "{}", d.message);
        assert!(d.message.contains("port"), "{}", d.message);
    }
}
