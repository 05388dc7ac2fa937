//! OAuth 2.0 for mailboxes: consent, callback, tokens, revocation.
//!
//! The lifecycle (docs/oauth.md has the diagram and every error code):
//!
//! 1. [`MailSync::connect`] issues a consent URL for a mailbox
//!    ([RFC 6749 §4.1.1](https://www.rfc-editor.org/rfc/rfc6749#section-4.1.1)
//!    with PKCE S256, [RFC 7636](https://www.rfc-editor.org/rfc/rfc7636)),
//!    and stores the pending authorization (state → mailbox, sealed
//!    verifier, 10-minute expiry) in the [`crate::Store`].
//! 2. [`MailSync::complete_connect`] takes the redirect URL, consumes the
//!    single-use `state`, exchanges the code
//!    ([§4.1.3](https://www.rfc-editor.org/rfc/rfc6749#section-4.1.3)),
//!    checks the granted scope and the consenting account, and stores the
//!    token set sealed.
//! 3. [`MailSync::access_token`] returns a valid access token, refreshing
//!    ahead of expiry ([§6](https://www.rfc-editor.org/rfc/rfc6749#section-6))
//!    exactly once per expiry across tasks and processes.
//! 4. [`MailSync::disconnect`] revokes the grant
//!    ([RFC 7009](https://www.rfc-editor.org/rfc/rfc7009)) and deletes the tokens.
//!
//! State changes land on the mailbox record ([`crate::model::ConnectionState`]
//! and alerts) and go to the [`MailboxEventListener`].
//!
//! Secrets (client secret, codes, verifiers, tokens) are [`Secret`]s from the
//! moment they leave the `oauth2` crate; they never appear in logs, `Debug`
//! output, error messages or the store in clear.

pub mod authorize;
pub mod callback;
pub mod events;
pub mod http;
pub mod provider;
pub mod tokens;

pub use authorize::ConsentRequest;
pub use events::{CollectingListener, MailboxEvent, MailboxEventKind, MailboxEventListener};
pub use provider::{Dialect, GMAIL_SCOPE, Provider};
pub use tokens::{AccessToken, TokenInfo};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    EndpointMaybeSet, EndpointNotSet, EndpointSet, StandardRevocableToken, StandardTokenResponse,
};
use time::OffsetDateTime;
use url::Url;

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    AlertLevel, Authentication, ConnectionState, Mailbox, MailboxId, OAuthApp, Secret,
    ServerProfile,
};
use http::HttpClient;

/// Bounded retries with exponential backoff for transient refresh failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound for one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// Library settings that concern the OAuth flows. Start from
/// [`Settings::default`] and change fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Extra trusted root certificates (PEM text), added to the bundled web
    /// PKI roots. Tests add their own CA this way; verification stays on.
    pub extra_root_certs_pem: Vec<String>,
    /// Point Gmail OAuth profiles at another issuer (found by discovery)
    /// instead of Google — for the local test stack and demos. Google's
    /// request parameters are still sent.
    pub google_issuer_override: Option<Url>,
    /// Refresh this long before the access token expires (default 5 min).
    pub token_refresh_skew: Duration,
    /// Timeout of one HTTP request to the provider (default 30 s).
    pub http_timeout: Duration,
    /// Retries of a refresh that failed transiently (5xx, network).
    pub refresh_retry: RetryPolicy,
    /// How long a process may hold a mailbox's refresh lease (default 60 s).
    /// Another process waits at most about this long for the holder.
    pub refresh_lease: Duration,
    /// How long a consent URL stays valid (default 10 min).
    pub consent_ttl: Duration,
    /// Receives connection events.
    pub event_listener: Option<Arc<dyn MailboxEventListener>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            extra_root_certs_pem: Vec::new(),
            google_issuer_override: None,
            token_refresh_skew: Duration::from_secs(300),
            http_timeout: Duration::from_secs(30),
            refresh_retry: RetryPolicy::default(),
            refresh_lease: Duration::from_secs(60),
            consent_ttl: Duration::from_secs(600),
            event_listener: None,
        }
    }
}

