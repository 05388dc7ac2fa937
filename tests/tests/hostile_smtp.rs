//! Hostile SMTP servers (scripted on loopback, see `hostile_support`): each
//! misbehaviour ends in a typed error, within bounded time and memory,
//! never a panic or a hang.
//!
//! - bytes injected after the STARTTLS go-ahead;
//! - STARTTLS not offered, or refused, credentials never sent in plaintext;
//! - a reply larger than the reply limit (SMTP has no literals), and SIZE
//!   values of 4294967295 and beyond;
//! - a server trickling one byte a second: cut by the step timeout and by
//!   the send's deadline;
//! - endless `334` challenges, lines over the limit (ended, and without
//!   end), a `421` in the middle of a multi-line reply, the connection
//!   ending inside one;
//! - malformed reply codes (SMTP's `-ERR [`).
//!
//! Lettre reads every reply after the TLS handshake; the library checks the
//! line and reply limits on the bytes before lettre buffers or parses them.

mod hostile_support;

use std::time::Duration;

use hostile_support::{
    Memory, Peer, bounded, carries_password, exclusive, opts, password, serve, tls_opts,
};
use mailsync::ErrorCode;
use mailsync::model::Endpoint;
use mailsync::net::smtp::SmtpClient;
use mailsync::net::{StaticCredentials, Step, Steps, probe_smtp};
use tokio::io::{AsyncRead, AsyncWrite};

const SECOND: Duration = Duration::from_secs(1);

/// Answers like a small, well-behaved submission server (STARTTLS offered
/// when `starttls`) until the client sends a command starting with `stop`;
/// returns that line. `None`: the client hung up first.
async fn serve_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    starttls: bool,
    stop: &str,
) -> std::io::Result<Option<String>> {
    while let Some(line) = p.line().await? {
        let cmd = line.to_ascii_uppercase();
        if cmd.starts_with(stop) {
            return Ok(Some(line));
        }
        let reply = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            let tls = if starttls { "250-STARTTLS\r\n" } else { "" };
            format!("250-scripted\r\n250-PIPELINING\r\n{tls}250 AUTH PLAIN LOGIN\r\n")
        } else if cmd.starts_with("AUTH") {
            if line.split_whitespace().count() < 3 {
                p.send("334 \r\n").await?;
                p.expect_line().await?;
            }
            "235 2.7.0 Authentication successful\r\n".to_owned()
        } else if cmd.starts_with("DATA") {
            p.send("354 go ahead\r\n").await?;
            while p.expect_line().await? != "." {}
            "250 2.0.0 queued\r\n".to_owned()
        } else if cmd.starts_with("QUIT") {
            p.send("221 2.0.0 bye\r\n").await?;
            return Ok(None);
        } else {
            "250 2.0.0 ok\r\n".to_owned()
        };
        p.send(reply).await?;
    }
    Ok(None)
}

async fn greet_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    starttls: bool,
    stop: &str,
) -> std::io::Result<Option<String>> {
    p.send("220 scripted ESMTP\r\n").await?;
    serve_until(p, starttls, stop).await
}

async fn probe(ep: &Endpoint, timeout: Duration, tls: bool) -> mailsync::net::ProbeReport {
    let creds = StaticCredentials(password());
    let o = if tls {
        tls_opts(timeout)
    } else {
        opts(timeout)
    };
    probe_smtp(ep, &o, &creds, None).await
}

// ------------------------------------------------------------------ STARTTLS

/// The go-ahead and a forged EHLO answer in one write, then a real TLS
/// handshake and a server that would take anyone's mail.
#[tokio::test]
async fn bytes_injected_after_the_starttls_go_ahead_are_refused() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, true, "STARTTLS").await?.is_none() {
            return Ok(());
        }
        p.send("220 2.0.0 go ahead\r\n250-injected\r\n250 AUTH PLAIN LOGIN\r\n")
            .await?;
        let mut tls = p.into_tls().await?;
        serve_until(&mut tls, false, "\u{0}").await?;
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (r, took) = bounded(
        "injection",
        10 * SECOND,
        probe(&server.starttls(), 2 * SECOND, true),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Tls, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "injection");
}

/// STARTTLS not in EHLO: `tls` at the TLS step, and no credentials on the
/// wire.
#[tokio::test]
async fn starttls_missing_is_tls_and_sends_no_credentials() {
    let _one = exclusive().await;
    let missing = serve(|mut p| async move {
        greet_until(&mut p, false, "\u{0}").await?;
        Ok(())
    })
    .await;
    let (r, took) = bounded(
        "missing",
        10 * SECOND,
        probe(&missing.starttls(), 2 * SECOND, false),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Tls, "{e}");
    assert_eq!(e.error.code(), ErrorCode::Tls, "{e}");
    assert!(e.error.message().contains("does not offer STARTTLS"), "{e}");
    assert!(!missing.saw(carries_password), "credentials sent");
    assert!(
        !missing.saw(|l| l.starts_with("AUTH")),
        "a login was attempted"
    );
    assert!(took < 3 * SECOND, "{took:?}");
}

