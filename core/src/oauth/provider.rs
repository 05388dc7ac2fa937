//! Authorization servers: the Google preset and any issuer found through
//! [OpenID Connect Discovery 1.0](https://openid.net/specs/openid-connect-discovery-1_0.html)
//! or [RFC 8414](https://www.rfc-editor.org/rfc/rfc8414) metadata.

use url::Url;

use super::http::{HttpClient, HttpError};
use crate::error::{Error, ErrorCode, Result};
use crate::model::validate;

/// Google's authorization endpoint (web server flow).
pub const GOOGLE_AUTHORIZATION_ENDPOINT: &str = "https://accounts.google.com/o/oauth2/v2/auth";
/// Google's token endpoint (code exchange and refresh).
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
/// Google's revocation endpoint ([RFC 7009](https://www.rfc-editor.org/rfc/rfc7009)-style).
pub const GOOGLE_REVOCATION_ENDPOINT: &str = "https://oauth2.googleapis.com/revoke";
/// Google's issuer (its discovery document lists the userinfo endpoint).
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The scope for IMAP, POP and SMTP access to Gmail.
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";

/// Microsoft 365 (Exchange Online) scopes for IMAP, POP and SMTP AUTH.
pub const MICROSOFT_MAIL_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
];

/// The OIDC scope that asks for a refresh token
/// ([OIDC Core §11](https://openid.net/specs/openid-connect-core-1_0.html#OfflineAccess)).
pub const OFFLINE_ACCESS_SCOPE: &str = "offline_access";

/// How a provider is asked for a refresh token and which extra parameters
/// the consent request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Google's web server flow: `access_type=offline` (Google issues the
    /// refresh token on it; it refuses the `offline_access` scope),
    /// `prompt=consent`, `include_granted_scopes=true`, `login_hint`.
    Google,
    /// OpenID Connect: the `offline_access` scope with `prompt=consent`
    /// (OIDC Core §11), plus `login_hint`. Microsoft, Keycloak and most
    /// other providers issue refresh tokens this way.
    Generic,
}

impl Dialect {
    /// The dialect an issuer speaks: Google's for Google's issuer, else generic.
    pub fn for_issuer(issuer: &str) -> Dialect {
        let host = url::Url::parse(issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        match host.as_deref() {
            Some("accounts.google.com") => Dialect::Google,
            _ => Dialect::Generic,
        }
    }
}

/// The mail scopes a known issuer needs for IMAP/POP/SMTP, or `None` when
/// the issuer is unknown (the profile must then name them).
pub fn default_mail_scopes(issuer: &str) -> Option<Vec<String>> {
    let host = url::Url::parse(issuer)
        .ok()?
        .host_str()?
        .to_ascii_lowercase();
    let scopes: &[&str] = match host.as_str() {
        "accounts.google.com" => &[GMAIL_SCOPE],
        "login.microsoftonline.com" | "login.microsoft.com" | "sts.windows.net" => {
            MICROSOFT_MAIL_SCOPES
        }
        _ => return None,
    };
    Some(scopes.iter().map(|s| (*s).to_owned()).collect())
}

/// Where an authorization server's endpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Issuer identifier (compared with the id token's `iss`).
    pub issuer: String,
    /// Authorization endpoint (RFC 6749 §3.1).
    pub authorization_endpoint: Url,
    /// Token endpoint (RFC 6749 §3.2).
    pub token_endpoint: Url,
    /// Revocation endpoint (RFC 7009), if any.
    pub revocation_endpoint: Option<Url>,
    /// OIDC userinfo endpoint, if known.
    pub userinfo_endpoint: Option<Url>,
    /// The mail scopes to request; every one must be granted
    /// (`https://mail.google.com/` for Gmail).
    pub mail_scopes: Vec<String>,
    /// Whether the metadata lists `offline_access` among its scopes (or
    /// lists no scopes at all), so the generic dialect may request it.
    pub offers_offline_access: bool,
    /// Request parameter dialect.
    pub dialect: Dialect,
}

fn parse(field: &str, value: &str) -> Result<Url> {
    validate::issuer_url(field, value).map_err(|e| {
        Error::new(
            ErrorCode::ProviderError,
            format!("provider metadata: {}", e.message()),
        )
    })
}

impl Provider {
    /// The Google preset: fixed authorization, token and revocation
    /// endpoints. The userinfo endpoint is read from
    /// Google's discovery document only if ever needed (the id token from
    /// the token endpoint normally names the account).
    pub fn google() -> Provider {
        Provider {
            issuer: GOOGLE_ISSUER.to_owned(),
            authorization_endpoint: Url::parse(GOOGLE_AUTHORIZATION_ENDPOINT)
                .expect("constant URL"),
            token_endpoint: Url::parse(GOOGLE_TOKEN_ENDPOINT).expect("constant URL"),
            revocation_endpoint: Some(
                Url::parse(GOOGLE_REVOCATION_ENDPOINT).expect("constant URL"),
            ),
            userinfo_endpoint: None,
            mail_scopes: vec![GMAIL_SCOPE.to_owned()],
            offers_offline_access: false,
            dialect: Dialect::Google,
        }
    }

