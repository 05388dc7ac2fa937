//! `MailSync` (awaitables) and `blocking.MailSync` (plain calls), generated
//! from one list of operations so the two never drift, plus `SealKey`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::check::{TestOptions, TestReport};
use crate::convert;
use crate::errors::{guard, guard_py};
use crate::events::PyEventListener;
use crate::mailbox::{Mailbox, MailboxSpec};
use crate::oauth::{AccessToken, ConsentRequest, TokenInfo};
use crate::profile::ServerProfile;
use crate::runtime::{Mode, run};
use crate::settings::Settings;

/// A 256-bit key that seals secrets at rest. Never printed.
#[pyclass(module = "mailsync", frozen, from_py_object)]
#[derive(Clone)]
pub struct SealKey {
    pub inner: mailsync::SealKey,
}

#[pymethods]
impl SealKey {
    /// A fresh random key.
    #[staticmethod]
    fn generate() -> PyResult<SealKey> {
        guard(|| {
            Ok(SealKey {
                inner: mailsync::SealKey::generate()?,
            })
        })
    }

    /// A key from exactly 32 bytes (e.g. from a KMS or keyring); other
    /// lengths raise ValidationError (field `seal_key`).
    #[staticmethod]
    fn from_bytes(data: &Bound<'_, PyBytes>) -> PyResult<SealKey> {
        guard(|| {
            Ok(SealKey {
                inner: mailsync::SealKey::from_bytes(data.as_bytes())?,
            })
        })
    }

    /// Reads a key file (32 raw bytes); raises StoreError if unreadable.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<SealKey> {
        guard(|| {
            Ok(SealKey {
                inner: mailsync::SealKey::from_file(&path)?,
            })
        })
    }

    /// Reads the key file, or creates it (mode 0600) with a new random key.
    #[staticmethod]
    fn load_or_create(path: PathBuf) -> PyResult<SealKey> {
        guard(|| {
            Ok(SealKey {
                inner: mailsync::SealKey::load_or_create(&path)?,
            })
        })
    }

    fn __repr__(&self) -> &'static str {
        "SealKey(<redacted>)"
    }
}

fn wrap_profiles(list: Vec<mailsync::model::ServerProfile>) -> Vec<ServerProfile> {
    list.into_iter()
        .map(|inner| ServerProfile { inner })
        .collect()
}

fn wrap_mailboxes(list: Vec<mailsync::model::Mailbox>) -> Vec<Mailbox> {
    list.into_iter().map(|inner| Mailbox { inner }).collect()
}

