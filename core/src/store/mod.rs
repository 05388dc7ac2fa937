//! Persistence, as four cohesive traits that every store implements:
//!
//! * [`DirectoryStore`]: the admin's configuration — profiles and
//!   mailboxes, with their invariants (unique names and addresses, one
//!   default profile, a profile's mailbox capacity, no deleting a profile in
//!   use) kept inside one transaction;
//! * [`StateStore`]: each mailbox's runtime state
//!   ([`crate::lifecycle::MailboxState`]), its alerts, and the profiles'
//!   last test results;
//! * [`GrantStore`]: pending consents and OAuth grants (tokens sealed at
//!   rest);
//! * [`LeaseStore`]: leases that give one holder at a time a mailbox's
//!   refresh or its sync work;
//! * [`SyncStore`]: each mailbox's incoming cursor and the recorded outcome
//!   of every message taken in, written together;
//! * [`OutboxStore`]: each outgoing message's record (its Message-ID and
//!   where it stands) and each mailbox's outgoing cursor.
//!
//! * [`RevocationStore`]: revocations (RFC 7009) that failed transiently,
//!   kept until they are sent again.
//!
//! [`Store`] is all seven together, plus [`Store::rotate_key`]. The library ships [`MemoryStore`], the
//! embedded default [`SqliteStore`], and [`PostgresStore`] for many
//! workers sharing one database; one conformance suite
//! (`mailsync::store::conformance`, feature `test-support`) runs against
//! each.
//!
//! # Versions
//!
//! Every record two actors can change carries a version taken from one
//! store-wide sequence, so versions only grow and are never reused, even
//! after a delete. Writes compare and swap: a write based on a stale
//! version changes nothing and reports `conflict` (or `None`, where the
//! caller decides). Leases carry a fencing token from the same sequence;
//! grant writes made under a lease are refused once another holder has
//! taken it.

mod legacy;
pub(crate) mod memory;
pub(crate) mod postgres;
pub(crate) mod seal;
pub(crate) mod sqlite;

#[cfg(feature = "test-support")]
pub mod conformance;

pub use memory::MemoryStore;
pub use postgres::{PostgresConfig, PostgresStore};
pub use seal::SealKey;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::MailboxState;
use crate::model::{
    Alert, Authentication, LastTestResult, Mailbox, MailboxId, ProfileId, Secret, ServerProfile,
    Timestamp,
};
use crate::sync::{MessageRecord, OutboxCursor, OutgoingRecord, SyncCursor};

/// A consent request waiting for its redirect (RFC 6749 §4.1.1 `state`,
/// RFC 7636 `code_verifier`), bound to the issuer and client it was made
/// for.
///
/// Stored so that the callback may reach another process or arrive after a
/// restart. Stores key it by [`state_key`] (a SHA-256 of the state), so the
/// state itself is never an index value; `state` and `pkce_verifier` are
/// sealed at rest.
#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    /// The random, single-use `state` sent with the consent URL.
    pub state: Secret,
    /// The mailbox the consent is for.
    pub mailbox_id: MailboxId,
    /// The PKCE code verifier (RFC 7636 §4.1).
    pub pkce_verifier: Secret,
    /// The exact redirect URI the consent URL carried (the code exchange must repeat it).
    pub redirect_uri: String,
    /// The issuer the consent was sent to.
    pub issuer: String,
    /// The OAuth client it was made for.
    pub client_id: String,
    /// When the consent URL was issued.
    pub created_at: Timestamp,
    /// After this instant the callback is refused with `state_invalid`.
    pub expires_at: Timestamp,
}

/// A mailbox's OAuth grant as stored: its tokens (sealed at rest) and what
/// issued them. The issuer, client, token endpoint and account are part of
/// the sealed values' associated data, so a grant cannot be moved to
/// another issuer by editing the database; the library uses a grant only
/// with the issuer and client it names.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// The issuer that granted it (normalized: no trailing `/`).
    pub issuer: String,
    /// The OAuth client it was granted to.
    pub client_id: String,
    /// Where it is refreshed; fixed at consent.
    pub token_endpoint: String,
    /// The account (email) that consented.
    pub account: String,
    /// The access token (RFC 6749 §1.4).
    pub access_token: Secret,
    /// The refresh token (RFC 6749 §1.5), if the provider issued one.
    pub refresh_token: Option<Secret>,
    /// When the access token expires, if the provider said.
    pub expires_at: Option<Timestamp>,
    /// The scopes granted (RFC 6749 §3.3).
    pub scopes: Vec<String>,
    /// When these tokens were obtained (consent or last refresh).
    pub obtained_at: Timestamp,
    /// Write version; set by the store, only grows.
    pub version: i64,
}

