//! mailsync's IMAP / POP3 / SMTP transports against the real local stack
//! (Dovecot, Postfix, oidc-provider on 127.0.0.1; see docs/testing.md).
//!
//! TLS verification is always on: the stack's CA is added as an extra root.
//! The only non-server peer is a TCP listener that accepts and never speaks
//! (the timeout test), which imitates no protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailsync::model::Secret;
use mailsync::model::profile::{Endpoint, Security};
use mailsync::net::imap::{ImapClient, ImapMailbox, UidRange};
use mailsync::net::pop3::{Pop3Client, SaslStyle};
use mailsync::net::smtp::SmtpClient;
use mailsync::net::{
    ConnectOptions, CredentialSource, Credentials, StaticCredentials, Step, Steps, TlsSettings,
    probe_imap, probe_pop3, probe_smtp,
};
use mailsync::sasl::Mechanism;
use mailsync::{ErrorCode, Result};
use mailsync_e2e::{Stack, ca_cert_pem, provider_exclusive, provider_shared, wire};

const OAUTH_MECHS: [Mechanism; 2] = [Mechanism::XOAuth2, Mechanism::OAuthBearer];

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn opts() -> ConnectOptions {
    let tls = TlsSettings::webpki()
        .with_root_pem(ca_cert_pem().as_bytes())
        .expect("stack CA");
    ConnectOptions::new(Duration::from_secs(15), tls)
}

fn imap_tls(s: &Stack) -> Endpoint {
    Endpoint::new(s.imap.host.clone(), s.imap.tls_port, Security::Tls)
}
fn pop3_tls(s: &Stack) -> Endpoint {
    Endpoint::new(s.pop3.host.clone(), s.pop3.tls_port, Security::Tls)
}
fn smtp_starttls(s: &Stack) -> Endpoint {
    Endpoint::new(
        s.smtp.host.clone(),
        s.smtp.starttls_port,
        Security::StartTls,
    )
}
fn smtp_tls(s: &Stack) -> Endpoint {
    Endpoint::new(s.smtp.host.clone(), s.smtp.tls_port, Security::Tls)
}

async fn token(email: &str) -> String {
    let email = email.to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::token(&email).access_token)
        .await
        .unwrap()
}

async fn oauth(email: &str) -> Credentials {
    Credentials::OAuth {
        user: email.to_owned(),
        access_token: Secret::new(token(email).await),
    }
}

fn password(s: &Stack, email: &str) -> Credentials {
    Credentials::Password {
        user: email.to_owned(),
        password: Secret::new(s.account(email).password.clone()),
    }
}

async fn deliver(email: &str, count: usize, prefix: &str) -> Vec<String> {
    let email = email.to_owned();
    let opts = mailsync_e2e::DeliverOpts {
        subject_prefix: Some(prefix.to_owned()),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || mailsync_e2e::deliver(&email, count, &opts))
        .await
        .unwrap()
}

/// A message with lines that need dot-stuffing on the wire.
fn dotted_message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\
         Date: Mon, 24 Nov 2025 10:00:00 +0000\r\n\r\n\
         first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"
    )
    .into_bytes()
}

const DOTTED_BODY: &str = "first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n";

async fn smtp_send(endpoint: &Endpoint, creds: &Credentials, to: &str, subject: &str) -> String {
    let mut steps = Steps::new("SMTP", opts().timeout);
    let mut c = SmtpClient::connect(endpoint, &opts(), creds, None, &mut steps)
        .await
        .unwrap_or_else(|e| panic!("SMTP connect: {e}"));
    let from = creds.user().to_owned();
    let envelope =
        lettre::address::Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()])
            .unwrap();
    let reply = c
        .send_raw(&envelope, &dotted_message(&from, to, subject))
        .await
        .unwrap_or_else(|e| panic!("SMTP send: {e}"));
    c.quit().await;
    reply
}

