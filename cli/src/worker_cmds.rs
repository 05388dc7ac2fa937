//! `mailsync worker` and `mailsync workers`: many sync workers — processes
//! on one or many hosts — sharing one PostgreSQL store (`--db
//! postgres://…`).
//!
//! A worker runs the engine ([`Engine::start`]): it claims due mailboxes
//! from the store into sync leases (`FOR UPDATE SKIP LOCKED`), renews them
//! while it works and releases them when a cycle ends or the worker stops
//! (SIGINT, SIGTERM). Mail goes to a table of the same database (`--sink
//! table`, one row per message, unique by mailbox and message key, so a
//! repeated batch adds nothing) or onto stdout (`--sink print`).
//!
//! With `--metrics ADDR` the worker serves the library's metrics (see
//! `mailsync::metrics`) in the Prometheus text format at
//! `http://ADDR/metrics`; without it nothing is recorded or served.
//!
//! `mailsync workers` lists every lease: who holds which mailbox, for what,
//! until when, with which fencing token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::{Args, Subcommand, ValueEnum};
use mailsync::model::{MailboxId, Timestamp};
use mailsync::store::{PostgresConfig, SealKey};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, Error, ErrorCode, MailSync, Options, StoreConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use tokio::sync::broadcast;

use crate::output;

#[derive(Subcommand)]
pub enum WorkerCmd {
    /// Runs the sync engine as one worker among many sharing a PostgreSQL
    /// store (`--db postgres://…`) until SIGINT or SIGTERM, then gives its
    /// leases back. Start as many as needed, on any hosts.
    Worker(Box<WorkerArgs>),
    /// Lists the leases of a PostgreSQL store: owner, kind, mailbox,
    /// expiry and fencing token (`--db postgres://…`).
    Workers(StoreArgs),
}

#[derive(Args)]
pub struct StoreArgs {
    /// The seal key: a file of 32 raw bytes, the same for every worker
    /// (e.g. `head -c 32 /dev/urandom > mailsync.key`).
    #[arg(long, env = "MAILSYNC_KEY_FILE", value_name = "PATH")]
    key_file: PathBuf,
    /// Connections this process keeps to PostgreSQL for the store
    /// (default 10).
    #[arg(long, value_name = "N")]
    pool_size: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerSink {
    /// Each message as a row of `--table` in the same database.
    Table,
    /// One JSON line per message on stdout; nothing is stored.
    Print,
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Mailboxes this worker syncs at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: u32,
    /// Serve metrics in the Prometheus text format at http://ADDR/metrics
    /// (e.g. 127.0.0.1:9187). Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// This worker's name in the leases (default: host:pid:random).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Where messages go.
    #[arg(long, value_enum, default_value = "table")]
    sink: WorkerSink,
    /// The table of `--sink table` (created if missing).
    #[arg(long, value_name = "NAME", default_value = "mailsync_inbox")]
    table: String,
    /// How long a sync lease lasts without renewal: a worker that died
    /// loses its mailboxes this much later (default 300).
    #[arg(long, value_name = "SECONDS")]
    lease_secs: Option<u32>,
    /// After a cycle, a mailbox is due again this much later (default 300).
    #[arg(long, value_name = "SECONDS")]
    postpone_secs: Option<u32>,
    /// Most messages per fetch batch (default 200).
    #[arg(long, value_name = "N")]
    batch_messages: Option<u32>,
    /// Most messages one cycle takes in (default 5000).
    #[arg(long, value_name = "N")]
    messages_per_cycle: Option<u32>,
    /// Connections one account may hold at once in this worker (default 2).
    #[arg(long, value_name = "N")]
    connections_per_account: Option<u32>,
    /// Look for newly due mailboxes at least this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    max_idle_secs: u32,
    /// With `--metrics`: how often the mailboxes-by-state gauge is counted.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    gauge_secs: u32,
}

impl WorkerArgs {
    fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::default();
        o.workers = self.concurrency;
        if let Some(v) = self.lease_secs {
            o.lease_secs = v;
        }
        if let Some(v) = self.postpone_secs {
            o.postpone_secs = v;
        }
        if let Some(v) = self.batch_messages {
            o.batch_messages = v;
        }
        if let Some(v) = self.messages_per_cycle {
            o.messages_per_cycle = v;
        }
        if let Some(v) = self.connections_per_account {
            o.connections_per_account = v;
        }
        o
    }
}

/// Whether `--db` names a PostgreSQL database.
fn postgres_url(db: &std::path::Path) -> Result<String, Error> {
    let url = db.to_string_lossy();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.into_owned())
    } else {
        Err(Error::validation(
            "db",
            "workers share a PostgreSQL store: pass --db postgres://user:password@host/database",
        ))
    }
}

