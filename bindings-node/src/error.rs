//! The one place where a core [`mailsync::Error`] becomes a JavaScript error.
//!
//! Every rejected Promise and every thrown error of this module is a
//! `MailsyncError` (a subclass of `Error`, defined once at module load) with
//! `code` (the core's stable code string, never the napi status), `field`
//! (validation only, else `null`), `transient` and `nextAction`. Panics are
//! caught at every entry point that runs core code and become `internal`.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use mailsync::{Error, ErrorCode};
use napi::bindgen_prelude::{FnArgs, FunctionRef, PromiseRaw, ToNapiValue, Unknown};
use napi::{Env, Status};

/// Arguments of the `MailsyncError` constructor: message, code, field, transient, nextAction.
pub(crate) type ErrorArgs = FnArgs<(String, String, Option<String>, bool, String)>;

/// What the addon keeps per environment (instance data): the `MailsyncError`
/// constructor and the reporter of event-listener failures.
pub(crate) struct Statics {
    pub(crate) error_class: FunctionRef<ErrorArgs, Unknown<'static>>,
    pub(crate) report_listener_error: FunctionRef<Unknown<'static>, Unknown<'static>>,
}

/// JavaScript source of the error class, of the `util.inspect` hooks and of
/// the listener-failure reporter, evaluated once per environment when the
/// module loads. Returns `[MailsyncError, reportListenerError]`.
pub(crate) const INIT_SCRIPT: &str = r#"(function (exports) {
  'use strict';
  class MailsyncError extends Error {
    constructor(message, code, field, transient, nextAction) {
      super(message);
      Object.defineProperty(this, 'name', { value: 'MailsyncError', enumerable: false, configurable: true, writable: true });
      this.code = code;
      this.field = field === undefined ? null : field;
      this.transient = transient;
      this.nextAction = nextAction;
    }
  }
  const custom = Symbol.for('nodejs.util.inspect.custom');
  for (const name of ['OAuthApp', 'Authentication', 'ServerProfile', 'Mailbox', 'MailboxSpec', 'SealKey', 'MailSync', 'AccessToken', 'TestReport']) {
    const ctor = exports[name];
    if (typeof ctor !== 'function') continue;
    Object.defineProperty(ctor.prototype, custom, {
      value: function (depth, options, inspect) {
        return name + ' ' + inspect(this.toJSON(), options);
      },
      enumerable: false, configurable: true, writable: true,
    });
  }
  // An event listener that threw (or whose promise rejected): never crashes
  // the process, never reaches mailsync; surfaces as a process warning.
  function reportListenerError(cause) {
    const text = cause instanceof Error ? cause.message : String(cause);
    const warning = new Error('mailsync event listener failed: ' + text, { cause });
    warning.name = 'MailsyncListenerWarning';
    process.emitWarning(warning);
  }
  return [MailsyncError, reportListenerError];
})"#;

/// Builds the JavaScript `MailsyncError` for a core error. This is the only
/// conversion from core errors to JavaScript values.
pub(crate) fn to_napi(env: &Env, err: &Error) -> napi::Error {
    let args: ErrorArgs = FnArgs::from((
        err.message().to_owned(),
        err.code().as_str().to_owned(),
        err.field().map(str::to_owned),
        err.is_transient(),
        err.next_action().to_owned(),
    ));
    let built = env.get_instance_data::<Statics>().and_then(|statics| {
        let statics = statics.ok_or_else(|| {
            napi::Error::new(Status::GenericFailure, "mailsync error class missing")
        })?;
        let ctor = statics.error_class.borrow_back(env)?;
        ctor.new_instance(args)
    });
    match built {
        Ok(value) => napi::Error::from(value),
        // Only reachable while the environment is tearing down: fall back to a
        // plain error whose status string is still our code.
        Err(_) => napi::Error::new(
            Status::GenericFailure,
            format!("{} ({})", err.message(), err.code()),
        ),
    }
}

/// A caught panic, as the core's `internal` error.
pub(crate) fn panic_error(payload: Box<dyn std::any::Any + Send>) -> Error {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::new(ErrorCode::Internal, format!("mailsync panicked: {detail}"))
}

/// Runs synchronous core work: errors and panics become `MailsyncError`s.
pub(crate) fn guard<T>(env: &Env, work: impl FnOnce() -> mailsync::Result<T>) -> napi::Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(to_napi(env, &err)),
        Err(payload) => Err(to_napi(env, &panic_error(payload))),
    }
}

/// Runs asynchronous core work on napi's tokio runtime and returns a Promise.
/// `convert` runs on the JavaScript thread with the result.
pub(crate) fn promise<'env, T, V, F, C>(
    env: &'env Env,
    work: F,
    convert: C,
) -> napi::Result<PromiseRaw<'env, V>>
where
    T: Send + 'static,
    V: ToNapiValue,
    F: Future<Output = mailsync::Result<T>> + Send + 'static,
    C: FnOnce(T) -> V + 'static,
{
    let guarded = async move {
        let outcome = AssertUnwindSafe(work).catch_unwind().await;
        Ok::<_, napi::Error>(outcome.unwrap_or_else(|payload| Err(panic_error(payload))))
    };
    env.spawn_future_with_callback(guarded, move |env, outcome| match outcome {
        Ok(value) => Ok(convert(value)),
        Err(err) => Err(to_napi(env, &err)),
    })
}

/// A validation error for a value the binding must check itself because the
/// Rust type is narrower than a JavaScript number (ports, counts, minutes).
pub(crate) fn integer_in(field: &str, value: f64, min: u32, max: u32) -> mailsync::Result<u32> {
    if value.is_finite()
        && value.fract() == 0.0
        && value >= f64::from(min)
        && value <= f64::from(max)
    {
        Ok(value as u32)
    } else {
        Err(Error::validation(
            field,
            format!("must be an integer between {min} and {max}"),
        ))
    }
}
