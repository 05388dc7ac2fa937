//! Hostile IMAP servers (scripted on loopback, see `hostile_support`): each
//! misbehaviour ends in a typed error, within bounded time and memory,
//! never a panic or a hang.
//!
//! - bytes injected after the STARTTLS go-ahead;
//! - STARTTLS refused (not offered), credentials never sent in plaintext;
//! - a literal larger than its RFC822.SIZE, one above the size limit, and
//!   a `{4294967295}` literal;
//! - a server trickling one byte a second: cut by the step timeout and by
//!   the fetch's overall deadline;
//! - floods of untagged and of FETCH responses, endless `+` continuations,
//!   lines over the limit, BYE inside a literal;
//! - `NO [` with no `]`.

mod hostile_support;

use std::sync::Arc;
use std::time::Duration;

use hostile_support::{
    Memory, Peer, bounded, carries_password, exclusive, opts, password, serve, tls_opts,
};
use mailsync::ErrorCode;
use mailsync::net::imap::{ImapClient, ImapMailbox, UidRange};
use mailsync::net::{StaticCredentials, Step, Steps, probe_imap};
use tokio::io::{AsyncRead, AsyncWrite};

const SECOND: Duration = Duration::from_secs(1);

/// Answers like a small, well-behaved server until the client sends a
/// command whose name starts with `stop` (upper case); returns its tag and
/// the whole line. `None`: the client hung up first.
async fn serve_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    stop: &str,
) -> std::io::Result<Option<(String, String)>> {
    while let Some(line) = p.line().await? {
        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let (tag, cmd) = (tag.to_owned(), rest.to_ascii_uppercase());
        if cmd.starts_with(stop) {
            return Ok(Some((tag, line)));
        }
        let reply = if cmd.starts_with("CAPABILITY") {
            format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("AUTHENTICATE") {
            if rest.split_whitespace().count() < 3 {
                p.send("+ \r\n").await?;
                p.expect_line().await?;
            }
            format!("{tag} OK logged in\r\n")
        } else if cmd.starts_with("EXAMINE") || cmd.starts_with("SELECT") {
            format!(
                "* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen)\r\n* OK [UIDVALIDITY 7] ok\r\n\
                 * OK [UIDNEXT 2] ok\r\n{tag} OK [READ-ONLY] done\r\n"
            )
        } else if cmd.starts_with("LOGOUT") {
            p.send(format!("* BYE bye\r\n{tag} OK done\r\n")).await?;
            return Ok(None);
        } else {
            format!("{tag} OK done\r\n")
        };
        p.send(reply).await?;
    }
    Ok(None)
}

/// Greets, then [`serve_until`].
async fn greet_until<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Peer<S>,
    stop: &str,
) -> std::io::Result<Option<(String, String)>> {
    p.send("* OK scripted IMAP ready\r\n").await?;
    serve_until(p, stop).await
}

/// A client logged in over plaintext loopback with INBOX examined.
async fn client(port: u16, timeout: Duration) -> ImapClient {
    let ep = mailsync::model::profile::Endpoint::new(
        "127.0.0.1",
        port,
        mailsync::model::profile::Security::Plaintext,
    );
    let mut steps = Steps::new("IMAP", timeout);
    let mut c = ImapClient::connect(&ep, &opts(timeout), &password(), None, &mut steps)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    c.examine_inbox().await.expect("EXAMINE");
    c
}

fn mailbox(port: u16, timeout: Duration) -> ImapMailbox {
    ImapMailbox::new(
        mailsync::model::profile::Endpoint::new(
            "127.0.0.1",
            port,
            mailsync::model::profile::Security::Plaintext,
        ),
        opts(timeout),
        Arc::new(StaticCredentials(password())),
        None,
    )
}

// ------------------------------------------------------------------ STARTTLS

/// The go-ahead and a forged untagged CAPABILITY in one write, then a real
/// TLS handshake and a server that would log anyone in: the client must
/// stop at the injected bytes, before any handshake.
#[tokio::test]
async fn bytes_injected_after_the_starttls_go_ahead_are_refused() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        let Some((tag, _)) = serve_until(&mut p, "STARTTLS").await? else {
            return Ok(());
        };
        p.send(format!(
            "{tag} OK begin TLS\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED\r\n"
        ))
        .await?;
        let mut tls = p.into_tls().await?;
        serve_until(&mut tls, "\u{0}").await?;
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "injection",
        10 * SECOND,
        probe_imap(&server.starttls(), &tls_opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Tls, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.error.message().contains("after STARTTLS"), "{e}");
    assert!(!server.saw(carries_password), "credentials were sent");
    assert!(took < 3 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "injection");
}

