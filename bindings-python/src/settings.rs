//! `Settings` and `RetryPolicy`: the core's OAuth/library settings
//! (core/src/oauth/mod.rs). Durations cross as `datetime.timedelta`; the
//! event listener is a Python callable (adapted in events.rs).

use std::sync::Arc;
use std::time::Duration;

use mailsync::Error;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::convert::{int_in, py_str_repr};
use crate::errors::{guard, guard_py, to_py_err};
use crate::events::PyEventListener;

/// A `std::time::Duration` from a non-negative `datetime.timedelta`.
/// Another type raises TypeError; a negative value raises ValidationError
/// naming `field`.
pub fn duration(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let timedelta = value.py().import("datetime")?.getattr("timedelta")?;
    if !value.is_instance(&timedelta)? {
        return Err(PyTypeError::new_err(format!(
            "{field} must be a datetime.timedelta, not {}",
            value.get_type().name()?
        )));
    }
    let days: i64 = value.getattr("days")?.extract()?;
    let seconds: i64 = value.getattr("seconds")?.extract()?;
    let micros: i64 = value.getattr("microseconds")?.extract()?;
    let total =
        i128::from(days) * 86_400_000_000 + i128::from(seconds) * 1_000_000 + i128::from(micros);
    if total < 0 {
        return Err(to_py_err(Error::validation(field, "must not be negative")));
    }
    let total =
        u64::try_from(total).map_err(|_| to_py_err(Error::validation(field, "is too large")))?;
    Ok(Duration::from_micros(total))
}