/// STARTTLS refused (454, 502): `tls` at the TLS step (as IMAP and POP3),
/// and no credentials on the wire.
#[tokio::test]
async fn starttls_refused_is_tls_and_sends_no_credentials() {
    let _one = exclusive().await;
    let mut failures = Vec::new();
    for answer in [
        "454 4.7.0 TLS not available",
        "502 5.5.1 unrecognized command",
    ] {
        let refused = serve(move |mut p| async move {
            if greet_until(&mut p, true, "STARTTLS").await?.is_some() {
                p.send(format!("{answer}\r\n")).await?;
                serve_until(&mut p, true, "\u{0}").await?;
            }
            Ok(())
        })
        .await;
        let (r, took) = bounded(
            answer,
            10 * SECOND,
            probe(&refused.starttls(), 2 * SECOND, false),
        )
        .await;
        assert!(!refused.saw(carries_password), "{answer}: credentials sent");
        assert!(
            !refused.saw(|l| l.starts_with("AUTH")),
            "{answer}: a login was attempted"
        );
        assert!(took < 3 * SECOND, "{answer}: {took:?}");
        match r.result {
            Err(e) if (e.step, e.error.code()) == (Step::Tls, ErrorCode::Tls) => {}
            other => failures.push(format!("{answer}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ------------------------------------------------------------------ sizes

/// An EHLO answer of `250-` lines without end: refused past the reply
/// limit, in bounded memory.
#[tokio::test]
async fn a_reply_larger_than_the_limit_is_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("220 scripted ESMTP\r\n").await?;
        if p.line().await?.is_some() {
            p.repeat(b"250-X-FLOOD extension\r\n").await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (r, took) = bounded(
        "reply flood",
        10 * SECOND,
        probe(&server.plain(), 5 * SECOND, false),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "reply flood");
}

/// SIZE values of 4294967295, 2^64 and more in EHLO: no panic, the session
/// goes on (nothing reads SIZE to reserve memory).
#[tokio::test]
async fn huge_size_values_do_no_harm() {
    let _one = exclusive().await;
    for size in ["4294967295", "18446744073709551616", "9".repeat(200).leak()] {
        let server = serve(move |mut p| async move {
            p.send("220 scripted ESMTP\r\n").await?;
            while let Some(line) = p.line().await? {
                if line.to_ascii_uppercase().starts_with("EHLO") {
                    p.send(format!(
                        "250-scripted\r\n250-SIZE {size}\r\n250 AUTH PLAIN\r\n"
                    ))
                    .await?;
                } else if line.starts_with("AUTH") {
                    p.send("235 2.7.0 ok\r\n").await?;
                } else {
                    p.send("221 2.0.0 bye\r\n").await?;
                    return Ok(());
                }
            }
            Ok(())
        })
        .await;
        let mem = Memory::start();
        let (r, _) = bounded(size, 10 * SECOND, probe(&server.plain(), 2 * SECOND, false)).await;
        assert!(r.is_success(), "SIZE {size}: {r:?}");
        mem.assert_below_mib(1, size);
    }
}

// ------------------------------------------------------------------ trickle

/// The greeting at one byte a second: the greeting step's timeout (2 s).
#[tokio::test]
async fn a_greeting_trickled_one_byte_a_second_times_out() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.trickle(b"220 a very slow server ESMTP\r\n").await;
        Ok(())
    })
    .await;
    let (r, took) = bounded(
        "greeting",
        10 * SECOND,
        probe(&server.plain(), 2 * SECOND, false),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::Timeout, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
}

/// The final reply to DATA at one byte a second: the send's deadline (2 s).
#[tokio::test]
async fn a_data_reply_trickled_one_byte_a_second_times_out() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "DATA").await?.is_some() {
            p.send("354 go ahead\r\n").await?;
            while p.expect_line().await? != "." {}
            p.trickle(b"250 2.0.0 queued as SLOWLY\r\n").await;
        }
        Ok(())
    })
    .await;
    let mut steps = Steps::new("SMTP", 2 * SECOND);
    let mut c = SmtpClient::connect(
        &server.plain(),
        &opts(2 * SECOND),
        &password(),
        None,
        &mut steps,
    )
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"));
    let envelope = lettre::address::Envelope::new(
        Some(hostile_support::USER.parse().unwrap()),
        vec!["someone@example.test".parse().unwrap()],
    )
    .unwrap();
    let (r, took) = bounded(
        "DATA reply",
        10 * SECOND,
        c.send_raw(&envelope, b"Subject: x\r\n\r\nhello\r\n"),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
}

