//! SMTP submission on lettre's `AsyncSmtpConnection`, with our TLS and SASL.
//!
//! * Implicit TLS (465-style, [`Security::Tls`]): we open TCP and do the TLS
//!   handshake with [`TlsSettings`](super::TlsSettings) ourselves, then hand
//!   the encrypted stream to lettre.
//! * STARTTLS (587-style): lettre upgrades the connection with a rustls
//!   configuration (ring) that trusts the same roots: webpki roots if
//!   [`TlsSettings::trusts_webpki_roots`](super::TlsSettings::trusts_webpki_roots),
//!   plus every extra root. Verification cannot be turned off.
//! * EHLO is read raw so every advertised mechanism is seen (lettre itself
//!   only knows PLAIN, LOGIN and XOAUTH2).
//! * Authentication is done here, not by lettre, for all four mechanisms:
//!   lettre's XOAUTH2 fails with "does not expect a challenge" when the
//!   server sends the error challenge (`334 <base64 JSON>`), leaving the
//!   exchange half-open. We decode the challenge, answer it (empty line for
//!   XOAUTH2, `AQ==` for OAUTHBEARER) and report `auth_rejected` with its
//!   status. OAUTHBEARER is therefore supported too.
//!
//! Reply mapping keeps the server's code and enhanced status in the message:
//! during AUTH, 535 → `auth_rejected`, 454/4xx → `server_unavailable`,
//! 504 → `mechanism_unsupported`, 530/538 → `insecure_connection`; while
//! sending, 4xx → `send_deferred`, 5xx → `send_rejected`.

use std::fmt;

use lettre::address::Envelope;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::io::MailStream;
use super::{
    ConnectOptions, Credentials, Step, StepError, Steps, check_plaintext_allowed, choose_mechanism,
    open, with_timeout,
};
use crate::error::{Error, ErrorCode, Result};
use crate::model::profile::{Endpoint, Security};
use crate::sasl::{self, Mechanism, SaslChallenge, SaslResponse};

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

fn tls_parameters(endpoint: &Endpoint, opts: &ConnectOptions) -> Result<TlsParameters> {
    let mut builder = TlsParameters::builder(endpoint.host.clone()).certificate_store(
        if opts.tls.trusts_webpki_roots() {
            CertificateStore::WebpkiRoots
        } else {
            CertificateStore::None
        },
    );
    for der in opts.tls.extra_roots() {
        let cert = Certificate::from_der(der.to_vec())
            .map_err(|e| Error::new(ErrorCode::Tls, format!("invalid root certificate: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| Error::new(ErrorCode::Tls, format!("TLS configuration: {e}")))
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
        let host = endpoint.host.clone();
        let hello = ClientId::default();
        let stream = open(endpoint, opts, steps).await?;
        let mut encrypted = stream.is_encrypted();
        let mut conn = steps
            .run(Step::Greeting, async {
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
                    .await
                    .map_err(|e| match code_of(&e) {
                        Some(_) => Error::new(
                            ErrorCode::ServerUnavailable,
                            format!("the SMTP server refused the session: {}", reply_text(&e)),
                        ),
                        None => transport_error(&e, &host),
                    })
            })
            .await?;
        if endpoint.security == Security::StartTls {
            steps
                .run(Step::Tls, async {
                    if !conn.can_starttls() {
                        return Err(Error::new(
                            ErrorCode::Tls,
                            format!(
                                "the SMTP server at {}:{} does not offer STARTTLS",
                                endpoint.host, endpoint.port
                            ),
                        ));
                    }
                    let params = tls_parameters(endpoint, opts)?;
                    conn.starttls(params, &hello)
                        .await
                        .map_err(|e| transport_error(&e, &host))
                })
                .await?;
            encrypted = true;
        }
        let extensions = steps
            .run_detailed(Step::Ehlo, async {
                let resp = conn
                    .command(Ehlo::new(hello.clone()))
                    .await
                    .map_err(|e| transport_error(&e, &host))?;
                let ext: Vec<String> = resp.message().skip(1).map(str::to_owned).collect();
                let d = ext.join(" | ");
                Ok((ext, Some(d)))
            })
            .await?;
        let offered_names = auth_mechanisms(&extensions);
        let offered: Vec<Mechanism> = offered_names
            .iter()
            .filter_map(|n| Mechanism::parse(n))
            .collect();
        let mechanism = choose_mechanism(PROTO, &offered, &offered_names, creds, preferred)
            .map_err(|error| StepError::new(Step::Ehlo, error))?;
        if mechanism.is_password() {
            check_plaintext_allowed(encrypted, endpoint)
                .map_err(|error| StepError::new(Step::Authenticate, error))?;
        }
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
        // lettre terminates DATA with "\r\n.\r\n"; a message that already
        // ends with CRLF would otherwise gain an empty last line.
        let raw = raw.strip_suffix(b"\r\n").unwrap_or(raw);
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
    fn raw_line_appends_crlf() {
        assert_eq!(
            RawLine(zeroize::Zeroizing::new("AUTH LOGIN".into())).to_string(),
            "AUTH LOGIN\r\n"
        );
    }
}