/// STARTTLS not offered and answered `BAD`, or refused with `NO`: a `tls`
/// error at the TLS step, and no credentials on the wire.
#[tokio::test]
async fn starttls_missing_or_refused_is_tls_and_sends_no_credentials() {
    let _one = exclusive().await;
    for answer in [
        "BAD unknown command",
        "NO [UNAVAILABLE] TLS is not available",
    ] {
        let server = serve(move |mut p| async move {
            p.send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] no TLS here\r\n")
                .await?;
            let Some((tag, _)) = serve_until(&mut p, "STARTTLS").await? else {
                return Ok(());
            };
            p.send(format!("{tag} {answer}\r\n")).await?;
            p.hold().await;
            Ok(())
        })
        .await;
        let creds = StaticCredentials(password());
        let (r, took) = bounded(
            answer,
            10 * SECOND,
            probe_imap(&server.starttls(), &opts(2 * SECOND), &creds, None),
        )
        .await;
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Tls, "{answer}: {e}");
        assert_eq!(e.error.code(), ErrorCode::Tls, "{answer}: {e}");
        assert!(e.error.message().contains("refused STARTTLS"), "{e}");
        assert!(!server.saw(carries_password), "{answer}: credentials sent");
        assert!(
            !server.saw(|l| l.contains("LOGIN") || l.contains("AUTHENTICATE")),
            "{answer}: a login was attempted"
        );
        assert!(took < 3 * SECOND, "{answer}: {took:?}");
    }
}

// ------------------------------------------------------------------ literals