    /// Builds a provider from a discovery / RFC 8414 metadata document.
    /// Every endpoint must be https (http only on loopback).
    pub fn from_metadata(
        issuer: &str,
        metadata: &serde_json::Value,
        dialect: Dialect,
    ) -> Result<Provider> {
        let text = |name: &str| metadata.get(name).and_then(|v| v.as_str());
        let required = |name: &str| {
            text(name).ok_or_else(|| {
                Error::new(
                    ErrorCode::ProviderError,
                    format!("the metadata of issuer {issuer} lacks '{name}'"),
                )
            })
        };
        let declared = required("issuer")?;
        if declared.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(Error::new(
                ErrorCode::ProviderError,
                format!(
                    "the metadata at {issuer} declares issuer '{declared}' (OIDC Discovery §4.3 requires them equal)"
                ),
            ));
        }
        let offers_offline_access = match metadata.get("scopes_supported") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .any(|s| s.as_str() == Some(OFFLINE_ACCESS_SCOPE)),
            _ => true,
        };
        Ok(Provider {
            issuer: declared.to_owned(),
            authorization_endpoint: parse(
                "authorization_endpoint",
                required("authorization_endpoint")?,
            )?,
            token_endpoint: parse("token_endpoint", required("token_endpoint")?)?,
            revocation_endpoint: text("revocation_endpoint")
                .map(|u| parse("revocation_endpoint", u))
                .transpose()?,
            userinfo_endpoint: text("userinfo_endpoint")
                .map(|u| parse("userinfo_endpoint", u))
                .transpose()?,
            mail_scopes: vec![GMAIL_SCOPE.to_owned()],
            offers_offline_access,
            dialect,
        })
    }

    /// Reads `<issuer>/.well-known/openid-configuration` (OIDC Discovery
    /// §4), falling back to `/.well-known/oauth-authorization-server`
    /// (RFC 8414 §3).
    pub async fn discover(http: &HttpClient, issuer: &Url, dialect: Dialect) -> Result<Provider> {
        let base = issuer.as_str().trim_end_matches('/');
        let mut last = String::new();
        for suffix in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let url = Url::parse(&format!("{base}{suffix}"))
                .map_err(|e| Error::validation("issuer", format!("not a URL: {e}")))?;
            match http.get_json(&url, None).await {
                Ok((200, doc)) if doc.is_object() => {
                    return Provider::from_metadata(base, &doc, dialect);
                }
                Ok((status, _)) => last = format!("{url} answered HTTP {status}"),
                Err(HttpError::Status(status)) => {
                    return Err(Error::new(
                        ErrorCode::ProviderUnavailable,
                        format!("discovery at {url} answered HTTP {status}"),
                    ));
                }
                Err(HttpError::Transport(e)) => {
                    return Err(Error::new(
                        ErrorCode::ProviderUnavailable,
                        format!("discovery at {base}: {e}"),
                    ));
                }
                Err(e @ HttpError::TooLarge) => {
                    return Err(Error::new(e.code(), format!("discovery at {url}: {e}")));
                }
            }
        }
        Err(Error::new(
            ErrorCode::ProviderError,
            format!("no discovery document for issuer {base}: {last}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_match_issuer_and_be_secure() {
        let doc = serde_json::json!({
            "issuer": "https://login.example.com",
            "authorization_endpoint": "https://login.example.com/auth",
            "token_endpoint": "https://login.example.com/token",
            "revocation_endpoint": "https://login.example.com/revoke",
        });
        let p =
            Provider::from_metadata("https://login.example.com/", &doc, Dialect::Generic).unwrap();
        assert_eq!(p.token_endpoint.as_str(), "https://login.example.com/token");
        assert!(p.userinfo_endpoint.is_none());
        let err = Provider::from_metadata("https://other.example.com", &doc, Dialect::Generic)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ProviderError);
        let bad = serde_json::json!({
            "issuer": "https://login.example.com",
            "authorization_endpoint": "http://login.example.com/auth",
            "token_endpoint": "https://login.example.com/token",
        });
        assert!(
            Provider::from_metadata("https://login.example.com", &bad, Dialect::Generic).is_err()
        );
    }

    #[test]
    fn google_preset() {
        let g = Provider::google();
        assert_eq!(
            g.authorization_endpoint.as_str(),
            GOOGLE_AUTHORIZATION_ENDPOINT
        );
        assert_eq!(g.token_endpoint.as_str(), GOOGLE_TOKEN_ENDPOINT);
        assert_eq!(
            g.revocation_endpoint.as_ref().unwrap().as_str(),
            GOOGLE_REVOCATION_ENDPOINT
        );
        assert_eq!(g.dialect, Dialect::Google);
    }
}
