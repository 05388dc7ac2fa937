//! `mailsync sync once|run|status`: incoming mail from enabled mailboxes
//! into a directory of `.eml` files (or onto the terminal), and the CLI's
//! outbox (`mailsync send`) out over SMTP, with the engine's progress as it
//! happens. See `sync_sink` for the sinks and
//! `sync_progress` for the output.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use mailsync::model::{IncomingProtocol, MailboxId};
use mailsync::sync::{CycleReport, MessageSink, SyncStatus};
use mailsync::{Engine, EngineOptions, Error, Timestamp};
use serde_json::json;

use crate::sync_progress::{Derived, Renderer, Reporter, on_shutdown};
use crate::sync_sink::{FileSink, MailboxNames, NoSink, PrintSink};
use crate::{Ctx, output};

#[derive(Subcommand)]
pub enum SyncCmd {
    /// Runs one cycle for one mailbox (whatever its schedule: incoming
    /// mail, then the outbox's pending mail), or for every mailbox that is
    /// due when no address is given.
    Once {
        /// Mailbox address or id (default: every mailbox that is due).
        mailbox: Option<String>,
        #[command(flatten)]
        args: SyncArgs,
    },
    /// Keeps syncing until Ctrl-C or SIGTERM: every mailbox as it falls
    /// due, or only the one given. Stopping cuts a running cycle short; its
    /// last batch comes again next time (the files sink keeps one copy).
    Run {
        /// Mailbox address or id (default: every mailbox, as each falls due).
        mailbox: Option<String>,
        #[command(flatten)]
        args: SyncArgs,
        /// Look for newly enabled or due mailboxes at least this often.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        max_idle_secs: u32,
    },
    /// Each mailbox's sync: incoming status (with backoff), cursor,
    /// counters, last cycle, next due; outgoing status and messages sent;
    /// latest alerts.
    Status,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkArg {
    /// Each message as DIR/<key>.eml, plus DIR/index.jsonl (one JSON object per message).
    Files,
    /// One line per message on stdout; nothing is stored or tracked (the cursor still moves on).
    Print,
}

#[derive(Args)]
pub struct SyncArgs {
    /// Where messages go.
    #[arg(long, value_enum, default_value = "files")]
    sink: SinkArg,
    /// The files sink's directory (default: `<database name>-mail` next to the database).
    #[arg(long, value_name = "DIR", env = "MAILSYNC_OUT")]
    out: Option<PathBuf>,
    /// After a cycle, a mailbox is due again this much later (default 300;
    /// the profile's minimum polling interval applies if it is longer).
    #[arg(long, value_name = "SECONDS")]
    postpone_secs: Option<u32>,
    /// Most messages per fetch batch (default 200).
    #[arg(long, value_name = "N")]
    batch_messages: Option<u32>,
    /// Larger messages are not downloaded; they are counted as oversized
    /// and raise an alert (default 52428800, 50 MiB).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<u32>,
    /// Connections one account may hold at once (default 2).
    #[arg(long, value_name = "N")]
    connections_per_account: Option<u32>,
}

impl SyncArgs {
    fn engine_options(&self) -> EngineOptions {
        let mut o = EngineOptions::default();
        if let Some(v) = self.postpone_secs {
            o.postpone_secs = v;
        }
        if let Some(v) = self.batch_messages {
            o.batch_messages = v;
        }
        if let Some(v) = self.max_message_bytes {
            o.max_message_bytes = v;
        }
        if let Some(v) = self.connections_per_account {
            o.connections_per_account = v;
        }
        o
    }
}

/// `crm.db` → `crm-mail` in the same directory.
pub fn default_out(db: &Path) -> PathBuf {
    let stem = db
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mailsync".into());
    db.with_file_name(format!("{stem}-mail"))
}

/// The engine with the chosen sink, and where its progress goes.
async fn engine(ctx: &Ctx, args: &SyncArgs) -> Result<(Engine, Arc<Reporter>), Error> {
    let options = args.engine_options();
    options.validate()?;
    let reporter = Reporter::new(ctx.json);
    let names = MailboxNames::new(&ctx.sync.directory().list_mailboxes(None).await?);
    let sink: Arc<dyn MessageSink> = match args.sink {
        SinkArg::Files => {
            let dir = args.out.clone().unwrap_or_else(|| default_out(&ctx.db));
            Arc::new(FileSink::open(&dir, names)?)
        }
        SinkArg::Print => Arc::new(PrintSink {
            reporter: reporter.clone(),
            names,
        }),
    };
    let outbox = Arc::new(crate::outbox_cmds::CliOutbox::open(&ctx.db).await?);
    Ok((
        Engine::with_outbox(ctx.sync.clone(), sink, outbox, options)?,
        reporter,
    ))
}

/// An engine that only answers status questions (with the CLI's outbox,
/// so it knows when outgoing mail is due).
async fn status_engine(ctx: &Ctx) -> Result<Engine, Error> {
    let outbox = Arc::new(crate::outbox_cmds::CliOutbox::open(&ctx.db).await?);
    Engine::with_outbox(
        ctx.sync.clone(),
        Arc::new(NoSink),
        outbox,
        EngineOptions::default(),
    )
}

/// The command fails (exit 1) when a cycle failed, naming the first failure.
fn verdict(reports: &[CycleReport]) -> Result<(), Error> {
    let failed: Vec<&CycleReport> = reports.iter().filter(|r| !r.is_success()).collect();
    match failed.first() {
        None => Ok(()),
        Some(r) if r.error_code.is_none() => {
            let code = r
                .outgoing_error_code
                .unwrap_or(mailsync::ErrorCode::Internal);
            Err(Error::new(
                code,
                format!(
                    "{}: sending failed: {}",
                    r.email,
                    r.outgoing_error_message.as_deref().unwrap_or("")
                ),
            ))
        }
        Some(r) => {
            let code = r.error_code.unwrap_or(mailsync::ErrorCode::Internal);
            let more = match failed.len() {
                1 => String::new(),
                n => format!(" (and {} more mailbox(es) failed)", n - 1),
            };
            Err(Error::new(
                code,
                format!(
                    "{}: sync failed: {}{more}",
                    r.email,
                    r.error_message.as_deref().unwrap_or("")
                ),
            ))
        }
    }
}

pub async fn run(ctx: &Ctx, cmd: SyncCmd) -> Result<(), Error> {
    match cmd {
        SyncCmd::Once { mailbox, args } => once(ctx, mailbox, &args).await,
        SyncCmd::Run {
            mailbox,
            args,
            max_idle_secs,
        } => keep_running(ctx, mailbox, &args, max_idle_secs).await,
        SyncCmd::Status => status(ctx).await,
    }
}

async fn once(ctx: &Ctx, mailbox: Option<String>, args: &SyncArgs) -> Result<(), Error> {
    let target = match &mailbox {
        Some(m) => Some(ctx.sync.directory().find_mailbox(m).await?),
        None => None,
    };
    let mut stop = on_shutdown();
    let (engine, reporter) = engine(ctx, args).await?;
    let renderer = Renderer::spawn(reporter.clone(), engine.progress(), None);
    let mut cycles = Box::pin(async {
        match &target {
            Some(m) => engine.run_once(&m.id).await.map(|r| vec![r]),
            None => engine.run_due().await,
        }
    });
    let outcome = tokio::select! {
        result = &mut cycles => Some(result),
        _ = &mut stop => None,
    };
    // Interrupted: the cycle stops where its last acknowledged batch left
    // the cursor, and gives its sync lease back.
    drop(cycles);
    let Some(result) = outcome else {
        engine.release_leases().await;
        renderer.finish().await;
        eprintln!("mailsync: interrupted; the next cycle resumes where this one stopped");
        crate::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    };
    let reports = match result {
        Ok(reports) => reports,
        Err(e) => {
            renderer.finish().await;
            return Err(e);
        }
    };
    for report in &reports {
        renderer.cycle(report.clone());
    }
    renderer.finish().await;
    if reports.is_empty() && !ctx.json {
        eprintln!("No mailbox is due now (see `mailsync sync status`).");
    }
    verdict(&reports)
}

/// How long until `mailbox` is due (zero: now), at most `max_idle`.
async fn until_due(engine: &Engine, mailbox: &MailboxId, max_idle: Duration) -> Duration {
    let due = engine
        .status()
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|s| &s.mailbox_id == mailbox))
        .and_then(|s| s.next_due);
    match due {
        Some(at) => at.since(Timestamp::now_utc()).min(max_idle),
        None => max_idle,
    }
}

