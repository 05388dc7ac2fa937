//! OAuth lifecycle of a mailbox: `connect`, `completeConnect`, `accessToken`,
//! `refreshAccessToken`, `tokenInfo`, `disconnect`, `setEventListener`, and the
//! settings-taking constructors `openSqliteWith` / `openSqliteWithKeyAndSettings`
//! / `inMemoryWith`.

use mailsync::oauth;
use napi::Env;
use napi::bindgen_prelude::PromiseRaw;
use napi_derive::napi;

use crate::error::{guard, promise};
use crate::mailbox::Mailbox;
use crate::settings::{EffectiveSettings, ListenerFn, Settings, listener};
use crate::store::{MailSync, SealKey};
use crate::{parse_mailbox_id, rfc3339};

/// A consent request for the mailbox owner's browser.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct ConsentRequest {
    /// The authorization URL to open (a one-time link; not a secret).
    pub url: String,
    /// The mailbox it is for.
    pub mailbox_id: String,
    /// After this instant (RFC 3339) the callback is refused with `state_invalid`.
    pub expires_at: String,
}

impl From<oauth::ConsentRequest> for ConsentRequest {
    fn from(c: oauth::ConsentRequest) -> Self {
        ConsentRequest {
            url: c.url.to_string(),
            mailbox_id: c.mailbox_id.to_string(),
            expires_at: rfc3339(c.expires_at),
        }
    }
}

/// What is stored for a mailbox's grant, without the secrets.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The account that consented.
    pub account: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry (RFC 3339), if known.
    pub expires_at: Option<String>,
    /// When the tokens were obtained (consent or last refresh).
    pub obtained_at: String,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Store version (increases with every refresh).
    pub version: f64,
}

impl From<oauth::TokenInfo> for TokenInfo {
    fn from(t: oauth::TokenInfo) -> Self {
        TokenInfo {
            account: t.account,
            scopes: t.scopes,
            expires_at: t.expires_at.map(rfc3339),
            obtained_at: rfc3339(t.obtained_at),
            has_refresh_token: t.has_refresh_token,
            version: t.version as f64,
        }
    }
}

/// A valid access token. The token is a secret: `toString`, `toJSON` and
/// `util.inspect` show `[REDACTED]`; only `reveal()` returns the value.
#[napi]
pub struct AccessToken {
    inner: oauth::AccessToken,
}

#[napi]
impl AccessToken {
    /// The raw bearer token (for XOAUTH2 / OAUTHBEARER). Handle it as a secret.
    #[napi]
    pub fn reveal(&self) -> String {
        self.inner.token.expose().to_owned()
    }

    /// When it expires (RFC 3339), if known.
    #[napi(getter)]
    pub fn expires_at(&self) -> Option<String> {
        self.inner.expires_at.map(rfc3339)
    }

    /// The account it belongs to.
    #[napi(getter)]
    pub fn account(&self) -> String {
        self.inner.account.clone()
    }

    /// `{ token: '[REDACTED]', account, expiresAt }`.
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "token": "[REDACTED]",
            "account": self.inner.account,
            "expiresAt": self.expires_at(),
        })
    }

    /// `AccessToken(<account>, [REDACTED])`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        format!("AccessToken({}, [REDACTED])", self.inner.account)
    }
}

