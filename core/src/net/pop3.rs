//! A small POP3 client (RFC 1939, CAPA/RESP-CODES RFC 2449, AUTH RFC 5034,
//! STLS RFC 2595), written here because no maintained async crate fits.
//!
//! It does only what mail sync needs: TLS or STLS, greeting, CAPA,
//! `AUTH XOAUTH2` / `AUTH OAUTHBEARER` in the one-line (initial response)
//! and the two-step (`+ ` challenge) form, the error challenge answered
//! correctly, `AUTH PLAIN`/`AUTH LOGIN`/`USER`+`PASS` for passwords, STAT,
//! LIST, UIDL, RETR (multi-line, dot-unstuffed), DELE and QUIT.
//!
//! Strict limits protect the caller from a broken or hostile server: a line
//! longer than [`MAX_LINE`] is a `protocol_error`, and a message larger than
//! the configured maximum ([`Pop3Client::set_max_message_size`]) is refused
//! before download (by its LIST size) or aborted while downloading.
//!
//! Response codes (RFC 2449/3206) are classified: `[SYS/TEMP]`, `[IN-USE]`,
//! `[LOGIN-DELAY]` → `server_unavailable` (transient); `[AUTH]` →
//! `auth_rejected`; `[SYS/PERM]` during login (Gmail: "not enabled for POP
//! access") and a login refusal carrying a reason but no `[AUTH]` code
//! (Dovecot `nologin` + `reason`) → `protocol_disabled`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{LineStream, MailStream};
use super::{
    ConnectOptions, Credentials, Step, StepError, Steps, check_plaintext_allowed, choose_mechanism,
    open, timeout_error, tls_handshake,
};
use crate::error::{Error, ErrorCode, Result};
use crate::model::profile::{Endpoint, Security};
use crate::sasl::{self, Mechanism, SaslChallenge};

/// Longest line accepted from the server (RFC 2449 allows 512 for
/// responses; we allow message lines up to 8 KiB).
pub const MAX_LINE: usize = 8192;

/// Default largest message [`Pop3Client::retr`] downloads (50 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// Default slowest rate a multi-line answer may arrive at (64 KiB/s): it
/// must be complete within the timeout plus its size at this rate.
pub const DEFAULT_MIN_THROUGHPUT: u32 = 64 * 1024;

/// Largest `CAPA` answer accepted.
const MAX_CAPA: u64 = 64 * 1024;

/// Largest `LIST` / `UIDL` answer accepted.
const MAX_LISTING: u64 = 64 * 1024 * 1024;

/// Largest `TOP n 0` answer accepted.
const MAX_HEADERS: u64 = 1024 * 1024;

const PROTO: &str = "POP3";

/// How `AUTH` sends the initial response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslStyle {
    /// One line (`AUTH XOAUTH2 <b64>`); if the server refuses that form
    /// without a response code, retry in the two-step form.
    #[default]
    Auto,
    /// Only the one-line form.
    InitialResponse,
    /// Only the two-step form (`AUTH XOAUTH2`, `+ `, `<b64>`).
    Challenge,
}

/// A parsed single-line status response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Ok(String),
    Err {
        code: Option<String>,
        text: String,
    },
    /// `+ <base64>` continuation.
    Continue(String),
}

fn parse_status(line: &[u8]) -> Result<Status> {
    let text = String::from_utf8_lossy(line);
    if let Some(rest) = text.strip_prefix("+OK") {
        return Ok(Status::Ok(rest.trim().to_owned()));
    }
    if let Some(rest) = text.strip_prefix("-ERR") {
        let rest = rest.trim();
        if let Some(after) = rest.strip_prefix('[')
            && let Some(end) = after.find(']')
        {
            return Ok(Status::Err {
                code: Some(after[..end].to_ascii_uppercase()),
                text: after[end + 1..].trim().to_owned(),
            });
        }
        return Ok(Status::Err {
            code: None,
            text: rest.to_owned(),
        });
    }
    if text == "+" || text.starts_with("+ ") {
        return Ok(Status::Continue(text[1..].trim().to_owned()));
    }
    Err(Error::new(
        ErrorCode::ProtocolError,
        format!(
            "the POP3 server sent an unexpected line: {}",
            truncate(&text, 80)
        ),
    ))
}