/// Polls IMAP until a message with `needle` in it appears; returns its raw bytes.
async fn wait_for_imap_message(creds: &Credentials, needle: &str) -> Vec<u8> {
    let s = Stack::get();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut steps = Steps::new("IMAP", opts().timeout);
        let mut c = ImapClient::connect(&imap_tls(&s), &opts(), creds, None, &mut steps)
            .await
            .unwrap();
        let st = c.examine_inbox().await.unwrap();
        let first = st.uid_next.saturating_sub(20).max(1);
        let msgs = c.uid_fetch(UidRange::from(first)).await.unwrap();
        let _ = c.logout().await;
        if let Some(m) = msgs
            .into_iter()
            .find(|m| String::from_utf8_lossy(&m.raw).contains(needle))
        {
            return m.raw;
        }
        assert!(Instant::now() < deadline, "message {needle} never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- IMAP

/// `BODY.PEEK[]` leaves `\Seen` alone. INBOX is opened read-write (SELECT): under EXAMINE
/// (read-only) no fetch could set `\Seen`, so the check would prove nothing. A control at
/// the end shows the check sees `\Seen` when a plain `BODY[]` fetch does set it.
#[tokio::test]
async fn imap_tls_both_mechanisms_fetch_with_peek() {
    let _g = provider_shared().await;
    let s = Stack::get();
    let user = "alice@example.test";
    let raw_token = token(user).await;
    let creds = Credentials::OAuth {
        user: user.to_owned(),
        access_token: Secret::new(raw_token.clone()),
    };
    for mech in OAUTH_MECHS {
        let mut steps = Steps::new("IMAP", opts().timeout);
        let mut c = ImapClient::connect(&imap_tls(&s), &opts(), &creds, Some(mech), &mut steps)
            .await
            .unwrap_or_else(|e| panic!("{mech}: {e}"));
        assert_eq!(c.mechanism(), mech);
        let done: Vec<Step> = steps.records().iter().map(|r| r.step).collect();
        assert_eq!(
            done,
            [
                Step::Connect,
                Step::Tls,
                Step::Greeting,
                Step::Capabilities,
                Step::Authenticate
            ]
        );
        // Read-write, so a fetch could change flags.
        let before = c.select_inbox().await.unwrap();
        let prefix = unique("imap-peek");
        let ids = deliver(user, 2, &prefix).await;
        let after = c.select_inbox().await.unwrap();
        assert_eq!(after.uid_validity, before.uid_validity);
        assert!(
            after.uid_next >= before.uid_next + 2,
            "{before:?} {after:?}"
        );
        assert!(after.highest_modseq.is_some(), "CONDSTORE: {after:?}");
        let msgs = c.uid_fetch(UidRange::from(before.uid_next)).await.unwrap();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        for (m, id) in msgs.iter().zip(&ids) {
            let text = String::from_utf8_lossy(&m.raw);
            assert!(
                text.contains(id.trim_matches(['<', '>'])),
                "{id} not in {m:?}"
            );
            assert!(text.contains(&prefix));
            assert_eq!(m.size as usize, m.raw.len());
            assert!(m.internal_date.is_some());
            assert!(!m.flags.iter().any(|f| f == "\\Seen"), "{m:?}");
        }
        // BODY.PEEK never sets \Seen, even after the download in a read-write session.
        let flags = c.uid_flags(UidRange::from(before.uid_next)).await.unwrap();
        assert_eq!(flags.len(), 2);
        assert!(
            flags.iter().all(|(_, f)| !f.iter().any(|x| x == "\\Seen")),
            "{flags:?}"
        );
        // Control: a plain BODY[] fetch (another session, also SELECT) sets \Seen, and the
        // same check sees it.
        let first_uid = msgs[0].uid;
        let mut w = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
        wire::imap_greeting(&mut w).await;
        let auth = wire::imap_auth(
            &mut w,
            wire::Mech::XOAuth2,
            user,
            &raw_token,
            &s.imap.host,
            s.imap.tls_port,
        )
        .await;
        assert!(auth.ok, "{auth:?}");
        let (_, done) = wire::imap_cmd(&mut w, "c1", "SELECT INBOX").await;
        assert!(done.starts_with("c1 OK"), "{done}");
        let (_, done) =
            wire::imap_cmd(&mut w, "c2", &format!("UID FETCH {first_uid} (BODY[])")).await;
        assert!(done.starts_with("c2 OK"), "{done}");
        wire::imap_cmd(&mut w, "c3", "LOGOUT").await;
        let flags = c
            .uid_flags(UidRange::between(first_uid, first_uid))
            .await
            .unwrap();
        assert!(
            flags
                .iter()
                .any(|(uid, f)| *uid == first_uid && f.iter().any(|x| x == "\\Seen")),
            "a BODY[] fetch did not show up as \\Seen: {flags:?}"
        );
        // The size limit skips the download.
        c.set_max_message_size(10);
        let small = c.uid_fetch(UidRange::from(before.uid_next)).await.unwrap();
        assert!(small.iter().all(|m| m.oversized && m.raw.is_empty()));
        c.logout().await.unwrap();
    }
}

#[tokio::test]
async fn imap_starttls_and_password_logins() {
    let _g = provider_shared().await;
    let s = Stack::get();
    let ep = Endpoint::new(s.imap.host.clone(), s.imap.plain_port, Security::StartTls);
    let creds = oauth("bob@example.test").await;
    let r = probe_imap(&ep, &opts(), &StaticCredentials(creds), None).await;
    assert!(r.is_success(), "{r:?}");
    let steps: Vec<Step> = r.steps.iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        [
            Step::Credentials,
            Step::Connect,
            Step::Greeting,
            Step::Tls,
            Step::Capabilities,
            Step::Authenticate,
            Step::SelectInbox
        ]
    );
    // Passwords: PLAIN and LOGIN over TLS, and plaintext on loopback is allowed.
    let pw = password(&s, "bob@example.test");
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let r = probe_imap(
            &imap_tls(&s),
            &opts(),
            &StaticCredentials(pw.clone()),
            Some(mech),
        )
        .await;
        assert!(r.is_success(), "{mech}: {r:?}");
        let r = probe_imap(&ep, &opts(), &StaticCredentials(pw.clone()), Some(mech)).await;
        assert!(r.is_success(), "{mech} STARTTLS: {r:?}");
    }
    let plain = Endpoint::new(s.imap.host.clone(), s.imap.plain_port, Security::Plaintext);
    let r = probe_imap(&plain, &opts(), &StaticCredentials(pw.clone()), None).await;
    assert!(
        matches!(&r.result, Err(e) if e.error.code() == ErrorCode::InsecureConnection),
        "loopback plaintext without the profile's consent: {r:?}"
    );
    let allowed = opts().with_plaintext_on_loopback(true);
    let r = probe_imap(&plain, &allowed, &StaticCredentials(pw), None).await;
    assert!(r.is_success(), "loopback plaintext, allowed: {r:?}");
}

