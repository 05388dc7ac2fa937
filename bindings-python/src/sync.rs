//! The handle objects: `MailSync` and its areas in two flavours (asyncio:
//! every operation returns an awaitable; blocking: plain calls with the GIL
//! released), `StoreLocation`, `SealKey` and `Subscription`. The area
//! methods are generated from `mailsync::for_each_operation!`; events reach
//! the callback through host.rs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mailsync::model::MailboxId;
use mailsync::options::Options;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3_stub_gen::derive::{gen_stub_pyclass, gen_stub_pymethods};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::errors::to_py_err;
use crate::host::deliver_each;
use crate::runtime::{Awaitable, run_async, run_blocking};

fn key(make: impl FnOnce() -> mailsync::Result<mailsync::SealKey>) -> PyResult<SealKey> {
    mailsync::ffi::guard(make).map(SealKey).map_err(to_py_err)
}

/// A 256-bit key that seals secrets at rest. It never shows its bytes.
#[gen_stub_pyclass]
#[pyclass(module = "mailsync", frozen)]
pub struct SealKey(mailsync::SealKey);

#[gen_stub_pymethods]
#[pymethods]
impl SealKey {
    /// A fresh random key.
    #[staticmethod]
    fn generate() -> PyResult<SealKey> {
        key(mailsync::SealKey::generate)
    }

    /// A key from exactly 32 bytes (e.g. from a KMS or keyring); other
    /// lengths raise ValidationError (field `seal_key`).
    #[staticmethod]
    fn from_bytes(data: PyBackedBytes) -> PyResult<SealKey> {
        key(|| mailsync::SealKey::from_bytes(&data))
    }

    /// Reads a key file (32 raw bytes); StoreError if unreadable.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<SealKey> {
        key(|| mailsync::SealKey::from_file(path))
    }

    /// Reads the key file, or creates it (mode 0600) with a new random key.
    #[staticmethod]
    fn load_or_create(path: PathBuf) -> PyResult<SealKey> {
        key(|| mailsync::SealKey::load_or_create(path))
    }

    fn __repr__(&self) -> &'static str {
        "SealKey(<redacted>)"
    }
}

/// Where a `MailSync` keeps its records: `StoreLocation.memory()`,
/// `StoreLocation.sqlite(path, key=None)` or `StoreLocation.postgres(url, key)`.
#[gen_stub_pyclass]
#[pyclass(module = "mailsync", frozen)]
pub struct StoreLocation(mailsync::StoreConfig);

#[gen_stub_pymethods]
#[pymethods]
impl StoreLocation {
    /// In memory: nothing persists.
    #[staticmethod]
    fn memory() -> StoreLocation {
        StoreLocation(mailsync::StoreConfig::memory())
    }

    /// A SQLite file, created if missing. Without a key, the key file
    /// `<path>.key` next to it (created with mode 0600 for a new database).
    #[staticmethod]
    #[pyo3(signature = (path, key=None))]
    fn sqlite(path: PathBuf, key: Option<PyRef<'_, SealKey>>) -> StoreLocation {
        StoreLocation(match key {
            Some(key) => mailsync::StoreConfig::sqlite_with_key(path, key.0.clone()),
            None => mailsync::StoreConfig::sqlite(path),
        })
    }

    /// A PostgreSQL database that many workers share
    /// (`postgres://user:password@host:port/database`), sealing with `key`,
    /// which every worker must share; `pool_size` connections (default 10).
    /// Its tables are created or migrated on open, after the key check.
    #[staticmethod]
    #[pyo3(signature = (url, key, pool_size=None))]
    fn postgres(url: String, key: PyRef<'_, SealKey>, pool_size: Option<u32>) -> StoreLocation {
        let mut config = mailsync::PostgresConfig::new(url, key.0.clone());
        if let Some(n) = pool_size {
            config = config.pool_size(n);
        }
        StoreLocation(mailsync::StoreConfig::Postgres(config))
    }

    fn __repr__(&self) -> String {
        match &self.0 {
            mailsync::StoreConfig::Memory => "StoreLocation.memory()".to_owned(),
            mailsync::StoreConfig::Postgres(config) => {
                format!("StoreLocation.postgres({config:?}, key=SealKey(<redacted>))")
            }
            mailsync::StoreConfig::Sqlite { path, key } => format!(
                "StoreLocation.sqlite({:?}{})",
                path.display().to_string(),
                if key.is_some() {
                    ", key=SealKey(<redacted>)"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A running subscription: `cancel()` (or closing the `MailSync`) ends it.
#[gen_stub_pyclass]
#[pyclass(module = "mailsync", frozen)]
pub struct Subscription(pub(crate) AbortHandle);

#[gen_stub_pymethods]
#[pymethods]
impl Subscription {
    /// Stops delivering events (idempotent).
    fn cancel(&self) {
        self.0.abort();
    }
}

/// The running loop, for the asyncio flavour's callbacks.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    let asyncio = py.import(intern!(py, "asyncio"))?;
    Ok(Some(
        asyncio
            .call_method0(intern!(py, "get_running_loop"))?
            .unbind(),
    ))
}

pub(crate) fn no_loop(_: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    Ok(None)
}

/// The blocking flavour returns the value itself.
pub(crate) type Plain<T> = T;

/// One flavour: `MailSync` and its three areas.
macro_rules! flavour {
    ($module:ident, $run:ident, $out:ident, $event_loop:ident,
     $sync:literal, $directory:literal, $connections:literal, $checks:literal, $doc:literal) => {
        pub mod $module {
            use super::*;

            #[doc = $doc]
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $sync, frozen)]
            pub struct MailSync {
                pub(crate) inner: mailsync::MailSync,
                /// Subscriptions and started engines: `close()` ends them.
                pub(crate) subscriptions: Arc<Mutex<Vec<AbortHandle>>>,
            }

            /// Profiles and mailboxes.
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $directory, frozen)]
            pub struct Directory(pub mailsync::Directory);

            /// Consent, grants and access tokens.
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $connections, frozen)]
            pub struct Connections(pub mailsync::Connections);

