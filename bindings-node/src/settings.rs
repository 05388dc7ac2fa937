//! `Settings` (the core's `mailsync::Settings`) and the event-listener
//! adapter: a JavaScript function called through a weak ThreadsafeFunction.
//!
//! The core calls `MailboxEventListener::on_event` synchronously on the task
//! that caused the event (a tokio worker). The adapter only queues the event
//! to the JavaScript thread (non-blocking) and returns; the JS function runs
//! there later. A listener that throws, or whose returned promise rejects,
//! is reported as a `MailsyncListenerWarning` process warning: it never
//! crashes the process and never reaches the core. The ThreadsafeFunction is
//! weak (unref'd), so a listener never keeps the process alive.

use std::sync::Arc;
use std::time::Duration;

use mailsync::oauth;
use napi::bindgen_prelude::{
    CallbackContext, FromNapiValue, JsValue, PromiseRaw, ToNapiValue, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use napi_derive::napi;

use crate::error::{Statics, integer_in};
use crate::rfc3339;

/// What happened to a mailbox's connection.
#[napi(string_enum = "snake_case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxEventKind {
    /// Consent completed; tokens are stored.
    Connected,
    /// The access token was refreshed.
    Refreshed,
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent,
    /// The mailbox was disconnected (tokens revoked and deleted).
    Disconnected,
}

impl From<oauth::MailboxEventKind> for MailboxEventKind {
    fn from(kind: oauth::MailboxEventKind) -> Self {
        match kind {
            oauth::MailboxEventKind::Connected => MailboxEventKind::Connected,
            oauth::MailboxEventKind::Refreshed => MailboxEventKind::Refreshed,
            oauth::MailboxEventKind::NeedsReconsent => MailboxEventKind::NeedsReconsent,
            oauth::MailboxEventKind::Disconnected => MailboxEventKind::Disconnected,
        }
    }
}