// ---------------------------------------------------------------- POP3

#[tokio::test]
async fn pop3_both_mechanisms_both_forms_retr_dot_stuffed() {
    let _g = provider_shared().await;
    // carol's `web` grants: revoked_token_is_auth_rejected_with_decoded_status revokes them.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let s = Stack::get();
    let to = "carol@example.test";
    let subject = unique("pop3-dots");
    let sender = oauth("alice@example.test").await;
    smtp_send(&smtp_starttls(&s), &sender, to, &subject).await;
    let creds = oauth(to).await;
    // Wait for delivery through Postfix → LMTP.
    wait_for_imap_message(&creds, &subject).await;

    for mech in OAUTH_MECHS {
        for style in [
            SaslStyle::InitialResponse,
            SaslStyle::Challenge,
            SaslStyle::Auto,
        ] {
            let mut steps = Steps::new("POP3", opts().timeout);
            let mut c = Pop3Client::connect_with(
                &pop3_tls(&s),
                &opts(),
                &creds,
                Some(mech),
                style,
                &mut steps,
            )
            .await
            .unwrap_or_else(|e| panic!("{mech} {style:?}: {e}"));
            assert_eq!(c.mechanism(), mech);
            let (count, size) = c.stat().await.unwrap();
            assert!(count >= 1 && size > 0);
            let uidl = c.uidl().await.unwrap();
            let list = c.list().await.unwrap();
            assert_eq!(uidl.len(), count as usize);
            assert_eq!(list.len(), count as usize);
            let (n, uid) = uidl.last().unwrap().clone();
            assert_eq!(c.uidl_one(n).await.unwrap(), uid);
            // Find our message (the newest ones are last).
            let mut found = false;
            for (n, _) in uidl.iter().rev().take(10) {
                let raw = c.retr(*n).await.unwrap();
                let text = String::from_utf8_lossy(&raw);
                if text.contains(&subject) {
                    assert!(text.ends_with(DOTTED_BODY), "dot-unstuffing: {text:?}");
                    assert_eq!(raw.len() as u64, c.list_one(*n).await.unwrap());
                    found = true;
                    break;
                }
            }
            assert!(found, "{subject} not found over POP3");
            c.quit().await.unwrap();
        }
    }
    // Passwords: USER/PASS is not needed (SASL PLAIN offered), PLAIN and LOGIN work.
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let r = probe_pop3(
            &pop3_tls(&s),
            &opts(),
            &StaticCredentials(password(&s, to)),
            Some(mech),
        )
        .await;
        assert!(r.is_success(), "{mech}: {r:?}");
    }
    // STLS on the plain port.
    let ep = Endpoint::new(s.pop3.host.clone(), s.pop3.plain_port, Security::StartTls);
    let r = probe_pop3(&ep, &opts(), &StaticCredentials(creds), None).await;
    assert!(r.is_success(), "STLS: {r:?}");
    assert!(r.steps.iter().any(|r| r.step == Step::Tls));
}