/// A multi-line answer that did not arrive within its deadline.
fn deadline_error(step: Step) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "the POP3 server did not send {} within its deadline (it sends too slowly)",
            step.waiting_for(PROTO)
        ),
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// Classifies `-ERR` on an ordinary command.
fn command_error(command: &str, code: Option<&str>, text: &str) -> Error {
    let shown = match code {
        Some(c) => format!("-ERR [{c}] {text}"),
        None => format!("-ERR {text}"),
    };
    let code = match code {
        Some("SYS/TEMP") | Some("IN-USE") | Some("LOGIN-DELAY") => ErrorCode::ServerUnavailable,
        Some("AUTH") => ErrorCode::AuthRejected,
        _ => ErrorCode::ProtocolError,
    };
    Error::new(code, format!("POP3 {command} failed: {shown}"))
}

/// Classifies `-ERR` in answer to a login.
///
/// A rejected token always gets the JSON error challenge first, so an
/// OAuth login refused with `[AUTH]` and *no* challenge means the token was
/// fine but the account may not use POP (Dovecot: `-ERR [AUTH] POP access is
/// disabled for this account`). Gmail says `-ERR [SYS/PERM] … not enabled
/// for POP access`. For passwords there is no structural difference, so a
/// refusal whose text says "disabled"/"not enabled" is taken as the same.
fn login_error(
    code: Option<&str>,
    text: &str,
    challenge: Option<&SaslChallenge>,
    oauth: bool,
) -> Error {
    let shown = match code {
        Some(c) => format!("-ERR [{c}] {text}"),
        None => format!("-ERR {text}"),
    };
    let lower = text.to_ascii_lowercase();
    let says_disabled = lower.contains("disabled") || lower.contains("not enabled");
    match code {
        Some("SYS/TEMP") | Some("IN-USE") | Some("LOGIN-DELAY") => Error::new(
            ErrorCode::ServerUnavailable,
            format!("the POP3 server could not log in now: {shown}"),
        ),
        Some("SYS/PERM") => Error::new(
            ErrorCode::ProtocolDisabled,
            format!("the POP3 server refuses this account: {shown}"),
        ),
        _ if challenge.is_some() => Error::new(
            ErrorCode::AuthRejected,
            format!(
                "the POP3 server rejected the credentials ({}): {shown}",
                challenge.map(|c| c.describe()).unwrap_or_default()
            ),
        ),
        Some("AUTH") if oauth || says_disabled => Error::new(
            ErrorCode::ProtocolDisabled,
            format!(
                "the POP3 server accepted the credentials but refuses POP for this account: {shown}"
            ),
        ),
        _ => Error::new(
            ErrorCode::AuthRejected,
            format!("the POP3 server rejected the credentials: {shown}"),
        ),
    }
}

/// An authenticated POP3 session.
#[derive(Debug)]
pub struct Pop3Client {
    conn: Conn<MailStream>,
    mechanism: Mechanism,
    capabilities: Vec<String>,
    max_message_size: u64,
    min_throughput: u32,
}

