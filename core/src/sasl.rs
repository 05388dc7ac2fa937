//! SASL for mail protocols: XOAUTH2, OAUTHBEARER (RFC 7628), PLAIN and LOGIN.
//!
//! This module only builds and parses the bytes of a SASL exchange; the
//! transports in [`crate::net`] put them on the wire (IMAP `AUTHENTICATE`,
//! POP3 `AUTH`, SMTP `AUTH`). It exists separately so the formats, which are
//! easy to get subtly wrong, are tested in one place (unit tests and proptest
//! properties below).
//!
//! * XOAUTH2 initial response: `user=U ^A auth=Bearer T ^A ^A` (Google's format).
//! * OAUTHBEARER initial response: `n,a=U, ^A host=H ^A port=P ^A auth=Bearer T ^A ^A`.
//! * On a rejected token the server sends a base64 JSON *error challenge*
//!   (`{"status":"401","schemes":"bearer","scope":"..."}` for XOAUTH2,
//!   `{"status":"invalid_token",...}` for OAUTHBEARER), decoded by
//!   [`SaslChallenge::decode`]. The client **must** answer it
//!   ([`Mechanism::error_challenge_answer`]: an empty response for XOAUTH2, a
//!   single `0x01` for OAUTHBEARER) so the server ends the exchange with a
//!   failure instead of waiting forever.
//!
//! Responses that carry a secret are returned as [`SaslResponse`], which is
//! zeroized on drop and never shows its content in `Debug`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use std::fmt;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::Secret;

/// A SASL mechanism the transports can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// Google's `XOAUTH2` (bearer token).
    XOAuth2,
    /// RFC 7628 `OAUTHBEARER` (bearer token).
    OAuthBearer,
    /// RFC 4616 `PLAIN` (password).
    Plain,
    /// The de-facto `LOGIN` mechanism (password).
    Login,
}

