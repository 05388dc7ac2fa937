//! An in-memory [`Store`] for tests and short-lived scripts. Nothing survives
//! the process; secrets stay in memory as [`crate::model::Secret`]s.

use async_trait::async_trait;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::{
    PendingAuthorization, Store, TokenRecord, capacity_error, duplicate_mailbox, duplicate_profile,
    profile_in_use, state_key,
};
use crate::error::{Error, Result};
use crate::model::{Mailbox, MailboxId, ProfileId, Secret, ServerProfile};

#[derive(Default)]
struct Inner {
    profiles: BTreeMap<ProfileId, ServerProfile>,
    mailboxes: BTreeMap<MailboxId, Mailbox>,
    /// state key -> pending authorization
    pending: BTreeMap<String, PendingAuthorization>,
    tokens: BTreeMap<MailboxId, TokenRecord>,
    leases: BTreeMap<MailboxId, (String, OffsetDateTime)>,
}

impl Inner {
    fn count(&self, profile: &ProfileId) -> u32 {
        self.mailboxes
            .values()
            .filter(|m| m.profile_id.as_ref() == Some(profile))
            .count() as u32
    }

    fn put_profile(&mut self, profile: &ServerProfile, insert: bool) -> Result<()> {
        let exists = self.profiles.contains_key(&profile.id);
        if insert == exists {
            return Err(if insert {
                duplicate_profile(&profile.name)
            } else {
                Error::not_found("server profile", &profile.id)
            });
        }
        if self
            .profiles
            .values()
            .any(|p| p.id != profile.id && p.name.eq_ignore_ascii_case(&profile.name))
        {
            return Err(duplicate_profile(&profile.name));
        }
        if profile.default_for_new_mailboxes {
            for p in self.profiles.values_mut() {
                p.default_for_new_mailboxes = false;
            }
        }
        self.profiles.insert(profile.id.clone(), profile.clone());
        Ok(())
    }

    fn check_capacity(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()> {
        if let (Some(profile_id), Some(capacity)) = (&mailbox.profile_id, capacity) {
            let count = self.count(profile_id);
            if count >= capacity {
                let name = self
                    .profiles
                    .get(profile_id)
                    .map(|p| p.name.as_str())
                    .unwrap_or("?");
                return Err(capacity_error(profile_id, name, count, capacity));
            }
        }
        Ok(())
    }
}

/// See the module docs.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<()> {
        self.inner.lock().await.put_profile(profile, true)
    }

    async fn update_profile(&self, profile: &ServerProfile) -> Result<()> {
        self.inner.lock().await.put_profile(profile, false)
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>> {
        Ok(self.inner.lock().await.profiles.get(id).cloned())
    }

    async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        let mut all: Vec<_> = self.inner.lock().await.profiles.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(profile) = inner.profiles.get(id) else {
            return Err(Error::not_found("server profile", id));
        };
        let count = inner.count(id);
        if count > 0 {
            return Err(profile_in_use(&profile.name, count));
        }
        inner.profiles.remove(id);
        Ok(())
    }

    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if inner.mailboxes.contains_key(&mailbox.id)
            || inner.mailboxes.values().any(|m| m.email == mailbox.email)
        {
            return Err(duplicate_mailbox(&mailbox.email));
        }
        inner.check_capacity(mailbox, capacity)?;
        inner.mailboxes.insert(mailbox.id.clone(), mailbox.clone());
        Ok(())
    }

    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(old) = inner.mailboxes.get(&mailbox.id) else {
            return Err(Error::not_found("mailbox", &mailbox.id));
        };
        if old.profile_id != mailbox.profile_id {
            inner.check_capacity(mailbox, capacity)?;
        }
        if inner
            .mailboxes
            .values()
            .any(|m| m.id != mailbox.id && m.email == mailbox.email)
        {
            return Err(duplicate_mailbox(&mailbox.email));
        }
        inner.mailboxes.insert(mailbox.id.clone(), mailbox.clone());
        Ok(())
    }

    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
        Ok(self.inner.lock().await.mailboxes.get(id).cloned())
    }

    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
        Ok(self
            .inner
            .lock()
            .await
            .mailboxes
            .values()
            .find(|m| m.email == email)
            .cloned())
    }

    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        let inner = self.inner.lock().await;
        let mut all: Vec<_> = inner
            .mailboxes
            .values()
            .filter(|m| profile.is_none() || m.profile_id.as_ref() == profile)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(all)
    }

    async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32> {
        Ok(self.inner.lock().await.count(profile))
    }

    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        let mut inner = self.inner.lock().await;
        match inner.mailboxes.remove(id) {
            Some(_) => {
                inner.pending.retain(|_, p| &p.mailbox_id != id);
                inner.tokens.remove(id);
                inner.leases.remove(id);
                Ok(())
            }
            None => Err(Error::not_found("mailbox", id)),
        }
    }

    async fn put_pending_authorization(&self, pending: &PendingAuthorization) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if !inner.mailboxes.contains_key(&pending.mailbox_id) {
            return Err(Error::not_found("mailbox", &pending.mailbox_id));
        }
        inner
            .pending
            .retain(|_, p| p.mailbox_id != pending.mailbox_id);
        inner
            .pending
            .insert(state_key(&pending.state), pending.clone());
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state: &Secret,
    ) -> Result<Option<PendingAuthorization>> {
        Ok(self.inner.lock().await.pending.remove(&state_key(state)))
    }

    async fn delete_pending_authorization(&self, mailbox: &MailboxId) -> Result<()> {
        self.inner
            .lock()
            .await
            .pending
            .retain(|_, p| &p.mailbox_id != mailbox);
        Ok(())
    }

    async fn get_tokens(&self, mailbox: &MailboxId) -> Result<Option<TokenRecord>> {
        Ok(self.inner.lock().await.tokens.get(mailbox).cloned())
    }

    async fn put_tokens(
        &self,
        tokens: &TokenRecord,
        expected_version: Option<u64>,
    ) -> Result<Option<u64>> {
        let mut inner = self.inner.lock().await;
        if !inner.mailboxes.contains_key(&tokens.mailbox_id) {
            return Err(Error::not_found("mailbox", &tokens.mailbox_id));
        }
        let current = inner.tokens.get(&tokens.mailbox_id).map(|t| t.version);
        if let Some(expected) = expected_version
            && current != Some(expected)
        {
            return Ok(None);
        }
        let version = current.unwrap_or(0) + 1;
        let mut record = tokens.clone();
        record.version = version;
        inner.tokens.insert(tokens.mailbox_id.clone(), record);
        Ok(Some(version))
    }

    async fn delete_tokens(&self, mailbox: &MailboxId) -> Result<()> {
        self.inner.lock().await.tokens.remove(mailbox);
        Ok(())
    }

    async fn try_acquire_refresh_lease(
        &self,
        mailbox: &MailboxId,
        owner: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        let mut inner = self.inner.lock().await;
        let now = OffsetDateTime::now_utc();
        match inner.leases.get(mailbox) {
            Some((holder, until)) if holder != owner && *until > now => Ok(false),
            _ => {
                inner
                    .leases
                    .insert(mailbox.clone(), (owner.to_owned(), expires_at));
                Ok(true)
            }
        }
    }

    async fn release_refresh_lease(&self, mailbox: &MailboxId, owner: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if inner
            .leases
            .get(mailbox)
            .is_some_and(|(holder, _)| holder == owner)
        {
            inner.leases.remove(mailbox);
        }
        Ok(())
    }
}
