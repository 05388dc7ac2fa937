//! The CRM's own database (`crm.db`, beside mailsync's `mailsync.db`): the
//! Google OAuth client as the admin entered it, and the email the CRM holds
//! — messages the sync engine delivered (keyed by mailbox and
//! `IncomingMessage::key`, so a batch delivered twice is stored once) and
//! the mail users composed, queued in the `outbox` table until the engine
//! reports it sent or failed (see [`crate::outbox`]).
//!
//! The client secret is sealed with mailsync's own seal key (the `.key`
//! file next to `mailsync.db`), so it is never at rest in the clear here
//! either.

use std::path::Path;
use std::str::FromStr;

use mailsync::model::{MailboxId, PublishingStatus, Secret, UserType};
use mailsync::sync::{IncomingMessage, MailAddress};
use mailsync::{Error, ErrorCode, SealKey, Timestamp};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The seal context of the stored client secret.
const SECRET_CONTEXT: &str = "crm:oauth_client:client_secret";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS oauth_client (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        client_id TEXT NOT NULL,
        client_secret BLOB,
        environment_url TEXT NOT NULL,
        user_type TEXT NOT NULL,
        publishing_status TEXT NOT NULL,
        test_users TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS messages (
        mailbox_id TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT,
        in_reply_to TEXT NOT NULL,
        refs TEXT NOT NULL,
        thread_id TEXT,
        provider_id TEXT,
        from_addr TEXT NOT NULL,
        to_addr TEXT NOT NULL,
        cc_addr TEXT NOT NULL,
        subject TEXT,
        date INTEGER,
        received_at INTEGER,
        size INTEGER NOT NULL,
        uid INTEGER,
        unparsed INTEGER NOT NULL,
        raw BLOB NOT NULL,
        stored_at INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, key)
    )",
    "CREATE INDEX IF NOT EXISTS messages_by_message_id ON messages (message_id)",
    "CREATE INDEX IF NOT EXISTS messages_by_mailbox ON messages (mailbox_id, stored_at)",
    // Composed mail waiting for the engine ("Pending Send"): `done` once the
    // engine reported it sent or failed; `outcome` and `message_id` as last
    // reported. The engine keeps its own record of each message (state,
    // attempts, last error), keyed by mailbox and `id`.
    "CREATE TABLE IF NOT EXISTS outbox (
        mailbox_id TEXT NOT NULL,
        id TEXT NOT NULL,
        to_addr TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        message_id TEXT,
        PRIMARY KEY (mailbox_id, id)
    )",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (mailbox_id, done, queued_at)",
    "CREATE INDEX IF NOT EXISTS outbox_by_message_id ON outbox (message_id)",
];

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Store, format!("CRM database: {e}"))
}

/// The Google OAuth client as the admin entered it.
#[derive(Debug, Clone)]
pub struct OAuthClientSettings {
    /// Client id.
    pub client_id: String,
    /// Client secret (unsealed), if one was entered.
    pub client_secret: Option<Secret>,
    /// The CRM's environment URL (origin and redirect URI derive from it).
    pub environment_url: String,
    /// Internal or External.
    pub user_type: UserType,
    /// Testing or Production.
    pub publishing_status: PublishingStatus,
    /// Test users (lower-cased).
    pub test_users: Vec<String>,
}

/// A message as the CRM shows it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The engine's idempotency key.
    pub key: String,
    /// `Message-ID`.
    pub message_id: Option<String>,
    /// `In-Reply-To`.
    pub in_reply_to: Vec<String>,
    /// `References`.
    pub references: Vec<String>,
    /// Gmail thread id.
    pub thread_id: Option<String>,
    /// `From`, formatted.
    pub from: String,
    /// `To`, formatted.
    pub to: String,
    /// `Subject`.
    pub subject: Option<String>,
    /// `Date`.
    pub date: Option<Timestamp>,
    /// Size in octets.
    pub size: i64,
    /// When the CRM stored it.
    pub stored_at: Timestamp,
}

/// A message a user composed, as the CRM queued it.
#[derive(Debug, Clone)]
pub struct QueuedEmail {
    /// The mailbox that sends it.
    pub mailbox_id: MailboxId,
    /// The CRM's id of it (the engine's record is keyed by it).
    pub id: String,
    /// Recipients.
    pub to: Vec<String>,
    /// `Subject`.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// When it was queued.
    pub queued_at: Timestamp,
    /// The engine reported it sent or failed: no longer pending.
    pub done: bool,
    /// The last outcome the engine reported (`sent`, `failed`, `deferred`,
    /// `unknown`), if any.
    pub outcome: Option<String>,
    /// Its Message-ID (without angle brackets), once reported.
    pub message_id: Option<String>,
}

