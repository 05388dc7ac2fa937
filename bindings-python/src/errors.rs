//! The one place where core errors become Python exceptions.
//!
//! `MailsyncError` is the base; every [`ErrorCode`] has exactly one subclass
//! named CamelCase(code) + "Error" (e.g. `capacity_exceeded` ->
//! `CapacityExceededError`). Instances carry `code`, `message`, `field`,
//! `transient` and `next_action`; each subclass also has `code` as a class
//! attribute. Panics never cross into Python: [`guard`] and the async/blocking
//! runners in `runtime.rs` turn them into `InternalError`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mailsync::{Error, ErrorCode};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyType};

create_exception!(
    mailsync,
    MailsyncError,
    PyException,
    "Base class of every mailsync error.\n\nAttributes: code (the stable snake_case code, identical in every language), message (for people, never contains secrets), field (the field at fault for validation errors, else None), transient (whether retrying later unchanged may succeed) and next_action (what to do next, one sentence)."
);

macro_rules! error_classes {
    ($($variant:ident => $class:ident, $doc:literal;)*) => {
        $( create_exception!(mailsync, $class, MailsyncError, $doc); )*

        /// The exception class for a code (the base class for codes this
        /// binding does not know yet; the parity test catches that case).
        fn class_for(py: Python<'_>, code: ErrorCode) -> Bound<'_, PyType> {
            match code {
                $( ErrorCode::$variant => py.get_type::<$class>(), )*
                _ => py.get_type::<MailsyncError>(),
            }
        }

        /// Adds the base and every subclass to the module, with `code` set as
        /// a class attribute on each subclass.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            let base = py.get_type::<MailsyncError>();
            base.setattr("field", py.None())?;
            m.add("MailsyncError", base)?;
            $(
                let class = py.get_type::<$class>();
                class.setattr("code", ErrorCode::$variant.as_str())?;
                class.setattr("transient", ErrorCode::$variant.is_transient())?;
                class.setattr("next_action", ErrorCode::$variant.next_action())?;
                m.add(stringify!($class), class)?;
            )*
            Ok(())
        }
    };
}

error_classes! {
    Validation => ValidationError, "A value does not satisfy a rule; `field` names the field.";
    CapacityExceeded => CapacityExceededError, "The server profile already holds as many mailboxes as it may (100 for Gmail OAuth).";
    NotFound => NotFoundError, "The named profile, mailbox or record does not exist.";
    AlreadyExists => AlreadyExistsError, "A record with the same unique name or address exists.";
    ProfileInUse => ProfileInUseError, "A profile cannot be deleted while mailboxes use it.";
    NotATestUser => NotATestUserError, "The consent screen is External + Testing and the address is not a listed test user.";
    SealKeyMismatch => SealKeyMismatchError, "The seal key does not open the secrets in this store.";
    Store => StoreError, "The store failed (I/O, database, corrupt record).";
    StoreUnavailable => StoreUnavailableError, "The store is busy or temporarily unreachable (transient).";
    ConsentDenied => ConsentDeniedError, "The user declined consent (access_denied).";
    AdminPolicy => AdminPolicyError, "A Workspace admin policy blocks the app (admin_policy_enforced).";
    OrgInternal => OrgInternalError, "An Internal app was used by an account outside the organization (org_internal).";
    ConsentFailed => ConsentFailedError, "The authorization server reported another error on the redirect.";
    StateInvalid => StateInvalidError, "The state of a callback is missing, unknown, expired or already used.";
    AccountMismatch => AccountMismatchError, "The account that consented is not the mailbox's address.";
    ScopeNotGranted => ScopeNotGrantedError, "The user unchecked the mail scope on the consent screen.";
    TokenRevoked => TokenRevokedError, "The refresh token was revoked or expired (invalid_grant).";
    InvalidClient => InvalidClientError, "The OAuth client id or secret was refused (invalid_client).";
    NotConnected => NotConnectedError, "The mailbox has no tokens yet.";
    ProviderError => ProviderErrorError, "The authorization server answered something unexpected (code provider_error).";
    ProviderUnavailable => ProviderUnavailableError, "The authorization server is down or overloaded (transient).";
    AuthRejected => AuthRejectedError, "The mail server refused the credentials or token.";
    ProtocolDisabled => ProtocolDisabledError, "The account may not use this protocol (e.g. IMAP disabled in Gmail settings).";
    MechanismUnsupported => MechanismUnsupportedError, "The server does not offer the needed authentication mechanism.";
    Network => NetworkError, "The server could not be reached (transient).";
    Tls => TlsError, "TLS failed (e.g. the certificate is not trusted or not valid for the host).";
    Timeout => TimeoutError, "A step took longer than the profile's connection timeout (transient). Not the builtin TimeoutError.";
    ServerUnavailable => ServerUnavailableError, "The mail server is temporarily unable to authenticate or serve (transient).";
    ProtocolError => ProtocolErrorError, "The server broke the protocol (code protocol_error).";
    SendDeferred => SendDeferredError, "The SMTP server deferred the message (4xx, transient).";
    SendRejected => SendRejectedError, "The SMTP server refused the message (5xx).";
    InsecureConnection => InsecureConnectionError, "Plain-text authentication over an unencrypted connection was refused.";
    Internal => InternalError, "A bug in mailsync (including a caught panic).";
}

