//! What `mailsync sync once|run` shows while it works.
//!
//! On a terminal: an `indicatif` progress bar per running cycle (messages
//! and bytes done of the cycle's total, fed from `Engine::progress`) and
//! one line per finished cycle. With `--json`, or when stdout is not a
//! terminal: JSON lines on stdout, one object per progress event
//! (`"type": "progress"`), per finished cycle (`"type": "cycle"`) and, with
//! `--sink print`, per message (`"type": "message"`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use mailsync::Engine;
use mailsync::model::MailboxId;
use mailsync::sync::{CycleReport, IncomingMessage, SyncProgress, SyncStatus};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::output;
use crate::sync_sink::IndexEntry;

/// Where and how progress goes.
pub struct Reporter {
    /// `None`: JSON lines.
    bars: Option<MultiProgress>,
    running: Mutex<HashMap<MailboxId, ProgressBar>>,
    /// For people, leave out cycles that found nothing (`sync run`).
    quiet_idle: AtomicBool,
}

impl Reporter {
    /// Bars when stdout is a terminal and `--json` was not given, else JSON lines.
    pub fn new(json: bool) -> Arc<Reporter> {
        let bars = (!json && std::io::stdout().is_terminal()).then(MultiProgress::new);
        Arc::new(Reporter {
            bars,
            running: Mutex::new(HashMap::new()),
            quiet_idle: AtomicBool::new(false),
        })
    }

    /// From now on, people are not shown cycles that found nothing and
    /// left the mailbox as it was (JSON lines still show every cycle).
    pub fn quiet_when_idle(&self) {
        self.quiet_idle.store(true, Ordering::Relaxed);
    }

    fn quiet(&self) -> bool {
        self.quiet_idle.load(Ordering::Relaxed)
    }

    /// Whether output is JSON lines.
    pub fn lines(&self) -> bool {
        self.bars.is_none()
    }

    /// A line for people on stdout, printed above the bars.
    fn say(&self, text: &str) {
        match &self.bars {
            Some(multi) => multi.suspend(|| outln!("{text}")),
            None => outln!("{text}"),
        }
    }

    /// A JSON line on stdout.
    fn json_line(&self, value: serde_json::Value) {
        output::json_line(&value);
    }

    /// A remark for people (waiting, stopping) on stderr; none in JSON mode.
    pub fn note(&self, text: &str) {
        if let Some(multi) = &self.bars {
            multi.suspend(|| eprintln!("{text}"));
        }
    }

