//! OAuth 2.0 internals behind [`crate::Connections`]: the providers, the
//! consent request, the callback, token refresh and revocation.
//!
//! Secrets (client secret, codes, verifiers, tokens) are [`Secret`]s from
//! the moment they leave the `oauth2` crate; they never appear in logs,
//! `Debug` output, error messages or the store in clear.
//!
//! A grant is bound to what issued it ([`Binding`]): the issuer and client
//! a profile names are compared with the grant's before anything is sent,
//! and a grant is refreshed only at the token endpoint recorded with it.

pub(crate) mod authorize;
pub(crate) mod callback;
pub(crate) mod http;
pub(crate) mod provider;
pub(crate) mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    EndpointMaybeSet, EndpointNotSet, EndpointSet, StandardRevocableToken, StandardTokenResponse,
};
use url::Url;

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Authentication, Mailbox, MailboxId, OAuthApp, Secret, ServerProfile};
use crate::net::TlsSettings;
use crate::options::Options;
use http::HttpClient;
use provider::{Dialect, GOOGLE_ISSUER, Provider};

/// Per-instance OAuth state held by [`MailSync`].
pub(crate) struct Runtime {
    http: HttpClient,
    pub(crate) tls: TlsSettings,
    providers: Mutex<HashMap<String, Provider>>,
    flights: Mutex<HashMap<MailboxId, Arc<tokio::sync::Mutex<tokens::Flight>>>>,
}

impl Runtime {
    /// Checks the options and builds what they describe (HTTP client,
    /// trusted roots) before anything touches a store.
    pub(crate) fn new(options: &Options) -> Result<Runtime> {
        options.validate()?;
        let http = HttpClient::new(&options.extra_root_certs_pem, options.http_timeout())?;
        let mut tls = TlsSettings::webpki();
        for pem in &options.extra_root_certs_pem {
            tls = tls.with_root_pem(pem.as_bytes())?;
        }
        Ok(Runtime {
            http,
            tls,
            providers: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn http(&self) -> &HttpClient {
        &self.http
    }

    pub(crate) fn flight(&self, mailbox: &MailboxId) -> Arc<tokio::sync::Mutex<tokens::Flight>> {
        let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(mailbox.clone()).or_default().clone()
    }
}

/// Extra fields of the token response we read: the OIDC id token.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
pub(crate) struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdTokenFields([REDACTED])")
    }
}

impl oauth2::ExtraTokenFields for IdTokenFields {}

pub(crate) type TokenResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;

pub(crate) type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointSet,
>;

/// A client that can only refresh (its token endpoint is the grant's).
pub(crate) type RefreshClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The issuer and client a profile names; grants must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    /// Normalized issuer (no trailing `/`).
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) dialect: Dialect,
}

/// An issuer as grants record it: without trailing slashes.
pub(crate) fn normalize_issuer(issuer: &str) -> String {
    issuer.trim().trim_end_matches('/').to_owned()
}

/// Everything a flow needs about a mailbox's OAuth configuration.
pub(crate) struct Context {
    pub(crate) mailbox: Mailbox,
    pub(crate) profile: ServerProfile,
    pub(crate) provider: Provider,
    pub(crate) client: OAuthClient,
    pub(crate) redirect_uri: String,
    pub(crate) binding: Binding,
}

impl Context {
    pub(crate) fn app(&self) -> &OAuthApp {
        self.profile.oauth_app().expect("checked in context()")
    }

    pub(crate) fn errors(&self) -> ErrorContext<'_> {
        ErrorContext {
            email: &self.mailbox.email,
            profile: &self.profile.name,
            client_id: &self.app().client_id,
            external_testing: self.app().consent_screen.is_external_testing(),
        }
    }
}

/// What token endpoint errors are explained with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorContext<'a> {
    pub(crate) email: &'a str,
    pub(crate) profile: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) external_testing: bool,
}

/// Where a token endpoint error happened (the same answer means different things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Exchange,
    Refresh,
}

/// Cleans a provider-supplied text (from a redirect or an error body) for an error message.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

