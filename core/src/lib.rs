//! # mailsync
//!
//! Gmail OAuth 2.0 server-side mail synchronization for CRMs, modelled on
//! Microsoft Dynamics 365 server-side synchronization.
//!
//! ## The lifecycle
//!
//! 1. **Admin, once per organization.** Register a *Web application* OAuth
//!    client with Google and describe it as an [`model::OAuthApp`]:
//!    [`OAuthApp::for_environment`](model::OAuthApp::for_environment) derives
//!    the JavaScript origin and the redirect URI
//!    `<environment URL>/_grid/cmds/dlg_gmailoauth.aspx`. Create a Gmail
//!    [`model::ServerProfile`] with it — endpoints are filled in
//!    (`imap.gmail.com:993` TLS, `smtp.gmail.com:587` STARTTLS) — and
//!    optionally make it the default for new mailboxes. One Gmail OAuth
//!    profile serves at most 100 mailboxes. ([`Directory`])
//! 2. **User, once per mailbox.** Create a [`model::Mailbox`] (it lands on
//!    the default profile), connect it to Gmail — consent in the browser,
//!    then the redirect back to the CRM ([`Connections`]) — then test and
//!    enable it ([`Checks`]).
//! 3. **Sync** (coming: the sync engine is not built yet). Today the
//!    library gives a valid access token at any time
//!    ([`Connections::access_token`]), refreshed once per expiry across
//!    tasks and processes; the engine that reads mail over IMAP/POP and
//!    sends it over SMTP will use it.
//!
//! Each mailbox's runtime state — its grant and each direction's status —
//! follows the state machine in [`lifecycle`]; changes are pushed to the
//! host through [`MailSync::subscribe`]. Every failure is an [`Error`] with
//! a stable [`ErrorCode`], the same in every language binding.
//!
//! ## Example
//!
//! ```
//! use mailsync::model::{MailboxSpec, OAuthApp, ServerProfile};
//! use mailsync::{ErrorCode, MailSync, Options, StoreConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! // The key file is created next to a new database (mode 0600).
//! let sync = MailSync::open(StoreConfig::sqlite(dir.path().join("mailsync.db")), Options::default()).await?;
//!
//! let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret")
//!     .for_environment("https://contoso.crm.example.com")?;
//! assert_eq!(app.redirect_uri(), Some("https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"));
//!
//! let directory = sync.directory();
//! let profile = directory
//!     .create_profile(ServerProfile::gmail("Gmail - sales", app).default_for_new_mailboxes())
//!     .await?;
//! assert_eq!(profile.incoming.endpoint.host, "imap.gmail.com");
//!
//! let mailbox = directory.create_mailbox(MailboxSpec::user("alice@gmail.com")).await?;
//! assert_eq!(mailbox.profile_id.as_ref(), Some(&profile.id));
//!
//! let duplicate = directory.create_mailbox(MailboxSpec::user("alice@gmail.com")).await.unwrap_err();
//! assert_eq!(duplicate.code(), ErrorCode::AlreadyExists);
//! sync.close().await;
//! # Ok::<(), mailsync::Error>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]
// pyo3's generated record constructors take one argument per field.
#![cfg_attr(feature = "python", allow(clippy::too_many_arguments))]

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!("mailsync");

pub mod checks;
pub mod clock;
pub mod connections;
pub mod directory;
pub mod error;
pub mod events;
pub mod ffi;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod lease;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod options;
pub mod store;
pub mod sync;

mod oauth;
mod state;

// The transports' reading API (UID FETCH, RETR, DELE, flags) serves the
// end-to-end tests today and the sync engine next.
#[cfg(not(feature = "test-support"))]
#[allow(dead_code)]
mod net;
#[cfg(feature = "test-support")]
pub mod net;
#[cfg(not(feature = "test-support"))]
#[allow(dead_code)]
mod sasl;
#[cfg(feature = "test-support")]
pub mod sasl;

