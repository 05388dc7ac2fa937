//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not
//! part of the supported API, no stability promise).
//!
//! Each function feeds untrusted bytes to the code that parses them in
//! production, the way the library drives it, and returns nothing: a fuzz
//! target only looks for panics, hangs, overflows and unbounded memory.
//! Invariants that must hold whatever the input are checked with
//! `assert!`, so a violation is a crash the fuzzer reports.
//!
//! | function | what it drives |
//! |---|---|
//! | [`callback_url`] | the consent redirect parser (RFC 6749 §4.1.2) and the consent error mapping |
//! | [`id_token`] | the id token claims check (`iss`, `aud`, `azp`, `email_verified`) |
//! | [`token_response`] | the `oauth2` token response parsing plus our expiry clamp and error mapping |
//! | [`sasl_challenge`] | SASL challenge (RFC 7628 §3.2.2) and initial-response decoding |
//! | [`line_reader`] | the bounded CRLF line reader under POP3 |
//! | [`sealed_envelope`] | the sealed-secret envelope decoder |
//! | [`pop3_session`], [`imap_session`], [`smtp_session`] | a whole client session (greeting, capabilities, STARTTLS refusal, authentication, reading or sending) against a loopback server that answers with the input |

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::model::{Endpoint, Secret, Security};
use crate::net::io::LineStream;
use crate::net::{ConnectOptions, Credentials, Steps, TlsSettings};
use crate::oauth::callback;
use crate::store::SealKey;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// The consent redirect: parsed as `complete()` parses it, then an `error`
/// parameter mapped as the callback maps it.
pub fn callback_url(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(cb) = callback::fuzz_parse_callback(text)
        && let Some(error) = cb
    {
        let e = callback::consent_error(&error.0, error.1.as_deref(), "user@example.com");
        assert!(!e.message().is_empty());
    }
}

/// An id token from the token endpoint. The first byte chooses the form:
/// even — the input is the whole compact token; odd — the rest is the
/// claims JSON, wrapped into a token so the JSON itself is explored.
pub fn id_token(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"none"}"#),
            b64.encode(rest)
        )
    };
    if let Ok(Some(email)) = callback::fuzz_account_of_id_token(
        &Secret::new(token),
        "https://accounts.google.com",
        "client-1",
    ) {
        assert_eq!(email, email.to_ascii_lowercase());
    }
}

/// A token endpoint answer: the first two bytes are the HTTP status (mod
/// 600), the rest the body. Goes through the `oauth2` crate's response
/// handling exactly as a refresh does, then through ours.
pub fn token_response(input: &[u8]) {
    if input.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([input[0], input[1]]) % 600;
    let body = input[2..].to_vec();
    crate::oauth::fuzz_token_response(runtime(), status, body);
}

/// A SASL challenge as the server sends it (base64 of RFC 7628 JSON), the
/// same bytes as decoded JSON, and as a client initial response.
pub fn sasl_challenge(input: &[u8]) {
    if let Ok(text) = std::str::from_utf8(input)
        && let Some(c) = crate::sasl::SaslChallenge::decode(text)
    {
        let _ = c.describe();
    }
    if let Some(c) = crate::sasl::SaslChallenge::from_json(input) {
        let d = c.describe();
        assert!(!d.contains('\n'));
    }
    let _ = crate::sasl::decode_xoauth2(input);
    let _ = crate::sasl::decode_oauthbearer(input);
    if let Ok(text) = std::str::from_utf8(input)
        && let Some(bytes) = crate::sasl::decode_base64(text)
    {
        let again = crate::sasl::encode_base64(&bytes);
        assert_eq!(
            crate::sasl::decode_base64(&again).as_deref(),
            Some(&bytes[..])
        );
    }
}

