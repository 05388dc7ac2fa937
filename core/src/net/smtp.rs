//! SMTP submission on lettre's `AsyncSmtpConnection`, with our TLS and SASL.
//!
//! * Implicit TLS (465-style, [`Security::Tls`]): we open TCP and do the TLS
//!   handshake with [`TlsSettings`](super::TlsSettings) ourselves, then hand
//!   the encrypted stream to lettre.
//! * STARTTLS (587-style): the plaintext part — greeting, `EHLO`,
//!   `STARTTLS` and its `220` — is read here, line by line, on the raw
//!   stream; anything the server sent after that `220` is refused
//!   (`protocol_error`) instead of being read later as a reply that came
//!   over TLS (STARTTLS command injection, CVE-2011-0411 and kin). Then we
//!   do the handshake (same trust as implicit TLS; verification cannot be
//!   turned off) and hand lettre the TLS stream.
//! * EHLO is read raw so every advertised mechanism is seen (lettre itself
//!   only knows PLAIN, LOGIN and XOAUTH2).
//! * Authentication is done here, not by lettre, for all four mechanisms:
//!   lettre's XOAUTH2 fails with "does not expect a challenge" when the
//!   server sends the error challenge (`334 <base64 JSON>`), leaving the
//!   exchange half-open. We decode the challenge, answer it (empty line for
//!   XOAUTH2, `AQ==` for OAUTHBEARER) and report `auth_rejected` with its
//!   status. OAUTHBEARER is therefore supported too.
//! * [`SmtpClient::transaction`] drives `MAIL`/`RCPT`/`DATA` one command at
//!   a time, so each recipient's reply is seen, and tells a connection lost
//!   after the end of the data (the server may have taken the message) from
//!   one lost before. Data always goes out with CRLF line endings: a bare
//!   CR or LF is sent as CRLF, so a `\n.\r\n` inside a message cannot end
//!   it early on a server that takes a bare LF as a line end.
//!
//! Reply mapping keeps the server's code and enhanced status in the message:
//! during AUTH, 535 → `auth_rejected`, 454/4xx → `server_unavailable`,
//! 504 → `mechanism_unsupported`, 530/538 → `insecure_connection`; while
//! sending, 4xx → `send_deferred`, 5xx → `send_rejected`.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::{LineStream, MailStream};
use super::{
    ConnectOptions, Credentials, Step, StepError, Steps, check_plaintext_allowed, choose_mechanism,
    open, tls_handshake, with_timeout,
};
use crate::error::{Error, ErrorCode, Result};
use crate::model::profile::{Endpoint, Security};
use crate::sasl::{self, Mechanism, SaslChallenge, SaslResponse};
use crate::sync::RecipientRefusal;

const PROTO: &str = "SMTP";

impl AsyncTokioStream for MailStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            MailStream::Plain(s) => s.peer_addr(),
            MailStream::Tls(s) => s.get_ref().0.tcp().peer_addr(),
        }
    }
}

/// A raw SMTP command line (may carry a secret: zeroized, never displayed
/// in Debug).
struct RawLine(zeroize::Zeroizing<String>);

impl fmt::Display for RawLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0.as_str())
    }
}

/// An authenticated SMTP submission session.
pub struct SmtpClient {
    conn: AsyncSmtpConnection,
    timeout: std::time::Duration,
    mechanism: Mechanism,
    extensions: Vec<String>,
    encrypted: bool,
    /// What went out on the wire, to tell whether the end of the data did.
    written: Arc<WriteLog>,
    /// The connection failed or the server closed it: no more commands.
    broken: bool,
}

impl fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpClient")
            .field("mechanism", &self.mechanism)
            .field("extensions", &self.extensions)
            .field("encrypted", &self.encrypted)
            .finish()
    }
}

/// "535 5.7.8 Error: authentication failed" from a lettre error.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    match e.status() {
        Some(code) => format!("{code} {detail}").trim().to_owned(),
        None => e.to_string(),
    }
}

fn code_of(e: &lettre::transport::smtp::Error) -> Option<u16> {
    e.status().and_then(|c| c.to_string().parse().ok())
}

