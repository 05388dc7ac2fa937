//! A PostgreSQL store through sqlx, for many workers (processes, hosts)
//! sharing one database.
//!
//! The records, their versions and the sealing of secrets are those of
//! [`super::SqliteStore`]: the same JSON, the same associated data, the
//! same [`SealKey`]. Where SQLite takes one write lock per transaction
//! (`BEGIN IMMEDIATE`), this store locks only what a write depends on, in
//! `READ COMMITTED` transactions:
//!
//! * every version and fencing token comes from one `SEQUENCE`
//!   (`version_seq`), taken after the rows it replaces are locked, so a
//!   record's versions only grow and are never reused;
//! * a compare-and-swap locks the row first (`SELECT … FOR UPDATE`), then
//!   compares, then writes;
//! * writes of one mailbox's runtime records (state, grant, pending
//!   consent, alerts, leases, cursor) first take a key-share lock on the
//!   mailbox row: they run side by side, but a delete of the mailbox waits
//!   for them (and they for it);
//! * a grant or cursor write under a lease holds a share lock on the lease
//!   row until it commits, so a takeover cannot slip in between the fencing
//!   check and the write;
//! * inserting or moving a mailbox into a profile locks the profile row
//!   before counting its mailboxes, so of two transactions adding the last
//!   mailbox a profile has room for, the second counts the first's and
//!   fails with `capacity_exceeded`;
//! * profile writes take a table lock on `profiles` that only other
//!   profile writes wait for (names unique ignoring case, one default).
//!
//! Every table lives in the connection's current schema: the first schema
//! on the `search_path`, which the URL may set
//! (`?options=-c%20search_path%3Dmailsync`); the schema must exist. Its
//! tables are created or migrated when the store opens, under a
//! transaction-scoped advisory lock (so workers starting together take
//! turns), after the `key_check` row confirmed the key: a wrong key changes
//! nothing.

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::seal::{SealKey, SharedKey, reseal};
use super::{
    Commit, CommitOutcome, DirectoryStore, Grant, GrantChange, GrantStore, KEY_CHECK,
    KEY_CHECK_CONTEXT, KeyRotation, LeaseKind, LeaseRecord, LeaseStore, OutboxStore,
    PendingAuthorization, PendingChange, PendingRevocation, RevocationSecrets, RevocationStore,
    StateStore, Store, SyncStore, capacity_below_count, capacity_error, duplicate_mailbox,
    duplicate_profile, from_json, grant_context, grant_context_of, mailbox_context, mailbox_secret,
    pending_context, profile_context, profile_in_use, profile_secret, revocation_context,
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

/// How to reach a PostgreSQL store: its URL, the key that seals its
/// secrets, and how many connections each opened store keeps.
///
/// There is no key file next to a server database, so the key is always
/// the host's (a KMS, a secret manager) and must be the same for every
/// worker. `Debug` shows the server, never the password or the key.
#[derive(Clone)]
pub struct PostgresConfig {
    url: String,
    key: SealKey,
    pool_size: u32,
    acquire_timeout: Duration,
}

impl PostgresConfig {
    /// Connections per opened store unless [`PostgresConfig::pool_size`]
    /// says otherwise.
    pub const DEFAULT_POOL_SIZE: u32 = 10;

    /// How long a call waits for a connection unless
    /// [`PostgresConfig::acquire_timeout`] says otherwise.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

    /// A database URL (`postgres://user:password@host:port/database`, with
    /// libpq-style parameters such as `sslmode` or `options`) and the seal
    /// key; [`PostgresConfig::DEFAULT_POOL_SIZE`] connections.
    pub fn new(url: impl Into<String>, key: SealKey) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            key,
            pool_size: Self::DEFAULT_POOL_SIZE,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
        }
    }

    /// How long a call (opening included) waits for a connection — a free
    /// one of the pool, or a new one to the server — before failing with
    /// `store_unavailable`.
    pub fn acquire_timeout(mut self, timeout: Duration) -> PostgresConfig {
        self.acquire_timeout = timeout;
        self
    }

    /// At most `size` connections (at least 1); a call waits for a free one.
    pub fn pool_size(mut self, size: u32) -> PostgresConfig {
        self.pool_size = size;
        self
    }

    fn connect_options(&self) -> Result<PgConnectOptions> {
        // sqlx's parse errors name the problem, not the URL, so no
        // password ends up in the message.
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| Error::validation("postgres_url", format!("not a PostgreSQL URL: {e}")))?;
        // A worker paused inside a transaction (SIGSTOP, a frozen VM) must
        // not keep its row locks — and so the mailbox it holds — past its
        // lease: the server ends such a session.
        Ok(options.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", IDLE_IN_TRANSACTION.as_millis()),
        )]))
    }
}

/// How long a session of the store may sit idle inside a transaction
/// before the server ends it (`idle_in_transaction_session_timeout`). The
/// store's transactions never wait for anything but the server, so only a
/// paused or hung process reaches it.
pub(crate) const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// The server and database a URL names, without user or password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = self
            .connect_options()
            .map(|o| describe(&o))
            .unwrap_or_else(|_| "<invalid URL>".to_owned());
        f.debug_struct("PostgresConfig")
            .field("server", &server)
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    key: SharedKey,
    server: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

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