impl Mechanism {
    /// Every mechanism, OAuth ones first.
    pub const ALL: [Mechanism; 4] = [
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    /// The IANA/protocol name, e.g. `"XOAUTH2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }

    /// Parses a mechanism name, case-insensitively; `None` if unknown.
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether the mechanism authenticates with an OAuth access token.
    pub const fn is_oauth(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }

    /// Whether the mechanism sends a password in clear (inside base64).
    pub const fn is_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// The client's answer to a server error challenge, as raw bytes (the
    /// transport base64-encodes them; for XOAUTH2 that is an empty line).
    ///
    /// XOAUTH2: empty. OAUTHBEARER: a single `0x01` (RFC 7628 §3.2.3).
    /// PLAIN/LOGIN have no error challenge; an empty answer is returned.
    pub const fn error_challenge_answer(self) -> &'static [u8] {
        match self {
            Mechanism::OAuthBearer => b"\x01",
            _ => b"",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes of a SASL response that may contain a secret.
///
/// Zeroized on drop; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslResponse(Zeroizing<Vec<u8>>);

impl SaslResponse {
    fn new(bytes: Vec<u8>) -> Self {
        SaslResponse(Zeroizing::new(bytes))
    }

    /// The raw (not base64-encoded) bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The base64 (RFC 4648, padded) form sent on the wire.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }
}

impl fmt::Debug for SaslResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaslResponse([REDACTED; {} bytes])", self.0.len())
    }
}

fn check_field(field: &str, value: &str, forbidden: &[char]) -> Result<()> {
    if value
        .chars()
        .any(|c| forbidden.contains(&c) || c == '\r' || c == '\n')
    {
        return Err(Error::validation(
            field,
            "contains a character that SASL cannot carry",
        ));
    }
    Ok(())
}

/// The XOAUTH2 initial response `user=U ^A auth=Bearer T ^A ^A`.
///
/// Fails (validation) if the user or token contains `^A`, CR or LF.
pub fn xoauth2_initial_response(user: &str, token: &Secret) -> Result<SaslResponse> {
    check_field("user", user, &['\x01'])?;
    check_field("access_token", token.expose(), &['\x01'])?;
    let mut out = Vec::with_capacity(user.len() + token.expose().len() + 24);
    out.extend_from_slice(b"user=");
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(b"\x01auth=Bearer ");
    out.extend_from_slice(token.expose().as_bytes());
    out.extend_from_slice(b"\x01\x01");
    Ok(SaslResponse::new(out))
}

/// Escapes a GS2 `saslname` (RFC 5801): `,` → `=2C`, `=` → `=3D`.
fn gs2_escape(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn gs2_unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        match code {
            "2C" => out.push(','),
            "3D" => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The OAUTHBEARER initial response (RFC 7628 §3.1):
/// `n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A`.
pub fn oauthbearer_initial_response(
    user: &str,
    host: &str,
    port: u16,
    token: &Secret,
) -> Result<SaslResponse> {
    check_field("user", user, &['\x01'])?;
    check_field("host", host, &['\x01'])?;
    check_field("access_token", token.expose(), &['\x01'])?;
    let mut out = Vec::with_capacity(user.len() + host.len() + token.expose().len() + 48);
    out.extend_from_slice(b"n,a=");
    out.extend_from_slice(gs2_escape(user).as_bytes());
    out.extend_from_slice(b",\x01host=");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(format!("\x01port={port}\x01auth=Bearer ").as_bytes());
    out.extend_from_slice(token.expose().as_bytes());
    out.extend_from_slice(b"\x01\x01");
    Ok(SaslResponse::new(out))
}

/// The PLAIN initial response (RFC 4616): `\0user\0password` (no authzid).
pub fn plain_initial_response(user: &str, password: &Secret) -> Result<SaslResponse> {
    check_field("user", user, &['\0'])?;
    check_field("password", password.expose(), &['\0'])?;
    let mut out = Vec::with_capacity(user.len() + password.expose().len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.expose().as_bytes());
    Ok(SaslResponse::new(out))
}

/// The two LOGIN responses: the user name, then the password.
pub fn login_responses(user: &str, password: &Secret) -> Result<(SaslResponse, SaslResponse)> {
    check_field("user", user, &[])?;
    check_field("password", password.expose(), &[])?;
    Ok((
        SaslResponse::new(user.as_bytes().to_vec()),
        SaslResponse::new(password.expose().as_bytes().to_vec()),
    ))
}

/// Decodes an XOAUTH2 initial response into `(user, token)`; `None` if it is
/// not well formed. Used by tests and diagnostics.
pub fn decode_xoauth2(bytes: &[u8]) -> Option<(String, Secret)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_suffix("\x01\x01")?;
    let (user, auth) = body.split_once('\x01')?;
    let user = user.strip_prefix("user=")?;
    let token = auth.strip_prefix("auth=Bearer ")?;
    if token.contains('\x01') {
        return None;
    }
    Some((user.to_owned(), Secret::new(token)))
}

/// A decoded OAUTHBEARER initial response.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthBearerParts {
    /// Authorization identity (`a=`), unescaped.
    pub user: String,
    /// `host=` value, if present.
    pub host: Option<String>,
    /// `port=` value, if present.
    pub port: Option<u16>,
    /// The bearer token.
    pub token: Secret,
}

/// Decodes an OAUTHBEARER initial response; `None` if it is not well formed.
/// Used by tests and diagnostics.
pub fn decode_oauthbearer(bytes: &[u8]) -> Option<OAuthBearerParts> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_suffix("\x01\x01")?;
    let (gs2, kvs) = body.split_once('\x01')?;
    let gs2 = gs2.strip_prefix("n,")?;
    let authz = gs2.strip_suffix(',')?;
    let user = gs2_unescape(authz.strip_prefix("a=")?)?;
    let (mut host, mut port, mut token) = (None, None, None);
    for kv in kvs.split('\x01') {
        let (k, v) = kv.split_once('=')?;
        match k {
            "host" => host = Some(v.to_owned()),
            "port" => port = Some(v.parse().ok()?),
            "auth" => token = Some(Secret::new(v.strip_prefix("Bearer ")?)),
            _ => {}
        }
    }
    Some(OAuthBearerParts {
        user,
        host,
        port,
        token: token?,
    })
}