/// Classifies a lettre error that is not a reply (I/O, TLS, parse).
fn transport_error(e: &lettre::transport::smtp::Error, host: &str) -> Error {
    // Find a rustls error or an io::Error in the chain.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Error::new(ErrorCode::Tls, super::tls::describe_rustls_error(tls, host));
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref()
                && let Some(tls) = inner.downcast_ref::<rustls::Error>()
            {
                return Error::new(ErrorCode::Tls, super::tls::describe_rustls_error(tls, host));
            }
            if let Some(limit) = io.get_ref().and_then(|i| i.downcast_ref::<ReplyLimit>()) {
                return Error::new(
                    ErrorCode::ProtocolError,
                    format!("{limit}; the session was closed"),
                );
            }
            return super::io_error(PROTO, io);
        }
        src = s.source();
    }
    if e.is_tls() {
        Error::new(ErrorCode::Tls, format!("SMTP TLS failed: {e}"))
    } else if e.is_response() {
        Error::new(
            ErrorCode::ProtocolError,
            format!("SMTP: malformed reply: {e}"),
        )
    } else {
        Error::new(ErrorCode::Network, format!("SMTP: {e}"))
    }
}

/// Classifies an error of the AUTH exchange.
///
/// A rejected token always gets the `334` JSON error challenge first; a
/// `535` to an OAuth login *without* it means the server could not check the
/// token (Postfix + Dovecot when the provider is unreachable), which is
/// transient: `server_unavailable`.
fn auth_reply_error(
    e: &lettre::transport::smtp::Error,
    host: &str,
    challenge: Option<&SaslChallenge>,
    oauth: bool,
) -> Error {
    let Some(code) = code_of(e) else {
        return transport_error(e, host);
    };
    let text = reply_text(e);
    let what = challenge
        .map(|c| format!(" ({})", c.describe()))
        .unwrap_or_default();
    match code {
        504 => Error::new(
            ErrorCode::MechanismUnsupported,
            format!("the SMTP server does not accept this mechanism: {text}"),
        ),
        530 | 538 => Error::new(
            ErrorCode::InsecureConnection,
            format!("the SMTP server requires encryption first: {text}"),
        ),
        400..=499 => Error::new(
            ErrorCode::ServerUnavailable,
            format!("the SMTP server could not authenticate now: {text}"),
        ),
        535 if oauth && challenge.is_none() => Error::new(
            ErrorCode::ServerUnavailable,
            format!(
                "the SMTP server refused the token without its error challenge, so it could not check it now: {text}"
            ),
        ),
        _ => Error::new(
            ErrorCode::AuthRejected,
            format!("the SMTP server rejected the credentials{what}: {text}"),
        ),
    }
}

/// Classifies an error of MAIL/RCPT/DATA.
fn send_error(e: &lettre::transport::smtp::Error, host: &str) -> Error {
    match code_of(e) {
        Some(code @ 400..=499) => Error::new(
            ErrorCode::SendDeferred,
            format!(
                "the SMTP server deferred the message ({code}): {}",
                reply_text(e)
            ),
        ),
        Some(code @ 500..=599) => Error::new(
            ErrorCode::SendRejected,
            format!(
                "the SMTP server refused the message ({code}): {}",
                reply_text(e)
            ),
        ),
        // A message the client itself cannot send here (e.g. non-ASCII
        // envelope addresses without SMTPUTF8): permanent, never retried.
        _ if e.is_client() => Error::new(
            ErrorCode::SendRejected,
            format!("the message cannot be sent through this server: {e}"),
        ),
        _ => transport_error(e, host),
    }
}

fn auth_mechanisms(extensions: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for l in extensions {
        let upper = l.to_ascii_uppercase();
        let rest = upper
            .strip_prefix("AUTH ")
            .or_else(|| upper.strip_prefix("AUTH="));
        if let Some(rest) = rest {
            for m in rest.split_whitespace() {
                if !out.iter().any(|x| x == m) {
                    out.push(m.to_owned());
                }
            }
        }
    }
    out
}

