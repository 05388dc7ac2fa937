//! The embedded default store: one SQLite file (WAL mode) through sqlx.
//!
//! Several processes may open the same file; writes that check an invariant
//! run in `BEGIN IMMEDIATE` transactions, so two writers cannot both see room
//! for the 100th mailbox. Secrets are sealed with the store's [`SealKey`]; a
//! `key_check` row detects a wrong key at open time, before anything is
//! written.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Sqlite, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::seal::SealKey;
use super::{
    PendingAuthorization, Store, TokenRecord, capacity_error, duplicate_mailbox, duplicate_profile,
    from_json, mailbox_secret, profile_in_use, profile_secret, set_mailbox_secret,
    set_profile_secret, state_key, to_json,
};
use crate::error::{Error, ErrorCode, Result};
use crate::model::{Mailbox, MailboxId, ProfileId, Secret, ServerProfile};
use time::OffsetDateTime;

const KEY_CHECK: &[u8] = b"mailsync key check v1";

/// See the module docs.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    key: SealKey,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn profile_context(id: &ProfileId) -> String {
    format!("profile:{id}:secret")
}

fn mailbox_context(id: &MailboxId) -> String {
    format!("mailbox:{id}:password")
}

fn pending_context(mailbox: &str, key: &str) -> String {
    format!("oauth_pending:{mailbox}:{key}")
}

fn token_context(mailbox: &MailboxId, which: &str) -> String {
    format!("oauth_tokens:{mailbox}:{which}")
}

fn from_unix(field: &str, seconds: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| {
        Error::new(
            ErrorCode::Store,
            format!("corrupt record: {field} out of range"),
        )
    })
}