// ---------------------------------------------------------------- SMTP

#[tokio::test]
async fn smtp_starttls_and_implicit_tls_send_alice_to_bob() {
    let _g = provider_shared().await;
    let s = Stack::get();
    let alice = oauth("alice@example.test").await;
    let bob = oauth("bob@example.test").await;
    for (name, ep) in [("starttls", smtp_starttls(&s)), ("tls", smtp_tls(&s))] {
        for mech in OAUTH_MECHS {
            let r = probe_smtp(&ep, &opts(), &StaticCredentials(alice.clone()), Some(mech)).await;
            assert!(r.is_success(), "{name} {mech}: {r:?}");
        }
        let subject = unique(&format!("smtp-{name}"));
        let reply = smtp_send(&ep, &alice, "bob@example.test", &subject).await;
        assert!(reply.starts_with("250"), "{reply}");
        let raw = wait_for_imap_message(&bob, &subject).await;
        assert!(String::from_utf8_lossy(&raw).ends_with(DOTTED_BODY));
    }
    // A lettre Message works too, and passwords authenticate with PLAIN.
    let mut steps = Steps::new("SMTP", opts().timeout);
    let mut c = SmtpClient::connect(
        &smtp_tls(&s),
        &opts(),
        &password(&s, "alice@example.test"),
        None,
        &mut steps,
    )
    .await
    .unwrap();
    assert_eq!(c.mechanism(), Mechanism::Plain);
    let subject = unique("smtp-lettre");
    let msg = lettre::Message::builder()
        .from("alice@example.test".parse().unwrap())
        .to("bob@example.test".parse().unwrap())
        .subject(subject.clone())
        .body("hello from lettre".to_owned())
        .unwrap();
    c.send_message(&msg).await.unwrap();
    // Relaying outside the domain is refused: 5xx → send_rejected with the code kept.
    let envelope = lettre::address::Envelope::new(
        Some("alice@example.test".parse().unwrap()),
        vec!["someone@outside.example.org".parse().unwrap()],
    )
    .unwrap();
    let e = c
        .send_raw(
            &envelope,
            &dotted_message("alice@example.test", "someone@outside.example.org", "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SendRejected, "{e}");
    assert!(e.message().contains("554"), "{e}");
    c.quit().await;
    wait_for_imap_message(&bob, &subject).await;
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn port_not_listening_is_network() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let creds = StaticCredentials(Credentials::Password {
        user: "x".into(),
        password: Secret::new("y"),
    });
    let ep = Endpoint::new("127.0.0.1", port, Security::Tls);
    for r in [
        probe_imap(&ep, &opts(), &creds, None).await,
        probe_pop3(&ep, &opts(), &creds, None).await,
        probe_smtp(&ep, &opts(), &creds, None).await,
    ] {
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Connect, "{e}");
        assert_eq!(e.error.code(), ErrorCode::Network, "{e}");
        assert!(e.error.message().contains("refused"), "{e}");
    }
}

#[tokio::test]
async fn certificate_from_unknown_ca_is_tls() {
    let s = Stack::get();
    // Only the bundled public roots: the stack's CA is unknown.
    let untrusting = ConnectOptions::new(Duration::from_secs(10), TlsSettings::webpki());
    let creds = StaticCredentials(password(&s, "alice@example.test"));
    let ep_starttls_imap =
        Endpoint::new(s.imap.host.clone(), s.imap.plain_port, Security::StartTls);
    for r in [
        probe_imap(&imap_tls(&s), &untrusting, &creds, None).await,
        probe_imap(&ep_starttls_imap, &untrusting, &creds, None).await,
        probe_pop3(&pop3_tls(&s), &untrusting, &creds, None).await,
        probe_smtp(&smtp_tls(&s), &untrusting, &creds, None).await,
        probe_smtp(&smtp_starttls(&s), &untrusting, &creds, None).await,
    ] {
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Tls, "{} {e}", r.protocol);
        assert_eq!(e.error.code(), ErrorCode::Tls, "{} {e}", r.protocol);
        assert!(
            e.error.message().contains("certificate not trusted"),
            "{} {e}",
            r.protocol
        );
    }
}