/// RFC822.SIZE says 100 bytes, the literal brings 200,000: refused, both
/// by `uid_fetch` (sizes first, bodies next) and by `fetch_attrs` (size and
/// body in one response, as the engine fetches).
#[tokio::test]
async fn a_literal_larger_than_its_rfc822_size_is_a_protocol_error() {
    let _one = exclusive().await;
    let date = "01-Jan-2030 00:00:00 +0000";
    let server = serve(move |mut p| async move {
        p.send("* OK ready\r\n").await?;
        while let Some((tag, line)) = serve_until(&mut p, "UID FETCH").await? {
            if line.contains("BODY.PEEK[]") {
                let size = if line.contains("RFC822.SIZE") {
                    "RFC822.SIZE 100 "
                } else {
                    ""
                };
                p.send(format!("* 1 FETCH (UID 1 {size}BODY[] {{200000}}\r\n"))
                    .await?;
                p.flood(b"", b'x', Some(200_000)).await;
                p.send(format!(")\r\n{tag} OK done\r\n")).await?;
            } else {
                p.send(format!(
                    "* 1 FETCH (UID 1 RFC822.SIZE 100 INTERNALDATE \"{date}\" FLAGS ())\r\n\
                     {tag} OK done\r\n"
                ))
                .await?;
            }
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (e, _) = bounded("uid_fetch", 10 * SECOND, async {
        client(server.port, 2 * SECOND)
            .await
            .uid_fetch(UidRange::from(1))
            .await
            .unwrap_err()
    })
    .await;
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("RFC822.SIZE it gave as 100"), "{e}");
    let (e, _) = bounded("fetch_attrs", 10 * SECOND, async {
        mailbox(server.port, 2 * SECOND)
            .fetch_attrs("1", "(UID RFC822.SIZE BODY.PEEK[])", 5 * SECOND)
            .await
            .unwrap_err()
    })
    .await;
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("RFC822.SIZE it gave as 100"), "{e}");
    mem.assert_below_mib(8, "larger than RFC822.SIZE");
}

/// With a 1 MiB limit, a literal announced at 8 MiB is refused when it is
/// announced: the 8 MiB that follow are never buffered.
#[tokio::test]
async fn a_literal_above_the_size_limit_is_refused_when_announced() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if let Some((_, _)) = serve_until(&mut p, "UID FETCH").await? {
            p.flood(
                b"* 1 FETCH (UID 1 RFC822.SIZE 1000 BODY[] {8388608}\r\n",
                b'x',
                Some(8 * 1024 * 1024),
            )
            .await;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let mut mb = mailbox(server.port, 2 * SECOND);
    mb.set_max_message_size(1024 * 1024);
    mb.status().await.expect("EXAMINE");
    let mem = Memory::start();
    let (r, took) = bounded(
        "8 MiB literal",
        10 * SECOND,
        mb.fetch_attrs("1", "(UID RFC822.SIZE BODY.PEEK[])", 5 * SECOND),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("literal of 8388608 bytes"), "{e}");
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(2, "8 MiB literal");
}

/// `{4294967295}`: in a FETCH response and in the CAPABILITY answer. Refused
/// at once, nothing reserved for it.
#[tokio::test]
async fn a_4294967295_byte_literal_is_refused_at_once() {
    let _one = exclusive().await;
    let in_fetch = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "UID FETCH").await?.is_some() {
            p.send("* 1 FETCH (UID 1 BODY[] {4294967295}\r\nxxxx")
                .await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let mut c = client(in_fetch.port, 2 * SECOND).await;
    let (r, took) = bounded("fetch", 10 * SECOND, c.uid_fetch(UidRange::from(1))).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("literal of 4294967295 bytes"), "{e}");
    assert!(took < SECOND, "{took:?}");
    mem.assert_below_mib(2, "u32::MAX literal in FETCH");

    let in_capability = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if let Some((tag, _)) = serve_until(&mut p, "CAPABILITY").await? {
            p.send(format!(
                "* CAPABILITY {{4294967295}}\r\nIMAP4rev1\r\n{tag} OK\r\n"
            ))
            .await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, _) = bounded(
        "capability",
        10 * SECOND,
        probe_imap(&in_capability.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Capabilities, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    mem.assert_below_mib(2, "u32::MAX literal in CAPABILITY");
}

// ------------------------------------------------------------------ trickle

/// The greeting at one byte a second: the greeting step's timeout (2 s).
#[tokio::test]
async fn a_greeting_trickled_one_byte_a_second_times_out() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.trickle(b"* OK a very slow server is ready\r\n").await;
        Ok(())
    })
    .await;
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "greeting",
        10 * SECOND,
        probe_imap(&server.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::Timeout, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
}

