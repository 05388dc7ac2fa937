//! The redirect back from the provider: RFC 6749 §4.1.2 (success and error
//! responses), the code exchange (§4.1.3, with the RFC 7636 verifier), and
//! the checks Google's granular consent makes necessary.
//!
//! **Account check.** The consenting account comes from the `email` claim
//! of the OIDC id token in the token response. The id token's signature is
//! not verified: it was received directly from the token endpoint over TLS,
//! which OpenID Connect Core 1.0 §3.1.3.7 (item 6) accepts in place of
//! signature validation. `iss` and `aud` are still checked. Without an id
//! token, or without an `email` claim, the userinfo endpoint is asked.

use base64::Engine as _;
use oauth2::TokenResponse as _;
use time::OffsetDateTime;

use super::{Context, MailboxEventKind, Phase, TokenResponse, map_token_error, sanitize};
use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{AlertLevel, ConnectionState, Mailbox, Secret};
use crate::store::TokenRecord;

/// The parameters of a redirect (success or error response).
#[derive(Debug, Default)]
struct Callback {
    state: Option<Secret>,
    code: Option<Secret>,
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_callback(input: &str) -> Result<Callback> {
    let input = input.trim();
    let query = if input.contains("://") {
        let url = url::Url::parse(input)
            .map_err(|e| Error::validation("callback_url", format!("not a URL: {e}")))?;
        url.query().unwrap_or_default().to_owned()
    } else {
        input.trim_start_matches('?').to_owned()
    };
    let mut cb = Callback::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "state" => cb.state = Some(Secret::new(v.into_owned())),
            "code" => cb.code = Some(Secret::new(v.into_owned())),
            "error" => cb.error = Some(sanitize(&v)),
            "error_description" => cb.error_description = Some(sanitize(&v)),
            _ => {}
        }
    }
    Ok(cb)
}

/// Maps an RFC 6749 §4.1.2.1 error (and Google's extensions) to a code.
pub(crate) fn consent_error(error: &str, description: Option<&str>, email: &str) -> Error {
    let detail = description.map(|d| format!(" ({d})")).unwrap_or_default();
    match error {
        "access_denied" => Error::new(
            ErrorCode::ConsentDenied,
            format!("consent for {email} was declined{detail}; connect again and choose Allow"),
        ),
        "admin_policy_enforced" => Error::new(
            ErrorCode::AdminPolicy,
            format!(
                "a Google Workspace admin policy blocks this app for {email}{detail}; ask the admin to allow the OAuth client"
            ),
        ),
        "org_internal" => Error::new(
            ErrorCode::OrgInternal,
            format!(
                "{email} is outside the organization of this Internal app{detail}; use an account of the organization \
                 or make the consent screen External"
            ),
        ),
        other => Error::new(
            ErrorCode::ConsentFailed,
            format!(
                "the provider ended the consent for {email} with '{other}'{detail}; check the OAuth client settings"
            ),
        ),
    }
}

/// The claims of an id token we read (OIDC Core §2).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
}