pub(crate) fn map_token_error(
    err: oauth2::RequestTokenError<http::HttpError, BasicErrorResponse>,
    phase: Phase,
    ctx: ErrorContext<'_>,
) -> Error {
    use oauth2::RequestTokenError as E;
    match err {
        E::ServerResponse(resp) => {
            let code = resp.error().as_ref().to_owned();
            let detail = resp
                .error_description()
                .map(|d| format!(": {}", sanitize(d)))
                .unwrap_or_default();
            match (code.as_str(), phase) {
                ("invalid_grant", Phase::Exchange) => Error::new(
                    ErrorCode::ConsentFailed,
                    format!(
                        "the provider refused the authorization code (invalid_grant{detail}); it was invalid, \
                         expired or already used — connect again"
                    ),
                ),
                ("invalid_grant", Phase::Refresh) => {
                    let mut message = format!(
                        "the refresh token for {} was revoked or has expired (invalid_grant{detail}); \
                         the owner must connect again",
                        ctx.email
                    );
                    if ctx.external_testing {
                        message.push_str(
                            ". The OAuth app is External and in Testing, where Google expires refresh tokens \
                             7 days after consent — the likely cause; publish the app to stop this",
                        );
                    }
                    Error::new(ErrorCode::TokenRevoked, message)
                }
                ("invalid_client" | "unauthorized_client", _) => Error::new(
                    ErrorCode::InvalidClient,
                    format!(
                        "the provider refused the OAuth client '{}' of profile '{}' ({code}{detail})",
                        ctx.client_id, ctx.profile
                    ),
                ),
                // `slow_down` (RFC 8628 §3.5) asks the client to back off.
                ("temporarily_unavailable" | "server_error" | "slow_down", _) => Error::new(
                    ErrorCode::ProviderUnavailable,
                    format!("the OAuth provider is unavailable ({code}{detail})"),
                ),
                _ => Error::new(
                    ErrorCode::ProviderError,
                    format!("the token endpoint answered {code}{detail}"),
                ),
            }
        }
        E::Request(http::HttpError::Status(status)) => Error::new(
            ErrorCode::ProviderUnavailable,
            format!("the token endpoint answered HTTP {status}"),
        ),
        E::Request(http::HttpError::TooLarge) => Error::new(
            ErrorCode::ProviderError,
            format!(
                "the token endpoint answered with more than {} bytes; the answer was dropped",
                http::MAX_BODY_BYTES
            ),
        ),
        E::Request(http::HttpError::Transport(e)) => Error::new(
            ErrorCode::ProviderUnavailable,
            format!("the token endpoint is unreachable: {e}"),
        ),
        // Never echo the body: it may hold tokens.
        E::Parse(_, _) => Error::new(
            ErrorCode::ProviderError,
            "the token endpoint answered something unparsable",
        ),
        E::Other(e) => Error::new(
            ErrorCode::ProviderError,
            format!("token request failed: {}", sanitize(&e)),
        ),
    }
}

/// The profile's OAuth app and client secret, or the `validation` error
/// that says what is missing.
pub(crate) fn app_of<'a>(
    profile: &'a ServerProfile,
    mailbox: &Mailbox,
) -> Result<(&'a OAuthApp, &'a Secret)> {
    let Some(app) = profile.oauth_app() else {
        return Err(Error::validation(
            "authentication",
            format!(
                "server profile '{}' of mailbox {} does not use OAuth; choose Gmail OAuth",
                profile.name, mailbox.email
            ),
        ));
    };
    if app.client_id.is_empty() {
        return Err(Error::validation(
            "client_id",
            format!("server profile '{}' has no OAuth client id", profile.name),
        ));
    }
    let Some(secret) = app.client_secret.as_ref().filter(|s| !s.is_empty()) else {
        return Err(Error::validation(
            "client_secret",
            format!(
                "server profile '{}' has no OAuth client secret",
                profile.name
            ),
        ));
    };
    Ok((app, secret))
}

impl MailSync {
    pub(crate) fn oauth(&self) -> &Runtime {
        &self.inner.oauth
    }

    /// The issuer and client a profile names, without any network.
    pub(crate) fn binding_of(&self, profile: &ServerProfile) -> Result<Binding> {
        let (issuer, dialect) = match &profile.authentication {
            Authentication::GmailOAuth { .. } => match &self.options().google_issuer_override {
                None => (GOOGLE_ISSUER.to_owned(), Dialect::Google),
                Some(url) => (url.clone(), Dialect::Google),
            },
            Authentication::OAuthProvider { issuer, .. } => {
                (issuer.clone(), Dialect::for_issuer(issuer))
            }
            _ => {
                return Err(Error::validation(
                    "authentication",
                    format!("server profile '{}' does not use OAuth", profile.name),
                ));
            }
        };
        let client_id = profile
            .oauth_app()
            .map(|a| a.client_id.clone())
            .unwrap_or_default();
        Ok(Binding {
            issuer: normalize_issuer(&issuer),
            client_id,
            dialect,
        })
    }

