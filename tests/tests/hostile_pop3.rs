//! Hostile POP3 servers (scripted on loopback, see `hostile_support`): each
//! misbehaviour ends in a typed error, within bounded time and memory,
//! never a panic or a hang.
//!
//! - bytes injected after the STLS go-ahead;
//! - STLS not offered, or refused, credentials never sent in plaintext;
//! - a RETR larger than its LIST size (POP3's literal), and a LIST size of
//!   4294967295 and beyond;
//! - a server trickling one byte a second: cut by the step timeout, and a
//!   RETR whose every line beats the timeout cut by the overall deadline
//!   (through the sync engine);
//! - a CAPA answer without end, endless `+` challenges, lines over the
//!   limit, the connection ending inside a RETR;
//! - `-ERR [` with no `]`.

mod hostile_support;

use std::time::Duration;

use hostile_support::{
    Memory, PASSWORD, Peer, USER, bounded, carries_password, exclusive, opts, password, serve,
    tls_opts,
};
use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingFilter, IncomingProtocol, MailboxSpec,
    Secret, Security, ServerProfile,
};
use mailsync::net::pop3::Pop3Client;
use mailsync::net::{StaticCredentials, Step, Steps, probe_pop3};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, ErrorCode, MailSync, Options, StoreConfig};
use tokio::io::{AsyncRead, AsyncWrite};

const SECOND: Duration = Duration::from_secs(1);

const MESSAGE: &str = "Subject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n";

/// Answers like a small, well-behaved server (one message of 100 bytes,
/// STLS offered when `stls`) until the client sends a command starting
/// with `stop`; returns that line. `None`: the client hung up first.
async fn serve_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    stls: bool,
    stop: &str,
) -> std::io::Result<Option<String>> {
    while let Some(line) = p.line().await? {
        let cmd = line.to_ascii_uppercase();
        if cmd.starts_with(stop) {
            return Ok(Some(line));
        }
        let reply = if cmd == "CAPA" {
            let stls = if stls { "STLS\r\n" } else { "" };
            format!("+OK\r\nUSER\r\nUIDL\r\nTOP\r\nSASL PLAIN\r\n{stls}.\r\n")
        } else if cmd.starts_with("AUTH") {
            if line.split_whitespace().count() < 3 {
                p.send("+ \r\n").await?;
                p.expect_line().await?;
            }
            "+OK logged in\r\n".to_owned()
        } else if cmd == "STAT" {
            "+OK 1 100\r\n".to_owned()
        } else if cmd == "LIST" {
            "+OK\r\n1 100\r\n.\r\n".to_owned()
        } else if cmd.starts_with("LIST ") {
            "+OK 1 100\r\n".to_owned()
        } else if cmd == "UIDL" {
            "+OK\r\n1 uid-1\r\n.\r\n".to_owned()
        } else if cmd.starts_with("UIDL ") {
            "+OK 1 uid-1\r\n".to_owned()
        } else if cmd.starts_with("RETR") || cmd.starts_with("TOP") {
            format!("+OK\r\n{MESSAGE}.\r\n")
        } else if cmd == "QUIT" {
            p.send("+OK bye\r\n").await?;
            return Ok(None);
        } else {
            "+OK\r\n".to_owned()
        };
        p.send(reply).await?;
    }
    Ok(None)
}

async fn greet_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    stls: bool,
    stop: &str,
) -> std::io::Result<Option<String>> {
    p.send("+OK scripted POP3 ready\r\n").await?;
    serve_until(p, stls, stop).await
}