/// The CRM's database.
#[derive(Clone, Debug)]
pub struct CrmDb {
    pool: SqlitePool,
    seal: std::sync::Arc<SealKey>,
}

fn addresses(list: &[MailAddress]) -> String {
    list.iter()
        .map(|a| match &a.name {
            Some(name) if !name.is_empty() => format!("{name} <{}>", a.address),
            _ => a.address.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn user_type_str(t: UserType) -> &'static str {
    match t {
        UserType::Internal => "internal",
        UserType::External => "external",
    }
}

fn status_str(s: PublishingStatus) -> &'static str {
    match s {
        PublishingStatus::Testing => "testing",
        PublishingStatus::Production => "production",
    }
}

impl CrmDb {
    /// Opens (or creates) `path`; `seal` seals the client secret.
    pub async fn open(path: &Path, seal: SealKey) -> mailsync::Result<CrmDb> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(store_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&pool)
                .await
                .map_err(store_error)?;
        }
        Ok(CrmDb {
            pool,
            seal: std::sync::Arc::new(seal),
        })
    }

    /// Closes the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The OAuth client, if the admin entered one.
    pub async fn oauth_client(&self) -> mailsync::Result<Option<OAuthClientSettings>> {
        let Some(row) = sqlx::query(
            "SELECT client_id, client_secret, environment_url, user_type, publishing_status, test_users
             FROM oauth_client WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?
        else {
            return Ok(None);
        };
        let sealed: Option<Vec<u8>> = row.get(1);
        let client_secret = match sealed {
            Some(envelope) => Some(self.seal.open_secret(SECRET_CONTEXT, &envelope)?),
            None => None,
        };
        let user_type: String = row.get(3);
        let status: String = row.get(4);
        let test_users: String = row.get(5);
        Ok(Some(OAuthClientSettings {
            client_id: row.get(0),
            client_secret,
            environment_url: row.get(2),
            user_type: if user_type == "internal" {
                UserType::Internal
            } else {
                UserType::External
            },
            publishing_status: if status == "testing" {
                PublishingStatus::Testing
            } else {
                PublishingStatus::Production
            },
            test_users: serde_json::from_str(&test_users).unwrap_or_default(),
        }))
    }

    /// Stores the OAuth client (the secret sealed).
    pub async fn put_oauth_client(&self, settings: &OAuthClientSettings) -> mailsync::Result<()> {
        let sealed = match &settings.client_secret {
            Some(secret) => Some(self.seal.seal_secret(SECRET_CONTEXT, secret)?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO oauth_client (id, client_id, client_secret, environment_url, user_type,
                 publishing_status, test_users, updated_at)
             VALUES (1, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET client_id = excluded.client_id,
                 client_secret = excluded.client_secret, environment_url = excluded.environment_url,
                 user_type = excluded.user_type, publishing_status = excluded.publishing_status,
                 test_users = excluded.test_users, updated_at = excluded.updated_at",
        )
        .bind(&settings.client_id)
        .bind(sealed)
        .bind(&settings.environment_url)
        .bind(user_type_str(settings.user_type))
        .bind(status_str(settings.publishing_status))
        .bind(serde_json::to_string(&settings.test_users).unwrap_or_else(|_| "[]".into()))
        .bind(Timestamp::now_utc().unix_millis())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Stores a message unless the mailbox already has its key; `true`
    /// when it was new.
    pub async fn store_message(&self, m: &IncomingMessage) -> mailsync::Result<bool> {
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(
            "INSERT OR IGNORE INTO messages (mailbox_id, key, message_id, in_reply_to, refs, thread_id,
                 provider_id, from_addr, to_addr, cc_addr, subject, date, received_at, size, uid,
                 unparsed, raw, stored_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(m.mailbox_id.as_str())
        .bind(&m.key)
        .bind(&m.message_id)
        .bind(json(&m.in_reply_to))
        .bind(json(&m.references))
        .bind(&m.thread_id)
        .bind(&m.provider_id)
        .bind(addresses(&m.from))
        .bind(addresses(&m.to))
        .bind(addresses(&m.cc))
        .bind(&m.subject)
        .bind(m.date.map(Timestamp::unix_millis))
        .bind(m.received_at.map(Timestamp::unix_millis))
        .bind(i64::from(m.size))
        .bind(m.uid.map(i64::from))
        .bind(m.unparsed)
        .bind(&m.raw.0)
        .bind(Timestamp::now_utc().unix_millis())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Which of these Message-IDs belong to email the CRM holds (any
    /// mailbox) or sent: its tracked email.
    pub async fn tracked(&self, message_ids: &[String]) -> mailsync::Result<Vec<bool>> {
        let mut out = Vec::with_capacity(message_ids.len());
        for id in message_ids {
            let found = sqlx::query(
                "SELECT 1 FROM messages WHERE message_id = ?1
                 UNION ALL SELECT 1 FROM outbox WHERE message_id = ?1 AND outcome = 'sent'
                 LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
            out.push(found.is_some());
        }
        Ok(out)
    }

    /// A mailbox's messages, newest first (at most `limit`).
    pub async fn messages(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT key, message_id, in_reply_to, refs, thread_id, from_addr, to_addr, subject, date,
                    size, stored_at
             FROM messages WHERE mailbox_id = ? ORDER BY stored_at DESC, rowid DESC LIMIT ?",
        )
        .bind(mailbox.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let list = |text: String| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default();
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                key: row.get(0),
                message_id: row.get(1),
                in_reply_to: list(row.get(2)),
                references: list(row.get(3)),
                thread_id: row.get(4),
                from: row.get(5),
                to: row.get(6),
                subject: row.get(7),
                date: row
                    .get::<Option<i64>, _>(8)
                    .map(Timestamp::from_unix_millis),
                size: row.get(9),
                stored_at: Timestamp::from_unix_millis(row.get(10)),
            })
            .collect())
    }

    /// How many messages a mailbox holds.
    pub async fn message_count(&self, mailbox: &MailboxId) -> mailsync::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE mailbox_id = ?")
            .bind(mailbox.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    /// The subject of the message with this Message-ID, if the CRM holds it
    /// (for showing what a reply correlates with).
    pub async fn subject_of(&self, message_id: &str) -> mailsync::Result<Option<String>> {
        let row = sqlx::query("SELECT subject FROM messages WHERE message_id = ? LIMIT 1")
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| r.get::<Option<String>, _>(0).unwrap_or_default()))
    }

    /// Queues a composed message from `mailbox`; returns its id.
    pub async fn queue_email(
        &self,
        mailbox: &MailboxId,
        to: &[String],
        subject: &str,
        body: &str,
    ) -> mailsync::Result<String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(store_error)?;
        let id = format!(
            "crm-{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        sqlx::query(
            "INSERT INTO outbox (mailbox_id, id, to_addr, subject, body, queued_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(mailbox.as_str())
        .bind(&id)
        .bind(serde_json::to_string(to).map_err(store_error)?)
        .bind(subject)
        .bind(body)
        .bind(Timestamp::now_utc().unix_millis())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(id)
    }

    fn queued(row: &sqlx::sqlite::SqliteRow) -> mailsync::Result<QueuedEmail> {
        let to: String = row.get("to_addr");
        Ok(QueuedEmail {
            mailbox_id: MailboxId::parse(&row.get::<String, _>("mailbox_id"))?,
            id: row.get("id"),
            to: serde_json::from_str(&to).map_err(store_error)?,
            subject: row.get("subject"),
            body: row.get("body"),
            queued_at: Timestamp::from_unix_millis(row.get("queued_at")),
            done: row.get::<i64, _>("done") != 0,
            outcome: row.get("outcome"),
            message_id: row.get("message_id"),
        })
    }

    /// Up to `limit` messages of `mailbox` not reported sent or failed
    /// yet, oldest first.
    pub async fn pending_emails(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<QueuedEmail>> {
        let rows = sqlx::query(
            "SELECT * FROM outbox WHERE mailbox_id = ? AND done = 0
             ORDER BY queued_at, id LIMIT ?",
        )
        .bind(mailbox.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(Self::queued).collect()
    }

    /// Records what the engine reported for a message: its outcome and
    /// Message-ID; `done` (no longer pending) when it was sent or failed.
    pub async fn email_outcome(
        &self,
        mailbox: &MailboxId,
        id: &str,
        outcome: &str,
        done: bool,
        message_id: &str,
    ) -> mailsync::Result<()> {
        sqlx::query(
            "UPDATE outbox SET outcome = ?, done = ?, message_id = ? WHERE mailbox_id = ? AND id = ?",
        )
        .bind(outcome)
        .bind(done)
        .bind(message_id)
        .bind(mailbox.as_str())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// A mailbox's queued mail, newest first (at most `limit`).
    pub async fn outbox(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<QueuedEmail>> {
        let rows = sqlx::query(
            "SELECT * FROM outbox WHERE mailbox_id = ? ORDER BY queued_at DESC, id DESC LIMIT ?",
        )
        .bind(mailbox.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(Self::queued).collect()
    }
}