/// What a lease is for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// Refreshing the mailbox's access token.
    Refresh,
    /// Syncing the mailbox.
    Sync,
    /// Sending the mailbox's outgoing mail (apart from [`LeaseKind::Sync`],
    /// so incoming and outgoing do not wait for each other).
    Send,
}

impl LeaseKind {
    /// `"refresh"`, `"sync"` or `"send"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Refresh => "refresh",
            LeaseKind::Sync => "sync",
            LeaseKind::Send => "send",
        }
    }
}

/// A lease as stored: who holds what until when, with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// What for.
    pub kind: LeaseKind,
    /// The holder.
    pub owner: String,
    /// Fencing token: taken from the version sequence at acquisition, so a
    /// later holder always has a larger one.
    pub fence: i64,
    /// Until when it is held, unless renewed.
    pub expires_at: Timestamp,
}

/// A change to a mailbox's grant, made in the same transaction as a state
/// change ([`StateStore::commit`]).
#[derive(Debug, Clone)]
pub enum GrantChange<'a> {
    /// Leave the grant as it is.
    Keep,
    /// Store this grant. `expected`: the version the stored grant must have
    /// (`None`: there must be none).
    Put {
        /// The grant.
        grant: &'a Grant,
        /// The stored grant's version, or `None` for "no grant stored".
        expected: Option<i64>,
    },
    /// Delete the grant if its version is `expected` (`None`: whatever is stored).
    Delete {
        /// The version to delete.
        expected: Option<i64>,
    },
}

/// A change to a mailbox's pending consent, made in a commit.
#[derive(Debug, Clone)]
pub enum PendingChange<'a> {
    /// Leave it.
    Keep,
    /// Store this one, replacing any other of the mailbox (its state stops working).
    Put(&'a PendingAuthorization),
    /// Delete the mailbox's pending consent.
    Delete,
}

/// One unit of work on a mailbox's runtime records, applied atomically.
#[derive(Debug, Clone)]
pub struct Commit<'a> {
    /// The mailbox.
    pub mailbox_id: &'a MailboxId,
    /// The state's version the change is based on.
    pub expected_state_version: i64,
    /// The new state (`None`: unchanged).
    pub state: Option<&'a MailboxState>,
    /// The grant change.
    pub grant: GrantChange<'a>,
    /// The pending consent change.
    pub pending: PendingChange<'a>,
    /// Alerts to add (the oldest beyond [`crate::model::mailbox::MAX_ALERTS`] are dropped).
    pub alerts: &'a [Alert],
}

/// How a [`StateStore::commit`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Everything was written; the state's version now.
    Committed {
        /// The state's version after the commit.
        state_version: i64,
        /// The grant's version after the commit, if one is stored.
        grant_version: Option<i64>,
    },
    /// The state moved on since `expected_state_version`; nothing was written.
    StateConflict,
    /// The grant is not at the expected version; nothing was written.
    GrantConflict,
}

/// The lookup key of a pending authorization: lowercase hex SHA-256 of the
/// `state`. Stores index on this, never on the state itself.
pub fn state_key(state: &Secret) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state.expose().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Profiles and mailboxes: the admin's configuration.
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Inserts a profile; returns it with its version. `already_exists` on
    /// a duplicate name (compared by [`crate::model::profile_name_key`]).
    /// If it is the default, any other default is cleared atomically.
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<ServerProfile>;
    /// Replaces a profile whose stored version is `profile.version`;
    /// returns it with its new version. `conflict` if the version moved on,
    /// `not_found` if it is gone, `validation` if its capacity is below the
    /// mailboxes it holds (counted in the same transaction). The default
    /// rule applies as on insert.
    async fn update_profile(&self, profile: &ServerProfile) -> Result<ServerProfile>;
    /// A profile by id.
    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>>;
    /// All profiles, ordered by name.
    async fn list_profiles(&self) -> Result<Vec<ServerProfile>>;
    /// Deletes a profile; `profile_in_use` while mailboxes reference it.
    async fn delete_profile(&self, id: &ProfileId) -> Result<()>;

    /// Inserts a mailbox and its initial state; returns it with its
    /// version. `already_exists` on a duplicate address; with a profile and
    /// `capacity`, `capacity_exceeded` if the profile is full (checked in
    /// the same transaction).
    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox>;
    /// Replaces a mailbox whose stored version is `mailbox.version`
    /// (`conflict` otherwise); the capacity rule applies when its profile
    /// changed.
    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox>;
    /// A mailbox by id.
    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>>;
    /// A mailbox by (lower-cased) address.
    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>>;
    /// Mailboxes, all or those of one profile, ordered by address.
    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>>;
    /// How many mailboxes a profile holds.
    async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32>;
    /// Deletes a mailbox with everything of it (state, alerts, grant,
    /// pending consent, leases). `not_found` if it is gone.
    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()>;
}

