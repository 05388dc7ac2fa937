//! Access tokens: refresh ahead of expiry (RFC 6749 §6), single-flight in
//! the process and across processes, revocation on disconnect (RFC 7009).
//!
//! # Single flight
//!
//! * **In the process**, callers for one mailbox queue on a per-mailbox
//!   async mutex; the first refreshes, the others then find a fresh token in
//!   the store. If the refresh failed transiently, those who were already
//!   waiting get the same error instead of trying again one after another.
//! * **Across processes** sharing a store, the refresher holds the
//!   mailbox's refresh [`Lease`]. It renews the lease before each attempt,
//!   and writes the new tokens with compare-and-swap on the grant's version
//!   *and* the lease's fencing token, so a holder that lost its lease (it
//!   was paused past the expiry) cannot overwrite its successor. Whoever
//!   does not get the lease polls the store with bounded backoff until a
//!   fresh token appears, and returns it.
//! * **Cancellation.** The request and the write that stores its answer
//!   run as one detached task: a host that cancels its call (a timeout, a
//!   dropped future) cannot cut between the provider's answer and the write,
//!   so a rotated refresh token is never lost that way.
//!
//! # Bound grants
//!
//! A grant is used only with the issuer and client that issued it, and
//! refreshed only at the token endpoint recorded with it. If the mailbox's
//! profile now names another issuer or client, nothing is sent anywhere:
//! the grant is deleted and the mailbox needs consent again
//! (`grant_mismatch`).
//!
//! `invalid_grant` moves the mailbox to needs-re-consent and deletes the
//! dead grant — only that grant: a newer one stored meanwhile is kept.
//! Later calls fail at once with `token_revoked`, without asking the
//! provider again.

use std::time::{Duration, Instant};

use super::callback::Exchanged;
use super::{ErrorContext, Phase, RefreshClient, app_of, map_token_error};
use crate::MailSync;
use crate::directory::MailboxStatus;
use crate::error::{Error, ErrorCode, Result};
use crate::lease::Lease;
use crate::lifecycle::{GrantStatus, LifecycleEvent};
use crate::model::{
    Alert, AlertLevel, Authentication, BearerToken, Mailbox, MailboxId, Secret, ServerProfile,
    Timestamp,
};
use crate::store::{Commit, CommitOutcome, Grant, GrantChange, LeaseKind, PendingChange};

/// A valid access token for a mailbox.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object, object_to_js = false))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct AccessToken {
    /// The bearer token (for XOAUTH2 / OAUTHBEARER).
    pub token: BearerToken,
    /// When it expires, if known.
    pub expires_at: Option<Timestamp>,
    /// The account it belongs to.
    pub account: String,
}

/// What is stored about a mailbox's grant, without the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct GrantInfo {
    /// The issuer that granted it.
    pub issuer: String,
    /// The OAuth client it was granted to.
    pub client_id: String,
    /// The account that consented.
    pub account: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry, if known.
    pub expires_at: Option<Timestamp>,
    /// When the tokens were obtained (consent or last refresh).
    pub obtained_at: Timestamp,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Store version (grows with every refresh).
    pub version: i64,
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

/// The refresh skew actually applied to a token: the configured skew, but
/// never more than half the token's lifetime. Without that bound a token
/// that lives no longer than the skew (Keycloak's default is 300 s, the same
/// as ours) would count as expired the moment it was issued, and every
/// caller would refresh again.
pub(crate) fn effective_skew(
    configured: Duration,
    obtained_at: Timestamp,
    expires_at: Timestamp,
) -> Duration {
    configured.min(expires_at.since(obtained_at) / 2)
}

/// Whether `grant`'s access token can still be handed out at `now`.
pub(crate) fn is_fresh_at(grant: &Grant, skew: Duration, now: Timestamp) -> bool {
    grant.expires_at.is_none_or(|at| {
        let skew = effective_skew(skew, grant.obtained_at, at);
        at.minus(skew) > now
    })
}

fn to_access(g: &Grant) -> AccessToken {
    AccessToken {
        token: BearerToken::new(g.access_token.clone()),
        expires_at: g.expires_at,
        account: g.account.clone(),
    }
}

fn error_context<'a>(mailbox: &'a Mailbox, profile: &'a ServerProfile) -> ErrorContext<'a> {
    let app = profile.oauth_app();
    ErrorContext {
        email: &mailbox.email,
        profile: &profile.name,
        client_id: app.map(|a| a.client_id.as_str()).unwrap_or(""),
        external_testing: app.is_some_and(|a| a.consent_screen.is_external_testing()),
    }
}