impl Settings {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let retry = &self.refresh_retry;
        if retry.attempts < 1 {
            return Err(Error::validation(
                "refresh_retry.attempts",
                "must be at least 1",
            ));
        }
        if retry.initial_backoff > retry.max_backoff {
            return Err(Error::validation(
                "refresh_retry.initial_backoff",
                "must not exceed refresh_retry.max_backoff",
            ));
        }
        if self.http_timeout.is_zero() {
            return Err(Error::validation(
                "http_timeout",
                "must be longer than zero",
            ));
        }
        if self.refresh_lease.is_zero() {
            return Err(Error::validation(
                "refresh_lease",
                "must be longer than zero",
            ));
        }
        if let Some(url) = &self.google_issuer_override {
            crate::model::validate::issuer_url("google_issuer_override", url.as_str())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("extra_root_certs_pem", &self.extra_root_certs_pem.len())
            .field(
                "google_issuer_override",
                &self.google_issuer_override.as_ref().map(Url::as_str),
            )
            .field("token_refresh_skew", &self.token_refresh_skew)
            .field("http_timeout", &self.http_timeout)
            .field("refresh_retry", &self.refresh_retry)
            .field("refresh_lease", &self.refresh_lease)
            .field("consent_ttl", &self.consent_ttl)
            .field("event_listener", &self.event_listener.is_some())
            .finish()
    }
}

/// Per-instance OAuth state held by [`MailSync`].
pub(crate) struct Runtime {
    pub(crate) settings: Settings,
    http: std::result::Result<HttpClient, (ErrorCode, String)>,
    providers: Mutex<HashMap<String, Provider>>,
    flights: Mutex<HashMap<MailboxId, Arc<tokio::sync::Mutex<tokens::Flight>>>>,
    listener: RwLock<Option<Arc<dyn MailboxEventListener>>>,
}

impl Runtime {
    pub(crate) fn new(settings: Settings) -> Runtime {
        let http = HttpClient::new(&settings.extra_root_certs_pem, settings.http_timeout)
            .map_err(|e| (e.code(), e.message().to_owned()));
        let listener = RwLock::new(settings.event_listener.clone());
        Runtime {
            settings,
            http,
            providers: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            listener,
        }
    }

    /// Checks the settings eagerly (bad PEM, TLS setup).
    pub(crate) fn check(&self) -> Result<()> {
        self.http().map(|_| ())
    }