/// Runtime state: mailbox states, alerts, profile test results.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// A mailbox's state (`None` if the mailbox does not exist).
    async fn get_state(&self, mailbox: &MailboxId) -> Result<Option<MailboxState>>;
    /// Applies a [`Commit`] atomically, or nothing at all.
    async fn commit(&self, commit: &Commit<'_>) -> Result<CommitOutcome>;
    /// A mailbox's alerts, oldest first (at most the last `limit`).
    async fn alerts(&self, mailbox: &MailboxId, limit: usize) -> Result<Vec<Alert>>;
    /// Records a profile's last test result.
    async fn put_profile_test(&self, profile: &ProfileId, result: &LastTestResult) -> Result<()>;
    /// A profile's last test result.
    async fn get_profile_test(&self, profile: &ProfileId) -> Result<Option<LastTestResult>>;
}

/// Pending consents and grants.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Removes and returns the pending authorization whose state is
    /// `state`, atomically: of two concurrent callers with the same state at
    /// most one gets it. Expired entries are returned too (the caller
    /// refuses them).
    async fn take_pending(&self, state: &Secret) -> Result<Option<PendingAuthorization>>;
    /// A mailbox's grant.
    async fn get_grant(&self, mailbox: &MailboxId) -> Result<Option<Grant>>;
    /// Replaces a grant whose stored version is `expected` (a refresh).
    /// With `fence`, also requires that lease to be the mailbox's current
    /// one, so a holder whose lease was taken over cannot write. Returns
    /// the new version, or `None` when a check failed (nothing written).
    async fn put_grant(
        &self,
        grant: &Grant,
        expected: i64,
        fence: Option<&LeaseRecord>,
    ) -> Result<Option<i64>>;
    /// Whether any mailbox holds a grant of `account` from `issuer` for
    /// `client_id`.
    async fn grant_held(&self, issuer: &str, client_id: &str, account: &str) -> Result<bool>;
}

/// Leases: one holder at a time, with fencing.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease for `owner` until `until` if it is free or expired
    /// at `now`; a new acquisition gets a new fencing token. `None` when
    /// someone else holds it.
    async fn acquire_lease(
        &self,
        mailbox: &MailboxId,
        kind: LeaseKind,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>>;
    /// Extends a lease its holder still holds (same fencing token). `None`
    /// when it was lost (taken over, or released).
    async fn renew_lease(
        &self,
        lease: &LeaseRecord,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>>;
    /// Releases a lease if it is still this one.
    async fn release_lease(&self, lease: &LeaseRecord) -> Result<()>;
    /// Every lease, held or expired, for operators.
    async fn list_leases(&self) -> Result<Vec<LeaseRecord>>;
    /// Claims the [`LeaseKind::Sync`] leases of up to `limit` mailboxes
    /// that are due at `now`, oldest due first, for `owner` until `until`,
    /// each with a new fencing token. A mailbox is due by its persisted due
    /// time ([`sync_due_at`]: a direction enabled and past its
    /// postponement, or retrying and past its backoff). Left out: mailboxes whose sync lease is held
    /// (not expired at `now`), those in `skip`, and those another caller is
    /// claiming at this very moment (PostgreSQL: `FOR UPDATE SKIP LOCKED`),
    /// so concurrent workers claim different mailboxes without waiting for
    /// each other. Taking over an expired lease of another holder counts as
    /// a takeover.
    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
        skip: &[MailboxId],
    ) -> Result<Vec<LeaseRecord>>;
    /// The earliest moment a mailbox may become claimable by
    /// [`LeaseStore::claim_due`]: over the mailboxes with a due time, the
    /// later of it and the expiry of the sync lease held on it. `None` when
    /// no mailbox is scheduled.
    async fn next_due(&self) -> Result<Option<Timestamp>>;
}