#[napi]
impl MailSync {
    /// Like `openSqlite`, with settings; rejects with `validation` on unusable
    /// settings (e.g. a PEM without certificates).
    #[napi]
    pub fn open_sqlite_with(
        env: &Env,
        path: String,
        settings: Settings,
    ) -> napi::Result<PromiseRaw<'_, MailSync>> {
        promise(
            env,
            async move {
                let settings = settings.into_core()?;
                mailsync::MailSync::open_sqlite_with(path, settings).await
            },
            MailSync::wrap,
        )
    }

    /// Like `openSqliteWithKey` (a key supplied by the host), with settings;
    /// rejects with `validation` on unusable settings.
    #[napi]
    pub fn open_sqlite_with_key_and_settings<'env>(
        env: &'env Env,
        path: String,
        key: &SealKey,
        settings: Settings,
    ) -> napi::Result<PromiseRaw<'env, MailSync>> {
        let key = key.inner.clone();
        promise(
            env,
            async move {
                let settings = settings.into_core()?;
                mailsync::MailSync::open_sqlite_with_key_and_settings(path, key, settings).await
            },
            MailSync::wrap,
        )
    }

    /// Like `inMemory`, with settings; throws `validation` on unusable settings.
    #[napi]
    pub fn in_memory_with(env: &Env, settings: Settings) -> napi::Result<MailSync> {
        guard(env, || {
            mailsync::MailSync::in_memory_with(settings.into_core()?).map(MailSync::wrap)
        })
    }

    /// Replaces the connection event listener (`null` removes it).
    #[napi(ts_args_type = "listener: ((event: MailboxEvent) => void) | null")]
    pub fn set_event_listener(
        &self,
        env: &Env,
        listener_fn: Option<ListenerFn>,
    ) -> napi::Result<()> {
        guard(env, || {
            self.inner.set_event_listener(listener_fn.map(listener));
            Ok(())
        })
    }

    /// The OAuth settings in effect (without the listener).
    #[napi(getter)]
    pub fn settings(&self) -> EffectiveSettings {
        EffectiveSettings::from(self.inner.settings())
    }

    /// Starts connecting a mailbox: the consent URL for its owner. The mailbox
    /// becomes `awaiting_consent`; rejects with `validation` (no OAuth profile,
    /// no client id/secret/redirect URI) or `not_a_test_user`.
    #[napi]
    pub fn connect<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
    ) -> napi::Result<PromiseRaw<'env, ConsentRequest>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.connect(&parse_mailbox_id(&mailbox_id)?).await },
            ConsentRequest::from,
        )
    }

    /// Completes a connection from the provider's redirect (the full URL or
    /// just its query). Resolves with the connected mailbox; rejects with
    /// `state_invalid`, `consent_denied`, `admin_policy`, `org_internal`,
    /// `consent_failed`, `scope_not_granted`, `account_mismatch`, ...
    #[napi]
    pub fn complete_connect<'env>(
        &self,
        env: &'env Env,
        callback_url: String,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.complete_connect(&callback_url).await },
            Mailbox::wrap,
        )
    }

    /// A valid access token, refreshed ahead of expiry; rejects with
    /// `not_connected`, `token_revoked`, `provider_unavailable`, ...
    #[napi]
    pub fn access_token<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
    ) -> napi::Result<PromiseRaw<'env, AccessToken>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.access_token(&parse_mailbox_id(&mailbox_id)?).await },
            |inner| AccessToken { inner },
        )
    }

    /// A new access token to replace `rejected` (one a mail server refused or
    /// ended a session for before its expiry). Refreshes unless another caller
    /// already replaced `rejected`, in which case it resolves with the stored,
    /// newer token without asking the provider; single-flight like
    /// `accessToken`, with the same errors (a revoked grant is `token_revoked`).
    #[napi]
    pub fn refresh_access_token<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
        rejected: &AccessToken,
    ) -> napi::Result<PromiseRaw<'env, AccessToken>> {
        let (sync, rejected) = (self.inner.clone(), rejected.inner.token.clone());
        promise(
            env,
            async move {
                sync.refresh_access_token(&parse_mailbox_id(&mailbox_id)?, &rejected)
                    .await
            },
            |inner| AccessToken { inner },
        )
    }

    /// What is stored for the mailbox's grant, without secrets; `null` if nothing.
    #[napi]
    pub fn token_info<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
    ) -> napi::Result<PromiseRaw<'env, Option<TokenInfo>>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.token_info(&parse_mailbox_id(&mailbox_id)?).await },
            |info| info.map(TokenInfo::from),
        )
    }

    /// Revokes the grant, deletes the tokens, sets the mailbox `not_connected`
    /// (idempotent); rejects with `provider_unavailable` (tokens kept).
    #[napi]
    pub fn disconnect<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.disconnect(&parse_mailbox_id(&mailbox_id)?).await },
            Mailbox::wrap,
        )
    }
}