#[tokio::test]
async fn revoked_token_is_auth_rejected_with_decoded_status() {
    let _g = provider_shared().await;
    // The revocation reaches every grant of carol on the `web` client (Google-like): the
    // other tests of this binary that use carol wait.
    let _carol = mailsync_e2e::account_lock("carol@example.test").await;
    let s = Stack::get();
    let user = "carol@example.test";
    let t = token(user).await;
    {
        let t = t.clone();
        tokio::task::spawn_blocking(move || mailsync_e2e::revoke(&t))
            .await
            .unwrap();
    }
    let creds = StaticCredentials(Credentials::OAuth {
        user: user.into(),
        access_token: Secret::new(t.clone()),
    });
    for mech in OAUTH_MECHS {
        let want = match mech {
            Mechanism::XOAuth2 => "status 401",
            _ => "status invalid_token",
        };
        for r in [
            probe_imap(&imap_tls(&s), &opts(), &creds, Some(mech)).await,
            probe_pop3(&pop3_tls(&s), &opts(), &creds, Some(mech)).await,
            probe_smtp(&smtp_starttls(&s), &opts(), &creds, Some(mech)).await,
        ] {
            let e = r.result.unwrap_err();
            assert_eq!(e.step, Step::Authenticate, "{} {mech}: {e}", r.protocol);
            assert_eq!(
                e.error.code(),
                ErrorCode::AuthRejected,
                "{} {mech}: {e}",
                r.protocol
            );
            assert!(
                e.error.message().contains(want),
                "{} {mech}: {e}",
                r.protocol
            );
            assert!(
                !e.error.message().contains(&t),
                "token leaked into the message"
            );
            assert!(!format!("{:?}", e).contains(&t), "token leaked into Debug");
        }
    }
}

