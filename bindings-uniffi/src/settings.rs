//! `Settings`: library settings for the OAuth flows (extra root
//! certificates, issuer override, refresh timing, event listener).
//!
//! An immutable object like the round-1 model objects: `Settings()` holds
//! the core's defaults and every `with…` call returns a new object.

use std::sync::Arc;
use std::time::Duration;

use crate::convert::int_in;
use crate::error::{Result, guard, guard_ok};
use crate::events::{MailboxEventListener, adapt};

/// Bounded retries with exponential backoff for transient refresh failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct RetryPolicy {
    /// Total attempts (at least 1).
    pub attempts: i64,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound for one wait.
    pub max_backoff: Duration,
}

impl From<mailsync::oauth::RetryPolicy> for RetryPolicy {
    fn from(r: mailsync::oauth::RetryPolicy) -> Self {
        RetryPolicy {
            attempts: r.attempts.into(),
            initial_backoff: r.initial_backoff,
            max_backoff: r.max_backoff,
        }
    }
}

impl RetryPolicy {
    fn to_core(self) -> mailsync::Result<mailsync::oauth::RetryPolicy> {
        Ok(mailsync::oauth::RetryPolicy {
            attempts: int_in("refresh_retry.attempts", self.attempts, 1, u32::MAX.into())?,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        })
    }
}

/// Library settings for the OAuth flows. `Settings()` has the core's
/// defaults (refresh skew 5 min, HTTP timeout 30 s, 4 refresh attempts from
/// 250 ms backoff up to 4 s, refresh lease 60 s, consent TTL 10 min).
/// `toString()` shows the certificate count, never the PEM text.
#[derive(uniffi::Object, Clone)]
#[uniffi::export(Debug)]
pub struct Settings {
    inner: mailsync::Settings,
    listener: Option<Arc<dyn MailboxEventListener>>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Settings {
    /// The core settings, with the host listener adapted.
    pub(crate) fn to_core(&self) -> mailsync::Settings {
        let mut settings = self.inner.clone();
        settings.event_listener = adapt(self.listener.clone());
        settings
    }

    pub(crate) fn from_core(
        settings: &mailsync::Settings,
        listener: Option<Arc<dyn MailboxEventListener>>,
    ) -> Arc<Settings> {
        let mut inner = settings.clone();
        inner.event_listener = None;
        Arc::new(Settings { inner, listener })
    }

    fn map(&self, f: impl FnOnce(&mut Settings) -> mailsync::Result<()>) -> Result<Arc<Settings>> {
        guard(|| {
            let mut next = self.clone();
            f(&mut next)?;
            Ok(Arc::new(next))
        })
    }
}

#[uniffi::export]
impl Settings {
    /// The defaults.
    #[uniffi::constructor]
    pub fn new() -> Result<Arc<Settings>> {
        guard_ok(|| {
            Arc::new(Settings {
                inner: mailsync::Settings::default(),
                listener: None,
            })
        })
    }

    /// Replaces the extra trusted root certificates (PEM text each), added to
    /// the bundled web PKI roots. Verification stays on. A PEM without a
    /// certificate is refused (`validation`) when the `MailSync` is opened.
    pub fn with_extra_root_certs_pem(&self, pems: Vec<String>) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.extra_root_certs_pem = pems;
            Ok(())
        })
    }

    /// Points Gmail OAuth profiles at another issuer (found by discovery)
    /// instead of Google: https, or http on loopback only (`validation` on
    /// `google_issuer_override` otherwise). `null` restores Google.
    pub fn with_google_issuer_override(&self, issuer: Option<String>) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.google_issuer_override = issuer
                .map(|i| mailsync::model::validate::issuer_url("google_issuer_override", &i))
                .transpose()?;
            Ok(())
        })
    }

    /// Refresh this long before the access token expires.
    pub fn with_token_refresh_skew(&self, skew: Duration) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.token_refresh_skew = skew;
            Ok(())
        })
    }

    /// Timeout of one HTTP request to the provider.
    pub fn with_http_timeout(&self, timeout: Duration) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.http_timeout = timeout;
            Ok(())
        })
    }

    /// Retries of a refresh that failed transiently. `attempts` below 1 is
    /// `validation` on `refresh_retry.attempts`.
    pub fn with_refresh_retry(&self, policy: RetryPolicy) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.refresh_retry = policy.to_core()?;
            Ok(())
        })
    }

    /// How long a process may hold a mailbox's refresh lease.
    pub fn with_refresh_lease(&self, lease: Duration) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.refresh_lease = lease;
            Ok(())
        })
    }

    /// How long a consent URL stays valid.
    pub fn with_consent_ttl(&self, ttl: Duration) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.inner.consent_ttl = ttl;
            Ok(())
        })
    }

    /// The host's event listener (`null` removes it).
    pub fn with_event_listener(
        &self,
        listener: Option<Arc<dyn MailboxEventListener>>,
    ) -> Result<Arc<Settings>> {
        self.map(|s| {
            s.listener = listener;
            Ok(())
        })
    }

    /// Extra trusted root certificates (PEM text).
    pub fn extra_root_certs_pem(&self) -> Vec<String> {
        self.inner.extra_root_certs_pem.clone()
    }

    /// The issuer used instead of Google, if any.
    pub fn google_issuer_override(&self) -> Option<String> {
        self.inner
            .google_issuer_override
            .as_ref()
            .map(|u| u.as_str().to_owned())
    }

    /// Refresh this long before expiry.
    pub fn token_refresh_skew(&self) -> Duration {
        self.inner.token_refresh_skew
    }

    /// Timeout of one HTTP request to the provider.
    pub fn http_timeout(&self) -> Duration {
        self.inner.http_timeout
    }

    /// Retries of a transiently failed refresh.
    pub fn refresh_retry(&self) -> RetryPolicy {
        self.inner.refresh_retry.into()
    }

    /// Refresh lease duration.
    pub fn refresh_lease(&self) -> Duration {
        self.inner.refresh_lease
    }

    /// How long a consent URL stays valid.
    pub fn consent_ttl(&self) -> Duration {
        self.inner.consent_ttl
    }

    /// The host's event listener, if one is set.
    pub fn event_listener(&self) -> Option<Arc<dyn MailboxEventListener>> {
        self.listener.clone()
    }
}