    /// One progress event.
    pub fn progress(&self, p: &SyncProgress) {
        let Some(multi) = &self.bars else {
            self.json_line(json!({
                "type": "progress",
                "mailbox_id": p.mailbox_id,
                "email": p.email,
                "messages_done": p.messages_done,
                "messages_total": p.messages_total,
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "finished": p.finished,
            }));
            return;
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if p.finished {
            if let Some(bar) = running.remove(&p.mailbox_id) {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
            return;
        }
        let bar = running.entry(p.mailbox_id.clone()).or_insert_with(|| {
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} messages, {msg} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = multi.add(ProgressBar::new(0).with_style(style));
            bar.set_prefix(p.email.clone());
            bar
        });
        bar.set_length(u64::from(p.messages_total));
        bar.set_position(u64::from(p.messages_done));
        bar.set_message(format!(
            "{} of {}",
            HumanBytes(p.bytes_done.max(0) as u64),
            HumanBytes(p.bytes_total.max(0) as u64)
        ));
    }

    /// A finished cycle.
    pub fn cycle(&self, r: &CycleReport) {
        if self.lines() {
            self.json_line(json!({
                "type": "cycle",
                "mailbox_id": r.mailbox_id,
                "email": r.email,
                "delivered": r.delivered,
                "skipped": r.skipped,
                "filtered": r.filtered,
                "oversized": r.oversized,
                "retry_later": r.retry_later,
                "already_had": r.already_had,
                "bytes": r.bytes,
                "more": r.more,
                "duration_ms": r.duration_ms,
                "error_code": r.error_code,
                "error_message": r.error_message,
                "sent": r.sent,
                "send_failed": r.send_failed,
                "send_deferred": r.send_deferred,
                "send_unknown": r.send_unknown,
                "outgoing_error_code": r.outgoing_error_code,
                "outgoing_error_message": r.outgoing_error_message,
            }));
            return;
        }
        let idle = r.is_success()
            && r.delivered
                + r.skipped
                + r.filtered
                + r.oversized
                + r.retry_later
                + r.already_had
                + r.sent
                + r.send_failed
                + r.send_deferred
                + r.send_unknown
                == 0;
        if idle && self.quiet() {
            return;
        }
        let mut parts = vec![format!("{} delivered", r.delivered)];
        for (n, what) in [
            (r.skipped, "skipped"),
            (r.filtered, "filtered"),
            (r.oversized, "oversized"),
            (r.retry_later, "to retry"),
            (r.already_had, "already had"),
            (r.sent, "sent"),
            (r.send_failed, "send failed"),
            (r.send_deferred, "send deferred"),
            (r.send_unknown, "send unknown"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let mut line = format!(
            "{}: {}, {} in {} ms",
            r.email,
            parts.join(", "),
            HumanBytes(r.bytes.max(0) as u64),
            r.duration_ms
        );
        if r.more {
            line.push_str("; more mail waits for the next cycle");
        }
        if let (Some(code), Some(message)) = (&r.error_code, &r.error_message) {
            line.push_str(&format!(
                " — FAILED: {} [{code}]",
                message.replace('\n', " ")
            ));
        }
        if let (Some(code), Some(message)) = (&r.outgoing_error_code, &r.outgoing_error_message) {
            line.push_str(&format!(
                " — SENDING FAILED: {} [{code}]",
                message.replace('\n', " ")
            ));
        }
        self.say(&line);
    }

    /// A cycle the engine's own loop ran (`sync run` without an address):
    /// what the last progress event and the mailbox's status tell.
    fn derived_cycle(&self, p: &SyncProgress, status: Option<&SyncStatus>, delta: (i64, i64)) {
        if self.lines() {
            self.json_line(json!({
                "type": "cycle",
                "mailbox_id": p.mailbox_id,
                "email": p.email,
                "messages": p.messages_done,
                "bytes": p.bytes_done,
                "delivered": delta.0,
                "skipped": delta.1,
                "incoming": status.map(|s| &s.incoming),
                "next_due": status.and_then(|s| s.next_due),
            }));
            return;
        }
        let enabled = status.is_some_and(|s| {
            matches!(
                s.incoming,
                mailsync::lifecycle::DirectionStatus::Enabled { .. }
            )
        });
        if p.messages_done == 0 && enabled && self.quiet() {
            return;
        }
        let incoming = status
            .map(|s| output::direction_text(&s.incoming))
            .unwrap_or_else(|| "?".into());
        let next = status
            .and_then(|s| s.next_due)
            .map(output::timestamp)
            .unwrap_or_else(|| "not scheduled".into());
        self.say(&format!(
            "{}: {} delivered, {} skipped, {}; incoming {incoming}, next {next}",
            p.email,
            delta.0,
            delta.1,
            HumanBytes(p.bytes_done.max(0) as u64)
        ));
    }

    /// A message of `--sink print`.
    pub fn message(&self, m: &IncomingMessage, mailbox: &str) {
        if self.lines() {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                r#type: &'static str,
                #[serde(flatten)]
                entry: IndexEntry<'a>,
            }
            let line = Line {
                r#type: "message",
                entry: IndexEntry::new(m, mailbox),
            };
            outln!("{}", serde_json::to_string(&line).unwrap_or_default());
            return;
        }
        let from = m
            .from
            .iter()
            .map(|a| match &a.name {
                Some(name) => format!("{name} <{}>", a.address),
                None => a.address.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let angle = |id: &str| format!("<{id}>");
        let mut line = format!(
            "{mailbox}: \"{}\" from {} Message-ID {}",
            m.subject.as_deref().unwrap_or(""),
            if from.is_empty() { "-" } else { &from },
            m.message_id
                .as_deref()
                .map(angle)
                .unwrap_or_else(|| "-".into()),
        );
        if !m.in_reply_to.is_empty() {
            let ids: Vec<String> = m.in_reply_to.iter().map(|id| angle(id)).collect();
            line.push_str(&format!(" In-Reply-To {}", ids.join(" ")));
        }
        if m.unparsed {
            line.push_str(" (headers unparsed)");
        }
        self.say(&line);
    }
}

/// For `sync run` without an address: per-mailbox counters before the
/// engine's loop ran, to tell what each cycle did.
pub struct Derived {
    pub engine: Engine,
    pub counters: HashMap<MailboxId, (i64, i64)>,
}

impl Derived {
    /// Reads the counters now. `engine` only answers status questions.
    pub async fn new(engine: Engine) -> mailsync::Result<Derived> {
        let counters = engine
            .status()
            .await?
            .into_iter()
            .map(|s| {
                let c = s.cursor.map(|c| (c.delivered, c.skipped)).unwrap_or((0, 0));
                (s.mailbox_id, c)
            })
            .collect();
        Ok(Derived { engine, counters })
    }

    async fn finished(&mut self, reporter: &Reporter, p: &SyncProgress) {
        let statuses = self.engine.status().await.unwrap_or_default();
        let status = statuses.iter().find(|s| s.mailbox_id == p.mailbox_id);
        let now = status
            .and_then(|s| s.cursor.as_ref())
            .map(|c| (c.delivered, c.skipped))
            .unwrap_or((0, 0));
        let before = self
            .counters
            .insert(p.mailbox_id.clone(), now)
            .unwrap_or((0, 0));
        reporter.derived_cycle(p, status, (now.0 - before.0, now.1 - before.1));
    }
}

enum Command {
    Cycle(Box<CycleReport>),
    Stop,
}

/// Shows the engine's progress as it happens, in a task of its own, and the
/// cycle reports after their progress.
pub struct Renderer {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Renderer {
    /// Starts showing `progress`. With `derived`, each finished cycle also
    /// gets a line from the mailbox's status (the engine's own loop does
    /// not hand out its reports).
    pub fn spawn(
        reporter: Arc<Reporter>,
        mut progress: broadcast::Receiver<SyncProgress>,
        mut derived: Option<Derived>,
    ) -> Renderer {
        let (commands, mut inbox) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let show = async |p: SyncProgress, derived: &mut Option<Derived>| {
                reporter.progress(&p);
                if p.finished
                    && let Some(d) = derived.as_mut()
                {
                    d.finished(&reporter, &p).await;
                }
            };
            loop {
                tokio::select! {
                    biased;
                    got = progress.recv() => match got {
                        Ok(p) => show(p, &mut derived).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    command = inbox.recv() => {
                        // Everything the engine published before this
                        // command is shown first.
                        loop {
                            match progress.try_recv() {
                                Ok(p) => show(p, &mut derived).await,
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                                Err(_) => break,
                            }
                        }
                        match command {
                            Some(Command::Cycle(report)) => reporter.cycle(&report),
                            Some(Command::Stop) | None => break,
                        }
                    }
                }
            }
        });
        Renderer { commands, task }
    }

    /// Shows a cycle's report (after its progress).
    pub fn cycle(&self, report: CycleReport) {
        let _ = self.commands.send(Command::Cycle(Box::new(report)));
    }

    /// Shows what is left and stops.
    pub async fn finish(self) {
        let _ = self.commands.send(Command::Stop);
        let _ = self.task.await;
    }
}

/// A oneshot that fires on Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed before this returns, so a signal that comes early is not lost
/// (and no longer ends the process at once).
pub fn on_shutdown() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        tokio::spawn(async move {
            match (interrupt, terminate) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let _ = tx.send(());
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(());
    });
    rx
}
