//! [`Options`]: how one [`crate::MailSync`] instance behaves — whom it
//! trusts, how it talks to OAuth providers, how it retries, and where it
//! reads the time. Start from [`Options::default`] and change fields; they
//! are checked when the instance opens.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::lifecycle::FailurePolicy;

/// Bounded retries with exponential backoff for a token refresh that failed
/// transiently (5xx, network), and for provider discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct RetryPolicy {
    /// Total attempts, 1–100 (default 4).
    pub attempts: u32,
    /// Wait before the second attempt in milliseconds; doubles each time
    /// (default 250).
    pub initial_backoff_ms: u32,
    /// Upper bound for one wait, in milliseconds (default 4000).
    pub max_backoff_ms: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff_ms: 250,
            max_backoff_ms: 4000,
        }
    }
}

impl RetryPolicy {
    /// The first wait.
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(u64::from(self.initial_backoff_ms))
    }

    /// The longest wait.
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(u64::from(self.max_backoff_ms))
    }
}

/// See the module docs. Durations are whole seconds (or milliseconds where
/// the name says so), the same in every language binding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
pub struct Options {
    /// Extra trusted root certificates (PEM text), added to the bundled web
    /// PKI roots, for mail servers and OAuth providers. Tests add their own
    /// CA this way; verification is never turned off.
    pub extra_root_certs_pem: Vec<String>,
    /// Sends Gmail OAuth to this issuer (found by discovery) instead of
    /// Google, for the local test stack and demos; Google's request
    /// parameters are still sent. While it is set, Gmail OAuth profiles may
    /// also name mail hosts other than Google's.
    pub google_issuer_override: Option<String>,
    /// Refresh this long before the access token expires (default 300 s),
    /// but never more than half of the token's lifetime, so a token that
    /// lives shorter than the skew is still used before it is refreshed.
    pub token_refresh_skew_secs: u32,
    /// Timeout of one HTTP request to a provider, 1–3600 s (default 30).
    pub http_timeout_secs: u32,
    /// Retries of a refresh (or a discovery) that failed transiently.
    pub refresh_retry: RetryPolicy,
    /// How long a refresh lease is held before it must be renewed (default
    /// 60 s); it is renewed before each attempt, so it must exceed one
    /// attempt (the HTTP timeout plus the longest backoff). Another process
    /// waits at most about this long for a holder that died.
    pub refresh_lease_secs: u32,
    /// How long a consent URL stays valid, 1–86400 s (default 600).
    pub consent_ttl_secs: u32,
    /// How a direction's transient failures are retried before it is
    /// disabled (default: 10 retries, 300 s apart).
    pub failure_policy: FailurePolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_root_certs_pem: Vec::new(),
            google_issuer_override: None,
            token_refresh_skew_secs: 300,
            http_timeout_secs: 30,
            refresh_retry: RetryPolicy::default(),
            refresh_lease_secs: 60,
            consent_ttl_secs: 600,
            failure_policy: FailurePolicy::default(),
        }
    }
}

/// The longest duration any option may have, in seconds (a day); longer
/// values are almost certainly a unit mistake.
pub const MAX_SECS: u32 = 24 * 3600;

fn secs(value: u32) -> Duration {
    Duration::from_secs(u64::from(value))
}

impl Options {
    /// [`Options::token_refresh_skew_secs`] as a duration.
    pub fn token_refresh_skew(&self) -> Duration {
        secs(self.token_refresh_skew_secs)
    }

    /// [`Options::http_timeout_secs`] as a duration.
    pub fn http_timeout(&self) -> Duration {
        secs(self.http_timeout_secs)
    }

    /// [`Options::refresh_lease_secs`] as a duration.
    pub fn refresh_lease(&self) -> Duration {
        secs(self.refresh_lease_secs)
    }

