//! Access tokens: refresh ahead of expiry (RFC 6749 §6), single-flight in
//! the process and across processes, revocation on disconnect (RFC 7009).
//!
//! # Single flight
//!
//! * **In the process**, callers for one mailbox queue on a per-mailbox
//!   async mutex; the first refreshes, the others then find a fresh token in
//!   the store. If the refresh failed transiently, those who were already
//!   waiting get the same error instead of trying again one after another.
//! * **Across processes** sharing a store, the refresher must hold the
//!   mailbox's refresh lease ([`crate::Store::try_acquire_refresh_lease`]).
//!   Whoever does not get it polls the store with bounded exponential
//!   backoff until a fresh token appears (or the lease is free again), and
//!   returns the winner's token. The new token set is written with
//!   compare-and-swap on its version, so a rotated refresh token is stored
//!   before the new access token is handed to anyone.
//!
//! `invalid_grant` moves the mailbox to `NeedsReconsent` and deletes the
//! dead tokens; later calls fail at once with `token_revoked`, without
//! asking the provider again.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::callback::Exchanged;
use super::{MailboxEventKind, Phase, map_token_error};
use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{AlertLevel, ConnectionState, Mailbox, MailboxId, Secret};
use crate::store::TokenRecord;

/// A valid access token for a mailbox.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token (for XOAUTH2 / OAUTHBEARER).
    pub token: Secret,
    /// When it expires, if known.
    pub expires_at: Option<OffsetDateTime>,
    /// The account it belongs to.
    pub account: String,
}

/// What is stored for a mailbox, without the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The account that consented.
    pub account: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry, if known.
    pub expires_at: Option<OffsetDateTime>,
    /// When the tokens were obtained (consent or last refresh).
    pub obtained_at: OffsetDateTime,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Store version (increases with every refresh).
    pub version: u64,
}

/// A transient failure remembered so that queued callers share it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    at: Instant,
    code: ErrorCode,
    message: String,
}

/// Per-mailbox in-process refresh state.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    last_failure: Option<Failure>,
}

fn to_access(t: &TokenRecord) -> AccessToken {
    AccessToken {
        token: t.access_token.clone(),
        expires_at: t.expires_at,
        account: t.account.clone(),
    }
}

impl MailSync {
    fn is_fresh(&self, tokens: &TokenRecord) -> bool {
        let skew = time::Duration::try_from(self.settings().token_refresh_skew)
            .unwrap_or(time::Duration::minutes(5));
        tokens
            .expires_at
            .is_none_or(|at| at - skew > OffsetDateTime::now_utc())
    }

    /// The stored tokens, or the error that says why there are none usable.
    async fn usable_tokens(&self, mailbox: &MailboxId) -> Result<TokenRecord> {
        let record = self.get_mailbox(mailbox).await?;
        if let ConnectionState::NeedsReconsent { code, reason } = &record.connection {
            let code = ErrorCode::parse(code).unwrap_or(ErrorCode::TokenRevoked);
            return Err(Error::new(code, reason.clone()));
        }
        self.store().get_tokens(mailbox).await?.ok_or_else(|| {
            Error::new(
                ErrorCode::NotConnected,
                format!(
                    "mailbox {} is not connected; connect it first",
                    record.email
                ),
            )
        })
    }

    /// A valid access token for the mailbox, refreshed if it expires within
    /// [`crate::oauth::Settings::token_refresh_skew`].
    ///
    /// Errors: `not_connected`; `token_revoked` (the mailbox now needs
    /// re-consent; not retried until it is connected again);
    /// `invalid_client` (fix the profile); `provider_unavailable`
    /// (transient: retried with bounded backoff before it is returned).
    pub async fn access_token(&self, mailbox: &MailboxId) -> Result<AccessToken> {
        self.obtain_access_token(mailbox, None).await
    }

    /// A new access token to replace `rejected`, which a mail server refused
    /// or ended a session for before its expiry (revoked, password changed,
    /// clock skew). Refreshes unless another caller has already replaced
    /// `rejected`; single-flight like [`MailSync::access_token`], with the
    /// same errors — a revoked grant surfaces here as `token_revoked`.
    pub async fn refresh_access_token(
        &self,
        mailbox: &MailboxId,
        rejected: &Secret,
    ) -> Result<AccessToken> {
        self.obtain_access_token(mailbox, Some(rejected)).await
    }