/// When a mailbox is due for its next cycle, in Unix milliseconds: the
/// earlier of its incoming direction's due time and its outgoing
/// direction's (see [`crate::sync`]); the function of its configuration,
/// state, sync cursor and outbox cursor that the stores persist with every
/// write of any of the four (see [`LeaseStore::claim_due`]). `None`: not
/// scheduled.
pub fn sync_due_at(
    mailbox: &Mailbox,
    state: &MailboxState,
    cursor: Option<&SyncCursor>,
    outbox: Option<&OutboxCursor>,
) -> Option<i64> {
    crate::sync::due_at(mailbox, state, cursor, outbox).map(Timestamp::unix_millis)
}

/// Incoming sync: cursors and per-message outcomes.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// The mailbox's cursor; `None` before its first cycle.
    async fn get_cursor(&self, mailbox: &MailboxId) -> Result<Option<SyncCursor>>;
    /// Every cursor.
    async fn list_cursors(&self) -> Result<Vec<SyncCursor>>;
    /// Writes `cursor` and records `messages` in one transaction, if the
    /// stored cursor's version is `expected` (0: none stored yet) and
    /// `fence` is still the mailbox's sync lease. Returns the new version,
    /// or `None` (nothing written) when either is stale. Recording a key
    /// again keeps the first record.
    async fn commit_sync(
        &self,
        cursor: &SyncCursor,
        expected: i64,
        messages: &[MessageRecord],
        fence: &LeaseRecord,
    ) -> Result<Option<i64>>;
    /// The keys among `keys` that have a recorded outcome.
    async fn recorded_keys(
        &self,
        mailbox: &MailboxId,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>>;
    /// Every POP3 UIDL with a recorded outcome (the POP3 cursor).
    async fn recorded_uidls(
        &self,
        mailbox: &MailboxId,
    ) -> Result<std::collections::HashSet<String>>;
}

// ---- outgoing sync (OutboxStore) ----

/// Outgoing sync: each message's record and each mailbox's outgoing
/// cursor. Every write compares and swaps on the stored version (0: none
/// stored yet) and requires `fence` to be the mailbox's current
/// [`LeaseKind::Send`] lease; a stale version or lease (or a lease of
/// another kind) writes nothing and returns `None`. Deleting a mailbox
/// deletes both.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// The records of the messages among `ids` the store has (in no
    /// particular order).
    async fn get_outgoing(
        &self,
        mailbox: &MailboxId,
        ids: &[String],
    ) -> Result<Vec<OutgoingRecord>>;
    /// Every record of a mailbox, ordered by id.
    async fn list_outgoing(&self, mailbox: &MailboxId) -> Result<Vec<OutgoingRecord>>;
    /// Writes a record (keyed by its mailbox and id) if the stored one's
    /// version is `expected` (0: there must be none); returns its new
    /// version. `not_found` if the mailbox does not exist.
    async fn put_outgoing(
        &self,
        record: &OutgoingRecord,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>>;
    /// The mailbox's outgoing cursor; `None` before its first outgoing cycle.
    async fn get_outbox_cursor(&self, mailbox: &MailboxId) -> Result<Option<OutboxCursor>>;
    /// Every outgoing cursor.
    async fn list_outbox_cursors(&self) -> Result<Vec<OutboxCursor>>;
    /// Writes the cursor if the stored one's version is `expected` (0:
    /// none stored yet); returns its new version. `not_found` if the
    /// mailbox does not exist.
    async fn put_outbox_cursor(
        &self,
        cursor: &OutboxCursor,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>>;
}

// ---- end of outgoing sync ----

/// A token revocation (RFC 7009) that failed transiently (the provider
/// answered 429, 5xx or something that is not JSON, or could not be
/// reached), kept until it is sent again by
/// [`crate::Connections::retry_revocations`] (the sync engine calls it
/// between cycles). The mailbox may be gone; what the revocation needs is
/// recorded here. The token and the client secret are sealed at rest, bound
/// to the endpoint and client, so an entry cannot be redirected elsewhere.
#[derive(Debug, Clone)]
pub struct PendingRevocation {
    /// Its id (a UUID).
    pub id: String,
    /// The mailbox whose grant it was (for operators; may be deleted).
    pub mailbox_id: MailboxId,
    /// The issuer of the token.
    pub issuer: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The client's secret at the time (client_secret_post), if any.
    pub client_secret: Option<Secret>,
    /// Where it is sent.
    pub endpoint: String,
    /// The token.
    pub token: Secret,
    /// `refresh_token` or `access_token`.
    pub token_type_hint: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The code of the last failure.
    pub last_error: Option<String>,
    /// When it was first queued.
    pub created_at: Timestamp,
    /// Not sent again before this instant.
    pub next_attempt_at: Timestamp,
}

/// Queued revocations.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Queues a revocation (its `id` must be new).
    async fn queue_revocation(&self, revocation: &PendingRevocation) -> Result<()>;
    /// Takes up to `limit` revocations due at `now` (`next_attempt_at <=
    /// now`), oldest due first, and moves their `next_attempt_at` to
    /// `until` in the same step, so that concurrent callers take different
    /// ones (an entry whose caller died is due again at `until`).
    async fn claim_revocations(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>>;
    /// Records a failed attempt: the new attempt count, the failure's code
    /// and the next due time. Nothing happens if it is gone.
    async fn reschedule_revocation(
        &self,
        id: &str,
        attempts: u32,
        last_error: &str,
        next_attempt_at: Timestamp,
    ) -> Result<()>;
    /// Removes a revocation (sent, or given up). Nothing happens if it is gone.
    async fn delete_revocation(&self, id: &str) -> Result<()>;
    /// Every queued revocation, oldest due first, for operators.
    async fn list_revocations(&self) -> Result<Vec<PendingRevocation>>;
}

/// What a [`Store::rotate_key`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(get_all, from_py_object, module = "mailsync")
)]
pub struct KeyRotation {
    /// Sealed values re-sealed with the new key (0 when the store already
    /// used it: a rotation that had completed, run again).
    pub resealed: u32,
    /// Whether the store already used the new key before this call.
    pub already_rotated: bool,
}