pub use checks::Checks;
pub use clock::{Clock, ManualClock, SystemClock};
pub use connections::Connections;
pub use directory::Directory;
#[cfg(feature = "uniffi")]
pub use error::MailsyncError;
pub use error::{Error, ErrorCode, Result};
pub use events::{MailboxEvent, MailboxEventKind, Subscription};
pub use model::Timestamp;
pub use options::{Options, RetryPolicy};
pub use store::{MemoryStore, PostgresConfig, PostgresStore, SealKey, SqliteStore, Store};
pub use sync::{Engine, EngineOptions};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::MailboxId;

/// Where a [`MailSync`] keeps its records.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In memory: nothing persists (tests, short scripts).
    Memory,
    /// The embedded SQLite file. Without a key, the key lives in `<path>.key`
    /// (see [`default_key_path`]); with one, the host keeps it (a KMS, a
    /// keyring).
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The seal key, or `None` for the key file next to the database.
        key: Option<SealKey>,
    },
    /// A PostgreSQL database that many workers share (see
    /// [`store::PostgresStore`]). The host always supplies the key.
    Postgres(PostgresConfig),
}

impl StoreConfig {
    /// [`StoreConfig::Memory`].
    pub fn memory() -> StoreConfig {
        StoreConfig::Memory
    }

    /// A SQLite file with its key file next to it.
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig::Sqlite {
            path: path.into(),
            key: None,
        }
    }

    /// A SQLite file with a key the host supplies.
    pub fn sqlite_with_key(path: impl Into<PathBuf>, key: SealKey) -> StoreConfig {
        StoreConfig::Sqlite {
            path: path.into(),
            key: Some(key),
        }
    }

    /// A PostgreSQL database at `url` (`postgres://user:password@host/db`),
    /// sealing with `key`, with [`PostgresConfig::DEFAULT_POOL_SIZE`]
    /// connections; for another pool size use
    /// `StoreConfig::Postgres(PostgresConfig::new(url, key).pool_size(n))`.
    pub fn postgres(url: impl Into<String>, key: SealKey) -> StoreConfig {
        StoreConfig::Postgres(PostgresConfig::new(url, key))
    }
}

impl From<PostgresConfig> for StoreConfig {
    fn from(config: PostgresConfig) -> StoreConfig {
        StoreConfig::Postgres(config)
    }
}

/// The library's entry point: it opens and closes the store and hands out
/// the areas of work — [`Directory`] (profiles and mailboxes),
/// [`Connections`] (consent, grants, tokens) and [`Checks`] (Test &
/// Enable) — plus [`MailSync::subscribe`] for events.
///
/// Cheap to clone; clones share the store and the caches.
#[derive(Clone)]
pub struct MailSync {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) options: Options,
    pub(crate) oauth: oauth::Runtime,
    /// Serializes state changes of one mailbox in this process, so its
    /// events are published in the order they were stored.
    pub(crate) state_locks: Mutex<HashMap<MailboxId, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) events: tokio::sync::broadcast::Sender<MailboxEvent>,
    /// Names this instance as a lease holder.
    pub(crate) owner: String,
    /// Where time comes from.
    pub(crate) clock: Arc<dyn Clock>,
    /// The SQLite database's own key file (`<db>.key`), when the key lives
    /// there; [`MailSync::rotate_key`] replaces it.
    pub(crate) key_file: Option<PathBuf>,
}

impl std::fmt::Debug for MailSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSync")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// The key file used next to a SQLite database: `<db>.key`.
pub fn default_key_path(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".key");
    db_path.with_file_name(name)
}