/// Delivers its bytes in chunks of the given sizes (cycled), then EOF.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The line reader: byte 0 is the line limit, bytes 1–4 the read sizes
/// (the stream is split however the network splits it), the rest the data.
/// Every line returned is within the limit and holds no LF; the reader
/// ends (EOF or too long) rather than loop.
pub fn line_reader(input: &[u8]) {
    if input.len() < 5 {
        return;
    }
    let max_line = input[0] as usize;
    let sizes: Vec<usize> = input[1..5].iter().map(|b| (*b as usize % 64) + 1).collect();
    let data = input[5..].to_vec();
    let total = data.len();
    let stream = Chunked {
        data,
        pos: 0,
        sizes,
        turn: 0,
    };
    runtime().block_on(async move {
        let mut lines = LineStream::new(stream, max_line);
        let mut consumed = 0usize;
        for _ in 0..=total {
            match lines.read_line().await {
                Ok(line) => {
                    assert!(line.len() <= max_line, "line over the limit");
                    assert!(!line.contains(&b'\n'), "LF inside a line");
                    consumed += line.len() + 1;
                    assert!(consumed <= total, "more bytes out than in");
                }
                Err(_) => return,
            }
        }
        panic!("the line reader did not end");
    });
}

/// The sealed-envelope decoder: opening arbitrary bytes fails cleanly
/// (never a panic); sealing the input and opening it gives it back, and
/// only under its own context.
pub fn sealed_envelope(input: &[u8]) {
    static KEY: OnceLock<SealKey> = OnceLock::new();
    let key = KEY.get_or_init(|| SealKey::from_bytes(&[7u8; 32]).expect("key"));
    let context = "grant:fuzz:access_token";
    if let Ok(opened) = key.open(context, input) {
        // Only a sealed value opens; the fuzzer cannot forge the tag.
        panic!("forged envelope opened ({} bytes)", opened.len());
    }
    let _ = key.open_secret(context, input);
    let sealed = key.seal(context, input).expect("seal");
    assert_eq!(&key.open(context, &sealed).expect("open")[..], input);
    assert!(key.open("grant:other:access_token", &sealed).is_err());
}

const LOOPBACK_ADDRS: u8 = 64;

/// Loopback listeners on 127.0.0.2–65, used in turn so that connections
/// left in TIME_WAIT do not exhaust the ephemeral ports.
fn listeners() -> &'static Vec<tokio::net::TcpListener> {
    static L: OnceLock<Vec<tokio::net::TcpListener>> = OnceLock::new();
    L.get_or_init(|| {
        runtime().block_on(async {
            let mut out = Vec::new();
            for i in 0..LOOPBACK_ADDRS {
                let addr = format!("127.0.0.{}:0", i + 2);
                out.push(tokio::net::TcpListener::bind(addr).await.expect("bind"));
            }
            out
        })
    })
}

/// Runs `client` against a loopback server that writes `script` and
/// closes its sending side, then reads (and drops) whatever the client sends
/// until it hangs up.
fn with_server<F, Fut>(script: &[u8], client: F)
where
    F: FnOnce(Endpoint) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    static TURN: AtomicUsize = AtomicUsize::new(0);
    let listeners = listeners();
    let listener = &listeners[TURN.fetch_add(1, Ordering::Relaxed) % listeners.len()];
    let addr = listener.local_addr().expect("addr");
    let endpoint = Endpoint::new(addr.ip().to_string(), addr.port(), Security::Plaintext);
    let script = script.to_vec();
    runtime().block_on(async move {
        let server = async {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            #[allow(deprecated)] // zero linger: no blocking, no TIME_WAIT
            let _ = conn.set_linger(Some(Duration::ZERO));
            let (mut rd, mut wr) = conn.split();
            let write = async {
                let _ = wr.write_all(&script).await;
                let _ = wr.shutdown().await;
            };
            let read = async {
                let mut sink = [0u8; 4096];
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::join!(write, read);
        };
        let limit = Duration::from_secs(20);
        let both = async { tokio::join!(server, client(endpoint)) };
        if tokio::time::timeout(limit, both).await.is_err() {
            panic!("a session against a closed server did not end within {limit:?}");
        }
    });
}

/// imap-proto and lettre panic on some malformed answers; the IMAP and
/// SMTP clients catch those panics (they become `protocol_error`). libFuzzer's panic hook
/// aborts on every panic, caught or not, so let the ones raised inside
/// imap-proto through to the client's `catch_unwind`; one that escapes it
/// still reaches libfuzzer-sys's own `catch_unwind`, which aborts.
fn tolerate_caught_parser_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("imap-proto") || l.file().contains("lettre"))
            {
                return;
            }
            previous(info)
        }));
    });
}

fn session_options() -> ConnectOptions {
    ConnectOptions::new(Duration::from_secs(5), TlsSettings::webpki())
        .with_plaintext_on_loopback(true)
}

