//! Mail transports: IMAP, POP3 and SMTP over TLS, authenticated with
//! XOAUTH2/OAUTHBEARER (OAuth access tokens) or PLAIN/LOGIN (passwords).
//!
//! # What is here
//!
//! * [`tls`]: [`TlsSettings`] — trusted roots and the ring-only rustls config.
//! * [`imap`]: [`imap::ImapClient`] (one authenticated session) and
//!   [`imap::ImapMailbox`] (re-connects and re-authenticates with a fresh
//!   token when the server ends an expired session).
//! * [`pop3`]: our own small POP3 client ([`pop3::Pop3Client`]).
//! * [`smtp`]: [`smtp::SmtpClient`] on lettre's connection, with our TLS.
//!
//! # Steps, timeouts and per-step reports
//!
//! Every network step — TCP connect, TLS handshake, greeting, capability
//! query, authentication, INBOX select / STAT, EHLO, each later command — is
//! bounded by [`ConnectOptions::timeout`]; a timeout error names the step
//! ("timed out after 5s waiting for the IMAP greeting").
//!
//! Connecting goes through a [`Steps`] recorder: each step that completes is
//! appended as a [`StepRecord`] (step, duration, detail), and the step that
//! fails is returned as a [`StepError`] `{ step, error }`. A "test and enable"
//! checker therefore builds its per-step report by creating a `Steps`,
//! calling e.g. [`imap::ImapClient::connect`] and then
//! [`imap::ImapClient::examine_inbox`] through [`Steps::run`], and reading
//! [`Steps::records`] plus the failing step. [`probe_imap`], [`probe_pop3`]
//! and [`probe_smtp`] do exactly that and return a [`ProbeReport`].
//!
//! # Error classification
//!
//! Failures use the crate's [`Error`] with a stable code: `network`
//! (refused, unreachable, DNS, reset or EOF — also in the middle of the TLS
//! handshake), `tls` (certificate not trusted / not valid for the host /
//! not TLS), `timeout`, `protocol_error`,
//! `auth_rejected` (with the decoded SASL challenge), `server_unavailable`
//! (transient server-side failure: IMAP `NO [UNAVAILABLE]`, POP3
//! `-ERR [SYS/TEMP]`, SMTP `454 4.7.0`), `protocol_disabled`,
//! `mechanism_unsupported` (lists what the server offers),
//! `insecure_connection` (a password or an access token would go over an
//! unencrypted connection, other than to a loopback host with
//! [`ConnectOptions::allow_plaintext_on_loopback`]), `send_deferred` (SMTP
//! 4xx), `send_rejected`
//! (SMTP 5xx). Messages never contain tokens or passwords.

pub mod imap;
pub mod pop3;
pub mod smtp;
pub mod tls;

pub(crate) mod io;

pub use io::MailStream;
pub use tls::TlsSettings;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::model::Secret;
use crate::model::profile::{Endpoint, IncomingProtocol};
use crate::sasl::Mechanism;

/// How to connect: the per-step timeout, the TLS trust settings, and
/// whether credentials may cross an unencrypted loopback connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Bound for every network step (connect, handshake, greeting, each
    /// command). The profile's connection timeout (≤ 100 s).
    pub timeout: Duration,
    /// Trusted roots.
    pub tls: TlsSettings,
    /// Whether a password or an access token may be sent over an
    /// unencrypted connection to a loopback host (the profile's
    /// `allow_plaintext_on_loopback`). Default `false`: credentials only
    /// ever travel encrypted.
    pub allow_plaintext_on_loopback: bool,
}

impl ConnectOptions {
    /// Options with a timeout and TLS settings; plaintext never allowed.
    pub fn new(timeout: Duration, tls: TlsSettings) -> Self {
        ConnectOptions {
            timeout,
            tls,
            allow_plaintext_on_loopback: false,
        }
    }

    /// Allows (or not) credentials over an unencrypted connection to a
    /// loopback host, as a profile's `allow_plaintext_on_loopback` does.
    pub fn with_plaintext_on_loopback(mut self, allow: bool) -> Self {
        self.allow_plaintext_on_loopback = allow;
        self
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new(Duration::from_secs(60), TlsSettings::default())
    }
}