/// A client logged in over plaintext loopback.
async fn client(port: u16, timeout: Duration) -> Pop3Client {
    let ep = Endpoint::new("127.0.0.1", port, Security::Plaintext);
    let mut steps = Steps::new("POP3", timeout);
    Pop3Client::connect(&ep, &opts(timeout), &password(), None, &mut steps)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

// ------------------------------------------------------------------ STLS

/// The go-ahead and a forged `+OK` in one write, then a real TLS handshake
/// and a server that would log anyone in.
#[tokio::test]
async fn bytes_injected_after_the_stls_go_ahead_are_refused() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, true, "STLS").await?.is_none() {
            return Ok(());
        }
        p.send("+OK begin TLS\r\n+OK logged in already\r\n").await?;
        let mut tls = p.into_tls().await?;
        serve_until(&mut tls, true, "\u{0}").await?;
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "injection",
        10 * SECOND,
        probe_pop3(&server.starttls(), &tls_opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Tls, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.error.message().contains("after STLS"), "{e}");
    assert!(!server.saw(carries_password), "credentials were sent");
    assert!(took < 3 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "injection");
}

/// STLS missing from CAPA, or refused: `tls` at the TLS step, and nothing
/// secret on the wire.
#[tokio::test]
async fn stls_missing_or_refused_is_tls_and_sends_no_credentials() {
    let _one = exclusive().await;
    let missing = serve(|mut p| async move {
        greet_until(&mut p, false, "\u{0}").await?;
        Ok(())
    })
    .await;
    let refused = serve(|mut p| async move {
        if greet_until(&mut p, true, "STLS").await?.is_some() {
            p.send("-ERR TLS is not available now\r\n").await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let creds = StaticCredentials(password());
    for (case, server, text) in [
        ("missing", &missing, "does not offer STLS"),
        ("refused", &refused, "refused STLS"),
    ] {
        let (r, took) = bounded(
            case,
            10 * SECOND,
            probe_pop3(&server.starttls(), &opts(2 * SECOND), &creds, None),
        )
        .await;
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Tls, "{case}: {e}");
        assert_eq!(e.error.code(), ErrorCode::Tls, "{case}: {e}");
        assert!(e.error.message().contains(text), "{case}: {e}");
        assert!(!server.saw(carries_password), "{case}: credentials sent");
        assert!(
            !server.saw(|l| l.starts_with("AUTH") || l.starts_with("USER")),
            "{case}: a login was attempted"
        );
        assert!(took < 3 * SECOND, "{case}: {took:?}");
    }
}

// ------------------------------------------------------------------ sizes

/// LIST says 100 bytes, RETR brings 200,000: aborted once past what LIST
/// announced (POP3's "literal larger than its RFC822.SIZE").
#[tokio::test]
async fn a_retr_larger_than_its_list_size_is_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "RETR").await?.is_some() {
            let mut body = String::from("+OK\r\n");
            for _ in 0..2000 {
                body.push_str(&"x".repeat(98));
                body.push_str("\r\n");
            }
            body.push_str(".\r\n");
            p.send(body).await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let mut c = client(server.port, 2 * SECOND).await;
    let mem = Memory::start();
    let (r, took) = bounded("RETR", 10 * SECOND, async {
        c.retr(1).await.map(|m| m.len())
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("more than 1136 bytes"), "{e}");
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(2, "RETR larger than LIST");
}

/// LIST sizes of 4294967295 (refused before RETR: `message_too_large`) and
/// of 2^64 (malformed): nothing is downloaded.
#[tokio::test]
async fn huge_list_sizes_are_refused_before_download() {
    let _one = exclusive().await;
    for (size, code) in [
        ("4294967295", ErrorCode::MessageTooLarge),
        ("18446744073709551616", ErrorCode::ProtocolError),
    ] {
        let server = serve(move |mut p| async move {
            if greet_until(&mut p, false, "LIST ").await?.is_some() {
                p.send(format!("+OK 1 {size}\r\n")).await?;
                serve_until(&mut p, false, "\u{0}").await?;
            }
            Ok(())
        })
        .await;
        let mut c = client(server.port, 2 * SECOND).await;
        let mem = Memory::start();
        let (r, took) = bounded(size, 10 * SECOND, async {
            c.retr(1).await.map(|m| m.len())
        })
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), code, "{size}: {e}");
        assert!(!server.saw(|l| l.starts_with("RETR")), "{size}: downloaded");
        assert!(took < SECOND, "{took:?}");
        mem.assert_below_mib(1, size);
    }
}