/// The server's error challenge after a rejected token, decoded.
///
/// Google and Dovecot send `{"status":"401","schemes":"bearer","scope":"..."}`
/// for XOAUTH2 and `{"status":"invalid_token",...}` for OAUTHBEARER. Every
/// field is optional because servers differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaslChallenge {
    /// `status`: an HTTP-like code (`"401"`, `"400"`) or an RFC 6750 error
    /// (`"invalid_token"`, `"insufficient_scope"`).
    pub status: Option<String>,
    /// `schemes`, e.g. `"bearer"`.
    pub schemes: Option<String>,
    /// `scope` the server wants, e.g. `"https://mail.google.com/"`.
    pub scope: Option<String>,
    /// `openid-configuration` URL (OAUTHBEARER).
    pub openid_configuration: Option<String>,
}

#[derive(Deserialize)]
struct RawChallenge {
    status: Option<serde_json::Value>,
    schemes: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
    #[serde(rename = "openid-configuration")]
    openid_configuration: Option<serde_json::Value>,
}

fn scalar(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl SaslChallenge {
    /// Decodes a base64 challenge as sent on the wire (IMAP `+ <b64>`,
    /// POP3 `+ <b64>`, SMTP `334 <b64>`). `None` if it is not base64 of a
    /// JSON object. Never panics.
    pub fn decode(base64_text: &str) -> Option<SaslChallenge> {
        let bytes = STANDARD.decode(base64_text.trim().as_bytes()).ok()?;
        SaslChallenge::from_json(&bytes)
    }

    /// Decodes an already base64-decoded challenge. `None` if it is not a
    /// JSON object. Never panics.
    pub fn from_json(bytes: &[u8]) -> Option<SaslChallenge> {
        let raw: RawChallenge = serde_json::from_slice(bytes).ok()?;
        Some(SaslChallenge {
            status: scalar(raw.status),
            schemes: scalar(raw.schemes),
            scope: scalar(raw.scope),
            openid_configuration: scalar(raw.openid_configuration),
        })
    }

    /// A short description for error messages, e.g.
    /// `status 401, schemes bearer, scope https://mail.google.com/`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.status {
            parts.push(format!("status {s}"));
        }
        if let Some(s) = &self.schemes {
            parts.push(format!("schemes {s}"));
        }
        if let Some(s) = &self.scope {
            parts.push(format!("scope {s}"));
        }
        if let Some(s) = &self.openid_configuration {
            parts.push(format!("openid-configuration {s}"));
        }
        if parts.is_empty() {
            "no details".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Base64-encodes bytes (RFC 4648, padded).
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64 text; `None` if it is not valid base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xoauth2_format_matches_google_doc() {
        // Example from Google's XOAUTH2 documentation.
        let r = xoauth2_initial_response(
            "someuser@example.com",
            &Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        )
        .unwrap();
        assert_eq!(
            r.to_base64().as_str(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn oauthbearer_format_matches_rfc7628() {
        // RFC 7628 §4.1 example.
        let r = oauthbearer_initial_response(
            "user@example.com",
            "server.example.com",
            143,
            &Secret::new("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="),
        )
        .unwrap();
        assert_eq!(
            r.as_bytes(),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
    }

    #[test]
    fn plain_and_login() {
        let p = plain_initial_response("tim", &Secret::new("tanstaaftanstaaf")).unwrap();
        assert_eq!(p.to_base64().as_str(), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
        let (u, pw) = login_responses("tim", &Secret::new("pw")).unwrap();
        assert_eq!(u.as_bytes(), b"tim");
        assert_eq!(pw.as_bytes(), b"pw");
        assert!(plain_initial_response("a\0b", &Secret::new("x")).is_err());
    }

    #[test]
    fn rejects_separator_in_fields() {
        assert!(xoauth2_initial_response("a\x01b", &Secret::new("t")).is_err());
        assert!(xoauth2_initial_response("a", &Secret::new("t\x01")).is_err());
        assert!(oauthbearer_initial_response("a", "h\r\n", 1, &Secret::new("t")).is_err());
    }

    #[test]
    fn decodes_google_and_dovecot_challenges() {
        let c = SaslChallenge::decode(
            "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==",
        )
        .unwrap();
        assert_eq!(c.status.as_deref(), Some("401"));
        assert_eq!(c.schemes.as_deref(), Some("bearer"));
        assert_eq!(c.scope.as_deref(), Some("https://mail.google.com/"));
        assert_eq!(
            c.describe(),
            "status 401, schemes bearer, scope https://mail.google.com/"
        );
        let c = SaslChallenge::from_json(
            br#"{"status":"invalid_token","openid-configuration":"http://x/.well-known/openid-configuration"}"#,
        )
        .unwrap();
        assert_eq!(c.status.as_deref(), Some("invalid_token"));
        assert!(c.openid_configuration.is_some());
        let c = SaslChallenge::from_json(br#"{"status":400}"#).unwrap();
        assert_eq!(c.status.as_deref(), Some("400"));
        assert!(SaslChallenge::decode("not base64!").is_none());
        assert!(SaslChallenge::decode("").is_none());
        assert!(SaslChallenge::from_json(b"[1,2]").is_none());
    }

    #[test]
    fn answers_and_names() {
        assert_eq!(Mechanism::XOAuth2.error_challenge_answer(), b"");
        assert_eq!(Mechanism::OAuthBearer.error_challenge_answer(), b"\x01");
        assert_eq!(
            encode_base64(Mechanism::OAuthBearer.error_challenge_answer()),
            "AQ=="
        );
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::parse(m.as_str()), Some(m));
            assert_eq!(Mechanism::parse(&m.as_str().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }

    #[test]
    fn debug_never_shows_token() {
        let r = xoauth2_initial_response("u", &Secret::new("tok-SECRET-123")).unwrap();
        let d = format!("{r:?}");
        assert!(!d.contains("SECRET"), "{d}");
        let parts = decode_oauthbearer(
            oauthbearer_initial_response("u", "h", 1, &Secret::new("tok-SECRET-123"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(!format!("{parts:?}").contains("SECRET"));
    }

    proptest! {
        #[test]
        fn xoauth2_round_trip(user in "[^\x01\r\n]{0,40}", token in "[!-~]{1,80}") {
            let r = xoauth2_initial_response(&user, &Secret::new(token.clone())).unwrap();
            let b64 = r.to_base64();
            let raw = decode_base64(&b64).unwrap();
            let (u, t) = decode_xoauth2(&raw).unwrap();
            prop_assert_eq!(u, user);
            prop_assert_eq!(t.expose(), token.as_str());
        }

        #[test]
        fn oauthbearer_round_trip(user in "[^\x01\r\n]{0,40}", host in "[a-z0-9.-]{1,30}", port: u16, token in "[!-~]{1,80}") {
            let r = oauthbearer_initial_response(&user, &host, port, &Secret::new(token.clone())).unwrap();
            let p = decode_oauthbearer(&decode_base64(&r.to_base64()).unwrap()).unwrap();
            prop_assert_eq!(p.user, user);
            prop_assert_eq!(p.host, Some(host));
            prop_assert_eq!(p.port, Some(port));
            prop_assert_eq!(p.token.expose(), token.as_str());
        }

        #[test]
        fn challenge_decode_never_panics(text in ".{0,200}") {
            let _ = SaslChallenge::decode(&text);
        }

        #[test]
        fn challenge_decode_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SaslChallenge::from_json(&bytes);
            let _ = SaslChallenge::decode(&encode_base64(&bytes));
            let _ = decode_oauthbearer(&bytes);
            let _ = decode_xoauth2(&bytes);
        }

        #[test]
        fn challenge_round_trip(status in "[a-z0-9_]{1,20}", scope in "[ -~&&[^\"\\\\]]{0,40}") {
            let json = serde_json::json!({"status": status, "schemes": "bearer", "scope": scope});
            let c = SaslChallenge::decode(&encode_base64(json.to_string().as_bytes())).unwrap();
            prop_assert_eq!(c.status, Some(status));
            prop_assert_eq!(c.scope, Some(scope));
        }
    }
}
