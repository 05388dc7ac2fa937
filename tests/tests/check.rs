//! "Test and enable" against the real stack: every step reported, mailbox
//! state updated, and each failure path with its step and code.

use mailsync::MailSync;
use mailsync::check::{Direction, TestOptions, TestReport};
use mailsync::model::{
    AlertLevel, Endpoint, Mailbox, MailboxSpec, OAuthApp, Security, ServerProfile, TestOutcome,
    TestStatus,
};
use mailsync::oauth::Settings;
use mailsync_e2e::Stack;
use std::time::Duration;

struct Env {
    sync: MailSync,
    mailbox: Mailbox,
    _dir: tempfile::TempDir,
}

fn settings(stack: &Stack, trust_stack_ca: bool) -> Settings {
    let mut s = Settings::default();
    s.google_issuer_override = Some(stack.oauth.issuer.parse().unwrap());
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
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let sync =
        MailSync::open_sqlite_with(dir.path().join("m.db"), settings(&stack, trust_stack_ca))
            .await
            .unwrap();
    let app = OAuthApp::google(
        stack.oauth.client_id.clone(),
        stack.oauth.client_secret.clone(),
    )
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
    sync.create_profile(profile).await.unwrap();
    let mailbox = sync.create_mailbox(MailboxSpec::user(email)).await.unwrap();
    let consent = sync.connect(&mailbox.id).await.unwrap();
    let password = stack.account(email).password.clone();
    let (url, who) = (consent.url.to_string(), email.to_owned());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &who, &password, false))
            .await
            .unwrap();
    let mailbox = sync.complete_connect(&callback).await.unwrap();
    Env {
        sync,
        mailbox,
        _dir: dir,
    }
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
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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

    let mailbox = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(matches!(mailbox.incoming_test, TestStatus::Success { .. }));
    assert!(matches!(mailbox.outgoing_test, TestStatus::Success { .. }));
    assert!(mailbox.incoming_enabled && mailbox.outgoing_enabled);
    assert_eq!(mailbox.alerts.last().unwrap().code, "mailbox_enabled");
    let profile = env
        .sync
        .get_profile(mailbox.profile_id.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(profile.last_test.unwrap().outcome, TestOutcome::Success);
}

#[tokio::test]
async fn pop3_and_smtp_465_mailbox_passes() {
    let _provider = mailsync_e2e::provider_shared().await;
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
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert_eq!(report.incoming.as_ref().unwrap().protocol, "POP3");
    assert!(steps(&report, Direction::Incoming).contains(&"stat:ok".to_string()));
}

#[tokio::test]
async fn test_message_reaches_the_mailbox_itself() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("carol@example.test", true, |p, _| p).await;
    let options = TestOptions {
        send_test_message: true,
    };
    let report = env
        .sync
        .test_and_enable_with(&env.mailbox.id, &options)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert!(steps(&report, Direction::Outgoing).contains(&"send:ok".to_string()));
    let token = env.sync.access_token(&env.mailbox.id).await.unwrap();
    let stack = Stack::get();
    let found = mailsync_e2e::imap_search_subject(
        &stack,
        "carol@example.test",
        token.token.expose(),
        "Test Message",
    )
    .await;
    assert!(found, "the test message did not arrive in carol's INBOX");
}

#[tokio::test]
async fn expired_access_token_is_refreshed_and_the_test_passes() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", true, |p, _| p).await;
    let mut tokens = env
        .sync
        .store()
        .get_tokens(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    let old = tokens.access_token.expose().to_owned();
    tokens.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    env.sync
        .store()
        .put_tokens(&tokens, Some(tokens.version))
        .await
        .unwrap();
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:#?}");
    let now = env.sync.access_token(&env.mailbox.id).await.unwrap();
    assert_ne!(
        now.token.expose(),
        old,
        "the expired token should have been refreshed"
    );
}

#[tokio::test]
async fn revoked_grant_fails_at_credentials_with_token_revoked() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("bob@example.test", true, |p, _| p).await;
    let mut tokens = env
        .sync
        .store()
        .get_tokens(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    mailsync_e2e::revoke(tokens.access_token.expose());
    tokens.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    env.sync
        .store()
        .put_tokens(&tokens, Some(tokens.version))
        .await
        .unwrap();
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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
    let mailbox = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(
        mailbox
            .alerts
            .iter()
            .any(|a| a.level == AlertLevel::Error && a.code == "token_revoked")
    );
}

#[tokio::test]
async fn server_not_listening_is_network_and_stays_retryable() {
    let _provider = mailsync_e2e::provider_shared().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = connected("carol@example.test", true, |p, s| {
        p.with_incoming(Endpoint::new(&s.imap.host, closed, Security::Tls))
    })
    .await;
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str(), d.transient),
        ("connect", "network", true)
    );
    assert!(
        report.incoming_enabled,
        "a transient failure leaves the mailbox retryable"
    );
    assert!(report.outgoing.as_ref().unwrap().success);
    let mailbox = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(
        mailbox
            .alerts
            .iter()
            .any(|a| a.level == AlertLevel::Warning && a.code == "network")
    );
}

#[tokio::test]
async fn certificate_from_unknown_ca_is_tls() {
    let _provider = mailsync_e2e::provider_shared().await;
    let env = connected("alice@example.test", false, |p, _| p).await;
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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
    let env = connected("bob@example.test", true, |p, s| {
        let mut p = p.with_incoming(Endpoint::new(&s.imap.host, port, Security::Tls));
        p.processing.connection_timeout_secs = 1;
        p
    })
    .await;
    let started = std::time::Instant::now();
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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
        .create_mailbox(MailboxSpec::user("carol@example.test"))
        .await
        .unwrap();
    let profile = env.mailbox.profile_id.clone().unwrap();
    let reports = env
        .sync
        .test_all_mailboxes(&profile, &TestOptions::default())
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
    let env = connected("carol@example.test", true, |p, _| p).await;
    let tokens = env
        .sync
        .store()
        .get_tokens(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    // The user revokes access; the stored token still looks valid for an hour.
    mailsync_e2e::revoke(tokens.access_token.expose());
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
    let d = report.incoming.as_ref().unwrap().diagnosis.clone().unwrap();
    assert_eq!(
        (d.step.as_str(), d.code.as_str()),
        ("credentials", "token_revoked"),
        "{d:?}"
    );
    let mailbox = env.sync.get_mailbox(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(
            mailbox.connection,
            mailsync::model::ConnectionState::NeedsReconsent { .. }
        ),
        "{:?}",
        mailbox.connection
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
    let report = env.sync.test_and_enable(&env.mailbox.id).await.unwrap();
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
    let sync = MailSync::open_sqlite_with(dir.path().join("m.db"), settings(&stack, true))
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
        .create_profile(ServerProfile::generic(
            "Passwords",
            incoming,
            outgoing,
            Authentication::CredentialsPerMailbox,
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
    let mailbox = sync.create_mailbox(spec).await.unwrap();
    let options = TestOptions {
        send_test_message: true,
    };
    let report = sync
        .test_and_enable_with(&mailbox.id, &options)
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
    let stored = sync.get_mailbox(&mailbox.id).await.unwrap();
    assert!(
        !serde_json::to_string(&stored)
            .unwrap()
            .contains(&bob.password)
    );
}