/// Converts a core error into an instance of its exception class. This is
/// the only place core errors cross into Python.
pub fn to_py_err(err: Error) -> PyErr {
    Python::attach(|py| match build(py, &err) {
        Ok(value) => PyErr::from_value(value),
        Err(e) => e,
    })
}

fn build<'py>(py: Python<'py>, err: &Error) -> PyResult<Bound<'py, PyAny>> {
    let value = class_for(py, err.code()).call1((err.message(),))?;
    value.setattr("code", err.code().as_str())?;
    value.setattr("message", err.message())?;
    value.setattr("field", err.field())?;
    value.setattr("transient", err.is_transient())?;
    value.setattr("next_action", err.next_action())?;
    Ok(value)
}

/// The `internal` error reported for a caught panic.
pub fn panic_error(payload: Box<dyn std::any::Any + Send>) -> Error {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::new(ErrorCode::Internal, format!("mailsync panicked: {detail}"))
}

/// Runs a synchronous entry point, mapping core errors and panics.
pub fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(to_py_err(err)),
        Err(payload) => Err(to_py_err(panic_error(payload))),
    }
}

/// Like [`guard`] for entry points that also raise Python errors.
pub fn guard_py<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(to_py_err(panic_error(payload))),
    }
}

/// Every stable error code, in documentation order (`ErrorCode::ALL`).
#[pyfunction]
pub fn error_codes(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(py, ErrorCode::ALL.iter().map(|c| c.as_str()))
}

/// The exception class the binding raises for `code`.
///
/// Raises ValidationError for an unknown code.
#[pyfunction]
pub fn error_class<'py>(py: Python<'py>, code: &str) -> PyResult<Bound<'py, PyType>> {
    let parsed = ErrorCode::parse(code).ok_or_else(|| {
        to_py_err(Error::validation(
            "code",
            format!("unknown error code {code:?}"),
        ))
    })?;
    Ok(class_for(py, parsed))
}

/// Test hook: the exception the mapping function builds for a core error
/// with this code (not raised). Lets the parity test exercise the mapping
/// for codes no current operation can produce.
#[pyfunction]
#[pyo3(signature = (code, message, field=None))]
pub fn _error_for_code<'py>(
    py: Python<'py>,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let parsed = ErrorCode::parse(code).ok_or_else(|| {
        to_py_err(Error::validation(
            "code",
            format!("unknown error code {code:?}"),
        ))
    })?;
    let err = match field {
        Some(f) => Error::validation(f, message),
        None => Error::new(parsed, message),
    };
    build(py, &err)
}

/// Test hook: panics inside an entry point, to prove the panic becomes
/// `InternalError` (synchronously, or from an awaitable when `awaitable`).
#[pyfunction]
#[pyo3(signature = (awaitable=false))]
pub fn _panic_for_test(py: Python<'_>, awaitable: bool) -> PyResult<Bound<'_, PyAny>> {
    if awaitable {
        return crate::runtime::run_async(py, async {
            let fail = true;
            if fail {
                panic!("deliberate test panic");
            }
            Ok(())
        });
    }
    guard(|| -> Result<(), Error> { panic!("deliberate test panic") })?;
    Ok(py.None().into_bound(py))
}