impl MailSync {
    fn is_fresh(&self, grant: &Grant) -> bool {
        is_fresh_at(grant, self.options().token_refresh_skew(), self.now())
    }

    /// Whether the stored token can be handed out: fresh, and not the one a
    /// caller reported as rejected.
    fn usable(&self, grant: &Grant, rejected: Option<&Secret>) -> bool {
        self.is_fresh(grant) && rejected.is_none_or(|r| &grant.access_token != r)
    }

    /// The mailbox's grant, checked against its profile, or the error that
    /// says why there is none usable. Sends nothing anywhere.
    async fn usable_grant(&self, mailbox: &MailboxId) -> Result<(Mailbox, ServerProfile, Grant)> {
        let record = self.directory().get_mailbox(mailbox).await?;
        let state = self.directory().state(mailbox).await?;
        if let GrantStatus::NeedsReconsent { code, reason, .. } = &state.grant {
            return Err(Error::new(*code, reason.clone()));
        }
        let not_connected = || {
            Error::new(
                ErrorCode::NotConnected,
                format!(
                    "mailbox {} is not connected; connect it first",
                    record.email
                ),
            )
        };
        let profile = self.profile_of(&record).await?;
        let Some(grant) = self.store().get_grant(mailbox).await? else {
            return Err(not_connected());
        };
        let binding = self.binding_of(&profile).map_err(|_| {
            Error::new(
                ErrorCode::GrantMismatch,
                format!(
                    "the profile '{}' of {} no longer uses OAuth, so its grant from {} cannot be used; \
                     connect the mailbox again",
                    profile.name, record.email, grant.issuer
                ),
            )
        });
        let mismatch = match &binding {
            Ok(b) => b.issuer != grant.issuer || b.client_id != grant.client_id,
            Err(_) => true,
        };
        if mismatch {
            let err = match binding {
                Err(e) => e,
                Ok(b) => Error::new(
                    ErrorCode::GrantMismatch,
                    format!(
                        "the grant of {} was issued by {} for client '{}', but its profile '{}' now names {} \
                         and client '{}'; nothing was sent to either — connect the mailbox again",
                        record.email,
                        grant.issuer,
                        grant.client_id,
                        profile.name,
                        b.issuer,
                        b.client_id
                    ),
                ),
            };
            self.needs_reconsent(mailbox, grant.version, &err).await?;
            return Err(err);
        }
        if matches!(profile.authentication, Authentication::GmailOAuth { .. })
            && self.options().google_issuer_override.is_none()
        {
            profile.check_google_mail_hosts()?;
        }
        Ok((record, profile, grant))
    }

    /// See [`crate::Connections::access_token`] and
    /// [`crate::Connections::refresh_access_token`].
    pub(crate) async fn obtain_access_token(
        &self,
        mailbox: &MailboxId,
        rejected: Option<&Secret>,
    ) -> Result<AccessToken> {
        let arrived = Instant::now();
        let flight = self.oauth().flight(mailbox);
        let mut state = flight.lock().await;
        let (_, _, grant) = self.usable_grant(mailbox).await?;
        if self.usable(&grant, rejected) {
            return Ok(to_access(&grant));
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

    /// The longest a refresh holder may take: every attempt plus the
    /// backoffs, plus one lease period for a holder that died.
    fn refresh_deadline(&self) -> Duration {
        let o = self.options();
        let attempts = o.refresh_retry.attempts.max(1);
        // Validation bounds every term; saturate anyway rather than panic.
        o.http_timeout()
            .saturating_add(o.refresh_retry.max_backoff())
            .saturating_mul(attempts)
            .saturating_add(o.refresh_lease())
    }

    /// Takes the lease (or waits for whoever holds it) and refreshes.
    async fn refresh_across_processes(
        &self,
        mailbox: &MailboxId,
        rejected: Option<&Secret>,
    ) -> Result<AccessToken> {
        let now = Instant::now();
        let deadline = now
            .checked_add(self.refresh_deadline())
            .unwrap_or(now + Duration::from_secs(u64::from(crate::options::MAX_SECS)));
        let mut backoff = Duration::from_millis(10);
        loop {
            let lease = Lease::acquire(
                self.store().clone(),
                self.inner.clock.clone(),
                mailbox,
                LeaseKind::Refresh,
                &self.inner.owner,
                self.options().refresh_lease(),
            )
            .await?;
            if let Some(lease) = lease {
                // Someone may have refreshed between our read and the lease.
                let (record, profile, grant) = self.usable_grant(mailbox).await?;
                if self.usable(&grant, rejected) {
                    lease.release().await?;
                    return Ok(to_access(&grant));
                }
                // Detached: a cancelled caller cannot cut between the
                // provider's answer and the write.
                let sync = self.clone();
                let task = tokio::spawn(async move {
                    sync.refresh_holding(lease, record, profile, grant).await
                });
                return task.await.map_err(|e| {
                    Error::new(ErrorCode::Internal, format!("the refresh task failed: {e}"))
                })?;
            }
            // Another holder is refreshing: poll the store, bounded.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
            let (_, _, grant) = self.usable_grant(mailbox).await?;
            if self.usable(&grant, rejected) {
                return Ok(to_access(&grant));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::ProviderUnavailable,
                    "another process has been refreshing this mailbox's token for too long; retry later",
                ));
            }
        }
    }