    /// [`Options::consent_ttl_secs`] as a duration.
    pub fn consent_ttl(&self) -> Duration {
        secs(self.consent_ttl_secs)
    }

    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let retry = &self.refresh_retry;
        if !(1..=100).contains(&retry.attempts) {
            return Err(Error::validation(
                "refresh_retry.attempts",
                "must be between 1 and 100",
            ));
        }
        if retry.initial_backoff_ms > retry.max_backoff_ms {
            return Err(Error::validation(
                "refresh_retry.initial_backoff_ms",
                "must not exceed refresh_retry.max_backoff_ms",
            ));
        }
        if retry.max_backoff_ms > MAX_SECS.saturating_mul(1000) {
            return Err(Error::validation(
                "refresh_retry.max_backoff_ms",
                "must be at most one day",
            ));
        }
        for (field, value, min) in [
            ("token_refresh_skew_secs", self.token_refresh_skew_secs, 0),
            ("http_timeout_secs", self.http_timeout_secs, 1),
            ("refresh_lease_secs", self.refresh_lease_secs, 1),
            ("consent_ttl_secs", self.consent_ttl_secs, 1),
            (
                "failure_policy.interval_secs",
                self.failure_policy.interval_secs,
                0,
            ),
        ] {
            if value < min || value > MAX_SECS {
                return Err(Error::validation(
                    field,
                    format!("must be between {min} and {MAX_SECS} seconds"),
                ));
            }
        }
        if self.refresh_lease() <= self.http_timeout() + retry.max_backoff() {
            return Err(Error::validation(
                "refresh_lease_secs",
                "must be longer than the HTTP timeout plus the longest refresh backoff (one refresh attempt)",
            ));
        }
        if let Some(url) = &self.google_issuer_override {
            crate::model::validate::issuer_url("google_issuer_override", url)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn bad_values_name_their_field() {
        type Change = Box<dyn Fn(&mut Options)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "refresh_retry.attempts",
                Box::new(|o| o.refresh_retry.attempts = 0),
            ),
            ("http_timeout_secs", Box::new(|o| o.http_timeout_secs = 0)),
            (
                "consent_ttl_secs",
                Box::new(|o| o.consent_ttl_secs = u32::MAX),
            ),
            (
                "refresh_lease_secs",
                Box::new(|o| o.refresh_lease_secs = 10),
            ),
            (
                "google_issuer_override",
                Box::new(|o| o.google_issuer_override = Some("http://example.com".into())),
            ),
        ];
        for (field, change) in cases {
            let mut o = Options::default();
            change(&mut o);
            let e = o.validate().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation);
            assert_eq!(e.field(), Some(field));
        }
        Options::default().validate().unwrap();
    }

    /// Every duration, set to its type's largest value, is refused by
    /// validation (naming the field) rather than overflowing later.
    #[test]
    fn the_largest_durations_are_refused() {
        type Change = Box<dyn Fn(&mut Options)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "token_refresh_skew_secs",
                Box::new(|o| o.token_refresh_skew_secs = u32::MAX),
            ),
            (
                "http_timeout_secs",
                Box::new(|o| o.http_timeout_secs = u32::MAX),
            ),
            (
                "refresh_lease_secs",
                Box::new(|o| o.refresh_lease_secs = u32::MAX),
            ),
            (
                "consent_ttl_secs",
                Box::new(|o| o.consent_ttl_secs = u32::MAX),
            ),
            (
                "failure_policy.interval_secs",
                Box::new(|o| o.failure_policy.interval_secs = u32::MAX),
            ),
            (
                "refresh_retry.max_backoff_ms",
                Box::new(|o| o.refresh_retry.max_backoff_ms = u32::MAX),
            ),
            (
                "refresh_retry.initial_backoff_ms",
                Box::new(|o| o.refresh_retry.initial_backoff_ms = u32::MAX),
            ),
            (
                "refresh_retry.attempts",
                Box::new(|o| o.refresh_retry.attempts = u32::MAX),
            ),
        ];
        for (field, change) in cases {
            let mut o = Options::default();
            change(&mut o);
            let e = o.validate().unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
    }
}
