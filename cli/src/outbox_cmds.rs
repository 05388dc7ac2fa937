//! `mailsync send` and `mailsync outbox list`: the CLI's own outbox.
//!
//! `send` queues one message in the table `cli_outbox` of the CLI's SQLite
//! database (the host's side of outgoing sync); `sync once|run` hands the
//! queue to the engine ([`CliOutbox`] is its [`Outbox`]), which records
//! each message's state in its own store (the `OutboxStore`) and reports
//! the outcome back here. `outbox list` shows the engine's state of each
//! queued message and its last error.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, Subcommand};
use mailsync::model::MailboxId;
use mailsync::sync::{
    ComposedMessage, MailAddress, Outbox, OutgoingContent, OutgoingMessage, OutgoingRecord,
    RawMessage, SendOutcome, SendReport,
};
use mailsync::{Error, ErrorCode, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::{Ctx, output};

/// `mailsync send`: queues one message.
#[derive(Args)]
pub struct SendArgs {
    /// The mailbox that sends it (address or id); it is the sender.
    mailbox: String,
    /// A recipient (repeat for several). With --raw: the envelope
    /// recipients (default: the message's To, Cc and Bcc).
    #[arg(long, value_name = "ADDRESS")]
    to: Vec<String>,
    /// A copy recipient (repeat for several).
    #[arg(long, value_name = "ADDRESS")]
    cc: Vec<String>,
    /// The subject.
    #[arg(long, required_unless_present = "raw", conflicts_with = "raw")]
    subject: Option<String>,
    /// The plain-text body.
    #[arg(long, required_unless_present = "raw", conflicts_with = "raw")]
    body: Option<String>,
    /// A complete RFC 5322 message to send as it is (its From must be the mailbox).
    #[arg(long, value_name = "FILE")]
    raw: Option<PathBuf>,
    /// The Message-ID this message replies to (In-Reply-To and References).
    #[arg(long, value_name = "MESSAGE-ID", conflicts_with = "raw")]
    in_reply_to: Option<String>,
}

/// `mailsync outbox …`.
#[derive(Subcommand)]
pub enum OutboxCmd {
    /// Each queued message: its state (queued, sending, sent, failed,
    /// deferred, unknown), Message-ID, attempts and last error.
    List {
        /// Only this mailbox's messages (address or id).
        mailbox: Option<String>,
    },
}

/// What `send` stores, as JSON in `cli_outbox.data`.
#[derive(Serialize, Deserialize)]
struct Queued {
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
    in_reply_to: Option<String>,
    /// With `--raw`: the file's bytes.
    raw: Option<Vec<u8>>,
}

impl Queued {
    fn message(&self, id: String) -> OutgoingMessage {
        let content = match &self.raw {
            Some(raw) => OutgoingContent::Raw {
                raw: RawMessage::from(raw.clone()),
                recipients: self.to.clone(),
            },
            None => OutgoingContent::Composed {
                message: ComposedMessage {
                    to: self.to.iter().map(|a| address(a)).collect(),
                    cc: self.cc.iter().map(|a| address(a)).collect(),
                    subject: self.subject.clone().unwrap_or_default(),
                    text: self.body.clone(),
                    in_reply_to: self.in_reply_to.clone(),
                    references: self.in_reply_to.iter().cloned().collect(),
                    ..ComposedMessage::default()
                },
            },
        };
        OutgoingMessage { id, content }
    }
}

fn address(text: &str) -> MailAddress {
    MailAddress {
        name: None,
        address: text.to_owned(),
    }
}

fn store_error(e: sqlx::Error) -> Error {
    Error::new(ErrorCode::Store, format!("the CLI's outbox table: {e}"))
}

/// The CLI's outbox: a table in its SQLite database.
#[derive(Debug, Clone)]
pub struct CliOutbox {
    pool: SqlitePool,
}

impl CliOutbox {
    /// Opens the table in `db` (the store the library already opened),
    /// creating it if needed.
    pub async fn open(db: &Path) -> Result<CliOutbox, Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .map_err(store_error)?
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS cli_outbox (
                 mailbox_id TEXT NOT NULL,
                 id         TEXT NOT NULL,
                 queued_at  INTEGER NOT NULL,
                 data       TEXT NOT NULL,
                 done       INTEGER NOT NULL DEFAULT 0,
                 outcome    TEXT,
                 PRIMARY KEY (mailbox_id, id)
             )",
        )
        .execute(&pool)
        .await
        .map_err(store_error)?;
        Ok(CliOutbox { pool })
    }

    async fn queue(&self, mailbox: &MailboxId, id: &str, queued: &Queued) -> Result<(), Error> {
        let data = serde_json::to_string(queued)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
        sqlx::query("INSERT INTO cli_outbox (mailbox_id, id, queued_at, data) VALUES (?, ?, ?, ?)")
            .bind(mailbox.as_str())
            .bind(id)
            .bind(Timestamp::now_utc().unix_millis())
            .bind(data)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Every queued message (of one mailbox): mailbox, id, queued at,
    /// oldest first.
    async fn list(&self, mailbox: Option<&MailboxId>) -> Result<Vec<(String, String, i64)>, Error> {
        let rows = sqlx::query(
            "SELECT mailbox_id, id, queued_at FROM cli_outbox \
             WHERE ?1 IS NULL OR mailbox_id = ?1 ORDER BY queued_at, id",
        )
        .bind(mailbox.map(|m| m.as_str().to_owned()))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get("mailbox_id"), r.get("id"), r.get("queued_at")))
            .collect())
    }
}