/// A cycle that could not start (in `sync run`): shown, and the loop goes on.
fn not_started(reporter: &Reporter, email: &str, e: &Error) {
    if reporter.lines() {
        output::json_line(&json!({
            "type": "error",
            "email": email,
            "code": e.code(),
            "message": e.message(),
        }));
    } else {
        reporter.note(&format!(
            "{email}: not synced: {} [{}]",
            e.message(),
            e.code()
        ));
    }
}

async fn keep_running(
    ctx: &Ctx,
    mailbox: Option<String>,
    args: &SyncArgs,
    max_idle_secs: u32,
) -> Result<(), Error> {
    let mut stop = on_shutdown();
    let max_idle = Duration::from_secs(u64::from(max_idle_secs.max(1)));
    let target = match &mailbox {
        Some(m) => Some(ctx.sync.directory().find_mailbox(m).await?),
        None => None,
    };
    let (engine, reporter) = engine(ctx, args).await?;
    reporter.quiet_when_idle();
    match target {
        None => {
            let derived = Derived::new(status_engine(ctx).await?).await?;
            let renderer = Renderer::spawn(reporter.clone(), engine.progress(), Some(derived));
            let handle = engine.start(max_idle);
            reporter.note("Syncing every mailbox as it falls due; Ctrl-C stops.");
            let _ = (&mut stop).await;
            reporter.note("Stopping.");
            handle.stop().await;
            renderer.finish().await;
            Ok(())
        }
        Some(mailbox) => {
            let renderer = Renderer::spawn(reporter.clone(), engine.progress(), None);
            reporter.note(&format!("Syncing {}; Ctrl-C stops.", mailbox.email));
            let mut first = true;
            let outcome = loop {
                if !first {
                    let wait = until_due(&engine, &mailbox.id, max_idle).await;
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = &mut stop => break Ok(()),
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                }
                let cycle = tokio::select! {
                    _ = &mut stop => break Ok(()),
                    cycle = engine.run_once(&mailbox.id) => cycle,
                };
                match cycle {
                    Ok(report) => renderer.cycle(report),
                    // Not syncable at all (not enabled, not connected): say so now.
                    Err(e) if first => break Err(e),
                    Err(e) => not_started(&reporter, &mailbox.email, &e),
                }
                first = false;
            };
            reporter.note("Stopping.");
            engine.release_leases().await;
            renderer.finish().await;
            outcome
        }
    }
}