impl SmtpClient {
    /// Connects, secures the connection per the endpoint, reads EHLO and
    /// authenticates; each step is recorded in `steps`.
    ///
    /// Mechanism choice: `preferred` if EHLO lists it, else XOAUTH2 then
    /// OAUTHBEARER for OAuth credentials, PLAIN then LOGIN for passwords.
    pub async fn connect(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        steps: &mut Steps,
    ) -> Result<SmtpClient, StepError> {
        // lettre 0.11 panics on an EHLO line of only spaces (found by the
        // smtp_session fuzz target): a server must not crash the host.
        use futures::FutureExt as _;
        let connecting = Self::connect_unguarded(endpoint, opts, creds, preferred, steps);
        match std::panic::AssertUnwindSafe(connecting)
            .catch_unwind()
            .await
        {
            Ok(done) => done,
            Err(_) => Err(StepError::new(
                Step::Ehlo,
                Error::new(
                    ErrorCode::ProtocolError,
                    "the SMTP server sent an EHLO answer the SMTP client cannot read",
                ),
            )),
        }
    }

    async fn connect_unguarded(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        steps: &mut Steps,
    ) -> Result<SmtpClient, StepError> {
        let host = endpoint.host.clone();
        let hello = ClientId::default();
        let stream = open(endpoint, opts, steps).await?;
        let mut encrypted = stream.is_encrypted();
        let written = Arc::new(WriteLog::default());
        let connect = |stream: MailStream, greeting: &[u8]| {
            let wire = Wire {
                stream,
                greeting: greeting.to_vec(),
                read: 0,
                written: written.clone(),
                limits: ReplyLimits::default(),
            };
            let hello = hello.clone();
            let host = host.clone();
            async move {
                AsyncSmtpConnection::connect_with_transport(Box::new(wire), &hello)
                    .await
                    .map_err(|e| match code_of(&e) {
                        Some(_) => Error::new(
                            ErrorCode::ServerUnavailable,
                            format!("the SMTP server refused the session: {}", reply_text(&e)),
                        ),
                        None => transport_error(&e, &host),
                    })
            }
        };
        // STARTTLS: the plaintext exchange is ours; lettre starts over TLS,
        // where the server sends no new greeting, so it reads ours.
        let (conn, tls) = if endpoint.security == Security::StartTls {
            let tls = starttls(stream, endpoint, opts, &hello, steps).await?;
            encrypted = true;
            (None, Some(tls))
        } else {
            let conn = steps.run(Step::Greeting, connect(stream, b"")).await?;
            (Some(conn), None)
        };
        let (mut conn, extensions) = steps
            .run_detailed(Step::Ehlo, async {
                let mut conn = match (conn, tls) {
                    (Some(conn), _) => conn,
                    (None, Some(tls)) => connect(tls, AFTER_STARTTLS).await?,
                    (None, None) => {
                        return Err(Error::new(ErrorCode::Internal, "no SMTP connection"));
                    }
                };
                let resp = conn
                    .command(Ehlo::new(hello.clone()))
                    .await
                    .map_err(|e| transport_error(&e, &host))?;
                let ext: Vec<String> = resp.message().skip(1).map(str::to_owned).collect();
                let d = ext.join(" | ");
                Ok(((conn, ext), Some(d)))
            })
            .await?;
        let offered_names = auth_mechanisms(&extensions);
        let offered: Vec<Mechanism> = offered_names
            .iter()
            .filter_map(|n| Mechanism::parse(n))
            .collect();
        let mechanism = choose_mechanism(PROTO, &offered, &offered_names, creds, preferred)
            .map_err(|error| StepError::new(Step::Ehlo, error))?;
        check_plaintext_allowed(encrypted, endpoint, creds, opts.allow_plaintext_on_loopback)
            .map_err(|error| StepError::new(Step::Authenticate, error))?;
        steps
            .run_detailed(Step::Authenticate, async {
                authenticate(&mut conn, mechanism, creds, endpoint).await?;
                Ok(((), Some(mechanism.to_string())))
            })
            .await?;
        Ok(SmtpClient {
            conn,
            timeout: opts.timeout,
            mechanism,
            extensions,
            encrypted,
            written,
            broken: false,
        })
    }

    /// The mechanism that authenticated the session.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The EHLO extension lines (after STARTTLS, the post-upgrade ones).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// Sends a raw RFC 5322 message to the envelope's recipients. Returns
    /// the server's final reply (e.g. `250 2.0.0 Ok: queued as …`).
    pub async fn send_raw(&mut self, envelope: &Envelope, raw: &[u8]) -> Result<String> {
        let raw = normalize_line_endings(raw);
        let raw = data_without_last_crlf(&raw);
        let conn = &mut self.conn;
        let resp = with_timeout(self.timeout, Step::Send, PROTO, async {
            conn.send(envelope, raw)
                .await
                .map_err(|e| send_error(&e, "the SMTP server"))
        })
        .await?;
        Ok(response_text(&resp))
    }