// ------------------------------------------------------------------ floods

/// `334` after `334` in answer to AUTH: given up after a few rounds; the
/// credentials went out once.
#[tokio::test]
async fn endless_334_challenges_are_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        if greet_until(&mut p, false, "AUTH").await?.is_some() {
            loop {
                p.send("334 \r\n").await?;
                if p.line().await?.is_none() {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
    .await;
    let (r, took) = bounded(
        "334",
        10 * SECOND,
        probe(&server.plain(), 2 * SECOND, false),
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

/// A 2,000-byte reply line (over the 1,000-byte line limit), ended.
#[tokio::test]
async fn a_line_over_the_limit_is_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("220 scripted ESMTP\r\n").await?;
        if p.line().await?.is_some() {
            p.send(format!("250 {}\r\n", "a".repeat(2000))).await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let (r, took) = bounded(
        "long line",
        10 * SECOND,
        probe(&server.plain(), 2 * SECOND, false),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(took < SECOND, "{took:?}");
}

/// A reply line that does not end (32 MiB without a line feed, then
/// silence): refused past the line limit, not buffered whole.
#[tokio::test]
async fn a_line_without_end_is_cut_in_bounded_memory() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("220 scripted ESMTP\r\n").await?;
        if p.line().await?.is_some() {
            p.flood(b"250 ", b'a', Some(32 * 1024 * 1024)).await;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (r, took) = bounded(
        "endless line",
        10 * SECOND,
        probe(&server.plain(), 3 * SECOND, false),
    )
    .await;
    let e = r.result.unwrap_err();
    let peak = mem.peak_growth();
    assert_eq!(
        e.error.code(),
        ErrorCode::ProtocolError,
        "{e} (after {took:?}, heap +{peak} bytes)"
    );
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "endless line");
}

/// A `421` in the middle of a multi-line EHLO answer, then the connection
/// ends; and a multi-line answer cut off by the connection ending.
#[tokio::test]
async fn a_421_or_the_end_inside_a_multi_line_reply_is_a_typed_error() {
    let _one = exclusive().await;
    for (case, reply, codes) in [
        (
            "421 inside",
            "250-scripted\r\n421 4.3.2 shutting down\r\n",
            &[ErrorCode::ServerUnavailable, ErrorCode::ProtocolError][..],
        ),
        (
            "cut off",
            "250-scripted\r\n250-PIPELINING\r\n",
            &[ErrorCode::Network, ErrorCode::ProtocolError][..],
        ),
    ] {
        let server = serve(move |mut p| async move {
            p.send("220 scripted ESMTP\r\n").await?;
            if p.line().await?.is_some() {
                p.send(reply).await?;
            }
            Ok(())
        })
        .await;
        let (r, took) = bounded(case, 10 * SECOND, probe(&server.plain(), 2 * SECOND, false)).await;
        let e = r.result.unwrap_err();
        eprintln!("{case}: {e}");
        assert!(codes.contains(&e.error.code()), "{case}: {e}");
        assert!(took < SECOND, "{case}: {took:?}");
    }
}

// ------------------------------------------------------------------ codes

/// Malformed replies: `535 [` to AUTH (an unfinished enhanced code), a bare
/// `5`, and a four-digit code. Typed errors, no panic.
#[tokio::test]
async fn malformed_reply_codes_are_typed_errors() {
    let _one = exclusive().await;
    for (case, reply, step, code) in [
        (
            "535 [",
            "535 [",
            Step::Authenticate,
            ErrorCode::AuthRejected,
        ),
        ("bare 5", "5", Step::Authenticate, ErrorCode::ProtocolError),
        (
            "2350",
            "2350 ok",
            Step::Authenticate,
            ErrorCode::ProtocolError,
        ),
    ] {
        let server = serve(move |mut p| async move {
            if greet_until(&mut p, false, "AUTH").await?.is_some() {
                p.send(format!("{reply}\r\n")).await?;
                p.hold().await;
            }
            Ok(())
        })
        .await;
        let (r, took) = bounded(case, 10 * SECOND, probe(&server.plain(), 2 * SECOND, false)).await;
        let e = r.result.unwrap_err();
        eprintln!("{case}: {e}");
        assert_eq!(e.step, step, "{case}: {e}");
        assert_eq!(e.error.code(), code, "{case}: {e}");
        assert!(took < 3 * SECOND, "{case}: {took:?}");
    }
}