/// Everything a store does. Implementations must be safe to share between
/// tasks and keep each trait's guarantees atomically.
#[async_trait]
pub trait Store:
    DirectoryStore
    + StateStore
    + GrantStore
    + LeaseStore
    + SyncStore
    + OutboxStore
    + RevocationStore
    + 'static
{
    /// Flushes and releases resources (e.g. checkpoints SQLite's WAL).
    /// Further calls fail. The default does nothing.
    async fn close(&self) {}

    /// Re-seals every sealed value (secrets of profiles and mailboxes,
    /// pending consents, grants, queued revocations and the key check) with
    /// `new_key`, in one transaction, and uses `new_key` from then on: the
    /// store is never half on one key. The old key no longer opens it.
    ///
    /// Resumable: if the process dies before the commit, nothing changed
    /// and the same call can be made again with the old key; after the
    /// commit, the store opens only with `new_key`, and calling
    /// `rotate_key(new_key)` again reports `already_rotated`. A key that is
    /// neither the store's nor `new_key` is refused (`seal_key_mismatch`).
    /// Other processes still holding the old key must be stopped first:
    /// their writes would be sealed with it.
    ///
    /// The default refuses (`validation`): a store that seals nothing has
    /// no key to rotate.
    async fn rotate_key(&self, new_key: &SealKey) -> Result<KeyRotation> {
        let _ = new_key;
        Err(Error::validation(
            "store",
            "this store does not seal secrets; there is no key to rotate",
        ))
    }
}

/// The associated data a queued revocation's sealed secrets are bound to.
pub(crate) fn revocation_context(r: &PendingRevocation) -> String {
    format!(
        "revocation:{}:{}|{}|{}",
        r.id, r.issuer, r.client_id, r.endpoint
    )
}

/// What a queued revocation seals: its token and client secret.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct RevocationSecrets {
    pub(crate) token: String,
    pub(crate) client_secret: Option<String>,
}

impl RevocationSecrets {
    pub(crate) fn of(r: &PendingRevocation) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(
            serde_json::to_vec(&RevocationSecrets {
                token: r.token.expose().to_owned(),
                client_secret: r.client_secret.as_ref().map(|s| s.expose().to_owned()),
            })
            .expect("strings serialize"),
        )
    }

    pub(crate) fn open(key: &SealKey, context: &str, sealed: &[u8]) -> Result<RevocationSecrets> {
        let bytes = key.open(context, sealed)?;
        serde_json::from_slice(&bytes)
            .map_err(|_| Error::new(ErrorCode::Store, "corrupt record: queued revocation"))
    }
}

/// The profile's secret field (client secret or profile password), if any.
pub(crate) fn profile_secret(profile: &ServerProfile) -> Option<&Secret> {
    match &profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret.as_ref()
        }
        Authentication::CredentialsInProfile { password, .. } => password.as_ref(),
        Authentication::CredentialsPerMailbox {} => None,
    }
}

