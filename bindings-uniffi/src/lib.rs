//! Kotlin and Swift bindings for `mailsync`, generated with UniFFI.
//!
//! The records, enums, the error type and `SecretValue` are defined once,
//! in the `mailsync` crate (feature `uniffi`). This crate holds only what a
//! host needs a handle for — [`MailSync`], its areas [`Directory`],
//! [`Connections`] and [`Checks`], [`SealKey`], a [`Subscription`], the
//! sync [`Engine`] and its [`EngineHandle`] — plus the runtime every call
//! runs on and the adapters of the host's [`EventListener`],
//! [`MessageSink`], [`Outbox`], [`ProgressListener`] and [`ReportListener`]. The area methods and the plain
//! functions are generated from the operation list in `mailsync::ffi::api`.
//!
//! Every async call runs as a task on this crate's multi-threaded Tokio
//! runtime (worker stacks 8 MiB), never on a host thread (the JVM's are
//! 1 MiB); a cancelled Kotlin coroutine aborts its task. Listeners and the
//! sink run on the runtime's blocking threads (listeners one event at a
//! time per subscription); an exception they throw arrives as an error
//! value (a listener's is dropped with its event, a sink's fails the cycle
//! with `sink_failed`). Panics become `MailsyncException.Internal`.

uniffi::setup_scaffolding!();
mailsync::uniffi_reexport_scaffolding!();

mod engine;

pub use engine::{
    Engine, EngineHandle, MessageSink, Outbox, ProgressListener, ReportListener, SinkError,
};

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures::{Stream, StreamExt};

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

pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
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
pub(crate) async fn run<T: Send + 'static>(
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

    /// Reads the key file, or creates it (mode 0600) with a fresh key if
    /// there is none; safe when several processes race to create it.
    #[uniffi::constructor]
    pub fn load_or_create(path: String) -> Result<Arc<Self>> {
        let key = mailsync::ffi::guard(|| mailsync::SealKey::load_or_create(path))?;
        Ok(Arc::new(SealKey(key)))
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
    /// A PostgreSQL database that many workers share; its tables are
    /// created or migrated on open, after the key check.
    Postgres {
        /// `postgres://user:password@host:port/database`.
        url: String,
        /// The seal key, the same for every worker.
        key: Arc<SealKey>,
        /// Connections kept open (none: 10).
        pool_size: Option<u32>,
    },
}

/// The library's entry point: opens the store and hands out the areas.
#[derive(uniffi::Object)]
pub struct MailSync {
    core: mailsync::MailSync,
    /// Started engines and progress subscriptions: closing the store ends them.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

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
        if let Some(task) = lock(&self.0).take() {
            task.abort();
        }
    }
}

/// Locks a mutex, also one a panic poisoned.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a task for [`MailSync::close`] to end (forgetting finished ones).
pub(crate) fn track(tasks: &Mutex<Vec<tokio::task::AbortHandle>>, task: tokio::task::AbortHandle) {
    let mut tasks = lock(tasks);
    tasks.retain(|t| !t.is_finished());
    tasks.push(task);
}

/// Hands each item to `deliver` on a blocking thread, never a runtime
/// worker: a listener that waits for a call back into the library (for the
/// same mailbox too) must not hold up the worker that call needs. Awaited
/// before the next item, so the order is kept. A listener that throws (or
/// panics) loses its item, not the subscription.
pub(crate) fn deliver_each<T: Send + 'static>(
    items: impl Stream<Item = T> + Send + 'static,
    deliver: impl Fn(T) -> Result<(), ListenerError> + Send + Sync + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let deliver = Arc::new(deliver);
    Ok(runtime()?.spawn(async move {
        let mut items = std::pin::pin!(items);
        while let Some(item) = items.next().await {
            let deliver = deliver.clone();
            let delivered = tokio::task::spawn_blocking(move || {
                mailsync::ffi::guard(move || Ok(deliver(item)))
            })
            .await;
            match delivered {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("the listener failed: {e}"),
                Ok(Err(e)) => tracing::warn!("the listener failed: {e}"),
                Err(e) => tracing::warn!("the listener did not finish: {e}"),
            }
        }
    }))
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
            StoreLocation::Postgres {
                url,
                key,
                pool_size,
            } => {
                let config = mailsync::PostgresConfig::new(url, key.0.clone());
                mailsync::StoreConfig::Postgres(match pool_size {
                    Some(n) => config.pool_size(n),
                    None => config,
                })
            }
        };
        let core = run(mailsync::MailSync::open(store, options)).await?;
        Ok(Arc::new(MailSync {
            core,
            tasks: Arc::default(),
        }))
    }

    /// The options it was opened with.
    pub fn options(&self) -> Options {
        self.core.options().clone()
    }

    /// Profiles and mailboxes.
    pub fn directory(&self) -> Arc<Directory> {
        Arc::new(Directory(self.core.directory()))
    }

    /// Consent, grants and access tokens.
    pub fn connections(&self) -> Arc<Connections> {
        Arc::new(Connections(self.core.connections()))
    }

    /// Test & Enable.
    pub fn checks(&self) -> Arc<Checks> {
        Arc::new(Checks(self.core.checks()))
    }

    /// Delivers events about one mailbox (or all, with none) to `listener`:
    /// the current state first, then each change.
    pub async fn subscribe(
        &self,
        mailbox: Option<MailboxId>,
        listener: Arc<dyn EventListener>,
    ) -> Result<Arc<Subscription>> {
        let sync = self.core.clone();
        let subscription = run(async move { sync.subscribe(mailbox).await }).await?;
        let events = futures::stream::unfold(subscription, |mut s| async move {
            s.next().await.map(|event| (event, s))
        });
        let task = deliver_each(events, move |event| listener.on_event(event))?;
        Ok(Arc::new(Subscription(Mutex::new(Some(task)))))
    }

    /// Closes the store (call before the process exits); started engines and
    /// progress subscriptions end.
    pub async fn close(&self) -> Result<()> {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let sync = self.core.clone();
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