    /// One refresh under the lease, with bounded retries of transient
    /// failures; the lease is renewed before each attempt.
    async fn refresh_holding(
        &self,
        mut lease: Lease,
        record: Mailbox,
        profile: ServerProfile,
        grant: Grant,
    ) -> Result<AccessToken> {
        let mailbox = &record.id;
        let ectx = error_context(&record, &profile);
        let Some(refresh_token) = grant.refresh_token.clone() else {
            let err = Error::new(
                ErrorCode::TokenRevoked,
                format!(
                    "no refresh token is stored for {}; the owner must connect again",
                    record.email
                ),
            );
            self.needs_reconsent(mailbox, grant.version, &err).await?;
            lease.release().await?;
            return Err(err);
        };
        let (app, secret) = app_of(&profile, &record)?;
        let mut token_endpoint = grant.token_endpoint.clone();
        if token_endpoint.is_empty() {
            // A grant stored before endpoints were recorded: the issuer's own
            // metadata says where (the issuer was checked above).
            token_endpoint = self
                .provider_for(&profile)
                .await?
                .token_endpoint
                .to_string();
        }
        let token_url = oauth2::TokenUrl::new(token_endpoint.clone()).map_err(|e| {
            Error::new(
                ErrorCode::Store,
                format!("the grant's token endpoint is not a URL: {e}"),
            )
        })?;
        let client: RefreshClient =
            oauth2::Client::new(oauth2::ClientId::new(app.client_id.clone()))
                .set_client_secret(oauth2::ClientSecret::new(secret.expose().to_owned()))
                .set_token_uri(token_url)
                .set_auth_type(oauth2::AuthType::RequestBody);
        let retry = self.options().refresh_retry;
        let http = self.oauth().http();
        let adapter = http.oauth2();
        let mut backoff = retry.initial_backoff();
        let mut attempt = 1;
        let response = loop {
            lease.renew().await?;
            let rt = oauth2::RefreshToken::new(refresh_token.expose().to_owned());
            let outcome = client
                .exchange_refresh_token(&rt)
                .request_async(&adapter)
                .await;
            drop(rt);
            match outcome {
                Ok(r) => break r,
                Err(e) => {
                    let err = map_token_error(e, Phase::Refresh, ectx);
                    if err.is_transient() && attempt < retry.attempts.max(1) {
                        tracing::warn!(mailbox = %mailbox, attempt, code = %err.code(), "token refresh failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(retry.max_backoff());
                        attempt += 1;
                        continue;
                    }
                    match err.code() {
                        ErrorCode::TokenRevoked => {
                            self.needs_reconsent(mailbox, grant.version, &err).await?
                        }
                        ErrorCode::InvalidClient => {
                            self.alert(mailbox, AlertLevel::Error, &err).await;
                        }
                        _ => {}
                    }
                    tracing::warn!(mailbox = %mailbox, code = %err.code(), "token refresh failed");
                    lease.release().await?;
                    return Err(err);
                }
            }
        };
        let ex = Exchanged::from_response(response, self.now());
        let rotated = ex.refresh_token.is_some();
        let renewed = Grant {
            mailbox_id: mailbox.clone(),
            issuer: grant.issuer.clone(),
            client_id: grant.client_id.clone(),
            token_endpoint,
            account: grant.account.clone(),
            access_token: ex.access_token,
            // A rotated refresh token replaces the old one in the same write.
            refresh_token: ex.refresh_token.or(grant.refresh_token.clone()),
            expires_at: ex.expires_at,
            scopes: if ex.scope_returned {
                ex.scopes
            } else {
                grant.scopes.clone()
            },
            obtained_at: self.now(),
            version: 0,
        };
        let written = self
            .store()
            .put_grant(&renewed, grant.version, Some(lease.record()))
            .await?;
        lease.release().await?;
        match written {
            Some(_) => {
                tracing::info!(mailbox = %mailbox, rotated, "access token refreshed");
                if let Err(e) = self.record(mailbox, &[LifecycleEvent::Refreshed]).await {
                    tracing::debug!(mailbox = %mailbox, code = %e.code(), "refresh not recorded");
                }
                Ok(to_access(&renewed))
            }
            None => {
                // Our lease was taken over, or the grant changed: the
                // store has the newer one.
                tracing::warn!(mailbox = %mailbox, "the grant changed during the refresh; using the stored one");
                let (_, _, current) = self.usable_grant(mailbox).await?;
                if self.is_fresh(&current) {
                    Ok(to_access(&current))
                } else {
                    Err(Error::new(
                        ErrorCode::Conflict,
                        format!(
                            "this refresh of the token of {} lost its lease to another worker before it \
                             could be stored; try again",
                            record.email
                        ),
                    ))
                }
            }
        }
    }

    /// Moves the mailbox to needs-re-consent and deletes the grant of
    /// `version` — only that one: a grant stored meanwhile is kept.
    pub(crate) async fn needs_reconsent(
        &self,
        mailbox: &MailboxId,
        version: i64,
        err: &Error,
    ) -> Result<()> {
        let event = LifecycleEvent::GrantRevoked {
            code: err.code(),
            reason: err.message().to_owned(),
        };
        match self
            .transition(
                mailbox,
                &[event],
                GrantChange::Delete {
                    expected: Some(version),
                },
                PendingChange::Keep,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::Conflict => {
                tracing::info!(mailbox = %mailbox, "a newer grant was stored meanwhile; it is kept");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Adds an alert without changing the state.
    pub(crate) async fn alert(&self, mailbox: &MailboxId, level: AlertLevel, err: &Error) {
        let alert = Alert {
            level,
            code: err.code().as_str().to_owned(),
            message: format!(
                "{} {}",
                crate::lifecycle::sentence(err.message()),
                err.next_action()
            ),
            at: self.now(),
        };
        for _ in 0..5 {
            let Ok(Some(state)) = self.store().get_state(mailbox).await else {
                return;
            };
            let commit = Commit {
                mailbox_id: mailbox,
                expected_state_version: state.version,
                state: None,
                grant: GrantChange::Keep,
                pending: PendingChange::Keep,
                alerts: std::slice::from_ref(&alert),
            };
            match self.store().commit(&commit).await {
                Ok(CommitOutcome::StateConflict) => continue,
                _ => return,
            }
        }
    }

    /// See [`crate::Connections::grant_info`].
    pub(crate) async fn grant_info(&self, mailbox: &MailboxId) -> Result<Option<GrantInfo>> {
        self.directory().get_mailbox(mailbox).await?;
        Ok(self.store().get_grant(mailbox).await?.map(|g| GrantInfo {
            has_refresh_token: g.refresh_token.is_some(),
            issuer: g.issuer,
            client_id: g.client_id,
            account: g.account,
            scopes: g.scopes,
            expires_at: g.expires_at,
            obtained_at: g.obtained_at,
            version: g.version,
        }))
    }

    /// Revokes a mailbox's grant before the mailbox is deleted (see
    /// [`crate::Directory::delete_mailbox`]). A transient failure queues the
    /// revocation; a permanent one (the client refused) is logged, since
    /// the grant is deleted anyway. A grant whose issuer or client no longer
    /// matches the profile is never sent anywhere. Fails only when the
    /// provider's configuration cannot be loaded for now (discovery
    /// unavailable: nothing to queue without an endpoint) or the queue
    /// cannot be written; the mailbox is then left as it is.
    pub(crate) async fn revoke_before_delete(&self, mailbox: &MailboxId) -> Result<()> {
        let flight = self.oauth().flight(mailbox);
        let _state = flight.lock().await;
        let Some(record) = self.store().get_mailbox(mailbox).await? else {
            return Err(Error::not_found("mailbox", mailbox));
        };
        let Some(grant) = self.store().get_grant(mailbox).await? else {
            return Ok(());
        };
        let profile = self.profile_of(&record).await;
        let matches = profile
            .as_ref()
            .ok()
            .and_then(|p| self.binding_of(p).ok())
            .is_some_and(|b| b.issuer == grant.issuer && b.client_id == grant.client_id);
        if !matches {
            tracing::warn!(mailbox = %mailbox, "the profile no longer matches the grant's issuer; deleting it without revocation");
            return Ok(());
        }
        match self.oauth_context(mailbox).await {
            Ok(ctx) => {
                if let Err(e) = self
                    .revoke_or_queue(&ctx, &grant.access_token, grant.refresh_token.as_ref())
                    .await
                {
                    if e.is_transient() {
                        // The queue could not be written (store unavailable).
                        return Err(e);
                    }
                    tracing::warn!(mailbox = %mailbox, code = %e.code(), "revocation failed; deleting the grant anyway");
                }
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::warn!(mailbox = %mailbox, code = %e.code(), "cannot revoke; deleting the grant");
                Ok(())
            }
        }
    }

    /// See [`crate::Connections::disconnect`].
    pub(crate) async fn disconnect(&self, mailbox: &MailboxId) -> Result<MailboxStatus> {
        let flight = self.oauth().flight(mailbox);
        let _state = flight.lock().await;
        let record = self.directory().get_mailbox(mailbox).await?;
        let grant = self.store().get_grant(mailbox).await?;
        if let Some(grant) = &grant {
            let profile = self.profile_of(&record).await;
            let matches = profile
                .as_ref()
                .ok()
                .and_then(|p| self.binding_of(p).ok())
                .is_some_and(|b| b.issuer == grant.issuer && b.client_id == grant.client_id);
            if matches {
                match self.oauth_context(mailbox).await {
                    Ok(ctx) => {
                        match self
                            .revoke_grant(&ctx, &grant.access_token, grant.refresh_token.as_ref())
                            .await
                        {
                            Ok(()) => {}
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => {
                                tracing::warn!(mailbox = %mailbox, code = %e.code(), "revocation failed; deleting the grant anyway")
                            }
                        }
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::warn!(mailbox = %mailbox, code = %e.code(), "cannot revoke; deleting the grant")
                    }
                }
            } else {
                // Never send a grant to an issuer or client other than its own.
                tracing::warn!(mailbox = %mailbox, "the profile no longer matches the grant's issuer; deleting it without revocation");
            }
        }
        self.transition(
            mailbox,
            &[LifecycleEvent::Disconnected],
            GrantChange::Delete {
                expected: grant.as_ref().map(|g| g.version),
            },
            PendingChange::Delete,
        )
        .await?;
        self.directory().status(mailbox).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(lifetime: Duration, obtained_at: Timestamp) -> Grant {
        Grant {
            mailbox_id: MailboxId::new(),
            issuer: "https://accounts.google.com".into(),
            client_id: "c".into(),
            token_endpoint: "https://oauth2.googleapis.com/token".into(),
            account: "a@example.com".into(),
            access_token: Secret::new("t"),
            refresh_token: None,
            expires_at: Some(obtained_at.plus(lifetime)),
            scopes: Vec::new(),
            obtained_at,
            version: 1,
        }
    }

    #[test]
    fn a_token_shorter_than_the_skew_is_fresh_when_issued() {
        let now = Timestamp::now_utc();
        let five_minutes = Duration::from_secs(300);
        let s = Duration::from_secs;
        // 5-second token, default 5-minute skew: fresh for its first half.
        let short = grant(s(5), now);
        assert!(is_fresh_at(&short, five_minutes, now));
        assert!(is_fresh_at(&short, five_minutes, now.plus(s(2))));
        assert!(!is_fresh_at(&short, five_minutes, now.plus(s(3))));
        // Exactly the skew (Keycloak's 300 s default): not expired at birth.
        let keycloak = grant(s(300), now);
        assert!(is_fresh_at(&keycloak, five_minutes, now));
        // A one-hour token is refreshed 5 minutes ahead, as configured.
        let hour = grant(s(3600), now);
        assert!(is_fresh_at(&hour, five_minutes, now.plus(s(54 * 60))));
        assert!(!is_fresh_at(&hour, five_minutes, now.plus(s(56 * 60))));
        // Without an expiry the token is used until a server refuses it.
        let mut open = grant(Duration::ZERO, now);
        open.expires_at = None;
        assert!(is_fresh_at(&open, five_minutes, now.plus(s(9 * 86400))));
    }
}
