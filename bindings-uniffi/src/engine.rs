//! The sync engine ([`Engine`], [`EngineHandle`]) and the adapters of the
//! host's [`MessageSink`], [`Outbox`], [`ProgressListener`] and
//! [`ReportListener`].
//!
//! The sink and the outbox are foreign traits with plain (blocking)
//! methods, called on a blocking thread of the runtime, never a worker: they
//! may block (a database write) and call back into the library. Their
//! exceptions arrive as [`SinkError`] values, which the core turns into a
//! `sink_failed` cycle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Shared;
use mailsync::ErrorCode;
use mailsync::model::MailboxId;
use mailsync::sync::{
    CycleReport, DeliveryOutcome, EngineOptions, IncomingMessage, OutgoingMessage, SendReport,
    SyncProgress, SyncStatus,
};
use tokio::sync::{broadcast, oneshot};

use crate::{ListenerError, MailSync, Result, Subscription, deliver_each, lock, run, runtime};

/// Where incoming mail goes: the host's store. Called on a library thread
/// (never a coroutine); several mailboxes may deliver at once.
///
/// `deliver` gets a batch in server order and returns one outcome per
/// message, in order. The cursor moves only after it returned; when it
/// throws (or returns the wrong number of outcomes, or takes longer than
/// `EngineOptions.sinkTimeoutSecs`) the cycle ends with `sink_failed` and
/// the batch comes again. Delivery is at least once: store by
/// `IncomingMessage.key`.
///
/// `tracked` and `knownSenders` answer the incoming filters
/// (`REPLIES_TO_TRACKED_EMAIL`, `FROM_KNOWN_RECORDS`), one answer per value,
/// in order. A sink that does not care returns all `false` (tracks nothing,
/// knows nobody), as the Rust trait's defaults do.
#[uniffi::export(with_foreign)]
pub trait MessageSink: Send + Sync {
    /// Stores a batch; one outcome per message, in order.
    fn deliver(&self, messages: Vec<IncomingMessage>) -> Result<Vec<DeliveryOutcome>, SinkError>;

    /// Which of these Message-IDs (without angle brackets) belong to email
    /// the CRM tracks.
    fn tracked(&self, mailbox: MailboxId, message_ids: Vec<String>)
    -> Result<Vec<bool>, SinkError>;

    /// Which of these sender addresses (lower-cased) belong to records the
    /// CRM knows.
    fn known_senders(
        &self,
        mailbox: MailboxId,
        addresses: Vec<String>,
    ) -> Result<Vec<bool>, SinkError>;
}

/// Where outgoing mail comes from: the host's queue of messages to send.
/// Called on a library thread (never a coroutine).
///
/// `pending` returns up to `limit` messages of the mailbox waiting to be
/// sent, oldest first, each with the host's stable id. `report` is called
/// once for each outcome (`Sent`, `Failed`, `Deferred`, `Unknown`), after
/// the engine recorded it. Keep returning a message from `pending` until it
/// is reported sent or failed: the engine never sends it twice, and
/// reports it again if a report was lost. When `pending` throws, the
/// outgoing cycle ends with `sink_failed` and nothing is sent.
#[uniffi::export(with_foreign)]
pub trait Outbox: Send + Sync {
    /// Up to `limit` messages of `mailbox` to send, oldest first.
    fn pending(&self, mailbox: MailboxId, limit: u32) -> Result<Vec<OutgoingMessage>, SinkError>;

    /// One message's outcome.
    fn report(&self, report: SendReport) -> Result<(), SinkError>;
}

/// An exception a [`MessageSink`] or an [`Outbox`] threw, as Rust receives
/// it: a value, never a panic. The cycle reports it as `sink_failed` with
/// this text.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum SinkError {
    /// The sink threw.
    #[error("{reason}")]
    Failed {
        /// What it threw.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for SinkError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        // Kotlin hands over the whole stack trace: keep its first part
        // (class and message).
        let reason = match e.reason.split_once("\n\tat ") {
            Some((head, _)) => head.trim_end().to_owned(),
            None => e.reason,
        };
        SinkError::Failed { reason }
    }
}

/// Calls the host (`role`: "sink", "outbox") on a blocking thread.
async fn on_host_thread<H: ?Sized + Send + Sync + 'static, T: Send + 'static>(
    host: &Arc<H>,
    role: &'static str,
    f: impl FnOnce(&H) -> Result<T, SinkError> + Send + 'static,
) -> mailsync::Result<T> {
    let host = host.clone();
    let failed = |reason: String| mailsync::Error::new(ErrorCode::SinkFailed, reason);
    match tokio::task::spawn_blocking(move || mailsync::ffi::guard(|| Ok(f(&*host)))).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(failed(e.to_string())),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(failed(format!("the {role} did not finish: {e}"))),
    }
}

/// The host's sink as the core's: each call on a blocking thread.
struct HostSink(Arc<dyn MessageSink>);

impl HostSink {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&(dyn MessageSink + 'static)) -> Result<T, SinkError> + Send + 'static,
    ) -> mailsync::Result<T> {
        on_host_thread(&self.0, "sink", f).await
    }
}