/// The seal key of the database at `db_path`, kept in `<db>.key`.
///
/// A key is created only together with a new, empty database. A database
/// that holds data but whose key file is missing is refused
/// (`seal_key_mismatch`, nothing created or changed): a fresh key could
/// never open its secrets. A zero-byte database file next to an existing
/// key is refused too (`store`): it looks truncated, and opening it as a new
/// empty store would hide that.
pub(crate) fn default_key_for(db_path: &Path) -> Result<store::seal::LockedKeyFile> {
    let key_path = default_key_path(db_path);
    let db_len = || std::fs::metadata(db_path).map(|m| m.len()).ok();
    let wal_len = || {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(PathBuf::from(wal))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let locked = store::seal::lock_key_file(&key_path, || {
        if db_len().is_some_and(|n| n > 0) || wal_len() > 0 {
            return Err(Error::new(
                ErrorCode::SealKeyMismatch,
                format!(
                    "the key file {} of database {} is missing; restore it (a new key cannot open the \
                     database's secrets), or open the database with the key it was created with (nothing was changed)",
                    key_path.display(),
                    db_path.display()
                ),
            ));
        }
        Ok(())
    })?;
    // Under the lock nobody is creating the database, so an empty file
    // beside an existing key was truncated.
    if !locked.created && db_len() == Some(0) && wal_len() == 0 {
        return Err(Error::new(
            ErrorCode::Store,
            format!(
                "database {} is an empty file but its key file {} exists; the database may have been \
                 truncated — restore it from a backup, or delete both files to start over (nothing was changed)",
                db_path.display(),
                key_path.display()
            ),
        ));
    }
    Ok(locked)
}

/// Where a key rotation writes the new key before it commits: `<key>.new`.
pub(crate) fn pending_key_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Renames the new key file over the old one and makes the rename durable.
fn finish_key_file_rotation(pending: &Path, key_path: &Path) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::new(
            ErrorCode::Store,
            format!(
                "the store was re-sealed with the key in {}, but it could not replace {}: {e}; \
                 rename it by hand before the next start",
                pending.display(),
                key_path.display()
            ),
        )
    };
    std::fs::rename(pending, key_path).map_err(failed)?;
    #[cfg(unix)]
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Opens a SQLite database with its key file's key, finishing a key
/// rotation that was cut short: when `<key>.new` exists, the database
/// opens either with the old key (the rotation never committed: the new
/// file is dropped) or with the new one (it committed: the new file
/// replaces the old).
async fn open_resuming_rotation(path: &Path, key: &SealKey) -> Result<SqliteStore> {
    let key_path = default_key_path(path);
    let pending = pending_key_path(&key_path);
    match SqliteStore::open(path, key.clone()).await {
        Ok(store) => {
            if pending.exists() {
                let _ = std::fs::remove_file(&pending);
            }
            Ok(store)
        }
        Err(e) if e.code() == ErrorCode::SealKeyMismatch && pending.exists() => {
            let Some(new_key) = store::seal::read_key_file(&pending)? else {
                return Err(e);
            };
            let store = SqliteStore::open(path, new_key).await?;
            finish_key_file_rotation(&pending, &key_path)?;
            tracing::info!(database = %path.display(), "finished an interrupted key rotation");
            Ok(store)
        }
        Err(e) => Err(e),
    }
}

impl MailSync {
    /// Opens a store with options. The options are checked (and the TLS
    /// and HTTP setup built) before any file is created; a SQLite database
    /// (or a PostgreSQL schema) is created if missing, migrated, and
    /// refused with `seal_key_mismatch` if the key does not open it.
    pub async fn open(store: StoreConfig, options: Options) -> Result<MailSync> {
        MailSync::open_with_clock(store, options, Arc::new(SystemClock)).await
    }