    /// The provider a profile's OAuth flows use (discovery results are
    /// cached; a provider that is down is asked again with the refresh
    /// retry policy).
    pub(crate) async fn provider_for(&self, profile: &ServerProfile) -> Result<Provider> {
        let binding = self.binding_of(profile)?;
        let mail_scopes = profile.authentication.mail_scopes().unwrap_or_default();
        let google =
            binding.issuer == GOOGLE_ISSUER && self.options().google_issuer_override.is_none();
        let mut provider = if google {
            Provider::google()
        } else {
            let key = format!("{}|{:?}", binding.issuer, binding.dialect);
            let cached = self
                .oauth()
                .providers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            match cached {
                Some(p) => p,
                None => {
                    let issuer = crate::model::validate::issuer_url(
                        "authentication.issuer",
                        &binding.issuer,
                    )?;
                    let found = self.discover_with_retry(&issuer, binding.dialect).await?;
                    self.oauth()
                        .providers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, found.clone());
                    found
                }
            }
        };
        provider.mail_scopes = mail_scopes;
        Ok(provider)
    }

    async fn discover_with_retry(&self, issuer: &Url, dialect: Dialect) -> Result<Provider> {
        let retry = self.options().refresh_retry;
        let mut backoff = retry.initial_backoff();
        let mut attempt = 1;
        loop {
            match Provider::discover(self.oauth().http(), issuer, dialect).await {
                Err(e) if e.is_transient() && attempt < retry.attempts.max(1) => {
                    tracing::warn!(issuer = %issuer, attempt, code = %e.code(), "discovery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff());
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The mailbox's profile, or the error saying it has none.
    pub(crate) async fn profile_of(&self, mailbox: &Mailbox) -> Result<ServerProfile> {
        let Some(profile_id) = &mailbox.profile_id else {
            return Err(Error::validation(
                "profile_id",
                format!(
                    "mailbox {} has no server profile; assign a Gmail OAuth profile first",
                    mailbox.email
                ),
            ));
        };
        self.directory().get_profile(profile_id).await
    }

    /// Loads mailbox, profile and provider and builds the `oauth2` client,
    /// refusing (before anyone is sent anywhere) what cannot work.
    pub(crate) async fn oauth_context(&self, mailbox: &MailboxId) -> Result<Context> {
        let mailbox = self.directory().get_mailbox(mailbox).await?;
        let profile = self.profile_of(&mailbox).await?;
        let (app, secret) = app_of(&profile, &mailbox)?;
        let Some(redirect_uri) = app.redirect_uri().map(str::to_owned) else {
            return Err(Error::validation(
                "redirect_uris",
                format!("server profile '{}' has no redirect URI", profile.name),
            ));
        };
        let binding = self.binding_of(&profile)?;
        let provider = self.provider_for(&profile).await?;
        let redirect = oauth2::RedirectUrl::new(redirect_uri.clone())
            .map_err(|e| Error::validation("redirect_uris[0]", format!("not a URL: {e}")))?;
        let client: OAuthClient = oauth2::Client::new(oauth2::ClientId::new(app.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(secret.expose().to_owned()))
            .set_auth_uri(oauth2::AuthUrl::from_url(
                provider.authorization_endpoint.clone(),
            ))
            .set_token_uri(oauth2::TokenUrl::from_url(provider.token_endpoint.clone()))
            .set_revocation_url_option(
                provider
                    .revocation_endpoint
                    .clone()
                    .map(oauth2::RevocationUrl::from_url),
            )
            .set_redirect_uri(redirect)
            // client_secret_post (RFC 6749 §2.3.1), as Google documents.
            .set_auth_type(oauth2::AuthType::RequestBody);
        Ok(Context {
            mailbox,
            profile,
            provider,
            client,
            redirect_uri,
            binding,
        })
    }

    /// Revokes a whole grant at the provider: through its refresh token when
    /// there is one (which also ends its access tokens), else through the
    /// access token.
    pub(crate) async fn revoke_grant(
        &self,
        ctx: &Context,
        access: &Secret,
        refresh: Option<&Secret>,
    ) -> Result<()> {
        match Revocation::of(ctx, access, refresh) {
            Some(r) => self.send_revocation(&r).await,
            None => {
                tracing::warn!(mailbox = %ctx.mailbox.id, "provider has no revocation endpoint; tokens only deleted");
                Ok(())
            }
        }
    }

    /// Revokes a grant; a transient failure (429, 5xx, an answer that is
    /// not JSON, the endpoint unreachable) queues the revocation in the
    /// store ([`crate::store::RevocationStore`]) to be sent again by
    /// [`MailSync::retry_revocations`]. Returns the error only when it is
    /// permanent, or when queueing failed.
    pub(crate) async fn revoke_or_queue(
        &self,
        ctx: &Context,
        access: &Secret,
        refresh: Option<&Secret>,
    ) -> Result<()> {
        let Some(r) = Revocation::of(ctx, access, refresh) else {
            tracing::warn!(mailbox = %ctx.mailbox.id, "provider has no revocation endpoint; tokens only deleted");
            return Ok(());
        };
        match self.send_revocation(&r).await {
            Err(e) if e.is_transient() => {
                let now = self.now();
                let queued = crate::store::PendingRevocation {
                    id: uuid::Uuid::new_v4().to_string(),
                    mailbox_id: ctx.mailbox.id.clone(),
                    issuer: ctx.binding.issuer.clone(),
                    client_id: r.client_id.clone(),
                    client_secret: r.client_secret.clone(),
                    endpoint: r.endpoint.to_string(),
                    token: r.token.clone(),
                    token_type_hint: r.hint.to_owned(),
                    attempts: 1,
                    last_error: Some(e.code().as_str().to_owned()),
                    created_at: now,
                    next_attempt_at: now.plus(revocation_backoff(1)),
                };
                self.store().queue_revocation(&queued).await?;
                tracing::warn!(mailbox = %ctx.mailbox.id, code = %e.code(), "revocation failed for now; queued to be sent again");
                Ok(())
            }
            other => other,
        }
    }

    /// Sends the queued revocations that are due (see
    /// [`crate::Connections::retry_revocations`]); returns how many the
    /// provider accepted.
    pub(crate) async fn retry_revocations(&self) -> Result<u32> {
        let now = self.now();
        let claimed = self
            .store()
            .claim_revocations(now, now.plus(REVOCATION_CLAIM), REVOCATION_BATCH)
            .await?;
        let mut sent = 0;
        for queued in claimed {
            let Ok(endpoint) = Url::parse(&queued.endpoint) else {
                self.store().delete_revocation(&queued.id).await?;
                continue;
            };
            let r = Revocation {
                endpoint,
                token: queued.token.clone(),
                hint: if queued.token_type_hint == "refresh_token" {
                    "refresh_token"
                } else {
                    "access_token"
                },
                client_id: queued.client_id.clone(),
                client_secret: queued.client_secret.clone(),
            };
            match self.send_revocation(&r).await {
                Ok(()) => {
                    self.store().delete_revocation(&queued.id).await?;
                    sent += 1;
                }
                Err(e) if e.is_transient() && queued.attempts + 1 < MAX_REVOCATION_ATTEMPTS => {
                    let attempts = queued.attempts + 1;
                    self.store()
                        .reschedule_revocation(
                            &queued.id,
                            attempts,
                            e.code().as_str(),
                            self.now().plus(revocation_backoff(attempts)),
                        )
                        .await?;
                }
                Err(e) => {
                    tracing::error!(mailbox = %queued.mailbox_id, code = %e.code(), attempts = queued.attempts + 1, "revocation given up; revoke the grant at the provider by hand");
                    self.store().delete_revocation(&queued.id).await?;
                }
            }
        }
        Ok(sent)
    }

    /// Revokes a token ([RFC 7009 §2.1](https://www.rfc-editor.org/rfc/rfc7009#section-2.1)),
    /// authenticating with client_secret_post. A token the provider already
    /// considers invalid counts as revoked (Google answers 400
    /// `invalid_token`). Done here rather than through `oauth2`, whose
    /// revocation refuses non-https endpoints outright; our endpoints are
    /// checked at discovery (https, or http on loopback only).
    ///
    /// Transient (`provider_unavailable`): 429 and 5xx answers, an answer
    /// whose body is not JSON (a proxy's error page), the endpoint
    /// unreachable.
    async fn send_revocation(&self, r: &Revocation) -> Result<()> {
        let secret = r
            .client_secret
            .as_ref()
            .map(|s| s.expose())
            .unwrap_or_default();
        let form = [
            ("token", r.token.expose()),
            ("token_type_hint", r.hint),
            ("client_id", r.client_id.as_str()),
            ("client_secret", secret),
        ];
        match self.oauth().http().post_form(&r.endpoint, &form).await {
            Ok((200, _)) => Ok(()),
            Ok((status, serde_json::Value::Null)) => Err(Error::new(
                ErrorCode::ProviderUnavailable,
                format!("revocation answered HTTP {status} without a JSON body"),
            )),
            Ok((status, body)) => {
                let code = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
                match code {
                    "invalid_token" | "invalid_grant" => Ok(()),
                    "invalid_client" | "unauthorized_client" => Err(Error::new(
                        ErrorCode::InvalidClient,
                        format!(
                            "the provider refused the OAuth client '{}' when revoking",
                            r.client_id
                        ),
                    )),
                    // The server asks to be asked again later.
                    "temporarily_unavailable" | "slow_down" => Err(Error::new(
                        ErrorCode::ProviderUnavailable,
                        format!("revocation answered HTTP {status} {code}"),
                    )),
                    _ => Err(Error::new(
                        ErrorCode::ProviderError,
                        format!("revocation answered HTTP {status} {}", sanitize(code)),
                    )),
                }
            }
            Err(e) => Err(Error::new(e.code(), format!("revocation endpoint: {e}"))),
        }
    }
}

/// How long a claimed revocation is reserved for the claimer.
const REVOCATION_CLAIM: std::time::Duration = std::time::Duration::from_secs(300);
/// How many queued revocations one [`MailSync::retry_revocations`] call sends at most.
const REVOCATION_BATCH: usize = 100;
/// After this many failed attempts a queued revocation is dropped (logged
/// as an error). With [`revocation_backoff`] that is about a week.
pub(crate) const MAX_REVOCATION_ATTEMPTS: u32 = 36;

/// The wait after the `attempts`-th failure: 1 minute, doubling, at most 6 hours.
pub(crate) fn revocation_backoff(attempts: u32) -> std::time::Duration {
    let minutes = 1u64 << attempts.saturating_sub(1).min(9);
    std::time::Duration::from_secs((minutes * 60).min(6 * 3600))
}

/// One revocation request: everything it needs, so it can be sent again
/// after the mailbox (or its profile) is gone.
pub(crate) struct Revocation {
    endpoint: Url,
    token: Secret,
    hint: &'static str,
    client_id: String,
    client_secret: Option<Secret>,
}

impl Revocation {
    /// The request revoking a grant (its refresh token if any), or `None`
    /// when the provider has no revocation endpoint.
    fn of(ctx: &Context, access: &Secret, refresh: Option<&Secret>) -> Option<Revocation> {
        let endpoint = ctx.provider.revocation_endpoint.clone()?;
        let app = ctx.app();
        let (token, hint) = match refresh {
            Some(r) => (r.clone(), "refresh_token"),
            None => (access.clone(), "access_token"),
        };
        Some(Revocation {
            endpoint,
            token,
            hint,
            client_id: app.client_id.clone(),
            client_secret: app.client_secret.clone(),
        })
    }
}

#[cfg(feature = "fuzzing")]
const FUZZ_REFRESH_TOKEN: &str = "1//fuzz-refresh-token";

#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_token_response(rt: &tokio::runtime::Runtime, status: u16, body: Vec<u8>) {
    let client: RefreshClient = oauth2::Client::new(oauth2::ClientId::new("cid".into()))
        .set_client_secret(oauth2::ClientSecret::new("secret".into()))
        .set_token_uri(
            oauth2::TokenUrl::new("https://oauth2.example.com/token".into()).expect("url"),
        )
        .set_auth_type(oauth2::AuthType::RequestBody);
    let Ok(status) = reqwest::StatusCode::from_u16(status.max(100)) else {
        return;
    };
    // A provider may echo anything, the token too; only our own text counts.
    let echoed = body
        .windows(FUZZ_REFRESH_TOKEN.len())
        .any(|w| w == FUZZ_REFRESH_TOKEN.as_bytes());
    let adapter = move |_request: oauth2::HttpRequest| {
        let body = body.clone();
        async move {
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(http::HttpError::Status(status.as_u16()));
            }
            if body.len() > http::MAX_BODY_BYTES {
                return Err(http::HttpError::TooLarge);
            }
            let mut out = oauth2::HttpResponse::new(body);
            *out.status_mut() = status;
            out.headers_mut().insert(
                "content-type",
                reqwest::header::HeaderValue::from_static("application/json"),
            );
            Ok(out)
        }
    };
    let context = ErrorContext {
        email: "a@example.com",
        profile: "P",
        client_id: "cid",
        external_testing: true,
    };
    rt.block_on(async {
        let outcome = client
            .exchange_refresh_token(&oauth2::RefreshToken::new(FUZZ_REFRESH_TOKEN.into()))
            .request_async(&adapter)
            .await;
        match outcome {
            Ok(response) => {
                let now = crate::model::Timestamp::now_utc();
                let ex = callback::Exchanged::from_response(response, now);
                if let Some(at) = ex.expires_at {
                    assert!(at >= now);
                }
            }
            Err(e) => {
                let e = map_token_error(e, Phase::Refresh, context);
                assert!(
                    echoed || !e.message().contains(FUZZ_REFRESH_TOKEN),
                    "the refresh token leaked into an error"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP/1.1 server on 127.0.0.1 that answers every request with
    /// `response` (raw bytes: status line, headers, body) and closes.
    async fn scripted(response: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let response = std::sync::Arc::new(response);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    // Read the head and the body (Content-Length) of the request.
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if seen.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        port
    }

    fn answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn json(status: &str, body: &str) -> Vec<u8> {
        answer(
            status,
            "Content-Type: application/json\r\n",
            body.as_bytes(),
        )
    }

    /// A body of `len` bytes with no Content-Length: chunked.
    fn chunked(len: usize) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        let chunk = vec![b' '; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&chunk[..n]);
            out.extend_from_slice(b"\r\n");
            left -= n;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn http() -> HttpClient {
        HttpClient::new(&[], Duration::from_secs(10)).unwrap()
    }

    fn context() -> ErrorContext<'static> {
        ErrorContext {
            email: "a@example.com",
            profile: "P",
            client_id: "cid",
            external_testing: false,
        }
    }

    /// A refresh at the scripted token endpoint, as the library sends it.
    async fn refresh_at(port: u16) -> std::result::Result<TokenResponse, Error> {
        let client: RefreshClient = oauth2::Client::new(oauth2::ClientId::new("cid".into()))
            .set_client_secret(oauth2::ClientSecret::new("secret".into()))
            .set_token_uri(oauth2::TokenUrl::new(format!("http://127.0.0.1:{port}/token")).unwrap())
            .set_auth_type(oauth2::AuthType::RequestBody);
        let http = http();
        client
            .exchange_refresh_token(&oauth2::RefreshToken::new("rt".into()))
            .request_async(&http.oauth2())
            .await
            .map_err(|e| map_token_error(e, Phase::Refresh, context()))
    }

    /// Rate limiting, `slow_down` and 5xx answers of any kind from the
    /// token endpoint are `provider_unavailable`: transient, so a mailbox is
    /// retried later rather than disabled.
    #[tokio::test]
    async fn overload_answers_of_the_token_endpoint_are_transient() {
        let cases = [
            (
                "429",
                json(
                    "429 Too Many Requests",
                    r#"{"error":"rate_limit_exceeded"}"#,
                ),
            ),
            (
                "429 without a body",
                answer("429 Too Many Requests", "Retry-After: 30\r\n", b""),
            ),
            (
                "slow_down",
                json("400 Bad Request", r#"{"error":"slow_down"}"#),
            ),
            (
                "502 page",
                answer(
                    "502 Bad Gateway",
                    "Content-Type: text/html\r\n",
                    b"<html>bad gateway</html>",
                ),
            ),
            ("504 empty", answer("504 Gateway Timeout", "", b"")),
            ("unknown 5xx", answer("599 Whatever", "", b"?")),
            (
                "500 server_error",
                json("500 Internal Server Error", r#"{"error":"server_error"}"#),
            ),
            (
                "temporarily_unavailable",
                json(
                    "503 Service Unavailable",
                    r#"{"error":"temporarily_unavailable"}"#,
                ),
            ),
        ];
        for (what, response) in cases {
            let port = scripted(response).await;
            let e = refresh_at(port).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::ProviderUnavailable, "{what}: {e}");
            assert!(e.is_transient(), "{what}");
        }
        // Other OAuth errors stay what they were.
        let port = scripted(json("400 Bad Request", r#"{"error":"invalid_grant"}"#)).await;
        assert_eq!(
            refresh_at(port).await.unwrap_err().code(),
            ErrorCode::TokenRevoked
        );
        let port = scripted(json("400 Bad Request", r#"{"error":"invalid_request"}"#)).await;
        assert_eq!(
            refresh_at(port).await.unwrap_err().code(),
            ErrorCode::ProviderError
        );
    }

    /// An answer over 1 MiB is not read: `provider_error`, whether its
    /// length is announced or it just keeps coming.
    #[tokio::test]
    async fn oversized_answers_are_provider_error() {
        let big = 2 * http::MAX_BODY_BYTES;
        let padded = format!(
            r#"{{"access_token":"t","token_type":"Bearer","pad":"{}"}}"#,
            "x".repeat(big)
        );
        for (what, response) in [
            ("announced", json("200 OK", &padded)),
            ("chunked", chunked(big)),
        ] {
            let port = scripted(response).await;
            let e = refresh_at(port).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::ProviderError, "token {what}: {e}");
            let url = url::Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
            let e = http().get_json(&url, None).await.unwrap_err();
            assert!(
                matches!(e, http::HttpError::TooLarge),
                "userinfo {what}: {e}"
            );
            assert_eq!(e.code(), ErrorCode::ProviderError);
            let e = http().post_form(&url, &[("token", "t")]).await.unwrap_err();
            assert!(
                matches!(e, http::HttpError::TooLarge),
                "revocation {what}: {e}"
            );
            let issuer = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
            let e = Provider::discover(&http(), &issuer, Dialect::Generic)
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::ProviderError, "discovery {what}: {e}");
        }
        // Just under the cap is read.
        let fits = format!(
            r#"{{"access_token":"t","token_type":"Bearer","pad":"{}"}}"#,
            "x".repeat(http::MAX_BODY_BYTES - 100)
        );
        let port = scripted(json("200 OK", &fits)).await;
        refresh_at(port).await.unwrap();
        // Discovery and userinfo answering 429 are transient too.
        let port = scripted(answer("429 Too Many Requests", "", b"")).await;
        let issuer = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = Provider::discover(&http(), &issuer, Dialect::Generic)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ProviderUnavailable, "{e}");
    }

    /// `expires_in` of 10^12 or u64::MAX seconds is clamped to a year; the
    /// time arithmetic around it (expiry, freshness, skew) does not panic.
    #[tokio::test]
    async fn huge_expires_in_is_clamped_to_a_year() {
        let now = Timestamp::now_utc();
        for expires_in in ["1000000000000", "18446744073709551615"] {
            let body = format!(
                r#"{{"access_token":"t","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            let port = scripted(json("200 OK", &body)).await;
            let response = refresh_at(port).await.unwrap();
            let ex = callback::Exchanged::from_response(response, now);
            assert_eq!(
                ex.expires_at,
                Some(now.plus(callback::MAX_TOKEN_LIFETIME)),
                "{expires_in}"
            );
            let grant = crate::store::Grant {
                mailbox_id: crate::model::MailboxId::new(),
                issuer: "https://issuer.example".into(),
                client_id: "cid".into(),
                token_endpoint: "https://issuer.example/token".into(),
                account: "a@example.com".into(),
                access_token: ex.access_token,
                refresh_token: None,
                expires_at: ex.expires_at,
                scopes: Vec::new(),
                obtained_at: now,
                version: 1,
            };
            for skew in [Duration::ZERO, Duration::from_secs(300), Duration::MAX] {
                assert!(tokens::is_fresh_at(&grant, skew, now));
                tokens::effective_skew(skew, now, ex.expires_at.unwrap());
            }
        }
        // A float is not a number of seconds: unparsable, not a panic.
        let port = scripted(json(
            "200 OK",
            r#"{"access_token":"t","token_type":"Bearer","expires_in":1e12}"#,
        ))
        .await;
        assert_eq!(
            refresh_at(port).await.unwrap_err().code(),
            ErrorCode::ProviderError
        );
    }
}