            /// Test & Enable.
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $checks, frozen)]
            pub struct Checks(pub mailsync::Checks);

            #[gen_stub_pymethods]
            #[pymethods]
            impl MailSync {
                /// Opens a store with options (`default_options()` to start
                /// from); the options are checked first.
                #[staticmethod]
                fn open(py: Python<'_>, store: PyRef<'_, StoreLocation>, options: Options) -> PyResult<$out<MailSync>> {
                    let store = store.0.clone();
                    $run(py, async move {
                        // Not `Send` as the compiler sees it (sqlx's migrator):
                        // run it to completion on a blocking thread instead.
                        let open = move || Handle::current().block_on(mailsync::MailSync::open(store, options));
                        let inner = tokio::task::spawn_blocking(open).await.map_err(|e| {
                            mailsync::Error::new(mailsync::ErrorCode::Internal, format!("opening the store failed: {e}"))
                        })??;
                        Ok(MailSync { inner, subscriptions: Default::default() })
                    })
                }

                /// Profiles and mailboxes.
                #[getter]
                fn directory(&self) -> Directory {
                    Directory(self.inner.directory())
                }

                /// Consent, grants and access tokens.
                #[getter]
                fn connections(&self) -> Connections {
                    Connections(self.inner.connections())
                }

                /// Test & Enable.
                #[getter]
                fn checks(&self) -> Checks {
                    Checks(self.inner.checks())
                }

                /// The options in effect.
                #[getter]
                fn options(&self) -> Options {
                    self.inner.options().clone()
                }

                /// Calls `callback(event)` for every `MailboxEvent` of one
                /// mailbox (or of all, with None): the current state first,
                /// then each change; one at a time, in order, outside every
                /// lock. The callback may be a coroutine function.
                fn subscribe(&self, py: Python<'_>, mailbox: Option<MailboxId>,
                    #[gen_stub(override_type(type_repr = "typing.Callable[[MailboxEvent], typing.Any]", imports = ("typing")))]
                    callback: Bound<'_, PyAny>) -> PyResult<$out<Subscription>> {
                    if !callback.is_callable() {
                        return Err(PyTypeError::new_err("callback must be callable (taking one MailboxEvent)"));
                    }
                    let event_loop = Arc::new($event_loop(py)?);
                    let callback = Arc::new(callback.unbind());
                    let (sync, subscriptions) = (self.inner.clone(), self.subscriptions.clone());
                    $run(py, async move {
                        let subscription = sync.subscribe(mailbox).await?;
                        let task = tokio::spawn(deliver_each(subscription.into_stream(), callback, event_loop)).abort_handle();
                        subscriptions.lock().unwrap_or_else(|e| e.into_inner()).push(task.clone());
                        Ok(Subscription(task))
                    })
                }

                /// Ends the subscriptions and closes the store (call before the
                /// program ends).
                fn close(&self, py: Python<'_>) -> PyResult<$out<()>> {
                    for task in self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                        task.abort();
                    }
                    let sync = self.inner.clone();
                    $run(py, async move {
                        sync.close().await;
                        Ok(())
                    })
                }
            }
        }
    };
}

flavour!(
    aio,
    run_async,
    Awaitable,
    running_loop,
    "MailSync",
    "Directory",
    "Connections",
    "Checks",
    "The library's entry point (asyncio): `await MailSync.open(store, options)`; every operation returns an awaitable."
);
flavour!(
    blocking,
    run_blocking,
    Plain,
    no_loop,
    "BlockingMailSync",
    "BlockingDirectory",
    "BlockingConnections",
    "BlockingChecks",
    "The blocking twin of `MailSync` (`mailsync.blocking.MailSync`): the same operations as plain calls; the GIL is released while they run."
);

/// The area methods of both flavours, one per operation.
macro_rules! area_methods {
    ($($area:ident $name:ident ($($kind:ident $arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[gen_stub_pymethods]
            #[pymethods]
            impl aio::$area {
                fn $name(&self, py: Python<'_>, $($arg: $ty),*) -> PyResult<Awaitable<$ret>> {
                    let area = self.0.clone();
                    run_async(py, async move { area.$name($(mailsync::ffi_arg!($kind $arg)),*).await })
                }
            }

            #[gen_stub_pymethods]
            #[pymethods]
            impl blocking::$area {
                fn $name(&self, py: Python<'_>, $($arg: $ty),*) -> PyResult<$ret> {
                    let area = self.0.clone();
                    run_blocking(py, async move { area.$name($(mailsync::ffi_arg!($kind $arg)),*).await })
                }
            }
        )*
    };
}

mailsync::for_each_operation!(area_methods);
