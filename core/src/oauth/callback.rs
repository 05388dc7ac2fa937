//! The redirect back from the provider: RFC 6749 §4.1.2 (success and error
//! responses), the code exchange (§4.1.3, with the RFC 7636 verifier), and
//! the checks Google's granular consent makes necessary.
//!
//! **Account check.** The consenting account comes from the `email` claim
//! of the OIDC id token in the token response. The id token's signature is
//! not verified: it was received directly from the token endpoint over TLS,
//! which OpenID Connect Core 1.0 §3.1.3.7 (item 6) accepts in place of
//! signature validation. `iss` and `aud` must still be present and match
//! (the provider, and the client id: a token for several audiences must name
//! the client as `azp`), and its `email_verified` claim must be present and
//! true. Without an id token, or without an `email` claim, the userinfo
//! endpoint is asked; its `email_verified` must be present and true too.

use base64::Engine as _;
use oauth2::TokenResponse as _;

use super::{Context, Phase, TokenResponse, map_token_error, normalize_issuer, sanitize};
use crate::MailSync;
use crate::directory::MailboxStatus;
use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::LifecycleEvent;
use crate::model::{MailboxId, Secret, Timestamp};
use crate::store::{Grant, GrantChange, PendingChange};

/// The parameters of a redirect (success or error response).
#[derive(Debug, Default)]
struct Callback {
    state: Option<Secret>,
    code: Option<Secret>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207 authorization server issuer identifier.
    iss: Option<String>,
}

/// The longest redirect accepted. Google's codes are at most 256 bytes and
/// its redirects well under 2 KiB; anything far larger is refused locally
/// instead of being sent to the token endpoint.
pub(crate) const MAX_CALLBACK_LEN: usize = 8 * 1024;

/// The longest authorization code accepted (Google documents 256 bytes).
pub(crate) const MAX_CODE_LEN: usize = 2048;

