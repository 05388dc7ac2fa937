//! An in-memory [`Store`] for tests and short-lived scripts. Nothing survives
//! the process; secrets stay in memory as [`crate::model::Secret`]s. Every
//! method runs under one lock, so each is atomic.

use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::{
    Commit, CommitOutcome, DirectoryStore, Grant, GrantChange, GrantStore, LeaseKind, LeaseRecord,
    LeaseStore, OutboxStore, PendingAuthorization, PendingChange, PendingRevocation,
    RevocationStore, StateStore, Store, SyncStore, capacity_below_count, capacity_error,
    duplicate_mailbox, duplicate_profile, profile_in_use, stale, state_key, sync_due_at,
};
use crate::error::{Error, Result};
use crate::lifecycle::MailboxState;
use crate::model::mailbox::MAX_ALERTS;
use crate::model::{
    Alert, LastTestResult, Mailbox, MailboxId, ProfileId, Secret, ServerProfile, Timestamp,
    profile_name_key,
};
use crate::sync::{MessageRecord, OutboxCursor, OutgoingRecord, SyncCursor};

#[derive(Default)]
struct Inner {
    seq: i64,
    profiles: BTreeMap<ProfileId, ServerProfile>,
    mailboxes: BTreeMap<MailboxId, Mailbox>,
    states: BTreeMap<MailboxId, MailboxState>,
    alerts: BTreeMap<MailboxId, VecDeque<Alert>>,
    profile_tests: BTreeMap<ProfileId, LastTestResult>,
    /// state key -> pending authorization
    pending: BTreeMap<String, PendingAuthorization>,
    grants: BTreeMap<MailboxId, Grant>,
    leases: BTreeMap<(MailboxId, LeaseKind), LeaseRecord>,
    cursors: BTreeMap<MailboxId, SyncCursor>,
    /// mailbox -> key -> record
    records: BTreeMap<MailboxId, BTreeMap<String, MessageRecord>>,
    /// mailbox -> host id -> outgoing record
    outgoing: BTreeMap<MailboxId, BTreeMap<String, OutgoingRecord>>,
    outbox_cursors: BTreeMap<MailboxId, OutboxCursor>,
    /// id -> queued revocation
    revocations: BTreeMap<String, PendingRevocation>,
    closed: bool,
}

