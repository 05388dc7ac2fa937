//! Kotlin and Swift bindings for `mailsync`, generated with UniFFI.
//!
//! The records, enums, the error type and `SecretValue` are defined once,
//! in the `mailsync` crate (feature `uniffi`). This crate holds only what a
//! host needs a handle for — [`MailSync`], its areas [`Directory`],
//! [`Connections`] and [`Checks`], [`SealKey`], a [`Subscription`] — plus
//! the runtime every call runs on and the adapter of the host's
//! [`EventListener`]. The area methods and the plain functions are
//! generated from the operation list in `mailsync::ffi::api`.
//!
//! Every async call runs as a task on this crate's multi-threaded Tokio
//! runtime (worker stacks 8 MiB), never on a host thread (the JVM's are
//! 1 MiB); a cancelled Kotlin coroutine aborts its task. The listener runs
//! on the runtime's blocking threads, one event at a time per subscription;
//! an exception it throws arrives as an error value and is dropped with
//! its event. Panics become `MailsyncException.Internal`.

uniffi::setup_scaffolding!();
mailsync::uniffi_reexport_scaffolding!();

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use mailsync::ErrorCode;
use mailsync::MailsyncError;
use mailsync::events::MailboxEvent;
use mailsync::model::MailboxId;
use mailsync::options::Options;

/// Result of every fallible exported function.
pub type Result<T, E = MailsyncError> = std::result::Result<T, E>;

fn internal(message: String) -> MailsyncError {
    mailsync::Error::new(ErrorCode::Internal, message).into()
}

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
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
        .map_err(|e| internal(format!("cannot start the mailsync runtime: {e}")))
}

/// Aborts the task when the awaiting coroutine is cancelled.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a core future on the binding's runtime; panics become `internal`.
async fn run<T: Send + 'static>(
    fut: impl Future<Output = mailsync::Result<T>> + Send + 'static,
) -> Result<T> {
    let mut task = AbortOnDrop(runtime()?.spawn(mailsync::ffi::guard_async(fut)));
    match (&mut task.0).await {
        Ok(result) => result.map_err(MailsyncError::from),
        Err(join) => Err(internal(format!("mailsync task ended early: {join}"))),
    }
}

/// A 256-bit key that seals secrets at rest. Never shown.
#[derive(uniffi::Object)]
pub struct SealKey(mailsync::SealKey);

#[uniffi::export]
impl SealKey {
    /// A fresh random key.
    #[uniffi::constructor]
    pub fn generate() -> Result<Arc<Self>> {
        Ok(Arc::new(SealKey(mailsync::SealKey::generate()?)))
    }

    /// A key from exactly 32 bytes (e.g. from a KMS or keyring).
    #[uniffi::constructor]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Arc<Self>> {
        Ok(Arc::new(SealKey(mailsync::SealKey::from_bytes(&bytes)?)))
    }

    /// Reads a key file (32 raw bytes).
    #[uniffi::constructor]
    pub fn from_file(path: String) -> Result<Arc<Self>> {
        Ok(Arc::new(SealKey(mailsync::SealKey::from_file(path)?)))
    }
}

/// Where a [`MailSync`] keeps its records.
#[derive(uniffi::Enum)]
pub enum StoreLocation {
    /// In memory: nothing persists.
    Memory,
    /// A SQLite file; without a key, the key file `<path>.key` next to it.
    Sqlite {
        /// The database file.
        path: String,
        /// The seal key, or none for the key file.
        key: Option<Arc<SealKey>>,
    },
}

/// The library's entry point: opens the store and hands out the areas.
#[derive(uniffi::Object)]
pub struct MailSync(mailsync::MailSync);

/// Profiles and mailboxes.
#[derive(uniffi::Object)]
pub struct Directory(mailsync::Directory);

/// Consent, grants and access tokens.
#[derive(uniffi::Object)]
pub struct Connections(mailsync::Connections);

/// Test & Enable.
#[derive(uniffi::Object)]
pub struct Checks(mailsync::Checks);

/// Receives [`MailboxEvent`]s, in order, on a library thread (one event at
/// a time per subscription). It may block and call back into the library,
/// for the same mailbox too. An exception it throws loses that event only.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: MailboxEvent) -> Result<(), ListenerError>;
}

/// An exception an [`EventListener`] threw, as Rust receives it: a value,
/// never a panic. (Its own type rather than `MailsyncError`: UniFFI 0.32's
/// Kotlin output does not compile for a callback error from another crate.)
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    /// The listener threw.
    #[error("the event listener threw: {reason}")]
    Failed {
        /// What it threw.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ListenerError::Failed { reason: e.reason }
    }
}