    /// Sends a lettre message to the recipients of its own envelope.
    pub async fn send_message(&mut self, message: &lettre::Message) -> Result<String> {
        let envelope = message.envelope().clone();
        let raw = message.formatted();
        self.send_raw(&envelope, &raw).await
    }

    /// `QUIT` (errors ignored: the session is over either way).
    pub async fn quit(&mut self) {
        let conn = &mut self.conn;
        let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
    }
}

/// What lettre reads as the greeting after our STARTTLS: over TLS the
/// server sends none (it waits for EHLO), and lettre always reads one
/// before its EHLO. Made here, never taken from the wire.
const AFTER_STARTTLS: &[u8] = b"220 TLS established (mailsync)\r\n";

/// The longest SMTP reply line we read before TLS (RFC 5321 §4.5.3.1.5
/// says 512; servers send longer ones).
const MAX_REPLY_LINE: usize = 4096;

/// How many lines one reply may have.
const MAX_REPLY_LINES: usize = 100;

/// Bytes written to the server: how many, and the last five, so a failure
/// after the end-of-data marker (`CRLF . CRLF`) can be told from one before.
#[derive(Debug, Default)]
struct WriteLog {
    inner: Mutex<(u64, [u8; 5])>,
}

impl WriteLog {
    fn record(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 += bytes.len() as u64;
        for &b in bytes.iter().rev().take(5).rev() {
            inner.1.rotate_left(1);
            inner.1[4] = b;
        }
    }

    fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Whether the last bytes written since `mark` end the data.
    fn ended_data_since(&self, mark: u64) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 >= mark + 5 && &inner.1 == b"\r\n.\r\n"
    }
}

/// The longest reply line lettre reads, CRLF included (its own limit, which
/// [`Wire`] enforces before lettre buffers the line).
const WIRE_MAX_LINE: usize = 1000;

/// The limits on what an SMTP server sends lettre, checked as the bytes
/// arrive: lettre buffers a reply line until its line feed and parses a
/// multi-line reply again after each line (up to 100 kB), so a hostile
/// server could make it buffer without bound or burn CPU where no timeout
/// can cut in.
#[derive(Debug, Default)]
struct ReplyLimits {
    /// Bytes of the current line so far.
    line_len: usize,
    /// Its first four bytes (`250-`: more lines follow).
    head: [u8; 4],
    /// Lines of the current reply so far.
    reply_lines: usize,
    /// The limit broken, if one was: every later read fails the same way.
    broken: Option<&'static str>,
}

impl ReplyLimits {
    fn check(&mut self, bytes: &[u8]) -> std::result::Result<(), &'static str> {
        for &b in bytes {
            if self.line_len < 4 {
                self.head[self.line_len] = b;
            }
            self.line_len += 1;
            if b == b'\n' {
                let continued = self.line_len > 4 && self.head[3] == b'-';
                self.reply_lines = if continued { self.reply_lines + 1 } else { 0 };
                self.line_len = 0;
                if self.reply_lines >= MAX_REPLY_LINES {
                    return Err("a reply of more than 100 lines");
                }
            } else if self.line_len > WIRE_MAX_LINE {
                return Err("a reply line longer than 1000 bytes");
            }
        }
        Ok(())
    }
}

/// The io error [`Wire`] fails a read with when the server broke a
/// [`ReplyLimits`] limit; [`transport_error`] makes it `protocol_error`.
#[derive(Debug)]
struct ReplyLimit(&'static str);

impl std::fmt::Display for ReplyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the SMTP server sent {}", self.0)
    }
}

impl std::error::Error for ReplyLimit {}

