//! The embedded default store: one SQLite file (WAL mode) through sqlx.
//!
//! Several processes may open the same file. Every write that checks
//! something (an invariant, a version, a fencing token) runs in a
//! `BEGIN IMMEDIATE` transaction, so two writers cannot both see room for
//! the 100th mailbox or both base a change on one version. Secrets are
//! sealed with the store's [`SealKey`]; a `key_check` row detects a wrong
//! key at open time, before anything is written.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Sqlite, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::seal::{SealKey, SharedKey, reseal};
use super::{
    Commit, CommitOutcome, DirectoryStore, Grant, GrantChange, GrantStore, KeyRotation, LeaseKind,
    LeaseRecord, LeaseStore, OutboxStore, PendingAuthorization, PendingChange, PendingRevocation,
    RevocationSecrets, RevocationStore, StateStore, Store, SyncStore, capacity_below_count,
    capacity_error, duplicate_mailbox, duplicate_profile, from_json, grant_context,
    grant_context_of, mailbox_secret, profile_in_use, profile_secret, revocation_context,
    rotation_start, set_mailbox_secret, set_profile_secret, stale, state_key, sync_due_at, to_json,
};
use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::MailboxState;
use crate::model::mailbox::MAX_ALERTS;
use crate::model::{
    Alert, LastTestResult, Mailbox, MailboxId, ProfileId, Secret, ServerProfile, Timestamp,
    profile_name_key,
};
use crate::sync::{MessageRecord, OutboxCursor, OutgoingRecord, SyncCursor};

const KEY_CHECK: &[u8] = b"mailsync key check v1";

/// See the module docs.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    key: SharedKey,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

type Tx<'a> = Transaction<'a, Sqlite>;

fn profile_context(id: &ProfileId) -> String {
    format!("profile:{id}:secret")
}

fn mailbox_context(id: &MailboxId) -> String {
    format!("mailbox:{id}:password")
}