/// A running subscription; [`Subscription::cancel`] (or closing the
/// [`MailSync`]) ends it.
#[derive(uniffi::Object)]
pub struct Subscription(Mutex<Option<tokio::task::JoinHandle<()>>>);

#[uniffi::export]
impl Subscription {
    /// Stops delivering events.
    pub fn cancel(&self) {
        if let Some(task) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[uniffi::export]
impl MailSync {
    /// Opens a store with options (see `mailsync::MailSync::open`).
    #[uniffi::constructor]
    pub async fn open(store: StoreLocation, options: Options) -> Result<Arc<Self>> {
        let store = match store {
            StoreLocation::Memory => mailsync::StoreConfig::memory(),
            StoreLocation::Sqlite { path, key: None } => mailsync::StoreConfig::sqlite(path),
            StoreLocation::Sqlite {
                path,
                key: Some(key),
            } => mailsync::StoreConfig::sqlite_with_key(path, key.0.clone()),
        };
        let sync = run(mailsync::MailSync::open(store, options)).await?;
        Ok(Arc::new(MailSync(sync)))
    }

    /// The options it was opened with.
    pub fn options(&self) -> Options {
        self.0.options().clone()
    }

    /// Profiles and mailboxes.
    pub fn directory(&self) -> Arc<Directory> {
        Arc::new(Directory(self.0.directory()))
    }

    /// Consent, grants and access tokens.
    pub fn connections(&self) -> Arc<Connections> {
        Arc::new(Connections(self.0.connections()))
    }

    /// Test & Enable.
    pub fn checks(&self) -> Arc<Checks> {
        Arc::new(Checks(self.0.checks()))
    }

    /// Delivers events about one mailbox (or all, with none) to `listener`:
    /// the current state first, then each change.
    pub async fn subscribe(
        &self,
        mailbox: Option<MailboxId>,
        listener: Arc<dyn EventListener>,
    ) -> Result<Arc<Subscription>> {
        let sync = self.0.clone();
        let mut subscription = run(async move { sync.subscribe(mailbox).await }).await?;
        let task = runtime()?.spawn(async move {
            while let Some(event) = subscription.next().await {
                let listener = listener.clone();
                // On a blocking thread, never a runtime worker: a listener
                // that waits for a call back into the library (for the same
                // mailbox too) must not hold up the worker that call needs.
                // Awaited before the next event, so the order is kept. A
                // listener that throws (a panic here) loses its event, not
                // the subscription.
                let delivered = tokio::task::spawn_blocking(move || {
                    mailsync::ffi::guard(move || Ok(listener.on_event(event)))
                })
                .await;
                match delivered {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => tracing::warn!("the event listener failed: {e}"),
                    Ok(Err(e)) => tracing::warn!("the event listener failed: {e}"),
                    Err(e) => tracing::warn!("the event listener did not finish: {e}"),
                }
            }
        });
        Ok(Arc::new(Subscription(Mutex::new(Some(task)))))
    }

    /// Closes the store (call before the process exits).
    pub async fn close(&self) -> Result<()> {
        let sync = self.0.clone();
        run(async move {
            sync.close().await;
            Ok(())
        })
        .await
    }
}

macro_rules! area_methods {
    ($($area:ident $name:ident ($($kind:ident $arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[uniffi::export]
            impl $area {
                #[allow(missing_docs)]
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                    let area = self.0.clone();
                    run(async move { area.$name($(mailsync::ffi_arg!($kind $arg)),*).await }).await
                }
            }
        )*
    };
}

mailsync::for_each_operation!(area_methods);

macro_rules! functions {
    ($($name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[uniffi::export]
            #[allow(missing_docs)]
            pub fn $name($($arg: $ty),*) -> Result<$ret> {
                mailsync::ffi::guard(|| mailsync::ffi::api::$name($($arg),*)).map_err(Into::into)
            }
        )*
    };
}

mailsync::for_each_function!(functions);

/// Fails with the error a real failure with `code`, `message` and `field`
/// raises: for host code that tests its error handling.
#[uniffi::export]
pub fn raise_error(code: ErrorCode, message: String, field: Option<String>) -> Result<()> {
    let mut error = mailsync::Error::new(code, message);
    if let Some(field) = field {
        error.set_field(field);
    }
    Err(error.into())
}