/// The host's outbox as the core's: each call on a blocking thread.
struct HostOutbox(Arc<dyn Outbox>);

#[async_trait::async_trait]
impl mailsync::sync::Outbox for HostOutbox {
    async fn pending(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        let mailbox = mailbox.clone();
        on_host_thread(&self.0, "outbox", move |outbox| {
            outbox.pending(mailbox, limit)
        })
        .await
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        on_host_thread(&self.0, "outbox", move |outbox| outbox.report(report)).await
    }
}

#[async_trait::async_trait]
impl mailsync::sync::MessageSink for HostSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        self.call(move |sink| sink.deliver(messages)).await
    }

    async fn tracked(
        &self,
        mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let mailbox = mailbox.clone();
        self.call(move |sink| sink.tracked(mailbox, message_ids))
            .await
    }

    async fn known_senders(
        &self,
        mailbox: &MailboxId,
        addresses: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let mailbox = mailbox.clone();
        self.call(move |sink| sink.known_senders(mailbox, addresses))
            .await
    }
}

/// Receives the [`SyncProgress`] of running cycles, like an
/// `EventListener`: on a library thread, one value at a time, in order; a
/// listener that falls behind skips values. An exception it throws loses
/// that value only.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// One progress value.
    fn on_progress(&self, progress: SyncProgress) -> Result<(), ListenerError>;
}

/// Receives the [`CycleReport`] of every cycle an engine ends, like a
/// [`ProgressListener`]: on a library thread, one report at a time, in
/// order; a listener that falls behind skips reports. An exception it
/// throws loses that report only.
#[uniffi::export(with_foreign)]
pub trait ReportListener: Send + Sync {
    /// One cycle's report.
    fn on_report(&self, report: CycleReport) -> Result<(), ListenerError>;
}

/// The engine's defaults, to change fields of.
#[uniffi::export]
pub fn default_engine_options() -> EngineOptions {
    EngineOptions::default()
}

/// The sync engine: new mail of each enabled mailbox into the host's
/// [`MessageSink`] and, made with [`Engine::with_outbox`], the host's
/// [`Outbox`] sent out (see `mailsync::Engine`).
#[derive(uniffi::Object)]
pub struct Engine {
    inner: mailsync::Engine,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

#[uniffi::export]
impl Engine {
    /// An engine over `sync`'s mailboxes, delivering to `sink`; `validation`
    /// for bad options.
    #[uniffi::constructor]
    pub fn new(
        sync: Arc<MailSync>,
        sink: Arc<dyn MessageSink>,
        options: EngineOptions,
    ) -> Result<Arc<Self>> {
        let core = sync.core.clone();
        let inner = mailsync::ffi::guard(|| {
            mailsync::Engine::new(core, Arc::new(HostSink(sink)), options)
        })?;
        Ok(Arc::new(Engine {
            inner,
            tasks: sync.tasks.clone(),
        }))
    }

    /// An engine that also sends the mail of `outbox` from every mailbox
    /// whose outgoing direction is enabled, reporting each outcome to it;
    /// `validation` for bad options.
    #[uniffi::constructor]
    pub fn with_outbox(
        sync: Arc<MailSync>,
        sink: Arc<dyn MessageSink>,
        outbox: Arc<dyn Outbox>,
        options: EngineOptions,
    ) -> Result<Arc<Self>> {
        let core = sync.core.clone();
        let inner = mailsync::ffi::guard(|| {
            mailsync::Engine::with_outbox(
                core,
                Arc::new(HostSink(sink)),
                Arc::new(HostOutbox(outbox)),
                options,
            )
        })?;
        Ok(Arc::new(Engine {
            inner,
            tasks: sync.tasks.clone(),
        }))
    }

    /// An engine whose leases carry the name `owner` (e.g. `host:pid`; the
    /// others get `engine-<uuid>`), and that sends the mail of `outbox` when
    /// one is given (as [`Engine::with_outbox`]). Each engine must have a
    /// name of its own: two engines with one name count as one holder.
    /// `validation` for bad options or an empty name (field `owner`).
    #[uniffi::constructor(default(outbox = None))]
    pub fn with_owner(
        sync: Arc<MailSync>,
        sink: Arc<dyn MessageSink>,
        options: EngineOptions,
        owner: String,
        outbox: Option<Arc<dyn Outbox>>,
    ) -> Result<Arc<Self>> {
        let core = sync.core.clone();
        let inner = mailsync::ffi::guard(|| {
            let outbox: Option<Arc<dyn mailsync::sync::Outbox>> = match outbox {
                Some(outbox) => Some(Arc::new(HostOutbox(outbox))),
                None => None,
            };
            mailsync::Engine::with_parts(core, Arc::new(HostSink(sink)), outbox, options, owner)
        })?;
        Ok(Arc::new(Engine {
            inner,
            tasks: sync.tasks.clone(),
        }))
    }

    /// The options.
    pub fn options(&self) -> EngineOptions {
        self.inner.options().clone()
    }

    /// The name this engine's leases carry.
    pub fn owner(&self) -> String {
        self.inner.owner().to_owned()
    }