/// Line connection with the per-read timeout and a broken flag.
#[derive(Debug)]
struct Conn<S> {
    lines: LineStream<S>,
    timeout: std::time::Duration,
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, timeout: std::time::Duration) -> Self {
        Conn {
            lines: LineStream::new(stream, MAX_LINE),
            timeout,
            broken: false,
        }
    }

    async fn read_line(&mut self, step: Step) -> Result<Vec<u8>> {
        self.read_line_within(step, self.timeout).await
    }

    /// Reads a line that must arrive within `wait` (at most the timeout).
    async fn read_line_within(&mut self, step: Step, wait: std::time::Duration) -> Result<Vec<u8>> {
        if self.broken {
            return Err(Error::new(
                ErrorCode::Network,
                "the POP3 connection is no longer usable after an earlier failure",
            ));
        }
        match tokio::time::timeout(wait.min(self.timeout), self.lines.read_line()).await {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => {
                self.broken = true;
                Err(e.into_error(PROTO))
            }
            Err(_) if wait < self.timeout => {
                self.broken = true;
                Err(deadline_error(step))
            }
            Err(_) => {
                self.broken = true;
                Err(timeout_error(self.timeout, step, PROTO))
            }
        }
    }

    async fn send(&mut self, step: Step, line: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::new(
                ErrorCode::Network,
                "the POP3 connection is no longer usable after an earlier failure",
            ));
        }
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
        let r = tokio::time::timeout(self.timeout, self.lines.write_all(&data)).await;
        zeroize::Zeroize::zeroize(&mut data);
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(super::io_error(PROTO, &e))
            }
            Err(_) => {
                self.broken = true;
                Err(timeout_error(self.timeout, step, PROTO))
            }
        }
    }

    async fn status(&mut self, step: Step) -> Result<Status> {
        let line = self.read_line(step).await?;
        parse_status(&line).inspect_err(|_| self.broken = true)
    }

    /// Sends a command and expects `+OK`.
    async fn simple(&mut self, step: Step, command: &str) -> Result<String> {
        self.send(step, command.as_bytes()).await?;
        match self.status(step).await? {
            Status::Ok(text) => Ok(text),
            Status::Err { code, text } => Err(command_error(
                command.split(' ').next().unwrap_or(command),
                code.as_deref(),
                &text,
            )),
            Status::Continue(_) => {
                self.broken = true;
                Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("the POP3 server answered {command} with a continuation"),
                ))
            }
        }
    }

    /// Reads a dot-terminated multi-line body, dot-unstuffed, lines joined
    /// with CRLF. Aborts (and marks the connection broken) above `max` bytes
    /// or when the whole answer has not arrived within `deadline`.
    async fn multiline(
        &mut self,
        step: Step,
        max: u64,
        deadline: std::time::Duration,
    ) -> Result<Vec<u8>> {
        let end = tokio::time::Instant::now() + deadline;
        let mut out = Vec::new();
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                self.broken = true;
                return Err(deadline_error(step));
            }
            let line = self.read_line_within(step, left).await?;
            if line == b"." {
                return Ok(out);
            }
            let content = if line.starts_with(b".") {
                &line[1..]
            } else {
                &line[..]
            };
            if (out.len() + content.len() + 2) as u64 > max {
                self.broken = true;
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("the POP3 server sent more than {max} bytes of data"),
                ));
            }
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Multi-line answer as text lines.
    async fn multiline_lines(
        &mut self,
        step: Step,
        max: u64,
        deadline: std::time::Duration,
    ) -> Result<Vec<String>> {
        let body = self.multiline(step, max, deadline).await?;
        Ok(String::from_utf8_lossy(&body)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// `CAPA`, or an empty list if the server does not know it.
async fn capa<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> Result<Vec<String>> {
    conn.send(Step::Capabilities, b"CAPA").await?;
    match conn.status(Step::Capabilities).await? {
        Status::Ok(_) => {
            let deadline = conn.timeout;
            conn.multiline_lines(Step::Capabilities, MAX_CAPA, deadline)
                .await
        }
        Status::Err { .. } => Ok(Vec::new()),
        Status::Continue(_) => Err(Error::new(
            ErrorCode::ProtocolError,
            "the POP3 server answered CAPA with a continuation",
        )),
    }
}

fn sasl_mechanisms(capabilities: &[String]) -> Vec<String> {
    capabilities
        .iter()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            match words.next() {
                Some(w) if w.eq_ignore_ascii_case("SASL") => {
                    Some(words.map(|w| w.to_ascii_uppercase()).collect())
                }
                _ => None,
            }
        })
        .unwrap_or_default()
}

