//! `MailSync` (the store and the directory operations) and `SealKey`.
//!
//! Every operation returns a Promise run on napi's tokio runtime (the
//! binding's only runtime); failures reject with a `MailsyncError`.

use mailsync::model;
use napi::Env;
use napi::bindgen_prelude::{PromiseRaw, Uint8Array};
use napi_derive::napi;

use crate::error::{guard, promise};
use crate::mailbox::{Mailbox, MailboxSpec};
use crate::profile::ServerProfile;
use crate::{parse_mailbox_id, parse_profile_id};

/// A 256-bit key sealing secrets at rest. Never shows its bytes.
#[napi]
#[derive(Clone)]
pub struct SealKey {
    pub(crate) inner: mailsync::SealKey,
}

#[napi]
impl SealKey {
    /// A fresh random key.
    #[napi]
    pub fn generate(env: &Env) -> napi::Result<SealKey> {
        guard(env, || {
            mailsync::SealKey::generate().map(|inner| SealKey { inner })
        })
    }

    /// A key from exactly 32 bytes supplied by the host; throws `validation` otherwise.
    #[napi]
    pub fn from_bytes(env: &Env, bytes: Uint8Array) -> napi::Result<SealKey> {
        guard(env, || {
            mailsync::SealKey::from_bytes(&bytes).map(|inner| SealKey { inner })
        })
    }

    /// Always `"[REDACTED]"`.
    #[napi(js_name = "toJSON")]
    pub fn to_json(&self) -> String {
        "[REDACTED]".to_owned()
    }

    /// Always `SealKey([REDACTED])`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        "SealKey([REDACTED])".to_owned()
    }
}

/// The library's entry point: a store plus the operations on it.
#[napi]
#[derive(Clone)]
pub struct MailSync {
    pub(crate) inner: mailsync::MailSync,
}

impl MailSync {
    pub(crate) fn wrap(inner: mailsync::MailSync) -> MailSync {
        MailSync { inner }
    }
}

fn wrap(inner: mailsync::MailSync) -> MailSync {
    MailSync::wrap(inner)
}

fn profiles(list: Vec<model::ServerProfile>) -> Vec<ServerProfile> {
    list.into_iter().map(ServerProfile::wrap).collect()
}

fn mailboxes(list: Vec<model::Mailbox>) -> Vec<Mailbox> {
    list.into_iter().map(Mailbox::wrap).collect()
}