async fn open(
    db: &std::path::Path,
    store: &StoreArgs,
    options: Options,
) -> Result<(MailSync, String), Error> {
    let url = postgres_url(db)?;
    let key = SealKey::from_file(&store.key_file)?;
    let mut config = PostgresConfig::new(url.clone(), key);
    if let Some(n) = store.pool_size {
        if n == 0 {
            return Err(Error::validation("pool_size", "must be at least 1"));
        }
        config = config.pool_size(n);
    }
    let sync = MailSync::open(StoreConfig::Postgres(config), options).await?;
    Ok((sync, url))
}

pub async fn run(
    db: &std::path::Path,
    json: bool,
    options: Options,
    cmd: WorkerCmd,
) -> Result<(), Error> {
    match cmd {
        WorkerCmd::Worker(args) => {
            let (sync, url) = open(db, &args.store, options).await?;
            let result = worker(&sync, &url, json, &args).await;
            sync.close().await;
            result
        }
        WorkerCmd::Workers(store) => {
            let (sync, _) = open(db, &store, options).await?;
            let result = leases(&sync, json).await;
            sync.close().await;
            result
        }
    }
}

/// `host:pid:random`: unique per process, and says where it runs.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let random: u32 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    };
    format!("{host}:{}:{random:08x}", std::process::id())
}

fn now_ms() -> i64 {
    Timestamp::now_utc().unix_millis()
}

/// A line about the worker: JSON with `--json` (or when stdout is not a
/// terminal), else text.
struct Lines {
    json: bool,
}

impl Lines {
    fn emit(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        if self.json {
            output::json_line(&value);
        } else {
            outln!("{}", text());
        }
    }
}

async fn worker(sync: &MailSync, url: &str, json: bool, args: &WorkerArgs) -> Result<(), Error> {
    use std::io::IsTerminal;
    let lines = Arc::new(Lines {
        json: json || !std::io::stdout().is_terminal(),
    });
    let options = args.engine_options();
    options.validate()?;
    let name = match &args.name {
        Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
        Some(_) => return Err(Error::validation("name", "must not be empty")),
        None => default_name(),
    };
    // Handlers first, so an early signal is not lost.
    let mut stop = crate::sync_progress::on_shutdown();
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| {
                Error::validation("metrics", format!("cannot serve metrics on {addr}: {e}"))
            })?;
        describe_metrics();
    }
    let sink: Arc<dyn MessageSink> = match args.sink {
        WorkerSink::Table => Arc::new(
            TableSink::open(
                url,
                &args.table,
                &name,
                args.concurrency,
                Duration::from_secs(u64::from(options.lease_secs)),
            )
            .await?,
        ),
        WorkerSink::Print => Arc::new(PrintLines {
            lines: lines.clone(),
        }),
    };
    let engine = Engine::with_owner(sync.clone(), sink, options, name.clone())?;
    let printer = spawn_printer(lines.clone(), engine.progress(), engine.reports());
    let gauges = args.metrics.map(|_| {
        let engine = engine.clone();
        let every = Duration::from_secs(u64::from(args.gauge_secs.max(1)));
        tokio::spawn(async move {
            loop {
                if let Err(e) = engine.record_mailbox_gauges().await {
                    tracing::warn!("could not count the mailboxes by state: {e}");
                }
                tokio::time::sleep(every).await;
            }
        })
    });
    let max_idle = Duration::from_secs(u64::from(args.max_idle_secs.max(1)));
    let handle = engine.start(max_idle);
    lines.emit(
        json!({
            "type": "started",
            "owner": name,
            "pid": std::process::id(),
            "concurrency": args.concurrency,
            "metrics": args.metrics.map(|a| format!("http://{a}/metrics")),
            "at": now_ms(),
        }),
        || {
            let metrics = args
                .metrics
                .map(|a| format!("; metrics at http://{a}/metrics"))
                .unwrap_or_default();
            format!(
                "Worker {name} syncing up to {} mailboxes at once{metrics}; Ctrl-C or SIGTERM stops.",
                args.concurrency
            )
        },
    );
    let _ = (&mut stop).await;
    // Cut the running cycles short and give their leases back, so other
    // workers take the mailboxes at once.
    handle.stop().await;
    if let Some(g) = gauges {
        g.abort();
    }
    printer.abort();
    lines.emit(
        json!({"type": "stopped", "owner": name, "at": now_ms()}),
        || format!("Worker {name} stopped; its leases are released."),
    );
    Ok(())
}