fn oauth_credentials() -> Credentials {
    Credentials::OAuth {
        user: "user@example.com".into(),
        access_token: Secret::new("ya29.fuzz-token"),
    }
}

fn password_credentials() -> Credentials {
    Credentials::Password {
        user: "user".into(),
        password: Secret::new("fuzz-password"),
    }
}

/// A POP3 session whose server says `input[1..]`: greeting, CAPA, AUTH
/// (byte 0 even: OAuth, odd: password), STAT, LIST, UIDL, TOP, RETR, DELE,
/// QUIT, as the POP3 sync does.
pub fn pop3_session(input: &[u8]) {
    let Some((&mode, script)) = input.split_first() else {
        return;
    };
    let creds = if mode % 2 == 0 {
        oauth_credentials()
    } else {
        password_credentials()
    };
    with_server(script, |endpoint| async move {
        use crate::net::pop3::Pop3Client;
        let mut steps = Steps::new("POP3", Duration::from_secs(5));
        let Ok(mut client) =
            Pop3Client::connect(&endpoint, &session_options(), &creds, None, &mut steps).await
        else {
            return;
        };
        client.set_max_message_size(64 * 1024);
        let _ = client.stat().await;
        if let Ok(list) = client.list().await {
            assert!(list.len() <= script.len());
        }
        let _ = client.uidl().await;
        let _ = client.uidl_one(1).await;
        let _ = client.top_headers(1).await;
        if let Ok(raw) = client.retr(1).await {
            assert!(raw.len() <= script.len());
        }
        let _ = client.dele(1).await;
        let _ = client.quit().await;
    });
}

/// An IMAP session whose server says `input[1..]`: greeting, CAPABILITY,
/// AUTHENTICATE (byte 0 even: OAuth, odd: password), ENABLE, EXAMINE,
/// UID SEARCH, UID FETCH (collected and streamed), flags, LOGOUT — the
/// calls the IMAP sync makes.
pub fn imap_session(input: &[u8]) {
    let Some((&mode, script)) = input.split_first() else {
        return;
    };
    tolerate_caught_parser_panics();
    let creds = if mode % 2 == 0 {
        oauth_credentials()
    } else {
        password_credentials()
    };
    with_server(script, |endpoint| async move {
        use crate::net::imap::{ImapClient, UidRange};
        let mut steps = Steps::new("IMAP", Duration::from_secs(5));
        let Ok(mut client) =
            ImapClient::connect(&endpoint, &session_options(), &creds, None, &mut steps).await
        else {
            return;
        };
        client.set_max_message_size(64 * 1024);
        let _ = client.examine_inbox().await;
        let _ = client.uid_search("UID 1:*").await;
        if let Ok(messages) = client.uid_fetch(UidRange::from(1)).await {
            for m in &messages {
                assert!(m.raw.len() <= 64 * 1024 || m.oversized);
            }
        }
        let _ = client
            .fetch_each(
                "1:*",
                "(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER])",
                Duration::from_secs(5),
                |_attrs| Ok(()),
            )
            .await;
        let _ = client.uid_flags(UidRange::between(1, 10)).await;
        let _ = client.logout().await;
    });
}

/// An SMTP session whose server says `input[1..]`: greeting, EHLO, AUTH
/// (byte 0 even: OAuth, odd: password), MAIL/RCPT/DATA, QUIT.
pub fn smtp_session(input: &[u8]) {
    let Some((&mode, script)) = input.split_first() else {
        return;
    };
    let creds = if mode % 2 == 0 {
        oauth_credentials()
    } else {
        password_credentials()
    };
    tolerate_caught_parser_panics();
    with_server(script, |endpoint| async move {
        use crate::net::smtp::SmtpClient;
        let mut steps = Steps::new("SMTP", Duration::from_secs(5));
        let Ok(mut client) =
            SmtpClient::connect(&endpoint, &session_options(), &creds, None, &mut steps).await
        else {
            return;
        };
        let envelope = lettre::address::Envelope::new(
            Some("user@example.com".parse().expect("address")),
            vec!["rcpt@example.com".parse().expect("address")],
        )
        .expect("envelope");
        let _ = client
            .send_raw(&envelope, b"Subject: fuzz\r\n\r\nbody\r\n")
            .await;
        client.quit().await;
    });
}