fn optional_duration(
    field: &str,
    value: Option<&Bound<'_, PyAny>>,
    default: Duration,
) -> PyResult<Duration> {
    match value {
        None => Ok(default),
        Some(v) if v.is_none() => Ok(default),
        Some(v) => duration(field, v),
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Bounded retries with exponential backoff for transient token refresh
/// failures. Immutable. Omitted arguments keep the core defaults (4 attempts,
/// 250 ms doubling up to 4 s).
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct RetryPolicy {
    pub inner: mailsync::oauth::RetryPolicy,
}

#[pymethods]
impl RetryPolicy {
    #[new]
    #[pyo3(signature = (*, attempts=None, initial_backoff=None, max_backoff=None))]
    fn new(
        attempts: Option<i64>,
        initial_backoff: Option<&Bound<'_, PyAny>>,
        max_backoff: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RetryPolicy> {
        guard_py(|| {
            let default = mailsync::oauth::RetryPolicy::default();
            let attempts = match attempts {
                None => default.attempts,
                Some(n) => guard(|| int_in("refresh_retry.attempts", n, 1, i64::from(u32::MAX)))?,
            };
            Ok(RetryPolicy {
                inner: mailsync::oauth::RetryPolicy {
                    attempts,
                    initial_backoff: optional_duration(
                        "refresh_retry.initial_backoff",
                        initial_backoff,
                        default.initial_backoff,
                    )?,
                    max_backoff: optional_duration(
                        "refresh_retry.max_backoff",
                        max_backoff,
                        default.max_backoff,
                    )?,
                },
            })
        })
    }

    /// Total attempts (at least 1).
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Wait before the second attempt (doubles each time), a timedelta.
    #[getter]
    fn initial_backoff(&self) -> Duration {
        self.inner.initial_backoff
    }

    /// Upper bound for one wait, a timedelta.
    #[getter]
    fn max_backoff(&self) -> Duration {
        self.inner.max_backoff
    }

    fn __repr__(&self) -> String {
        format!(
            "RetryPolicy(attempts={}, initial_backoff={}, max_backoff={})",
            self.inner.attempts,
            fmt_duration(self.inner.initial_backoff),
            fmt_duration(self.inner.max_backoff)
        )
    }
}

/// Library settings: extra trusted root certificates, a Google issuer
/// override (test stacks, demos), token refresh timing, HTTP timeout,
/// consent link lifetime and the connection event listener. Immutable; every
/// omitted argument keeps the core default. Durations are `datetime.timedelta`.
/// Pass to `MailSync.open_sqlite_with(path, settings)` or
/// `MailSync.in_memory_with(settings)`.
#[pyclass(module = "mailsync", frozen, from_py_object)]
#[derive(Clone)]
pub struct Settings {
    /// The core settings without the listener.
    pub inner: mailsync::Settings,
    pub listener: Option<Arc<PyEventListener>>,
}

impl Settings {
    /// The core settings, listener included.
    pub fn to_core(&self) -> mailsync::Settings {
        let mut settings = self.inner.clone();
        settings.event_listener = self
            .listener
            .clone()
            .map(|l| l as Arc<dyn mailsync::oauth::MailboxEventListener>);
        settings
    }
}

#[pymethods]
impl Settings {
    #[new]
    #[pyo3(signature = (*, extra_root_certs_pem=None, google_issuer_override=None, token_refresh_skew=None, http_timeout=None, refresh_retry=None, refresh_lease=None, consent_ttl=None, event_listener=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        extra_root_certs_pem: Option<Vec<String>>,
        google_issuer_override: Option<&str>,
        token_refresh_skew: Option<&Bound<'_, PyAny>>,
        http_timeout: Option<&Bound<'_, PyAny>>,
        refresh_retry: Option<RetryPolicy>,
        refresh_lease: Option<&Bound<'_, PyAny>>,
        consent_ttl: Option<&Bound<'_, PyAny>>,
        event_listener: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Settings> {
        guard_py(|| {
            let mut s = mailsync::Settings::default();
            if let Some(pems) = extra_root_certs_pem {
                s.extra_root_certs_pem = pems;
            }
            if let Some(url) = google_issuer_override {
                s.google_issuer_override = Some(guard(|| {
                    url::Url::parse(url).map_err(|e| {
                        Error::validation(
                            "google_issuer_override",
                            format!("{url:?} is not a URL: {e}"),
                        )
                    })
                })?);
            }
            s.token_refresh_skew = optional_duration(
                "token_refresh_skew",
                token_refresh_skew,
                s.token_refresh_skew,
            )?;
            s.http_timeout = optional_duration("http_timeout", http_timeout, s.http_timeout)?;
            if let Some(retry) = refresh_retry {
                s.refresh_retry = retry.inner;
            }
            s.refresh_lease = optional_duration("refresh_lease", refresh_lease, s.refresh_lease)?;
            s.consent_ttl = optional_duration("consent_ttl", consent_ttl, s.consent_ttl)?;
            let listener = PyEventListener::from_callable(event_listener)?;
            Ok(Settings { inner: s, listener })
        })
    }

    /// Extra trusted root certificates (PEM text), added to the bundled web PKI roots.
    #[getter]
    fn extra_root_certs_pem(&self) -> Vec<String> {
        self.inner.extra_root_certs_pem.clone()
    }

    /// The issuer Gmail OAuth profiles use instead of Google, or None.
    #[getter]
    fn google_issuer_override(&self) -> Option<String> {
        self.inner
            .google_issuer_override
            .as_ref()
            .map(|u| u.to_string())
    }

    /// Refresh this long before the access token expires (timedelta).
    #[getter]
    fn token_refresh_skew(&self) -> Duration {
        self.inner.token_refresh_skew
    }

    /// Timeout of one HTTP request to the provider (timedelta).
    #[getter]
    fn http_timeout(&self) -> Duration {
        self.inner.http_timeout
    }

    /// Retries of a refresh that failed transiently.
    #[getter]
    fn refresh_retry(&self) -> RetryPolicy {
        RetryPolicy {
            inner: self.inner.refresh_retry,
        }
    }

    /// How long a process may hold a mailbox's refresh lease (timedelta).
    #[getter]
    fn refresh_lease(&self) -> Duration {
        self.inner.refresh_lease
    }

    /// How long a consent URL stays valid (timedelta).
    #[getter]
    fn consent_ttl(&self) -> Duration {
        self.inner.consent_ttl
    }

    /// The callable that receives `MailboxEvent`s, or None.
    #[getter]
    fn event_listener(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.listener.as_ref().map(|l| l.callable(py))
    }

    fn __repr__(&self) -> String {
        let s = &self.inner;
        format!(
            "Settings(extra_root_certs_pem=<{} PEM>, google_issuer_override={}, token_refresh_skew={}, http_timeout={}, refresh_retry={}, refresh_lease={}, consent_ttl={}, event_listener={})",
            s.extra_root_certs_pem.len(),
            s.google_issuer_override
                .as_ref()
                .map(|u| py_str_repr(u.as_str()))
                .unwrap_or_else(|| "None".to_owned()),
            fmt_duration(s.token_refresh_skew),
            fmt_duration(s.http_timeout),
            RetryPolicy {
                inner: s.refresh_retry
            }
            .__repr__(),
            fmt_duration(s.refresh_lease),
            fmt_duration(s.consent_ttl),
            if self.listener.is_some() {
                "<callable>"
            } else {
                "None"
            },
        )
    }
}