fn describe_metrics() {
    use mailsync::metrics as m;
    metrics::describe_counter!(m::SYNC_CYCLES, "Incoming sync cycles ended, by outcome");
    metrics::describe_counter!(
        m::SYNC_FAILURES,
        "Failed incoming sync cycles, by error code"
    );
    metrics::describe_counter!(m::MESSAGES_IN, "Messages taken in, by outcome");
    metrics::describe_counter!(m::MESSAGE_BYTES_IN, "Message bytes downloaded");
    metrics::describe_gauge!(m::CYCLES_RUNNING, "Sync cycles running in this worker");
    metrics::describe_counter!(
        m::LEASE_TAKEOVERS,
        "Expired leases of another holder taken over, by kind"
    );
    metrics::describe_counter!(m::LEASE_CLAIMS, "Sync leases claimed by this worker");
    metrics::describe_gauge!(m::MAILBOXES, "Mailboxes by state (the whole store)");
}

/// Prints progress events and cycle reports as they happen.
fn spawn_printer(
    lines: Arc<Lines>,
    mut progress: broadcast::Receiver<mailsync::sync::SyncProgress>,
    mut reports: broadcast::Receiver<mailsync::sync::CycleReport>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                p = progress.recv() => match p {
                    Ok(p) if lines.json => output::json_line(&json!({
                        "type": "progress",
                        "mailbox_id": p.mailbox_id,
                        "email": p.email,
                        "messages_done": p.messages_done,
                        "messages_total": p.messages_total,
                        "finished": p.finished,
                        "at": now_ms(),
                    })),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                r = reports.recv() => match r {
                    Ok(r) => lines.emit(
                        json!({
                            "type": "cycle",
                            "mailbox_id": r.mailbox_id,
                            "email": r.email,
                            "delivered": r.delivered,
                            "skipped": r.skipped,
                            "filtered": r.filtered,
                            "already_had": r.already_had,
                            "more": r.more,
                            "duration_ms": r.duration_ms,
                            "error_code": r.error_code,
                            "error_message": r.error_message,
                            "at": now_ms(),
                        }),
                        || match r.error_code {
                            None => format!(
                                "{}: {} new, {} skipped, {} filtered ({} ms)",
                                r.email, r.delivered, r.skipped, r.filtered, r.duration_ms
                            ),
                            Some(code) => format!(
                                "{}: failed: {} [{code}]",
                                r.email,
                                r.error_message.as_deref().unwrap_or("")
                            ),
                        },
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    })
}

/// `--sink print` of a worker: one JSON line per message.
struct PrintLines {
    lines: Arc<Lines>,
}

#[async_trait]
impl MessageSink for PrintLines {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        for m in &messages {
            self.lines.emit(
                json!({
                    "type": "message",
                    "mailbox_id": m.mailbox_id,
                    "key": m.key,
                    "message_id": m.message_id,
                    "subject": m.subject,
                    "size": m.size,
                }),
                || {
                    format!(
                        "{}  {}",
                        m.message_id.as_deref().unwrap_or("-"),
                        m.subject.as_deref().unwrap_or("")
                    )
                },
            );
        }
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }
}

/// A table name the sink may put into SQL: a plain lower-case identifier.
fn table_name(name: &str) -> Result<&str, Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(Error::validation(
            "table",
            "must be a lower-case identifier (a-z, 0-9, _; at most 63 characters)",
        ))
    }
}

fn sink_error(e: sqlx::Error) -> Error {
    Error::new(ErrorCode::SinkFailed, format!("table sink: {e}"))
}

/// `--sink table`: each message as a row, unique by `(mailbox_id,
/// message_key)`. A message delivered again (a batch repeated after a
/// worker died between delivering and recording it) adds no row; its
/// `deliveries` count goes up instead. The incoming filter's "tracked
/// email" are the Message-IDs already in the table for the mailbox.
pub struct TableSink {
    pool: PgPool,
    table: String,
    worker: String,
}