fn has_capability(capabilities: &[String], name: &str) -> bool {
    capabilities.iter().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> Result<Option<String>> {
    match conn.status(Step::Greeting).await? {
        Status::Ok(text) => Ok(Some(text)),
        Status::Err { code, text } => Err(Error::new(
            ErrorCode::ServerUnavailable,
            format!(
                "the POP3 server refused the connection: -ERR {}{text}",
                code.map(|c| format!("[{c}] ")).unwrap_or_default()
            ),
        )),
        Status::Continue(_) => Err(Error::new(
            ErrorCode::ProtocolError,
            "the POP3 server did not send a greeting",
        )),
    }
}

impl Pop3Client {
    /// Connects, upgrades with STLS when the endpoint says so, reads the
    /// greeting and CAPA, and authenticates (see [`Pop3Client::connect_with`]).
    pub async fn connect(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        steps: &mut Steps,
    ) -> Result<Pop3Client, StepError> {
        Self::connect_with(endpoint, opts, creds, preferred, SaslStyle::Auto, steps).await
    }

    /// Like [`Pop3Client::connect`], choosing how `AUTH` sends the initial response.
    ///
    /// Mechanism choice: `preferred` if the server's CAPA `SASL` line lists
    /// it, else XOAUTH2 then OAUTHBEARER for OAuth credentials, PLAIN then
    /// LOGIN (then `USER`/`PASS`) for passwords. Passwords and tokens alike
    /// are refused on an unencrypted connection unless the host is loopback
    /// and [`ConnectOptions::allow_plaintext_on_loopback`] is set.
    pub async fn connect_with(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        style: SaslStyle,
        steps: &mut Steps,
    ) -> Result<Pop3Client, StepError> {
        let stream = open(endpoint, opts, steps).await?;
        let mut conn = Conn::new(stream, opts.timeout);
        steps
            .run_detailed(Step::Greeting, async {
                let g = greeting(&mut conn).await?;
                Ok(((), g))
            })
            .await?;
        let mut capabilities = steps
            .run_detailed(Step::Capabilities, async {
                let c = capa(&mut conn).await?;
                let d = c.join(" | ");
                Ok((c, Some(d)))
            })
            .await?;
        if endpoint.security == Security::StartTls {
            if !has_capability(&capabilities, "STLS") && !capabilities.is_empty() {
                return Err(StepError::new(
                    Step::Tls,
                    Error::new(
                        ErrorCode::Tls,
                        format!(
                            "the POP3 server at {}:{} does not offer STLS",
                            endpoint.host, endpoint.port
                        ),
                    ),
                ));
            }
            let upgraded = steps
                .run(Step::Tls, async {
                    conn.simple(Step::Tls, "STLS").await.map_err(|e| {
                        if e.code() == ErrorCode::ProtocolError {
                            Error::new(
                                ErrorCode::Tls,
                                format!("the POP3 server refused STLS: {}", e.message()),
                            )
                        } else {
                            e
                        }
                    })?;
                    if conn.lines.buffered() > 0 {
                        return Err(Error::new(
                            ErrorCode::ProtocolError,
                            "the POP3 server sent data after STLS before the TLS handshake",
                        ));
                    }
                    let tcp = match conn.lines.into_inner() {
                        MailStream::Plain(tcp) => tcp,
                        MailStream::Tls(_) => {
                            return Err(Error::new(ErrorCode::Internal, "STLS on a TLS stream"));
                        }
                    };
                    let tls = tls_handshake(tcp, &endpoint.host, &opts.tls).await?;
                    Ok(MailStream::Tls(Box::new(tls)))
                })
                .await?;
            conn = Conn::new(upgraded, opts.timeout);
            capabilities = steps.run(Step::Capabilities, capa(&mut conn)).await?;
        }
        let encrypted = conn.lines.get_ref().is_encrypted();
        let offered_names = sasl_mechanisms(&capabilities);
        let offered: Vec<Mechanism> = offered_names
            .iter()
            .filter_map(|n| Mechanism::parse(n))
            .collect();
        let user_pass = has_capability(&capabilities, "USER") || capabilities.is_empty();

        let mechanism = match creds {
            Credentials::Password { .. } if offered.is_empty() && user_pass => None,
            _ => Some(
                choose_mechanism(PROTO, &offered, &offered_names, creds, preferred)
                    .map_err(|error| StepError::new(Step::Capabilities, error))?,
            ),
        };
        // Nothing secret crosses an unencrypted connection, tokens included.
        check_plaintext_allowed(encrypted, endpoint, creds, opts.allow_plaintext_on_loopback)
            .map_err(|error| StepError::new(Step::Authenticate, error))?;
        let used = steps
            .run_detailed(Step::Authenticate, async {
                let used = match mechanism {
                    None => {
                        user_pass_login(&mut conn, creds).await?;
                        Mechanism::Login
                    }
                    Some(m) => {
                        authenticate(&mut conn, m, creds, endpoint, style).await?;
                        m
                    }
                };
                Ok((used, Some(format!("{used}"))))
            })
            .await?;
        Ok(Pop3Client {
            conn,
            mechanism: used,
            capabilities,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            min_throughput: DEFAULT_MIN_THROUGHPUT,
        })
    }

    /// The mechanism that authenticated the session (`LOGIN` also stands for `USER`/`PASS`).
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The CAPA lines (after STLS, the post-upgrade ones).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Largest message [`Pop3Client::retr`] downloads.
    pub fn set_max_message_size(&mut self, bytes: u64) {
        self.max_message_size = bytes;
    }

    /// Slowest rate a multi-line answer (RETR, TOP, LIST, UIDL) may arrive
    /// at: each must be complete within the timeout plus its size at this
    /// rate, so a server that trickles cannot hold the session.
    pub fn set_min_throughput(&mut self, bytes_per_sec: u32) {
        self.min_throughput = bytes_per_sec.max(1);
    }

    /// The timeout plus `bytes` at the minimum rate.
    fn deadline_for(&self, bytes: u64) -> std::time::Duration {
        self.conn.timeout
            + std::time::Duration::from_secs(bytes / u64::from(self.min_throughput.max(1)))
    }

    /// `STAT`: (message count, total size in octets).
    pub async fn stat(&mut self) -> Result<(u32, u64)> {
        let text = self.conn.simple(Step::Stat, "STAT").await?;
        let mut words = text.split_whitespace();
        let count = words.next().and_then(|w| w.parse().ok());
        let size = words.next().and_then(|w| w.parse().ok());
        match (count, size) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => {
                Err(self.protocol_error(format!("malformed STAT answer: {}", truncate(&text, 80))))
            }
        }
    }

    /// `LIST`: (message number, size) of every message.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>> {
        self.conn.simple(Step::Fetch, "LIST").await?;
        let deadline = self.deadline_for(MAX_LISTING);
        let lines = self
            .conn
            .multiline_lines(Step::Fetch, MAX_LISTING, deadline)
            .await?;
        lines
            .iter()
            .map(|l| parse_pair(l).and_then(|(n, s)| Some((n, s.parse().ok()?))))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.protocol_error("malformed LIST answer".into()))
    }

    /// `LIST n`: the size of one message.
    pub async fn list_one(&mut self, n: u32) -> Result<u64> {
        let text = self.conn.simple(Step::Fetch, &format!("LIST {n}")).await?;
        parse_pair(&text)
            .and_then(|(_, s)| s.parse().ok())
            .ok_or_else(|| {
                self.protocol_error(format!("malformed LIST answer: {}", truncate(&text, 80)))
            })
    }

    /// `UIDL`: (message number, unique id) of every message.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>> {
        self.conn.simple(Step::Fetch, "UIDL").await?;
        let deadline = self.deadline_for(MAX_LISTING);
        let lines = self
            .conn
            .multiline_lines(Step::Fetch, MAX_LISTING, deadline)
            .await?;
        lines
            .iter()
            .map(|l| parse_pair(l).map(|(n, u)| (n, u.to_owned())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.protocol_error("malformed UIDL answer".into()))
    }

    /// `UIDL n`: the unique id of one message.
    pub async fn uidl_one(&mut self, n: u32) -> Result<String> {
        let text = self.conn.simple(Step::Fetch, &format!("UIDL {n}")).await?;
        parse_pair(&text).map(|(_, u)| u.to_owned()).ok_or_else(|| {
            self.protocol_error(format!("malformed UIDL answer: {}", truncate(&text, 80)))
        })
    }

    /// `RETR n`: the whole message, dot-unstuffed, with CRLF line endings.
    ///
    /// Refused without downloading (`message_too_large`) when `LIST n`
    /// reports a size above the limit; aborted if the server sends more
    /// than that size anyway.
    pub async fn retr(&mut self, n: u32) -> Result<Vec<u8>> {
        let size = self.list_one(n).await?;
        if size > self.max_message_size {
            return Err(Error::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "POP3 message {n} is {size} bytes, above the limit of {} bytes",
                    self.max_message_size
                ),
            ));
        }
        self.conn.simple(Step::Fetch, &format!("RETR {n}")).await?;
        // No more than LIST said, with room for servers that count
        // LF-only storage there.
        let max = size.saturating_add(size / 8 + 1024);
        let deadline = self.deadline_for(size);
        self.conn.multiline(Step::Fetch, max, deadline).await
    }

    /// `TOP n 0`: the header section of a message, without its body
    /// (RFC 1939 optional command; at most 1 MiB).
    pub async fn top_headers(&mut self, n: u32) -> Result<Vec<u8>> {
        self.conn.simple(Step::Fetch, &format!("TOP {n} 0")).await?;
        let deadline = self.deadline_for(MAX_HEADERS);
        self.conn
            .multiline(Step::Fetch, MAX_HEADERS, deadline)
            .await
    }

    /// `DELE n`: marks a message for deletion at QUIT. Only for mailboxes
    /// configured to delete after processing.
    pub async fn dele(&mut self, n: u32) -> Result<()> {
        self.conn.simple(Step::Delete, &format!("DELE {n}")).await?;
        Ok(())
    }

    /// `QUIT`: ends the session (and commits deletions).
    pub async fn quit(&mut self) -> Result<()> {
        self.conn.simple(Step::Logout, "QUIT").await?;
        self.conn.broken = true;
        Ok(())
    }

    fn protocol_error(&mut self, msg: String) -> Error {
        Error::new(ErrorCode::ProtocolError, format!("POP3: {msg}"))
    }
}