#[napi]
impl MailSync {
    /// Opens the SQLite store at `path`; the seal key lives in `<path>.key` (created 0600).
    #[napi]
    pub fn open_sqlite(env: &Env, path: String) -> napi::Result<PromiseRaw<'_, MailSync>> {
        promise(
            env,
            async move { mailsync::MailSync::open_sqlite(path).await },
            wrap,
        )
    }

    /// Opens the SQLite store at `path` with a key supplied by the host.
    #[napi]
    pub fn open_sqlite_with_key<'env>(
        env: &'env Env,
        path: String,
        key: &SealKey,
    ) -> napi::Result<PromiseRaw<'env, MailSync>> {
        let key = key.inner.clone();
        promise(
            env,
            async move { mailsync::MailSync::open_sqlite_with_key(path, key).await },
            wrap,
        )
    }

    /// An in-memory store (nothing persists).
    #[napi]
    pub fn in_memory(env: &Env) -> napi::Result<MailSync> {
        guard(env, || Ok(wrap(mailsync::MailSync::in_memory())))
    }

    /// Validates and stores a new profile (a default profile replaces the previous default).
    #[napi]
    pub fn create_profile<'env>(
        &self,
        env: &'env Env,
        profile: &ServerProfile,
    ) -> napi::Result<PromiseRaw<'env, ServerProfile>> {
        let (sync, profile) = (self.inner.clone(), profile.inner.clone());
        promise(
            env,
            async move { sync.create_profile(profile).await },
            ServerProfile::wrap,
        )
    }

    /// Validates and replaces a profile.
    #[napi]
    pub fn update_profile<'env>(
        &self,
        env: &'env Env,
        profile: &ServerProfile,
    ) -> napi::Result<PromiseRaw<'env, ServerProfile>> {
        let (sync, profile) = (self.inner.clone(), profile.inner.clone());
        promise(
            env,
            async move { sync.update_profile(profile).await },
            ServerProfile::wrap,
        )
    }

    /// A profile by id; rejects with `not_found`.
    #[napi]
    pub fn get_profile<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, ServerProfile>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.get_profile(&parse_profile_id(&id)?).await },
            ServerProfile::wrap,
        )
    }

    /// A profile by id or by name (case-insensitive).
    #[napi]
    pub fn find_profile<'env>(
        &self,
        env: &'env Env,
        id_or_name: String,
    ) -> napi::Result<PromiseRaw<'env, ServerProfile>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.find_profile(&id_or_name).await },
            ServerProfile::wrap,
        )
    }

    /// All profiles, ordered by name.
    #[napi]
    pub fn list_profiles<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Vec<ServerProfile>>> {
        let sync = self.inner.clone();
        promise(env, async move { sync.list_profiles().await }, profiles)
    }

    /// The default profile for new mailboxes, or `null`.
    #[napi]
    pub fn default_profile<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Option<ServerProfile>>> {
        let sync = self.inner.clone();
        promise(env, async move { sync.default_profile().await }, |p| {
            p.map(ServerProfile::wrap)
        })
    }

    /// Makes a profile the default for new mailboxes.
    #[napi]
    pub fn set_default_profile<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, ServerProfile>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.set_default_profile(&parse_profile_id(&id)?).await },
            ServerProfile::wrap,
        )
    }

    /// Deletes a profile; rejects with `profile_in_use` while it has mailboxes.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete_profile<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.delete_profile(&parse_profile_id(&id)?).await },
            |()| (),
        )
    }

    /// Creates a mailbox on the named or default profile; rejects with
    /// `capacity_exceeded` when the profile is full.
    #[napi]
    pub fn create_mailbox<'env>(
        &self,
        env: &'env Env,
        spec: &MailboxSpec,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let (sync, spec) = (self.inner.clone(), spec.inner.clone());
        promise(
            env,
            async move { sync.create_mailbox(spec).await },
            Mailbox::wrap,
        )
    }

    /// A mailbox by id; rejects with `not_found`.
    #[napi]
    pub fn get_mailbox<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.get_mailbox(&parse_mailbox_id(&id)?).await },
            Mailbox::wrap,
        )
    }

    /// A mailbox by id or email address.
    #[napi]
    pub fn find_mailbox<'env>(
        &self,
        env: &'env Env,
        id_or_email: String,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.find_mailbox(&id_or_email).await },
            Mailbox::wrap,
        )
    }

    /// Mailboxes, all or those of one profile, ordered by address.
    #[napi]
    pub fn list_mailboxes<'env>(
        &self,
        env: &'env Env,
        profile_id: Option<String>,
    ) -> napi::Result<PromiseRaw<'env, Vec<Mailbox>>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move {
                let profile = profile_id.as_deref().map(parse_profile_id).transpose()?;
                sync.list_mailboxes(profile.as_ref()).await
            },
            mailboxes,
        )
    }

    /// Validates and replaces a mailbox (capacity applies if its profile changed).
    #[napi]
    pub fn update_mailbox<'env>(
        &self,
        env: &'env Env,
        mailbox: &Mailbox,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let (sync, mailbox) = (self.inner.clone(), mailbox.inner.clone());
        promise(
            env,
            async move { sync.update_mailbox(mailbox).await },
            Mailbox::wrap,
        )
    }

    /// Moves a mailbox to another profile (capacity checked).
    #[napi]
    pub fn assign_profile<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
        profile_id: String,
    ) -> napi::Result<PromiseRaw<'env, Mailbox>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move {
                let mailbox = parse_mailbox_id(&mailbox_id)?;
                let profile = parse_profile_id(&profile_id)?;
                sync.assign_profile(&mailbox, &profile).await
            },
            Mailbox::wrap,
        )
    }

    /// Deletes a mailbox.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete_mailbox<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.delete_mailbox(&parse_mailbox_id(&id)?).await },
            |()| (),
        )
    }

    /// Closes the store cleanly (SQLite: waits for its connections and
    /// checkpoints the write-ahead log); call it before the process exits.
    /// Closing twice is harmless. Later operations on a closed SQLite store
    /// reject with `store`; an in-memory store keeps working.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move {
                sync.close().await;
                Ok(())
            },
            |()| (),
        )
    }

    /// `{}`: the store shows nothing about itself.
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    /// `MailSync`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        "MailSync".to_owned()
    }
}