/// One connection event (never carries a secret).
#[napi(object)]
#[derive(Debug, Clone)]
pub struct MailboxEvent {
    /// What happened.
    pub kind: MailboxEventKind,
    /// The mailbox id.
    pub mailbox_id: String,
    /// Its address.
    pub email: String,
    /// The error code behind the event (e.g. `token_revoked`), or `null`.
    #[napi(ts_type = "ErrorCode | null")]
    pub code: Option<String>,
    /// What happened and what to do, for people.
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

impl From<&oauth::MailboxEvent> for MailboxEvent {
    fn from(e: &oauth::MailboxEvent) -> Self {
        MailboxEvent {
            kind: e.kind.into(),
            mailbox_id: e.mailbox_id.to_string(),
            email: e.email.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
            at: rfc3339(e.at),
        }
    }
}

/// The host's listener as napi receives it: not callee-handled (the event is
/// the only argument), weak (does not keep the event loop alive).
pub(crate) type ListenerFn =
    ThreadsafeFunction<MailboxEvent, Unknown<'static>, MailboxEvent, Status, false, true>;

/// Adapts a JavaScript function to the core's `MailboxEventListener`.
pub(crate) struct JsListener(ListenerFn);

impl oauth::MailboxEventListener for JsListener {
    fn on_event(&self, event: &oauth::MailboxEvent) {
        // Closing (environment shutting down) or a full queue: the event is
        // dropped; it is also on the mailbox's alerts wall.
        let _ = self.0.call_with_return_value(
            MailboxEvent::from(event),
            ThreadsafeFunctionCallMode::NonBlocking,
            |returned, env| {
                // Never return an error from here: napi would turn it into a
                // fatal exception (an `uncaughtException`).
                let _ = handle_returned(&env, returned);
                Ok(())
            },
        );
    }
}

/// Runs on the JavaScript thread with what the listener returned: a thrown
/// value, or a promise that may reject later; both are reported.
fn handle_returned(env: &Env, returned: napi::Result<Unknown<'static>>) -> napi::Result<()> {
    match returned {
        // SAFETY: `env` is the live environment of this JS-thread callback.
        Err(thrown) => report(env, unsafe {
            napi::Error::to_napi_value(env.raw(), thrown)?
        }),
        Ok(value) if value.is_promise()? => {
            // SAFETY: `value` was just checked to be a promise of this `env`.
            let promise: PromiseRaw<'_, Unknown<'static>> =
                unsafe { PromiseRaw::from_napi_value(env.raw(), value.raw())? };
            promise.catch(|ctx: CallbackContext<Unknown<'static>>| {
                let _ = report(&ctx.env, ctx.value.raw());
                Ok(())
            })?;
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Hands a listener failure to `reportListenerError` (a process warning).
fn report(env: &Env, cause: napi::sys::napi_value) -> napi::Result<()> {
    let statics = env
        .get_instance_data::<Statics>()?
        .ok_or_else(|| napi::Error::from_reason("mailsync statics missing"))?;
    let reporter = statics.report_listener_error.borrow_back(env)?;
    // SAFETY: `cause` is a value of this `env`, created on this thread just now.
    reporter.call(unsafe { Unknown::from_raw_unchecked(env.raw(), cause) })?;
    Ok(())
}

pub(crate) fn listener(f: ListenerFn) -> Arc<dyn oauth::MailboxEventListener> {
    Arc::new(JsListener(f))
}

/// Retries of a token refresh that failed transiently. Times in milliseconds.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts (at least 1; default 4).
    pub attempts: Option<f64>,
    /// Wait before the second attempt, doubling each time (default 250 ms).
    pub initial_backoff_ms: Option<f64>,
    /// Upper bound of one wait (default 4000 ms).
    pub max_backoff_ms: Option<f64>,
}

/// Library settings for the OAuth flows (the core's `Settings`). Every field
/// is optional; omitted fields keep the core's defaults. Durations are
/// milliseconds (integers).
#[napi(object, object_to_js = false)]
pub struct Settings {
    /// Extra trusted root certificates (PEM text), added to the bundled web PKI roots.
    pub extra_root_certs_pem: Option<Vec<String>>,
    /// Point Gmail OAuth profiles at another issuer (found by discovery) instead of Google.
    pub google_issuer_override: Option<String>,
    /// Refresh this long before the access token expires (default 300000).
    pub token_refresh_skew_ms: Option<f64>,
    /// Timeout of one HTTP request to the provider (default 30000).
    pub http_timeout_ms: Option<f64>,
    /// Retries of a refresh that failed transiently.
    pub refresh_retry: Option<RetryPolicy>,
    /// How long a process may hold a mailbox's refresh lease (default 60000).
    pub refresh_lease_ms: Option<f64>,
    /// How long a consent URL stays valid (default 600000).
    pub consent_ttl_ms: Option<f64>,
    /// Receives connection events on the JavaScript thread, after the fact.
    #[napi(ts_type = "(event: MailboxEvent) => void")]
    pub event_listener: Option<ListenerFn>,
}

fn millis(field: &str, value: Option<f64>, default: Duration) -> mailsync::Result<Duration> {
    match value {
        None => Ok(default),
        Some(ms) => integer_in(field, ms, 0, u32::MAX).map(|ms| Duration::from_millis(ms.into())),
    }
}

impl Settings {
    /// The core settings. Checks what the binding narrows (integers, the issuer URL).
    pub(crate) fn into_core(self) -> mailsync::Result<mailsync::Settings> {
        let mut s = mailsync::Settings::default();
        if let Some(pems) = self.extra_root_certs_pem {
            s.extra_root_certs_pem = pems;
        }
        if let Some(issuer) = self.google_issuer_override {
            s.google_issuer_override = Some(issuer.parse().map_err(|_| {
                mailsync::Error::validation("google_issuer_override", "must be an absolute URL")
            })?);
        }
        s.token_refresh_skew = millis(
            "token_refresh_skew_ms",
            self.token_refresh_skew_ms,
            s.token_refresh_skew,
        )?;
        s.http_timeout = millis("http_timeout_ms", self.http_timeout_ms, s.http_timeout)?;
        if let Some(retry) = self.refresh_retry {
            let d = s.refresh_retry;
            s.refresh_retry = oauth::RetryPolicy {
                attempts: match retry.attempts {
                    None => d.attempts,
                    Some(n) => integer_in("refresh_retry.attempts", n, 0, u32::MAX)?,
                },
                initial_backoff: millis(
                    "refresh_retry.initial_backoff_ms",
                    retry.initial_backoff_ms,
                    d.initial_backoff,
                )?,
                max_backoff: millis(
                    "refresh_retry.max_backoff_ms",
                    retry.max_backoff_ms,
                    d.max_backoff,
                )?,
            };
        }
        s.refresh_lease = millis("refresh_lease_ms", self.refresh_lease_ms, s.refresh_lease)?;
        s.consent_ttl = millis("consent_ttl_ms", self.consent_ttl_ms, s.consent_ttl)?;
        s.event_listener = self.event_listener.map(listener);
        Ok(s)
    }
}

/// The settings in effect, as `MailSync.settings` shows them (no listener).
#[napi(object)]
#[derive(Debug, Clone)]
pub struct EffectiveSettings {
    /// How many extra root certificates are trusted.
    pub extra_root_certs: u32,
    /// The issuer used instead of Google, or `null`.
    pub google_issuer_override: Option<String>,
    /// Milliseconds.
    pub token_refresh_skew_ms: f64,
    /// Milliseconds.
    pub http_timeout_ms: f64,
    /// Retry policy (all fields set).
    pub refresh_retry: RetryPolicy,
    /// Milliseconds.
    pub refresh_lease_ms: f64,
    /// Milliseconds.
    pub consent_ttl_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl From<&mailsync::Settings> for EffectiveSettings {
    fn from(s: &mailsync::Settings) -> Self {
        EffectiveSettings {
            extra_root_certs: s.extra_root_certs_pem.len() as u32,
            google_issuer_override: s.google_issuer_override.as_ref().map(|u| u.to_string()),
            token_refresh_skew_ms: ms(s.token_refresh_skew),
            http_timeout_ms: ms(s.http_timeout),
            refresh_retry: RetryPolicy {
                attempts: Some(f64::from(s.refresh_retry.attempts)),
                initial_backoff_ms: Some(ms(s.refresh_retry.initial_backoff)),
                max_backoff_ms: Some(ms(s.refresh_retry.max_backoff)),
            },
            refresh_lease_ms: ms(s.refresh_lease),
            consent_ttl_ms: ms(s.consent_ttl),
        }
    }
}