#[async_trait::async_trait]
impl Outbox for CliOutbox {
    async fn pending(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        let rows = sqlx::query(
            "SELECT id, data FROM cli_outbox WHERE mailbox_id = ? AND done = 0 \
             ORDER BY queued_at, id LIMIT ?",
        )
        .bind(mailbox.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                let queued: Queued = serde_json::from_str(r.get("data"))
                    .map_err(|e| Error::new(ErrorCode::Store, e.to_string()))?;
                Ok(queued.message(r.get("id")))
            })
            .collect()
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        // Sent and failed are final: no longer pending. Deferred stays;
        // unknown stays pending too (the engine reports it again, sends
        // nothing, until `Engine::resend`).
        let done = matches!(
            report.outcome,
            SendOutcome::Sent { .. } | SendOutcome::Failed { .. }
        );
        let outcome = match &report.outcome {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Failed { .. } => "failed",
            SendOutcome::Deferred { .. } => "deferred",
            SendOutcome::Unknown { .. } => "unknown",
        };
        sqlx::query("UPDATE cli_outbox SET done = ?, outcome = ? WHERE mailbox_id = ? AND id = ?")
            .bind(i64::from(done))
            .bind(outcome)
            .bind(report.mailbox_id.as_str())
            .bind(&report.id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// `mailsync send`.
pub async fn send(ctx: &Ctx, args: SendArgs) -> Result<(), Error> {
    let mailbox = ctx.sync.directory().find_mailbox(&args.mailbox).await?;
    let raw = match &args.raw {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            Error::validation("raw", format!("cannot read {}: {e}", path.display()))
        })?),
        None => None,
    };
    if raw.is_none() && args.to.is_empty() && args.cc.is_empty() {
        return Err(Error::validation(
            "to",
            "give at least one recipient (--to)",
        ));
    }
    let queued = Queued {
        to: args.to,
        cc: args.cc,
        subject: args.subject,
        body: args.body,
        in_reply_to: args.in_reply_to.map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        }),
        raw,
    };
    // Checked now rather than when the engine sends it.
    for a in queued.to.iter().chain(&queued.cc) {
        if !a.contains('@') {
            return Err(Error::validation("to", format!("not an address: {a}")));
        }
    }
    let id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    CliOutbox::open(&ctx.db)
        .await?
        .queue(&mailbox.id, &id, &queued)
        .await?;
    if ctx.json {
        output::json_value(
            &json!({ "id": id, "mailbox_id": mailbox.id, "email": mailbox.email, "state": "queued" }),
        );
    } else {
        outln!(
            "Queued {id} from {}; `mailsync sync once` sends it.",
            mailbox.email
        );
    }
    Ok(())
}

/// The last error of a record, as one line.
fn last_error(r: &OutgoingRecord) -> Option<String> {
    let code = r.code?;
    let mut text = code.as_str().to_owned();
    if let Some(smtp) = r.smtp_code {
        text.push_str(&format!(" {smtp}"));
    }
    if let Some(reply) = &r.reply {
        text.push_str(&format!(": {}", reply.replace(['\r', '\n'], " ")));
    }
    for refusal in &r.refused {
        text.push_str(&format!(
            "; {} refused: {} {}",
            refusal.address,
            refusal.smtp_code,
            refusal.reply.replace(['\r', '\n'], " ")
        ));
    }
    Some(text)
}

pub async fn run(ctx: &Ctx, cmd: OutboxCmd) -> Result<(), Error> {
    let OutboxCmd::List { mailbox } = cmd;
    let only = match &mailbox {
        Some(m) => Some(ctx.sync.directory().find_mailbox(m).await?),
        None => None,
    };
    let outbox = CliOutbox::open(&ctx.db).await?;
    let queued = outbox.list(only.as_ref().map(|m| &m.id)).await?;
    let mut records: std::collections::HashMap<(String, String), OutgoingRecord> =
        std::collections::HashMap::new();
    let mut emails: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for mailbox in ctx.sync.directory().list_mailboxes(None).await? {
        if only.as_ref().is_some_and(|o| o.id != mailbox.id) {
            continue;
        }
        for r in ctx.sync.store().list_outgoing(&mailbox.id).await? {
            records.insert((mailbox.id.as_str().to_owned(), r.id.clone()), r);
        }
        emails.insert(mailbox.id.as_str().to_owned(), mailbox.email.clone());
    }
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for (mailbox_id, id, queued_at) in queued {
        // A deleted mailbox's messages are not shown.
        let Some(email) = emails.get(&mailbox_id) else {
            continue;
        };
        let record = records.get(&(mailbox_id.clone(), id.clone()));
        let state = record.map_or("queued", |r| r.state.as_str());
        let error = record.and_then(last_error);
        let queued_at = Timestamp::from_unix_millis(queued_at);
        values.push(json!({
            "id": id,
            "mailbox_id": mailbox_id,
            "email": email,
            "state": state,
            "message_id": record.map(|r| &r.message_id),
            "attempts": record.map_or(0, |r| r.attempts),
            "next_attempt": record.and_then(|r| r.next_attempt),
            "last_error": error,
            "queued_at": queued_at,
            "updated_at": record.map(|r| r.updated_at),
        }));
        rows.push(vec![
            id,
            email.clone(),
            state.to_owned(),
            record.map_or("-".into(), |r| format!("<{}>", r.message_id)),
            record.map_or(0, |r| r.attempts).to_string(),
            output::timestamp(queued_at),
            error.unwrap_or_else(|| "-".into()),
        ]);
    }
    if ctx.json {
        output::json_value(&serde_json::Value::Array(values));
        return Ok(());
    }
    if rows.is_empty() {
        outln!("The outbox is empty (queue mail with `mailsync send`).");
        return Ok(());
    }
    output::table(
        &[
            "ID",
            "FROM",
            "STATE",
            "MESSAGE-ID",
            "ATTEMPTS",
            "QUEUED",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}