/// What a session authenticates with.
#[derive(Clone)]
pub enum Credentials {
    /// An OAuth access token (XOAUTH2 / OAUTHBEARER).
    OAuth {
        /// The account (email address).
        user: String,
        /// The access token.
        access_token: Secret,
    },
    /// A password (PLAIN / LOGIN; Gmail app passwords, generic servers).
    Password {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
}

impl Credentials {
    /// The user name.
    pub fn user(&self) -> &str {
        match self {
            Credentials::OAuth { user, .. } | Credentials::Password { user, .. } => user,
        }
    }

    /// Whether these are OAuth credentials.
    pub fn is_oauth(&self) -> bool {
        matches!(self, Credentials::OAuth { .. })
    }

    /// The mechanisms these credentials can use, in order of preference.
    pub fn mechanisms(&self) -> &'static [Mechanism] {
        match self {
            Credentials::OAuth { .. } => &[Mechanism::XOAuth2, Mechanism::OAuthBearer],
            Credentials::Password { .. } => &[Mechanism::Plain, Mechanism::Login],
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::OAuth { user, .. } => f
                .debug_struct("OAuth")
                .field("user", user)
                .field("access_token", &"[REDACTED]")
                .finish(),
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"[REDACTED]")
                .finish(),
        }
    }
}

/// Supplies credentials to a session, so it can re-authenticate later.
///
/// `force_fresh = true` asks for a token that was not handed out before
/// (refresh it even if the cached one looks valid): the server has just
/// refused or expired the previous one.
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync {
    /// Current (or, with `force_fresh`, newly obtained) credentials.
    async fn credentials(&self, force_fresh: bool) -> Result<Credentials>;
}

/// A [`CredentialSource`] that always returns the same credentials.
#[derive(Debug, Clone)]
pub struct StaticCredentials(pub Credentials);

#[async_trait::async_trait]
impl CredentialSource for StaticCredentials {
    async fn credentials(&self, _force_fresh: bool) -> Result<Credentials> {
        Ok(self.0.clone())
    }
}

/// A network step, for timeouts, error messages and per-step reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    /// Obtaining credentials (token refresh) from the [`CredentialSource`].
    Credentials,
    /// TCP connection (includes DNS resolution).
    Connect,
    /// TLS handshake (implicit TLS, or after STARTTLS/STLS), certificate check.
    Tls,
    /// The server's greeting.
    Greeting,
    /// IMAP CAPABILITY / POP3 CAPA: is the mechanism advertised?
    Capabilities,
    /// SASL authentication.
    Authenticate,
    /// IMAP SELECT/EXAMINE INBOX.
    SelectInbox,
    /// POP3 STAT.
    Stat,
    /// IMAP UID FETCH, POP3 LIST/UIDL/RETR.
    Fetch,
    /// POP3 DELE.
    Delete,
    /// SMTP EHLO (and whether it lists the mechanism).
    Ehlo,
    /// SMTP MAIL/RCPT/DATA.
    Send,
    /// IMAP LOGOUT, POP3 QUIT, SMTP QUIT.
    Logout,
}