impl Inner {
    fn next_version(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    fn count(&self, profile: &ProfileId) -> u32 {
        self.mailboxes
            .values()
            .filter(|m| m.profile_id.as_ref() == Some(profile))
            .count() as u32
    }

    fn check_name(&self, profile: &ServerProfile) -> Result<()> {
        let key = profile_name_key(&profile.name);
        if self
            .profiles
            .values()
            .any(|p| p.id != profile.id && profile_name_key(&p.name) == key)
        {
            return Err(duplicate_profile(&profile.name));
        }
        Ok(())
    }

    fn clear_other_defaults(&mut self, keep: &ProfileId) {
        let ids: Vec<ProfileId> = self
            .profiles
            .values()
            .filter(|p| p.default_for_new_mailboxes && &p.id != keep)
            .map(|p| p.id.clone())
            .collect();
        for id in ids {
            let version = self.next_version();
            if let Some(p) = self.profiles.get_mut(&id) {
                p.default_for_new_mailboxes = false;
                p.version = version;
            }
        }
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

    fn ensure_profile(&self, mailbox: &Mailbox) -> Result<()> {
        match &mailbox.profile_id {
            Some(p) if !self.profiles.contains_key(p) => Err(Error::not_found("server profile", p)),
            _ => Ok(()),
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.closed {
            return Err(Error::new(
                crate::ErrorCode::Store,
                "the store was closed; open it again",
            ));
        }
        Ok(inner)
    }
}

#[async_trait]
impl DirectoryStore for MemoryStore {
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
        let mut inner = self.lock()?;
        if inner.profiles.contains_key(&profile.id) {
            return Err(duplicate_profile(&profile.name));
        }
        inner.check_name(profile)?;
        if profile.default_for_new_mailboxes {
            inner.clear_other_defaults(&profile.id);
        }
        let mut stored = profile.clone();
        stored.version = inner.next_version();
        inner.profiles.insert(stored.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn update_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
        let mut inner = self.lock()?;
        let Some(current) = inner.profiles.get(&profile.id) else {
            return Err(Error::not_found("server profile", &profile.id));
        };
        if current.version != profile.version {
            return Err(stale("server profile", &profile.name, profile.version));
        }
        inner.check_name(profile)?;
        let count = inner.count(&profile.id);
        if count > profile.mailbox_capacity {
            return Err(capacity_below_count(count));
        }
        if profile.default_for_new_mailboxes {
            inner.clear_other_defaults(&profile.id);
        }
        let mut stored = profile.clone();
        stored.version = inner.next_version();
        inner.profiles.insert(stored.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>> {
        Ok(self.lock()?.profiles.get(id).cloned())
    }

    async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        let mut all: Vec<_> = self.lock()?.profiles.values().cloned().collect();
        all.sort_by_key(|p| profile_name_key(&p.name));
        Ok(all)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
        let mut inner = self.lock()?;
        let Some(profile) = inner.profiles.get(id) else {
            return Err(Error::not_found("server profile", id));
        };
        let count = inner.count(id);
        if count > 0 {
            return Err(profile_in_use(&profile.name, count));
        }
        inner.profiles.remove(id);
        inner.profile_tests.remove(id);
        Ok(())
    }

    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox> {
        let mut inner = self.lock()?;
        if inner.mailboxes.contains_key(&mailbox.id)
            || inner.mailboxes.values().any(|m| m.email == mailbox.email)
        {
            return Err(duplicate_mailbox(&mailbox.email));
        }
        inner.ensure_profile(mailbox)?;
        inner.check_capacity(mailbox, capacity)?;
        let mut stored = mailbox.clone();
        stored.version = inner.next_version();
        let mut state = MailboxState::new(stored.id.clone());
        state.version = inner.next_version();
        inner.states.insert(stored.id.clone(), state);
        inner.mailboxes.insert(stored.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox> {
        let mut inner = self.lock()?;
        let Some(old) = inner.mailboxes.get(&mailbox.id) else {
            return Err(Error::not_found("mailbox", &mailbox.id));
        };
        if old.version != mailbox.version {
            return Err(stale("mailbox", &mailbox.email, mailbox.version));
        }
        if old.profile_id != mailbox.profile_id {
            inner.ensure_profile(mailbox)?;
            inner.check_capacity(mailbox, capacity)?;
        }
        if inner
            .mailboxes
            .values()
            .any(|m| m.id != mailbox.id && m.email == mailbox.email)
        {
            return Err(duplicate_mailbox(&mailbox.email));
        }
        let mut stored = mailbox.clone();
        stored.version = inner.next_version();
        inner.mailboxes.insert(stored.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
        Ok(self.lock()?.mailboxes.get(id).cloned())
    }

    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
        Ok(self
            .lock()?
            .mailboxes
            .values()
            .find(|m| m.email == email)
            .cloned())
    }

    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        let inner = self.lock()?;
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
        Ok(self.lock()?.count(profile))
    }

    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        let mut inner = self.lock()?;
        if inner.mailboxes.remove(id).is_none() {
            return Err(Error::not_found("mailbox", id));
        }
        inner.states.remove(id);
        inner.alerts.remove(id);
        inner.pending.retain(|_, p| &p.mailbox_id != id);
        inner.grants.remove(id);
        inner.leases.retain(|(m, _), _| m != id);
        inner.cursors.remove(id);
        inner.records.remove(id);
        inner.outgoing.remove(id);
        inner.outbox_cursors.remove(id);
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get_state(&self, mailbox: &MailboxId) -> Result<Option<MailboxState>> {
        Ok(self.lock()?.states.get(mailbox).cloned())
    }

    async fn commit(&self, commit: &Commit<'_>) -> Result<CommitOutcome> {
        let mut inner = self.lock()?;
        let id = commit.mailbox_id;
        let Some(current) = inner.states.get(id) else {
            return Err(Error::not_found("mailbox", id));
        };
        if current.version != commit.expected_state_version {
            return Ok(CommitOutcome::StateConflict);
        }
        let stored_grant = inner.grants.get(id).map(|g| g.version);
        let grant_ok = match &commit.grant {
            GrantChange::Keep => true,
            GrantChange::Put { expected, .. } => stored_grant == *expected,
            GrantChange::Delete { expected } => expected.is_none() || stored_grant == *expected,
        };
        if !grant_ok {
            return Ok(CommitOutcome::GrantConflict);
        }
        let mut state_version = current.version;
        if let Some(next) = commit.state {
            state_version = inner.next_version();
            let mut next = next.clone();
            next.version = state_version;
            inner.states.insert(id.clone(), next);
        }
        match &commit.grant {
            GrantChange::Keep => {}
            GrantChange::Put { grant, .. } => {
                let version = inner.next_version();
                let mut g = (*grant).clone();
                g.mailbox_id = id.clone();
                g.version = version;
                inner.grants.insert(id.clone(), g);
            }
            GrantChange::Delete { .. } => {
                inner.grants.remove(id);
            }
        }
        match &commit.pending {
            PendingChange::Keep => {}
            PendingChange::Put(p) => {
                inner.pending.retain(|_, old| &old.mailbox_id != id);
                inner.pending.insert(state_key(&p.state), (*p).clone());
            }
            PendingChange::Delete => inner.pending.retain(|_, old| &old.mailbox_id != id),
        }
        if !commit.alerts.is_empty() {
            let wall = inner.alerts.entry(id.clone()).or_default();
            wall.extend(commit.alerts.iter().cloned());
            while wall.len() > MAX_ALERTS {
                wall.pop_front();
            }
        }
        Ok(CommitOutcome::Committed {
            state_version,
            grant_version: inner.grants.get(id).map(|g| g.version),
        })
    }

    async fn alerts(&self, mailbox: &MailboxId, limit: usize) -> Result<Vec<Alert>> {
        let inner = self.lock()?;
        let wall = inner.alerts.get(mailbox);
        let all: Vec<Alert> = wall
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).collect())
    }

    async fn put_profile_test(&self, profile: &ProfileId, result: &LastTestResult) -> Result<()> {
        let mut inner = self.lock()?;
        if !inner.profiles.contains_key(profile) {
            return Err(Error::not_found("server profile", profile));
        }
        inner.profile_tests.insert(profile.clone(), result.clone());
        Ok(())
    }

    async fn get_profile_test(&self, profile: &ProfileId) -> Result<Option<LastTestResult>> {
        Ok(self.lock()?.profile_tests.get(profile).cloned())
    }
}

#[async_trait]
impl GrantStore for MemoryStore {
    async fn take_pending(&self, state: &Secret) -> Result<Option<PendingAuthorization>> {
        Ok(self.lock()?.pending.remove(&state_key(state)))
    }

    async fn get_grant(&self, mailbox: &MailboxId) -> Result<Option<Grant>> {
        Ok(self.lock()?.grants.get(mailbox).cloned())
    }

    async fn put_grant(
        &self,
        grant: &Grant,
        expected: i64,
        fence: Option<&LeaseRecord>,
    ) -> Result<Option<i64>> {
        let mut inner = self.lock()?;
        let id = &grant.mailbox_id;
        if inner.grants.get(id).map(|g| g.version) != Some(expected) {
            return Ok(None);
        }
        if let Some(lease) = fence {
            let current = inner.leases.get(&(id.clone(), lease.kind));
            if current.map(|l| l.fence) != Some(lease.fence) {
                return Ok(None);
            }
        }
        let version = inner.next_version();
        let mut stored = grant.clone();
        stored.version = version;
        inner.grants.insert(id.clone(), stored);
        Ok(Some(version))
    }

    async fn grant_held(&self, issuer: &str, client_id: &str, account: &str) -> Result<bool> {
        Ok(self.lock()?.grants.values().any(|g| {
            g.issuer == issuer
                && g.client_id == client_id
                && g.account.eq_ignore_ascii_case(account)
        }))
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire_lease(
        &self,
        mailbox: &MailboxId,
        kind: LeaseKind,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let mut inner = self.lock()?;
        if !inner.mailboxes.contains_key(mailbox) {
            return Err(Error::not_found("mailbox", mailbox));
        }
        let key = (mailbox.clone(), kind);
        if let Some(current) = inner.leases.get(&key) {
            if current.expires_at > now {
                return Ok(None);
            }
            if current.owner != owner {
                crate::metrics::lease_taken_over(kind);
            }
        }
        let record = LeaseRecord {
            mailbox_id: mailbox.clone(),
            kind,
            owner: owner.to_owned(),
            fence: inner.next_version(),
            expires_at: until,
        };
        inner.leases.insert(key, record.clone());
        Ok(Some(record))
    }

    async fn renew_lease(
        &self,
        lease: &LeaseRecord,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let mut inner = self.lock()?;
        let key = (lease.mailbox_id.clone(), lease.kind);
        match inner.leases.get_mut(&key) {
            Some(current) if current.fence == lease.fence => {
                current.expires_at = until;
                Ok(Some(current.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn release_lease(&self, lease: &LeaseRecord) -> Result<()> {
        let mut inner = self.lock()?;
        let key = (lease.mailbox_id.clone(), lease.kind);
        if inner
            .leases
            .get(&key)
            .is_some_and(|l| l.fence == lease.fence)
        {
            inner.leases.remove(&key);
        }
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<LeaseRecord>> {
        Ok(self.lock()?.leases.values().cloned().collect())
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
        skip: &[MailboxId],
    ) -> Result<Vec<LeaseRecord>> {
        let mut inner = self.lock()?;
        let mut due: Vec<(i64, MailboxId)> = Vec::new();
        for (id, mailbox) in &inner.mailboxes {
            let Some(state) = inner.states.get(id) else {
                continue;
            };
            let Some(at) = sync_due_at(
                mailbox,
                state,
                inner.cursors.get(id),
                inner.outbox_cursors.get(id),
            ) else {
                continue;
            };
            let held = inner
                .leases
                .get(&(id.clone(), LeaseKind::Sync))
                .is_some_and(|l| l.expires_at > now);
            if at <= now.unix_millis() && !held && !skip.contains(id) {
                due.push((at, id.clone()));
            }
        }
        due.sort();
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(limit) {
            let key = (id.clone(), LeaseKind::Sync);
            if inner.leases.get(&key).is_some_and(|l| l.owner != owner) {
                crate::metrics::lease_taken_over(LeaseKind::Sync);
            }
            let record = LeaseRecord {
                mailbox_id: id,
                kind: LeaseKind::Sync,
                owner: owner.to_owned(),
                fence: inner.next_version(),
                expires_at: until,
            };
            inner.leases.insert(key, record.clone());
            claimed.push(record);
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let inner = self.lock()?;
        let mut next: Option<i64> = None;
        for (id, mailbox) in &inner.mailboxes {
            let Some(state) = inner.states.get(id) else {
                continue;
            };
            let Some(mut at) = sync_due_at(
                mailbox,
                state,
                inner.cursors.get(id),
                inner.outbox_cursors.get(id),
            ) else {
                continue;
            };
            if let Some(lease) = inner.leases.get(&(id.clone(), LeaseKind::Sync)) {
                at = at.max(lease.expires_at.unix_millis());
            }
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(next.map(Timestamp::from_unix_millis))
    }
}

#[async_trait]
impl SyncStore for MemoryStore {
    async fn get_cursor(&self, mailbox: &MailboxId) -> Result<Option<SyncCursor>> {
        Ok(self.lock()?.cursors.get(mailbox).cloned())
    }

    async fn list_cursors(&self) -> Result<Vec<SyncCursor>> {
        Ok(self.lock()?.cursors.values().cloned().collect())
    }

    async fn commit_sync(
        &self,
        cursor: &SyncCursor,
        expected: i64,
        messages: &[MessageRecord],
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let mut inner = self.lock()?;
        let id = &cursor.mailbox_id;
        if !inner.mailboxes.contains_key(id) {
            return Err(Error::not_found("mailbox", id));
        }
        let current = inner.cursors.get(id).map_or(0, |c| c.version);
        let held = inner.leases.get(&(id.clone(), fence.kind)).map(|l| l.fence);
        if current != expected || held != Some(fence.fence) {
            return Ok(None);
        }
        let version = inner.next_version();
        let mut stored = cursor.clone();
        stored.version = version;
        inner.cursors.insert(id.clone(), stored);
        let records = inner.records.entry(id.clone()).or_default();
        for m in messages {
            records.entry(m.key.clone()).or_insert_with(|| m.clone());
        }
        Ok(Some(version))
    }

    async fn recorded_keys(
        &self,
        mailbox: &MailboxId,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let inner = self.lock()?;
        let Some(records) = inner.records.get(mailbox) else {
            return Ok(Default::default());
        };
        Ok(keys
            .iter()
            .filter(|k| records.contains_key(*k))
            .cloned()
            .collect())
    }

    async fn recorded_uidls(
        &self,
        mailbox: &MailboxId,
    ) -> Result<std::collections::HashSet<String>> {
        let inner = self.lock()?;
        Ok(inner
            .records
            .get(mailbox)
            .map(|r| r.values().filter_map(|m| m.uidl.clone()).collect())
            .unwrap_or_default())
    }
}

impl Inner {
    /// Whether `fence` is still the mailbox's send lease.
    fn holds(&self, mailbox: &MailboxId, fence: &LeaseRecord) -> bool {
        fence.kind == LeaseKind::Send
            && self
                .leases
                .get(&(mailbox.clone(), fence.kind))
                .is_some_and(|l| l.fence == fence.fence)
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn get_outgoing(
        &self,
        mailbox: &MailboxId,
        ids: &[String],
    ) -> Result<Vec<OutgoingRecord>> {
        let inner = self.lock()?;
        let Some(records) = inner.outgoing.get(mailbox) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| records.get(id).cloned())
            .collect())
    }

    async fn list_outgoing(&self, mailbox: &MailboxId) -> Result<Vec<OutgoingRecord>> {
        let inner = self.lock()?;
        Ok(inner
            .outgoing
            .get(mailbox)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn put_outgoing(
        &self,
        record: &OutgoingRecord,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let mut inner = self.lock()?;
        let id = &record.mailbox_id;
        if !inner.mailboxes.contains_key(id) {
            return Err(Error::not_found("mailbox", id));
        }
        let current = inner
            .outgoing
            .get(id)
            .and_then(|r| r.get(&record.id))
            .map_or(0, |r| r.version);
        if current != expected || !inner.holds(id, fence) {
            return Ok(None);
        }
        let version = inner.next_version();
        let mut stored = record.clone();
        stored.version = version;
        inner
            .outgoing
            .entry(id.clone())
            .or_default()
            .insert(stored.id.clone(), stored);
        Ok(Some(version))
    }

    async fn get_outbox_cursor(&self, mailbox: &MailboxId) -> Result<Option<OutboxCursor>> {
        Ok(self.lock()?.outbox_cursors.get(mailbox).cloned())
    }

    async fn list_outbox_cursors(&self) -> Result<Vec<OutboxCursor>> {
        Ok(self.lock()?.outbox_cursors.values().cloned().collect())
    }

    async fn put_outbox_cursor(
        &self,
        cursor: &OutboxCursor,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let mut inner = self.lock()?;
        let id = &cursor.mailbox_id;
        if !inner.mailboxes.contains_key(id) {
            return Err(Error::not_found("mailbox", id));
        }
        let current = inner.outbox_cursors.get(id).map_or(0, |c| c.version);
        if current != expected || !inner.holds(id, fence) {
            return Ok(None);
        }
        let version = inner.next_version();
        let mut stored = cursor.clone();
        stored.version = version;
        inner.outbox_cursors.insert(id.clone(), stored);
        Ok(Some(version))
    }
}

fn due_order(list: &mut [PendingRevocation]) {
    list.sort_by(|a, b| {
        (a.next_attempt_at, &a.created_at, &a.id).cmp(&(b.next_attempt_at, &b.created_at, &b.id))
    });
}

#[async_trait]
impl RevocationStore for MemoryStore {
    async fn queue_revocation(&self, revocation: &PendingRevocation) -> Result<()> {
        let mut inner = self.lock()?;
        if inner.revocations.contains_key(&revocation.id) {
            return Err(Error::new(
                crate::ErrorCode::AlreadyExists,
                format!("revocation {} is already queued", revocation.id),
            ));
        }
        inner
            .revocations
            .insert(revocation.id.clone(), revocation.clone());
        Ok(())
    }

    async fn claim_revocations(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>> {
        let mut inner = self.lock()?;
        let mut due: Vec<PendingRevocation> = inner
            .revocations
            .values()
            .filter(|r| r.next_attempt_at <= now)
            .cloned()
            .collect();
        due_order(&mut due);
        due.truncate(limit);
        for r in &mut due {
            r.next_attempt_at = until;
            if let Some(stored) = inner.revocations.get_mut(&r.id) {
                stored.next_attempt_at = until;
            }
        }
        Ok(due)
    }

    async fn reschedule_revocation(
        &self,
        id: &str,
        attempts: u32,
        last_error: &str,
        next_attempt_at: Timestamp,
    ) -> Result<()> {
        if let Some(r) = self.lock()?.revocations.get_mut(id) {
            r.attempts = attempts;
            r.last_error = Some(last_error.to_owned());
            r.next_attempt_at = next_attempt_at;
        }
        Ok(())
    }

    async fn delete_revocation(&self, id: &str) -> Result<()> {
        self.lock()?.revocations.remove(id);
        Ok(())
    }

    async fn list_revocations(&self) -> Result<Vec<PendingRevocation>> {
        let mut all: Vec<PendingRevocation> = self.lock()?.revocations.values().cloned().collect();
        due_order(&mut all);
        Ok(all)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    }

    /// Nothing is sealed in memory: succeeds with nothing re-sealed.
    async fn rotate_key(&self, _new_key: &super::SealKey) -> Result<super::KeyRotation> {
        drop(self.lock()?);
        Ok(super::KeyRotation::default())
    }
}
