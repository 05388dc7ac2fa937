//! `MailSync`: opening a store, and the directory of profiles and mailboxes.
//!
//! Every async method runs on the binding's one Tokio runtime (see
//! `error::guard_async`); Kotlin sees `suspend fun`, Swift `async`.

use std::sync::{Arc, RwLock};

use crate::convert::{mailbox_id as parse_mailbox_id, profile_id as parse_profile_id};
use crate::error::{Result, guard, guard_async, guard_ok};
use crate::events::{MailboxEventListener, adapt};
use crate::model::{Mailbox, MailboxSpec, ServerProfile};
use crate::settings::Settings;
use crate::store::SealKey;

/// The library's entry point: a store plus the operations on it.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct MailSync {
    pub(crate) inner: mailsync::MailSync,
    /// The host listener in effect (the core holds it adapted), so that
    /// `settings()` can hand it back.
    listener: RwLock<Option<Arc<dyn MailboxEventListener>>>,
}

impl MailSync {
    fn new(inner: mailsync::MailSync, settings: Option<&Settings>) -> Arc<MailSync> {
        Arc::new(MailSync {
            inner,
            listener: RwLock::new(settings.and_then(Settings::event_listener)),
        })
    }
}

impl std::fmt::Debug for MailSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

fn profiles(list: Vec<mailsync::model::ServerProfile>) -> Vec<Arc<ServerProfile>> {
    list.into_iter().map(ServerProfile::wrap).collect()
}

#[uniffi::export]
impl MailSync {
    /// Opens the SQLite store at `path`; the seal key is kept in
    /// `<path>.key` (created with mode 0600 if it does not exist).
    #[uniffi::constructor]
    pub async fn open_sqlite(path: String) -> Result<Arc<MailSync>> {
        guard_async(async move {
            let inner = mailsync::MailSync::open_sqlite(&path).await?;
            Ok(MailSync::new(inner, None))
        })
        .await
    }

    /// Opens the SQLite store at `path` with a key supplied by the host.
    #[uniffi::constructor]
    pub async fn open_sqlite_with_key(path: String, key: Arc<SealKey>) -> Result<Arc<MailSync>> {
        guard_async(async move {
            let inner = mailsync::MailSync::open_sqlite_with_key(&path, key.inner.clone()).await?;
            Ok(MailSync::new(inner, None))
        })
        .await
    }

    /// An in-memory store (nothing persists).
    #[uniffi::constructor]
    pub fn in_memory() -> Result<Arc<MailSync>> {
        guard_ok(|| MailSync::new(mailsync::MailSync::in_memory(), None))
    }

    /// Like `openSqlite`, with [`Settings`] (`validation` on unusable
    /// settings, e.g. a PEM without certificates).
    #[uniffi::constructor]
    pub async fn open_sqlite_with(path: String, settings: Arc<Settings>) -> Result<Arc<MailSync>> {
        guard_async(async move {
            let inner = mailsync::MailSync::open_sqlite_with(&path, settings.to_core()).await?;
            Ok(MailSync::new(inner, Some(&settings)))
        })
        .await
    }

    /// Like `openSqliteWithKey`, with [`Settings`].
    #[uniffi::constructor]
    pub async fn open_sqlite_with_key_and_settings(
        path: String,
        key: Arc<SealKey>,
        settings: Arc<Settings>,
    ) -> Result<Arc<MailSync>> {
        guard_async(async move {
            let inner = mailsync::MailSync::open_sqlite_with_key_and_settings(
                &path,
                key.inner.clone(),
                settings.to_core(),
            )
            .await?;
            Ok(MailSync::new(inner, Some(&settings)))
        })
        .await
    }

    /// Like `inMemory`, with [`Settings`].
    #[uniffi::constructor]
    pub fn in_memory_with(settings: Arc<Settings>) -> Result<Arc<MailSync>> {
        guard(|| {
            let inner = mailsync::MailSync::in_memory_with(settings.to_core())?;
            Ok(MailSync::new(inner, Some(&settings)))
        })
    }

    /// The settings in effect (with the current event listener).
    pub fn settings(&self) -> Result<Arc<Settings>> {
        guard_ok(|| {
            let listener = self
                .listener
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            Settings::from_core(self.inner.settings(), listener)
        })
    }

    /// Replaces the connection event listener (`null` removes it).
    pub fn set_event_listener(
        &self,
        listener: Option<Arc<dyn MailboxEventListener>>,
    ) -> Result<()> {
        guard_ok(|| {
            self.inner.set_event_listener(adapt(listener.clone()));
            *self.listener.write().unwrap_or_else(|e| e.into_inner()) = listener;
        })
    }

    /// Closes the store cleanly (SQLite: waits for connections and
    /// checkpoints the write-ahead log). Use it before the process exits.
    /// The core's `close`; named `closeStore` because Kotlin's
    /// `AutoCloseable.close()` (which frees the native object) takes `close`.
    pub async fn close_store(&self) -> Result<()> {
        let inner = self.inner.clone();
        guard_async(async move {
            inner.close().await;
            Ok(())
        })
        .await
    }