#[tokio::test]
async fn account_without_imap_pop_is_protocol_disabled() {
    let _g = provider_shared().await;
    let s = Stack::get();
    let dave = "dave@example.test";
    let creds = StaticCredentials(oauth(dave).await);
    for mech in OAUTH_MECHS {
        for r in [
            probe_imap(&imap_tls(&s), &opts(), &creds, Some(mech)).await,
            probe_pop3(&pop3_tls(&s), &opts(), &creds, Some(mech)).await,
        ] {
            let e = r.result.unwrap_err();
            assert_eq!(e.step, Step::Authenticate, "{} {mech}: {e}", r.protocol);
            assert_eq!(
                e.error.code(),
                ErrorCode::ProtocolDisabled,
                "{} {mech}: {e}",
                r.protocol
            );
        }
        // SMTP is allowed for dave.
        let r = probe_smtp(&smtp_starttls(&s), &opts(), &creds, Some(mech)).await;
        assert!(r.is_success(), "{r:?}");
    }
    let pw = StaticCredentials(password(&s, dave));
    let e = probe_imap(&imap_tls(&s), &opts(), &pw, None)
        .await
        .result
        .unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::ProtocolDisabled, "{e}");
    let e = probe_pop3(&pop3_tls(&s), &opts(), &pw, None)
        .await
        .result
        .unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::ProtocolDisabled, "{e}");
}

#[tokio::test]
async fn mechanism_not_advertised_is_mechanism_unsupported() {
    let _g = provider_shared().await;
    let s = Stack::get();
    let creds = StaticCredentials(oauth("alice@example.test").await);
    // Postfix advertises AUTH only after STARTTLS: talking plaintext (loopback)
    // to the submission port, EHLO lists no mechanism at all.
    let plain = Endpoint::new(
        s.smtp.host.clone(),
        s.smtp.starttls_port,
        Security::Plaintext,
    );
    let e = probe_smtp(&plain, &opts(), &creds, None)
        .await
        .result
        .unwrap_err();
    assert_eq!(e.step, Step::Ehlo, "{e}");
    assert_eq!(e.error.code(), ErrorCode::MechanismUnsupported, "{e}");
    assert!(e.error.message().contains("no SASL mechanisms"), "{e}");
    // A password mechanism with OAuth credentials is refused before the wire.
    let e = probe_imap(&imap_tls(&s), &opts(), &creds, Some(Mechanism::Plain))
        .await
        .result
        .unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::MechanismUnsupported, "{e}");
}

#[tokio::test]
async fn silent_server_times_out_naming_the_step() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c); // accept and never speak
        }
    });
    let short = ConnectOptions::new(Duration::from_secs(1), opts().tls);
    let creds = StaticCredentials(Credentials::Password {
        user: "x".into(),
        password: Secret::new("y"),
    });
    let plain = Endpoint::new("127.0.0.1", port, Security::Plaintext);
    let tls = Endpoint::new("127.0.0.1", port, Security::Tls);
    let cases = [
        (
            "IMAP",
            Step::Greeting,
            plain.clone(),
            "waiting for the IMAP greeting",
        ),
        (
            "POP3",
            Step::Greeting,
            plain.clone(),
            "waiting for the POP3 greeting",
        ),
        (
            "SMTP",
            Step::Greeting,
            plain.clone(),
            "waiting for the SMTP greeting",
        ),
        (
            "IMAP",
            Step::Tls,
            tls.clone(),
            "waiting for the TLS handshake with the IMAP server",
        ),
    ];
    for (proto, step, ep, text) in cases {
        let start = Instant::now();
        let r = match proto {
            "IMAP" => probe_imap(&ep, &short, &creds, None).await,
            "POP3" => probe_pop3(&ep, &short, &creds, None).await,
            _ => probe_smtp(&ep, &short, &creds, None).await,
        };
        let elapsed = start.elapsed();
        let e = r.result.unwrap_err();
        assert_eq!(e.step, step, "{proto}: {e}");
        assert_eq!(e.error.code(), ErrorCode::Timeout, "{proto}: {e}");
        assert_eq!(e.error.message(), format!("timed out after 1s {text}"));
        assert!(elapsed < Duration::from_secs(3), "{proto} took {elapsed:?}");
    }
    held.abort();
}