fn parse_pair(line: &str) -> Option<(u32, &str)> {
    let mut words = line.split_whitespace();
    let n = words.next()?.parse().ok()?;
    let v = words.next()?;
    Some((n, v))
}

async fn user_pass_login<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    creds: &Credentials,
) -> Result<()> {
    let Credentials::Password { user, password } = creds else {
        return Err(Error::new(
            ErrorCode::Internal,
            "USER/PASS needs a password",
        ));
    };
    if user.contains(['\r', '\n']) || password.expose().contains(['\r', '\n']) {
        return Err(Error::validation("user", "contains a line break"));
    }
    conn.send(Step::Authenticate, format!("USER {user}").as_bytes())
        .await?;
    match conn.status(Step::Authenticate).await? {
        Status::Ok(_) => {}
        Status::Err { code, text } => return Err(login_error(code.as_deref(), &text, None, false)),
        Status::Continue(_) => {
            return Err(Error::new(
                ErrorCode::ProtocolError,
                "unexpected POP3 continuation",
            ));
        }
    }
    let mut line = zeroize::Zeroizing::new(format!("PASS {}", password.expose()));
    let r = conn.send(Step::Authenticate, line.as_bytes()).await;
    zeroize::Zeroize::zeroize(&mut *line);
    r?;
    match conn.status(Step::Authenticate).await? {
        Status::Ok(_) => Ok(()),
        Status::Err { code, text } => Err(login_error(code.as_deref(), &text, None, false)),
        Status::Continue(_) => Err(Error::new(
            ErrorCode::ProtocolError,
            "unexpected POP3 continuation",
        )),
    }
}

