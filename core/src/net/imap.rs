//! IMAP over async-imap and tokio-rustls: connect, authenticate, read INBOX.
//!
//! [`ImapClient`] is one authenticated session: TLS or STARTTLS per the
//! endpoint, the greeting read **before** anything else (Gmail and Dovecot
//! greet first), `CAPABILITY`, then `AUTHENTICATE` with the advertised
//! mechanism (SASL-IR when offered). A rejected token produces a base64 JSON
//! challenge; the authenticator answers it (empty for XOAUTH2, `0x01` for
//! OAUTHBEARER) so the exchange ends with `NO` instead of hanging, and the
//! error carries the decoded challenge. Only `EXAMINE`/`SELECT INBOX`,
//! `UID FETCH` with `BODY.PEEK[]` (never sets `\Seen`) and `LOGOUT` are
//! offered: that is all incoming sync needs.
//!
//! [`ImapMailbox`] wraps a client with a [`CredentialSource`]: when the
//! server ends the session (Gmail closes OAuth sessions when the access token
//! expires: `* BYE`, connection closed, or `NO [EXPIRED]`), it reconnects
//! once with fresh credentials (`force_fresh = true`), re-opens INBOX and
//! repeats the command, without surfacing an error.
//!
//! Failure mapping: `NO [UNAVAILABLE]` → `server_unavailable` (transient);
//! `NO [ALERT] …` on login (Gmail "not enabled for IMAP use", Dovecot
//! `nologin` + reason) → `protocol_disabled`; other `NO` on login →
//! `auth_rejected` with the challenge status.

use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::{self, Response};
use async_imap::{Authenticator, Client, Session};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::io::{ImapReadGuard, LineStream, MailStream, SecretSwap};

/// The stream async-imap runs on: secrets are put in below its log, and
/// the server's lines and literals are bounded below its buffer.
type ImapStream = SecretSwap<ImapReadGuard<MailStream>>;
use super::{
    ConnectOptions, CredentialSource, Credentials, Step, StepError, Steps, check_plaintext_allowed,
    choose_mechanism, open, timeout_error, tls_handshake, with_timeout,
};
use crate::error::{Error, ErrorCode, Result};
use crate::model::profile::{Endpoint, Security};
use crate::sasl::{self, Mechanism, SaslChallenge, SaslResponse};

const PROTO: &str = "IMAP";

/// Default largest message [`ImapClient::uid_fetch`] downloads (50 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// Longest line accepted from the server outside literals (8 MiB: a
/// `SEARCH` answer listing a million UIDs fits).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// The largest literal accepted while messages up to `max_message_size`
/// are wanted: the size, plus room for servers that count LF-only storage.
fn max_literal(max_message_size: u64) -> u64 {
    max_message_size.saturating_add(max_message_size / 8 + 1024)
}

/// The stream under a new session.
fn guarded(stream: MailStream) -> ImapStream {
    SecretSwap::new(ImapReadGuard::new(
        stream,
        MAX_LINE,
        max_literal(DEFAULT_MAX_MESSAGE_SIZE),
    ))
}

/// Classifies an I/O error; a limit the server broke, or a response the
/// parser cannot read, is a protocol error.
fn io_error(e: &std::io::Error) -> Error {
    if let Some(why) = super::io::limit_exceeded(e) {
        return Error::new(ErrorCode::ProtocolError, why.to_string());
    }
    // async-imap reports a response imap-proto cannot parse as an `Other`
    // error quoting the whole buffer (up to a line of 8 MiB): keep its start.
    let text = e.to_string();
    if e.kind() == std::io::ErrorKind::Other
        && let Some((_, quoted)) = text.split_once(" during parsing of ")
    {
        return Error::new(
            ErrorCode::ProtocolError,
            format!(
                "the IMAP server sent a response that cannot be parsed: {}",
                clip(quoted, 120)
            ),
        );
    }
    super::io_error(PROTO, e)
}

/// Polls `fut`, turning a panic into `None`. imap-proto 0.17 panics on
/// some malformed server responses (a response code followed by text that
/// is not UTF-8: it slices inside the replacement character), and a server
/// must never be able to crash the host; every read of a session goes
/// through this, and a session that panicked is not used again. Found by
/// the `imap_session` fuzz target (docs/security.md).
async fn parsed<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(fut).catch_unwind().await.ok()
}

fn parser_panicked() -> Error {
    Error::new(
        ErrorCode::ProtocolError,
        "the IMAP server sent a response the IMAP parser cannot read",
    )
}

/// INBOX state after SELECT/EXAMINE: the sync cursor's anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStatus {
    /// UIDVALIDITY: when it changes, every cached UID is void.
    pub uid_validity: u32,
    /// UIDNEXT: the UID the next message will get (at least).
    pub uid_next: u32,
    /// HIGHESTMODSEQ, when the server supports CONDSTORE.
    pub highest_modseq: Option<u64>,
    /// Number of messages.
    pub exists: u32,
}

/// A UID range: `first..=last`, or `first:*` when `last` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First UID (≥ 1).
    pub first: u32,
    /// Last UID, or open-ended.
    pub last: Option<u32>,
}

impl UidRange {
    /// `first:*`.
    pub fn from(first: u32) -> Self {
        UidRange {
            first: first.max(1),
            last: None,
        }
    }

    /// `first:last`.
    pub fn between(first: u32, last: u32) -> Self {
        UidRange {
            first: first.max(1),
            last: Some(last.max(1)),
        }
    }

    fn to_imap(self) -> String {
        match self.last {
            Some(last) => format!("{}:{}", self.first, last),
            None => format!("{}:*", self.first),
        }
    }

    fn contains(self, uid: u32) -> bool {
        let (lo, hi) = match self.last {
            Some(l) => (self.first.min(l), self.first.max(l)),
            None => (self.first, u32::MAX),
        };
        (lo..=hi).contains(&uid)
    }
}

/// One message from `UID FETCH`.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    /// The message UID.
    pub uid: u32,
    /// RFC822.SIZE in octets.
    pub size: u32,
    /// INTERNALDATE (when the server received it).
    pub internal_date: Option<OffsetDateTime>,
    /// Flags as the server reported them before the body was fetched
    /// (e.g. `\Seen`); fetching with `BODY.PEEK[]` does not change them.
    pub flags: Vec<String>,
    /// The full raw message (RFC 5322), empty when `oversized`.
    pub raw: Vec<u8>,
    /// The message is larger than the limit and was not downloaded.
    pub oversized: bool,
}