/// The stream handed to lettre: the connection, the greeting lettre reads
/// after our STARTTLS, the log of what went out, and the limits on what
/// comes in.
#[derive(Debug)]
struct Wire {
    stream: MailStream,
    greeting: Vec<u8>,
    read: usize,
    written: Arc<WriteLog>,
    limits: ReplyLimits,
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.read < me.greeting.len() {
            let rest = &me.greeting[me.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            me.read += n;
            return Poll::Ready(Ok(()));
        }
        let refused =
            |limit| std::io::Error::new(std::io::ErrorKind::InvalidData, ReplyLimit(limit));
        if let Some(limit) = me.limits.broken {
            return Poll::Ready(Err(refused(limit)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && let Err(limit) = me.limits.check(&buf.filled()[before..])
        {
            // Nothing of it reaches lettre.
            buf.set_filled(before);
            me.limits.broken = Some(limit);
            return Poll::Ready(Err(refused(limit)));
        }
        polled
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            me.written.record(&buf[..*n]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Wire {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

/// Reads one (multi-line) reply: its code and the text of each line.
async fn read_reply(lines: &mut LineStream<MailStream>) -> Result<(u16, Vec<String>)> {
    let mut texts = Vec::new();
    loop {
        let line = lines.read_line().await.map_err(|e| e.into_error(PROTO))?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok());
        let (Some(code), Some(sep)) = (code, text.as_bytes().get(3).copied().or(Some(b' '))) else {
            return Err(Error::new(
                ErrorCode::ProtocolError,
                format!("malformed SMTP reply: {}", truncated(&text)),
            ));
        };
        texts.push(text.get(4..).unwrap_or("").to_owned());
        match sep {
            b' ' => return Ok((code, texts)),
            b'-' if texts.len() < MAX_REPLY_LINES => {}
            _ => {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("malformed SMTP reply: {}", truncated(&text)),
                ));
            }
        }
    }
}

fn truncated(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The plaintext part of STARTTLS, done on the raw stream: greeting,
/// `EHLO`, `STARTTLS`, its `220`, then the TLS handshake. Bytes the server
/// sent after that `220` would be read as replies sent over TLS: refused.
async fn starttls(
    stream: MailStream,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    hello: &ClientId,
    steps: &mut Steps,
) -> Result<MailStream, StepError> {
    let mut lines = LineStream::new(stream, MAX_REPLY_LINE);
    let extensions = steps
        .run(Step::Greeting, async {
            let (code, text) = read_reply(&mut lines).await?;
            if code != 220 {
                return Err(Error::new(
                    ErrorCode::ServerUnavailable,
                    format!(
                        "the SMTP server refused the session: {code} {}",
                        text.join(" ")
                    ),
                ));
            }
            lines
                .write_all(Ehlo::new(hello.clone()).to_string().as_bytes())
                .await
                .map_err(|e| super::io_error(PROTO, &e))?;
            let (code, text) = read_reply(&mut lines).await?;
            if code != 250 {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("the SMTP server refused EHLO: {code} {}", text.join(" ")),
                ));
            }
            Ok(text)
        })
        .await?;
    steps
        .run(Step::Tls, async {
            let offered = extensions.iter().skip(1).any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
            });
            if !offered {
                return Err(Error::new(
                    ErrorCode::Tls,
                    format!(
                        "the SMTP server at {}:{} does not offer STARTTLS",
                        endpoint.host, endpoint.port
                    ),
                ));
            }
            lines
                .write_all(b"STARTTLS\r\n")
                .await
                .map_err(|e| super::io_error(PROTO, &e))?;
            let (code, text) = read_reply(&mut lines).await?;
            if code != 220 {
                return Err(Error::new(
                    ErrorCode::Tls,
                    format!("the SMTP server refused STARTTLS: {code} {}", text.join(" ")),
                ));
            }
            if lines.buffered() > 0 {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!(
                        "the SMTP server at {}:{} sent {} byte(s) after its 220 to STARTTLS, before the TLS \
                         handshake; refusing them (they would be taken for replies sent over TLS)",
                        endpoint.host,
                        endpoint.port,
                        lines.buffered()
                    ),
                ));
            }
            let MailStream::Plain(tcp) = lines.into_inner() else {
                return Err(Error::new(ErrorCode::Internal, "STARTTLS on a TLS stream"));
            };
            let tls = tls_handshake(tcp, &endpoint.host, &opts.tls).await?;
            Ok(MailStream::Tls(Box::new(tls)))
        })
        .await
}