    pub(crate) fn http(&self) -> Result<&HttpClient> {
        self.http
            .as_ref()
            .map_err(|(code, message)| Error::new(*code, message.clone()))
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

/// Everything a flow needs about a mailbox's OAuth configuration.
pub(crate) struct Context {
    pub(crate) mailbox: Mailbox,
    pub(crate) profile: ServerProfile,
    pub(crate) provider: Provider,
    pub(crate) client: OAuthClient,
    pub(crate) redirect_uri: String,
}

impl Context {
    pub(crate) fn app(&self) -> &OAuthApp {
        self.profile.oauth_app().expect("checked in context()")
    }

    pub(crate) fn is_external_testing(&self) -> bool {
        self.app().consent_screen.is_external_testing()
    }
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
    ctx: &Context,
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
                        ctx.mailbox.email
                    );
                    if ctx.is_external_testing() {
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
                        ctx.app().client_id,
                        ctx.profile.name
                    ),
                ),
                ("temporarily_unavailable" | "server_error", _) => Error::new(
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

impl MailSync {
    pub(crate) fn oauth(&self) -> &Runtime {
        &self.inner.oauth
    }

    /// Replaces the connection event listener (`None` removes it).
    pub fn set_event_listener(&self, listener: Option<Arc<dyn MailboxEventListener>>) {
        *self
            .oauth()
            .listener
            .write()
            .unwrap_or_else(|e| e.into_inner()) = listener;
    }

    /// The OAuth settings in effect.
    pub fn settings(&self) -> &Settings {
        &self.oauth().settings
    }

    /// The provider a profile's OAuth flows use (discovery results are cached).
    pub async fn provider_for(&self, profile: &ServerProfile) -> Result<Provider> {
        let (issuer, dialect) = match &profile.authentication {
            Authentication::GmailOAuth { .. } => match &self.settings().google_issuer_override {
                None => return Ok(Provider::google()),
                Some(url) => (url.clone(), Dialect::Google),
            },
            Authentication::OAuthProvider { issuer, .. } => (
                crate::model::validate::issuer_url("authentication.issuer", issuer)?,
                Dialect::Generic,
            ),
            _ => {
                return Err(Error::validation(
                    "authentication",
                    format!("server profile '{}' does not use OAuth", profile.name),
                ));
            }
        };
        let key = format!("{}|{dialect:?}", issuer.as_str().trim_end_matches('/'));
        if let Some(p) = self
            .oauth()
            .providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let provider = Provider::discover(self.oauth().http()?, &issuer, dialect).await?;
        self.oauth()
            .providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, provider.clone());
        Ok(provider)
    }

    /// Loads mailbox, profile and provider and builds the `oauth2` client,
    /// refusing (before anyone is sent anywhere) what cannot work.
    pub(crate) async fn oauth_context(&self, mailbox: &MailboxId) -> Result<Context> {
        let mailbox = self.get_mailbox(mailbox).await?;
        let Some(profile_id) = mailbox.profile_id.clone() else {
            return Err(Error::validation(
                "profile_id",
                format!(
                    "mailbox {} has no server profile; assign a Gmail OAuth profile first",
                    mailbox.email
                ),
            ));
        };
        let profile = self.get_profile(&profile_id).await?;
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
        let Some(redirect_uri) = app.redirect_uri().map(str::to_owned) else {
            return Err(Error::validation(
                "redirect_uris",
                format!("server profile '{}' has no redirect URI", profile.name),
            ));
        };
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
        })
    }

    /// Sets the mailbox's connection state (re-reading it first), adds an
    /// alert and emits an event.
    pub(crate) async fn record_connection(
        &self,
        mailbox: &MailboxId,
        state: Option<ConnectionState>,
        alert: Option<(AlertLevel, &str, String)>,
        event: Option<(MailboxEventKind, Option<&str>, String)>,
    ) -> Result<Mailbox> {
        let mut record = self.get_mailbox(mailbox).await?;
        if state.is_none() && alert.is_none() {
            // nothing to write
        } else {
            if let Some(state) = state {
                record.connection = state;
            }
            if let Some((level, code, message)) = alert {
                record.push_alert(level, code, message);
            }
            self.store().update_mailbox(&record, None).await?;
        }
        if let Some((kind, code, message)) = event {
            self.emit(MailboxEvent {
                kind,
                mailbox_id: record.id.clone(),
                email: record.email.clone(),
                code: code.map(str::to_owned),
                message,
                at: OffsetDateTime::now_utc(),
            });
        }
        Ok(record)
    }

    pub(crate) fn emit(&self, event: MailboxEvent) {
        tracing::info!(mailbox = %event.mailbox_id, kind = event.kind.as_str(), code = ?event.code, "mailbox event");
        let listener = self
            .oauth()
            .listener
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(listener) = listener {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_event(&event)
            }));
            if outcome.is_err() {
                tracing::error!(mailbox = %event.mailbox_id, "the event listener panicked; event dropped");
            }
        }
    }

    /// Revokes a token at the provider ([RFC 7009 §2.1](https://www.rfc-editor.org/rfc/rfc7009#section-2.1)),
    /// authenticating with client_secret_post. A token the provider already
    /// considers invalid counts as revoked (Google answers 400 `invalid_token`).
    ///
    /// Done here rather than through `oauth2`, whose revocation refuses
    /// non-https endpoints outright; our endpoints are checked at discovery
    /// (https, or http on loopback only).
    /// Revokes a whole grant: through its refresh token when there is one
    /// (which also ends its access tokens), else through the access token.
    pub(crate) async fn revoke_grant(
        &self,
        ctx: &Context,
        access: &Secret,
        refresh: Option<&Secret>,
    ) -> Result<()> {
        match refresh {
            Some(r) => self.revoke(ctx, r, true).await,
            None => self.revoke(ctx, access, false).await,
        }
    }

    pub(crate) async fn revoke(&self, ctx: &Context, token: &Secret, refresh: bool) -> Result<()> {
        let Some(endpoint) = ctx.provider.revocation_endpoint.as_ref() else {
            tracing::warn!(mailbox = %ctx.mailbox.id, "provider has no revocation endpoint; tokens only deleted");
            return Ok(());
        };
        let app = ctx.app();
        let secret = app
            .client_secret
            .as_ref()
            .map(|s| s.expose())
            .unwrap_or_default();
        let hint = if refresh {
            "refresh_token"
        } else {
            "access_token"
        };
        let form = [
            ("token", token.expose()),
            ("token_type_hint", hint),
            ("client_id", app.client_id.as_str()),
            ("client_secret", secret),
        ];
        match self.oauth().http()?.post_form(endpoint, &form).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => {
                let code = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
                match code {
                    "invalid_token" | "invalid_grant" => Ok(()),
                    "invalid_client" | "unauthorized_client" => Err(Error::new(
                        ErrorCode::InvalidClient,
                        format!(
                            "the provider refused the OAuth client '{}' when revoking",
                            app.client_id
                        ),
                    )),
                    _ => Err(Error::new(
                        ErrorCode::ProviderError,
                        format!("revocation answered HTTP {status} {}", sanitize(code)),
                    )),
                }
            }
            Err(e) => Err(Error::new(
                ErrorCode::ProviderUnavailable,
                format!("revocation endpoint: {e}"),
            )),
        }
    }
}