/// A credential source like the library's token manager: a cached token, a
/// fresh one on demand.
struct Refreshing {
    user: String,
    current: tokio::sync::Mutex<String>,
    fresh_calls: AtomicU32,
}

#[async_trait::async_trait]
impl CredentialSource for Refreshing {
    async fn credentials(&self, force_fresh: bool) -> Result<Credentials> {
        let mut cur = self.current.lock().await;
        if force_fresh {
            self.fresh_calls.fetch_add(1, Ordering::SeqCst);
            *cur = token(&self.user).await;
        }
        Ok(Credentials::OAuth {
            user: self.user.clone(),
            access_token: Secret::new(cur.clone()),
        })
    }
}

async fn kick(user: &str) {
    let s = Stack::get();
    let conf = s.state_dir.join("dovecot").join("dovecot.conf");
    let user = user.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("doveadm")
            .arg("-c")
            .arg(conf)
            .args(["kick", &user])
            .output()
            .expect("run doveadm")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "doveadm kick: {out:?}");
}

/// How many IMAP sessions Dovecot lists for `user`.
async fn imap_sessions(user: &str) -> usize {
    let s = Stack::get();
    let conf = s.state_dir.join("dovecot").join("dovecot.conf");
    let user = user.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("doveadm")
            .arg("-c")
            .arg(conf)
            .args(["who", "-1", &user])
            .output()
            .expect("run doveadm")
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "imap"))
        .count()
}

#[tokio::test]
async fn session_outliving_its_token_is_reauthenticated_transparently() {
    let _g = provider_exclusive().await;
    let _ttl = tokio::task::spawn_blocking(|| mailsync_e2e::ShortTokenTtl::set(4))
        .await
        .unwrap();
    let s = Stack::get();
    let user = "bob@example.test";
    let first = token(user).await;
    let source = Arc::new(Refreshing {
        user: user.into(),
        current: tokio::sync::Mutex::new(first.clone()),
        fresh_calls: AtomicU32::new(0),
    });
    let mut mailbox = ImapMailbox::new(imap_tls(&s), opts(), source.clone(), None);
    let before = mailbox.status().await.unwrap();
    let prefix = unique("reauth");
    deliver(user, 1, &prefix).await;

    // Wait (polling, bounded) until the token is really expired.
    mailsync_e2e::wait_for(
        "the access token to expire",
        Duration::from_secs(30),
        || {
            let t = first.clone();
            async move { mailsync_e2e::introspect(&t).await["active"] != true }
        },
    )
    .await;
    // The server ends the session (as Gmail does when the token expires),
    // and we wait until Dovecot no longer lists it, so the next command
    // meets the closed session rather than racing the kick.
    kick(user).await;
    mailsync_e2e::wait_for(
        "the kicked IMAP session to end",
        Duration::from_secs(10),
        || async { imap_sessions(user).await == 0 },
    )
    .await;

    let msgs = mailbox
        .fetch(UidRange::from(before.uid_next))
        .await
        .unwrap();
    assert!(
        msgs.iter()
            .any(|m| String::from_utf8_lossy(&m.raw).contains(&prefix)),
        "{msgs:?}"
    );
    assert_eq!(mailbox.reconnects(), 1);
    assert_eq!(source.fresh_calls.load(Ordering::SeqCst), 1);

    // A new session whose cached token already expired re-authenticates too.
    let stale = Arc::new(Refreshing {
        user: user.into(),
        current: tokio::sync::Mutex::new(first.clone()),
        fresh_calls: AtomicU32::new(0),
    });
    let mut mailbox2 = ImapMailbox::new(imap_tls(&s), opts(), stale.clone(), None);
    mailbox2.status().await.unwrap();
    assert_eq!(stale.fresh_calls.load(Ordering::SeqCst), 1);
    mailbox.close().await;
    mailbox2.close().await;
}
