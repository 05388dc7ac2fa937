//! Persistence of profiles and mailboxes (and, later, tokens and cursors).
//!
//! [`Store`] is the seam: the library ships an in-memory store for tests
//! ([`MemoryStore`]) and the embedded default, a SQLite file
//! ([`SqliteStore`]). Invariants that must hold under concurrency are the
//! store's job, inside one transaction: unique profile names and mailbox
//! addresses, at most one default profile, a profile's mailbox capacity, and
//! no deleting a profile that still has mailboxes.
//!
//! Records cross the trait as model types. Their secret fields are skipped
//! by serde; a store persists them separately, sealed with its [`SealKey`].

pub mod memory;
pub mod seal;
pub mod sqlite;

pub use memory::MemoryStore;
pub use seal::SealKey;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::error::{Error, ErrorCode, Result};
use crate::model::{Authentication, Mailbox, MailboxId, ProfileId, Secret, ServerProfile};
use time::OffsetDateTime;

/// A consent request waiting for its redirect (RFC 6749 §4.1.1 `state`,
/// RFC 7636 `code_verifier`).
///
/// Stored by [`Store::put_pending_authorization`] so that the callback may
/// reach another process or arrive after a restart. The store keys it by
/// [`state_key`] (a SHA-256 of the state), so the state itself is never an
/// index value; `state` and `pkce_verifier` are sealed at rest.
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
    /// When the consent URL was issued.
    pub created_at: OffsetDateTime,
    /// After this instant the callback is refused with `state_invalid`.
    pub expires_at: OffsetDateTime,
}

/// A mailbox's OAuth token set as stored (secrets sealed at rest).
///
/// `version` increases by one on every write; writers that refresh use it for
/// compare-and-swap ([`Store::put_tokens`]).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// The account (email) that consented.
    pub account: String,
    /// The access token (RFC 6749 §1.4).
    pub access_token: Secret,
    /// The refresh token (RFC 6749 §1.5), if the provider issued one.
    pub refresh_token: Option<Secret>,
    /// When the access token expires, if the provider said.
    pub expires_at: Option<OffsetDateTime>,
    /// The scopes granted (RFC 6749 §3.3).
    pub scopes: Vec<String>,
    /// When these tokens were obtained (consent or last refresh).
    pub obtained_at: OffsetDateTime,
    /// Write counter for compare-and-swap; ignored on input, set by the store.
    pub version: u64,
}

/// The lookup key of a pending authorization: lowercase hex SHA-256 of the
/// `state`. Stores index on this, never on the state itself.
pub fn state_key(state: &Secret) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state.expose().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Storage for the directory. Implementations must be safe to share between
/// tasks and keep the invariants listed in the module docs atomically.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a profile. Fails with `already_exists` on a duplicate name. If
    /// the profile is the default, any other default is cleared atomically.
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<()>;
    /// Replaces a profile (same default rule). `not_found` if it is gone.
    async fn update_profile(&self, profile: &ServerProfile) -> Result<()>;
    /// A profile by id.
    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>>;
    /// All profiles, ordered by name.
    async fn list_profiles(&self) -> Result<Vec<ServerProfile>>;
    /// Deletes a profile; `profile_in_use` while mailboxes reference it.
    async fn delete_profile(&self, id: &ProfileId) -> Result<()>;

    /// Inserts a mailbox. `already_exists` on a duplicate address; when it has
    /// a profile and `capacity` is given, `capacity_exceeded` if the profile
    /// already holds that many mailboxes (checked in the same transaction).
    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()>;
    /// Replaces a mailbox; the capacity rule applies when its profile changed.
    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()>;
    /// A mailbox by id.
    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>>;
    /// A mailbox by (lower-cased) address.
    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>>;
    /// Mailboxes, all or those of one profile, ordered by address.
    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>>;
    /// How many mailboxes a profile holds.
    async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32>;
    /// Deletes a mailbox. `not_found` if it is gone. Its pending
    /// authorization, tokens and refresh lease go with it.
    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()>;

    // ---------------------------------------------------------------- OAuth

    /// Stores a pending authorization, replacing any previous one for the
    /// same mailbox (its state stops working).
    async fn put_pending_authorization(&self, pending: &PendingAuthorization) -> Result<()>;
    /// Removes and returns the pending authorization whose state is `state`,
    /// atomically: of two concurrent callers with the same state at most one
    /// gets it. Expired entries are returned too (the caller refuses them).
    async fn take_pending_authorization(
        &self,
        state: &Secret,
    ) -> Result<Option<PendingAuthorization>>;
    /// Removes the mailbox's pending authorization, if any.
    async fn delete_pending_authorization(&self, mailbox: &MailboxId) -> Result<()>;

    /// The mailbox's token set.
    async fn get_tokens(&self, mailbox: &MailboxId) -> Result<Option<TokenRecord>>;
    /// Writes a token set with compare-and-swap. With `expected_version:
    /// Some(v)` the write happens only if the stored set has version `v`;
    /// with `None` it replaces whatever is stored. Returns the new version,
    /// or `None` when the comparison failed (nothing written).
    async fn put_tokens(
        &self,
        tokens: &TokenRecord,
        expected_version: Option<u64>,
    ) -> Result<Option<u64>>;
    /// Deletes the mailbox's token set (no error if there is none).
    async fn delete_tokens(&self, mailbox: &MailboxId) -> Result<()>;

    /// Takes the mailbox's refresh lease for `owner` until `expires_at`, if it
    /// is free, expired or already held by `owner`. Returns whether `owner`
    /// holds it now. This is the cross-process single-flight for refreshes.
    async fn try_acquire_refresh_lease(
        &self,
        mailbox: &MailboxId,
        owner: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool>;
    /// Releases the lease if `owner` holds it.
    async fn release_refresh_lease(&self, mailbox: &MailboxId, owner: &str) -> Result<()>;

    /// Flushes and releases resources (e.g. checkpoints SQLite's WAL).
    /// Further calls fail. The default does nothing.
    async fn close(&self) {}
}

/// The profile's secret field (client secret or profile password), if any.
pub(crate) fn profile_secret(profile: &ServerProfile) -> Option<&Secret> {
    match &profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret.as_ref()
        }
        Authentication::CredentialsInProfile { password, .. } => password.as_ref(),
        Authentication::CredentialsPerMailbox => None,
    }
}

/// Puts a secret back into the profile's secret field.
pub(crate) fn set_profile_secret(profile: &mut ServerProfile, secret: Secret) {
    match &mut profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret = Some(secret)
        }
        Authentication::CredentialsInProfile { password, .. } => *password = Some(secret),
        Authentication::CredentialsPerMailbox => {}
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

pub(crate) fn capacity_error(profile: &ProfileId, name: &str, count: u32, capacity: u32) -> Error {
    Error::new(
        ErrorCode::CapacityExceeded,
        format!(
            "server profile '{name}' ({profile}) already holds {count} of {capacity} mailboxes; \
             create another profile with the same OAuth client or allow spill-over"
        ),
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

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot encode record: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::new(ErrorCode::Store, format!("corrupt record: {e}")))
}