fn unix_millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sealing with `key`.
    /// Fails with `seal_key_mismatch` if the file was created with another key;
    /// the file is not modified in that case.
    pub async fn open(path: impl AsRef<Path>, key: SealKey) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::Store,
                    format!("cannot open database {}: {e}", path.display()),
                )
            })?;
        let store = SqliteStore { pool, key, path };
        if let Err(e) = store.check_key_before_migrating().await {
            store.pool.close().await;
            return Err(e);
        }
        sqlx::migrate!("./migrations/sqlite")
            .run(&store.pool)
            .await?;
        store.ensure_key_check().await?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// On an existing database, verifies the key before any migration runs.
    async fn check_key_before_migrating(&self) -> Result<()> {
        let has_meta: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if has_meta.is_none() {
            return Ok(());
        }
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check'")
                .fetch_optional(&self.pool)
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

    async fn ensure_key_check(&self) -> Result<()> {
        let sealed = self.key.seal("meta:key_check", KEY_CHECK)?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('key_check', ?)")
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn immediate(&self) -> Result<Transaction<'_, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn seal_profile(&self, profile: &ServerProfile) -> Result<(String, Option<Vec<u8>>)> {
        let secret = profile_secret(profile)
            .map(|s| self.key.seal_secret(&profile_context(&profile.id), s))
            .transpose()?;
        Ok((to_json(profile)?, secret))
    }

    fn open_profile(&self, data: &str, secret: Option<Vec<u8>>) -> Result<ServerProfile> {
        let mut profile: ServerProfile = from_json(data)?;
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

    fn open_mailbox(&self, data: &str, secret: Option<Vec<u8>>) -> Result<Mailbox> {
        let mut mailbox: Mailbox = from_json(data)?;
        if let Some(sealed) = secret {
            let secret = self
                .key
                .open_secret(&mailbox_context(&mailbox.id), &sealed)?;
            set_mailbox_secret(&mut mailbox, secret);
        }
        Ok(mailbox)
    }

    async fn put_profile(&self, profile: &ServerProfile, insert: bool) -> Result<()> {
        let (data, secret) = self.seal_profile(profile)?;
        let mut tx = self.immediate().await?;
        if profile.default_for_new_mailboxes {
            // Clear the flag in the other rows' JSON too, so reads agree.
            let others =
                sqlx::query("SELECT id, data FROM profiles WHERE is_default = 1 AND id <> ?")
                    .bind(profile.id.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
            for row in others {
                let id: String = row.get("id");
                let mut other: ServerProfile = from_json(row.get("data"))?;
                other.default_for_new_mailboxes = false;
                sqlx::query("UPDATE profiles SET is_default = 0, data = ? WHERE id = ?")
                    .bind(to_json(&other)?)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let result = if insert {
            sqlx::query(
                "INSERT INTO profiles (id, name, is_default, data, secret) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(profile.id.as_str())
            .bind(&profile.name)
            .bind(profile.default_for_new_mailboxes)
            .bind(&data)
            .bind(secret)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE profiles SET name = ?, is_default = ?, data = ?, secret = ? WHERE id = ?",
            )
            .bind(&profile.name)
            .bind(profile.default_for_new_mailboxes)
            .bind(&data)
            .bind(secret)
            .bind(profile.id.as_str())
            .execute(&mut *tx)
            .await
        };
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_profile(&profile.name)),
            Err(e) => Err(e.into()),
            Ok(done) if !insert && done.rows_affected() == 0 => {
                Err(Error::not_found("server profile", &profile.id))
            }
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
        }
    }

    async fn check_capacity(
        tx: &mut Transaction<'_, Sqlite>,
        mailbox: &Mailbox,
        capacity: Option<u32>,
    ) -> Result<()> {
        let (Some(profile_id), Some(capacity)) = (&mailbox.profile_id, capacity) else {
            return Ok(());
        };
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = ?")
            .bind(profile_id.as_str())
            .fetch_one(&mut **tx)
            .await?;
        if count >= i64::from(capacity) {
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM profiles WHERE id = ?")
                .bind(profile_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            return Err(capacity_error(
                profile_id,
                name.as_deref().unwrap_or("?"),
                count as u32,
                capacity,
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<()> {
        self.put_profile(profile, true).await
    }

    async fn update_profile(&self, profile: &ServerProfile) -> Result<()> {
        self.put_profile(profile, false).await
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>> {
        let row = sqlx::query("SELECT data, secret FROM profiles WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_profile(r.get("data"), r.get("secret")))
            .transpose()
    }

    async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
        let rows = sqlx::query("SELECT data, secret FROM profiles ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| self.open_profile(r.get("data"), r.get("secret")))
            .collect()
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
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = ?")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if count > 0 {
            return Err(profile_in_use(&name, count as u32));
        }
        sqlx::query("DELETE FROM profiles WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()> {
        let (data, secret) = self.seal_mailbox(mailbox)?;
        let mut tx = self.immediate().await?;
        Self::check_capacity(&mut tx, mailbox, capacity).await?;
        let result = sqlx::query(
            "INSERT INTO mailboxes (id, email, profile_id, data, secret) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(mailbox.id.as_str())
        .bind(&mailbox.email)
        .bind(mailbox.profile_id.as_ref().map(ProfileId::as_str))
        .bind(&data)
        .bind(secret)
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_mailbox(&mailbox.email)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
        }
    }

    async fn update_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<()> {
        let (data, secret) = self.seal_mailbox(mailbox)?;
        let mut tx = self.immediate().await?;
        let old_profile: Option<Option<String>> =
            sqlx::query_scalar("SELECT profile_id FROM mailboxes WHERE id = ?")
                .bind(mailbox.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(old_profile) = old_profile else {
            return Err(Error::not_found("mailbox", &mailbox.id));
        };
        if old_profile.as_deref() != mailbox.profile_id.as_ref().map(ProfileId::as_str) {
            Self::check_capacity(&mut tx, mailbox, capacity).await?;
        }
        let result = sqlx::query(
            "UPDATE mailboxes SET email = ?, profile_id = ?, data = ?, secret = ? WHERE id = ?",
        )
        .bind(&mailbox.email)
        .bind(mailbox.profile_id.as_ref().map(ProfileId::as_str))
        .bind(&data)
        .bind(secret)
        .bind(mailbox.id.as_str())
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(duplicate_mailbox(&mailbox.email)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
        }
    }

    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret FROM mailboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(r.get("data"), r.get("secret")))
            .transpose()
    }

    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret FROM mailboxes WHERE email = ?")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(r.get("data"), r.get("secret")))
            .transpose()
    }

    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        let rows = match profile {
            Some(p) => {
                sqlx::query(
                    "SELECT data, secret FROM mailboxes WHERE profile_id = ? ORDER BY email",
                )
                .bind(p.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT data, secret FROM mailboxes ORDER BY email")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.into_iter()
            .map(|r| self.open_mailbox(r.get("data"), r.get("secret")))
            .collect()
    }

    async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = ?")
            .bind(profile.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u32)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        let done = sqlx::query("DELETE FROM mailboxes WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("mailbox", id));
        }
        Ok(())
    }

    async fn put_pending_authorization(&self, pending: &PendingAuthorization) -> Result<()> {
        let key = state_key(&pending.state);
        let mailbox = pending.mailbox_id.as_str();
        let both = Secret::new(format!(
            "{}\n{}",
            pending.state.expose(),
            pending.pkce_verifier.expose()
        ));
        let sealed = self
            .key
            .seal_secret(&pending_context(mailbox, &key), &both)?;
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
            .bind(mailbox)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("mailbox", mailbox));
        }
        sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = ?")
            .bind(mailbox)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO oauth_pending (state_key, mailbox_id, sealed, redirect_uri, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key)
        .bind(mailbox)
        .bind(sealed)
        .bind(&pending.redirect_uri)
        .bind(pending.created_at.unix_timestamp())
        .bind(pending.expires_at.unix_timestamp())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state: &Secret,
    ) -> Result<Option<PendingAuthorization>> {
        let key = state_key(state);
        // One statement: of two concurrent takers only one gets the row.
        let row = sqlx::query(
            "DELETE FROM oauth_pending WHERE state_key = ? \
             RETURNING mailbox_id, sealed, redirect_uri, created_at, expires_at",
        )
        .bind(&key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mailbox: String = row.get("mailbox_id");
        let sealed: Vec<u8> = row.get("sealed");
        let both = self
            .key
            .open_secret(&pending_context(&mailbox, &key), &sealed)?;
        let (state, verifier) = both
            .expose()
            .split_once('\n')
            .ok_or_else(|| Error::new(ErrorCode::Store, "corrupt pending authorization"))?;
        Ok(Some(PendingAuthorization {
            state: Secret::new(state),
            mailbox_id: MailboxId::parse(&mailbox)?,
            pkce_verifier: Secret::new(verifier),
            redirect_uri: row.get("redirect_uri"),
            created_at: from_unix("created_at", row.get("created_at"))?,
            expires_at: from_unix("expires_at", row.get("expires_at"))?,
        }))
    }

    async fn delete_pending_authorization(&self, mailbox: &MailboxId) -> Result<()> {
        sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_tokens(&self, mailbox: &MailboxId) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT version, account, scopes, expires_at, obtained_at, access_token, refresh_token \
             FROM oauth_tokens WHERE mailbox_id = ?",
        )
        .bind(mailbox.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let access: Vec<u8> = row.get("access_token");
        let refresh: Option<Vec<u8>> = row.get("refresh_token");
        let scopes: String = row.get("scopes");
        let expires_at: Option<i64> = row.get("expires_at");
        let version: i64 = row.get("version");
        Ok(Some(TokenRecord {
            mailbox_id: mailbox.clone(),
            account: row.get("account"),
            access_token: self
                .key
                .open_secret(&token_context(mailbox, "access"), &access)?,
            refresh_token: refresh
                .map(|r| self.key.open_secret(&token_context(mailbox, "refresh"), &r))
                .transpose()?,
            expires_at: expires_at.map(|e| from_unix("expires_at", e)).transpose()?,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            obtained_at: from_unix("obtained_at", row.get("obtained_at"))?,
            version: version as u64,
        }))
    }

    async fn put_tokens(
        &self,
        tokens: &TokenRecord,
        expected_version: Option<u64>,
    ) -> Result<Option<u64>> {
        let mailbox = &tokens.mailbox_id;
        let access = self
            .key
            .seal_secret(&token_context(mailbox, "access"), &tokens.access_token)?;
        let refresh = tokens
            .refresh_token
            .as_ref()
            .map(|r| self.key.seal_secret(&token_context(mailbox, "refresh"), r))
            .transpose()?;
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = ?")
            .bind(mailbox.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("mailbox", mailbox));
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM oauth_tokens WHERE mailbox_id = ?")
                .bind(mailbox.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(expected) = expected_version
            && current != Some(expected as i64)
        {
            return Ok(None);
        }
        let version = current.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO oauth_tokens (mailbox_id, version, account, scopes, expires_at, obtained_at, access_token, refresh_token) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(mailbox_id) DO UPDATE SET version = excluded.version, account = excluded.account, \
             scopes = excluded.scopes, expires_at = excluded.expires_at, obtained_at = excluded.obtained_at, \
             access_token = excluded.access_token, refresh_token = excluded.refresh_token",
        )
        .bind(mailbox.as_str())
        .bind(version)
        .bind(&tokens.account)
        .bind(tokens.scopes.join(" "))
        .bind(tokens.expires_at.map(OffsetDateTime::unix_timestamp))
        .bind(tokens.obtained_at.unix_timestamp())
        .bind(access)
        .bind(refresh)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(version as u64))
    }

    async fn delete_tokens(&self, mailbox: &MailboxId) -> Result<()> {
        sqlx::query("DELETE FROM oauth_tokens WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn try_acquire_refresh_lease(
        &self,
        mailbox: &MailboxId,
        owner: &str,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        // One statement: insert, or take over an expired lease / renew our own.
        let done = sqlx::query(
            "INSERT INTO oauth_refresh_leases (mailbox_id, owner, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT(mailbox_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE oauth_refresh_leases.owner = excluded.owner OR oauth_refresh_leases.expires_at <= ?",
        )
        .bind(mailbox.as_str())
        .bind(owner)
        .bind(unix_millis(expires_at))
        .bind(unix_millis(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_refresh_lease(&self, mailbox: &MailboxId, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM oauth_refresh_leases WHERE mailbox_id = ? AND owner = ?")
            .bind(mailbox.as_str())
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