fn cursor_text(s: &SyncStatus, protocol: Option<IncomingProtocol>) -> String {
    match (&s.cursor, protocol) {
        (None, _) => "-".into(),
        (Some(c), _) if c.imap.is_some() => {
            let imap = c.imap.as_ref().map(|i| (i.uid_validity, i.last_uid));
            let (validity, uid) = imap.unwrap_or_default();
            format!("UIDVALIDITY {validity} UID {uid}")
        }
        (Some(_), Some(IncomingProtocol::Pop3)) => "POP3 (by UIDL)".into(),
        (Some(_), _) => "-".into(),
    }
}

/// The latest alerts shown per mailbox.
const ALERTS: usize = 3;

async fn status(ctx: &Ctx) -> Result<(), Error> {
    let statuses = status_engine(ctx).await?.status().await?;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    let mut alerts_text = Vec::new();
    for s in &statuses {
        let mailbox = ctx.sync.directory().status(&s.mailbox_id).await?;
        let protocol = match &mailbox.mailbox.profile_id {
            Some(id) => Some(
                ctx.sync
                    .directory()
                    .get_profile(id)
                    .await?
                    .incoming
                    .protocol,
            ),
            None => None,
        };
        let latest: Vec<_> = mailbox.alerts.iter().rev().take(ALERTS).rev().collect();
        let cursor = s.cursor.as_ref();
        values.push(json!({
            "mailbox_id": s.mailbox_id,
            "email": s.email,
            "incoming_delivery": mailbox.mailbox.incoming_delivery,
            "incoming_filter": mailbox.mailbox.incoming_filter,
            "protocol": protocol,
            "incoming": s.incoming,
            "cursor": s.cursor,
            "delivered": cursor.map_or(0, |c| c.delivered),
            "skipped": cursor.map_or(0, |c| c.skipped),
            "last_cycle_at": cursor.and_then(|c| c.last_cycle_at),
            "next_due": s.next_due,
            "outgoing": s.outgoing,
            "sent": s.outbox.as_ref().map_or(0, |o| o.sent),
            "send_failed": s.outbox.as_ref().map_or(0, |o| o.failed),
            "next_send_due": s.next_send_due,
            "alerts": latest,
        }));
        rows.push(vec![
            s.email.clone(),
            output::enum_text(&mailbox.mailbox.incoming_filter),
            output::direction_text(&s.incoming),
            cursor_text(s, protocol),
            cursor.map_or(0, |c| c.delivered).to_string(),
            cursor.map_or(0, |c| c.skipped).to_string(),
            cursor
                .and_then(|c| c.last_cycle_at)
                .map(output::timestamp)
                .unwrap_or_else(|| "-".into()),
            s.next_due
                .map(output::timestamp)
                .unwrap_or_else(|| "-".into()),
            output::direction_text(&s.outgoing),
            s.outbox.as_ref().map_or(0, |o| o.sent).to_string(),
        ]);
        for alert in latest {
            alerts_text.push(format!(
                "  {}  {} {} {}: {}",
                s.email,
                output::timestamp(alert.at),
                output::enum_text(&alert.level),
                alert.code,
                alert.message.replace('\n', " ")
            ));
        }
    }
    if ctx.json {
        output::json_value(&serde_json::Value::Array(values));
        return Ok(());
    }
    output::table(
        &[
            "EMAIL",
            "FILTER",
            "INCOMING",
            "CURSOR",
            "DELIVERED",
            "SKIPPED",
            "LAST CYCLE",
            "NEXT DUE",
            "OUTGOING",
            "SENT",
        ],
        &rows,
    );
    if !alerts_text.is_empty() {
        outln!();
        outln!("Latest alerts (oldest first):");
        for line in alerts_text {
            outln!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_is_named_after_the_database() {
        assert_eq!(
            default_out(Path::new("/var/lib/crm.db")),
            Path::new("/var/lib/crm-mail")
        );
        assert_eq!(
            default_out(Path::new("mailsync.db")),
            Path::new("mailsync-mail")
        );
    }
}
