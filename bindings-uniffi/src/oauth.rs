//! OAuth lifecycle of a mailbox: `connect` → consent in the browser →
//! `completeConnect` → `accessToken` / `refreshAccessToken` / `tokenInfo` →
//! `disconnect`.

use std::sync::Arc;
use std::time::SystemTime;

use crate::convert::{mailbox_id as parse_mailbox_id, to_system_time};
use crate::directory::MailSync;
use crate::error::{Result, guard_async};
use crate::model::Mailbox;

/// A consent request for the mailbox owner's browser.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConsentRequest {
    /// The authorization URL to open (it carries the `state`; a one-time
    /// link, not a secret).
    pub url: String,
    /// The mailbox it is for.
    pub mailbox_id: String,
    /// After this instant the callback is refused (`state_invalid`).
    pub expires_at: SystemTime,
}

impl From<mailsync::oauth::ConsentRequest> for ConsentRequest {
    fn from(c: mailsync::oauth::ConsentRequest) -> Self {
        ConsentRequest {
            url: c.url.to_string(),
            mailbox_id: c.mailbox_id.to_string(),
            expires_at: to_system_time(c.expires_at),
        }
    }
}

/// What is stored for a connected mailbox, without the secrets.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TokenInfo {
    /// The account that consented.
    pub account: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry, if known.
    pub expires_at: Option<SystemTime>,
    /// When the tokens were obtained (consent or last refresh).
    pub obtained_at: SystemTime,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Store version (increases with every refresh).
    pub version: i64,
}

impl From<mailsync::oauth::TokenInfo> for TokenInfo {
    fn from(t: mailsync::oauth::TokenInfo) -> Self {
        TokenInfo {
            account: t.account,
            scopes: t.scopes,
            expires_at: t.expires_at.map(to_system_time),
            obtained_at: to_system_time(t.obtained_at),
            has_refresh_token: t.has_refresh_token,
            version: i64::try_from(t.version).unwrap_or(i64::MAX),
        }
    }
}

/// A valid access token for a mailbox. It is a secret: `toString()` (Swift
/// `debugDescription`) prints `[REDACTED]`; only [`AccessToken::expose`]
/// returns the raw bearer value.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct AccessToken {
    inner: mailsync::oauth::AccessToken,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[uniffi::export]
impl AccessToken {
    /// THE RAW BEARER TOKEN (for XOAUTH2 / OAUTHBEARER). A secret: never log
    /// it, never store it.
    pub fn expose(&self) -> String {
        self.inner.token.expose().to_owned()
    }

    /// When it expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner.expires_at.map(to_system_time)
    }

    /// The account it belongs to.
    pub fn account(&self) -> String {
        self.inner.account.clone()
    }
}

#[uniffi::export]
impl MailSync {
    /// Starts connecting a mailbox: returns the consent URL for its owner and
    /// makes the mailbox `AwaitingConsent`. Refused before anyone is
    /// redirected when the profile cannot work (`validation`) or the address
    /// is not a test user of an External + Testing app (`not_a_test_user`).
    pub async fn connect(&self, mailbox_id: String) -> Result<ConsentRequest> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            inner.connect(&id).await.map(ConsentRequest::from)
        })
        .await
    }

    /// Completes a connection from the redirect back to the CRM (the full
    /// callback URL or its query string): checks the single-use `state`,
    /// exchanges the code, checks scope and account, stores the tokens
    /// sealed. Returns the mailbox, now `Connected`. Errors: `consent_denied`,
    /// `state_invalid`, `scope_not_granted`, `account_mismatch`, …
    pub async fn complete_connect(&self, callback_url: String) -> Result<Arc<Mailbox>> {
        let inner = self.inner.clone();
        guard_async(async move {
            inner
                .complete_connect(&callback_url)
                .await
                .map(Mailbox::wrap)
        })
        .await
    }

    /// A valid access token, refreshed if it expires within the refresh
    /// skew. Errors: `not_connected`, `token_revoked`, `invalid_client`,
    /// `provider_unavailable` (transient).
    pub async fn access_token(&self, mailbox_id: String) -> Result<Arc<AccessToken>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            let inner = inner.access_token(&id).await?;
            Ok(Arc::new(AccessToken { inner }))
        })
        .await
    }

    /// A new access token to replace `rejected`, one a mail server refused
    /// or ended a session for before its expiry (revoked, password changed,
    /// clock skew). Refreshes unless another caller has already replaced
    /// `rejected` (then returns the stored, newer token without a provider
    /// request); single-flight like `accessToken`, with the same errors — a
    /// revoked grant surfaces here as `token_revoked`. The host passes the
    /// `AccessToken` object it got; it never handles the raw value.
    pub async fn refresh_access_token(
        &self,
        mailbox_id: String,
        rejected: Arc<AccessToken>,
    ) -> Result<Arc<AccessToken>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            let inner = inner
                .refresh_access_token(&id, &rejected.inner.token)
                .await?;
            Ok(Arc::new(AccessToken { inner }))
        })
        .await
    }

    /// What is stored for the mailbox (no secrets), or `null` if not connected.
    pub async fn token_info(&self, mailbox_id: String) -> Result<Option<TokenInfo>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            Ok(inner.token_info(&id).await?.map(TokenInfo::from))
        })
        .await
    }

    /// Revokes the grant at the provider and deletes the tokens; the mailbox
    /// becomes `NotConnected`.
    pub async fn disconnect(&self, mailbox_id: String) -> Result<Arc<Mailbox>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            inner.disconnect(&id).await.map(Mailbox::wrap)
        })
        .await
    }
}