impl std::fmt::Debug for FetchedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedMessage")
            .field("uid", &self.uid)
            .field("size", &self.size)
            .field("internal_date", &self.internal_date)
            .field("flags", &self.flags)
            .field("raw_len", &self.raw.len())
            .field("oversized", &self.oversized)
            .finish()
    }
}

/// How many `+` continuations one AUTHENTICATE answers (as POP3 and SMTP).
const MAX_SASL_ROUNDS: usize = 6;

/// SASL driver for async-imap: feeds the prepared responses, then answers
/// an error challenge (pitfall: a second `process` call must not resend the
/// token, or the session stalls). Past [`MAX_SASL_ROUNDS`] it signals
/// `too_many`, and the exchange is abandoned.
struct SaslDriver {
    pending: Vec<Vec<u8>>,
    answer: &'static [u8],
    challenge: Option<Vec<u8>>,
    rounds: usize,
    too_many: Arc<tokio::sync::Notify>,
}

impl Authenticator for &mut SaslDriver {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        self.rounds += 1;
        if self.rounds > MAX_SASL_ROUNDS {
            self.too_many.notify_one();
        }
        if let Some(next) = self.pending.pop() {
            next
        } else {
            self.challenge = Some(challenge.to_vec());
            self.answer.to_vec()
        }
    }
}

/// An authenticated IMAP session.
pub struct ImapClient {
    session: Session<ImapStream>,
    timeout: Duration,
    mechanism: Mechanism,
    capabilities: Vec<String>,
    broken: bool,
    max_message_size: u64,
}

impl std::fmt::Debug for ImapClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapClient")
            .field("mechanism", &self.mechanism)
            .field("capabilities", &self.capabilities)
            .field("broken", &self.broken)
            .finish()
    }
}

fn capability_strings(caps: &[imap_proto::Capability<'_>]) -> Vec<String> {
    caps.iter()
        .map(|c| match c {
            imap_proto::Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
            imap_proto::Capability::Auth(m) => format!("AUTH={}", m.to_ascii_uppercase()),
            imap_proto::Capability::Atom(a) => a.to_ascii_uppercase(),
        })
        .collect()
}

/// Sends a raw tagged command on a not-yet-authenticated client and
/// collects CAPABILITY data until the tagged answer.
async fn raw_capability(client: &mut Client<ImapStream>, tag: &str) -> Result<Vec<String>> {
    let line = format!("{tag} CAPABILITY\r\n");
    let stream = client.get_mut();
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| io_error(&e))?;
    stream.flush().await.map_err(|e| io_error(&e))?;
    let mut caps = Vec::new();
    loop {
        let resp = client
            .read_response()
            .await
            .map_err(|e| io_error(&e))?
            .ok_or_else(|| {
                Error::new(ErrorCode::Network, "the IMAP server closed the connection")
            })?;
        match resp.parsed() {
            Response::Capabilities(c) => caps.extend(capability_strings(c)),
            Response::Done {
                tag: t,
                status,
                outcome,
            } if t.0 == tag => {
                let information = &outcome.information;
                return match status {
                    imap_proto::Status::Ok => Ok(caps),
                    _ => Err(Error::new(
                        ErrorCode::ProtocolError,
                        format!(
                            "the IMAP server refused CAPABILITY: {}",
                            information.as_deref().unwrap_or("")
                        ),
                    )),
                };
            }
            Response::Data {
                status: imap_proto::Status::Bye,
                outcome,
            } => {
                let information = &outcome.information;
                return Err(Error::new(
                    ErrorCode::ServerUnavailable,
                    format!(
                        "the IMAP server ended the connection: BYE {}",
                        information.as_deref().unwrap_or("")
                    ),
                ));
            }
            _ => {}
        }
    }
}

/// Reads the greeting through async-imap.
async fn read_greeting(client: &mut Client<ImapStream>) -> Result<String> {
    let resp = client
        .read_response()
        .await
        .map_err(|e| io_error(&e))?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Network,
                "the IMAP server closed the connection before greeting",
            )
        })?;
    match resp.parsed() {
        Response::Data { status, outcome } => {
            let text = outcome.information.as_deref().unwrap_or("").to_owned();
            match status {
                imap_proto::Status::Ok => Ok(text),
                imap_proto::Status::Bye => Err(Error::new(
                    ErrorCode::ServerUnavailable,
                    format!("the IMAP server refused the connection: BYE {text}"),
                )),
                imap_proto::Status::PreAuth => Err(Error::new(
                    ErrorCode::ProtocolError,
                    "the IMAP server pre-authenticated the connection; cannot log in as the mailbox",
                )),
                _ => Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("unexpected IMAP greeting: {status:?} {text}"),
                )),
            }
        }
        other => Err(Error::new(
            ErrorCode::ProtocolError,
            format!("unexpected IMAP greeting: {}", short_debug(other)),
        )),
    }
}

fn short_debug(v: &impl std::fmt::Debug) -> String {
    clip(&format!("{v:?}"), 120)
}

/// At most `max` bytes of `s` (on a character boundary), `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

