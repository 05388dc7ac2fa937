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
//!    profile serves at most 100 mailboxes.
//! 2. **User, once per mailbox.** Create a [`model::Mailbox`] (it lands on
//!    the default profile), connect it to Gmail (consent in the browser, then
//!    the redirect back to the CRM), then test and enable it.
//! 3. **Engine, forever.** Sync new mail in over IMAP or POP, queued mail out
//!    over SMTP, all with XOAUTH2; refresh tokens, classify failures, raise
//!    alerts, lose nothing.
//!
//! Every failure is an [`Error`] with a stable [`ErrorCode`], the same in
//! every language binding.
//!
//! ## Example
//!
//! ```
//! use mailsync::model::{MailboxSpec, OAuthApp, ServerProfile};
//! use mailsync::{ErrorCode, MailSync};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! // The key file is created next to the database (mode 0600) on first open.
//! let sync = MailSync::open_sqlite(dir.path().join("mailsync.db")).await?;
//!
//! let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret")
//!     .for_environment("https://contoso.crm.example.com")?;
//! assert_eq!(app.redirect_uri(), Some("https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"));
//!
//! let profile = sync
//!     .create_profile(ServerProfile::gmail("Gmail - sales", app).default_for_new_mailboxes())
//!     .await?;
//! assert_eq!(profile.incoming.endpoint.host, "imap.gmail.com");
//!
//! let mailbox = sync.create_mailbox(MailboxSpec::user("alice@gmail.com")).await?;
//! assert_eq!(mailbox.profile_id.as_ref(), Some(&profile.id));
//!
//! let duplicate = sync.create_mailbox(MailboxSpec::user("alice@gmail.com")).await.unwrap_err();
//! assert_eq!(duplicate.code(), ErrorCode::AlreadyExists);
//! # Ok::<(), mailsync::Error>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

pub mod check;
pub mod directory;
pub mod error;
pub mod model;
pub mod net;
pub mod oauth;
pub mod sasl;
pub mod store;

pub use error::{Error, ErrorCode, Result};
pub use oauth::Settings;
pub use store::{MemoryStore, SealKey, SqliteStore, Store};

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The library's entry point: a store plus the operations on it.
///
/// Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct MailSync {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    oauth: oauth::Runtime,
}

impl std::fmt::Debug for MailSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSync").finish_non_exhaustive()
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

impl MailSync {
    /// Opens the embedded SQLite store at `path`, with the seal key kept in
    /// `<path>.key` (created with mode 0600 if it does not exist).
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<MailSync> {
        let path = path.as_ref();
        let key = SealKey::load_or_create(default_key_path(path))?;
        MailSync::open_sqlite_with_key(path, key).await
    }

    /// Opens the SQLite store at `path` with a key supplied by the host.
    pub async fn open_sqlite_with_key(path: impl AsRef<Path>, key: SealKey) -> Result<MailSync> {
        let store = SqliteStore::open(path, key).await?;
        Ok(MailSync::with_store(Arc::new(store)))
    }

    /// An in-memory store (nothing persists).
    pub fn in_memory() -> MailSync {
        MailSync::with_store(Arc::new(MemoryStore::new()))
    }

    /// Any [`Store`] implementation.
    pub fn with_store(store: Arc<dyn Store>) -> MailSync {
        MailSync {
            inner: Arc::new(Inner {
                store,
                oauth: oauth::Runtime::new(Settings::default()),
            }),
        }
    }

    /// Any [`Store`] with [`Settings`] (extra root certificates, provider
    /// override, refresh skew, event listener, ...). Fails with `validation`
    /// on unusable settings (e.g. a PEM without certificates).
    pub fn with_store_and_settings(store: Arc<dyn Store>, settings: Settings) -> Result<MailSync> {
        let oauth = MailSync::oauth_runtime(settings)?;
        Ok(MailSync {
            inner: Arc::new(Inner { store, oauth }),
        })
    }

    /// Validates the settings and builds what they describe (HTTP client,
    /// trusted roots) before anything touches a store.
    fn oauth_runtime(settings: Settings) -> Result<oauth::Runtime> {
        settings.validate()?;
        let runtime = oauth::Runtime::new(settings);
        runtime.check()?;
        Ok(runtime)
    }

    /// Like [`MailSync::open_sqlite`], with [`Settings`].
    pub async fn open_sqlite_with(path: impl AsRef<Path>, settings: Settings) -> Result<MailSync> {
        let path = path.as_ref();
        let key = SealKey::load_or_create(default_key_path(path))?;
        MailSync::open_sqlite_with_key_and_settings(path, key, settings).await
    }

    /// The SQLite store at `path` with a key supplied by the host, and [`Settings`].
    pub async fn open_sqlite_with_key_and_settings(
        path: impl AsRef<Path>,
        key: SealKey,
        settings: Settings,
    ) -> Result<MailSync> {
        let oauth = MailSync::oauth_runtime(settings)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path, key).await?);
        Ok(MailSync {
            inner: Arc::new(Inner { store, oauth }),
        })
    }

    /// Like [`MailSync::in_memory`], with [`Settings`].
    pub fn in_memory_with(settings: Settings) -> Result<MailSync> {
        MailSync::with_store_and_settings(Arc::new(MemoryStore::new()), settings)
    }

    /// Closes the store cleanly (SQLite: waits for connections and checkpoints
    /// the write-ahead log). Use it before the process exits.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
}