/// The data with every bare CR and bare LF turned into CRLF.
pub(crate) fn normalize_line_endings(data: &[u8]) -> Cow<'_, [u8]> {
    let bare = data.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => data.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => false,
    });
    if !bare {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// lettre ends the data with `CRLF . CRLF`; a message that already ends
/// with CRLF would otherwise gain an empty last line.
fn data_without_last_crlf(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\r\n").unwrap_or(data)
}

/// Where in a transaction the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStage {
    /// `MAIL FROM`.
    MailFrom,
    /// `RCPT TO` (see the refused recipients).
    RcptTo,
    /// The `DATA` command.
    Data,
    /// The end of the data (`CRLF . CRLF`).
    EndOfData,
}

/// How one SMTP transaction ended ([`SmtpClient::transaction`]).
#[derive(Debug)]
pub enum Transaction {
    /// The server accepted the message: its reply to the end of the data.
    Accepted {
        /// E.g. `250 2.0.0 Ok: queued as 4Xc1`.
        reply: String,
        /// Recipients it refused while taking the others (partial sends).
        refused: Vec<RecipientRefusal>,
    },
    /// The server refused it (4xx or 5xx); the connection can go on
    /// unless [`SmtpClient::is_broken`].
    Refused {
        /// Where.
        stage: SmtpStage,
        /// The reply code (for recipients: the first 5xx, else the first 4xx).
        code: u16,
        /// The reply.
        reply: String,
        /// Refused recipients, one by one.
        refused: Vec<RecipientRefusal>,
    },
    /// The message cannot go through this server as it is (e.g. 8-bit data
    /// and no `8BITMIME`); nothing was sent.
    Unsendable(Error),
    /// The connection failed (network, timeout, malformed reply) and is
    /// unusable. `after_data`: the end of the data had gone out, so the
    /// server may have accepted the message.
    Broken {
        /// What failed.
        error: Error,
        /// Whether the end-of-data marker had been written.
        after_data: bool,
    },
}

/// One command's outcome.
enum Reply {
    Positive,
    Negative(u16, String),
    Broken(Error),
}