fn parse_callback(input: &str) -> Result<Callback> {
    let input = input.trim();
    if input.len() > MAX_CALLBACK_LEN {
        return Err(Error::validation(
            "callback_url",
            format!(
                "is {} bytes long; a consent redirect is at most {MAX_CALLBACK_LEN} bytes",
                input.len()
            ),
        ));
    }
    let query = if input.contains("://") {
        let url = url::Url::parse(input)
            .map_err(|e| Error::validation("callback_url", format!("not a URL: {e}")))?;
        url.query().unwrap_or_default().to_owned()
    } else {
        input.trim_start_matches('?').to_owned()
    };
    let mut cb = Callback::default();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        // RFC 6749 §3.1: request and response parameters must not repeat.
        if seen.iter().any(|s| s == k.as_ref()) {
            return Err(Error::validation(
                "callback_url",
                format!(
                    "repeats the parameter '{}' (RFC 6749 §3.1 forbids it)",
                    sanitize(&k)
                ),
            ));
        }
        seen.push(k.to_string());
        match k.as_ref() {
            "state" => cb.state = Some(Secret::new(v.into_owned())),
            "code" => {
                if v.len() > MAX_CODE_LEN {
                    return Err(Error::validation(
                        "callback_url",
                        format!(
                            "carries a {}-byte code; authorization codes are at most {MAX_CODE_LEN} bytes",
                            v.len()
                        ),
                    ));
                }
                cb.code = Some(Secret::new(v.into_owned()))
            }
            "error" => cb.error = Some(sanitize(&v)),
            "error_description" => cb.error_description = Some(sanitize(&v)),
            "iss" => cb.iss = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(cb)
}

/// The fuzz target's view of [`parse_callback`]: the `error` parameter and
/// its description, if any.
#[cfg(feature = "fuzzing")]
#[allow(clippy::type_complexity)]
pub(crate) fn fuzz_parse_callback(input: &str) -> Result<Option<(String, Option<String>)>> {
    let cb = parse_callback(input)?;
    if let Some(code) = &cb.code {
        assert!(code.expose().len() <= MAX_CODE_LEN);
    }
    Ok(cb.error.map(|e| (e, cb.error_description)))
}

/// [`account_of_id_token`] for the fuzz target.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_account_of_id_token(
    id_token: &Secret,
    issuer: &str,
    client_id: &str,
) -> Result<Option<String>> {
    account_of_id_token(id_token, issuer, client_id)
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
    azp: Option<String>,
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

/// Whether an `email_verified` claim says yes: JSON `true`, or the string
/// `"true"` (some providers send strings). Anything else present — `false`,
/// `"false"`, a number, garbage — is not a verified address.
fn claims_verified(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(v) => v.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Refuses an address whose `email_verified` claim is not true
/// (`account_mismatch`: the provider does not vouch for it), or absent
/// (`provider_error`: Google always sends it, so a provider that leaves it
/// out is not set up as mailsync needs).
fn check_email_verified(email: &str, verified: Option<&serde_json::Value>) -> Result<()> {
    match verified {
        None => Err(Error::new(
            ErrorCode::ProviderError,
            format!(
                "the provider does not say whether the address {} of the consenting account is verified \
                 (no email_verified claim); only verified addresses can be connected",
                sanitize(email)
            ),
        )),
        Some(v) if !claims_verified(v) => Err(Error::new(
            ErrorCode::AccountMismatch,
            format!(
                "the provider says the address {} of the consenting account is not verified",
                sanitize(email)
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks an id token from the token endpoint (OIDC Core §3.1.3.7, items
/// 2–4, without the signature: see the module docs) and returns its
/// `email`, if it has one:
///
/// * `iss` must be present and name the provider;
/// * `aud` must be present and contain `client_id`; when it names other
///   audiences too, an `azp` must be present and be `client_id`;
/// * `email_verified` must be present and true ([`check_email_verified`]).
///
/// Any failure is `provider_error`, except an address the provider says is
/// not verified (`account_mismatch`).
fn account_of_id_token(id_token: &Secret, issuer: &str, client_id: &str) -> Result<Option<String>> {
    let claims = decode_claims(id_token.expose())?;
    match &claims.iss {
        Some(iss) if same_issuer(iss, issuer) => {}
        Some(iss) => {
            return Err(Error::new(
                ErrorCode::ProviderError,
                format!(
                    "the id token's issuer '{}' is not '{issuer}'",
                    sanitize(iss)
                ),
            ));
        }
        None => {
            return Err(Error::new(
                ErrorCode::ProviderError,
                "the id token names no issuer (iss)",
            ));
        }
    }
    let (contains, others) = match &claims.aud {
        Some(serde_json::Value::String(a)) => (a == client_id, false),
        Some(serde_json::Value::Array(list)) => (
            list.iter().any(|a| a.as_str() == Some(client_id)),
            list.iter().any(|a| a.as_str() != Some(client_id)),
        ),
        _ => (false, false),
    };
    if !contains {
        return Err(Error::new(
            ErrorCode::ProviderError,
            if claims.aud.is_none() {
                "the id token names no audience (aud)"
            } else {
                "the id token was issued to another client"
            },
        ));
    }
    let azp_ok = match &claims.azp {
        Some(azp) => azp == client_id,
        None => !others,
    };
    if !azp_ok {
        return Err(Error::new(
            ErrorCode::ProviderError,
            "the id token was issued to another authorized party (azp)",
        ));
    }
    match claims.email {
        Some(email) => {
            check_email_verified(&email, claims.email_verified.as_ref())?;
            Ok(Some(email.to_ascii_lowercase()))
        }
        None => Ok(None),
    }
}

fn same_issuer(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim_end_matches('/');
        s.strip_prefix("https://").unwrap_or(s).to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

impl MailSync {
    /// Records a consent that ended without a grant (best effort: the
    /// caller's error is what matters) and returns the error.
    async fn consent_failed(&self, mailbox: &MailboxId, err: Error) -> Error {
        let event = LifecycleEvent::ConsentFailed {
            code: err.code(),
            reason: err.message().to_owned(),
        };
        if let Err(e) = self
            .transition(mailbox, &[event], GrantChange::Keep, PendingChange::Keep)
            .await
        {
            tracing::warn!(mailbox = %mailbox, code = %e.code(), "could not record the failed consent");
        }
        err
    }

    /// See [`crate::Connections::complete`].
    pub(crate) async fn complete_connect(&self, callback_url: &str) -> Result<MailboxStatus> {
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
        let Some(pending) = self.store().take_pending(state).await? else {
            tracing::warn!("consent callback with an unknown or used state");
            return Err(invalid("unknown or already used state"));
        };
        // The store looked it up by hash; confirm in constant time.
        if pending.state != *state {
            return Err(invalid("unknown state"));
        }
        let mailbox_id = pending.mailbox_id.clone();
        if pending.expires_at <= self.now() {
            return Err(invalid("the consent link expired"));
        }
        let ctx = match self.oauth_context(&mailbox_id).await {
            Ok(ctx) => ctx,
            Err(e) => return Err(self.consent_failed(&mailbox_id, e).await),
        };
        if pending.issuer != ctx.binding.issuer || pending.client_id != ctx.binding.client_id {
            let err = invalid(
                "the mailbox's profile names another OAuth issuer or client than when the consent started",
            );
            return Err(self.consent_failed(&mailbox_id, err).await);
        }
        // RFC 9207: a provider that says who answered must be the one asked.
        if let Some(iss) = &cb.iss
            && normalize_issuer(iss) != normalize_issuer(&ctx.provider.issuer)
        {
            let err = Error::new(
                ErrorCode::ConsentFailed,
                format!(
                    "the consent response came from issuer '{}', not '{}' (RFC 9207); nothing was exchanged",
                    sanitize(iss),
                    ctx.provider.issuer
                ),
            );
            return Err(self.consent_failed(&mailbox_id, err).await);
        }
        if let Some(error) = &cb.error {
            let err = consent_error(error, cb.error_description.as_deref(), &ctx.mailbox.email);
            return Err(self.consent_failed(&mailbox_id, err).await);
        }
        let Some(code) = cb.code.as_ref().filter(|c| !c.is_empty()) else {
            let err = Error::new(
                ErrorCode::ConsentFailed,
                "the consent response carries no code; connect again",
            );
            return Err(self.consent_failed(&mailbox_id, err).await);
        };

        let redirect = oauth2::RedirectUrl::new(pending.redirect_uri.clone())
            .map_err(|e| Error::new(ErrorCode::Store, format!("stored redirect URI: {e}")))?;
        let http = self.oauth().http();
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
                // The state is spent either way: this consent cannot finish.
                let err = map_token_error(e, Phase::Exchange, ctx.errors());
                return Err(self.consent_failed(&mailbox_id, err).await);
            }
        };
        let tokens = Exchanged::from_response(response, self.now());

        let (checked, account) = self.check_grant(&ctx, &tokens).await;
        if let Err(err) = checked {
            self.give_back_refused_grant(&ctx, &tokens, account.as_deref())
                .await;
            return Err(self.consent_failed(&mailbox_id, err).await);
        }

        let account = ctx.mailbox.email.clone();
        let grant = Grant {
            mailbox_id: mailbox_id.clone(),
            issuer: ctx.binding.issuer.clone(),
            client_id: ctx.binding.client_id.clone(),
            token_endpoint: ctx.provider.token_endpoint.to_string(),
            account: account.clone(),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: tokens.expires_at,
            scopes: tokens.scopes,
            obtained_at: self.now(),
            version: 0,
        };
        let previous = self
            .store()
            .get_grant(&mailbox_id)
            .await?
            .map(|g| g.version);
        self.transition(
            &mailbox_id,
            &[LifecycleEvent::ConsentCompleted { account }],
            GrantChange::Put {
                grant: &grant,
                expected: previous,
            },
            PendingChange::Keep,
        )
        .await?;
        tracing::info!(mailbox = %mailbox_id, "mailbox connected");
        self.directory().status(&mailbox_id).await
    }

    /// Scope and account checks on a fresh grant. Also returns the
    /// consenting account when it could be learned, whatever the outcome.
    async fn check_grant(&self, ctx: &Context, tokens: &Exchanged) -> (Result<()>, Option<String>) {
        let account = self.consenting_account(ctx, tokens).await;
        let known = account.as_ref().ok().cloned();
        // RFC 6749 §5.1: an absent scope means "as requested".
        let missing: Vec<&str> = ctx
            .provider
            .mail_scopes
            .iter()
            .filter(|wanted| tokens.scope_returned && !tokens.scopes.iter().any(|s| s == *wanted))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let err = Error::new(
                ErrorCode::ScopeNotGranted,
                format!(
                    "{} did not grant access to mail ({}); connect again and leave the mail permission checked",
                    ctx.mailbox.email,
                    missing.join(" ")
                ),
            );
            return (Err(err), known);
        }
        let account = match account {
            Ok(a) => a,
            Err(e) => return (Err(e), None),
        };
        if !account.eq_ignore_ascii_case(&ctx.mailbox.email) {
            let err = Error::new(
                ErrorCode::AccountMismatch,
                format!(
                    "consent was given by {account}, but the mailbox is {}; sign in as {} and connect again",
                    ctx.mailbox.email, ctx.mailbox.email
                ),
            );
            return (Err(err), known);
        }
        (Ok(()), known)
    }

    /// Discards a grant that failed the checks. It is also revoked at the
    /// provider (queued and retried when that fails transiently), but only when no mailbox holds a grant of the same account
    /// on the same OAuth client: at Google, revoking one token revokes the
    /// account's whole grant for the client, so revoking here would
    /// disconnect that other mailbox (e.g. bob consenting on alice's connect
    /// page while bob's own mailbox is connected). When the account is
    /// unknown nothing is revoked either.
    async fn give_back_refused_grant(
        &self,
        ctx: &Context,
        tokens: &Exchanged,
        account: Option<&str>,
    ) {
        let Some(account) = account else {
            tracing::warn!(mailbox = %ctx.mailbox.id, "refused grant of an unknown account discarded without revocation");
            return;
        };
        match self.grant_in_use(ctx, account).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(mailbox = %ctx.mailbox.id, "refused grant discarded; not revoked because a mailbox holds a grant of that account");
                return;
            }
            Err(e) => {
                tracing::warn!(mailbox = %ctx.mailbox.id, code = %e.code(), "cannot tell whether the refused grant is shared; not revoked");
                return;
            }
        }
        // A transient failure is queued and sent again later.
        if let Err(e) = self
            .revoke_or_queue(ctx, &tokens.access_token, tokens.refresh_token.as_ref())
            .await
        {
            tracing::warn!(mailbox = %ctx.mailbox.id, code = %e.code(), "could not revoke a refused grant");
        }
    }

    /// Whether any mailbox holds a grant of `account` on this OAuth client.
    async fn grant_in_use(&self, ctx: &Context, account: &str) -> Result<bool> {
        self.store()
            .grant_held(&ctx.binding.issuer, &ctx.binding.client_id, account)
            .await
    }

    async fn consenting_account(&self, ctx: &Context, tokens: &Exchanged) -> Result<String> {
        if let Some(id_token) = &tokens.id_token
            && let Some(email) =
                account_of_id_token(id_token, &ctx.provider.issuer, &ctx.app().client_id)?
        {
            return Ok(email);
        }
        // Userinfo (OIDC Core §5.3).
        let userinfo = match &ctx.provider.userinfo_endpoint {
            Some(u) => u.clone(),
            None => {
                let discovered = super::provider::Provider::discover(
                    self.oauth().http(),
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
            .http()
            .get_json(&userinfo, Some(tokens.access_token.expose()))
            .await
            .map_err(|e| Error::new(e.code(), format!("userinfo: {e}")))?;
        match body.get("email").and_then(|e| e.as_str()) {
            Some(email) if status == 200 => {
                check_email_verified(email, body.get("email_verified"))?;
                Ok(email.to_ascii_lowercase())
            }
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
    pub(crate) expires_at: Option<Timestamp>,
    pub(crate) scopes: Vec<String>,
    pub(crate) scope_returned: bool,
    pub(crate) id_token: Option<Secret>,
}

/// The longest access token lifetime believed (a year): a provider's
/// `expires_in` beyond it is clamped, so time arithmetic cannot overflow.
pub(crate) const MAX_TOKEN_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 3600);

impl Exchanged {
    pub(crate) fn from_response(response: TokenResponse, now: Timestamp) -> Exchanged {
        let expires_at = response
            .expires_in()
            .map(|d| now.plus(d.min(MAX_TOKEN_LIFETIME)));
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
    fn repeated_or_oversized_parameters_are_refused() {
        for input in [
            "?code=A&code=B&state=S",
            "?code=A&state=S&state=T",
            "https://crm.example.com/cb?state=S&error=access_denied&error=x",
        ] {
            let e = parse_callback(input).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation, "{input}");
            assert_eq!(e.field(), Some("callback_url"));
            assert!(e.message().contains("repeats"), "{}", e.message());
        }
        let huge_code = format!("?state=S&code={}", "a".repeat(100 * 1024));
        let e = parse_callback(&huge_code).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        let long_code = format!("?state=S&code={}", "a".repeat(MAX_CODE_LEN + 1));
        let e = parse_callback(&long_code).unwrap_err();
        assert!(e.message().contains("code"), "{}", e.message());
        // Parameters we do not read may appear once each, in any order.
        assert!(parse_callback("?scope=a+b&state=S&code=C&authuser=0&prompt=consent").is_ok());
    }

    /// A refused redirect leaves the pending consent usable: the attacker's
    /// malformed redirect cannot burn the user's state.
    #[tokio::test]
    async fn refused_redirects_do_not_consume_the_state() {
        use crate::model::{MailboxSpec, OAuthApp, ServerProfile};
        let sync = MailSync::for_tests();
        let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "s")
            .for_environment("https://contoso.crm.example.com")
            .unwrap();
        sync.directory()
            .create_profile(ServerProfile::gmail("Gmail", app).default_for_new_mailboxes())
            .await
            .unwrap();
        let mailbox = sync
            .directory()
            .create_mailbox(MailboxSpec::user("alice@gmail.com"))
            .await
            .unwrap();
        let consent = sync.connections().connect(&mailbox.id).await.unwrap();
        let state = url::Url::parse(&consent.url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .to_string();
        for bad in [
            format!("?code=A&code=B&state={state}"),
            format!("?code={}&state={state}", "x".repeat(MAX_CODE_LEN + 1)),
        ] {
            let e = sync.connections().complete(&bad).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation);
        }
        let pending = sync
            .store()
            .take_pending(&Secret::new(state))
            .await
            .unwrap();
        assert!(pending.is_some(), "the state must still be pending");
    }

    #[test]
    fn callback_parsing_accepts_url_or_query() {
        let cb = parse_callback("https://crm.example.com/cb?code=abc&state=xyz&scope=a+b").unwrap();
        assert_eq!(cb.code.unwrap().expose(), "abc");
        assert_eq!(cb.state.unwrap().expose(), "xyz");
        let cb = parse_callback("?error=access_denied&state=s").unwrap();
        assert_eq!(cb.error.as_deref(), Some("access_denied"));
        let cb = parse_callback("error=org_internal").unwrap();
        assert!(cb.state.is_none());
        // A parsed callback never shows its code or state.
        let cb = parse_callback("?code=4/0AbCdEf-secret-code&state=state-value-123").unwrap();
        let shown = format!("{cb:?}");
        assert!(
            !shown.contains("secret-code") && !shown.contains("state-value-123"),
            "{shown}"
        );
        assert!(shown.contains("REDACTED"), "{shown}");
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

    fn id_token(claims: serde_json::Value) -> Secret {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).unwrap());
        Secret::new(format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig"))
    }

    /// `aud` must be present and name the client (with `azp` when it names
    /// others too); `iss` must be present and match; `email_verified` must
    /// be present and true.
    #[test]
    fn id_token_audience_issuer_and_verified_address() {
        use serde_json::json;
        const ISS: &str = "https://accounts.google.com";
        let check = |claims: serde_json::Value| account_of_id_token(&id_token(claims), ISS, "cid");
        let code = |claims: serde_json::Value| check(claims).unwrap_err().code();
        // Google's shape.
        assert_eq!(
            check(
                json!({"iss": "accounts.google.com", "aud": "cid", "azp": "cid",
                         "email": "A@x.com", "email_verified": true})
            )
            .unwrap(),
            Some("a@x.com".to_owned())
        );
        // The generic provider's: no email in the id token, userinfo is asked.
        assert_eq!(
            check(json!({"iss": ISS, "aud": "cid", "sub": "1"})).unwrap(),
            None
        );
        // No email_verified claim: the provider vouches for nothing.
        assert_eq!(
            code(json!({"iss": ISS, "aud": "cid", "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert!(
            check(json!({"iss": ISS, "aud": "cid", "email": "a@x.com", "email_verified": "true"}))
                .is_ok()
        );
        // The audience.
        assert_eq!(
            code(json!({"iss": ISS, "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": null, "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": "other", "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": ["other"], "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": [], "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": 7, "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert!(
            check(json!({"iss": ISS, "aud": ["cid"], "email": "a@x.com", "email_verified": true}))
                .is_ok()
        );
        // Several audiences: azp must name the client.
        assert_eq!(
            code(json!({"iss": ISS, "aud": ["cid", "other"]})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": ISS, "aud": ["cid", "other"], "azp": "other"})),
            ErrorCode::ProviderError
        );
        assert!(check(json!({"iss": ISS, "aud": ["cid", "other"], "azp": "cid"})).is_ok());
        assert_eq!(
            code(json!({"iss": ISS, "aud": "cid", "azp": "other"})),
            ErrorCode::ProviderError
        );
        // The issuer.
        assert_eq!(
            code(json!({"aud": "cid", "email": "a@x.com"})),
            ErrorCode::ProviderError
        );
        assert_eq!(
            code(json!({"iss": "https://evil.example", "aud": "cid"})),
            ErrorCode::ProviderError
        );
        // An address the provider does not vouch for.
        for verified in [
            json!(false),
            json!("false"),
            json!("no"),
            json!(0),
            json!(1),
            json!({}),
        ] {
            let claims =
                json!({"iss": ISS, "aud": "cid", "email": "a@x.com", "email_verified": verified});
            assert_eq!(code(claims), ErrorCode::AccountMismatch, "{verified}");
        }
        // Userinfo's answer is held to the same rule.
        assert_eq!(
            check_email_verified("a@x.com", None).unwrap_err().code(),
            ErrorCode::ProviderError
        );
        assert!(check_email_verified("a@x.com", Some(&json!(true))).is_ok());
        assert_eq!(
            check_email_verified("a@x.com", Some(&json!(false)))
                .unwrap_err()
                .code(),
            ErrorCode::AccountMismatch
        );
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