    /// [`MailSync::open`] with a [`Clock`] of the host's (tests move a
    /// [`ManualClock`] instead of sleeping).
    pub async fn open_with_clock(
        store: StoreConfig,
        options: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<MailSync> {
        let oauth = oauth::Runtime::new(&options)?;
        let mut key_file = None;
        let store: Arc<dyn Store> = match store {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::Sqlite { path, key } => {
                match key {
                    Some(key) => Arc::new(SqliteStore::open(&path, key).await?),
                    None => {
                        // Held until the schema is in place (see `default_key_for`).
                        let locked = {
                            let path = path.clone();
                            tokio::task::spawn_blocking(move || default_key_for(&path))
                                .await
                                .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))??
                        };
                        let store = open_resuming_rotation(&path, &locked.key).await?;
                        drop(locked);
                        key_file = Some(default_key_path(&path));
                        Arc::new(store)
                    }
                }
            }
            StoreConfig::Postgres(config) => Arc::new(PostgresStore::open_with(config).await?),
        };
        let mut sync = MailSync::build(store, options, oauth, clock);
        if let Some(inner) = Arc::get_mut(&mut sync.inner) {
            inner.key_file = key_file;
        }
        Ok(sync)
    }

    /// Uses any [`Store`] implementation.
    pub fn with_store(store: Arc<dyn Store>, options: Options) -> Result<MailSync> {
        MailSync::with_store_and_clock(store, options, Arc::new(SystemClock))
    }

    /// [`MailSync::with_store`] with a [`Clock`] of the host's.
    pub fn with_store_and_clock(
        store: Arc<dyn Store>,
        options: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<MailSync> {
        let oauth = oauth::Runtime::new(&options)?;
        Ok(MailSync::build(store, options, oauth, clock))
    }

    fn build(
        store: Arc<dyn Store>,
        options: Options,
        oauth: oauth::Runtime,
        clock: Arc<dyn Clock>,
    ) -> MailSync {
        let (events, _) = tokio::sync::broadcast::channel(events::CHANNEL_CAPACITY);
        MailSync {
            inner: Arc::new(Inner {
                store,
                options,
                oauth,
                state_locks: Mutex::new(HashMap::new()),
                events,
                owner: format!("mailsync-{}", uuid::Uuid::new_v4()),
                clock,
                key_file: None,
            }),
        }
    }

    /// Profiles and mailboxes.
    pub fn directory(&self) -> Directory {
        Directory { sync: self.clone() }
    }

    /// Consent, grants and access tokens.
    pub fn connections(&self) -> Connections {
        Connections { sync: self.clone() }
    }

    /// Test & Enable.
    pub fn checks(&self) -> Checks {
        Checks { sync: self.clone() }
    }

    /// Events about one mailbox (or every mailbox, with `None`): its current
    /// state first, then each change. See [`events`].
    pub async fn subscribe(&self, mailbox: Option<MailboxId>) -> Result<Subscription> {
        Subscription::start(self.clone(), mailbox).await
    }

    /// The options in effect.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The store (for hosts that read or repair records directly).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Closes the store cleanly (SQLite: waits for connections and
    /// checkpoints the write-ahead log). Call it before the process exits.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }

    /// Re-seals every secret of the store with `new_key` in one
    /// transaction and uses it from then on ([`Store::rotate_key`]); the old
    /// key no longer opens the store. Stop other processes using the store
    /// first, and keep the old key until this returns.
    ///
    /// With a host-supplied key, store `new_key` where the host keeps its
    /// key *before* calling (it is the only key that opens the store once
    /// this returns); if the call fails or the process dies, open with
    /// either key — the one that works tells whether it committed — and
    /// call again with `new_key` to finish (`already_rotated`).
    ///
    /// With the SQLite key file next to the database, the new key is first
    /// written to `<db>.key.new`, the store re-sealed, then the file renamed
    /// over `<db>.key`. A rotation cut short is finished (or undone, if it
    /// had not committed) the next time the database is opened.
    pub async fn rotate_key(&self, new_key: SealKey) -> Result<store::KeyRotation> {
        let Some(key_path) = self.inner.key_file.clone() else {
            return self.store().rotate_key(&new_key).await;
        };
        let pending = pending_key_path(&key_path);
        let written = {
            let (pending, key) = (pending.clone(), new_key.clone());
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&pending);
                store::seal::write_key_file(&pending, &key)
            })
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
        };
        written?;
        match self.store().rotate_key(&new_key).await {
            Ok(done) => {
                tokio::task::spawn_blocking(move || finish_key_file_rotation(&pending, &key_path))
                    .await
                    .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))??;
                Ok(done)
            }
            Err(e) => {
                // Nothing was committed (one transaction): the old key stays.
                let _ = std::fs::remove_file(&pending);
                Err(e)
            }
        }
    }

    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }
}

#[cfg(feature = "test-support")]
impl MailSync {
    /// Applies lifecycle events the way the library does: read, apply,
    /// compare-and-swap, retry lost races, publish (test support).
    pub async fn apply_events(
        &self,
        mailbox: &MailboxId,
        events: &[lifecycle::LifecycleEvent],
    ) -> Result<lifecycle::MailboxState> {
        self.record(mailbox, events).await
    }
}

#[cfg(test)]
impl MailSync {
    /// An in-memory instance with default options, for unit tests.
    pub(crate) fn for_tests() -> MailSync {
        MailSync::with_store(Arc::new(MemoryStore::new()), Options::default())
            .expect("default options are valid")
    }
}