fn pending_context(mailbox: &str, key: &str, issuer: &str, client_id: &str) -> String {
    format!("oauth_pending:{mailbox}:{key}:{issuer}|{client_id}")
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn kind_from(text: &str) -> Result<LeaseKind> {
    match text {
        "refresh" => Ok(LeaseKind::Refresh),
        "sync" => Ok(LeaseKind::Sync),
        "send" => Ok(LeaseKind::Send),
        other => Err(Error::new(
            ErrorCode::Store,
            format!("corrupt record: unknown lease kind '{other}'"),
        )),
    }
}

fn lease_from(row: &sqlx::sqlite::SqliteRow) -> Result<LeaseRecord> {
    Ok(LeaseRecord {
        mailbox_id: MailboxId::parse(row.get("mailbox_id"))?,
        kind: kind_from(row.get("kind"))?,
        owner: row.get("owner"),
        fence: row.get::<i64, _>("fence"),
        expires_at: Timestamp::from_unix_millis(row.get("expires_at")),
    })
}
/// Fills `profiles.name_key` where it is missing or stale (rows written
/// before the column existed).
async fn derive_name_keys(tx: &mut Tx<'_>) -> Result<()> {
    let rows = sqlx::query("SELECT id, name, name_key FROM profiles")
        .fetch_all(&mut **tx)
        .await?;
    for row in rows {
        let name: String = row.get("name");
        let stored: Option<String> = row.get("name_key");
        let key = profile_name_key(&name);
        if stored.as_deref() != Some(key.as_str()) {
            sqlx::query("UPDATE profiles SET name_key = ? WHERE id = ?")
                .bind(key)
                .bind(row.get::<String, _>("id"))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// The next value of the store-wide version sequence, inside `tx`.
async fn next_version(tx: &mut Tx<'_>) -> Result<i64> {
    let value: i64 =
        sqlx::query_scalar("UPDATE version_seq SET value = value + 1 WHERE id = 1 RETURNING value")
            .fetch_one(&mut **tx)
            .await?;
    Ok(value)
}

/// The due time of the mailbox whose mailbox, state and cursor JSON `row`
/// holds (columns `mailbox`, `state`, `cursor`, `outbox`).
fn due_of(row: &sqlx::sqlite::SqliteRow) -> Result<Option<i64>> {
    let mailbox: Mailbox = from_json(row.get("mailbox"))?;
    let state: MailboxState = from_json(row.get("state"))?;
    let cursor: Option<SyncCursor> = row
        .get::<Option<String>, _>("cursor")
        .map(|c| from_json(&c))
        .transpose()?;
    let outbox: Option<OutboxCursor> = row
        .get::<Option<String>, _>("outbox")
        .map(|c| from_json(&c))
        .transpose()?;
    Ok(sync_due_at(
        &mailbox,
        &state,
        cursor.as_ref(),
        outbox.as_ref(),
    ))
}

const DUE_INPUTS: &str = "SELECT m.id, m.data AS mailbox, s.data AS state, c.data AS cursor, \
     o.data AS outbox \
     FROM mailboxes m JOIN mailbox_state s ON s.mailbox_id = m.id \
     LEFT JOIN sync_cursors c ON c.mailbox_id = m.id \
     LEFT JOIN outbox_cursors o ON o.mailbox_id = m.id";

/// Recomputes the mailbox's due time inside `tx`, after its configuration,
/// state or cursor changed there.
async fn refresh_due(tx: &mut Tx<'_>, mailbox: &str) -> Result<()> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{DUE_INPUTS} WHERE m.id = ?")))
        .bind(mailbox)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = row {
        sqlx::query("UPDATE mailbox_state SET due_at = ? WHERE mailbox_id = ?")
            .bind(due_of(&row)?)
            .bind(mailbox)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Fills `mailbox_state.due_at` of every mailbox once, for rows written
/// before the column existed or before it counted the outgoing direction.
async fn backfill_due(tx: &mut Tx<'_>) -> Result<()> {
    let done: Option<i64> = sqlx::query_scalar("SELECT 1 FROM meta WHERE key = 'due_at_v2'")
        .fetch_optional(&mut **tx)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    for row in sqlx::query(DUE_INPUTS).fetch_all(&mut **tx).await? {
        sqlx::query("UPDATE mailbox_state SET due_at = ? WHERE mailbox_id = ?")
            .bind(due_of(&row)?)
            .bind(row.get::<String, _>("id"))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('due_at_v2', x'01')")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sealing with `key`.
    /// Fails with `seal_key_mismatch` if the file was created with another key;
    /// the file is not modified in that case.
    pub async fn open(path: impl AsRef<Path>, key: SealKey) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Mode 0600 from the start; SQLite's -wal and -shm files inherit it.
        super::seal::create_private_file(&path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Turning a new file into WAL mode does not wait for a busy lock the
        // way statements do: another process creating the same file makes
        // the first connection fail with SQLITE_BUSY, so retry that (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut backoff = Duration::from_millis(5);
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("5") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorCode::Store,
                        format!("cannot open database {}: {e}", path.display()),
                    ));
                }
            }
        };
        let store = SqliteStore {
            pool,
            key: SharedKey::new(key),
            path,
        };
        if let Err(e) = store.prepare().await {
            store.pool.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Checks the key, migrates and upgrades, all in one `BEGIN IMMEDIATE`
    /// transaction: processes that open a new file at the same moment take
    /// turns instead of racing each other's migrations.
    async fn prepare(&self) -> Result<()> {
        let mut tx = self.immediate().await?;
        self.check_key_before_migrating(&mut tx).await?;
        // `run_direct` on the connection rather than `run`: `run`'s
        // `Acquire` bound makes this future not `Send` (sqlx's own workaround).
        sqlx::migrate!("./migrations/sqlite")
            .run_direct(None, &mut *tx, false)
            .await?;
        self.ensure_key_check(&mut tx).await?;
        derive_name_keys(&mut tx).await?;
        self.upgrade_runtime_records(&mut tx).await?;
        backfill_due(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// On an existing database, verifies the key before any migration runs.
    async fn check_key_before_migrating(&self, tx: &mut Tx<'_>) -> Result<()> {
        let has_meta: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        )
        .fetch_optional(&mut **tx)
        .await?;
        if has_meta.is_none() {
            return Ok(());
        }
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'")
                .fetch_optional(&mut **tx)
                .await?;
        if let Some(sealed) = sealed {
            self.key.open("meta:key_check", &sealed).map_err(|_| {
                Error::new(
                    ErrorCode::SealKeyMismatch,
                    format!(
                        "the seal key does not match database {}; open it with the key it was created with (nothing was changed)",
                        self.path.display()
                    ),
                )
            })?;
        }
        Ok(())
    }

    async fn ensure_key_check(&self, tx: &mut Tx<'_>) -> Result<()> {
        let sealed = self.key.seal("meta:key_check", KEY_CHECK)?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('key_check', ?)")
            .bind(sealed)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Databases written before runtime state had its own tables keep it
    /// inside each mailbox's JSON and the tokens in `oauth_tokens`. Moves
    /// both over once (re-sealing the tokens, bound to what issued them),
    /// within the opening transaction.
    async fn upgrade_runtime_records(&self, tx: &mut Tx<'_>) -> Result<()> {
        let legacy: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'oauth_tokens'",
        )
        .fetch_optional(&mut **tx)
        .await?;
        if legacy.is_none() {
            return Ok(());
        }
        let mailboxes = sqlx::query(
            "SELECT m.id, m.data, m.profile_id FROM mailboxes m \
             LEFT JOIN mailbox_state s ON s.mailbox_id = m.id WHERE s.mailbox_id IS NULL",
        )
        .fetch_all(&mut **tx)
        .await?;
        for row in mailboxes {
            let id = MailboxId::parse(row.get("id"))?;
            let data: String = row.get("data");
            let state = super::legacy::state_from_mailbox_json(&id, &data);
            let version = next_version(tx).await?;
            sqlx::query("INSERT INTO mailbox_state (mailbox_id, version, data) VALUES (?, ?, ?)")
                .bind(id.as_str())
                .bind(version)
                .bind(to_json(&state)?)
                .execute(&mut **tx)
                .await?;
            for alert in super::legacy::alerts_from_mailbox_json(&data) {
                sqlx::query("INSERT INTO alerts (mailbox_id, data) VALUES (?, ?)")
                    .bind(id.as_str())
                    .bind(to_json(&alert)?)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        let tokens = sqlx::query(
            "SELECT t.mailbox_id, t.account, t.scopes, t.expires_at, t.obtained_at, t.access_token, \
             t.refresh_token, p.data AS profile FROM oauth_tokens t \
             JOIN mailboxes m ON m.id = t.mailbox_id LEFT JOIN profiles p ON p.id = m.profile_id",
        )
        .fetch_all(&mut **tx)
        .await?;
        for row in tokens {
            let mailbox = MailboxId::parse(row.get("mailbox_id"))?;
            let profile: Option<String> = row.get("profile");
            let Some(binding) = profile
                .and_then(|p| from_json::<ServerProfile>(&p).ok())
                .and_then(|p| super::legacy::binding_of(&p))
            else {
                // No OAuth profile any more: the tokens cannot be bound; drop them.
                continue;
            };
            let old = |which: &str| format!("oauth_tokens:{mailbox}:{which}");
            let access: Vec<u8> = row.get("access_token");
            let refresh: Option<Vec<u8>> = row.get("refresh_token");
            let seconds = |v: i64| Timestamp::from_unix_millis(v.saturating_mul(1000));
            let grant = Grant {
                mailbox_id: mailbox.clone(),
                issuer: binding.0,
                client_id: binding.1,
                token_endpoint: binding.2,
                account: row.get::<String, _>("account").to_ascii_lowercase(),
                access_token: self.key.open_secret(&old("access"), &access)?,
                refresh_token: refresh
                    .map(|r| self.key.open_secret(&old("refresh"), &r))
                    .transpose()?,
                expires_at: row.get::<Option<i64>, _>("expires_at").map(seconds),
                scopes: row
                    .get::<String, _>("scopes")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                obtained_at: seconds(row.get("obtained_at")),
                version: 0,
            };
            let version = next_version(tx).await?;
            self.insert_grant(tx, &grant, version).await?;
        }
        sqlx::query("DROP TABLE oauth_tokens")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn immediate(&self) -> Result<Tx<'_>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn seal_profile(&self, profile: &ServerProfile) -> Result<(String, Option<Vec<u8>>)> {
        let secret = profile_secret(profile)
            .map(|s| self.key.seal_secret(&profile_context(&profile.id), s))
            .transpose()?;
        Ok((to_json(profile)?, secret))
    }

    fn open_profile(&self, row: &sqlx::sqlite::SqliteRow) -> Result<ServerProfile> {
        let mut profile: ServerProfile = from_json(row.get("data"))?;
        profile.version = row.get::<i64, _>("version");
        let secret: Option<Vec<u8>> = row.get("secret");
        if let Some(sealed) = secret {
            let secret = self
                .key
                .open_secret(&profile_context(&profile.id), &sealed)?;
            set_profile_secret(&mut profile, secret);
        }
        Ok(profile)
    }

    fn seal_mailbox(&self, mailbox: &Mailbox) -> Result<(String, Option<Vec<u8>>)> {
        let secret = mailbox_secret(mailbox)
            .map(|s| self.key.seal_secret(&mailbox_context(&mailbox.id), s))
            .transpose()?;
        Ok((to_json(mailbox)?, secret))
    }

    fn open_mailbox(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Mailbox> {
        let mut mailbox: Mailbox = from_json(row.get("data"))?;
        mailbox.version = row.get::<i64, _>("version");
        let secret: Option<Vec<u8>> = row.get("secret");
        if let Some(sealed) = secret {
            let secret = self
                .key
                .open_secret(&mailbox_context(&mailbox.id), &sealed)?;
            set_mailbox_secret(&mut mailbox, secret);
        }
        Ok(mailbox)
    }

    fn open_grant(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Grant> {
        let mut grant = Grant {
            mailbox_id: MailboxId::parse(row.get("mailbox_id"))?,
            issuer: row.get("issuer"),
            client_id: row.get("client_id"),
            token_endpoint: row.get("token_endpoint"),
            account: row.get("account"),
            access_token: Secret::new(""),
            refresh_token: None,
            expires_at: row
                .get::<Option<i64>, _>("expires_at")
                .map(Timestamp::from_unix_millis),
            scopes: row
                .get::<String, _>("scopes")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            obtained_at: Timestamp::from_unix_millis(row.get("obtained_at")),
            version: row.get::<i64, _>("version"),
        };
        let access: Vec<u8> = row.get("access_token");
        let refresh: Option<Vec<u8>> = row.get("refresh_token");
        grant.access_token = self
            .key
            .open_secret(&grant_context(&grant, "access"), &access)?;
        grant.refresh_token = refresh
            .map(|r| self.key.open_secret(&grant_context(&grant, "refresh"), &r))
            .transpose()?;
        Ok(grant)
    }

    /// Inserts or replaces a grant row (inside `tx`) with `version`.
    async fn insert_grant(&self, tx: &mut Tx<'_>, grant: &Grant, version: i64) -> Result<()> {
        let access = self
            .key
            .seal_secret(&grant_context(grant, "access"), &grant.access_token)?;
        let refresh = grant
            .refresh_token
            .as_ref()
            .map(|r| self.key.seal_secret(&grant_context(grant, "refresh"), r))
            .transpose()?;
        sqlx::query(
            "INSERT INTO grants (mailbox_id, version, issuer, client_id, token_endpoint, account, scopes, \
             expires_at, obtained_at, access_token, refresh_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(mailbox_id) DO UPDATE SET version = excluded.version, issuer = excluded.issuer, \
             client_id = excluded.client_id, token_endpoint = excluded.token_endpoint, \
             account = excluded.account, scopes = excluded.scopes, expires_at = excluded.expires_at, \
             obtained_at = excluded.obtained_at, access_token = excluded.access_token, \
             refresh_token = excluded.refresh_token",
        )
        .bind(grant.mailbox_id.as_str())
        .bind(version)
        .bind(&grant.issuer)
        .bind(&grant.client_id)
        .bind(&grant.token_endpoint)
        .bind(&grant.account)
        .bind(grant.scopes.join(" "))
        .bind(grant.expires_at.map(Timestamp::unix_millis))
        .bind(grant.obtained_at.unix_millis())
        .bind(access)
        .bind(refresh)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn clear_other_defaults(&self, tx: &mut Tx<'_>, keep: &ProfileId) -> Result<()> {
        let others = sqlx::query("SELECT id, data FROM profiles WHERE is_default = 1 AND id <> ?")
            .bind(keep.as_str())
            .fetch_all(&mut **tx)
            .await?;
        for row in others {
            let id: String = row.get("id");
            let mut other: ServerProfile = from_json(row.get("data"))?;
            other.default_for_new_mailboxes = false;
            let version = next_version(tx).await?;
            sqlx::query("UPDATE profiles SET is_default = 0, data = ?, version = ? WHERE id = ?")
                .bind(to_json(&other)?)
                .bind(version)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn check_name(tx: &mut Tx<'_>, profile: &ServerProfile) -> Result<()> {
        let clash: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM profiles WHERE name_key = ? AND id <> ?")
                .bind(profile_name_key(&profile.name))
                .bind(profile.id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        if clash.is_some() {
            return Err(duplicate_profile(&profile.name));
        }
        Ok(())
    }

    async fn count(tx: &mut Tx<'_>, profile: &ProfileId) -> Result<u32> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = ?")
            .bind(profile.as_str())
            .fetch_one(&mut **tx)
            .await?;
        Ok(count as u32)
    }

    async fn check_capacity(
        tx: &mut Tx<'_>,
        mailbox: &Mailbox,
        capacity: Option<u32>,
    ) -> Result<()> {
        let Some(profile_id) = &mailbox.profile_id else {
            return Ok(());
        };
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM profiles WHERE id = ?")
            .bind(profile_id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        let Some(name) = name else {
            return Err(Error::not_found("server profile", profile_id));
        };
        let Some(capacity) = capacity else {
            return Ok(());
        };
        let count = Self::count(tx, profile_id).await?;
        if count >= capacity {
            return Err(capacity_error(profile_id, &name, count, capacity));
        }
        Ok(())
    }

    async fn state_row(tx: &mut Tx<'_>, mailbox: &MailboxId) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT version, data FROM mailbox_state WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.map(|r| (r.get::<i64, _>("version"), r.get("data"))))
    }
}

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
        let (data, secret) = self.seal_profile(profile)?;
        let mut tx = self.immediate().await?;
        Self::check_name(&mut tx, profile).await?;
        if profile.default_for_new_mailboxes {
            self.clear_other_defaults(&mut tx, &profile.id).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "INSERT INTO profiles (id, name, name_key, is_default, data, secret, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(profile.id.as_str())
        .bind(&profile.name)
        .bind(profile_name_key(&profile.name))
        .bind(profile.default_for_new_mailboxes)
        .bind(&data)
        .bind(secret)
        .bind(version)
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_profile(&profile.name)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                let mut stored = profile.clone();
                stored.version = version;
                Ok(stored)
            }
        }
    }

    async fn update_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
        let (data, secret) = self.seal_profile(profile)?;
        let mut tx = self.immediate().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM profiles WHERE id = ?")
            .bind(profile.id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match current {
            None => return Err(Error::not_found("server profile", &profile.id)),
            Some(v) if v != profile.version => {
                return Err(stale("server profile", &profile.name, profile.version));
            }
            Some(_) => {}
        }
        Self::check_name(&mut tx, profile).await?;
        let count = Self::count(&mut tx, &profile.id).await?;
        if count > profile.mailbox_capacity {
            return Err(capacity_below_count(count));
        }
        if profile.default_for_new_mailboxes {
            self.clear_other_defaults(&mut tx, &profile.id).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE profiles SET name = ?, name_key = ?, is_default = ?, data = ?, secret = ?, version = ? WHERE id = ?",
        )
        .bind(&profile.name)
        .bind(profile_name_key(&profile.name))
        .bind(profile.default_for_new_mailboxes)
        .bind(&data)
        .bind(secret)
        .bind(version)
        .bind(profile.id.as_str())
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_profile(&profile.name)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                let mut stored = profile.clone();
                stored.version = version;
                Ok(stored)
            }
        }
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>> {
        let row = sqlx::query("SELECT data, secret, version FROM profiles WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_profile(&r)).transpose()
    }

    async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        let rows =
            sqlx::query("SELECT data, secret, version FROM profiles ORDER BY name_key, name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| self.open_profile(r)).collect()
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
        let mut tx = self.immediate().await?;
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM profiles WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(name) = name else {
            return Err(Error::not_found("server profile", id));
        };
        let count = Self::count(&mut tx, id).await?;
        if count > 0 {
            return Err(profile_in_use(&name, count));
        }
        sqlx::query("DELETE FROM profiles WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox> {
        let (data, secret) = self.seal_mailbox(mailbox)?;
        let mut tx = self.immediate().await?;
        Self::check_capacity(&mut tx, mailbox, capacity).await?;
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "INSERT INTO mailboxes (id, email, profile_id, data, secret, version) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(mailbox.id.as_str())
        .bind(&mailbox.email)
        .bind(mailbox.profile_id.as_ref().map(ProfileId::as_str))
        .bind(&data)
        .bind(secret)
        .bind(version)
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => return Err(duplicate_mailbox(&mailbox.email)),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let state_version = next_version(&mut tx).await?;
        let mut state = MailboxState::new(mailbox.id.clone());
        state.version = state_version;
        sqlx::query("INSERT INTO mailbox_state (mailbox_id, version, data) VALUES (?, ?, ?)")
            .bind(mailbox.id.as_str())
            .bind(state_version)
            .bind(to_json(&state)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut stored = mailbox.clone();
        stored.version = version;
        Ok(stored)
    }

    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox> {
        let (data, secret) = self.seal_mailbox(mailbox)?;
        let mut tx = self.immediate().await?;
        let old = sqlx::query("SELECT profile_id, version FROM mailboxes WHERE id = ?")
            .bind(mailbox.id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(old) = old else {
            return Err(Error::not_found("mailbox", &mailbox.id));
        };
        if old.get::<i64, _>("version") != mailbox.version {
            return Err(stale("mailbox", &mailbox.email, mailbox.version));
        }
        let old_profile: Option<String> = old.get("profile_id");
        if old_profile.as_deref() != mailbox.profile_id.as_ref().map(ProfileId::as_str) {
            Self::check_capacity(&mut tx, mailbox, capacity).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE mailboxes SET email = ?, profile_id = ?, data = ?, secret = ?, version = ? WHERE id = ?",
        )
        .bind(&mailbox.email)
        .bind(mailbox.profile_id.as_ref().map(ProfileId::as_str))
        .bind(&data)
        .bind(secret)
        .bind(version)
        .bind(mailbox.id.as_str())
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_mailbox(&mailbox.email)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                refresh_due(&mut tx, mailbox.id.as_str()).await?;
                tx.commit().await?;
                let mut stored = mailbox.clone();
                stored.version = version;
                Ok(stored)
            }
        }
    }

    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret, version FROM mailboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(&r)).transpose()
    }

    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret, version FROM mailboxes WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(&r)).transpose()
    }

    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        let rows = match profile {
            Some(p) => sqlx::query(
                "SELECT data, secret, version FROM mailboxes WHERE profile_id = ? ORDER BY email",
            )
            .bind(p.as_str())
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query("SELECT data, secret, version FROM mailboxes ORDER BY email")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(|r| self.open_mailbox(r)).collect()
    }

    async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = ?")
            .bind(profile.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u32)
    }

    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        // Everything of the mailbox goes with it (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM mailboxes WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("mailbox", id));
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn get_state(&self, mailbox: &MailboxId) -> Result<Option<MailboxState>> {
        let row = sqlx::query(
            "SELECT m.id, s.version, s.data FROM mailboxes m \
             LEFT JOIN mailbox_state s ON s.mailbox_id = m.id WHERE m.id = ?",
        )
        .bind(mailbox.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let data: Option<String> = row.get("data");
        match data {
            Some(data) => {
                let mut state: MailboxState = from_json(&data)?;
                state.version = row.get::<i64, _>("version");
                Ok(Some(state))
            }
            None => Ok(Some(MailboxState::new(mailbox.clone()))),
        }
    }

    async fn commit(&self, commit: &Commit<'_>) -> Result<CommitOutcome> {
        let id = commit.mailbox_id;
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("mailbox", id));
        }
        let stored = Self::state_row(&mut tx, id).await?;
        let current_version = stored.as_ref().map(|(v, _)| *v).unwrap_or(0);
        if current_version != commit.expected_state_version {
            return Ok(CommitOutcome::StateConflict);
        }
        let stored_grant: Option<i64> =
            sqlx::query_scalar("SELECT version FROM grants WHERE mailbox_id = ?")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let grant_ok = match &commit.grant {
            GrantChange::Keep => true,
            GrantChange::Put { expected, .. } => stored_grant == *expected,
            GrantChange::Delete { expected } => expected.is_none() || stored_grant == *expected,
        };
        if !grant_ok {
            return Ok(CommitOutcome::GrantConflict);
        }
        let mut state_version = current_version;
        if let Some(next) = commit.state {
            state_version = next_version(&mut tx).await?;
            let mut next = next.clone();
            next.version = state_version;
            sqlx::query(
                "INSERT INTO mailbox_state (mailbox_id, version, data) VALUES (?, ?, ?) \
                 ON CONFLICT(mailbox_id) DO UPDATE SET version = excluded.version, data = excluded.data",
            )
            .bind(id.as_str())
            .bind(state_version)
            .bind(to_json(&next)?)
            .execute(&mut *tx)
            .await?;
            refresh_due(&mut tx, id.as_str()).await?;
        }
        let mut grant_version = stored_grant;
        match &commit.grant {
            GrantChange::Keep => {}
            GrantChange::Put { grant, .. } => {
                let version = next_version(&mut tx).await?;
                let mut g = (*grant).clone();
                g.mailbox_id = id.clone();
                self.insert_grant(&mut tx, &g, version).await?;
                grant_version = Some(version);
            }
            GrantChange::Delete { .. } => {
                sqlx::query("DELETE FROM grants WHERE mailbox_id = ?")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                grant_version = None;
            }
        }
        match &commit.pending {
            PendingChange::Keep => {}
            PendingChange::Delete => {
                sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = ?")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            PendingChange::Put(pending) => {
                let key = state_key(&pending.state);
                let both = Secret::new(format!(
                    "{}\n{}",
                    pending.state.expose(),
                    pending.pkce_verifier.expose()
                ));
                let sealed = self.key.seal_secret(
                    &pending_context(id.as_str(), &key, &pending.issuer, &pending.client_id),
                    &both,
                )?;
                sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = ?")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO oauth_pending (state_key, mailbox_id, sealed, redirect_uri, created_at, \
                     expires_at, issuer, client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&key)
                .bind(id.as_str())
                .bind(sealed)
                .bind(&pending.redirect_uri)
                .bind(pending.created_at.unix_millis())
                .bind(pending.expires_at.unix_millis())
                .bind(&pending.issuer)
                .bind(&pending.client_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        if !commit.alerts.is_empty() {
            for alert in commit.alerts {
                sqlx::query("INSERT INTO alerts (mailbox_id, data) VALUES (?, ?)")
                    .bind(id.as_str())
                    .bind(to_json(alert)?)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "DELETE FROM alerts WHERE mailbox_id = ? AND id NOT IN \
                 (SELECT id FROM alerts WHERE mailbox_id = ? ORDER BY id DESC LIMIT ?)",
            )
            .bind(id.as_str())
            .bind(id.as_str())
            .bind(MAX_ALERTS as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(CommitOutcome::Committed {
            state_version,
            grant_version,
        })
    }

    async fn alerts(&self, mailbox: &MailboxId, limit: usize) -> Result<Vec<Alert>> {
        let rows = sqlx::query(
            "SELECT data FROM (SELECT id, data FROM alerts WHERE mailbox_id = ? ORDER BY id DESC LIMIT ?) \
             ORDER BY id",
        )
        .bind(mailbox.as_str())
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_json(r.get("data"))).collect()
    }

    async fn put_profile_test(&self, profile: &ProfileId, result: &LastTestResult) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO profile_tests (profile_id, data) SELECT id, ? FROM profiles WHERE id = ? \
             ON CONFLICT(profile_id) DO UPDATE SET data = excluded.data",
        )
        .bind(to_json(result)?)
        .bind(profile.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("server profile", profile));
        }
        Ok(())
    }

    async fn get_profile_test(&self, profile: &ProfileId) -> Result<Option<LastTestResult>> {
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM profile_tests WHERE profile_id = ?")
                .bind(profile.as_str())
                .fetch_optional(&self.pool)
                .await?;
        data.map(|d| from_json(&d)).transpose()
    }
}

#[async_trait]
impl GrantStore for SqliteStore {
    async fn take_pending(&self, state: &Secret) -> Result<Option<PendingAuthorization>> {
        let key = state_key(state);
        // One statement: of two concurrent takers only one gets the row.
        let row = sqlx::query(
            "DELETE FROM oauth_pending WHERE state_key = ? \
             RETURNING mailbox_id, sealed, redirect_uri, created_at, expires_at, issuer, client_id",
        )
        .bind(&key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mailbox: String = row.get("mailbox_id");
        let issuer: String = row.get("issuer");
        let client_id: String = row.get("client_id");
        let sealed: Vec<u8> = row.get("sealed");
        let both = self.key.open_secret(
            &pending_context(&mailbox, &key, &issuer, &client_id),
            &sealed,
        )?;
        let (state, verifier) = both
            .expose()
            .split_once('\n')
            .ok_or_else(|| Error::new(ErrorCode::Store, "corrupt pending authorization"))?;
        Ok(Some(PendingAuthorization {
            state: Secret::new(state),
            mailbox_id: MailboxId::parse(&mailbox)?,
            pkce_verifier: Secret::new(verifier),
            redirect_uri: row.get("redirect_uri"),
            issuer,
            client_id,
            created_at: Timestamp::from_unix_millis(row.get("created_at")),
            expires_at: Timestamp::from_unix_millis(row.get("expires_at")),
        }))
    }

    async fn get_grant(&self, mailbox: &MailboxId) -> Result<Option<Grant>> {
        let row = sqlx::query(
            "SELECT mailbox_id, version, issuer, client_id, token_endpoint, account, scopes, expires_at, \
             obtained_at, access_token, refresh_token FROM grants WHERE mailbox_id = ?",
        )
        .bind(mailbox.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| self.open_grant(&r)).transpose()
    }

    async fn put_grant(
        &self,
        grant: &Grant,
        expected: i64,
        fence: Option<&LeaseRecord>,
    ) -> Result<Option<i64>> {
        let mut tx = self.immediate().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM grants WHERE mailbox_id = ?")
                .bind(grant.mailbox_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if current != Some(expected) {
            return Ok(None);
        }
        if let Some(lease) = fence {
            let held: Option<i64> =
                sqlx::query_scalar("SELECT fence FROM leases WHERE mailbox_id = ? AND kind = ?")
                    .bind(lease.mailbox_id.as_str())
                    .bind(lease.kind.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if held != Some(lease.fence) {
                return Ok(None);
            }
        }
        let version = next_version(&mut tx).await?;
        self.insert_grant(&mut tx, grant, version).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn grant_held(&self, issuer: &str, client_id: &str, account: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM grants WHERE issuer = ? AND client_id = ? AND account = ? LIMIT 1",
        )
        .bind(issuer)
        .bind(client_id)
        .bind(account.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        mailbox: &MailboxId,
        kind: LeaseKind,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
            .bind(mailbox.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("mailbox", mailbox));
        }
        let held =
            sqlx::query("SELECT owner, expires_at FROM leases WHERE mailbox_id = ? AND kind = ?")
                .bind(mailbox.as_str())
                .bind(kind.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(held) = &held {
            if held.get::<i64, _>("expires_at") > now.unix_millis() {
                return Ok(None);
            }
            if held.get::<String, _>("owner") != owner {
                crate::metrics::lease_taken_over(kind);
            }
        }
        let fence = next_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO leases (mailbox_id, kind, owner, fence, expires_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(mailbox_id, kind) DO UPDATE SET owner = excluded.owner, fence = excluded.fence, \
             expires_at = excluded.expires_at",
        )
        .bind(mailbox.as_str())
        .bind(kind.as_str())
        .bind(owner)
        .bind(fence)
        .bind(until.unix_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(LeaseRecord {
            mailbox_id: mailbox.clone(),
            kind,
            owner: owner.to_owned(),
            fence,
            expires_at: until,
        }))
    }

    async fn renew_lease(
        &self,
        lease: &LeaseRecord,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = ? WHERE mailbox_id = ? AND kind = ? AND fence = ?",
        )
        .bind(until.unix_millis())
        .bind(lease.mailbox_id.as_str())
        .bind(lease.kind.as_str())
        .bind(lease.fence)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            let mut renewed = lease.clone();
            renewed.expires_at = until;
            Ok(Some(renewed))
        } else {
            Ok(None)
        }
    }

    async fn release_lease(&self, lease: &LeaseRecord) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE mailbox_id = ? AND kind = ? AND fence = ?")
            .bind(lease.mailbox_id.as_str())
            .bind(lease.kind.as_str())
            .bind(lease.fence)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT mailbox_id, kind, owner, fence, expires_at FROM leases ORDER BY mailbox_id, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lease_from).collect()
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
        skip: &[MailboxId],
    ) -> Result<Vec<LeaseRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One writer at a time (BEGIN IMMEDIATE): what is read is what is claimed.
        let mut tx = self.immediate().await?;
        let rows = sqlx::query(
            "SELECT s.mailbox_id, l.owner FROM mailbox_state s \
             LEFT JOIN leases l ON l.mailbox_id = s.mailbox_id AND l.kind = 'sync' \
             WHERE s.due_at IS NOT NULL AND s.due_at <= ?1 \
             AND (l.expires_at IS NULL OR l.expires_at <= ?1) \
             ORDER BY s.due_at, s.mailbox_id LIMIT ?2",
        )
        .bind(now.unix_millis())
        .bind(i64::try_from(limit.saturating_add(skip.len())).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::new();
        for row in rows {
            let id = MailboxId::parse(row.get("mailbox_id"))?;
            if skip.contains(&id) {
                continue;
            }
            if claimed.len() == limit {
                break;
            }
            if row
                .get::<Option<String>, _>("owner")
                .is_some_and(|o| o != owner)
            {
                crate::metrics::lease_taken_over(LeaseKind::Sync);
            }
            let fence = next_version(&mut tx).await?;
            sqlx::query(
                "INSERT INTO leases (mailbox_id, kind, owner, fence, expires_at) VALUES (?, 'sync', ?, ?, ?) \
                 ON CONFLICT(mailbox_id, kind) DO UPDATE SET owner = excluded.owner, fence = excluded.fence, \
                 expires_at = excluded.expires_at",
            )
            .bind(id.as_str())
            .bind(owner)
            .bind(fence)
            .bind(until.unix_millis())
            .execute(&mut *tx)
            .await?;
            claimed.push(LeaseRecord {
                mailbox_id: id,
                kind: LeaseKind::Sync,
                owner: owner.to_owned(),
                fence,
                expires_at: until,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(s.due_at, COALESCE(l.expires_at, s.due_at))) FROM mailbox_state s \
             LEFT JOIN leases l ON l.mailbox_id = s.mailbox_id AND l.kind = 'sync' \
             WHERE s.due_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(Timestamp::from_unix_millis))
    }
}

fn cursor_from(row: &sqlx::sqlite::SqliteRow) -> Result<SyncCursor> {
    let mut cursor: SyncCursor = from_json(row.get("data"))?;
    cursor.version = row.get("version");
    Ok(cursor)
}

#[async_trait]
impl SyncStore for SqliteStore {
    async fn get_cursor(&self, mailbox: &MailboxId) -> Result<Option<SyncCursor>> {
        let row = sqlx::query("SELECT version, data FROM sync_cursors WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cursor_from).transpose()
    }

    async fn list_cursors(&self) -> Result<Vec<SyncCursor>> {
        let rows = sqlx::query("SELECT version, data FROM sync_cursors ORDER BY mailbox_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cursor_from).collect()
    }

    async fn commit_sync(
        &self,
        cursor: &SyncCursor,
        expected: i64,
        messages: &[MessageRecord],
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let id = cursor.mailbox_id.as_str();
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("mailbox", &cursor.mailbox_id));
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM sync_cursors WHERE mailbox_id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let held: Option<i64> =
            sqlx::query_scalar("SELECT fence FROM leases WHERE mailbox_id = ? AND kind = ?")
                .bind(id)
                .bind(fence.kind.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if current.unwrap_or(0) != expected || held != Some(fence.fence) {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO sync_cursors (mailbox_id, version, data) VALUES (?, ?, ?) \
             ON CONFLICT(mailbox_id) DO UPDATE SET version = excluded.version, data = excluded.data",
        )
        .bind(id)
        .bind(version)
        .bind(to_json(cursor)?)
        .execute(&mut *tx)
        .await?;
        refresh_due(&mut tx, id).await?;
        for m in messages {
            let outcome = serde_json::to_value(m.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            sqlx::query(
                "INSERT OR IGNORE INTO sync_messages (mailbox_id, message_key, uid, uidl, outcome) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(&m.key)
            .bind(m.uid.map(i64::from))
            .bind(m.uidl.as_deref())
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        }
        refresh_due(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn recorded_keys(
        &self,
        mailbox: &MailboxId,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let mut found = std::collections::HashSet::new();
        for chunk in keys.chunks(400) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT message_key FROM sync_messages WHERE mailbox_id = ? AND message_key IN ({marks})"
            );
            let mut query =
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(mailbox.as_str());
            for k in chunk {
                query = query.bind(k);
            }
            found.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(found)
    }

    async fn recorded_uidls(
        &self,
        mailbox: &MailboxId,
    ) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT uidl FROM sync_messages WHERE mailbox_id = ? AND uidl IS NOT NULL",
        )
        .bind(mailbox.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

// ---- outgoing sync (OutboxStore) ----

fn outgoing_from(row: &sqlx::sqlite::SqliteRow) -> Result<OutgoingRecord> {
    let mut record: OutgoingRecord = from_json(row.get("data"))?;
    record.version = row.get("version");
    Ok(record)
}

fn outbox_cursor_from(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxCursor> {
    let mut cursor: OutboxCursor = from_json(row.get("data"))?;
    cursor.version = row.get("version");
    Ok(cursor)
}

/// Inside `tx`: `not_found` without the mailbox; whether `fence` is still
/// its send lease.
async fn holds_lease(tx: &mut Tx<'_>, mailbox: &MailboxId, fence: &LeaseRecord) -> Result<bool> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
        .bind(mailbox.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(Error::not_found("mailbox", mailbox));
    }
    let held: Option<i64> =
        sqlx::query_scalar("SELECT fence FROM leases WHERE mailbox_id = ? AND kind = ?")
            .bind(mailbox.as_str())
            .bind(fence.kind.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(fence.kind == LeaseKind::Send && held == Some(fence.fence))
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn get_outgoing(
        &self,
        mailbox: &MailboxId,
        ids: &[String],
    ) -> Result<Vec<OutgoingRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(400) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT version, data FROM outbox_messages WHERE mailbox_id = ? AND id IN ({marks})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox.as_str());
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(outgoing_from(&row)?);
            }
        }
        Ok(out)
    }

    async fn list_outgoing(&self, mailbox: &MailboxId) -> Result<Vec<OutgoingRecord>> {
        let rows = sqlx::query(
            "SELECT version, data FROM outbox_messages WHERE mailbox_id = ? ORDER BY id",
        )
        .bind(mailbox.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outgoing_from).collect()
    }

    async fn put_outgoing(
        &self,
        record: &OutgoingRecord,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let mailbox = record.mailbox_id.as_str();
        let mut tx = self.immediate().await?;
        if !holds_lease(&mut tx, &record.mailbox_id, fence).await? {
            return Ok(None);
        }
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM outbox_messages WHERE mailbox_id = ? AND id = ?",
        )
        .bind(mailbox)
        .bind(&record.id)
        .fetch_optional(&mut *tx)
        .await?;
        if current.unwrap_or(0) != expected {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO outbox_messages (mailbox_id, id, version, state, data) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(mailbox_id, id) DO UPDATE SET version = excluded.version, \
             state = excluded.state, data = excluded.data",
        )
        .bind(mailbox)
        .bind(&record.id)
        .bind(version)
        .bind(record.state.as_str())
        .bind(to_json(record)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn get_outbox_cursor(&self, mailbox: &MailboxId) -> Result<Option<OutboxCursor>> {
        let row = sqlx::query("SELECT version, data FROM outbox_cursors WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(outbox_cursor_from).transpose()
    }

    async fn list_outbox_cursors(&self) -> Result<Vec<OutboxCursor>> {
        let rows = sqlx::query("SELECT version, data FROM outbox_cursors ORDER BY mailbox_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_cursor_from).collect()
    }

    async fn put_outbox_cursor(
        &self,
        cursor: &OutboxCursor,
        expected: i64,
        fence: &LeaseRecord,
    ) -> Result<Option<i64>> {
        let mut tx = self.immediate().await?;
        if !holds_lease(&mut tx, &cursor.mailbox_id, fence).await? {
            return Ok(None);
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM outbox_cursors WHERE mailbox_id = ?")
                .bind(cursor.mailbox_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if current.unwrap_or(0) != expected {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        sqlx::query(
            "INSERT INTO outbox_cursors (mailbox_id, version, data) VALUES (?, ?, ?) \
             ON CONFLICT(mailbox_id) DO UPDATE SET version = excluded.version, data = excluded.data",
        )
        .bind(cursor.mailbox_id.as_str())
        .bind(version)
        .bind(to_json(cursor)?)
        .execute(&mut *tx)
        .await?;
        refresh_due(&mut tx, cursor.mailbox_id.as_str()).await?;
        tx.commit().await?;
        Ok(Some(version))
    }
}

// ---- end of outgoing sync ----

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn rotate_key(&self, new_key: &SealKey) -> Result<KeyRotation> {
        let old = self.key.current();
        let mut tx = self.immediate().await?;
        let check: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'")
            .fetch_one(&mut *tx)
            .await?;
        if rotation_start(&old, new_key, &check)? {
            drop(tx);
            self.key.replace(new_key.clone());
            return Ok(KeyRotation {
                resealed: 0,
                already_rotated: true,
            });
        }
        let mut resealed = 0u32;
        let mut put =
            async |tx: &mut Tx<'_>, sql: &str, value: Vec<u8>, ids: &[&str]| -> Result<()> {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).bind(value);
                for id in ids {
                    q = q.bind(id.to_string());
                }
                q.execute(&mut **tx).await?;
                resealed += 1;
                Ok(())
            };
        for row in sqlx::query("SELECT id, secret FROM profiles WHERE secret IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?
        {
            let id: String = row.get("id");
            let context = format!("profile:{id}:secret");
            if let Some(v) = reseal(&old, new_key, &context, &row.get::<Vec<u8>, _>("secret"))? {
                put(
                    &mut tx,
                    "UPDATE profiles SET secret = ? WHERE id = ?",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        for row in sqlx::query("SELECT id, secret FROM mailboxes WHERE secret IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?
        {
            let id: String = row.get("id");
            let context = format!("mailbox:{id}:password");
            if let Some(v) = reseal(&old, new_key, &context, &row.get::<Vec<u8>, _>("secret"))? {
                put(
                    &mut tx,
                    "UPDATE mailboxes SET secret = ? WHERE id = ?",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        for row in sqlx::query(
            "SELECT state_key, mailbox_id, issuer, client_id, sealed FROM oauth_pending",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let key: String = row.get("state_key");
            let context = pending_context(
                row.get("mailbox_id"),
                &key,
                row.get("issuer"),
                row.get("client_id"),
            );
            if let Some(v) = reseal(&old, new_key, &context, &row.get::<Vec<u8>, _>("sealed"))? {
                put(
                    &mut tx,
                    "UPDATE oauth_pending SET sealed = ? WHERE state_key = ?",
                    v,
                    &[&key],
                )
                .await?;
            }
        }
        for row in sqlx::query(
            "SELECT mailbox_id, issuer, client_id, token_endpoint, account, access_token, refresh_token FROM grants",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let mailbox: String = row.get("mailbox_id");
            let context = |which: &str| {
                grant_context_of(
                    &mailbox,
                    which,
                    row.get("issuer"),
                    row.get("client_id"),
                    row.get("token_endpoint"),
                    row.get("account"),
                )
            };
            let access: Vec<u8> = row.get("access_token");
            if let Some(v) = reseal(&old, new_key, &context("access"), &access)? {
                put(&mut tx, "UPDATE grants SET access_token = ? WHERE mailbox_id = ?", v, &[&mailbox]).await?;
            }
            if let Some(refresh) = row.get::<Option<Vec<u8>>, _>("refresh_token")
                && let Some(v) = reseal(&old, new_key, &context("refresh"), &refresh)?
            {
                put(&mut tx, "UPDATE grants SET refresh_token = ? WHERE mailbox_id = ?", v, &[&mailbox]).await?;
            }
        }
        for row in sqlx::query("SELECT * FROM revocations")
            .fetch_all(&mut *tx)
            .await?
        {
            let r = revocation_shell(&row)?;
            let id = r.id.clone();
            if let Some(v) = reseal(
                &old,
                new_key,
                &revocation_context(&r),
                &row.get::<Vec<u8>, _>("sealed"),
            )? {
                put(
                    &mut tx,
                    "UPDATE revocations SET sealed = ? WHERE id = ?",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        let check = new_key.seal("meta:key_check", KEY_CHECK)?;
        put(
            &mut tx,
            "UPDATE meta SET value = ? WHERE key = 'key_check'",
            check,
            &[],
        )
        .await?;
        tx.commit().await?;
        self.key.replace(new_key.clone());
        Ok(KeyRotation {
            resealed,
            already_rotated: false,
        })
    }
}

/// A revocation row without its secrets (filled in by [`open_revocation`]).
fn revocation_shell(row: &sqlx::sqlite::SqliteRow) -> Result<PendingRevocation> {
    Ok(PendingRevocation {
        id: row.get("id"),
        mailbox_id: MailboxId::parse(row.get("mailbox_id"))?,
        issuer: row.get("issuer"),
        client_id: row.get("client_id"),
        client_secret: None,
        endpoint: row.get("endpoint"),
        token: Secret::new(""),
        token_type_hint: row.get("token_type_hint"),
        attempts: row.get::<i64, _>("attempts").clamp(0, i64::from(u32::MAX)) as u32,
        last_error: row.get("last_error"),
        created_at: Timestamp::from_unix_millis(row.get("created_at")),
        next_attempt_at: Timestamp::from_unix_millis(row.get("next_attempt_at")),
    })
}

impl SqliteStore {
    fn open_revocation(&self, row: &sqlx::sqlite::SqliteRow) -> Result<PendingRevocation> {
        let mut r = revocation_shell(row)?;
        let secrets = RevocationSecrets::open(
            &self.key.current(),
            &revocation_context(&r),
            &row.get::<Vec<u8>, _>("sealed"),
        )?;
        r.token = Secret::new(secrets.token);
        r.client_secret = secrets.client_secret.map(Secret::new);
        Ok(r)
    }
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn queue_revocation(&self, r: &PendingRevocation) -> Result<()> {
        let sealed = self
            .key
            .seal(&revocation_context(r), &RevocationSecrets::of(r))?;
        let done = sqlx::query(
            "INSERT INTO revocations (id, mailbox_id, issuer, client_id, endpoint, token_type_hint, sealed, \
             attempts, last_error, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(r.mailbox_id.as_str())
        .bind(&r.issuer)
        .bind(&r.client_id)
        .bind(&r.endpoint)
        .bind(&r.token_type_hint)
        .bind(sealed)
        .bind(i64::from(r.attempts))
        .bind(&r.last_error)
        .bind(r.created_at.unix_millis())
        .bind(r.next_attempt_at.unix_millis())
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("revocation {} is already queued", r.id),
            )),
            other => {
                other?;
                Ok(())
            }
        }
    }

    async fn claim_revocations(
        &self,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>> {
        let mut tx = self.immediate().await?;
        let rows = sqlx::query(
            "SELECT * FROM revocations WHERE next_attempt_at <= ? \
             ORDER BY next_attempt_at, created_at, id LIMIT ?",
        )
        .bind(now.unix_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut r = self.open_revocation(row)?;
            sqlx::query("UPDATE revocations SET next_attempt_at = ? WHERE id = ?")
                .bind(until.unix_millis())
                .bind(&r.id)
                .execute(&mut *tx)
                .await?;
            r.next_attempt_at = until;
            out.push(r);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn reschedule_revocation(
        &self,
        id: &str,
        attempts: u32,
        last_error: &str,
        next_attempt_at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE revocations SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
        )
        .bind(i64::from(attempts))
        .bind(last_error)
        .bind(next_attempt_at.unix_millis())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_revocation(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM revocations WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_revocations(&self) -> Result<Vec<PendingRevocation>> {
        let rows =
            sqlx::query("SELECT * FROM revocations ORDER BY next_attempt_at, created_at, id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| self.open_revocation(r)).collect()
    }
}