/// Pre-TLS part of STARTTLS: greeting, `STARTTLS`, then the handshake.
async fn starttls(
    stream: MailStream,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    steps: &mut Steps,
) -> Result<MailStream, StepError> {
    let mut lines = LineStream::new(stream, 8192);
    steps
        .run(Step::Greeting, async {
            let line = lines.read_line().await.map_err(|e| e.into_error(PROTO))?;
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("* OK") {
                Ok(())
            } else if text.starts_with("* BYE") {
                Err(Error::new(
                    ErrorCode::ServerUnavailable,
                    format!("the IMAP server refused the connection: {text}"),
                ))
            } else {
                Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!("unexpected IMAP greeting: {}", short_debug(&text)),
                ))
            }
        })
        .await?;
    steps
        .run(Step::Tls, async {
            lines
                .write_all(b"ms0 STARTTLS\r\n")
                .await
                .map_err(|e| io_error(&e))?;
            loop {
                let line = lines.read_line().await.map_err(|e| e.into_error(PROTO))?;
                let text = String::from_utf8_lossy(&line);
                if let Some(rest) = text.strip_prefix("ms0 ") {
                    if !rest.starts_with("OK") {
                        return Err(Error::new(
                            ErrorCode::Tls,
                            format!("the IMAP server refused STARTTLS: {rest}"),
                        ));
                    }
                    break;
                }
            }
            if lines.buffered() > 0 {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    "the IMAP server sent data after STARTTLS before the TLS handshake",
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

/// Splits async-imap's `NO`/`BAD` text ("code: Some(Alert), info: Some(\"…\")").
fn parse_no(s: &str) -> (bool, String) {
    let alert = s.contains("code: Some(Alert)");
    let info = s
        .find("info: Some(\"")
        .map(|i| {
            let rest = &s[i + 12..];
            rest.strip_suffix("\")")
                .unwrap_or(rest)
                .replace("\\\"", "\"")
        })
        .unwrap_or_default();
    (alert, info)
}

/// Classifies an error from AUTHENTICATE / LOGIN.
fn auth_error(
    err: async_imap::error::Error,
    challenge: Option<&[u8]>,
    creds: &Credentials,
) -> Error {
    use async_imap::error::Error as E;
    let decoded = challenge.map(|c| SaslChallenge::from_json(c).unwrap_or_default());
    match err {
        E::No(s) => {
            let (alert, info) = parse_no(&s);
            let upper = info.to_ascii_uppercase();
            if upper.starts_with("[UNAVAILABLE]") {
                Error::new(
                    ErrorCode::ServerUnavailable,
                    format!("the IMAP server could not authenticate now: NO {info}"),
                )
            } else if decoded.is_none()
                && (upper.starts_with("[CONTACTADMIN]")
                    || (alert
                        && !(matches!(creds, Credentials::Password { .. })
                            && (upper.contains("PASSWORD") || upper.contains("WEB BROWSER")))))
            {
                // A rejected token always gets the JSON challenge first; NO
                // without one, with [ALERT] (Gmail: "not enabled for IMAP
                // use") or [CONTACTADMIN] (Dovecot nologin), means the
                // account may not use IMAP.
                Error::new(
                    ErrorCode::ProtocolDisabled,
                    format!(
                        "the IMAP server accepted the login but refuses IMAP for this account: NO {}{info}",
                        if alert { "[ALERT] " } else { "" }
                    ),
                )
            } else {
                let what = match &decoded {
                    Some(c) => format!(" ({})", c.describe()),
                    None => String::new(),
                };
                Error::new(
                    ErrorCode::AuthRejected,
                    format!("the IMAP server rejected the credentials{what}: NO {info}"),
                )
            }
        }
        E::Bad(s) => {
            let (_, info) = parse_no(&s);
            Error::new(
                ErrorCode::ProtocolError,
                format!("the IMAP server refused the authentication command: BAD {info}"),
            )
        }
        E::ConnectionLost => Error::new(
            ErrorCode::Network,
            "the IMAP server closed the connection during authentication",
        ),
        E::Io(e) => io_error(&e),
        E::Parse(_) => Error::new(
            ErrorCode::ProtocolError,
            "the IMAP server sent a malformed answer during authentication",
        ),
        other => Error::new(
            ErrorCode::ProtocolError,
            format!("IMAP authentication: {other}"),
        ),
    }
}

impl ImapClient {
    /// Connects and authenticates, recording each step in `steps`.
    ///
    /// Mechanism choice: `preferred` if advertised (`AUTH=…`), else XOAUTH2
    /// then OAUTHBEARER for OAuth credentials, PLAIN then LOGIN (then the
    /// IMAP `LOGIN` command) for passwords. Passwords and tokens alike are
    /// refused on an unencrypted connection unless the host is loopback and
    /// [`ConnectOptions::allow_plaintext_on_loopback`] is set.
    pub async fn connect(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        steps: &mut Steps,
    ) -> Result<ImapClient, StepError> {
        let connected = parsed(Self::connect_unguarded(
            endpoint, opts, creds, preferred, steps,
        ))
        .await;
        connected.unwrap_or_else(|| {
            let done = |step: Step| steps.records().iter().any(|r| r.step == step);
            let step = if !done(Step::Greeting) {
                Step::Greeting
            } else if !done(Step::Capabilities) {
                Step::Capabilities
            } else {
                Step::Authenticate
            };
            Err(StepError::new(step, parser_panicked()))
        })
    }

    async fn connect_unguarded(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        creds: &Credentials,
        preferred: Option<Mechanism>,
        steps: &mut Steps,
    ) -> Result<ImapClient, StepError> {
        let stream = open(endpoint, opts, steps).await?;
        let mut client = if endpoint.security == Security::StartTls {
            let tls = starttls(stream, endpoint, opts, steps).await?;
            Client::new(guarded(tls))
        } else {
            let mut client = Client::new(guarded(stream));
            steps
                .run_detailed(Step::Greeting, async {
                    let g = read_greeting(&mut client).await?;
                    Ok(((), Some(g)))
                })
                .await?;
            client
        };
        let encrypted = client.get_ref().get_ref().get_ref().is_encrypted();
        let capabilities = steps
            .run_detailed(Step::Capabilities, async {
                let c = raw_capability(&mut client, "ms1").await?;
                let d = c.join(" ");
                Ok((c, Some(d)))
            })
            .await?;
        let offered_names: Vec<String> = capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("AUTH=").map(str::to_owned))
            .collect();
        let offered: Vec<Mechanism> = offered_names
            .iter()
            .filter_map(|n| Mechanism::parse(n))
            .collect();
        let login_disabled = capabilities.iter().any(|c| c == "LOGINDISABLED");
        let sasl_ir = capabilities.iter().any(|c| c == "SASL-IR");

        // Passwords may fall back to the LOGIN command when no SASL password
        // mechanism is offered.
        let mechanism = match creds {
            Credentials::Password { .. }
                if preferred.is_none()
                    && !offered.iter().any(|m| m.is_password())
                    && !login_disabled =>
            {
                None
            }
            _ => Some(
                choose_mechanism(PROTO, &offered, &offered_names, creds, preferred)
                    .map_err(|error| StepError::new(Step::Capabilities, error))?,
            ),
        };
        check_plaintext_allowed(encrypted, endpoint, creds, opts.allow_plaintext_on_loopback)
            .map_err(|error| StepError::new(Step::Authenticate, error))?;
        let timeout = opts.timeout;
        let (session, used) = steps
            .run_detailed(Step::Authenticate, async {
                let (session, used) =
                    authenticate(client, mechanism, creds, endpoint, sasl_ir).await?;
                Ok(((session, used), Some(used.to_string())))
            })
            .await?;
        let mut imap = ImapClient {
            session,
            timeout,
            mechanism: used,
            capabilities,
            broken: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        };
        // Post-login capabilities; turn on CONDSTORE so SELECT reports HIGHESTMODSEQ.
        if let Ok(caps) = imap
            .command(Step::Capabilities, |s| Box::pin(s.capabilities()))
            .await
        {
            imap.capabilities = caps.iter().map(capability_name).collect();
        }
        if imap.capabilities.iter().any(|c| c == "CONDSTORE") {
            let _ = imap
                .command(Step::Capabilities, |s| {
                    Box::pin(s.run_command_and_check_ok("ENABLE CONDSTORE"))
                })
                .await;
        }
        Ok(imap)
    }

    /// The mechanism that authenticated the session (`LOGIN` also stands
    /// for the IMAP `LOGIN` command).
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The server's capabilities (after login).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether the session can no longer be used (connection lost, BYE,
    /// timeout mid-command, `NO [EXPIRED]`).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Largest message [`ImapClient::uid_fetch`] downloads.
    pub fn set_max_message_size(&mut self, bytes: u64) {
        self.max_message_size = bytes;
        self.session
            .get_mut()
            .get_mut()
            .set_max_literal(max_literal(bytes));
    }

    /// Runs one async-imap command with the timeout and error mapping.
    async fn command<'a, T, F>(&'a mut self, step: Step, f: F) -> Result<T>
    where
        F: FnOnce(
            &'a mut Session<ImapStream>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = async_imap::error::Result<T>> + Send + 'a>,
        >,
    {
        if self.broken {
            return Err(session_gone());
        }
        let timeout = self.timeout;
        let broken = &mut self.broken;
        match tokio::time::timeout(timeout, parsed(f(&mut self.session))).await {
            Ok(None) => {
                *broken = true;
                Err(parser_panicked())
            }
            Ok(Some(Ok(v))) => Ok(v),
            Ok(Some(Err(e))) => {
                let (err, gone) = session_error(e);
                if gone {
                    *broken = true;
                }
                Err(err)
            }
            Err(_) => {
                *broken = true;
                Err(timeout_error(timeout, step, PROTO))
            }
        }
    }

    /// `EXAMINE INBOX` (read-only).
    pub async fn examine_inbox(&mut self) -> Result<MailboxStatus> {
        let mb = self
            .command(Step::SelectInbox, |s| Box::pin(s.examine("INBOX")))
            .await?;
        status_of(&mb)
    }

    /// `SELECT INBOX` (read-write; needed only to change flags or delete).
    pub async fn select_inbox(&mut self) -> Result<MailboxStatus> {
        let mb = self
            .command(Step::SelectInbox, |s| Box::pin(s.select("INBOX")))
            .await?;
        status_of(&mb)
    }

    /// `UID FETCH` of whole messages in `range` of the selected mailbox,
    /// with `BODY.PEEK[]` (never marks them read). Messages above the size
    /// limit come back with `oversized = true` and no body.
    ///
    /// The timeout applies to each response (inactivity), not to the whole
    /// transfer; fetch in batches for large mailboxes.
    pub async fn uid_fetch(&mut self, range: UidRange) -> Result<Vec<FetchedMessage>> {
        let meta = self
            .fetch_stream(&range.to_imap(), "(UID RFC822.SIZE INTERNALDATE FLAGS)")
            .await?;
        let mut messages: Vec<FetchedMessage> = meta
            .into_iter()
            .filter(|m| range.contains(m.uid))
            .map(|mut m| {
                m.oversized = u64::from(m.size) > self.max_message_size;
                m
            })
            .collect();
        messages.sort_by_key(|m| m.uid);
        messages.dedup_by_key(|m| m.uid);
        let wanted: Vec<u32> = messages
            .iter()
            .filter(|m| !m.oversized)
            .map(|m| m.uid)
            .collect();
        if wanted.is_empty() {
            return Ok(messages);
        }
        let set = uid_set(&wanted);
        let bodies = self.fetch_stream(&set, "(UID BODY.PEEK[])").await?;
        for b in bodies {
            if let Some(m) = messages.iter_mut().find(|m| m.uid == b.uid) {
                if b.raw.len() as u64 > max_literal(u64::from(m.size)) {
                    return Err(larger_than_announced(m.uid, b.raw.len(), m.size));
                }
                m.raw = b.raw;
            }
        }
        Ok(messages)
    }

    /// `UID FETCH range (UID FLAGS)`: current flags, e.g. to check `\Seen`.
    pub async fn uid_flags(&mut self, range: UidRange) -> Result<Vec<(u32, Vec<String>)>> {
        let meta = self.fetch_stream(&range.to_imap(), "(UID FLAGS)").await?;
        Ok(meta
            .into_iter()
            .filter(|m| range.contains(m.uid))
            .map(|m| (m.uid, m.flags))
            .collect())
    }

    async fn fetch_stream(&mut self, set: &str, query: &str) -> Result<Vec<FetchedMessage>> {
        if self.broken {
            return Err(session_gone());
        }
        let timeout = self.timeout;
        let max = self.max_message_size;
        let result: Result<Vec<FetchedMessage>, (Error, bool)> = parsed(async {
            let mut stream =
                match tokio::time::timeout(timeout, self.session.uid_fetch(set, query)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(session_error(e)),
                    Err(_) => return Err((timeout_error(timeout, Step::Fetch, PROTO), true)),
                };
            let mut out: Vec<FetchedMessage> = Vec::new();
            // Responses that add nothing (a UID not asked for, or one
            // already seen): a server that floods them is cut off.
            let mut noise = 0usize;
            let mut seen = std::collections::HashSet::new();
            loop {
                match tokio::time::timeout(timeout, stream.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(f))) => {
                        let wanted = f
                            .uid
                            .filter(|u| uid_set_contains(set, *u) && seen.insert(*u));
                        let Some(uid) = wanted else {
                            noise += 1;
                            if noise > MAX_NOISE {
                                return Err((flood_error(), true));
                            }
                            continue;
                        };
                        let raw = f.body().map(<[u8]>::to_vec).unwrap_or_default();
                        if raw.len() as u64 > max.saturating_add(max / 8 + 1024) {
                            return Err((
                                Error::new(
                                    ErrorCode::ProtocolError,
                                    format!(
                                        "the IMAP server sent more than {max} bytes for UID {uid}"
                                    ),
                                ),
                                false,
                            ));
                        }
                        out.push(FetchedMessage {
                            uid,
                            size: f.size.unwrap_or(raw.len() as u32),
                            internal_date: f.internal_date().and_then(|d| {
                                OffsetDateTime::from_unix_timestamp(d.timestamp()).ok()
                            }),
                            flags: f.flags().map(|fl| flag_name(&fl)).collect(),
                            raw,
                            oversized: false,
                        });
                    }
                    Ok(Some(Err(e))) => return Err(session_error(e)),
                    Err(_) => return Err((timeout_error(timeout, Step::Fetch, PROTO), true)),
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_else(|| Err((parser_panicked(), true)));
        result.map_err(|(e, gone)| {
            if gone {
                self.broken = true;
            }
            e
        })
    }

    /// `UID SEARCH <query>` on the selected mailbox, UIDs ascending.
    pub async fn uid_search(&mut self, query: &str) -> Result<Vec<u32>> {
        let query = query.to_owned();
        let found = self
            .command(Step::Fetch, move |s| Box::pin(s.uid_search(query)))
            .await?;
        let mut uids: Vec<u32> = found.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// `UID FETCH <set> <items>`, handing each message's attributes to
    /// `each` as its response arrives (nothing is collected here). Each
    /// response must arrive within the inactivity timeout and the whole
    /// command within `deadline`, so a server that trickles cannot hold the
    /// caller.
    pub async fn fetch_each(
        &mut self,
        set: &str,
        items: &str,
        deadline: Duration,
        mut each: impl FnMut(FetchAttributes) -> Result<()> + Send,
    ) -> Result<()> {
        if self.broken {
            return Err(session_gone());
        }
        let timeout = self.timeout;
        let started = tokio::time::Instant::now();
        let end = started + deadline;
        let result: Result<(), (Error, bool)> = parsed(async {
            let tag = match tokio::time::timeout(
                timeout,
                self.session.run_command(format!("UID FETCH {set} {items}")),
            )
            .await
            {
                Ok(Ok(tag)) => tag,
                Ok(Err(e)) => return Err(session_error(e)),
                Err(_) => return Err((timeout_error(timeout, Step::Fetch, PROTO), true)),
            };
            loop {
                let now = tokio::time::Instant::now();
                if now >= end {
                    return Err((deadline_error(deadline), true));
                }
                let wait = timeout.min(end - now);
                let response = match tokio::time::timeout(wait, self.session.read_response()).await
                {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => return Err((session_gone(), true)),
                    Ok(Err(e)) => return Err((io_error(&e), true)),
                    Err(_) if tokio::time::Instant::now() >= end => {
                        return Err((deadline_error(deadline), true));
                    }
                    Err(_) => return Err((timeout_error(timeout, Step::Fetch, PROTO), true)),
                };
                match response.parsed() {
                    Response::Fetch(_, attrs) => {
                        let a = fetch_attributes(attrs);
                        if let (Some(size), Some(body)) = (a.size, &a.body)
                            && body.len() as u64 > max_literal(u64::from(size))
                        {
                            return Err((
                                larger_than_announced(a.uid.unwrap_or(0), body.len(), size),
                                false,
                            ));
                        }
                        each(a).map_err(|e| (e, false))?;
                    }
                    Response::Done {
                        tag: done,
                        status,
                        outcome,
                        ..
                    } if done.0 == tag.0 => {
                        return match status {
                            imap_proto::Status::Ok => Ok(()),
                            _ => Err((
                                Error::new(
                                    fetch_refusal_code(outcome),
                                    format!(
                                        "the IMAP server refused UID FETCH: {:?} {}",
                                        status,
                                        outcome.information.as_deref().unwrap_or("")
                                    ),
                                ),
                                false,
                            )),
                        };
                    }
                    Response::Data {
                        status: imap_proto::Status::Bye,
                        outcome,
                    } => {
                        return Err((
                            Error::new(
                                ErrorCode::Network,
                                format!(
                                    "the IMAP server ended the session: {}",
                                    outcome.information.as_deref().unwrap_or("BYE")
                                ),
                            ),
                            true,
                        ));
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|| Err((parser_panicked(), true)));
        result.map_err(|(e, gone)| {
            if gone {
                self.broken = true;
            }
            e
        })
    }

    /// `LOGOUT`.
    pub async fn logout(&mut self) -> Result<()> {
        let r = self.command(Step::Logout, |s| Box::pin(s.logout())).await;
        self.broken = true;
        r
    }
}

/// One message's attributes from a `UID FETCH` response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchAttributes {
    /// `UID`.
    pub uid: Option<u32>,
    /// `RFC822.SIZE`.
    pub size: Option<u32>,
    /// `INTERNALDATE`.
    pub internal_date: Option<OffsetDateTime>,
    /// `FLAGS`.
    pub flags: Vec<String>,
    /// `MODSEQ` (CONDSTORE).
    pub modseq: Option<u64>,
    /// Gmail `X-GM-MSGID`.
    pub gmail_message_id: Option<u64>,
    /// Gmail `X-GM-THRID`.
    pub gmail_thread_id: Option<u64>,
    /// `BODY[]` (the whole message).
    pub body: Option<Vec<u8>>,
    /// `BODY[HEADER…]` (a header section or some header fields).
    pub header: Option<Vec<u8>>,
}

/// Reads the attributes of one `* n FETCH (…)` response.
pub(crate) fn fetch_attributes(attrs: &[imap_proto::AttributeValue<'_>]) -> FetchAttributes {
    use imap_proto::{AttributeValue as A, SectionPath};
    let mut out = FetchAttributes::default();
    for a in attrs {
        match a {
            A::Uid(u) => out.uid = Some(*u),
            A::Rfc822Size(n) => out.size = Some(*n),
            A::InternalDate(d) => out.internal_date = parse_internal_date(d),
            A::Flags(f) => out.flags = f.iter().map(|f| f.to_string()).collect(),
            A::ModSeq(m) => out.modseq = Some(*m),
            A::GmailMsgId(id) => out.gmail_message_id = Some(*id),
            A::GmailThrId(id) => out.gmail_thread_id = Some(*id),
            A::BodySection { section, data, .. } => {
                let bytes = data.as_ref().map(|d| d.to_vec()).unwrap_or_default();
                match section {
                    None => out.body = Some(bytes),
                    Some(SectionPath::Full(_)) | Some(SectionPath::Part(_, _)) => {
                        out.header = Some(bytes)
                    }
                }
            }
            A::Rfc822(Some(d)) => out.body = Some(d.to_vec()),
            A::Rfc822Header(Some(d)) => out.header = Some(d.to_vec()),
            _ => {}
        }
    }
    out
}

/// `INTERNALDATE`: `17-Jul-1996 02:44:25 -0700` (RFC 3501 `date-time`).
fn parse_internal_date(text: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!(
        "[day padding:space]-[month repr:short]-[year] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(text.trim(), &format).ok()
}

/// The code for a refused FETCH: Gmail's `[THROTTLED]` and Dovecot's
/// `[UNAVAILABLE]` are transient.
fn fetch_refusal_code(outcome: &imap_proto::Outcome<'_>) -> ErrorCode {
    let text = outcome.information.as_deref().unwrap_or("");
    if text.contains("THROTTLED") || text.contains("UNAVAILABLE") {
        ErrorCode::ServerUnavailable
    } else {
        ErrorCode::ProtocolError
    }
}

/// How many FETCH responses that add nothing one `UID FETCH` tolerates.
const MAX_NOISE: usize = 10_000;

fn flood_error() -> Error {
    Error::new(
        ErrorCode::ProtocolError,
        format!(
            "the IMAP server sent more than {MAX_NOISE} FETCH responses for messages not asked for"
        ),
    )
}

fn larger_than_announced(uid: u32, got: usize, size: u32) -> Error {
    Error::new(
        ErrorCode::ProtocolError,
        format!(
            "the IMAP server sent {got} bytes for UID {uid}, whose RFC822.SIZE it gave as {size}"
        ),
    )
}

/// Whether `uid` is in an IMAP set such as `1:3,7,9:*` (as
/// [`uid_set`] and [`UidRange`] write them; `*` is the largest UID).
fn uid_set_contains(set: &str, uid: u32) -> bool {
    let bound = |t: &str| -> Option<u32> {
        if t == "*" {
            Some(u32::MAX)
        } else {
            t.parse().ok()
        }
    };
    set.split(',').any(|part| match part.split_once(':') {
        Some((a, b)) => match (bound(a), bound(b)) {
            (Some(a), Some(b)) => (a.min(b)..=a.max(b)).contains(&uid),
            _ => false,
        },
        None => bound(part) == Some(uid),
    })
}

/// Adds what a later FETCH response for the same message says.
fn merge_attributes(into: &mut FetchAttributes, from: FetchAttributes) {
    into.size = from.size.or(into.size);
    into.internal_date = from.internal_date.or(into.internal_date);
    if !from.flags.is_empty() {
        into.flags = from.flags;
    }
    into.modseq = from.modseq.or(into.modseq);
    into.gmail_message_id = from.gmail_message_id.or(into.gmail_message_id);
    into.gmail_thread_id = from.gmail_thread_id.or(into.gmail_thread_id);
    if from.body.is_some() {
        into.body = from.body;
    }
    if from.header.is_some() {
        into.header = from.header;
    }
}

fn deadline_error(deadline: Duration) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "the IMAP server did not finish a FETCH within its {} s deadline (it sends too slowly)",
            deadline.as_secs()
        ),
    )
}

fn session_gone() -> Error {
    Error::new(
        ErrorCode::Network,
        "the IMAP session is no longer usable (the server ended it)",
    )
}

/// Maps a command error; the bool says whether the session is gone.
fn session_error(e: async_imap::error::Error) -> (Error, bool) {
    use async_imap::error::Error as E;
    match e {
        E::ConnectionLost => (
            Error::new(ErrorCode::Network, "the IMAP server closed the connection"),
            true,
        ),
        E::Io(io) => (io_error(&io), true),
        E::No(s) => {
            let (_, info) = parse_no(&s);
            let upper = info.to_ascii_uppercase();
            if upper.starts_with("[EXPIRED]") {
                (
                    Error::new(
                        ErrorCode::AuthRejected,
                        format!("the IMAP session expired: NO {info}"),
                    ),
                    true,
                )
            } else if upper.starts_with("[UNAVAILABLE]") {
                (
                    Error::new(ErrorCode::ServerUnavailable, format!("IMAP: NO {info}")),
                    false,
                )
            } else {
                (
                    Error::new(
                        ErrorCode::ProtocolError,
                        format!("IMAP command refused: NO {info}"),
                    ),
                    false,
                )
            }
        }
        E::Bad(s) => {
            let (_, info) = parse_no(&s);
            (
                Error::new(
                    ErrorCode::ProtocolError,
                    format!("IMAP command refused: BAD {info}"),
                ),
                false,
            )
        }
        other => {
            let msg = other.to_string();
            // A BYE ends the session.
            let gone = msg.contains("Bye");
            (
                Error::new(
                    ErrorCode::ProtocolError,
                    format!("IMAP: {}", short_debug(&msg)),
                ),
                gone,
            )
        }
    }
}

fn status_of(mb: &async_imap::types::Mailbox) -> Result<MailboxStatus> {
    let uid_validity = mb.uid_validity.ok_or_else(|| {
        Error::new(
            ErrorCode::ProtocolError,
            "the IMAP server did not report UIDVALIDITY for INBOX",
        )
    })?;
    Ok(MailboxStatus {
        uid_validity,
        uid_next: mb.uid_next.unwrap_or(0),
        highest_modseq: mb.highest_modseq,
        exists: mb.exists,
    })
}

fn flag_name(f: &async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag as F;
    match f {
        F::Seen => "\\Seen".into(),
        F::Answered => "\\Answered".into(),
        F::Flagged => "\\Flagged".into(),
        F::Deleted => "\\Deleted".into(),
        F::Draft => "\\Draft".into(),
        F::Recent => "\\Recent".into(),
        F::MayCreate => "\\*".into(),
        F::Custom(c) => c.to_string(),
    }
}

fn capability_name(c: &async_imap::types::Capability) -> String {
    use async_imap::types::Capability as C;
    match c {
        C::Imap4rev1 => "IMAP4REV1".into(),
        C::Auth(m) => format!("AUTH={}", m.to_ascii_uppercase()),
        C::Atom(a) => a.to_ascii_uppercase(),
    }
}

/// Compresses sorted UIDs into an IMAP set: `1:3,7,9:10`.
pub(crate) fn uid_set(uids: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Logs in. async-imap logs each command it sends, so it only ever sees
/// placeholders; [`SecretSwap`] puts the secrets in on the way out.
async fn authenticate(
    mut client: Client<ImapStream>,
    mechanism: Option<Mechanism>,
    creds: &Credentials,
    endpoint: &Endpoint,
    sasl_ir: bool,
) -> Result<(Session<ImapStream>, Mechanism)> {
    let Some(mechanism) = mechanism else {
        // IMAP LOGIN command for passwords.
        let Credentials::Password { user, password } = creds else {
            return Err(Error::new(ErrorCode::Internal, "LOGIN needs a password"));
        };
        let placeholder = SecretSwap::<MailStream>::placeholder()?;
        client.get_mut().swap(
            imap_quote(&placeholder).to_string(),
            imap_quote(password.expose()),
        );
        let result = client
            .login(user, &placeholder)
            .await
            .map(|s| (s, Mechanism::Login))
            .map_err(|(e, _)| auth_error(e, None, creds));
        return result.map(|(mut session, m)| {
            session.get_mut().clear_swaps();
            (session, m)
        });
    };
    let responses: Vec<SaslResponse> = match (mechanism, creds) {
        (Mechanism::XOAuth2, Credentials::OAuth { user, access_token }) => {
            vec![sasl::xoauth2_initial_response(user, access_token)?]
        }
        (Mechanism::OAuthBearer, Credentials::OAuth { user, access_token }) => {
            vec![sasl::oauthbearer_initial_response(
                user,
                &endpoint.host,
                endpoint.port,
                access_token,
            )?]
        }
        (Mechanism::Plain, Credentials::Password { user, password }) => {
            vec![sasl::plain_initial_response(user, password)?]
        }
        (Mechanism::Login, Credentials::Password { user, password }) => {
            let (u, p) = sasl::login_responses(user, password)?;
            vec![u, p]
        }
        _ => {
            return Err(Error::new(
                ErrorCode::MechanismUnsupported,
                format!("{mechanism} does not fit these credentials"),
            ));
        }
    };
    // Each response becomes a placeholder whose base64 form is swapped for
    // the response's base64 form.
    let mut placeholders = Vec::with_capacity(responses.len());
    for response in &responses {
        let placeholder = SecretSwap::<MailStream>::placeholder()?;
        let encoded = STANDARD.encode(placeholder.as_bytes());
        client.get_mut().swap(encoded, response.to_base64());
        placeholders.push(placeholder.into_bytes());
    }
    // SASL-IR: the initial response goes on the AUTHENTICATE line.
    let command = if sasl_ir && mechanism != Mechanism::Login {
        let first = placeholders.remove(0);
        format!("{mechanism} {}", STANDARD.encode(first))
    } else {
        mechanism.as_str().to_owned()
    };
    placeholders.reverse();
    let too_many = Arc::new(tokio::sync::Notify::new());
    let mut driver = SaslDriver {
        pending: placeholders,
        answer: mechanism.error_challenge_answer(),
        challenge: None,
        rounds: 0,
        too_many: too_many.clone(),
    };
    let result = tokio::select! {
        r = client.authenticate(command.as_str(), &mut driver) => r,
        () = too_many.notified() => {
            return Err(Error::new(
                ErrorCode::ProtocolError,
                "the IMAP server kept sending SASL challenges",
            ));
        }
    };
    match result {
        Ok(mut session) => {
            session.get_mut().clear_swaps();
            Ok((session, mechanism))
        }
        Err((e, _client)) => Err(auth_error(e, driver.challenge.as_deref(), creds)),
    }
}

/// An IMAP quoted string, quoted as async-imap quotes LOGIN's arguments.
fn imap_quote(text: &str) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// An INBOX reader that survives the server ending its session.
///
/// Holds a [`CredentialSource`]; connects lazily, examines INBOX, and when a
/// command fails because the session is gone (token expired → `* BYE`,
/// connection closed, `NO [EXPIRED]`), reconnects once with
/// `credentials(force_fresh = true)`, re-examines INBOX and repeats the
/// command. A first login refused with `auth_rejected` is also retried once
/// with fresh credentials (the cached token may have just expired).
pub struct ImapMailbox {
    endpoint: Endpoint,
    opts: ConnectOptions,
    source: Arc<dyn CredentialSource>,
    preferred: Option<Mechanism>,
    client: Option<ImapClient>,
    status: Option<MailboxStatus>,
    reconnects: u32,
    max_message_size: u64,
}

impl std::fmt::Debug for ImapMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapMailbox")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.client.is_some())
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

impl ImapMailbox {
    /// A mailbox reader; nothing is connected until the first call.
    pub fn new(
        endpoint: Endpoint,
        opts: ConnectOptions,
        source: Arc<dyn CredentialSource>,
        preferred: Option<Mechanism>,
    ) -> Self {
        ImapMailbox {
            endpoint,
            opts,
            source,
            preferred,
            client: None,
            status: None,
            reconnects: 0,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// How many times the session was re-established after the server ended it.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// Largest message downloaded by [`ImapMailbox::fetch`].
    pub fn set_max_message_size(&mut self, bytes: u64) {
        self.max_message_size = bytes;
        if let Some(c) = &mut self.client {
            c.set_max_message_size(bytes);
        }
    }

    async fn connect(&mut self, force_fresh: bool) -> Result<()> {
        let creds = with_timeout(
            self.opts.timeout,
            Step::Credentials,
            PROTO,
            self.source.credentials(force_fresh),
        )
        .await?;
        let mut steps = Steps::new(PROTO, self.opts.timeout);
        let attempt = ImapClient::connect(
            &self.endpoint,
            &self.opts,
            &creds,
            self.preferred,
            &mut steps,
        )
        .await;
        let mut client = match attempt {
            Ok(c) => c,
            Err(e) if !force_fresh && e.error.code() == ErrorCode::AuthRejected => {
                let creds = with_timeout(
                    self.opts.timeout,
                    Step::Credentials,
                    PROTO,
                    self.source.credentials(true),
                )
                .await?;
                let mut steps = Steps::new(PROTO, self.opts.timeout);
                ImapClient::connect(
                    &self.endpoint,
                    &self.opts,
                    &creds,
                    self.preferred,
                    &mut steps,
                )
                .await?
            }
            Err(e) => return Err(e.error),
        };
        client.set_max_message_size(self.max_message_size);
        let status = client.examine_inbox().await?;
        self.status = Some(status);
        self.client = Some(client);
        Ok(())
    }

    async fn ensure(&mut self) -> Result<&mut ImapClient> {
        if self.client.as_ref().is_none_or(|c| c.is_broken()) {
            self.client = None;
            self.connect(false).await?;
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "IMAP client missing after connect"))
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.client = None;
        self.reconnects += 1;
        tracing::info!(host = %self.endpoint.host, "IMAP session ended by the server; re-authenticating with fresh credentials");
        self.connect(true).await
    }

    /// INBOX status as of the last (re-)open; re-examines to refresh it.
    pub async fn status(&mut self) -> Result<MailboxStatus> {
        let client = self.ensure().await?;
        match client.examine_inbox().await {
            Ok(s) => {
                self.status = Some(s);
                Ok(s)
            }
            Err(e) if client.is_broken() => {
                let _ = e;
                self.reconnect().await?;
                self.status.ok_or_else(|| {
                    Error::new(ErrorCode::Internal, "no INBOX status after reconnect")
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches whole messages of INBOX in `range` (see [`ImapClient::uid_fetch`]).
    pub async fn fetch(&mut self, range: UidRange) -> Result<Vec<FetchedMessage>> {
        let client = self.ensure().await?;
        match client.uid_fetch(range).await {
            Ok(m) => Ok(m),
            Err(_) if client.is_broken() => {
                self.reconnect().await?;
                let client = self.ensure().await?;
                client.uid_fetch(range).await
            }
            Err(e) => Err(e),
        }
    }

    /// Current flags of messages in `range`.
    pub async fn flags(&mut self, range: UidRange) -> Result<Vec<(u32, Vec<String>)>> {
        let client = self.ensure().await?;
        match client.uid_flags(range).await {
            Ok(m) => Ok(m),
            Err(_) if client.is_broken() => {
                self.reconnect().await?;
                let client = self.ensure().await?;
                client.uid_flags(range).await
            }
            Err(e) => Err(e),
        }
    }

    /// The server's capabilities (after login).
    pub async fn capabilities(&mut self) -> Result<Vec<String>> {
        Ok(self.ensure().await?.capabilities().to_vec())
    }

    /// INBOX's UIDVALIDITY as of the last (re-)open.
    pub fn current_uid_validity(&self) -> Option<u32> {
        self.status.map(|s| s.uid_validity)
    }

    /// `UID SEARCH <query>` in INBOX (see [`ImapClient::uid_search`]).
    pub async fn search(&mut self, query: &str) -> Result<Vec<u32>> {
        let client = self.ensure().await?;
        match client.uid_search(query).await {
            Ok(u) => Ok(u),
            Err(_) if client.is_broken() => {
                self.reconnect().await?;
                self.ensure().await?.uid_search(query).await
            }
            Err(e) => Err(e),
        }
    }

    /// `UID FETCH <set> <items>` in INBOX, collected (see
    /// [`ImapClient::fetch_each`]); re-established once if the server ended
    /// the session. A timeout is not retried: a server that is too slow
    /// would hold the caller for twice the deadline.
    pub async fn fetch_attrs(
        &mut self,
        set: &str,
        items: &str,
        deadline: Duration,
    ) -> Result<Vec<FetchAttributes>> {
        // One entry per UID asked for, so a server that floods FETCH
        // responses cannot grow the list.
        let mut out: Vec<FetchAttributes> = Vec::new();
        let mut collect = |a: FetchAttributes| {
            let Some(uid) = a.uid.filter(|u| uid_set_contains(set, *u)) else {
                return Ok(());
            };
            match out.iter_mut().find(|o| o.uid == Some(uid)) {
                Some(o) => merge_attributes(o, a),
                None => out.push(a),
            }
            Ok(())
        };
        let client = self.ensure().await?;
        match client.fetch_each(set, items, deadline, &mut collect).await {
            Ok(()) => Ok(out),
            Err(e) if client.is_broken() && e.code() != ErrorCode::Timeout => {
                self.reconnect().await?;
                let mut again: Vec<FetchAttributes> = Vec::new();
                self.ensure()
                    .await?
                    .fetch_each(set, items, deadline, |a| {
                        let Some(uid) = a.uid.filter(|u| uid_set_contains(set, *u)) else {
                            return Ok(());
                        };
                        match again.iter_mut().find(|o| o.uid == Some(uid)) {
                            Some(o) => merge_attributes(o, a),
                            None => again.push(a),
                        }
                        Ok(())
                    })
                    .await?;
                Ok(again)
            }
            Err(e) => Err(e),
        }
    }

    /// Logs out (if connected).
    pub async fn close(&mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.logout().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(UidRange::from(0).to_imap(), "1:*");
        assert_eq!(UidRange::between(3, 9).to_imap(), "3:9");
        assert!(UidRange::from(5).contains(5));
        assert!(!UidRange::from(5).contains(4));
        for (set, yes, no) in [
            ("1:3,7,9:10", &[1, 3, 7, 10][..], &[4, 8, 11][..]),
            ("5:*", &[5, u32::MAX], &[4]),
            ("9:2", &[2, 9], &[1, 10]),
            ("x,3", &[3], &[0]),
        ] {
            assert!(yes.iter().all(|u| uid_set_contains(set, *u)), "{set}");
            assert!(!no.iter().any(|u| uid_set_contains(set, *u)), "{set}");
        }
    }

    #[test]
    fn no_parsing() {
        let (alert, info) = parse_no("code: Some(Alert), info: Some(\"IMAP access is disabled\")");
        assert!(alert);
        assert_eq!(info, "IMAP access is disabled");
        let (alert, info) =
            parse_no("code: None, info: Some(\"[UNAVAILABLE] Temporary authentication failure.\")");
        assert!(!alert);
        assert!(info.starts_with("[UNAVAILABLE]"));
    }

    #[test]
    fn auth_errors_are_classified() {
        use async_imap::error::Error as E;
        let oauth = Credentials::OAuth {
            user: "u".into(),
            access_token: crate::model::Secret::new("t"),
        };
        let e = auth_error(
            E::No(
                "code: None, info: Some(\"[UNAVAILABLE] Temporary authentication failure.\")"
                    .into(),
            ),
            None,
            &oauth,
        );
        assert_eq!(e.code(), ErrorCode::ServerUnavailable);
        let e = auth_error(
            E::No(
                "code: None, info: Some(\"[AUTHENTICATIONFAILED] Authentication failed.\")".into(),
            ),
            Some(br#"{"status":"401","schemes":"bearer"}"#),
            &oauth,
        );
        assert_eq!(e.code(), ErrorCode::AuthRejected);
        assert!(e.message().contains("status 401"), "{}", e.message());
        let e = auth_error(
            E::No(
                "code: Some(Alert), info: Some(\"Your account is not enabled for IMAP use.\")"
                    .into(),
            ),
            None,
            &oauth,
        );
        assert_eq!(e.code(), ErrorCode::ProtocolDisabled);
        let e = auth_error(
            E::No("code: None, info: Some(\"[CONTACTADMIN] IMAP access is disabled for this account\")".into()),
            None,
            &oauth,
        );
        assert_eq!(e.code(), ErrorCode::ProtocolDisabled);
    }

    #[test]
    fn driver_answers_error_challenge_once_token_sent() {
        let r = b"placeholder".to_vec();
        let mut d = SaslDriver {
            pending: vec![r.clone()],
            answer: Mechanism::XOAuth2.error_challenge_answer(),
            challenge: None,
            rounds: 0,
            too_many: Arc::default(),
        };
        let mut a = &mut d;
        assert_eq!(Authenticator::process(&mut a, b""), r);
        assert_eq!(Authenticator::process(&mut a, b"{\"status\":\"401\"}"), b"");
        assert_eq!(d.challenge.as_deref(), Some(&b"{\"status\":\"401\"}"[..]));
    }
}