    /// Whether the stored token can be handed out: fresh, and not the one a
    /// caller reported as rejected.
    fn usable(&self, tokens: &TokenRecord, rejected: Option<&Secret>) -> bool {
        self.is_fresh(tokens) && rejected.is_none_or(|r| &tokens.access_token != r)
    }

    async fn obtain_access_token(
        &self,
        mailbox: &MailboxId,
        rejected: Option<&Secret>,
    ) -> Result<AccessToken> {
        let arrived = Instant::now();
        let flight = self.oauth().flight(mailbox);
        let mut state = flight.lock().await;
        let tokens = self.usable_tokens(mailbox).await?;
        if self.usable(&tokens, rejected) {
            return Ok(to_access(&tokens));
        }
        if let Some(f) = &state.last_failure
            && f.at >= arrived
        {
            return Err(Error::new(f.code, f.message.clone()));
        }
        let result = self.refresh_across_processes(mailbox, rejected).await;
        if let Err(e) = &result
            && e.is_transient()
        {
            state.last_failure = Some(Failure {
                at: Instant::now(),
                code: e.code(),
                message: e.message().to_owned(),
            });
        }
        result
    }

    /// Takes the store lease (or waits for whoever holds it) and refreshes.
    async fn refresh_across_processes(
        &self,
        mailbox: &MailboxId,
        rejected: Option<&Secret>,
    ) -> Result<AccessToken> {
        let settings = self.settings();
        let owner = uuid::Uuid::new_v4().to_string();
        let lease =
            time::Duration::try_from(settings.refresh_lease).unwrap_or(time::Duration::minutes(1));
        let deadline = Instant::now() + settings.refresh_lease + settings.http_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let until = OffsetDateTime::now_utc() + lease;
            if self
                .store()
                .try_acquire_refresh_lease(mailbox, &owner, until)
                .await?
            {
                let result = async {
                    // Someone may have refreshed between our read and the lease.
                    let tokens = self.usable_tokens(mailbox).await?;
                    if self.usable(&tokens, rejected) {
                        return Ok(to_access(&tokens));
                    }
                    self.refresh(mailbox, tokens).await
                }
                .await;
                if let Err(e) = self.store().release_refresh_lease(mailbox, &owner).await {
                    tracing::warn!(mailbox = %mailbox, code = %e.code(), "could not release the refresh lease");
                }
                return result;
            }
            // Another process is refreshing: poll the store, bounded.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
            let tokens = self.usable_tokens(mailbox).await?;
            if self.usable(&tokens, rejected) {
                return Ok(to_access(&tokens));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::ProviderUnavailable,
                    "another process has been refreshing this mailbox's token for too long; retry later",
                ));
            }
        }
    }

    /// One refresh (with bounded retries of transient failures). Caller holds the lease.
    async fn refresh(&self, mailbox: &MailboxId, tokens: TokenRecord) -> Result<AccessToken> {
        let ctx = self.oauth_context(mailbox).await?;
        let Some(refresh_token) = tokens.refresh_token.clone() else {
            let err = Error::new(
                ErrorCode::TokenRevoked,
                format!(
                    "no refresh token is stored for {}; the owner must connect again",
                    ctx.mailbox.email
                ),
            );
            self.needs_reconsent(mailbox, &err).await?;
            return Err(err);
        };
        let retry = self.settings().refresh_retry;
        let http = self.oauth().http()?;
        let adapter = http.oauth2();
        let mut backoff = retry.initial_backoff;
        let mut attempt = 1;
        let response = loop {
            let rt = oauth2::RefreshToken::new(refresh_token.expose().to_owned());
            let outcome = ctx
                .client
                .exchange_refresh_token(&rt)
                .request_async(&adapter)
                .await;
            drop(rt);
            match outcome {
                Ok(r) => break r,
                Err(e) => {
                    let err = map_token_error(e, Phase::Refresh, &ctx);
                    if err.is_transient() && attempt < retry.attempts.max(1) {
                        tracing::warn!(mailbox = %mailbox, attempt, code = %err.code(), "token refresh failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(retry.max_backoff);
                        attempt += 1;
                        continue;
                    }
                    match err.code() {
                        ErrorCode::TokenRevoked => self.needs_reconsent(mailbox, &err).await?,
                        ErrorCode::InvalidClient => {
                            self.record_connection(
                                mailbox,
                                None,
                                Some((
                                    AlertLevel::Error,
                                    "invalid_client",
                                    err.message().to_owned(),
                                )),
                                None,
                            )
                            .await?;
                        }
                        _ => {}
                    }
                    tracing::warn!(mailbox = %mailbox, code = %err.code(), "token refresh failed");
                    return Err(err);
                }
            }
        };
        let ex = Exchanged::from_response(response);
        let now = OffsetDateTime::now_utc();
        let rotated = ex.refresh_token.is_some();
        let record = TokenRecord {
            mailbox_id: mailbox.clone(),
            account: tokens.account.clone(),
            access_token: ex.access_token,
            // A rotated refresh token replaces the old one in the same write.
            refresh_token: ex.refresh_token.or(tokens.refresh_token.clone()),
            expires_at: ex.expires_at,
            scopes: if ex.scope_returned {
                ex.scopes
            } else {
                tokens.scopes.clone()
            },
            obtained_at: now,
            version: 0,
        };
        match self
            .store()
            .put_tokens(&record, Some(tokens.version))
            .await?
        {
            Some(_) => {
                tracing::info!(mailbox = %mailbox, rotated, "access token refreshed");
                self.emit(super::MailboxEvent {
                    kind: MailboxEventKind::Refreshed,
                    mailbox_id: mailbox.clone(),
                    email: ctx.mailbox.email.clone(),
                    code: None,
                    message: format!("the access token of {} was refreshed", ctx.mailbox.email),
                    at: now,
                });
                Ok(to_access(&record))
            }
            None => {
                // Lost a race (our lease expired meanwhile): use the winner's tokens.
                tracing::warn!(mailbox = %mailbox, "token set changed during refresh; using the stored one");
                let current = self.usable_tokens(mailbox).await?;
                Ok(to_access(&current))
            }
        }
    }

    async fn needs_reconsent(&self, mailbox: &MailboxId, err: &Error) -> Result<()> {
        self.store().delete_tokens(mailbox).await?;
        self.record_connection(
            mailbox,
            Some(ConnectionState::NeedsReconsent {
                code: err.code().as_str().to_owned(),
                reason: err.message().to_owned(),
            }),
            Some((
                AlertLevel::Error,
                err.code().as_str(),
                err.message().to_owned(),
            )),
            Some((
                MailboxEventKind::NeedsReconsent,
                Some(err.code().as_str()),
                err.message().to_owned(),
            )),
        )
        .await?;
        Ok(())
    }

    /// What is stored for the mailbox, without secrets (`None` if nothing).
    pub async fn token_info(&self, mailbox: &MailboxId) -> Result<Option<TokenInfo>> {
        self.get_mailbox(mailbox).await?;
        Ok(self.store().get_tokens(mailbox).await?.map(|t| TokenInfo {
            has_refresh_token: t.refresh_token.is_some(),
            account: t.account,
            scopes: t.scopes,
            expires_at: t.expires_at,
            obtained_at: t.obtained_at,
            version: t.version,
        }))
    }

    /// Disconnects a mailbox: revokes the grant at the provider (RFC 7009;
    /// a token the provider already considers invalid counts as revoked),
    /// deletes the sealed tokens and any pending consent, and sets the
    /// mailbox to `NotConnected`. Idempotent. Fails with
    /// `provider_unavailable` (tokens kept, retry later) when the provider
    /// cannot be reached.
    pub async fn disconnect(&self, mailbox: &MailboxId) -> Result<Mailbox> {
        let flight = self.oauth().flight(mailbox);
        let _state = flight.lock().await;
        let record = self.get_mailbox(mailbox).await?;
        if let Some(tokens) = self.store().get_tokens(mailbox).await? {
            match self.oauth_context(mailbox).await {
                Ok(ctx) => {
                    let revoked = self
                        .revoke_grant(&ctx, &tokens.access_token, tokens.refresh_token.as_ref())
                        .await;
                    match revoked {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            tracing::warn!(mailbox = %mailbox, code = %e.code(), "revocation failed; deleting the tokens anyway")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(mailbox = %mailbox, code = %e.code(), "cannot revoke (no OAuth profile); deleting the tokens")
                }
            }
            self.store().delete_tokens(mailbox).await?;
        }
        self.store().delete_pending_authorization(mailbox).await?;
        let message = format!("{} was disconnected", record.email);
        self.record_connection(
            mailbox,
            Some(ConnectionState::NotConnected),
            Some((AlertLevel::Info, "disconnected", message.clone())),
            Some((MailboxEventKind::Disconnected, None, message)),
        )
        .await
    }
}