impl Step {
    /// Stable snake_case name (`"select_inbox"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Credentials => "credentials",
            Step::Connect => "connect",
            Step::Tls => "tls",
            Step::Greeting => "greeting",
            Step::Capabilities => "capabilities",
            Step::Authenticate => "authenticate",
            Step::SelectInbox => "select_inbox",
            Step::Stat => "stat",
            Step::Fetch => "fetch",
            Step::Delete => "delete",
            Step::Ehlo => "ehlo",
            Step::Send => "send",
            Step::Logout => "logout",
        }
    }

    /// What we wait for in this step, for timeout messages.
    pub fn waiting_for(self, protocol: &str) -> String {
        match self {
            Step::Credentials => "an access token".to_owned(),
            Step::Connect => format!("the TCP connection to the {protocol} server"),
            Step::Tls => format!("the TLS handshake with the {protocol} server"),
            Step::Greeting => format!("the {protocol} greeting"),
            Step::Capabilities => format!("the {protocol} capabilities"),
            Step::Authenticate => format!("the {protocol} authentication result"),
            Step::SelectInbox => format!("the {protocol} server to select INBOX"),
            Step::Stat => format!("the {protocol} STAT answer"),
            Step::Fetch => format!("{protocol} message data"),
            Step::Delete => format!("the {protocol} DELE answer"),
            Step::Ehlo => format!("the {protocol} EHLO answer"),
            Step::Send => format!("the {protocol} server to accept the message"),
            Step::Logout => format!("the {protocol} logout answer"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error together with the step that failed.
#[derive(Debug)]
pub struct StepError {
    /// The step that failed.
    pub step: Step,
    /// What went wrong.
    pub error: Error,
    /// How long the step ran before it failed (zero for a step refused
    /// before anything was sent).
    pub duration: Duration,
}

impl StepError {
    /// A step refused at once, before any waiting.
    pub fn new(step: Step, error: Error) -> Self {
        StepError {
            step,
            error,
            duration: Duration::ZERO,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<StepError> for Error {
    fn from(e: StepError) -> Self {
        e.error
    }
}

/// One completed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// How long it took.
    pub duration: Duration,
    /// What was observed (e.g. the advertised mechanisms), if anything.
    pub detail: Option<String>,
}

/// Runs network steps with the timeout and records the completed ones.
#[derive(Debug)]
pub struct Steps {
    protocol: &'static str,
    timeout: Duration,
    records: Vec<StepRecord>,
}

impl Steps {
    /// A recorder for `protocol` ("IMAP", "POP3", "SMTP") with a per-step timeout.
    pub fn new(protocol: &'static str, timeout: Duration) -> Self {
        Steps {
            protocol,
            timeout,
            records: Vec::new(),
        }
    }

    /// The steps completed so far, in order.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    /// Takes the records out.
    pub fn into_records(self) -> Vec<StepRecord> {
        self.records
    }

    /// The protocol name used in messages.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The per-step timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `fut` as `step`, bounded by the timeout, and records it.
    pub async fn run<T>(
        &mut self,
        step: Step,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T, StepError> {
        self.run_detailed(step, async { fut.await.map(|v| (v, None)) })
            .await
    }

    /// Like [`Steps::run`], with a detail string for the record.
    pub async fn run_detailed<T>(
        &mut self,
        step: Step,
        fut: impl Future<Output = Result<(T, Option<String>)>>,
    ) -> Result<T, StepError> {
        let start = Instant::now();
        match with_timeout(self.timeout, step, self.protocol, fut).await {
            Ok((value, detail)) => {
                self.records.push(StepRecord {
                    step,
                    duration: start.elapsed(),
                    detail,
                });
                Ok(value)
            }
            Err(error) => Err(StepError {
                step,
                error,
                duration: start.elapsed(),
            }),
        }
    }
}

/// Bounds `fut` by `timeout`; the timeout error names the step.
pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    step: Step,
    protocol: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(timeout_error(timeout, step, protocol)),
    }
}

pub(crate) fn timeout_error(timeout: Duration, step: Step, protocol: &str) -> Error {
    Error::new(
        ErrorCode::Timeout,
        format!(
            "timed out after {} waiting for {}",
            fmt_duration(timeout),
            step.waiting_for(protocol)
        ),
    )
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Refuses credentials — a password or an OAuth access token alike — over
/// an unencrypted connection, unless the host is loopback *and* the
/// profile allows plaintext there explicitly (`allow`).
pub(crate) fn check_plaintext_allowed(
    encrypted: bool,
    endpoint: &Endpoint,
    creds: &Credentials,
    allow: bool,
) -> Result<()> {
    if encrypted || (allow && endpoint.is_loopback()) {
        return Ok(());
    }
    let what = if creds.is_oauth() {
        "an access token"
    } else {
        "a password"
    };
    let why = if endpoint.is_loopback() {
        " (the profile does not allow plaintext on loopback)"
    } else {
        ""
    };
    Err(Error::new(
        ErrorCode::InsecureConnection,
        format!(
            "refusing to send {what} to {}:{} over an unencrypted connection{why}",
            endpoint.host, endpoint.port
        ),
    ))
}

/// Chooses the mechanism: the caller's preference if advertised, else the
/// first of the credentials' mechanisms the server offers.
pub(crate) fn choose_mechanism(
    protocol: &str,
    offered: &[Mechanism],
    offered_names: &[String],
    creds: &Credentials,
    preferred: Option<Mechanism>,
) -> Result<Mechanism> {
    let usable = creds.mechanisms();
    if let Some(p) = preferred
        && usable.contains(&p)
        && offered.contains(&p)
    {
        return Ok(p);
    }
    if let Some(p) = preferred
        && !usable.contains(&p)
    {
        return Err(Error::new(
            ErrorCode::MechanismUnsupported,
            format!(
                "{p} cannot be used with {} credentials",
                if creds.is_oauth() {
                    "OAuth"
                } else {
                    "password"
                }
            ),
        ));
    }
    if preferred.is_none()
        && let Some(m) = usable.iter().find(|m| offered.contains(m))
    {
        return Ok(*m);
    }
    let wanted = match preferred {
        Some(p) => p.as_str().to_owned(),
        None => usable
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let offers = if offered_names.is_empty() {
        "no SASL mechanisms".to_owned()
    } else {
        offered_names.join(" ")
    };
    Err(Error::new(
        ErrorCode::MechanismUnsupported,
        format!("the {protocol} server does not offer {wanted}; it offers {offers}"),
    ))
}

/// TCP connect (with DNS), classified: refused/unreachable/DNS → `network`.
pub(crate) async fn connect_tcp(endpoint: &Endpoint) -> Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| connect_error(endpoint, &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn connect_error(endpoint: &Endpoint, e: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let target = format!("{}:{}", endpoint.host, endpoint.port);
    let msg = match e.kind() {
        K::ConnectionRefused => format!("connection to {target} refused (nothing listening?)"),
        K::HostUnreachable | K::NetworkUnreachable => format!("{target} is unreachable"),
        K::TimedOut => format!("connection to {target} timed out"),
        _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
            format!("cannot resolve host {}: {e}", endpoint.host)
        }
        _ => format!("cannot connect to {target}: {e}"),
    };
    Error::new(ErrorCode::Network, msg)
}

/// Classifies an I/O error on an established connection.
pub(crate) fn io_error(protocol: &str, e: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    if let Some(inner) = e.get_ref()
        && let Some(tls) = inner.downcast_ref::<rustls::Error>()
    {
        return Error::new(ErrorCode::Tls, format!("{protocol}: TLS error: {tls}"));
    }
    match e.kind() {
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Error::new(
            ErrorCode::Network,
            format!("the {protocol} server closed the connection"),
        ),
        _ => Error::new(
            ErrorCode::Network,
            format!("{protocol} connection error: {e}"),
        ),
    }
}

/// Upgrades/opens TLS with our config; certificate problems → `tls`. A
/// server that answers the handshake with a plaintext greeting is a wrong
/// port or security setting → `protocol_error`, saying so.
pub(crate) async fn tls_handshake(
    tcp: tokio::net::TcpStream,
    host: &str,
    tls: &TlsSettings,
) -> Result<tokio_rustls::client::TlsStream<io::SniffedTcp>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
        Error::new(
            ErrorCode::Tls,
            format!("'{host}' is not a valid TLS server name"),
        )
    })?;
    let port = tcp.peer_addr().map(|a| a.port()).ok();
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let (e, sniffed) = match connector
        .connect(name, io::SniffedTcp::new(tcp))
        .into_fallible()
        .await
    {
        Ok(stream) => return Ok(stream),
        Err(failed) => failed,
    };
    if let Some(what) = io::looks_like_plaintext_greeting(sniffed.first_bytes()) {
        let at = port
            .map(|p| format!("{host}:{p}"))
            .unwrap_or_else(|| host.to_owned());
        return Err(Error::new(
            ErrorCode::ProtocolError,
            format!(
                "{at} answered the TLS handshake with {what} in plaintext: the port or the security \
                 setting is probably wrong (implicit TLS is usually 993 for IMAP, 995 for POP3 and 465 for \
                 SMTP; 143, 110 and 587 need STARTTLS)"
            ),
        ));
    }
    Err(handshake_error(&e, host))
}

fn handshake_error(e: &std::io::Error, host: &str) -> Error {
    if let Some(inner) = e.get_ref()
        && let Some(tls) = inner.downcast_ref::<rustls::Error>()
    {
        return Error::new(ErrorCode::Tls, tls::describe_rustls_error(tls, host));
    }
    // The connection ended under the handshake without a TLS error: a
    // reset, an EOF, a broken pipe. That is the network (a load balancer
    // dropping connections, a server restarting), not the certificate:
    // transient, retried later. A server that answers in plaintext was
    // recognized before (`protocol_error`).
    use std::io::ErrorKind as K;
    match e.kind() {
        K::UnexpectedEof
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected => Error::new(
            ErrorCode::Network,
            format!(
                "TLS handshake with {host} failed: the server closed the connection before the handshake \
                 completed ({e}); if it persists, check that the port speaks TLS"
            ),
        ),
        K::TimedOut => Error::new(
            ErrorCode::Network,
            format!("TLS handshake with {host} failed: {e}"),
        ),
        _ => Error::new(
            ErrorCode::Tls,
            format!("TLS handshake with {host} failed: {e}"),
        ),
    }
}

/// Opens the connection for `endpoint`: TCP, then TLS when the security is
/// implicit TLS. STARTTLS upgrades are done by each protocol after its greeting.
pub(crate) async fn open(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    steps: &mut Steps,
) -> Result<MailStream, StepError> {
    use crate::model::profile::Security;
    let tcp = steps.run(Step::Connect, connect_tcp(endpoint)).await?;
    match endpoint.security {
        Security::Tls => {
            let tls = steps
                .run(Step::Tls, tls_handshake(tcp, &endpoint.host, &opts.tls))
                .await?;
            Ok(MailStream::Tls(Box::new(tls)))
        }
        Security::StartTls | Security::Plaintext => Ok(MailStream::Plain(tcp)),
    }
}

/// Whole-check outcome: completed steps, then either a summary or the failed step.
#[derive(Debug)]
pub struct ProbeReport {
    /// The protocol checked.
    pub protocol: &'static str,
    /// Completed steps, in order.
    pub steps: Vec<StepRecord>,
    /// `Ok(summary)` or the step that failed.
    pub result: Result<String, StepError>,
}

impl ProbeReport {
    /// Whether every step passed.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }
}

/// Checks an incoming server step by step: credentials → TCP → TLS → greeting
/// → mechanism advertised → authenticated → INBOX examined (IMAP) or STAT
/// (POP3), then logs out.
pub async fn probe_incoming(
    protocol: IncomingProtocol,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    preferred: Option<Mechanism>,
) -> ProbeReport {
    match protocol {
        IncomingProtocol::Imap => probe_imap(endpoint, opts, source, preferred).await,
        IncomingProtocol::Pop3 => probe_pop3(endpoint, opts, source, preferred).await,
    }
}

async fn credentials_step(
    steps: &mut Steps,
    source: &dyn CredentialSource,
) -> Result<Credentials, StepError> {
    steps
        .run(Step::Credentials, source.credentials(false))
        .await
}

/// IMAP check: see [`probe_incoming`].
pub async fn probe_imap(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    preferred: Option<Mechanism>,
) -> ProbeReport {
    let mut steps = Steps::new("IMAP", opts.timeout);
    let result = async {
        let creds = credentials_step(&mut steps, source).await?;
        let mut client =
            imap::ImapClient::connect(endpoint, opts, &creds, preferred, &mut steps).await?;
        let status = steps
            .run_detailed(Step::SelectInbox, async {
                let s = client.examine_inbox().await?;
                let d = format!(
                    "{} messages, UIDVALIDITY {}, UIDNEXT {}",
                    s.exists, s.uid_validity, s.uid_next
                );
                Ok((s, Some(d)))
            })
            .await?;
        let _ = client.logout().await;
        Ok(format!(
            "authenticated with {}; INBOX has {} messages",
            client.mechanism(),
            status.exists
        ))
    }
    .await;
    ProbeReport {
        protocol: "IMAP",
        steps: steps.into_records(),
        result,
    }
}

/// POP3 check: see [`probe_incoming`].
pub async fn probe_pop3(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    preferred: Option<Mechanism>,
) -> ProbeReport {
    let mut steps = Steps::new("POP3", opts.timeout);
    let result = async {
        let creds = credentials_step(&mut steps, source).await?;
        let mut client =
            pop3::Pop3Client::connect(endpoint, opts, &creds, preferred, &mut steps).await?;
        let (count, size) = steps
            .run_detailed(Step::Stat, async {
                let (c, s) = client.stat().await?;
                Ok(((c, s), Some(format!("{c} messages, {s} bytes"))))
            })
            .await?;
        let _ = client.quit().await;
        Ok(format!(
            "authenticated with {}; {count} messages ({size} bytes)",
            client.mechanism()
        ))
    }
    .await;
    ProbeReport {
        protocol: "POP3",
        steps: steps.into_records(),
        result,
    }
}

/// SMTP check: credentials → TCP → TLS → EHLO lists the mechanism →
/// authenticated, then QUIT. Sends nothing.
pub async fn probe_smtp(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    preferred: Option<Mechanism>,
) -> ProbeReport {
    let mut steps = Steps::new("SMTP", opts.timeout);
    let result = async {
        let creds = credentials_step(&mut steps, source).await?;
        let mut client =
            smtp::SmtpClient::connect(endpoint, opts, &creds, preferred, &mut steps).await?;
        let mech = client.mechanism();
        client.quit().await;
        Ok(format!("authenticated with {mech}"))
    }
    .await;
    ProbeReport {
        protocol: "SMTP",
        steps: steps.into_records(),
        result,
    }
}

/// Shared handle type for credential sources.
pub type SharedCredentialSource = Arc<dyn CredentialSource>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials::OAuth {
            user: "a@b".into(),
            access_token: Secret::new("ya29.SECRET"),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
        let c = Credentials::Password {
            user: "a@b".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn mechanism_choice() {
        let oauth = Credentials::OAuth {
            user: "u".into(),
            access_token: Secret::new("t"),
        };
        let offered = [Mechanism::Plain, Mechanism::OAuthBearer];
        let names = vec!["PLAIN".to_owned(), "OAUTHBEARER".to_owned()];
        assert_eq!(
            choose_mechanism("IMAP", &offered, &names, &oauth, None).unwrap(),
            Mechanism::OAuthBearer
        );
        let e = choose_mechanism("IMAP", &offered, &names, &oauth, Some(Mechanism::XOAuth2))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::MechanismUnsupported);
        assert!(e.message().contains("PLAIN OAUTHBEARER"), "{}", e.message());
        let e =
            choose_mechanism("IMAP", &[Mechanism::Plain], &names[..1], &oauth, None).unwrap_err();
        assert!(e.message().contains("XOAUTH2 or OAUTHBEARER"));
        assert!(
            choose_mechanism("IMAP", &offered, &names, &oauth, Some(Mechanism::Plain)).is_err()
        );
    }

    #[test]
    fn plaintext_only_on_loopback_when_allowed_for_tokens_and_passwords() {
        use crate::model::profile::Security;
        let remote = Endpoint::new("mail.example.com", 143, Security::Plaintext);
        let local = Endpoint::new("127.0.0.1", 143, Security::Plaintext);
        let token = Credentials::OAuth {
            user: "a@b".into(),
            access_token: Secret::new("ya29.token"),
        };
        let password = Credentials::Password {
            user: "a@b".into(),
            password: Secret::new("hunter2"),
        };
        for creds in [&token, &password] {
            for allow in [false, true] {
                let e = check_plaintext_allowed(false, &remote, creds, allow).unwrap_err();
                assert_eq!(e.code(), ErrorCode::InsecureConnection);
                assert!(check_plaintext_allowed(true, &remote, creds, allow).is_ok());
                assert!(check_plaintext_allowed(true, &local, creds, allow).is_ok());
            }
            // Loopback needs the profile's explicit permission.
            let e = check_plaintext_allowed(false, &local, creds, false).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InsecureConnection, "{creds:?}");
            assert!(e.message().contains("does not allow plaintext"), "{e}");
            assert!(check_plaintext_allowed(false, &local, creds, true).is_ok());
        }
        let e = check_plaintext_allowed(false, &remote, &token, true).unwrap_err();
        assert!(e.message().contains("an access token"), "{e}");
        assert!(!e.message().contains("ya29"), "{e}");
    }

    /// A server on 127.0.0.1 that takes the TLS ClientHello and then ends the
    /// connection: with a reset (`reset`) or a plain close (EOF).
    async fn ends_during_handshake(reset: bool) -> u16 {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut hello = [0u8; 5];
                // The record header of the ClientHello: the handshake has begun.
                let _ = conn.read_exact(&mut hello).await;
                if reset {
                    conn.set_zero_linger().unwrap();
                }
                drop(conn);
            }
        });
        port
    }

    /// The connection ending under the TLS handshake is the network
    /// (transient), not a certificate problem: implicit TLS for each
    /// protocol, and STARTTLS / STLS after a plaintext greeting.
    #[tokio::test]
    async fn reset_or_eof_during_the_tls_handshake_is_network() {
        use crate::model::profile::Security;
        let creds = StaticCredentials(Credentials::OAuth {
            user: "a@b".into(),
            access_token: Secret::new("t"),
        });
        let opts = ConnectOptions::new(Duration::from_secs(5), TlsSettings::webpki());
        for reset in [true, false] {
            let port = ends_during_handshake(reset).await;
            let endpoint = Endpoint::new("127.0.0.1", port, Security::Tls);
            for report in [
                probe_imap(&endpoint, &opts, &creds, None).await,
                probe_pop3(&endpoint, &opts, &creds, None).await,
                probe_smtp(&endpoint, &opts, &creds, None).await,
            ] {
                let e = report.result.unwrap_err();
                assert_eq!(e.step, Step::Tls, "reset={reset} {}: {e}", report.protocol);
                assert_eq!(
                    e.error.code(),
                    ErrorCode::Network,
                    "reset={reset} {}: {e}",
                    report.protocol
                );
                assert!(e.error.is_transient());
            }
        }
    }

    /// A plaintext greeting and an accepted STARTTLS, then a reset in the
    /// handshake (IMAP STARTTLS, POP3 STLS, SMTP STARTTLS).
    #[tokio::test]
    async fn reset_during_the_starttls_handshake_is_network() {
        use crate::model::profile::Security;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        /// `script` answers each command line; `true` means "then upgrade".
        async fn serve(greeting: &'static str, script: fn(&str) -> (&'static str, bool)) -> u16 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut conn = BufReader::new(conn);
                        let _ = conn.get_mut().write_all(greeting.as_bytes()).await;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let (answer, upgrade) = script(line.trim_end());
                            let _ = conn.get_mut().write_all(answer.as_bytes()).await;
                            if upgrade {
                                let mut tcp = conn.into_inner();
                                let mut hello = [0u8; 5];
                                let _ = tcp.read_exact(&mut hello).await;
                                tcp.set_zero_linger().unwrap();
                                return;
                            }
                        }
                    });
                }
            });
            port
        }
        let imap = serve("* OK ready\r\n", |l| match l {
            "ms0 STARTTLS" => ("ms0 OK begin TLS\r\n", true),
            _ => ("* BAD\r\n", false),
        })
        .await;
        let pop3 = serve("+OK ready\r\n", |l| match l {
            "CAPA" => ("+OK\r\nSTLS\r\nSASL XOAUTH2\r\n.\r\n", false),
            "STLS" => ("+OK begin TLS\r\n", true),
            _ => ("-ERR\r\n", false),
        })
        .await;
        let smtp = serve("220 localhost ESMTP\r\n", |l| match l {
            l if l.starts_with("EHLO") => ("250-localhost\r\n250 STARTTLS\r\n", false),
            "STARTTLS" => ("220 2.0.0 begin TLS\r\n", true),
            _ => ("500 no\r\n", false),
        })
        .await;
        let creds = StaticCredentials(Credentials::OAuth {
            user: "a@b".into(),
            access_token: Secret::new("t"),
        });
        let opts = ConnectOptions::new(Duration::from_secs(5), TlsSettings::webpki());
        let at = |port| Endpoint::new("127.0.0.1", port, Security::StartTls);
        for report in [
            probe_imap(&at(imap), &opts, &creds, None).await,
            probe_pop3(&at(pop3), &opts, &creds, None).await,
            probe_smtp(&at(smtp), &opts, &creds, None).await,
        ] {
            let e = report.result.unwrap_err();
            assert_eq!(e.step, Step::Tls, "{}: {e}", report.protocol);
            assert_eq!(
                e.error.code(),
                ErrorCode::Network,
                "{}: {e}",
                report.protocol
            );
        }
    }

    #[tokio::test]
    async fn timeout_names_the_step() {
        let mut steps = Steps::new("IMAP", Duration::from_millis(50));
        let r: Result<(), StepError> = steps
            .run(Step::Greeting, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.step, Step::Greeting);
        assert!(e.duration >= Duration::from_millis(50), "{:?}", e.duration);
        assert_eq!(e.error.code(), ErrorCode::Timeout);
        assert_eq!(
            e.error.message(),
            "timed out after 50ms waiting for the IMAP greeting"
        );
        assert!(steps.records().is_empty());
    }

    #[tokio::test]
    async fn refused_port_is_network() {
        use crate::model::profile::Security;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = connect_tcp(&Endpoint::new("127.0.0.1", port, Security::Tls))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Network);
        assert!(e.message().contains("refused"), "{}", e.message());
    }
}