/// `AUTH <mechanism>` with the error challenge answered.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mechanism: Mechanism,
    creds: &Credentials,
    endpoint: &Endpoint,
    style: SaslStyle,
) -> Result<()> {
    let (first, second) = match (mechanism, creds) {
        (Mechanism::XOAuth2, Credentials::OAuth { user, access_token }) => {
            (sasl::xoauth2_initial_response(user, access_token)?, None)
        }
        (Mechanism::OAuthBearer, Credentials::OAuth { user, access_token }) => (
            sasl::oauthbearer_initial_response(user, &endpoint.host, endpoint.port, access_token)?,
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
    // LOGIN always goes step by step.
    let style = if mechanism == Mechanism::Login {
        SaslStyle::Challenge
    } else {
        style
    };
    let result = auth_exchange(conn, mechanism, &first, second.as_ref(), style).await;
    match result {
        Err(AuthFail::InitialResponseRefused(..)) if style == SaslStyle::Auto => auth_exchange(
            conn,
            mechanism,
            &first,
            second.as_ref(),
            SaslStyle::Challenge,
        )
        .await
        .map_err(|f| f.into_error()),
        r => r.map_err(|f| f.into_error()),
    }
}

enum AuthFail {
    /// The one-line form got `-ERR` without a response code and without a challenge.
    InitialResponseRefused(Option<String>, String, bool),
    Other(Error),
}

impl AuthFail {
    fn into_error(self) -> Error {
        match self {
            AuthFail::InitialResponseRefused(code, text, oauth) => {
                login_error(code.as_deref(), &text, None, oauth)
            }
            AuthFail::Other(e) => e,
        }
    }
}

impl From<Error> for AuthFail {
    fn from(e: Error) -> Self {
        AuthFail::Other(e)
    }
}

async fn auth_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mechanism: Mechanism,
    first: &sasl::SaslResponse,
    second: Option<&sasl::SaslResponse>,
    style: SaslStyle,
) -> Result<(), AuthFail> {
    let inline = style != SaslStyle::Challenge;
    if inline {
        let mut line = zeroize::Zeroizing::new(format!("AUTH {mechanism} "));
        line.push_str(&first.to_base64());
        conn.send(Step::Authenticate, line.as_bytes()).await?;
    } else {
        conn.send(Step::Authenticate, format!("AUTH {mechanism}").as_bytes())
            .await?;
    }
    let mut pending: Vec<&sasl::SaslResponse> = Vec::new();
    if !inline {
        pending.push(first);
    }
    if let Some(s) = second {
        pending.push(s);
    }
    pending.reverse();
    let mut challenge: Option<SaslChallenge> = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > 6 {
            return Err(Error::new(
                ErrorCode::ProtocolError,
                "the POP3 server kept sending SASL challenges",
            )
            .into());
        }
        match conn.status(Step::Authenticate).await? {
            Status::Ok(_) => return Ok(()),
            Status::Err { code, text } => {
                if inline
                    && style == SaslStyle::Auto
                    && code.is_none()
                    && challenge.is_none()
                    && rounds == 1
                {
                    return Err(AuthFail::InitialResponseRefused(
                        code,
                        text,
                        mechanism.is_oauth(),
                    ));
                }
                return Err(login_error(
                    code.as_deref(),
                    &text,
                    challenge.as_ref(),
                    mechanism.is_oauth(),
                )
                .into());
            }
            Status::Continue(data) => {
                if let Some(next) = pending.pop() {
                    conn.send(Step::Authenticate, next.to_base64().as_bytes())
                        .await?;
                } else {
                    // An error challenge: decode it, answer so the server ends the exchange.
                    challenge = Some(SaslChallenge::decode(&data).unwrap_or_default());
                    let answer = sasl::encode_base64(mechanism.error_challenge_answer());
                    conn.send(Step::Authenticate, answer.as_bytes()).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            parse_status(b"+OK 2 320").unwrap(),
            Status::Ok("2 320".into())
        );
        assert_eq!(
            parse_status(b"-ERR [SYS/TEMP] try later").unwrap(),
            Status::Err {
                code: Some("SYS/TEMP".into()),
                text: "try later".into()
            }
        );
        assert_eq!(
            parse_status(b"-ERR nope").unwrap(),
            Status::Err {
                code: None,
                text: "nope".into()
            }
        );
        assert_eq!(
            parse_status(b"+ abc=").unwrap(),
            Status::Continue("abc=".into())
        );
        assert_eq!(parse_status(b"+").unwrap(), Status::Continue(String::new()));
        assert_eq!(
            parse_status(b"* OK imap").unwrap_err().code(),
            ErrorCode::ProtocolError
        );
        assert_eq!(
            parse_status(&[0xff, 0xfe]).unwrap_err().code(),
            ErrorCode::ProtocolError
        );
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(
            login_error(Some("SYS/TEMP"), "x", None, true).code(),
            ErrorCode::ServerUnavailable
        );
        assert_eq!(
            login_error(Some("IN-USE"), "x", None, true).code(),
            ErrorCode::ServerUnavailable
        );
        assert_eq!(
            login_error(Some("AUTH"), "Authentication failed.", None, false).code(),
            ErrorCode::AuthRejected
        );
        assert_eq!(
            login_error(Some("SYS/PERM"), "not enabled for POP access", None, true).code(),
            ErrorCode::ProtocolDisabled
        );
        let c = SaslChallenge {
            status: Some("400".into()),
            ..Default::default()
        };
        let e = login_error(Some("AUTH"), "Authentication failed.", Some(&c), true);
        assert_eq!(e.code(), ErrorCode::AuthRejected);
        assert!(e.message().contains("status 400"), "{}", e.message());
        assert!(login_error(None, "", None, true).code() == ErrorCode::AuthRejected);
        // Dovecot's refusal for an account without POP (valid token, no challenge).
        assert_eq!(
            login_error(
                Some("AUTH"),
                "POP access is disabled for this account",
                None,
                true
            )
            .code(),
            ErrorCode::ProtocolDisabled
        );
        assert_eq!(
            login_error(
                Some("AUTH"),
                "POP access is disabled for this account",
                None,
                false
            )
            .code(),
            ErrorCode::ProtocolDisabled
        );
        assert_eq!(
            command_error("RETR", Some("SYS/TEMP"), "x").code(),
            ErrorCode::ServerUnavailable
        );
    }

    #[test]
    fn capa_parsing() {
        let caps: Vec<String> = ["CAPA", "USER", "SASL xoauth2 OAUTHBEARER PLAIN", "STLS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            sasl_mechanisms(&caps),
            vec!["XOAUTH2", "OAUTHBEARER", "PLAIN"]
        );
        assert!(has_capability(&caps, "stls"));
        assert!(!has_capability(&caps, "TOP"));
    }

    async fn conn_with(data: &'static [u8]) -> Conn<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            // Dribble the data in small pieces to exercise split reads.
            for chunk in data.chunks(3) {
                if server.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Keep the pipe open until the client is done.
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut server, &mut buf).await;
        });
        Conn::new(client, std::time::Duration::from_secs(5))
    }

    #[tokio::test]
    async fn multiline_is_dot_unstuffed() {
        let mut c = conn_with(b"Subject: x\r\n\r\n..leading dot\r\n.\r\n..\r\nlast\r\n.\r\n").await;
        let body = c
            .multiline(Step::Fetch, 1000, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n");
        let body = c
            .multiline(Step::Fetch, 1000, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(body, b".\r\nlast\r\n");
    }

    #[tokio::test]
    async fn multiline_respects_size_limit() {
        let mut c = conn_with(b"0123456789\r\n0123456789\r\n.\r\n").await;
        let e = c
            .multiline(Step::Fetch, 15, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProtocolError);
        assert!(c.broken);
    }

    #[tokio::test]
    async fn silent_server_times_out_with_step() {
        let (client, _server) = tokio::io::duplex(64);
        let mut c = Conn::new(client, std::time::Duration::from_millis(50));
        let e = greeting(&mut c).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(
            e.message(),
            "timed out after 50ms waiting for the POP3 greeting"
        );
    }

    /// A scripted peer for the client's AUTH exchange logic (parser-level:
    /// checks what the client writes in answer to each server line).
    async fn scripted(
        script: &'static [(&'static str, &'static str)],
    ) -> (
        Conn<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let handle = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server);
            let mut r = BufReader::new(r);
            let mut seen = Vec::new();
            for (expect_prefix, reply) in script {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                assert!(
                    line.starts_with(expect_prefix),
                    "got {line:?}, expected {expect_prefix:?}"
                );
                seen.push(line);
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (Conn::new(client, std::time::Duration::from_secs(5)), handle)
    }

    fn oauth() -> Credentials {
        Credentials::OAuth {
            user: "alice@example.test".into(),
            access_token: crate::model::Secret::new("tok"),
        }
    }

    fn ep() -> Endpoint {
        Endpoint::new("127.0.0.1", 995, Security::Tls)
    }

    #[tokio::test]
    async fn xoauth2_error_challenge_is_answered_with_empty_line() {
        let (mut c, h) = scripted(&[
            (
                "AUTH XOAUTH2 dXNlcj1",
                "+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n",
            ),
            ("", "-ERR [AUTH] Authentication failed.\r\n"),
        ])
        .await;
        let e = authenticate(&mut c, Mechanism::XOAuth2, &oauth(), &ep(), SaslStyle::Auto)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::AuthRejected);
        assert!(e.message().contains("status 400"), "{}", e.message());
        let seen = h.await.unwrap();
        assert_eq!(seen[1], "");
    }

    #[tokio::test]
    async fn oauthbearer_two_step_and_answer() {
        let (mut c, h) = scripted(&[
            ("AUTH OAUTHBEARER", "+ \r\n"),
            ("bixhPWFsaWNl", "+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n"),
            ("AQ==", "-ERR [AUTH] Authentication failed.\r\n"),
        ])
        .await;
        let e = authenticate(
            &mut c,
            Mechanism::OAuthBearer,
            &oauth(),
            &ep(),
            SaslStyle::Challenge,
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("invalid_token"), "{}", e.message());
        assert_eq!(h.await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn auto_falls_back_to_two_step() {
        let (mut c, h) = scripted(&[
            ("AUTH XOAUTH2 ", "-ERR Syntax error\r\n"),
            ("AUTH XOAUTH2", "+ \r\n"),
            ("dXNlcj1", "+OK Logged in.\r\n"),
        ])
        .await;
        authenticate(&mut c, Mechanism::XOAuth2, &oauth(), &ep(), SaslStyle::Auto)
            .await
            .unwrap();
        assert_eq!(h.await.unwrap()[1], "AUTH XOAUTH2");
    }
}