// ------------------------------------------------------------------ trickle

/// The greeting at one byte a second: the greeting step's timeout (2 s).
#[tokio::test]
async fn a_greeting_trickled_one_byte_a_second_times_out() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.trickle(b"+OK a very slow server is ready\r\n").await;
        Ok(())
    })
    .await;
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "greeting",
        10 * SECOND,
        probe_pop3(&server.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::Timeout, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
}

/// Collects nothing; the cases only look at the report.
struct Discard;

#[async_trait::async_trait]
impl MessageSink for Discard {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(messages.iter().map(|_| DeliveryOutcome::Stored).collect())
    }
}

/// A RETR of empty lines at one byte a second: every line arrives within
/// the 3 s timeout, so only the overall deadline (3 s plus the size at the
/// engine's minimum rate) ends it. Through the sync engine.
#[tokio::test(flavor = "multi_thread")]
async fn a_retr_trickled_one_byte_a_second_is_cut_by_the_deadline() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "RETR").await?.is_some() {
            p.send("+OK\r\n").await?;
            p.trickle(&b"\r\n".repeat(50)).await;
        }
        Ok(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        Options::default(),
    )
    .await
    .unwrap();
    let mut profile = ServerProfile::generic(
        "Trickle",
        IncomingEndpoint {
            protocol: IncomingProtocol::Pop3,
            endpoint: server.plain(),
        },
        Endpoint::new("127.0.0.1", 1, Security::Plaintext),
        Authentication::CredentialsInProfile {
            username: USER.into(),
            password: Some(Secret::new(PASSWORD)),
        },
    )
    .default_for_new_mailboxes();
    profile.allow_plaintext_on_loopback = true;
    profile.processing.connection_timeout_secs = 3;
    sync.directory().create_profile(profile).await.unwrap();
    let mut spec = MailboxSpec::user(USER).with_incoming_filter(IncomingFilter::All);
    spec.process_email_received_after = None;
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    sync.apply_events(
        &mailbox.id,
        &[LifecycleEvent::TestPassed {
            direction: Direction::Incoming,
        }],
    )
    .await
    .unwrap();
    let mut options = EngineOptions::default();
    // The deadline is the timeout (3 s) plus 100 bytes at this rate (0 s).
    options.min_throughput_bytes_per_sec = 1_000_000;
    let engine = Engine::new(sync.clone(), std::sync::Arc::new(Discard), options).unwrap();
    let (report, took) = bounded("trickled RETR", 15 * SECOND, engine.run_once(&mailbox.id)).await;
    let report = report.unwrap();
    assert_eq!(report.error_code, Some(ErrorCode::Timeout), "{report:?}");
    assert_eq!(report.delivered, 0, "{report:?}");
    assert!(took < 5 * SECOND, "{took:?}");
}

// ------------------------------------------------------------------ floods

