//! The one place where core errors (and panics) become the exported error.
//!
//! Kotlin sees `sealed class MailsyncException` with one subclass per core
//! error code (`MailsyncException.Validation`, `.CapacityExceeded`, …); Swift
//! sees `enum MailsyncError` with one case per code. Every variant carries the
//! same fields: `code` (the core's `ErrorCode::as_str()`), `detail` (the
//! person-readable message), `field` (validation only), `transient` and
//! `next_action`.
//!
//! The message field is called `detail` because a field named `message`
//! makes UniFFI's Kotlin output uncompilable (it clashes with
//! `Throwable.message`; uniffi-rs issues 1434 and 2065).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use futures::FutureExt;
use mailsync::ErrorCode;

/// Result of every fallible exported function.
pub type Result<T, E = MailsyncError> = std::result::Result<T, E>;

macro_rules! error_families {
    ($( $(#[$doc:meta])* $variant:ident => $core:ident ),* $(,)?) => {
        /// A mailsync failure. One variant per stable error code; every variant
        /// carries the code string, the message (`detail`), the field at fault
        /// (validation errors), whether retrying later may help, and what to do next.
        #[derive(Debug, Clone, uniffi::Error)]
        pub enum MailsyncError {
            $(
                $(#[$doc])*
                $variant {
                    /// Stable snake_case code, identical in every language.
                    code: String,
                    /// What went wrong, for people (never contains secrets).
                    detail: String,
                    /// For validation errors, the field at fault (e.g. `incoming.port`).
                    field: Option<String>,
                    /// Whether retrying later, unchanged, may succeed.
                    transient: bool,
                    /// What the user or admin should do next, in one sentence.
                    next_action: String,
                },
            )*
        }

        impl MailsyncError {
            fn build(code: ErrorCode, detail: String, field: Option<String>) -> MailsyncError {
                let code_text = code.as_str().to_owned();
                let transient = code.is_transient();
                let next_action = code.next_action().to_owned();
                match code {
                    $( ErrorCode::$core => MailsyncError::$variant { code: code_text, detail, field, transient, next_action }, )*
                    // A code added to core but not here: keep its code string,
                    // raise it as Internal (the parity test catches this).
                    _ => MailsyncError::Internal { code: code_text, detail, field, transient, next_action },
                }
            }

            /// The stable code.
            pub fn code(&self) -> &str {
                match self { $( MailsyncError::$variant { code, .. } => code, )* }
            }

            /// The person-readable message.
            pub fn detail(&self) -> &str {
                match self { $( MailsyncError::$variant { detail, .. } => detail, )* }
            }

            /// The field at fault, for validation errors.
            pub fn field(&self) -> Option<&str> {
                match self { $( MailsyncError::$variant { field, .. } => field.as_deref(), )* }
            }
        }
    };
}

error_families! {
    /// `validation`: a value does not satisfy a rule; `field` names it.
    Validation => Validation,
    /// `capacity_exceeded`: the server profile is full (100 for Gmail OAuth).
    CapacityExceeded => CapacityExceeded,
    /// `not_found`: the profile, mailbox or record does not exist.
    NotFound => NotFound,
    /// `already_exists`: a record with the same unique name or address exists.
    AlreadyExists => AlreadyExists,
    /// `profile_in_use`: a profile cannot be deleted while mailboxes use it.
    ProfileInUse => ProfileInUse,
    /// `not_a_test_user`: External + Testing app and the address is not a test user.
    NotATestUser => NotATestUser,
    /// `seal_key_mismatch`: the seal key does not open this store's secrets.
    SealKeyMismatch => SealKeyMismatch,
    /// `store`: the store failed (I/O, database, corrupt record).
    Store => Store,
    /// `store_unavailable`: the store is busy or unreachable (transient).
    StoreUnavailable => StoreUnavailable,
    /// `consent_denied`: the user declined consent.
    ConsentDenied => ConsentDenied,
    /// `admin_policy`: a Workspace admin policy blocks the app.
    AdminPolicy => AdminPolicy,
    /// `org_internal`: an Internal app was used from outside the organization.
    OrgInternal => OrgInternal,
    /// `consent_failed`: the authorization server reported another error.
    ConsentFailed => ConsentFailed,
    /// `state_invalid`: the callback's `state` is missing, unknown, expired or used.
    StateInvalid => StateInvalid,
    /// `account_mismatch`: the consenting account is not the mailbox's address.
    AccountMismatch => AccountMismatch,
    /// `scope_not_granted`: the mail scope was unchecked on the consent screen.
    ScopeNotGranted => ScopeNotGranted,
    /// `token_revoked`: the refresh token was revoked or expired.
    TokenRevoked => TokenRevoked,
    /// `invalid_client`: the OAuth client id or secret was refused.
    InvalidClient => InvalidClient,
    /// `not_connected`: the mailbox has no tokens yet.
    NotConnected => NotConnected,
    /// `provider_error`: the authorization server answered something unexpected.
    ProviderError => ProviderError,
    /// `provider_unavailable`: the authorization server is down (transient).
    ProviderUnavailable => ProviderUnavailable,
    /// `auth_rejected`: the mail server refused the credentials or token.
    AuthRejected => AuthRejected,
    /// `protocol_disabled`: the account may not use this protocol.
    ProtocolDisabled => ProtocolDisabled,
    /// `mechanism_unsupported`: the server lacks XOAUTH2/OAUTHBEARER.
    MechanismUnsupported => MechanismUnsupported,
    /// `network`: the server could not be reached (transient).
    Network => Network,
    /// `tls`: TLS failed.
    Tls => Tls,
    /// `timeout`: a step took longer than the connection timeout (transient).
    Timeout => Timeout,
    /// `server_unavailable`: the mail server reported a temporary failure.
    ServerUnavailable => ServerUnavailable,
    /// `protocol_error`: the server broke the protocol.
    ProtocolError => ProtocolError,
    /// `send_deferred`: the SMTP server deferred the message (transient).
    SendDeferred => SendDeferred,
    /// `send_rejected`: the SMTP server refused the message.
    SendRejected => SendRejected,
    /// `insecure_connection`: plaintext authentication was refused.
    InsecureConnection => InsecureConnection,
    /// `internal`: a bug in mailsync, including a caught panic.
    Internal => Internal,
}

impl fmt::Display for MailsyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.detail(), self.code())
    }
}