fn lease_from(row: &PgRow) -> Result<LeaseRecord> {
    Ok(LeaseRecord {
        mailbox_id: MailboxId::parse(row.get("mailbox_id"))?,
        kind: kind_from(row.get("kind"))?,
        owner: row.get("owner"),
        fence: row.get::<i64, _>("fence"),
        expires_at: Timestamp::from_unix_millis(row.get("expires_at")),
    })
}

fn cursor_from(row: &PgRow) -> Result<SyncCursor> {
    let mut cursor: SyncCursor = from_json(row.get("data"))?;
    cursor.version = row.get("version");
    Ok(cursor)
}

/// The next value of the store-wide version sequence. Called after the
/// rows being replaced are locked, so the value exceeds their versions.
async fn next_version(tx: &mut Tx<'_>) -> Result<i64> {
    let value: i64 = sqlx::query_scalar("SELECT nextval('version_seq')")
        .fetch_one(&mut **tx)
        .await?;
    Ok(value)
}

/// Locks the mailbox row against deletion (and against changes of its
/// key) until the transaction ends; whether it exists.
async fn hold_mailbox(tx: &mut Tx<'_>, mailbox: &str) -> Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM mailboxes WHERE id = $1 FOR KEY SHARE")
            .bind(mailbox)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

/// The fencing token of a lease, locked (share) until the transaction
/// ends so that it cannot be taken over before the write commits.
async fn held_fence(tx: &mut Tx<'_>, mailbox: &str, kind: LeaseKind) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar(
            "SELECT fence FROM leases WHERE mailbox_id = $1 AND kind = $2 FOR SHARE",
        )
        .bind(mailbox)
        .bind(kind.as_str())
        .fetch_optional(&mut **tx)
        .await?,
    )
}

