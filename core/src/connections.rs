//! [`Connections`]: a mailbox's OAuth 2.0 grant, from consent to revocation.
//!
//! 1. [`Connections::connect`] issues a consent URL for a mailbox
//!    ([RFC 6749 §4.1.1](https://www.rfc-editor.org/rfc/rfc6749#section-4.1.1)
//!    with PKCE S256, [RFC 7636](https://www.rfc-editor.org/rfc/rfc7636)),
//!    and stores the pending consent (state → mailbox, sealed verifier,
//!    issuer and client, 10-minute expiry).
//! 2. [`Connections::complete`] takes the redirect URL, consumes the
//!    single-use `state`, checks that the profile still names the issuer
//!    and client the consent was sent to (and the RFC 9207 `iss` parameter
//!    when the provider sends one), exchanges the code
//!    ([§4.1.3](https://www.rfc-editor.org/rfc/rfc6749#section-4.1.3)),
//!    checks the granted scopes and the consenting account, and stores the
//!    grant sealed, bound to its issuer, client, token endpoint and account.
//! 3. [`Connections::access_token`] returns a valid access token, refreshing
//!    ahead of expiry ([§6](https://www.rfc-editor.org/rfc/rfc6749#section-6))
//!    exactly once per expiry across tasks and processes.
//! 4. [`Connections::disconnect`] revokes the grant
//!    ([RFC 7009](https://www.rfc-editor.org/rfc/rfc7009)) and deletes it.
//!
//! Each step moves the mailbox through the consent and grant machines of
//! [`crate::lifecycle`]; a consent that fails leaves an existing grant as it
//! was.

use crate::MailSync;
use crate::directory::MailboxStatus;
use crate::error::Result;
use crate::model::{MailboxId, Secret, ServerProfile};

pub use crate::oauth::authorize::ConsentRequest;
pub use crate::oauth::provider::{
    Dialect, GMAIL_SCOPE, GOOGLE_AUTHORIZATION_ENDPOINT, GOOGLE_ISSUER, GOOGLE_REVOCATION_ENDPOINT,
    GOOGLE_TOKEN_ENDPOINT, MICROSOFT_MAIL_SCOPES, OFFLINE_ACCESS_SCOPE, Provider,
    default_mail_scopes,
};
pub use crate::oauth::tokens::{AccessToken, GrantInfo};

/// Consent, grants and access tokens. See the module docs.
#[derive(Clone, Debug)]
pub struct Connections {
    pub(crate) sync: MailSync,
}

impl Connections {
    /// Starts connecting a mailbox: returns the consent URL for its owner.
    ///
    /// Refused before anyone is redirected: the mailbox has no OAuth profile
    /// or the profile lacks a client id, secret or redirect URI
    /// (`validation`); the app is External + Testing and the address is not a
    /// test user (`not_a_test_user`). A pending consent for the same mailbox
    /// is replaced (its link stops working). A grant the mailbox already
    /// holds keeps working until the new consent completes.
    pub async fn connect(&self, mailbox: &MailboxId) -> Result<ConsentRequest> {
        self.sync.connect(mailbox).await
    }

    /// Completes a connection from the provider's redirect: pass the full
    /// redirect URL (`<redirect URI>?code=…&state=…`) or just its query.
    ///
    /// A redirect that repeats a parameter, is longer than 8 KiB or carries
    /// a code longer than 2 KiB is refused with `validation` before the
    /// pending consent is touched. The `state` is consumed first (single
    /// use, constant-time compared, refused when missing, unknown, expired
    /// or used, or when the profile changed issuer or client since:
    /// `state_invalid`). An error redirect maps to `consent_denied`,
    /// `admin_policy`, `org_internal` or `consent_failed`. The granted scope
    /// must include the mail scopes (`scope_not_granted`) and the consenting
    /// account must be the mailbox's address (`account_mismatch`); then
    /// nothing is stored, and the new grant is revoked unless a mailbox
    /// holds a grant of that account on the same client. On success the
    /// grant is stored sealed and the mailbox is connected.
    pub async fn complete(&self, callback_url: &str) -> Result<MailboxStatus> {
        self.sync.complete_connect(callback_url).await
    }

    /// A valid access token for the mailbox, refreshed if it expires within
    /// [`crate::Options::token_refresh_skew`].
    ///
    /// Errors: `not_connected`; `token_revoked` (the mailbox now needs
    /// re-consent; not retried until it is connected again);
    /// `grant_mismatch` (the profile names another issuer or client than the
    /// grant's; nothing was sent); `host_not_allowed`; `invalid_client` (fix
    /// the profile); `provider_unavailable` (transient: retried with bounded
    /// backoff before it is returned).
    pub async fn access_token(&self, mailbox: &MailboxId) -> Result<AccessToken> {
        self.sync.obtain_access_token(mailbox, None).await
    }

    /// A new access token to replace `rejected`, which a mail server refused
    /// or ended a session for before its expiry (revoked, password changed,
    /// clock skew). Refreshes unless another caller has already replaced
    /// `rejected`; single-flight like [`Connections::access_token`], with
    /// the same errors.
    pub async fn refresh_access_token(
        &self,
        mailbox: &MailboxId,
        rejected: &Secret,
    ) -> Result<AccessToken> {
        self.sync.obtain_access_token(mailbox, Some(rejected)).await
    }

    /// What is stored about the mailbox's grant, without secrets (`None` if
    /// it has none).
    pub async fn grant_info(&self, mailbox: &MailboxId) -> Result<Option<GrantInfo>> {
        self.sync.grant_info(mailbox).await
    }

    /// Disconnects a mailbox: revokes the grant at the provider that issued
    /// it (RFC 7009; a token the provider already considers invalid counts
    /// as revoked), deletes it and any pending consent. Idempotent. Fails
    /// with `provider_unavailable` (nothing changed, retry later) when the
    /// provider cannot be reached. A grant whose issuer or client the
    /// profile no longer names is deleted without revocation, never sent
    /// elsewhere.
    pub async fn disconnect(&self, mailbox: &MailboxId) -> Result<MailboxStatus> {
        self.sync.disconnect(mailbox).await
    }

    /// Sends again the revocations that failed transiently (when a mailbox
    /// was deleted, or a refused grant was given back) and are due; returns
    /// how many the provider accepted. Nothing runs this on its own: call it
    /// periodically (every few minutes) from one place, e.g. next to the
    /// sync engine or from a scheduled job (`mailsync revocations retry`).
    /// Concurrent callers (several workers) send different revocations.
    ///
    /// A failed attempt is retried after 1 minute, doubling up to 6 hours;
    /// after 36 attempts (about a week) or on a permanent refusal
    /// (`invalid_client`, an unexpected error) the revocation is dropped and
    /// logged as an error.
    pub async fn retry_revocations(&self) -> Result<u32> {
        self.sync.retry_revocations().await
    }

    /// How many revocations are queued, due or not.
    pub async fn pending_revocations(&self) -> Result<u32> {
        let all = self.sync.store().list_revocations().await?;
        Ok(u32::try_from(all.len()).unwrap_or(u32::MAX))
    }

    /// The provider a profile's OAuth flows use (discovery results are
    /// cached).
    pub async fn provider_for(&self, profile: &ServerProfile) -> Result<Provider> {
        self.sync.provider_for(profile).await
    }
}