    /// Syncs one mailbox now, whatever its schedule: its incoming mail, then
    /// (with an outbox) its outgoing mail. A failed cycle is in the report
    /// (`errorCode`, `outgoingErrorCode`); throws only when the cycle could
    /// not start (`not_enabled`, `token_revoked`, …).
    pub async fn run_once(&self, mailbox: MailboxId) -> Result<CycleReport> {
        let engine = self.inner.clone();
        run(async move { engine.run_once(&mailbox).await }).await
    }

    /// Syncs every mailbox that is due now, once; one report per mailbox synced.
    pub async fn run_due(&self) -> Result<Vec<CycleReport>> {
        let engine = self.inner.clone();
        run(async move { engine.run_due().await }).await
    }

    /// Runs `runDue` until the handle is stopped or freed, or the
    /// `MailSync`'s store closed, sleeping until the next mailbox is due (at
    /// most `max_idle_secs`).
    pub fn start(&self, max_idle_secs: u32) -> Result<Arc<EngineHandle>> {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        let engine = self.inner.clone();
        let task = runtime()?.spawn(async move {
            // Dropped when this task ends or is aborted: `stop()` returns.
            let _stopped = stopped_tx;
            let running = engine.start(Duration::from_secs(max_idle_secs.into()));
            // Told to stop, or the handle was freed: stop the same way
            // (also releasing the leases of cycles cut short).
            let _ = stop_rx.await;
            running.stop().await;
        });
        crate::track(&self.tasks, task.abort_handle());
        Ok(Arc::new(EngineHandle {
            stop: Mutex::new(Some(stop)),
            stopped: stopped.shared(),
        }))
    }

    /// Every mailbox's sync status.
    pub async fn status(&self) -> Result<Vec<SyncStatus>> {
        let engine = self.inner.clone();
        run(async move { engine.status().await }).await
    }

    /// Sends again a message of the outbox whose fate was `Unknown` (or that
    /// `Failed`), with the same Message-ID: its record goes back to pending,
    /// and the next outgoing cycle sends it if the outbox still returns it
    /// from `pending`. `conflict` while the mailbox's mail is being sent;
    /// `validation` for a message that was sent (never sent twice) or is not
    /// waiting for the host; `not_found` for an id the engine never saw.
    pub async fn resend(&self, mailbox: MailboxId, id: String) -> Result<()> {
        let engine = self.inner.clone();
        run(async move { engine.resend(&mailbox, &id).await }).await
    }

    /// Starts the outgoing schedule of every mailbox that sends through
    /// server-side sync, has its outgoing direction enabled and never had an
    /// outgoing cycle, so that it is due now (an outbox-only mailbox has no
    /// incoming cycle to start it). `runDue` and `start` do this themselves;
    /// nothing without an outbox.
    pub async fn seed_outgoing(&self) -> Result<()> {
        let engine = self.inner.clone();
        run(async move { engine.seed_outgoing().await }).await
    }

    /// Delivers the progress of the cycles that run from now on to
    /// `listener`, until the subscription is cancelled or the `MailSync`'s
    /// store closed.
    pub fn progress(&self, listener: Arc<dyn ProgressListener>) -> Result<Arc<Subscription>> {
        self.listen(self.inner.progress(), move |progress| {
            listener.on_progress(progress)
        })
    }

    /// Delivers the [`CycleReport`] of every cycle this engine ends from now
    /// on (`runOnce`, `runDue` and the cycles of `start`, which hands out no
    /// reports otherwise) to `listener`, until the subscription is cancelled
    /// or the `MailSync`'s store closed.
    pub fn reports(&self, listener: Arc<dyn ReportListener>) -> Result<Arc<Subscription>> {
        self.listen(self.inner.reports(), move |report| {
            listener.on_report(report)
        })
    }
}

impl Engine {
    /// Hands each value of a broadcast to `deliver` (see [`deliver_each`])
    /// in a task that the subscription or closing the `MailSync` ends.
    fn listen<T: Clone + Send + 'static>(
        &self,
        values: broadcast::Receiver<T>,
        deliver: impl Fn(T) -> std::result::Result<(), ListenerError> + Send + Sync + 'static,
    ) -> Result<Arc<Subscription>> {
        let task = deliver_each(mailsync::ffi::broadcast_stream(values), deliver)?;
        crate::track(&self.tasks, task.abort_handle());
        Ok(Arc::new(Subscription(Mutex::new(Some(task)))))
    }
}

/// A started engine ([`Engine::start`]). Freeing it (`close()`, or the
/// garbage collector) stops the engine too.
#[derive(uniffi::Object)]
pub struct EngineHandle {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: Shared<oneshot::Receiver<()>>,
}

#[uniffi::export]
impl EngineHandle {
    /// Stops the engine and waits until it stopped (again: returns at once).
    /// A cycle stopped mid-batch does not move the cursor; its sync lease is
    /// released.
    pub async fn stop(&self) -> Result<()> {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        let stopped = self.stopped.clone();
        run(async move {
            let _ = stopped.await;
            Ok(())
        })
        .await
    }
}