impl SmtpClient {
    /// Whether the connection failed or was closed by the server; it
    /// cannot be used any more.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    async fn reply_to<C: fmt::Display>(&mut self, command: C, deadline: Duration) -> Reply {
        let outcome = match tokio::time::timeout(deadline, self.conn.command(command)).await {
            Err(_) => Reply::Broken(super::timeout_error(deadline, Step::Send, PROTO)),
            Ok(Ok(_)) => Reply::Positive,
            Ok(Err(e)) => match code_of(&e) {
                Some(code) => Reply::Negative(code, reply_text(&e)),
                None => Reply::Broken(transport_error(&e, "the SMTP server")),
            },
        };
        match &outcome {
            Reply::Broken(_) => self.broken = true,
            // 421: the server is closing the connection.
            Reply::Negative(421, _) => self.broken = true,
            _ => {}
        }
        outcome
    }

    /// Ends a transaction the server refused part of (errors make the
    /// connection broken).
    async fn reset(&mut self) {
        if !self.broken
            && let Reply::Negative(..) = self.reply_to(Rset, self.timeout).await
        {
            self.broken = true;
        }
    }

    /// One transaction: `MAIL FROM:<from>`, `RCPT TO` for each recipient
    /// (each reply kept), `DATA` and the data. With refused recipients the
    /// message is sent to the others only if `partial`, else the
    /// transaction is reset (`RSET`) and nothing is sent. The data goes out
    /// with CRLF line endings (see the module docs); `data_deadline`
    /// bounds sending it and reading the server's answer.
    pub async fn transaction(
        &mut self,
        from: &lettre::Address,
        recipients: &[lettre::Address],
        data: &[u8],
        partial: bool,
        data_deadline: Duration,
    ) -> Transaction {
        if self.broken {
            return Transaction::Broken {
                error: Error::new(ErrorCode::Network, "the SMTP connection is closed"),
                after_data: false,
            };
        }
        let data = normalize_line_endings(data);
        let data = data_without_last_crlf(&data);
        let info = self.conn.server_info();
        let mut params = Vec::new();
        let ascii = |a: &lettre::Address| <lettre::Address as AsRef<str>>::as_ref(a).is_ascii();
        let non_ascii = !ascii(from) || recipients.iter().any(|r| !ascii(r));
        if non_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Transaction::Unsendable(Error::new(
                    ErrorCode::SendRejected,
                    "an address is not ASCII and the SMTP server does not offer SMTPUTF8",
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !data.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Transaction::Unsendable(Error::new(
                    ErrorCode::SendRejected,
                    "the message has 8-bit data and the SMTP server does not offer 8BITMIME",
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let timeout = self.timeout;
        match self
            .reply_to(Mail::new(Some(from.clone()), params), timeout)
            .await
        {
            Reply::Positive => {}
            Reply::Negative(code, reply) => {
                return Transaction::Refused {
                    stage: SmtpStage::MailFrom,
                    code,
                    reply,
                    refused: Vec::new(),
                };
            }
            Reply::Broken(error) => {
                return Transaction::Broken {
                    error,
                    after_data: false,
                };
            }
        }
        let mut accepted = 0usize;
        let mut refused = Vec::new();
        for rcpt in recipients {
            match self
                .reply_to(Rcpt::new(rcpt.clone(), Vec::new()), timeout)
                .await
            {
                Reply::Positive => accepted += 1,
                Reply::Negative(code, reply) => refused.push(RecipientRefusal {
                    address: rcpt.to_string(),
                    smtp_code: code,
                    reply,
                }),
                Reply::Broken(error) => {
                    return Transaction::Broken {
                        error,
                        after_data: false,
                    };
                }
            }
            if self.broken {
                break;
            }
        }
        if !refused.is_empty() && (!partial || accepted == 0 || self.broken) {
            self.reset().await;
            let worst = refused
                .iter()
                .find(|r| r.smtp_code >= 500)
                .or_else(|| refused.first())
                .map(|r| (r.smtp_code, r.reply.clone()))
                .unwrap_or((0, String::new()));
            return Transaction::Refused {
                stage: SmtpStage::RcptTo,
                code: worst.0,
                reply: worst.1,
                refused,
            };
        }
        match self.reply_to(Data, timeout).await {
            Reply::Positive => {}
            Reply::Negative(code, reply) => {
                self.reset().await;
                return Transaction::Refused {
                    stage: SmtpStage::Data,
                    code,
                    reply,
                    refused,
                };
            }
            Reply::Broken(error) => {
                return Transaction::Broken {
                    error,
                    after_data: false,
                };
            }
        }
        let mark = self.written.count();
        let sent = tokio::time::timeout(data_deadline, self.conn.message(data)).await;
        let broken = |error: Error, written: &WriteLog| Transaction::Broken {
            error,
            after_data: written.ended_data_since(mark),
        };
        match sent {
            Ok(Ok(resp)) => Transaction::Accepted {
                reply: response_text(&resp),
                refused,
            },
            Ok(Err(e)) => match code_of(&e) {
                Some(code) => {
                    if code == 421 {
                        self.broken = true;
                    }
                    Transaction::Refused {
                        stage: SmtpStage::EndOfData,
                        code,
                        reply: reply_text(&e),
                        refused,
                    }
                }
                None => {
                    self.broken = true;
                    broken(transport_error(&e, "the SMTP server"), &self.written)
                }
            },
            Err(_) => {
                self.broken = true;
                broken(
                    super::timeout_error(data_deadline, Step::Send, PROTO),
                    &self.written,
                )
            }
        }
    }
}

fn response_text(resp: &Response) -> String {
    let lines: Vec<&str> = resp.message().collect();
    format!("{} {}", resp.code(), lines.join(" "))
}

async fn authenticate(
    conn: &mut AsyncSmtpConnection,
    mechanism: Mechanism,
    creds: &Credentials,
    endpoint: &Endpoint,
) -> Result<()> {
    let host = endpoint.host.as_str();
    let (first, second): (SaslResponse, Option<SaslResponse>) = match (mechanism, creds) {
        (Mechanism::XOAuth2, Credentials::OAuth { user, access_token }) => {
            (sasl::xoauth2_initial_response(user, access_token)?, None)
        }
        (Mechanism::OAuthBearer, Credentials::OAuth { user, access_token }) => (
            sasl::oauthbearer_initial_response(user, host, endpoint.port, access_token)?,
            None,
        ),
        (Mechanism::Plain, Credentials::Password { user, password }) => {
            (sasl::plain_initial_response(user, password)?, None)
        }
        (Mechanism::Login, Credentials::Password { user, password }) => {
            let (u, p) = sasl::login_responses(user, password)?;
            (u, Some(p))
        }
        _ => {
            return Err(Error::new(
                ErrorCode::MechanismUnsupported,
                format!("{mechanism} does not fit these credentials"),
            ));
        }
    };
    let mut pending: Vec<SaslResponse> = Vec::new();
    let line = if mechanism == Mechanism::Login {
        pending.push(second.unwrap_or_else(|| first.clone()));
        pending.push(first);
        zeroize::Zeroizing::new("AUTH LOGIN".to_owned())
    } else {
        let mut l = zeroize::Zeroizing::new(format!("AUTH {mechanism} "));
        l.push_str(&first.to_base64());
        l
    };
    let mut reply = conn.command(RawLine(line)).await;
    let mut challenge: Option<SaslChallenge> = None;
    for _ in 0..6 {
        match reply {
            Ok(resp) if resp.has_code(334) => {
                let next = if let Some(r) = pending.pop() {
                    r.to_base64()
                } else {
                    let data = resp.message().next().unwrap_or("");
                    challenge = Some(SaslChallenge::decode(data).unwrap_or_default());
                    zeroize::Zeroizing::new(sasl::encode_base64(mechanism.error_challenge_answer()))
                };
                reply = conn.command(RawLine(next)).await;
            }
            Ok(resp) if resp.code().to_string().starts_with('2') => return Ok(()),
            Ok(resp) => {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("unexpected SMTP reply to AUTH: {}", response_text(&resp)),
                ));
            }
            Err(e) => {
                return Err(auth_reply_error(
                    &e,
                    host,
                    challenge.as_ref(),
                    mechanism.is_oauth(),
                ));
            }
        }
    }
    Err(Error::new(
        ErrorCode::ProtocolError,
        "the SMTP server kept sending SASL challenges",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_auth_lines() {
        let ext: Vec<String> = [
            "PIPELINING",
            "AUTH PLAIN LOGIN XOAUTH2",
            "AUTH=PLAIN LOGIN",
            "8BITMIME",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(auth_mechanisms(&ext), vec!["PLAIN", "LOGIN", "XOAUTH2"]);
    }

    #[test]
    fn bare_cr_and_lf_become_crlf() {
        let n = |d: &[u8]| normalize_line_endings(d).into_owned();
        assert_eq!(n(b"a\r\nb"), b"a\r\nb");
        assert!(matches!(
            normalize_line_endings(b"a\r\nb"),
            Cow::Borrowed(_)
        ));
        assert_eq!(n(b"a\nb\rc\r\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(n(b"\n.\r\nMAIL FROM"), b"\r\n.\r\nMAIL FROM");
        assert_eq!(n(b"x\r\r\n"), b"x\r\n\r\n");
        assert_eq!(n(b"\r"), b"\r\n");
    }

    #[test]
    fn the_write_log_sees_the_end_of_the_data() {
        let log = WriteLog::default();
        log.record(b"MAIL FROM:<a@b>\r\n");
        let mark = log.count();
        assert!(!log.ended_data_since(mark));
        log.record(b"Subject: x\r\n\r\nbody");
        assert!(!log.ended_data_since(mark));
        log.record(b"\r\n.");
        log.record(b"\r\n");
        assert!(log.ended_data_since(mark));
        assert!(!log.ended_data_since(log.count()));
    }

    #[tokio::test]
    async fn replies_are_read_whole_and_checked() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"250-first\r\n250-SIZE 10\r\n250 last\r\n354\r\nnonsense\r\n")
                .await
                .unwrap();
            s
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut lines = LineStream::new(MailStream::Plain(tcp), MAX_REPLY_LINE);
        let (code, text) = read_reply(&mut lines).await.unwrap();
        assert_eq!(
            (code, text),
            (250, vec!["first".into(), "SIZE 10".into(), "last".into()])
        );
        assert_eq!(
            read_reply(&mut lines).await.unwrap(),
            (354, vec![String::new()])
        );
        let e = read_reply(&mut lines).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProtocolError);
        drop(server.await.unwrap());
    }

    #[test]
    fn raw_line_appends_crlf() {
        assert_eq!(
            RawLine(zeroize::Zeroizing::new("AUTH LOGIN".into())).to_string(),
            "AUTH LOGIN\r\n"
        );
    }
}
