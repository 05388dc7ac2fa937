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
        match refresh {
            Some(r) => self.revoke(ctx, r, true).await,
            None => self.revoke(ctx, access, false).await,
        }
    }

    /// Revokes a token ([RFC 7009 §2.1](https://www.rfc-editor.org/rfc/rfc7009#section-2.1)),
    /// authenticating with client_secret_post. A token the provider already
    /// considers invalid counts as revoked (Google answers 400
    /// `invalid_token`). Done here rather than through `oauth2`, whose
    /// revocation refuses non-https endpoints outright; our endpoints are
    /// checked at discovery (https, or http on loopback only).
    async fn revoke(&self, ctx: &Context, token: &Secret, refresh: bool) -> Result<()> {
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
        match self.oauth().http().post_form(endpoint, &form).await {
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