/// Locks the mailbox's state row until the transaction ends. Every write of
/// a due time's inputs (mailbox, state, cursor) holds it before it
/// recomputes the due time, so the last of two such writers sees the
/// other's committed change; the state row comes before the lease row in
/// every transaction that takes both.
async fn hold_state(tx: &mut Tx<'_>, mailbox: &str) -> Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM mailbox_state WHERE mailbox_id = $1 FOR UPDATE")
            .bind(mailbox)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

const DUE_INPUTS: &str = "SELECT m.id, m.data AS mailbox, s.data AS state, c.data AS cursor, \
     o.data AS outbox \
     FROM mailboxes m JOIN mailbox_state s ON s.mailbox_id = m.id \
     LEFT JOIN sync_cursors c ON c.mailbox_id = m.id \
     LEFT JOIN outbox_cursors o ON o.mailbox_id = m.id";

/// The due time of the mailbox whose mailbox, state and cursor JSON `row`
/// holds (columns `mailbox`, `state`, `cursor`, `outbox`).
fn due_of(row: &PgRow) -> Result<Option<i64>> {
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

/// Recomputes the mailbox's due time inside `tx`, whose [`hold_state`]
/// already locked the state row (so this statement, started after the
/// lock, reads every input as last committed).
/// The per-mailbox cursor tables written under compare-and-swap.
#[derive(Clone, Copy)]
enum CursorTable {
    Sync,
    Outbox,
}

/// Writes a mailbox's cursor row: updates it when one was read (`exists`),
/// else inserts it. `false` when the insert lost to another first writer.
async fn write_cursor(
    tx: &mut Tx<'_>,
    table: CursorTable,
    mailbox: &str,
    exists: bool,
    version: i64,
    data: &str,
) -> Result<bool> {
    let (update, insert) = match table {
        CursorTable::Sync => (
            "UPDATE sync_cursors SET version = $1, data = $2 WHERE mailbox_id = $3",
            "INSERT INTO sync_cursors (mailbox_id, version, data) VALUES ($1, $2, $3) \
             ON CONFLICT (mailbox_id) DO NOTHING",
        ),
        CursorTable::Outbox => (
            "UPDATE outbox_cursors SET version = $1, data = $2 WHERE mailbox_id = $3",
            "INSERT INTO outbox_cursors (mailbox_id, version, data) VALUES ($1, $2, $3) \
             ON CONFLICT (mailbox_id) DO NOTHING",
        ),
    };
    if exists {
        sqlx::query(update)
            .bind(version)
            .bind(data)
            .bind(mailbox)
            .execute(&mut **tx)
            .await?;
        return Ok(true);
    }
    let done = sqlx::query(insert)
        .bind(mailbox)
        .bind(version)
        .bind(data)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn refresh_due(tx: &mut Tx<'_>, mailbox: &str) -> Result<()> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{DUE_INPUTS} WHERE m.id = $1")))
        .bind(mailbox)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = row {
        sqlx::query("UPDATE mailbox_state SET due_at = $1 WHERE mailbox_id = $2")
            .bind(due_of(&row)?)
            .bind(mailbox)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Fills `mailbox_state.due_at` of every mailbox once, for rows written
/// before the column existed or before it counted the outgoing direction
/// (inside the opening transaction, under its
/// advisory lock).
async fn backfill_due(tx: &mut Tx<'_>) -> Result<()> {
    let done: Option<i32> = sqlx::query_scalar("SELECT 1 FROM meta WHERE key = 'due_at_v2'")
        .fetch_optional(&mut **tx)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{DUE_INPUTS} ORDER BY m.id FOR UPDATE OF s"
    )))
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        sqlx::query("UPDATE mailbox_state SET due_at = $1 WHERE mailbox_id = $2")
            .bind(due_of(&row)?)
            .bind(row.get::<String, _>("id"))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('due_at_v2', '\\x01')")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Checks the key, then migrates, in one transaction under an advisory
/// lock of the schema: workers opening a new database at the same moment
/// take turns instead of racing each other's migrations.
async fn prepare(conn: &mut PgConnection, key: &SealKey, server: &str) -> Result<()> {
    let mut tx = conn.begin().await?;
    let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *tx)
        .await?;
    let Some(schema) = schema else {
        return Err(Error::new(
            ErrorCode::Store,
            format!(
                "PostgreSQL store {server}: no schema on the search_path exists; create it first"
            ),
        ));
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("mailsync migrations: {schema}"))
        .execute(&mut *tx)
        .await?;
    check_key_before_migrating(&mut tx, key, server).await?;
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    // The advisory lock above (one per schema) already serializes this.
    migrator.set_locking(false);
    // `run_direct` rather than `run`: `run`'s `Acquire` bound makes the
    // future not `Send` (sqlx's documented way around it).
    migrator.run_direct(None, &mut *tx, false).await?;
    let sealed = key.seal(KEY_CHECK_CONTEXT, KEY_CHECK)?;
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    backfill_due(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// On an existing schema, verifies the key before any migration runs.
async fn check_key_before_migrating(tx: &mut Tx<'_>, key: &SealKey, server: &str) -> Result<()> {
    let has_meta: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'meta'",
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
        key.open(KEY_CHECK_CONTEXT, &sealed).map_err(|_| {
            Error::new(
                ErrorCode::SealKeyMismatch,
                format!(
                    "the seal key does not match PostgreSQL store {server}; open it with the key it was created with (nothing was changed)"
                ),
            )
        })?;
    }
    Ok(())
}

impl PostgresStore {
    /// Connects to the database at `url` with
    /// [`PostgresConfig::DEFAULT_POOL_SIZE`] connections, creating or
    /// migrating the schema. Fails with `seal_key_mismatch` if the schema
    /// was created with another key (nothing is changed then).
    pub async fn open(url: &str, key: SealKey) -> Result<Self> {
        Self::open_with(PostgresConfig::new(url, key)).await
    }

    /// [`PostgresStore::open`] with a [`PostgresConfig`].
    pub async fn open_with(config: PostgresConfig) -> Result<Self> {
        if config.pool_size == 0 {
            return Err(Error::validation(
                "pool_size",
                "a PostgreSQL store needs at least one connection",
            ));
        }
        let options = config.connect_options()?;
        let server = describe(&options);
        let unavailable = |e: sqlx::Error| {
            let message = format!("cannot open PostgreSQL store {server}: {e}");
            let code = match e {
                // Authentication, missing database: as the server says.
                sqlx::Error::Database(_) => Error::from(e).code(),
                _ => ErrorCode::StoreUnavailable,
            };
            Error::new(code, message)
        };
        // One connection first, for the schema: its error (refused,
        // authentication) is reported as it is, without the pool's retries.
        let mut conn =
            tokio::time::timeout(config.acquire_timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorCode::StoreUnavailable,
                        format!(
                            "cannot open PostgreSQL store {server}: no connection within {:?}",
                            config.acquire_timeout
                        ),
                    )
                })?
                .map_err(unavailable)?;
        let prepared = prepare(&mut conn, &config.key, &server).await;
        let _ = conn.close().await;
        prepared?;
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        Ok(PostgresStore {
            pool,
            key: SharedKey::new(config.key),
            server,
        })
    }

    fn seal_profile(&self, profile: &ServerProfile) -> Result<(String, Option<Vec<u8>>)> {
        let secret = profile_secret(profile)
            .map(|s| self.key.seal_secret(&profile_context(&profile.id), s))
            .transpose()?;
        Ok((to_json(profile)?, secret))
    }

    fn open_profile(&self, row: &PgRow) -> Result<ServerProfile> {
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

    fn open_mailbox(&self, row: &PgRow) -> Result<Mailbox> {
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

    fn open_grant(&self, row: &PgRow) -> Result<Grant> {
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
             expires_at, obtained_at, access_token, refresh_token) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (mailbox_id) DO UPDATE SET version = excluded.version, issuer = excluded.issuer, \
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

    /// Begins a transaction for a profile write: such writes take turns
    /// (reads, and mailbox writes, do not wait for them).
    async fn profile_writer(&self) -> Result<Tx<'_>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE profiles IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn clear_other_defaults(&self, tx: &mut Tx<'_>, keep: &ProfileId) -> Result<()> {
        let others = sqlx::query("SELECT id, data FROM profiles WHERE is_default AND id <> $1")
            .bind(keep.as_str())
            .fetch_all(&mut **tx)
            .await?;
        for row in others {
            let id: String = row.get("id");
            let mut other: ServerProfile = from_json(row.get("data"))?;
            other.default_for_new_mailboxes = false;
            let version = next_version(tx).await?;
            sqlx::query(
                "UPDATE profiles SET is_default = FALSE, data = $1, version = $2 WHERE id = $3",
            )
            .bind(to_json(&other)?)
            .bind(version)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn check_name(tx: &mut Tx<'_>, profile: &ServerProfile) -> Result<()> {
        let clash: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM profiles WHERE name_key = $1 AND id <> $2")
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
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = $1")
            .bind(profile.as_str())
            .fetch_one(&mut **tx)
            .await?;
        Ok(count as u32)
    }

    /// Locks a profile row against other mailbox moves into it (and against
    /// its deletion) until the transaction ends; its name, if it exists.
    async fn hold_profile(tx: &mut Tx<'_>, profile: &ProfileId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM profiles WHERE id = $1 FOR NO KEY UPDATE")
                .bind(profile.as_str())
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    /// The capacity rule for `mailbox` joining its profile, whose row
    /// [`Self::hold_profile`] locked (`name`: `None` if it is gone).
    async fn check_capacity(
        tx: &mut Tx<'_>,
        mailbox: &Mailbox,
        name: Option<String>,
        capacity: Option<u32>,
    ) -> Result<()> {
        let Some(profile_id) = &mailbox.profile_id else {
            return Ok(());
        };
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
}

#[async_trait]
impl DirectoryStore for PostgresStore {
    async fn insert_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
        let (data, secret) = self.seal_profile(profile)?;
        let mut tx = self.profile_writer().await?;
        Self::check_name(&mut tx, profile).await?;
        if profile.default_for_new_mailboxes {
            self.clear_other_defaults(&mut tx, &profile.id).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "INSERT INTO profiles (id, name, name_key, is_default, data, secret, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
        let mut tx = self.profile_writer().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM profiles WHERE id = $1 FOR NO KEY UPDATE")
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
        // The row lock keeps mailboxes from moving in while counting.
        let count = Self::count(&mut tx, &profile.id).await?;
        if count > profile.mailbox_capacity {
            return Err(capacity_below_count(count));
        }
        if profile.default_for_new_mailboxes {
            self.clear_other_defaults(&mut tx, &profile.id).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE profiles SET name = $1, name_key = $2, is_default = $3, data = $4, secret = $5, \
             version = $6 WHERE id = $7",
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
        let row = sqlx::query("SELECT data, secret, version FROM profiles WHERE id = $1")
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
        let mut tx = self.profile_writer().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM profiles WHERE id = $1 FOR UPDATE")
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
        sqlx::query("DELETE FROM profiles WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_mailbox(&self, mailbox: &Mailbox, capacity: Option<u32>) -> Result<Mailbox> {
        let (data, secret) = self.seal_mailbox(mailbox)?;
        let mut tx = self.pool.begin().await?;
        if let Some(profile_id) = &mailbox.profile_id {
            let name = Self::hold_profile(&mut tx, profile_id).await?;
            Self::check_capacity(&mut tx, mailbox, name, capacity).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "INSERT INTO mailboxes (id, email, profile_id, data, secret, version) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
        sqlx::query("INSERT INTO mailbox_state (mailbox_id, version, data) VALUES ($1, $2, $3)")
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
        let mut tx = self.pool.begin().await?;
        // Profile row first, then the mailbox row: the order every writer
        // that takes both uses.
        let target_name = match &mailbox.profile_id {
            Some(profile_id) => Self::hold_profile(&mut tx, profile_id).await?,
            None => None,
        };
        let old = sqlx::query(
            "SELECT profile_id, version FROM mailboxes WHERE id = $1 FOR NO KEY UPDATE",
        )
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
            Self::check_capacity(&mut tx, mailbox, target_name, capacity).await?;
        }
        let version = next_version(&mut tx).await?;
        let result = sqlx::query(
            "UPDATE mailboxes SET email = $1, profile_id = $2, data = $3, secret = $4, version = $5 \
             WHERE id = $6",
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
                if hold_state(&mut tx, mailbox.id.as_str()).await? {
                    refresh_due(&mut tx, mailbox.id.as_str()).await?;
                }
                tx.commit().await?;
                let mut stored = mailbox.clone();
                stored.version = version;
                Ok(stored)
            }
        }
    }

    async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret, version FROM mailboxes WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(&r)).transpose()
    }

    async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
        let row = sqlx::query("SELECT data, secret, version FROM mailboxes WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_mailbox(&r)).transpose()
    }

    async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
        let rows = match profile {
            Some(p) => sqlx::query(
                "SELECT data, secret, version FROM mailboxes WHERE profile_id = $1 ORDER BY email",
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
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE profile_id = $1")
            .bind(profile.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u32)
    }

    async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
        // Everything of the mailbox goes with it (ON DELETE CASCADE); the
        // delete waits for runtime writes holding the mailbox row.
        let done = sqlx::query("DELETE FROM mailboxes WHERE id = $1")
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
impl StateStore for PostgresStore {
    async fn get_state(&self, mailbox: &MailboxId) -> Result<Option<MailboxState>> {
        let row = sqlx::query(
            "SELECT m.id, s.version, s.data FROM mailboxes m \
             LEFT JOIN mailbox_state s ON s.mailbox_id = m.id WHERE m.id = $1",
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
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, id.as_str()).await? {
            return Err(Error::not_found("mailbox", id));
        }
        // The state row serializes commits of one mailbox.
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM mailbox_state WHERE mailbox_id = $1 FOR UPDATE",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let current_version = current.unwrap_or(0);
        if current_version != commit.expected_state_version {
            return Ok(CommitOutcome::StateConflict);
        }
        let stored_grant: Option<i64> =
            sqlx::query_scalar("SELECT version FROM grants WHERE mailbox_id = $1 FOR UPDATE")
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
                "INSERT INTO mailbox_state (mailbox_id, version, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (mailbox_id) DO UPDATE SET version = excluded.version, data = excluded.data",
            )
            .bind(id.as_str())
            .bind(state_version)
            .bind(to_json(&next)?)
            .execute(&mut *tx)
            .await?;
            // The state row is locked (above) or was just inserted.
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
                sqlx::query("DELETE FROM grants WHERE mailbox_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                grant_version = None;
            }
        }
        match &commit.pending {
            PendingChange::Keep => {}
            PendingChange::Delete => {
                sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = $1")
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
                sqlx::query("DELETE FROM oauth_pending WHERE mailbox_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO oauth_pending (state_key, mailbox_id, sealed, redirect_uri, created_at, \
                     expires_at, issuer, client_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            let data = commit
                .alerts
                .iter()
                .map(to_json)
                .collect::<Result<Vec<String>>>()?;
            // WITH ORDINALITY keeps the given order in the identity column.
            sqlx::query(
                "INSERT INTO alerts (mailbox_id, data) \
                 SELECT $1, a.data FROM UNNEST($2::text[]) WITH ORDINALITY AS a(data, n) ORDER BY a.n",
            )
            .bind(id.as_str())
            .bind(&data)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM alerts WHERE mailbox_id = $1 AND id NOT IN \
                 (SELECT id FROM alerts WHERE mailbox_id = $1 ORDER BY id DESC LIMIT $2)",
            )
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
            "SELECT data FROM (SELECT id, data FROM alerts WHERE mailbox_id = $1 \
             ORDER BY id DESC LIMIT $2) AS latest ORDER BY id",
        )
        .bind(mailbox.as_str())
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_json(r.get("data"))).collect()
    }

    async fn put_profile_test(&self, profile: &ProfileId, result: &LastTestResult) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO profile_tests (profile_id, data) SELECT id, $1 FROM profiles WHERE id = $2 \
             ON CONFLICT (profile_id) DO UPDATE SET data = excluded.data",
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
            sqlx::query_scalar("SELECT data FROM profile_tests WHERE profile_id = $1")
                .bind(profile.as_str())
                .fetch_optional(&self.pool)
                .await?;
        data.map(|d| from_json(&d)).transpose()
    }
}

#[async_trait]
impl GrantStore for PostgresStore {
    async fn take_pending(&self, state: &Secret) -> Result<Option<PendingAuthorization>> {
        let key = state_key(state);
        // One statement: of two concurrent takers only one gets the row.
        let row = sqlx::query(
            "DELETE FROM oauth_pending WHERE state_key = $1 \
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
             obtained_at, access_token, refresh_token FROM grants WHERE mailbox_id = $1",
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
        let id = grant.mailbox_id.as_str();
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, id).await? {
            return Ok(None);
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM grants WHERE mailbox_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if current != Some(expected) {
            return Ok(None);
        }
        if let Some(lease) = fence
            && held_fence(&mut tx, lease.mailbox_id.as_str(), lease.kind).await?
                != Some(lease.fence)
        {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        self.insert_grant(&mut tx, grant, version).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn grant_held(&self, issuer: &str, client_id: &str, account: &str) -> Result<bool> {
        // The column's "C" collation makes lower() fold ASCII letters only:
        // the comparison ignores ASCII case, as the other stores do.
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM grants WHERE issuer = $1 AND client_id = $2 AND lower(account) = $3 LIMIT 1",
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
impl LeaseStore for PostgresStore {
    async fn acquire_lease(
        &self,
        mailbox: &MailboxId,
        kind: LeaseKind,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, mailbox.as_str()).await? {
            return Err(Error::not_found("mailbox", mailbox));
        }
        let record = |fence| LeaseRecord {
            mailbox_id: mailbox.clone(),
            kind,
            owner: owner.to_owned(),
            fence,
            expires_at: until,
        };
        loop {
            let held = sqlx::query(
                "SELECT owner, expires_at FROM leases WHERE mailbox_id = $1 AND kind = $2 FOR UPDATE",
            )
            .bind(mailbox.as_str())
            .bind(kind.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get::<String, _>("owner"), r.get::<i64, _>("expires_at")));
            match held {
                Some((_, expires)) if expires > now.unix_millis() => return Ok(None),
                Some((previous, _)) => {
                    if previous != owner {
                        crate::metrics::lease_taken_over(kind);
                    }
                    // Locked: the new token exceeds the one it replaces.
                    let fence = next_version(&mut tx).await?;
                    sqlx::query(
                        "UPDATE leases SET owner = $1, fence = $2, expires_at = $3 \
                         WHERE mailbox_id = $4 AND kind = $5",
                    )
                    .bind(owner)
                    .bind(fence)
                    .bind(until.unix_millis())
                    .bind(mailbox.as_str())
                    .bind(kind.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(Some(record(fence)));
                }
                None => {
                    let fence = next_version(&mut tx).await?;
                    let done = sqlx::query(
                        "INSERT INTO leases (mailbox_id, kind, owner, fence, expires_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (mailbox_id, kind) DO NOTHING",
                    )
                    .bind(mailbox.as_str())
                    .bind(kind.as_str())
                    .bind(owner)
                    .bind(fence)
                    .bind(until.unix_millis())
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        tx.commit().await?;
                        return Ok(Some(record(fence)));
                    }
                    // Someone else created it meanwhile (and committed):
                    // look again, now that there is a row to lock.
                }
            }
        }
    }

    async fn renew_lease(
        &self,
        lease: &LeaseRecord,
        until: Timestamp,
    ) -> Result<Option<LeaseRecord>> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE mailbox_id = $2 AND kind = $3 AND fence = $4",
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
        sqlx::query("DELETE FROM leases WHERE mailbox_id = $1 AND kind = $2 AND fence = $3")
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
        let now_ms = now.unix_millis();
        let skip: Vec<&str> = skip.iter().map(MailboxId::as_str).collect();
        let mut tx = self.pool.begin().await?;
        // The due mailboxes nobody holds, oldest due first. SKIP LOCKED
        // passes over state rows another worker is claiming (or writing)
        // right now, so concurrent claims take different mailboxes.
        let picked: Vec<String> = sqlx::query_scalar(
            "SELECT s.mailbox_id FROM mailbox_state s \
             WHERE s.due_at <= $1 AND NOT (s.mailbox_id = ANY($2)) \
             AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.mailbox_id = s.mailbox_id \
                             AND l.kind = 'sync' AND l.expires_at > $1) \
             ORDER BY s.due_at, s.mailbox_id LIMIT $3 FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(now_ms)
        .bind(&skip)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        // Their sync leases, locked: one may have been taken since the
        // query's snapshot (a single acquisition does not lock the state
        // row); the lease row decides.
        let existing = sqlx::query(
            "SELECT mailbox_id, owner, expires_at FROM leases \
             WHERE kind = 'sync' AND mailbox_id = ANY($1) ORDER BY mailbox_id FOR UPDATE",
        )
        .bind(&picked)
        .fetch_all(&mut *tx)
        .await?;
        let mut expired: Vec<String> = Vec::new();
        let mut present: Vec<String> = Vec::new();
        for row in &existing {
            let id: String = row.get("mailbox_id");
            // Held (taken since the snapshot) and not expired: not ours.
            if row.get::<i64, _>("expires_at") <= now_ms {
                if row.get::<String, _>("owner") != owner {
                    crate::metrics::lease_taken_over(LeaseKind::Sync);
                }
                expired.push(id.clone());
            }
            present.push(id);
        }
        let fresh: Vec<&str> = picked
            .iter()
            .filter(|p| !present.contains(p))
            .map(String::as_str)
            .collect();
        let mut fences: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        if !expired.is_empty() {
            // Locked above: each new token exceeds the one it replaces.
            let rows = sqlx::query(
                "UPDATE leases SET owner = $1, fence = nextval('version_seq'), expires_at = $2 \
                 WHERE kind = 'sync' AND mailbox_id = ANY($3) RETURNING mailbox_id, fence",
            )
            .bind(owner)
            .bind(until.unix_millis())
            .bind(&expired)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                fences.insert(row.get("mailbox_id"), row.get("fence"));
            }
        }
        if !fresh.is_empty() {
            // A row created meanwhile by another holder wins (nothing written).
            let rows = sqlx::query(
                "INSERT INTO leases (mailbox_id, kind, owner, fence, expires_at) \
                 SELECT m, 'sync', $1, nextval('version_seq'), $2 FROM UNNEST($3::text[]) AS m \
                 ON CONFLICT (mailbox_id, kind) DO NOTHING RETURNING mailbox_id, fence",
            )
            .bind(owner)
            .bind(until.unix_millis())
            .bind(&fresh)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                fences.insert(row.get("mailbox_id"), row.get("fence"));
            }
        }
        tx.commit().await?;
        picked
            .iter()
            .filter_map(|id| fences.get(id).map(|fence| (id, *fence)))
            .map(|(id, fence)| {
                Ok(LeaseRecord {
                    mailbox_id: MailboxId::parse(id)?,
                    kind: LeaseKind::Sync,
                    owner: owner.to_owned(),
                    fence,
                    expires_at: until,
                })
            })
            .collect()
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(s.due_at, l.expires_at)) FROM mailbox_state s \
             LEFT JOIN leases l ON l.mailbox_id = s.mailbox_id AND l.kind = 'sync' \
             WHERE s.due_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(Timestamp::from_unix_millis))
    }
}

#[async_trait]
impl SyncStore for PostgresStore {
    async fn get_cursor(&self, mailbox: &MailboxId) -> Result<Option<SyncCursor>> {
        let row = sqlx::query("SELECT version, data FROM sync_cursors WHERE mailbox_id = $1")
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
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, id).await? {
            return Err(Error::not_found("mailbox", &cursor.mailbox_id));
        }
        // The state row before the lease row, as `claim_due` takes them.
        hold_state(&mut tx, id).await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM sync_cursors WHERE mailbox_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let held = held_fence(&mut tx, id, fence.kind).await?;
        if current.unwrap_or(0) != expected || held != Some(fence.fence) {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        let data = to_json(cursor)?;
        if !write_cursor(
            &mut tx,
            CursorTable::Sync,
            id,
            current.is_some(),
            version,
            &data,
        )
        .await?
        {
            // Another first cycle stored a cursor meanwhile.
            return Ok(None);
        }
        refresh_due(&mut tx, id).await?;
        if !messages.is_empty() {
            let mut keys = Vec::with_capacity(messages.len());
            let mut uids = Vec::with_capacity(messages.len());
            let mut uidls = Vec::with_capacity(messages.len());
            let mut outcomes = Vec::with_capacity(messages.len());
            for m in messages {
                keys.push(m.key.as_str());
                uids.push(m.uid.map(i64::from));
                uidls.push(m.uidl.as_deref());
                outcomes.push(
                    serde_json::to_value(m.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                );
            }
            // Recording a key again keeps the first record.
            sqlx::query(
                "INSERT INTO sync_messages (mailbox_id, message_key, uid, uidl, outcome) \
                 SELECT $1, m.key, m.uid, m.uidl, m.outcome \
                 FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[]) \
                 WITH ORDINALITY AS m(key, uid, uidl, outcome, n) ORDER BY m.n \
                 ON CONFLICT (mailbox_id, message_key) DO NOTHING",
            )
            .bind(id)
            .bind(&keys)
            .bind(&uids)
            .bind(&uidls)
            .bind(&outcomes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn recorded_keys(
        &self,
        mailbox: &MailboxId,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT message_key FROM sync_messages WHERE mailbox_id = $1 AND message_key = ANY($2)",
        )
        .bind(mailbox.as_str())
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(found.into_iter().collect())
    }

    async fn recorded_uidls(
        &self,
        mailbox: &MailboxId,
    ) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT uidl FROM sync_messages WHERE mailbox_id = $1 AND uidl IS NOT NULL",
        )
        .bind(mailbox.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

// ---- outgoing sync (OutboxStore) ----

fn outgoing_from(row: &PgRow) -> Result<OutgoingRecord> {
    let mut record: OutgoingRecord = from_json(row.get("data"))?;
    record.version = row.get("version");
    Ok(record)
}

fn outbox_cursor_from(row: &PgRow) -> Result<OutboxCursor> {
    let mut cursor: OutboxCursor = from_json(row.get("data"))?;
    cursor.version = row.get("version");
    Ok(cursor)
}

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn get_outgoing(
        &self,
        mailbox: &MailboxId,
        ids: &[String],
    ) -> Result<Vec<OutgoingRecord>> {
        let rows = sqlx::query(
            "SELECT version, data FROM outbox_messages WHERE mailbox_id = $1 AND id = ANY($2)",
        )
        .bind(mailbox.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outgoing_from).collect()
    }

    async fn list_outgoing(&self, mailbox: &MailboxId) -> Result<Vec<OutgoingRecord>> {
        let rows = sqlx::query(
            "SELECT version, data FROM outbox_messages WHERE mailbox_id = $1 ORDER BY id",
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
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, mailbox).await? {
            return Err(Error::not_found("mailbox", &record.mailbox_id));
        }
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM outbox_messages WHERE mailbox_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(mailbox)
        .bind(&record.id)
        .fetch_optional(&mut *tx)
        .await?;
        let held = held_fence(&mut tx, mailbox, LeaseKind::Send).await?;
        if fence.kind != LeaseKind::Send
            || held != Some(fence.fence)
            || current.unwrap_or(0) != expected
        {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        let data = to_json(record)?;
        if current.is_some() {
            sqlx::query(
                "UPDATE outbox_messages SET version = $1, state = $2, data = $3 \
                 WHERE mailbox_id = $4 AND id = $5",
            )
            .bind(version)
            .bind(record.state.as_str())
            .bind(&data)
            .bind(mailbox)
            .bind(&record.id)
            .execute(&mut *tx)
            .await?;
        } else {
            let done = sqlx::query(
                "INSERT INTO outbox_messages (mailbox_id, id, version, state, data) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (mailbox_id, id) DO NOTHING",
            )
            .bind(mailbox)
            .bind(&record.id)
            .bind(version)
            .bind(record.state.as_str())
            .bind(&data)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                // Another writer stored the record meanwhile.
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn get_outbox_cursor(&self, mailbox: &MailboxId) -> Result<Option<OutboxCursor>> {
        let row = sqlx::query("SELECT version, data FROM outbox_cursors WHERE mailbox_id = $1")
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
        let mailbox = cursor.mailbox_id.as_str();
        let mut tx = self.pool.begin().await?;
        if !hold_mailbox(&mut tx, mailbox).await? {
            return Err(Error::not_found("mailbox", &cursor.mailbox_id));
        }
        // The state row before the lease row, as `claim_due` takes them
        // (the due time is written below).
        hold_state(&mut tx, mailbox).await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM outbox_cursors WHERE mailbox_id = $1 FOR UPDATE",
        )
        .bind(mailbox)
        .fetch_optional(&mut *tx)
        .await?;
        let held = held_fence(&mut tx, mailbox, LeaseKind::Send).await?;
        if fence.kind != LeaseKind::Send
            || held != Some(fence.fence)
            || current.unwrap_or(0) != expected
        {
            return Ok(None);
        }
        let version = next_version(&mut tx).await?;
        let data = to_json(cursor)?;
        if !write_cursor(
            &mut tx,
            CursorTable::Outbox,
            mailbox,
            current.is_some(),
            version,
            &data,
        )
        .await?
        {
            return Ok(None);
        }
        refresh_due(&mut tx, mailbox).await?;
        tx.commit().await?;
        Ok(Some(version))
    }
}

// ---- end of outgoing sync ----

#[async_trait]
impl Store for PostgresStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    /// Rows are re-sealed under `FOR UPDATE` locks, so a concurrent write
    /// (a refresh) waits for the rotation instead of being overwritten.
    async fn rotate_key(&self, new_key: &SealKey) -> Result<KeyRotation> {
        let old = self.key.current();
        let mut tx = self.pool.begin().await?;
        let check: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'key_check' FOR UPDATE")
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
        for row in
            sqlx::query("SELECT id, secret FROM profiles WHERE secret IS NOT NULL FOR UPDATE")
                .fetch_all(&mut *tx)
                .await?
        {
            let id: String = row.get("id");
            let context = format!("profile:{id}:secret");
            if let Some(v) = reseal(&old, new_key, &context, &row.get::<Vec<u8>, _>("secret"))? {
                put(
                    &mut tx,
                    "UPDATE profiles SET secret = $1 WHERE id = $2",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        for row in
            sqlx::query("SELECT id, secret FROM mailboxes WHERE secret IS NOT NULL FOR UPDATE")
                .fetch_all(&mut *tx)
                .await?
        {
            let id: String = row.get("id");
            let context = format!("mailbox:{id}:password");
            if let Some(v) = reseal(&old, new_key, &context, &row.get::<Vec<u8>, _>("secret"))? {
                put(
                    &mut tx,
                    "UPDATE mailboxes SET secret = $1 WHERE id = $2",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        for row in sqlx::query(
            "SELECT state_key, mailbox_id, issuer, client_id, sealed FROM oauth_pending FOR UPDATE",
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
                    "UPDATE oauth_pending SET sealed = $1 WHERE state_key = $2",
                    v,
                    &[&key],
                )
                .await?;
            }
        }
        for row in sqlx::query(
            "SELECT mailbox_id, issuer, client_id, token_endpoint, account, access_token, refresh_token \
             FROM grants FOR UPDATE",
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
                put(&mut tx, "UPDATE grants SET access_token = $1 WHERE mailbox_id = $2", v, &[&mailbox]).await?;
            }
            if let Some(refresh) = row.get::<Option<Vec<u8>>, _>("refresh_token")
                && let Some(v) = reseal(&old, new_key, &context("refresh"), &refresh)?
            {
                put(&mut tx, "UPDATE grants SET refresh_token = $1 WHERE mailbox_id = $2", v, &[&mailbox]).await?;
            }
        }
        for row in sqlx::query("SELECT * FROM revocations FOR UPDATE")
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
                    "UPDATE revocations SET sealed = $1 WHERE id = $2",
                    v,
                    &[&id],
                )
                .await?;
            }
        }
        let check = new_key.seal(KEY_CHECK_CONTEXT, KEY_CHECK)?;
        put(
            &mut tx,
            "UPDATE meta SET value = $1 WHERE key = 'key_check'",
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

/// A revocation row without its secrets (filled in by `open_revocation`).
fn revocation_shell(row: &PgRow) -> Result<PendingRevocation> {
    Ok(PendingRevocation {
        id: row.get("id"),
        mailbox_id: MailboxId::parse(row.get("mailbox_id"))?,
        issuer: row.get("issuer"),
        client_id: row.get("client_id"),
        client_secret: None,
        endpoint: row.get("endpoint"),
        token: Secret::new(""),
        token_type_hint: row.get("token_type_hint"),
        attempts: row.get::<i32, _>("attempts").max(0) as u32,
        last_error: row.get("last_error"),
        created_at: Timestamp::from_unix_millis(row.get("created_at")),
        next_attempt_at: Timestamp::from_unix_millis(row.get("next_attempt_at")),
    })
}

impl PostgresStore {
    fn open_revocation(&self, row: &PgRow) -> Result<PendingRevocation> {
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
impl RevocationStore for PostgresStore {
    async fn queue_revocation(&self, r: &PendingRevocation) -> Result<()> {
        let sealed = self
            .key
            .seal(&revocation_context(r), &RevocationSecrets::of(r))?;
        let done = sqlx::query(
            "INSERT INTO revocations (id, mailbox_id, issuer, client_id, endpoint, token_type_hint, sealed, \
             attempts, last_error, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&r.id)
        .bind(r.mailbox_id.as_str())
        .bind(&r.issuer)
        .bind(&r.client_id)
        .bind(&r.endpoint)
        .bind(&r.token_type_hint)
        .bind(sealed)
        .bind(i32::try_from(r.attempts).unwrap_or(i32::MAX))
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
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT * FROM revocations WHERE next_attempt_at <= $1 \
             ORDER BY next_attempt_at, created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now.unix_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut r = self.open_revocation(row)?;
            sqlx::query("UPDATE revocations SET next_attempt_at = $1 WHERE id = $2")
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
            "UPDATE revocations SET attempts = $1, last_error = $2, next_attempt_at = $3 WHERE id = $4",
        )
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(last_error)
        .bind(next_attempt_at.unix_millis())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_revocation(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM revocations WHERE id = $1")
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