impl TableSink {
    async fn open(
        url: &str,
        table: &str,
        worker: &str,
        concurrency: u32,
        lease: Duration,
    ) -> Result<TableSink, Error> {
        let table = table_name(table)?.to_owned();
        // A worker paused inside a batch's transaction would keep the rows
        // it inserted locked, and so block the worker that takes its
        // mailbox over: the server ends such a session once the lease ran out.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::validation("db", format!("not a PostgreSQL URL: {e}")))?
            .options([(
                "idle_in_transaction_session_timeout",
                format!("{}ms", lease.as_millis()),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(concurrency.clamp(1, 10))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(sink_error)?;
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                mailbox_id   TEXT NOT NULL,
                message_key  TEXT NOT NULL,
                message_id   TEXT,
                subject      TEXT,
                from_address TEXT,
                received_at  BIGINT,
                size         BIGINT NOT NULL,
                raw          BYTEA NOT NULL,
                worker       TEXT NOT NULL,
                delivered_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                deliveries   INTEGER NOT NULL DEFAULT 1,
                PRIMARY KEY (mailbox_id, message_key)
            )"
        );
        // Workers starting together take turns creating it.
        let mut tx = pool.begin().await.map_err(sink_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("mailsync sink {table}"))
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await
            .map_err(sink_error)?;
        tx.commit().await.map_err(sink_error)?;
        Ok(TableSink {
            pool,
            table,
            worker: worker.to_owned(),
        })
    }
}

#[async_trait]
impl MessageSink for TableSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let sql = format!(
            "INSERT INTO {t} (mailbox_id, message_key, message_id, subject, from_address,
                              received_at, size, raw, worker)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (mailbox_id, message_key)
             DO UPDATE SET deliveries = {t}.deliveries + 1",
            t = self.table
        );
        let mut tx = self.pool.begin().await.map_err(sink_error)?;
        for m in &messages {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(m.mailbox_id.as_str())
                .bind(&m.key)
                .bind(&m.message_id)
                .bind(&m.subject)
                .bind(m.from.first().map(|a| a.address.clone()))
                .bind(m.received_at.map(Timestamp::unix_millis))
                .bind(i64::from(m.size))
                .bind(&m.raw.0)
                .bind(&self.worker)
                .execute(&mut *tx)
                .await
                .map_err(sink_error)?;
        }
        tx.commit().await.map_err(sink_error)?;
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }

    async fn tracked(
        &self,
        mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let sql = format!(
            "SELECT message_id FROM {} WHERE mailbox_id = $1 AND message_id = ANY($2)",
            self.table
        );
        let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(mailbox.as_str())
            .bind(&message_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(sink_error)?;
        Ok(message_ids.iter().map(|id| found.contains(id)).collect())
    }
}

/// `mailsync workers`: every lease of the store.
async fn leases(sync: &MailSync, json: bool) -> Result<(), Error> {
    let mut leases = sync.store().list_leases().await?;
    leases
        .sort_by(|a, b| (&a.owner, a.kind, &a.mailbox_id).cmp(&(&b.owner, b.kind, &b.mailbox_id)));
    let emails: std::collections::HashMap<MailboxId, String> = sync
        .directory()
        .list_mailboxes(None)
        .await?
        .into_iter()
        .map(|m| (m.id, m.email))
        .collect();
    let now = Timestamp::now_utc();
    let email = |id: &MailboxId| emails.get(id).cloned().unwrap_or_else(|| id.to_string());
    if json {
        let values: Vec<serde_json::Value> = leases
            .iter()
            .map(|l| {
                json!({
                    "owner": l.owner,
                    "kind": l.kind,
                    "mailbox_id": l.mailbox_id,
                    "email": email(&l.mailbox_id),
                    "expires_at": l.expires_at,
                    "expired": l.expires_at <= now,
                    "fence": l.fence,
                })
            })
            .collect();
        output::json_value(&serde_json::Value::Array(values));
        return Ok(());
    }
    if leases.is_empty() {
        outln!("No leases are held.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            let expiry = if l.expires_at <= now {
                format!("{} (expired)", output::timestamp(l.expires_at))
            } else {
                format!(
                    "{} (in {} s)",
                    output::timestamp(l.expires_at),
                    l.expires_at.since(now).as_secs()
                )
            };
            vec![
                l.owner.clone(),
                l.kind.as_str().to_owned(),
                email(&l.mailbox_id),
                expiry,
                l.fence.to_string(),
            ]
        })
        .collect();
    output::table(&["OWNER", "KIND", "MAILBOX", "EXPIRES", "FENCE"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_table_names() {
        assert!(table_name("mailsync_inbox").is_ok());
        assert!(table_name("_t9").is_ok());
        for bad in ["", "9t", "Inbox", "a-b", "a;drop table x", &"x".repeat(64)] {
            assert_eq!(
                table_name(bad).unwrap_err().code(),
                ErrorCode::Validation,
                "{bad}"
            );
        }
    }

    #[test]
    fn only_postgres_urls_are_worker_stores() {
        assert!(postgres_url(std::path::Path::new("postgres://u:p@h/db")).is_ok());
        assert!(postgres_url(std::path::Path::new("postgresql://h/db")).is_ok());
        assert_eq!(
            postgres_url(std::path::Path::new("mailsync.db"))
                .unwrap_err()
                .code(),
            ErrorCode::Validation
        );
    }
}