fn decode_claims(id_token: &str) -> Result<Claims> {
    let bad = || Error::new(ErrorCode::ProviderError, "the id token is malformed");
    let payload = id_token.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

fn same_issuer(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim_end_matches('/');
        s.strip_prefix("https://").unwrap_or(s).to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

impl MailSync {
    /// Completes a connection from the provider's redirect: pass the full
    /// redirect URL (`<redirect URI>?code=…&state=…`) or just its query.
    ///
    /// The `state` is consumed first (single use, constant-time compared,
    /// refused when missing, unknown, expired or used: `state_invalid`). An
    /// error redirect maps to `consent_denied`, `admin_policy`,
    /// `org_internal` or `consent_failed`. The code is exchanged with the
    /// PKCE verifier; the granted scope must include the mail scope
    /// (`scope_not_granted`) and the consenting account must be the
    /// mailbox's address (`account_mismatch`) — in both cases the tokens are
    /// revoked and nothing is stored. On success the token set is stored
    /// sealed, the mailbox becomes `Connected` and a `connected` event fires.
    pub async fn complete_connect(&self, callback_url: &str) -> Result<Mailbox> {
        let cb = parse_callback(callback_url)?;
        let invalid = |why: &str| {
            Error::new(
                ErrorCode::StateInvalid,
                format!("the consent response is not valid ({why}); start the connection again"),
            )
        };
        let Some(state) = cb.state.as_ref().filter(|s| !s.is_empty()) else {
            return Err(invalid("no state"));
        };
        let Some(pending) = self.store().take_pending_authorization(state).await? else {
            tracing::warn!("consent callback with an unknown or used state");
            return Err(invalid("unknown or already used state"));
        };
        // The store looked it up by hash; confirm in constant time.
        if pending.state != *state {
            return Err(invalid("unknown state"));
        }
        let mailbox_id = pending.mailbox_id.clone();
        if pending.expires_at <= OffsetDateTime::now_utc() {
            self.record_connection(
                &mailbox_id,
                Some(ConnectionState::NotConnected),
                Some((
                    AlertLevel::Warning,
                    "state_invalid",
                    "a consent link expired before it was used".into(),
                )),
                None,
            )
            .await?;
            return Err(invalid("the consent link expired"));
        }
        let ctx = self.oauth_context(&mailbox_id).await?;

        if let Some(error) = &cb.error {
            let err = consent_error(error, cb.error_description.as_deref(), &ctx.mailbox.email);
            self.record_connection(
                &mailbox_id,
                Some(ConnectionState::NotConnected),
                Some((
                    AlertLevel::Warning,
                    err.code().as_str(),
                    err.message().to_owned(),
                )),
                None,
            )
            .await?;
            return Err(err);
        }
        let Some(code) = cb.code.as_ref().filter(|c| !c.is_empty()) else {
            return Err(Error::new(
                ErrorCode::ConsentFailed,
                "the consent response carries no code; connect again",
            ));
        };

        let redirect = oauth2::RedirectUrl::new(pending.redirect_uri.clone())
            .map_err(|e| Error::new(ErrorCode::Store, format!("stored redirect URI: {e}")))?;
        let http = self.oauth().http()?;
        let adapter = http.oauth2();
        let exchanged = ctx
            .client
            .exchange_code(oauth2::AuthorizationCode::new(code.expose().to_owned()))
            .set_pkce_verifier(oauth2::PkceCodeVerifier::new(
                pending.pkce_verifier.expose().to_owned(),
            ))
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .request_async(&adapter)
            .await;
        let response = match exchanged {
            Ok(r) => r,
            Err(e) => {
                let err = map_token_error(e, Phase::Exchange, &ctx);
                if !err.is_transient() {
                    self.record_connection(
                        &mailbox_id,
                        Some(ConnectionState::NotConnected),
                        Some((
                            AlertLevel::Warning,
                            err.code().as_str(),
                            err.message().to_owned(),
                        )),
                        None,
                    )
                    .await?;
                }
                return Err(err);
            }
        };
        let tokens = Exchanged::from_response(response);

        if let Err(err) = self.check_grant(&ctx, &tokens).await {
            // Give back what was granted; store nothing.
            let revoked = self
                .revoke_grant(&ctx, &tokens.access_token, tokens.refresh_token.as_ref())
                .await;
            if let Err(e) = revoked {
                tracing::warn!(mailbox = %mailbox_id, code = %e.code(), "could not revoke a refused grant");
            }
            self.record_connection(
                &mailbox_id,
                Some(ConnectionState::NotConnected),
                Some((
                    AlertLevel::Warning,
                    err.code().as_str(),
                    err.message().to_owned(),
                )),
                None,
            )
            .await?;
            return Err(err);
        }

        let now = OffsetDateTime::now_utc();
        let record = TokenRecord {
            mailbox_id: mailbox_id.clone(),
            account: ctx.mailbox.email.clone(),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: tokens.expires_at,
            scopes: tokens.scopes,
            obtained_at: now,
            version: 0,
        };
        self.store().put_tokens(&record, None).await?;
        let message = format!("{} is connected", ctx.mailbox.email);
        let mailbox = self
            .record_connection(
                &mailbox_id,
                Some(ConnectionState::Connected {
                    account: ctx.mailbox.email.clone(),
                    since: now,
                }),
                Some((AlertLevel::Info, "connected", message.clone())),
                Some((MailboxEventKind::Connected, None, message)),
            )
            .await?;
        tracing::info!(mailbox = %mailbox_id, "mailbox connected");
        Ok(mailbox)
    }

    /// Scope and account checks on a fresh grant.
    async fn check_grant(&self, ctx: &Context, tokens: &Exchanged) -> Result<()> {
        let mail_scope = &ctx.provider.mail_scope;
        // RFC 6749 §5.1: an absent scope means "as requested".
        if tokens.scope_returned && !tokens.scopes.iter().any(|s| s == mail_scope) {
            return Err(Error::new(
                ErrorCode::ScopeNotGranted,
                format!(
                    "{} did not grant access to mail ({mail_scope}); connect again and leave the mail permission checked",
                    ctx.mailbox.email
                ),
            ));
        }
        let account = self.consenting_account(ctx, tokens).await?;
        if !account.eq_ignore_ascii_case(&ctx.mailbox.email) {
            return Err(Error::new(
                ErrorCode::AccountMismatch,
                format!(
                    "consent was given by {account}, but the mailbox is {}; sign in as {} and connect again",
                    ctx.mailbox.email, ctx.mailbox.email
                ),
            ));
        }
        Ok(())
    }

    async fn consenting_account(&self, ctx: &Context, tokens: &Exchanged) -> Result<String> {
        if let Some(id_token) = &tokens.id_token {
            let claims = decode_claims(id_token.expose())?;
            if let Some(iss) = &claims.iss
                && !same_issuer(iss, &ctx.provider.issuer)
            {
                return Err(Error::new(
                    ErrorCode::ProviderError,
                    format!(
                        "the id token's issuer '{}' is not '{}'",
                        sanitize(iss),
                        ctx.provider.issuer
                    ),
                ));
            }
            let client_id = &ctx.app().client_id;
            let aud_ok = match &claims.aud {
                Some(serde_json::Value::String(a)) => a == client_id,
                Some(serde_json::Value::Array(list)) => {
                    list.iter().any(|a| a.as_str() == Some(client_id))
                }
                _ => true,
            };
            if !aud_ok {
                return Err(Error::new(
                    ErrorCode::ProviderError,
                    "the id token was issued to another client",
                ));
            }
            if let Some(email) = claims.email {
                let verified = match &claims.email_verified {
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(serde_json::Value::String(v)) => v != "false",
                    _ => true,
                };
                if !verified {
                    return Err(Error::new(
                        ErrorCode::AccountMismatch,
                        format!("the consenting account {email} has no verified address"),
                    ));
                }
                return Ok(email.to_ascii_lowercase());
            }
        }
        // Userinfo (OIDC Core §5.3).
        let userinfo = match &ctx.provider.userinfo_endpoint {
            Some(u) => u.clone(),
            None => {
                let discovered = super::provider::Provider::discover(
                    self.oauth().http()?,
                    &url::Url::parse(&ctx.provider.issuer).map_err(|e| {
                        Error::new(ErrorCode::ProviderError, format!("issuer: {e}"))
                    })?,
                    ctx.provider.dialect,
                )
                .await?;
                discovered.userinfo_endpoint.ok_or_else(|| {
                    Error::new(
                        ErrorCode::ProviderError,
                        "the provider returned no id token and has no userinfo endpoint; the account cannot be checked",
                    )
                })?
            }
        };
        let (status, body) = self
            .oauth()
            .http()?
            .get_json(&userinfo, Some(tokens.access_token.expose()))
            .await
            .map_err(|e| Error::new(ErrorCode::ProviderUnavailable, format!("userinfo: {e}")))?;
        match body.get("email").and_then(|e| e.as_str()) {
            Some(email) if status == 200 => Ok(email.to_ascii_lowercase()),
            _ => Err(Error::new(
                ErrorCode::ProviderError,
                format!(
                    "userinfo answered HTTP {status} without an email; the account cannot be checked"
                ),
            )),
        }
    }
}

/// A token response, secrets moved into [`Secret`]s at once.
pub(crate) struct Exchanged {
    pub(crate) access_token: Secret,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) scopes: Vec<String>,
    pub(crate) scope_returned: bool,
    pub(crate) id_token: Option<Secret>,
}

impl Exchanged {
    pub(crate) fn from_response(response: TokenResponse) -> Exchanged {
        let now = OffsetDateTime::now_utc();
        let expires_at = response
            .expires_in()
            .and_then(|d| time::Duration::try_from(d).ok())
            .map(|d| now + d);
        let scopes: Option<Vec<String>> = response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect());
        let id_token = response.extra_fields().id_token.clone().map(Secret::new);
        let refresh_token = response
            .refresh_token()
            .map(|r| Secret::new(r.secret().clone()));
        let access_token = Secret::new(response.access_token().secret().clone());
        drop(response);
        Exchanged {
            access_token,
            refresh_token,
            expires_at,
            scope_returned: scopes.is_some(),
            scopes: scopes.unwrap_or_default(),
            id_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parsing_accepts_url_or_query() {
        let cb = parse_callback("https://crm.example.com/cb?code=abc&state=xyz&scope=a+b").unwrap();
        assert_eq!(cb.code.unwrap().expose(), "abc");
        assert_eq!(cb.state.unwrap().expose(), "xyz");
        let cb = parse_callback("?error=access_denied&state=s").unwrap();
        assert_eq!(cb.error.as_deref(), Some("access_denied"));
        let cb = parse_callback("error=org_internal").unwrap();
        assert!(cb.state.is_none());
        assert!(format!("{cb:?}").contains("REDACTED") || cb.code.is_none());
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            consent_error("access_denied", None, "a@b.c").code(),
            ErrorCode::ConsentDenied
        );
        assert_eq!(
            consent_error("admin_policy_enforced", None, "a@b.c").code(),
            ErrorCode::AdminPolicy
        );
        assert_eq!(
            consent_error("org_internal", None, "a@b.c").code(),
            ErrorCode::OrgInternal
        );
        let other = consent_error("redirect_uri_mismatch", Some("bad uri"), "a@b.c");
        assert_eq!(other.code(), ErrorCode::ConsentFailed);
        assert!(other.message().contains("redirect_uri_mismatch"));
    }

    #[test]
    fn id_token_claims() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://accounts.google.com","aud":"cid","email":"A@x.com","email_verified":true}"#);
        let claims = decode_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims.email.as_deref(), Some("A@x.com"));
        assert!(same_issuer(
            "accounts.google.com",
            "https://accounts.google.com/"
        ));
        assert_eq!(
            decode_claims("garbage").unwrap_err().code(),
            ErrorCode::ProviderError
        );
    }
}