/// Puts a secret back into the profile's secret field.
pub(crate) fn set_profile_secret(profile: &mut ServerProfile, secret: Secret) {
    match &mut profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret = Some(secret)
        }
        Authentication::CredentialsInProfile { password, .. } => *password = Some(secret),
        Authentication::CredentialsPerMailbox {} => {}
    }
}

/// The mailbox's password, if any.
pub(crate) fn mailbox_secret(mailbox: &Mailbox) -> Option<&Secret> {
    mailbox
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref())
}

/// Puts the password back into the mailbox.
pub(crate) fn set_mailbox_secret(mailbox: &mut Mailbox, secret: Secret) {
    if let Some(creds) = mailbox.credentials.as_mut() {
        creds.password = Some(secret);
    }
}

/// The plaintext of the `key_check` row that tells, before anything is
/// written, whether a database was created with the key it is opened with.
pub(crate) const KEY_CHECK: &[u8] = b"mailsync key check v1";

/// The associated data of the `key_check` row.
pub(crate) const KEY_CHECK_CONTEXT: &str = "meta:key_check";

/// The associated data a profile's sealed secret is bound to.
pub(crate) fn profile_context(id: &ProfileId) -> String {
    format!("profile:{id}:secret")
}

/// The associated data a mailbox's sealed password is bound to.
pub(crate) fn mailbox_context(id: &MailboxId) -> String {
    format!("mailbox:{id}:password")
}

/// The associated data a pending consent's sealed state and verifier are
/// bound to.
pub(crate) fn pending_context(mailbox: &str, key: &str, issuer: &str, client_id: &str) -> String {
    format!("oauth_pending:{mailbox}:{key}:{issuer}|{client_id}")
}

/// The associated data a grant's sealed tokens are bound to.
pub(crate) fn grant_context(grant: &Grant, which: &str) -> String {
    grant_context_of(
        grant.mailbox_id.as_str(),
        which,
        &grant.issuer,
        &grant.client_id,
        &grant.token_endpoint,
        &grant.account,
    )
}

/// [`grant_context`] from a grant row's columns (key rotation).
pub(crate) fn grant_context_of(
    mailbox: &str,
    which: &str,
    issuer: &str,
    client_id: &str,
    token_endpoint: &str,
    account: &str,
) -> String {
    format!("grant:{mailbox}:{which}:{issuer}|{client_id}|{token_endpoint}|{account}")
}

/// Which key opens the key check of a store being rotated from `old` to
/// `new`: `Ok(false)` the old one (rotate), `Ok(true)` only the new one
/// (already rotated), else `seal_key_mismatch`.
pub(crate) fn rotation_start(old: &SealKey, new: &SealKey, key_check: &[u8]) -> Result<bool> {
    if new.open(KEY_CHECK_CONTEXT, key_check).is_ok() {
        return Ok(true);
    }
    if old.open(KEY_CHECK_CONTEXT, key_check).is_ok() {
        return Ok(false);
    }
    Err(Error::new(
        ErrorCode::SealKeyMismatch,
        "the store's key check opens with neither the current key nor the new one; nothing was changed",
    ))
}

pub(crate) fn capacity_error(profile: &ProfileId, name: &str, count: u32, capacity: u32) -> Error {
    Error::new(
        ErrorCode::CapacityExceeded,
        format!(
            "server profile '{name}' ({profile}) already holds {count} of {capacity} mailboxes; \
             create another profile with the same OAuth client or allow spill-over"
        ),
    )
}

pub(crate) fn capacity_below_count(count: u32) -> Error {
    Error::validation(
        "mailbox_capacity",
        format!("the profile holds {count} mailboxes; move some before lowering the capacity"),
    )
}

pub(crate) fn duplicate_profile(name: &str) -> Error {
    Error::new(
        ErrorCode::AlreadyExists,
        format!("a server profile named '{name}' already exists"),
    )
}

pub(crate) fn duplicate_mailbox(email: &str) -> Error {
    Error::new(
        ErrorCode::AlreadyExists,
        format!("a mailbox for '{email}' already exists"),
    )
}

pub(crate) fn profile_in_use(name: &str, count: u32) -> Error {
    Error::new(
        ErrorCode::ProfileInUse,
        format!("server profile '{name}' still has {count} mailbox(es); move or delete them first"),
    )
}

pub(crate) fn stale(kind: &str, id: impl std::fmt::Display, expected: i64) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "{kind} {id} was changed by someone else since version {expected}; reload it and apply the change again"
        ),
    )
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot encode record: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::new(ErrorCode::Store, format!("corrupt record: {e}")))
}