/// A body at one byte a second never lets the inactivity timeout (10 s)
/// fire; the fetch's overall deadline (2 s) cuts it.
#[tokio::test]
async fn a_body_trickled_one_byte_a_second_is_cut_by_the_deadline() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "UID FETCH").await?.is_some() {
            p.send("* 1 FETCH (UID 1 BODY[] {100}\r\n").await?;
            p.trickle(&[b'x'; 100]).await;
        }
        Ok(())
    })
    .await;
    let mut mb = mailbox(server.port, 10 * SECOND);
    mb.status().await.expect("EXAMINE");
    let (r, took) = bounded(
        "trickled body",
        8 * SECOND,
        mb.fetch_attrs("1", "(UID BODY.PEEK[])", 2 * SECOND),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(e.message().contains("deadline"), "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
    assert_eq!(mb.reconnects(), 0, "a timed-out fetch is not repeated");
}

// ------------------------------------------------------------------ floods

/// Untagged responses without end after EXAMINE: the command's timeout, and
/// nothing piles up meanwhile.
#[tokio::test]
async fn a_flood_of_untagged_responses_times_out_in_bounded_memory() {
    let _one = exclusive().await;
    for unit in [
        &b"* OK [ALERT] flood\r\n"[..],
        b"* 1 EXISTS\r\n* 1 RECENT\r\n",
    ] {
        let server = serve(move |mut p| async move {
            p.send("* OK ready\r\n").await?;
            if serve_until(&mut p, "EXAMINE").await?.is_some() {
                p.repeat(unit).await;
            }
            Ok(())
        })
        .await;
        let ep = server.plain();
        let mem = Memory::start();
        let (r, took) = bounded("untagged flood", 10 * SECOND, async {
            let mut steps = Steps::new("IMAP", 2 * SECOND);
            let mut c = ImapClient::connect(&ep, &opts(2 * SECOND), &password(), None, &mut steps)
                .await
                .unwrap();
            c.examine_inbox().await
        })
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
        assert!(took < 3 * SECOND, "{took:?}");
        mem.assert_below_mib(16, "untagged flood");
    }
}

/// FETCH responses for messages never asked for, without end: `uid_fetch`
/// gives up after a bounded number, `fetch_attrs` at its deadline; neither
/// collects them.
#[tokio::test]
async fn a_flood_of_fetch_responses_is_cut_in_bounded_memory() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "UID FETCH").await?.is_some() {
            // Not in the requested set (1:5 / 1), with a small body each.
            p.repeat(b"* 9 FETCH (UID 9 RFC822.SIZE 4 BODY[] {4}\r\nxxxx)\r\n")
                .await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (r, took) = bounded("uid_fetch flood", 20 * SECOND, async {
        client(server.port, 2 * SECOND)
            .await
            .uid_fetch(UidRange::between(1, 5))
            .await
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("not asked for"), "{e}");
    eprintln!("uid_fetch flood cut after {took:?}");
    mem.assert_below_mib(16, "uid_fetch flood");

    let mut mb = mailbox(server.port, 2 * SECOND);
    mb.status().await.expect("EXAMINE");
    let mem = Memory::start();
    let (r, took) = bounded(
        "fetch_attrs flood",
        10 * SECOND,
        mb.fetch_attrs("1", "(UID RFC822.SIZE BODY.PEEK[])", 2 * SECOND),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(took < 3 * SECOND, "{took:?}");
    mem.assert_below_mib(16, "fetch_attrs flood");
}

/// `+` after `+` in answer to AUTHENTICATE: given up after a few rounds
/// (as POP3 and SMTP); the credentials went out once.
#[tokio::test]
async fn endless_continuations_are_a_protocol_error() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "AUTHENTICATE").await?.is_some() {
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
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, took) = bounded(
        "continuations",
        10 * SECOND,
        probe_imap(&server.plain(), &opts(2 * SECOND), &creds, None),
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
    mem.assert_below_mib(16, "continuations");
}

/// A 9 MiB greeting line, and an EXAMINE answer that is one line without
/// end: both over the 8 MiB line limit.
#[tokio::test]
async fn lines_over_the_limit_are_protocol_errors_in_bounded_memory() {
    let _one = exclusive().await;
    let long_greeting = serve(|mut p| async move {
        p.flood(b"* OK ", b'a', Some(9 * 1024 * 1024)).await;
        p.send("\r\n").await?;
        p.hold().await;
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let creds = StaticCredentials(password());
    let (r, _) = bounded(
        "long greeting",
        10 * SECOND,
        probe_imap(&long_greeting.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.error.message().contains("line longer than"), "{e}");
    mem.assert_below_mib(40, "long greeting");

    let endless = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "EXAMINE").await?.is_some() {
            p.flood(b"* OK ", b'a', None).await;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let (r, took) = bounded("endless line", 10 * SECOND, async {
        let mut steps = Steps::new("IMAP", 5 * SECOND);
        let mut c = ImapClient::connect(
            &endless.plain(),
            &opts(5 * SECOND),
            &password(),
            None,
            &mut steps,
        )
        .await
        .unwrap();
        c.examine_inbox().await
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(e.message().contains("line longer than"), "{e}");
    assert!(
        took < 5 * SECOND,
        "ended by the limit, not the timeout: {took:?}"
    );
    mem.assert_below_mib(40, "endless line");
}

/// `* BYE` where the literal's bytes should be, then the connection ends:
/// the literal swallows the BYE, and the session is lost (`network`).
#[tokio::test]
async fn bye_inside_a_literal_is_a_lost_connection() {
    let _one = exclusive().await;
    let server = serve(|mut p| async move {
        p.send("* OK ready\r\n").await?;
        if serve_until(&mut p, "UID FETCH").await?.is_some() {
            p.send("* 1 FETCH (UID 1 BODY[] {1000}\r\nSubject: x\r\n\r\n* BYE shutting down\r\n")
                .await?;
        }
        Ok(())
    })
    .await;
    let mem = Memory::start();
    let mut c = client(server.port, 2 * SECOND).await;
    let (r, took) = bounded(
        "BYE in a literal",
        10 * SECOND,
        c.uid_fetch(UidRange::from(1)),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Network, "{e}");
    assert!(c.is_broken());
    assert!(took < 2 * SECOND, "{took:?}");
    mem.assert_below_mib(4, "BYE in a literal");
}

// ------------------------------------------------------------------ brackets

/// `NO [` / `BAD [` / `BYE [` with no `]`: to AUTHENTICATE, in the greeting
/// and to STARTTLS. Typed errors, no panic.
#[tokio::test]
async fn a_response_code_without_its_closing_bracket_is_a_typed_error() {
    let _one = exclusive().await;
    let creds = StaticCredentials(password());
    for (case, reply, step, code) in [
        (
            "NO [ to AUTHENTICATE",
            "NO [",
            Step::Authenticate,
            ErrorCode::AuthRejected,
        ),
        (
            "NO [ALERT to AUTHENTICATE",
            "NO [ALERT",
            Step::Authenticate,
            ErrorCode::AuthRejected,
        ),
        (
            "BAD [ to AUTHENTICATE",
            "BAD [",
            Step::Authenticate,
            ErrorCode::ProtocolError,
        ),
    ] {
        let server = serve(move |mut p| async move {
            if let Some((tag, _)) = greet_until(&mut p, "AUTHENTICATE").await? {
                p.send(format!("{tag} {reply}\r\n")).await?;
                p.hold().await;
            }
            Ok(())
        })
        .await;
        let (r, took) = bounded(
            case,
            10 * SECOND,
            probe_imap(&server.plain(), &opts(2 * SECOND), &creds, None),
        )
        .await;
        let e = r.result.unwrap_err();
        eprintln!("{case}: {e}");
        assert_eq!(e.step, step, "{case}: {e}");
        assert_eq!(e.error.code(), code, "{case}: {e}");
        assert!(took < 3 * SECOND, "{case}: {took:?}");
    }
    let bye = serve(|mut p| async move {
        p.send("* BYE [\r\n").await?;
        p.hold().await;
        Ok(())
    })
    .await;
    let (r, _) = bounded(
        "BYE [",
        10 * SECOND,
        probe_imap(&bye.plain(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    eprintln!("BYE [: {e}");
    assert_eq!(e.step, Step::Greeting, "{e}");
    assert_eq!(e.error.code(), ErrorCode::ServerUnavailable, "{e}");
    let starttls = serve(|mut p| async move {
        if let Some((tag, _)) = greet_until(&mut p, "STARTTLS").await? {
            p.send(format!("{tag} NO [\r\n")).await?;
            p.hold().await;
        }
        Ok(())
    })
    .await;
    let (r, _) = bounded(
        "STARTTLS NO [",
        10 * SECOND,
        probe_imap(&starttls.starttls(), &opts(2 * SECOND), &creds, None),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(e.step, Step::Tls, "{e}");
    assert_eq!(e.error.code(), ErrorCode::Tls, "{e}");
}

// ------------------------------------------------------------------ garbage

/// Responses the IMAP parser cannot read (an HTTP answer, and a 1 MiB line
/// of junk): `protocol_error`, with a short message (not the server's whole
/// line).
#[tokio::test]
async fn garbage_is_a_protocol_error_with_a_short_message() {
    let _one = exclusive().await;
    let creds = StaticCredentials(password());
    for (case, greeting) in [
        ("HTTP", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        (
            "junk",
            [&b"\x01"[..], &[b'j'; 1024 * 1024], b"\r\n"].concat(),
        ),
    ] {
        let server = serve(move |mut p| {
            let greeting = greeting.clone();
            async move {
                p.send(greeting).await?;
                p.hold().await;
                Ok(())
            }
        })
        .await;
        let (r, took) = bounded(
            case,
            10 * SECOND,
            probe_imap(&server.plain(), &opts(2 * SECOND), &creds, None),
        )
        .await;
        let e = r.result.unwrap_err();
        assert_eq!(e.step, Step::Greeting, "{case}: {e}");
        assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{case}: {e}");
        assert!(
            e.error.message().len() < 300,
            "{case}: {}",
            &e.error.message()[..300]
        );
        assert!(took < SECOND, "{case}: {took:?}");
    }
}