/// Generates the operations of one `MailSync` flavour. Every method clones
/// the core handle (cheap, shared store) into a `Send + 'static` future.
macro_rules! mailsync_class {
    ($class:ident, $name:literal, $module:literal, $mode:expr, $doc:literal, $ret:literal) => {
        #[doc = $doc]
        #[pyclass(module = $module, name = $name, frozen)]
        pub struct $class {
            inner: mailsync::MailSync,
            /// The Python side of the core's current event listener, so that
            /// `settings()` can hand the callable back.
            listener: Mutex<Option<Arc<PyEventListener>>>,
        }

        impl $class {
            fn wrap(inner: mailsync::MailSync, listener: Option<Arc<PyEventListener>>) -> $class {
                $class {
                    inner,
                    listener: Mutex::new(listener),
                }
            }
        }

        #[pymethods]
        impl $class {
            /// Opens (or creates) the SQLite store at `path`, with the seal key
            /// kept in `<path>.key` (created with mode 0600 if missing).
            #[doc = $ret]
            #[staticmethod]
            fn open_sqlite(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
                run(py, $mode, async move {
                    mailsync::MailSync::open_sqlite(path)
                        .await
                        .map(|inner| $class::wrap(inner, None))
                })
            }

            /// Opens (or creates) the SQLite store at `path` with a key supplied by the host.
            #[doc = $ret]
            #[staticmethod]
            fn open_sqlite_with_key(
                py: Python<'_>,
                path: PathBuf,
                key: SealKey,
            ) -> PyResult<Bound<'_, PyAny>> {
                run(py, $mode, async move {
                    mailsync::MailSync::open_sqlite_with_key(path, key.inner)
                        .await
                        .map(|inner| $class::wrap(inner, None))
                })
            }

            /// An in-memory store (nothing persists). Returns immediately.
            #[staticmethod]
            fn in_memory() -> PyResult<$class> {
                guard(|| Ok($class::wrap(mailsync::MailSync::in_memory(), None)))
            }

            /// Validates and stores a new profile; returns the stored profile.
            /// If it is marked default, the previous default stops being one.
            #[doc = $ret]
            fn create_profile<'py>(
                &self,
                py: Python<'py>,
                profile: ServerProfile,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.create_profile(profile.inner)
                        .await
                        .map(|inner| ServerProfile { inner })
                })
            }

            /// Validates and replaces a profile; lowering the capacity below the
            /// number of mailboxes it holds raises ValidationError.
            #[doc = $ret]
            fn update_profile<'py>(
                &self,
                py: Python<'py>,
                profile: ServerProfile,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.update_profile(profile.inner)
                        .await
                        .map(|inner| ServerProfile { inner })
                })
            }

            /// A profile by id; NotFoundError if it does not exist.
            #[doc = $ret]
            fn get_profile<'py>(
                &self,
                py: Python<'py>,
                profile_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::profile_id(profile_id))?;
                run(py, $mode, async move {
                    sync.get_profile(&id)
                        .await
                        .map(|inner| ServerProfile { inner })
                })
            }

            /// A profile by id or by name (case-insensitive); NotFoundError if none.
            #[doc = $ret]
            fn find_profile<'py>(
                &self,
                py: Python<'py>,
                id_or_name: String,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.find_profile(&id_or_name)
                        .await
                        .map(|inner| ServerProfile { inner })
                })
            }

            /// All profiles, ordered by name.
            #[doc = $ret]
            fn list_profiles<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.list_profiles().await.map(wrap_profiles)
                })
            }

            /// The default profile for new mailboxes, or None.
            #[doc = $ret]
            fn default_profile<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.default_profile()
                        .await
                        .map(|p| p.map(|inner| ServerProfile { inner }))
                })
            }

            /// Makes a profile the default for new mailboxes (replacing the previous one).
            #[doc = $ret]
            fn set_default_profile<'py>(
                &self,
                py: Python<'py>,
                profile_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::profile_id(profile_id))?;
                run(py, $mode, async move {
                    sync.set_default_profile(&id)
                        .await
                        .map(|inner| ServerProfile { inner })
                })
            }

            /// Deletes a profile; ProfileInUseError while it has mailboxes.
            #[doc = $ret]
            fn delete_profile<'py>(
                &self,
                py: Python<'py>,
                profile_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::profile_id(profile_id))?;
                run(py, $mode, async move { sync.delete_profile(&id).await })
            }

            /// Creates a mailbox on the spec's profile or the default profile.
            /// CapacityExceededError when the profile is full (unless spill-over
            /// is allowed and a sibling has room), NotATestUserError for an
            /// External + Testing app and an address that is not a test user.
            #[doc = $ret]
            fn create_mailbox<'py>(
                &self,
                py: Python<'py>,
                spec: MailboxSpec,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.create_mailbox(spec.inner)
                        .await
                        .map(|inner| Mailbox { inner })
                })
            }

            /// A mailbox by id; NotFoundError if it does not exist.
            #[doc = $ret]
            fn get_mailbox<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.get_mailbox(&id).await.map(|inner| Mailbox { inner })
                })
            }

            /// A mailbox by id or email address; NotFoundError if none.
            #[doc = $ret]
            fn find_mailbox<'py>(
                &self,
                py: Python<'py>,
                id_or_email: String,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.find_mailbox(&id_or_email)
                        .await
                        .map(|inner| Mailbox { inner })
                })
            }

            /// Mailboxes, all or those of one profile, ordered by address.
            #[doc = $ret]
            #[pyo3(signature = (profile_id=None))]
            fn list_mailboxes<'py>(
                &self,
                py: Python<'py>,
                profile_id: Option<&str>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = profile_id
                    .map(|p| guard(|| convert::profile_id(p)))
                    .transpose()?;
                run(py, $mode, async move {
                    sync.list_mailboxes(id.as_ref()).await.map(wrap_mailboxes)
                })
            }

            /// Validates and replaces a mailbox (capacity applies if its profile changed).
            #[doc = $ret]
            fn update_mailbox<'py>(
                &self,
                py: Python<'py>,
                mailbox: Mailbox,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.update_mailbox(mailbox.inner)
                        .await
                        .map(|inner| Mailbox { inner })
                })
            }

            /// Moves a mailbox to another profile (capacity checked).
            #[doc = $ret]
            fn assign_profile<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
                profile_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let mailbox = guard(|| convert::mailbox_id(mailbox_id))?;
                let profile = guard(|| convert::profile_id(profile_id))?;
                run(py, $mode, async move {
                    sync.assign_profile(&mailbox, &profile)
                        .await
                        .map(|inner| Mailbox { inner })
                })
            }

            /// Deletes a mailbox; NotFoundError if it does not exist.
            #[doc = $ret]
            fn delete_mailbox<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move { sync.delete_mailbox(&id).await })
            }

            /// Like `open_sqlite`, with `Settings` (extra root certificates,
            /// Google issuer override, refresh timing, event listener, ...).
            /// Unusable settings (e.g. a PEM without certificates) raise
            /// ValidationError.
            #[doc = $ret]
            #[staticmethod]
            fn open_sqlite_with(
                py: Python<'_>,
                path: PathBuf,
                settings: Settings,
            ) -> PyResult<Bound<'_, PyAny>> {
                let listener = settings.listener.clone();
                let core = settings.to_core();
                run(py, $mode, async move {
                    mailsync::MailSync::open_sqlite_with(path, core)
                        .await
                        .map(|inner| $class::wrap(inner, listener))
                })
            }

            /// Like `open_sqlite_with_key`, with `Settings`. Unusable settings
            /// raise ValidationError.
            #[doc = $ret]
            #[staticmethod]
            fn open_sqlite_with_key_and_settings(
                py: Python<'_>,
                path: PathBuf,
                key: SealKey,
                settings: Settings,
            ) -> PyResult<Bound<'_, PyAny>> {
                let listener = settings.listener.clone();
                let core = settings.to_core();
                run(py, $mode, async move {
                    mailsync::MailSync::open_sqlite_with_key_and_settings(path, key.inner, core)
                        .await
                        .map(|inner| $class::wrap(inner, listener))
                })
            }

            /// Like `in_memory`, with `Settings`. Returns immediately; unusable
            /// settings raise ValidationError.
            #[staticmethod]
            fn in_memory_with(settings: Settings) -> PyResult<$class> {
                let listener = settings.listener.clone();
                guard(|| {
                    mailsync::MailSync::in_memory_with(settings.to_core())
                        .map(|inner| $class::wrap(inner, listener))
                })
            }

            /// The settings in effect (with the current event listener).
            /// Returns immediately.
            fn settings(&self) -> PyResult<Settings> {
                guard_py(|| {
                    let mut inner = self.inner.settings().clone();
                    inner.event_listener = None;
                    let listener = self
                        .listener
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    Ok(Settings { inner, listener })
                })
            }

            /// Replaces the connection event listener: a callable taking one
            /// `MailboxEvent`, or None to remove it. It is called on a runtime
            /// thread, before the operation that caused the event returns;
            /// what it raises goes to `sys.unraisablehook`. Returns immediately.
            fn set_event_listener(&self, listener: Option<Bound<'_, PyAny>>) -> PyResult<()> {
                guard_py(|| {
                    let listener = PyEventListener::from_callable(listener)?;
                    self.inner.set_event_listener(
                        listener
                            .clone()
                            .map(|l| l as Arc<dyn mailsync::oauth::MailboxEventListener>),
                    );
                    *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = listener;
                    Ok(())
                })
            }

            /// Closes the store cleanly (SQLite: waits for connections and
            /// checkpoints the write-ahead log). Use it before the process exits.
            #[doc = $ret]
            fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.close().await;
                    Ok(())
                })
            }

            /// Starts connecting a mailbox: returns the `ConsentRequest` whose
            /// URL its owner opens. ValidationError if the mailbox has no OAuth
            /// profile or the profile lacks a client id, secret or redirect URI;
            /// NotATestUserError for an External + Testing app and an address that
            /// is not a test user. The mailbox becomes "awaiting_consent".
            #[doc = $ret]
            fn connect<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.connect(&id)
                        .await
                        .map(|inner| ConsentRequest { inner })
                })
            }

            /// Completes a connection from the provider's redirect (the full
            /// redirect URL or just its query); returns the connected mailbox and
            /// fires a "connected" event. Raises StateInvalidError,
            /// ConsentDeniedError, AdminPolicyError, OrgInternalError,
            /// ConsentFailedError, ScopeNotGrantedError, AccountMismatchError, ...
            #[doc = $ret]
            fn complete_connect<'py>(
                &self,
                py: Python<'py>,
                callback_url: String,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                run(py, $mode, async move {
                    sync.complete_connect(&callback_url)
                        .await
                        .map(|inner| Mailbox { inner })
                })
            }

            /// A valid `AccessToken` for the mailbox, refreshed ahead of expiry
            /// (once per expiry across tasks and processes). NotConnectedError
            /// without tokens, TokenRevokedError when the grant is gone.
            #[doc = $ret]
            fn access_token<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.access_token(&id)
                        .await
                        .map(|inner| AccessToken { inner })
                })
            }

            /// A new `AccessToken` to replace `rejected` (an `AccessToken` from
            /// this library that a mail server refused or ended a session for
            /// before its expiry). Refreshes unless another caller already
            /// replaced `rejected`, in which case the stored, newer token is
            /// returned without asking the provider; single-flight like
            /// `access_token`, with the same errors (TokenRevokedError when the
            /// grant is gone).
            #[doc = $ret]
            fn refresh_access_token<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
                rejected: PyRef<'py, AccessToken>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                let rejected = rejected.inner.token.clone();
                run(py, $mode, async move {
                    sync.refresh_access_token(&id, &rejected)
                        .await
                        .map(|inner| AccessToken { inner })
                })
            }

            /// What is stored for the mailbox, without secrets (`TokenInfo`), or None.
            #[doc = $ret]
            fn token_info<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.token_info(&id)
                        .await
                        .map(|t| t.map(|inner| TokenInfo { inner }))
                })
            }

            /// Revokes the grant, deletes the tokens and any pending consent,
            /// sets the mailbox to "not_connected" and fires a "disconnected"
            /// event; returns the mailbox. Idempotent. ProviderUnavailableError
            /// (tokens kept) when the provider cannot be reached.
            #[doc = $ret]
            fn disconnect<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.disconnect(&id).await.map(|inner| Mailbox { inner })
                })
            }

            /// Tests the mailbox's incoming and outgoing settings step by step and
            /// enables the directions that pass; returns the `TestReport`. A
            /// failing check is reported (diagnosis with code and step), not raised.
            #[doc = $ret]
            fn test_and_enable<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.test_and_enable(&id)
                        .await
                        .map(|inner| TestReport { inner })
                })
            }

            /// `test_and_enable` with `TestOptions` (e.g. send a test message).
            #[doc = $ret]
            fn test_and_enable_with<'py>(
                &self,
                py: Python<'py>,
                mailbox_id: &str,
                options: TestOptions,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::mailbox_id(mailbox_id))?;
                run(py, $mode, async move {
                    sync.test_and_enable_with(&id, &options.inner)
                        .await
                        .map(|inner| TestReport { inner })
                })
            }

            /// Tests and enables every mailbox of a profile (at most the profile's
            /// max_concurrent_connections at a time); reports in address order.
            /// `options` defaults to `TestOptions()`.
            #[doc = $ret]
            #[pyo3(signature = (profile_id, options=None))]
            fn test_all_mailboxes<'py>(
                &self,
                py: Python<'py>,
                profile_id: &str,
                options: Option<TestOptions>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let sync = self.inner.clone();
                let id = guard(|| convert::profile_id(profile_id))?;
                let options = options.map(|o| o.inner).unwrap_or_default();
                run(py, $mode, async move {
                    sync.test_all_mailboxes(&id, &options).await.map(|reports| {
                        reports
                            .into_iter()
                            .map(|inner| TestReport { inner })
                            .collect::<Vec<_>>()
                    })
                })
            }

            fn __repr__(&self) -> &'static str {
                concat!($module, ".", $name, "(...)")
            }
        }
    };
}

mailsync_class!(
    MailSync,
    "MailSync",
    "mailsync",
    Mode::Async,
    "The library's entry point: a store plus the operations on it. Every operation returns an awaitable; call it from a running asyncio event loop. Use `mailsync.blocking.MailSync` in scripts without asyncio.",
    "\nReturns an awaitable."
);

mailsync_class!(
    BlockingMailSync,
    "MailSync",
    "mailsync.blocking",
    Mode::Blocking,
    "The blocking flavour of `mailsync.MailSync` for scripts: same operations, each runs to completion on the binding's runtime (the GIL is released while waiting). Do not call it from inside a running event loop's thread if that would stall other tasks.",
    "\nBlocks until done."
);