impl std::error::Error for MailsyncError {}

/// The single mapping from the core error.
impl From<mailsync::Error> for MailsyncError {
    fn from(err: mailsync::Error) -> Self {
        MailsyncError::build(
            err.code(),
            err.message().to_owned(),
            err.field().map(str::to_owned),
        )
    }
}

/// What a host callback (`MailboxEventListener.onEvent`) that throws
/// anything but a `MailsyncException` turns into; mapped to `internal`.
impl From<uniffi::UnexpectedUniFFICallbackError> for MailsyncError {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        MailsyncError::build(
            ErrorCode::Internal,
            format!("host callback failed: {}", err.reason),
            None,
        )
    }
}

fn panic_error(payload: Box<dyn Any + Send>) -> MailsyncError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    MailsyncError::build(
        ErrorCode::Internal,
        format!("panic in mailsync: {what}"),
        None,
    )
}

/// Runs a synchronous entry point: core errors are mapped, panics become `internal`.
pub(crate) fn guard<T>(f: impl FnOnce() -> mailsync::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(MailsyncError::from),
        Err(payload) => Err(panic_error(payload)),
    }
}

/// Runs an infallible synchronous entry point; a panic becomes `internal`.
pub(crate) fn guard_ok<T>(f: impl FnOnce() -> T) -> Result<T> {
    guard(|| Ok(f()))
}

/// The binding's one Tokio runtime. Every async entry point runs its core
/// future here as a task; the host only awaits the task's completion.
///
/// Not polling the core future on the host's thread matters: JVM threads
/// have 1 MiB stacks by default (`-Xss`), too small for the deep poll frames
/// of the mail protocol futures in debug builds (the JVM died with SIGSEGV).
/// Worker threads here get 8 MiB.
fn runtime() -> std::result::Result<&'static tokio::runtime::Runtime, MailsyncError> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("mailsync-worker")
                .thread_stack_size(8 * 1024 * 1024)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            MailsyncError::build(
                ErrorCode::Internal,
                format!("cannot start the mailsync runtime: {e}"),
                None,
            )
        })
}

/// Aborts the task when the host drops the call (coroutine cancelled).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an async entry point on the binding's runtime: core errors are
/// mapped, panics become `internal`, cancelling the host call aborts the task.
pub(crate) async fn guard_async<T: Send + 'static>(
    fut: impl Future<Output = mailsync::Result<T>> + Send + 'static,
) -> Result<T> {
    let runtime = runtime()?;
    let mut task = AbortOnDrop(runtime.spawn(AssertUnwindSafe(fut).catch_unwind()));
    match (&mut task.0).await {
        Ok(Ok(result)) => result.map_err(MailsyncError::from),
        Ok(Err(payload)) => Err(panic_error(payload)),
        Err(join) if join.is_panic() => Err(panic_error(join.into_panic())),
        Err(join) => Err(MailsyncError::build(
            ErrorCode::Internal,
            format!("mailsync task ended early: {join}"),
            None,
        )),
    }
}

/// Every stable error code, in documentation order (`mailsync::ErrorCode::ALL`).
#[uniffi::export]
pub fn error_codes() -> Vec<String> {
    ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// Raises the exception this binding uses for `code`, exactly as a real
/// failure with that code would arrive (for host code that tests its error
/// handling). An unknown code raises `validation` on field `code`.
#[uniffi::export]
pub fn raise_error_for_code(code: String) -> Result<()> {
    guard(|| match ErrorCode::parse(&code) {
        Some(known) => Err(mailsync::Error::new(
            known,
            format!("example '{}' error", known.as_str()),
        )),
        None => Err(mailsync::Error::validation(
            "code",
            format!("'{code}' is not a mailsync error code"),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_its_own_variant() {
        let mut names = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let err = MailsyncError::from(mailsync::Error::new(*code, "x"));
            assert_eq!(err.code(), code.as_str());
            let debug = format!("{err:?}");
            let variant = debug.split(' ').next().unwrap().to_owned();
            let expected: String = code
                .as_str()
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(variant, expected);
            assert!(names.insert(variant));
        }
    }

    #[test]
    fn panics_become_internal() {
        let err = guard::<()>(|| panic!("boom")).unwrap_err();
        assert_eq!(err.code(), "internal");
        assert!(err.detail().contains("boom"));
    }
}