    /// Validates and stores a new profile (a default one replaces the previous default).
    pub async fn create_profile(&self, profile: Arc<ServerProfile>) -> Result<Arc<ServerProfile>> {
        let profile = profile.inner.clone();
        let inner = self.inner.clone();
        guard_async(async move { inner.create_profile(profile).await.map(ServerProfile::wrap) })
            .await
    }

    /// Validates and replaces a profile.
    pub async fn update_profile(&self, profile: Arc<ServerProfile>) -> Result<Arc<ServerProfile>> {
        let profile = profile.inner.clone();
        let inner = self.inner.clone();
        guard_async(async move { inner.update_profile(profile).await.map(ServerProfile::wrap) })
            .await
    }

    /// A profile by id; `not_found` if it does not exist, `validation` if
    /// `id` is not an id.
    pub async fn get_profile(&self, id: String) -> Result<Arc<ServerProfile>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_profile_id(&id)?;
            inner.get_profile(&id).await.map(ServerProfile::wrap)
        })
        .await
    }

    /// A profile by id or by name (case-insensitive).
    pub async fn find_profile(&self, id_or_name: String) -> Result<Arc<ServerProfile>> {
        let inner = self.inner.clone();
        guard_async(async move {
            inner
                .find_profile(&id_or_name)
                .await
                .map(ServerProfile::wrap)
        })
        .await
    }

    /// All profiles, ordered by name.
    pub async fn list_profiles(&self) -> Result<Vec<Arc<ServerProfile>>> {
        let inner = self.inner.clone();
        guard_async(async move { inner.list_profiles().await.map(profiles) }).await
    }

    /// The default profile for new mailboxes, if one is set.
    pub async fn default_profile(&self) -> Result<Option<Arc<ServerProfile>>> {
        let inner = self.inner.clone();
        guard_async(async move { Ok(inner.default_profile().await?.map(ServerProfile::wrap)) })
            .await
    }

    /// Makes a profile the default for new mailboxes.
    pub async fn set_default_profile(&self, id: String) -> Result<Arc<ServerProfile>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_profile_id(&id)?;
            inner
                .set_default_profile(&id)
                .await
                .map(ServerProfile::wrap)
        })
        .await
    }

    /// Deletes a profile; `profile_in_use` while it has mailboxes.
    pub async fn delete_profile(&self, id: String) -> Result<()> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_profile_id(&id)?;
            inner.delete_profile(&id).await
        })
        .await
    }

    /// Creates a mailbox on the named profile or the default one;
    /// `capacity_exceeded` when the profile is full (unless spill-over finds room).
    pub async fn create_mailbox(&self, spec: Arc<MailboxSpec>) -> Result<Arc<Mailbox>> {
        let spec = spec.inner.clone();
        let inner = self.inner.clone();
        guard_async(async move { inner.create_mailbox(spec).await.map(Mailbox::wrap) }).await
    }

    /// A mailbox by id.
    pub async fn get_mailbox(&self, id: String) -> Result<Arc<Mailbox>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&id)?;
            inner.get_mailbox(&id).await.map(Mailbox::wrap)
        })
        .await
    }

    /// A mailbox by id or email address.
    pub async fn find_mailbox(&self, id_or_email: String) -> Result<Arc<Mailbox>> {
        let inner = self.inner.clone();
        guard_async(async move { inner.find_mailbox(&id_or_email).await.map(Mailbox::wrap) }).await
    }

    /// Mailboxes, all or those of one profile, ordered by address.
    pub async fn list_mailboxes(&self, profile_id: Option<String>) -> Result<Vec<Arc<Mailbox>>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let filter = profile_id.as_deref().map(parse_profile_id).transpose()?;
            let list = inner.list_mailboxes(filter.as_ref()).await?;
            Ok(list.into_iter().map(Mailbox::wrap).collect())
        })
        .await
    }

    /// Validates and replaces a mailbox (capacity applies if its profile changed).
    pub async fn update_mailbox(&self, mailbox: Arc<Mailbox>) -> Result<Arc<Mailbox>> {
        let mailbox = mailbox.inner.clone();
        let inner = self.inner.clone();
        guard_async(async move { inner.update_mailbox(mailbox).await.map(Mailbox::wrap) }).await
    }

    /// Moves a mailbox to another profile (capacity checked).
    pub async fn assign_profile(
        &self,
        mailbox_id: String,
        profile_id: String,
    ) -> Result<Arc<Mailbox>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let mailbox = parse_mailbox_id(&mailbox_id)?;
            let profile = parse_profile_id(&profile_id)?;
            inner
                .assign_profile(&mailbox, &profile)
                .await
                .map(Mailbox::wrap)
        })
        .await
    }

    /// Deletes a mailbox.
    pub async fn delete_mailbox(&self, id: String) -> Result<()> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&id)?;
            inner.delete_mailbox(&id).await
        })
        .await
    }
}