/// A CAPA answer that never ends: refused past 64 KiB, long before the
/// step's timeout.
#[tokio::test]
async fn a_capa_answer_without_end_is_cut_in_bounded_memory() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("+OK ready\r\n").await?;
        if p.line().await?.is_some() {
            p.send("+OK\r\n").await?;
            p.repeat(b"X-FLOOD capability\r\n").await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "CAPA flood",
        10 * SECOND,
        probe_pop3(&server.plain(), &opts(5 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Capabilities, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.error.message().contains("more than 65536 bytes"), "{e}");
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(2, "CAPA flood");
}

/// `+` after `+` in answer to AUTH: given up after a few rounds; the
/// credentials went out once.
#[tokio::test]
async fn endless_challenges_are_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "AUTH").await?.is_some() {
            loop {
                p.send("+ \r\n").await?;
                if p.line().await?.is_none() {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
    .await;
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "challenges",
        10 * SECOND,
        probe_pop3(&server.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Authenticate, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(
        e.error.message().contains("kept sending SASL challenges"),
        "{e}"
    );
    assert!(took < SECOND, "{took:?}");
    assert_eq!(server.count(carries_password), 1, "credentials resent");
}

/// A 10 KiB greeting line, and a line without end in a RETR: over the
/// 8 KiB line limit.
#[tokio::test]
async fn lines_over_the_limit_are_protocol_errors_in_bounded_memory() {
    let _one = exclusive().await;
    let long = serve(|mut p| async move {
        p.flood(b"+OK ", b'a', Some(10 * 1024)).await;
        p.send("\r\n").await?;
        p.hold().await;
        Ok(())
    })
    .await;
    let creds = StaticCredentials(password());
    let (r, _) = bounded(
        "long greeting",
        10 * SECOND,
        probe_pop3(&long.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.error.message().contains("longer than 8192 bytes"), "{e}");

    let endless = serve(|mut p| async move {
        if greet_until(&mut p, false, "RETR").await?.is_some() {
            p.flood(b"+OK\r\n", b'a', None).await;
        }
        Ok(())
    })
    .await;
    let mut c = client(endless.port, 5 * SECOND).await;
    let mem = Memory::start();
    let (r, took) = bounded("endless line", 10 * SECOND, async {
        c.retr(1).await.map(|m| m.len())
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("longer than 8192 bytes"), "{e}");
    assert!(took < SECOND, "{took:?}");
    mem.assert_below_mib(2, "endless line");
}

/// The connection ends in the middle of a RETR (POP3's "BYE inside a
/// literal"): `network`, and the session is not used again.
#[tokio::test]
async fn the_connection_ending_inside_a_retr_is_network() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "RETR").await?.is_some() {
            p.send("+OK\r\nSubject: x\r\n\r\n-ERR shutting down\r\n")
                .await?;
        }
        Ok(())
    })
    .await;
    let mut c = client(server.port, 2 * SECOND).await;
    let (r, took) = bounded("closed in RETR", 10 * SECOND, async {
        c.retr(1).await.map(|m| m.len())
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Network, "{e}");
    assert!(took < SECOND, "{took:?}");
    let e = c.stat().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Network, "{e}");
}

// ------------------------------------------------------------------ brackets

/// `-ERR [` with no `]`, and `-ERR [SYS/TEMP` unclosed (no response code,
/// so not taken for a temporary failure): in the greeting, to AUTH and to
/// STAT. Typed errors, no panic.
#[tokio::test]
async fn an_err_with_an_unclosed_bracket_is_a_typed_error() {
    let _one = exclusive().await;
    let creds = StaticCredentials(password());
    let greeting = serve(|mut p| async move {
        p.send("-ERR [\r\n").await?;
        p.hold().await;
        Ok(())
    })
    .await;
    let (r, _) = bounded(
        "greeting",
        10 * SECOND,
        probe_pop3(&greeting.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ServerUnavailable, "{e}");

    for reply in ["-ERR [", "-ERR [SYS/TEMP try later"] {
        let auth = serve(move |mut p| async move {
            if greet_until(&mut p, false, "AUTH").await?.is_some() {
                p.send(format!("{reply}\r\n")).await?;
                if serve_until(&mut p, false, "AUTH").await?.is_some() {
                    p.send(format!("{reply}\r\n")).await?;
                }
                p.hold().await;
            }
            Ok(())
        })
        .await;
        let (r, took) = bounded(
            reply,
            10 * SECOND,
            probe_pop3(&auth.plain(), &opts(2 * SECOND), &creds, None),
        )
        .await;
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Authenticate, "{reply}: {e}");
        assert_eq!(e.error.code(), ErrorCode::AuthRejected, "{reply}: {e}");
        assert!(took < SECOND, "{took:?}");

        let stat = serve(move |mut p| async move {
            if greet_until(&mut p, false, "STAT").await?.is_some() {
                p.send(format!("{reply}\r\n")).await?;
                p.hold().await;
            }
            Ok(())
        })
        .await;
        let mut c = client(stat.port, 2 * SECOND).await;
        let e = c.stat().await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProtocolError, "{reply}: {e}");
    }
}
