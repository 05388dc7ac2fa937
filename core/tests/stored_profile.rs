//! A profile is validated again, as stored, before every connection: a
//! record written straight into the store (past the directory's checks)
//! that would send credentials in plaintext, or Google tokens to another
//! host, is refused by Test & Enable and by the sync engine before anything
//! reaches the network.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mailsync::checks::TestOptions;
use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingProtocol, MailboxSpec, OAuthApp, Secret,
    Security, ServerProfile,
};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, ErrorCode, MailSync, MemoryStore, Options};

/// A listener on 127.0.0.1 that counts the connections it gets (and says
/// nothing to them).
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (port, count)
}

struct Nowhere;

#[async_trait::async_trait]
impl MessageSink for Nowhere {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }
}

/// Creates a valid profile (TLS to `port`) and a mailbox with incoming
/// enabled, then writes `tamper(profile)` straight into the store.
async fn tampered(
    sync: &MailSync,
    profile: ServerProfile,
    tamper: impl FnOnce(&mut ServerProfile),
) -> mailsync::model::Mailbox {
    let profile = sync
        .directory()
        .create_profile(profile.default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.com"))
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
    let mut stored = sync.directory().get_profile(&profile.id).await.unwrap();
    tamper(&mut stored);
    // The directory refuses it …
    assert!(
        sync.directory()
            .update_profile(stored.clone())
            .await
            .is_err()
    );
    // … the store takes it.
    sync.store().update_profile(&stored).await.unwrap();
    mailbox
}

fn password_profile(port: u16) -> ServerProfile {
    ServerProfile::generic(
        "Local",
        IncomingEndpoint {
            protocol: IncomingProtocol::Imap,
            endpoint: Endpoint::new("127.0.0.1", port, Security::Tls),
        },
        Endpoint::new("127.0.0.1", port, Security::Tls),
        Authentication::CredentialsInProfile {
            username: "alice".into(),
            password: Some(Secret::new("hunter2-password")),
        },
    )
}

#[tokio::test]
async fn a_plaintext_endpoint_written_into_the_store_is_refused_before_connecting() {
    // Plaintext on loopback without the profile's permission, and plaintext
    // to a remote host with it: both invalid, each for both protocols.
    type Tamper = fn(&mut ServerProfile, u16);
    let cases: [(&str, IncomingProtocol, Tamper); 3] = [
        (
            "loopback without permission",
            IncomingProtocol::Imap,
            |p, port| {
                p.incoming.endpoint = Endpoint::new("127.0.0.1", port, Security::Plaintext);
                p.outgoing = Endpoint::new("127.0.0.1", port, Security::Plaintext);
            },
        ),
        (
            "loopback without permission",
            IncomingProtocol::Pop3,
            |p, port| {
                p.incoming.endpoint = Endpoint::new("127.0.0.1", port, Security::Plaintext);
            },
        ),
        ("a remote host", IncomingProtocol::Imap, |p, _| {
            p.allow_plaintext_on_loopback = true;
            p.incoming.endpoint = Endpoint::new("mail.example.com", 143, Security::Plaintext);
        }),
    ];
    for (what, protocol, tamper) in cases {
        let (port, connections) = counting_listener().await;
        let sync = MailSync::with_store(Arc::new(MemoryStore::new()), Options::default()).unwrap();
        let mut profile = password_profile(port);
        if protocol == IncomingProtocol::Pop3 {
            profile = profile.use_pop3();
        }
        let mailbox = tampered(&sync, profile, |p| tamper(p, port)).await;

        let e = sync
            .checks()
            .test_and_enable(&mailbox.id, &TestOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation, "{what}: {e}");
        assert!(e.field().unwrap().ends_with(".security"), "{what}: {e:?}");
        assert!(e.message().contains("not valid as stored"), "{e}");

        let engine =
            Engine::new(sync.clone(), Arc::new(Nowhere), EngineOptions::default()).unwrap();
        let report = engine.run_once(&mailbox.id).await.unwrap();
        assert_eq!(
            report.error_code,
            Some(ErrorCode::Validation),
            "{what}: {report:?}"
        );
        assert!(!format!("{e:?}{report:?}").contains("hunter2"));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "{what} ({protocol:?}): nothing may connect"
        );
    }
}

#[tokio::test]
async fn a_gmail_profile_naming_another_host_in_the_store_is_refused_before_connecting() {
    let (port, connections) = counting_listener().await;
    let sync = MailSync::with_store(Arc::new(MemoryStore::new()), Options::default()).unwrap();
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    let mailbox = tampered(&sync, ServerProfile::gmail("Gmail", app), |p| {
        p.incoming.endpoint = Endpoint::new("127.0.0.1", port, Security::Tls);
    })
    .await;
    let e = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::HostNotAllowed, "{e}");
    let engine = Engine::new(sync.clone(), Arc::new(Nowhere), EngineOptions::default()).unwrap();
    let report = engine.run_once(&mailbox.id).await.unwrap();
    assert_eq!(
        report.error_code,
        Some(ErrorCode::HostNotAllowed),
        "{report:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}
