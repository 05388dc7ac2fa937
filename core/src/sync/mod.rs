//! The sync engine: mail flows in from each enabled mailbox to the host's
//! [`MessageSink`], resumably and at least once; and out from the host's
//! [`Outbox`] over SMTP, each message once as far as the wire allows
//! (see [`Outbox`] and docs/sync.md).
//!
//! ```text
//!  schedule: claim due mailboxes (postponement, backoff; either direction) into sync leases
//!    └─ outgoing cycle, if due and the engine has an outbox (send lease; see `outgoing`)
//!         outbox.pending ─ record sending ─ SMTP MAIL/RCPT/DATA ─ record outcome ─ outbox.report
//!    └─ incoming cycle, if due (one lease holder per mailbox)
//!         IMAP: EXAMINE INBOX ─ UIDVALIDITY same? ─ UID SEARCH ─ sizes ─ UID FETCH batch (BODY.PEEK[])
//!                                └ changed: re-map by message key; deliver nothing twice
//!         POP3: UIDL ─ new ids ─ RETR ─ (DELE only for forward mailboxes set to delete, after the ack)
//!         parse ─ sink.deliver(batch) ─ outcomes ─ store: cursor + outcomes in one transaction
//!    └─ policy: transient → retry later (count, backoff) → spent → direction disabled + alert
//!               permanent → direction disabled + alert; token_revoked → needs re-consent
//! ```
//!
//! The engine never changes the mailbox on the server: it opens INBOX with
//! EXAMINE and fetches with `BODY.PEEK[]`, so nothing is marked read, moved
//! or deleted (except POP3 forward mailboxes configured to delete).
//!
//! [`Engine::run_once`] syncs one mailbox now (scripts); [`Engine::run_due`]
//! syncs every mailbox that is due, once; [`Engine::start`] keeps doing that
//! until the returned handle is stopped or dropped.

mod cursor;
mod imap_in;
mod message;
mod outbox;
mod outgoing;
mod pop3_in;
mod schedule;
mod sink;

pub use cursor::{ImapCursor, MessageRecord, RecordedOutcome, SyncCursor};
pub use message::{IncomingMessage, MailAddress, RawMessage};
pub use outbox::{
    ComposedMessage, Outbox, OutboxCursor, OutgoingAttachment, OutgoingContent, OutgoingMessage,
    OutgoingRecord, OutgoingState, RecipientRefusal, SendOutcome, SendReport,
};
pub use schedule::EngineHandle;
pub(crate) use schedule::due_at;
pub use sink::{DeliveryOutcome, MessageSink};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, broadcast};

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::{Direction, DirectionStatus, GrantStatus, LifecycleEvent};
use crate::model::{
    IncomingDelivery, IncomingProtocol, Mailbox, MailboxId, ServerProfile, Timestamp,
};
use crate::store::LeaseRecord;

/// How the engine works; every field has a default that suits production.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct EngineOptions {
    /// After a cycle, the mailbox is due again this much later (default
    /// 300 s, as Dynamics postpones a mailbox 5 minutes; at most a day), or
    /// after the profile's minimum polling interval if that is longer.
    pub postpone_secs: u32,
    /// Connections one account may hold at once (default 2; Gmail allows
    /// about 15 per account, shared with the user's own clients).
    pub connections_per_account: u32,
    /// Mailboxes synced at once by this engine (default 8).
    pub workers: u32,
    /// Most messages per fetch batch (default 200).
    pub batch_messages: u32,
    /// Most bytes per fetch batch (default 4 MiB); a larger message is a
    /// batch of its own.
    pub batch_bytes: u32,
    /// Messages above this size are recorded as oversized, with an alert,
    /// and never downloaded (default 50 MiB).
    pub max_message_bytes: u32,
    /// Most messages one cycle takes in (default 5000); the rest follow in
    /// the next cycle, so one large mailbox does not hold a worker for long.
    pub messages_per_cycle: u32,
    /// A fetch may take its inactivity timeout plus its size at this rate
    /// (default 64 KiB/s), so a server that trickles is cut off.
    pub min_throughput_bytes_per_sec: u32,
    /// How long the sink may take for one batch (default 300 s, at most a day).
    pub sink_timeout_secs: u32,
    /// How long a mailbox's sync lease lasts; renewed before each batch
    /// (default 300 s, 5 s to a day).
    pub lease_secs: u32,
    /// Most messages one outgoing cycle asks the outbox for (default 200);
    /// when it returns that many, the next cycle follows right away.
    pub sends_per_cycle: u32,
    /// With refused recipients, send to the accepted ones and report the
    /// refusals (default false: the message fails whole and nothing is sent).
    pub allow_partial_send: bool,
    /// After a crash (or a lost connection) between a message's data going
    /// out and its outcome being recorded, report it `unknown` and wait for
    /// the host ([`Engine::resend`]) instead of sending it again with the
    /// same Message-ID (default false: send again).
    pub unknown_after_crash: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            postpone_secs: 300,
            connections_per_account: 2,
            workers: 8,
            batch_messages: 200,
            batch_bytes: 4 * 1024 * 1024,
            max_message_bytes: 50 * 1024 * 1024,
            messages_per_cycle: 5000,
            min_throughput_bytes_per_sec: 64 * 1024,
            sink_timeout_secs: 300,
            lease_secs: 300,
            sends_per_cycle: 200,
            allow_partial_send: false,
            unknown_after_crash: false,
        }
    }
}

impl EngineOptions {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        for (field, value, min) in [
            ("connections_per_account", self.connections_per_account, 1),
            ("workers", self.workers, 1),
            ("batch_messages", self.batch_messages, 1),
            ("batch_bytes", self.batch_bytes, 1024),
            ("max_message_bytes", self.max_message_bytes, 1024),
            ("messages_per_cycle", self.messages_per_cycle, 1),
            (
                "min_throughput_bytes_per_sec",
                self.min_throughput_bytes_per_sec,
                1,
            ),
            ("sink_timeout_secs", self.sink_timeout_secs, 1),
            ("lease_secs", self.lease_secs, 5),
            ("sends_per_cycle", self.sends_per_cycle, 1),
        ] {
            if value < min {
                return Err(Error::validation(field, format!("must be at least {min}")));
            }
        }
        // Durations: at most a day, so no deadline computed from them can
        // overflow (see crate::options::MAX_SECS).
        for (field, value) in [
            ("postpone_secs", self.postpone_secs),
            ("sink_timeout_secs", self.sink_timeout_secs),
            ("lease_secs", self.lease_secs),
        ] {
            if value > crate::options::MAX_SECS {
                return Err(Error::validation(field, "must be at most one day"));
            }
        }
        Ok(())
    }

    fn postpone(&self) -> Duration {
        Duration::from_secs(u64::from(self.postpone_secs))
    }

    fn sink_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.sink_timeout_secs))
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_secs))
    }
}

/// How one cycle of one mailbox ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq)
)]
pub struct CycleReport {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// Stored by the sink.
    pub delivered: u32,
    /// Skipped by the sink.
    pub skipped: u32,
    /// Left out by the incoming filter (bodies not downloaded).
    pub filtered: u32,
    /// Over the size limit (not downloaded; alert raised).
    pub oversized: u32,
    /// The sink asked for these again later (the cursor stopped before the first).
    pub retry_later: u32,
    /// Already recorded (after UIDVALIDITY changed): not delivered again.
    pub already_had: u32,
    /// Message bytes downloaded.
    pub bytes: i64,
    /// More mail is waiting (the cycle's message limit was reached).
    pub more: bool,
    /// How long the cycle took, in milliseconds.
    pub duration_ms: u32,
    /// The failure, if the cycle failed; the cursor stays where the last
    /// acknowledged batch left it.
    pub error_code: Option<ErrorCode>,
    /// The failure's message.
    pub error_message: Option<String>,
    /// Outgoing: messages the server accepted this cycle.
    pub sent: u32,
    /// Outgoing: messages refused for good this cycle.
    pub send_failed: u32,
    /// Outgoing: messages deferred this cycle (tried again later).
    pub send_deferred: u32,
    /// Outgoing: messages whose fate is unknown (only with
    /// [`EngineOptions::unknown_after_crash`]).
    pub send_unknown: u32,
    /// The outgoing cycle's failure, if it failed.
    pub outgoing_error_code: Option<ErrorCode>,
    /// That failure's message.
    pub outgoing_error_message: Option<String>,
}

impl CycleReport {
    pub(crate) fn new(mailbox: &Mailbox) -> Self {
        CycleReport {
            mailbox_id: mailbox.id.clone(),
            email: mailbox.email.clone(),
            delivered: 0,
            skipped: 0,
            filtered: 0,
            oversized: 0,
            retry_later: 0,
            already_had: 0,
            bytes: 0,
            more: false,
            duration_ms: 0,
            error_code: None,
            error_message: None,
            sent: 0,
            send_failed: 0,
            send_deferred: 0,
            send_unknown: 0,
            outgoing_error_code: None,
            outgoing_error_message: None,
        }
    }

    /// Whether the cycle ended without a failure (in either direction).
    pub fn is_success(&self) -> bool {
        self.error_code.is_none() && self.outgoing_error_code.is_none()
    }

    /// Takes the outgoing side of `other` (a report of an outgoing cycle).
    fn absorb_outgoing(&mut self, other: CycleReport) {
        self.sent += other.sent;
        self.send_failed += other.send_failed;
        self.send_deferred += other.send_deferred;
        self.send_unknown += other.send_unknown;
        self.outgoing_error_code = other.outgoing_error_code;
        self.outgoing_error_message = other.outgoing_error_message;
        self.duration_ms = self.duration_ms.saturating_add(other.duration_ms);
    }
}

/// Progress of a cycle, published while it runs (messages and bytes done
/// and to do): a long initial sync reports after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq)
)]
pub struct SyncProgress {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// Messages handled so far this cycle.
    pub messages_done: u32,
    /// Messages this cycle will handle.
    pub messages_total: u32,
    /// Bytes downloaded so far this cycle.
    pub bytes_done: i64,
    /// Bytes this cycle will download (known once the sizes are in).
    pub bytes_total: i64,
    /// The cycle is over.
    pub finished: bool,
}

/// A mailbox's sync status for operators (`mailsync sync status`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all)
)]
pub struct SyncStatus {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// The incoming direction's status (enabled, retrying with its backoff, disabled, …).
    pub incoming: DirectionStatus,
    /// Cursor and counters (none before the first cycle).
    pub cursor: Option<SyncCursor>,
    /// When it is due next (none: not scheduled, e.g. disabled or not connected).
    pub next_due: Option<Timestamp>,
    /// The outgoing direction's status.
    pub outgoing: DirectionStatus,
    /// Outgoing counters and schedule (none before the first outgoing cycle).
    pub outbox: Option<OutboxCursor>,
    /// When outgoing mail is due next (none: not scheduled, or the engine
    /// has no outbox).
    pub next_send_due: Option<Timestamp>,
}

pub(crate) struct Inner {
    pub sync: MailSync,
    pub sink: Arc<dyn MessageSink>,
    pub outbox: Option<Arc<dyn Outbox>>,
    pub options: EngineOptions,
    pub owner: String,
    accounts: Mutex<HashMap<String, Arc<Semaphore>>>,
    profiles: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub progress: broadcast::Sender<SyncProgress>,
    pub reports: broadcast::Sender<CycleReport>,
}

/// The sync engine. Cheap to clone; clones share budgets and progress.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.inner.options)
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

/// Why a mailbox is not synced now, or `None` when it may be.
fn not_syncable(mailbox: &Mailbox, state: &crate::lifecycle::MailboxState) -> Option<Error> {
    if !matches!(
        mailbox.incoming_delivery,
        IncomingDelivery::ServerSideSync | IncomingDelivery::ForwardMailbox
    ) {
        return Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "mailbox {} does not use server-side sync for incoming mail",
                mailbox.email
            ),
        ));
    }
    if let GrantStatus::NeedsReconsent { code, reason, .. } = &state.grant {
        return Some(Error::new(*code, reason.clone()));
    }
    match &state.incoming.status {
        DirectionStatus::Enabled { .. } | DirectionStatus::Retrying { .. } => None,
        DirectionStatus::NotTested {} => Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "incoming mail of {} is not enabled yet; run Test & Enable first",
                mailbox.email
            ),
        )),
        DirectionStatus::Disabled { code, reason, .. } => Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "incoming mail of {} was disabled ({code}: {reason}); fix it and run Test & Enable",
                mailbox.email
            ),
        )),
    }
}

/// A lease owner name unique to this engine.
fn default_owner() -> String {
    format!("engine-{}", uuid::Uuid::new_v4())
}

impl Engine {
    /// An engine over `sync`'s mailboxes, delivering to `sink`.
    pub fn new(
        sync: MailSync,
        sink: Arc<dyn MessageSink>,
        options: EngineOptions,
    ) -> Result<Engine> {
        Engine::with_parts(sync, sink, None, options, default_owner())
    }

    /// An engine that also sends the mail of `outbox` from every mailbox
    /// whose outgoing direction is enabled.
    pub fn with_outbox(
        sync: MailSync,
        sink: Arc<dyn MessageSink>,
        outbox: Arc<dyn Outbox>,
        options: EngineOptions,
    ) -> Result<Engine> {
        Engine::with_parts(sync, sink, Some(outbox), options, default_owner())
    }

    /// [`Engine::new`] with the name its leases carry (shown by `mailsync
    /// workers`), e.g. `host:pid`. Each engine must have its own: two
    /// engines with one name would count as one holder.
    pub fn with_owner(
        sync: MailSync,
        sink: Arc<dyn MessageSink>,
        options: EngineOptions,
        owner: impl Into<String>,
    ) -> Result<Engine> {
        Engine::with_parts(sync, sink, None, options, owner)
    }

    /// The general form of [`Engine::new`], [`Engine::with_outbox`] and
    /// [`Engine::with_owner`]: an optional outbox and the leases' owner name.
    pub fn with_parts(
        sync: MailSync,
        sink: Arc<dyn MessageSink>,
        outbox: Option<Arc<dyn Outbox>>,
        options: EngineOptions,
        owner: impl Into<String>,
    ) -> Result<Engine> {
        options.validate()?;
        let owner = owner.into();
        if owner.trim().is_empty() {
            return Err(Error::validation("owner", "must not be empty"));
        }
        let (progress, _) = broadcast::channel(1024);
        let (reports, _) = broadcast::channel(1024);
        Ok(Engine {
            inner: Arc::new(Inner {
                owner,
                reports,
                sync,
                sink,
                outbox,
                options,
                accounts: Mutex::new(HashMap::new()),
                profiles: Mutex::new(HashMap::new()),
                progress,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Progress of running cycles, as they happen.
    pub fn progress(&self) -> broadcast::Receiver<SyncProgress> {
        self.inner.progress.subscribe()
    }

    /// The report of every cycle this engine ends from now on, both
    /// directions counted, as [`Engine::run_once`] and [`Engine::run_due`]
    /// return it (also those of [`Engine::start`], which hands out no
    /// reports otherwise).
    pub fn reports(&self) -> broadcast::Receiver<CycleReport> {
        self.inner.reports.subscribe()
    }

    /// The name this engine's leases carry.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Syncs one mailbox now, whatever its schedule: its incoming mail,
    /// then its outgoing mail (with an outbox), each direction if it is
    /// enabled and connected (`not_enabled`, `token_revoked`, … when
    /// neither is). A failure is in the report (and applied to the
    /// mailbox's lifecycle); `Err` only when a cycle could not start.
    pub async fn run_once(&self, mailbox: &MailboxId) -> Result<CycleReport> {
        let record = self.inner.sync.directory().get_mailbox(mailbox).await?;
        let state = self.inner.sync.directory().state(mailbox).await?;
        let incoming = not_syncable(&record, &state);
        let outgoing = outgoing::not_sendable(self, &record, &state);
        let mut report = match (incoming, &outgoing) {
            (Some(e), Some(_)) => return Err(e),
            (Some(_), None) => CycleReport::new(&record),
            (None, _) => self.cycle(record.clone()).await?,
        };
        if outgoing.is_none() {
            report.absorb_outgoing(self.send_cycle(record).await?);
        }
        self.ended(&report);
        Ok(report)
    }

    /// A cycle ended, both directions counted: its metrics, and its report
    /// to [`Engine::reports`].
    fn ended(&self, report: &CycleReport) {
        crate::metrics::cycle_ended(report);
        let _ = self.inner.reports.send(report.clone());
    }

    /// Every mailbox's sync status.
    pub async fn status(&self) -> Result<Vec<SyncStatus>> {
        let mut out = Vec::new();
        for mailbox in self.inner.sync.directory().list_mailboxes(None).await? {
            let state = self.inner.sync.directory().state(&mailbox.id).await?;
            let cursor = self.inner.sync.store().get_cursor(&mailbox.id).await?;
            let next_due = schedule::incoming_due_at(&mailbox, &state, cursor.as_ref());
            let outbox = self
                .inner
                .sync
                .store()
                .get_outbox_cursor(&mailbox.id)
                .await?;
            let next_send_due = self
                .inner
                .outbox
                .as_ref()
                .and_then(|_| outgoing::due_at(&mailbox, &state, outbox.as_ref()));
            out.push(SyncStatus {
                mailbox_id: mailbox.id.clone(),
                email: mailbox.email.clone(),
                incoming: state.incoming.status.clone(),
                cursor,
                next_due,
                outgoing: state.outgoing.status.clone(),
                outbox,
                next_send_due,
            });
        }
        Ok(out)
    }

    fn semaphore(
        map: &Mutex<HashMap<String, Arc<Semaphore>>>,
        key: &str,
        permits: u32,
    ) -> Arc<Semaphore> {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(permits as usize)))
            .clone()
    }

    /// One cycle of a mailbox whose sync lease this engine claimed
    /// ([`crate::store::LeaseStore::claim_due`]): each direction that is
    /// due, outgoing first (with an outbox; under the mailbox's send lease
    /// while the claimed lease is kept alive, so the mailbox is not claimed
    /// again meanwhile), then incoming. The lease is released if the cycle
    /// cannot start (the mailbox is gone, or nothing is due any more).
    pub(crate) async fn cycle_claimed(&self, claim: LeaseRecord) -> Result<CycleReport> {
        let sync = &self.inner.sync;
        let lease = crate::lease::Lease::claimed(
            sync.store().clone(),
            sync.clock(),
            claim,
            self.inner.options.lease(),
        );
        let id = lease.record().mailbox_id.clone();
        let ready = async {
            let mailbox = sync.directory().get_mailbox(&id).await?;
            let state = sync.directory().state(&id).await?;
            let now = sync.now();
            let cursor = sync.store().get_cursor(&id).await?;
            let incoming = not_syncable(&mailbox, &state).is_none()
                && schedule::incoming_due_at(&mailbox, &state, cursor.as_ref())
                    .is_some_and(|at| at <= now);
            let outgoing = outgoing::not_sendable(self, &mailbox, &state).is_none() && {
                let outbox = sync.store().get_outbox_cursor(&id).await?;
                outgoing::due_now(&state, outbox.as_ref(), now)
            };
            if !incoming && !outgoing {
                if self.inner.outbox.is_none() {
                    // Due for outgoing mail this engine cannot send: postpone
                    // it as an empty outbox would, so it is not claimed again
                    // at once.
                    self.postpone_unsendable(&mailbox, &state).await;
                }
                return Err(match not_syncable(&mailbox, &state) {
                    Some(e) => e,
                    None => Error::new(
                        ErrorCode::Conflict,
                        format!("mailbox {} is not due any more", mailbox.email),
                    ),
                });
            }
            let profile = sync.profile_of(&mailbox).await?;
            Ok((mailbox, profile, incoming, outgoing))
        };
        let (mailbox, profile, incoming, outgoing) = match ready.await {
            Ok(ready) => ready,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        let sent = if outgoing {
            let heartbeat = self.keep_renewed(lease.record().clone());
            let send = self.send_cycle(mailbox.clone());
            Some(tokio::select! {
                sent = send => sent,
                never = heartbeat => match never {},
            })
        } else {
            None
        };
        let mut report = if incoming {
            self.cycle_leased(mailbox.clone(), profile, lease).await?
        } else {
            let _ = lease.release().await;
            CycleReport::new(&mailbox)
        };
        match sent {
            Some(Ok(sent)) => report.absorb_outgoing(sent),
            // Its send lease is held elsewhere (`run_once`, `resend`).
            Some(Err(e)) if !incoming => return Err(e),
            Some(Err(e)) => {
                tracing::debug!(mailbox = %mailbox.email, code = %e.code(), "no outgoing cycle: {e}");
            }
            None => {}
        }
        self.ended(&report);
        Ok(report)
    }

    /// One cycle: lease, budgets, protocol, lifecycle.
    pub(crate) async fn cycle(&self, mailbox: Mailbox) -> Result<CycleReport> {
        let sync = &self.inner.sync;
        let profile = sync.profile_of(&mailbox).await?;
        let Some(lease) = crate::lease::Lease::acquire(
            sync.store().clone(),
            sync.clock(),
            &mailbox.id,
            crate::store::LeaseKind::Sync,
            &self.inner.owner,
            self.inner.options.lease(),
        )
        .await?
        else {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "mailbox {} is being synced elsewhere right now",
                    mailbox.email
                ),
            ));
        };
        self.cycle_leased(mailbox, profile, lease).await
    }

    /// Keeps a held lease alive while its cycle works: renews it every
    /// third of its time-to-live. Once it is lost (taken over after a
    /// pause), renewing stops; the cycle learns it at its next renewal or
    /// write, which the store refuses. Never returns.
    async fn keep_renewed(&self, mut record: LeaseRecord) -> std::convert::Infallible {
        let store = self.inner.sync.store().clone();
        let clock = self.inner.sync.clock();
        let ttl = self.inner.options.lease();
        let every = (ttl / 3).max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            match store.renew_lease(&record, clock.now().plus(ttl)).await {
                Ok(Some(renewed)) => record = renewed,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(mailbox = %record.mailbox_id, "could not renew a sync lease: {e}")
                }
            }
        }
        std::future::pending().await
    }

    /// One cycle under a held sync lease: budgets, protocol, lifecycle.
    async fn cycle_leased(
        &self,
        mailbox: Mailbox,
        profile: ServerProfile,
        lease: crate::lease::Lease,
    ) -> Result<CycleReport> {
        let started = Instant::now();
        let _running = crate::metrics::Running::start();
        let mut report = CycleReport::new(&mailbox);
        let heartbeat = self.keep_renewed(lease.record().clone());
        let work = self.budgeted(&mailbox, &profile, lease, &mut report);
        let outcome = tokio::select! {
            outcome = work => outcome,
            never = heartbeat => match never {},
        };
        report.duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        self.conclude(&mailbox, &profile, outcome, &mut report)
            .await;
        // What the cycle handled, counted as its progress events counted it.
        let handled = report.delivered
            + report.skipped
            + report.retry_later
            + report.filtered
            + report.oversized
            + report.already_had;
        let _ = self.inner.progress.send(SyncProgress {
            mailbox_id: mailbox.id.clone(),
            email: mailbox.email.clone(),
            messages_done: handled,
            messages_total: handled,
            bytes_done: report.bytes,
            bytes_total: report.bytes,
            finished: true,
        });
        Ok(report)
    }

    /// Within the account's and the profile's connection budgets, the
    /// protocol's cycle.
    async fn budgeted(
        &self,
        mailbox: &Mailbox,
        profile: &ServerProfile,
        lease: crate::lease::Lease,
        report: &mut CycleReport,
    ) -> Result<()> {
        let account = Self::semaphore(
            &self.inner.accounts,
            &mailbox.email,
            self.inner.options.connections_per_account,
        );
        let per_profile = Self::semaphore(
            &self.inner.profiles,
            profile.id.as_str(),
            u32::from(profile.processing.max_concurrent_connections.max(1)),
        );
        let _account = account
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorCode::Internal, "connection budget closed"))?;
        let _profile = per_profile
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorCode::Internal, "connection budget closed"))?;
        let span =
            tracing::info_span!("sync_cycle", mailbox = %mailbox.email, direction = "incoming");
        let run = async {
            match profile.incoming.protocol {
                IncomingProtocol::Imap => imap_in::run(self, mailbox, profile, lease, report).await,
                IncomingProtocol::Pop3 => pop3_in::run(self, mailbox, profile, lease, report).await,
            }
        };
        tracing::Instrument::instrument(run, span).await
    }

    /// Applies a cycle's outcome to the mailbox's lifecycle.
    async fn conclude(
        &self,
        mailbox: &Mailbox,
        profile: &ServerProfile,
        outcome: Result<()>,
        report: &mut CycleReport,
    ) {
        let sync = &self.inner.sync;
        let event = match &outcome {
            Ok(()) => Some(LifecycleEvent::SyncSucceeded {
                direction: Direction::Incoming,
            }),
            Err(e) => {
                report.error_code = Some(e.code());
                report.error_message = Some(e.message().to_owned());
                tracing::warn!(mailbox = %mailbox.email, code = %e.code(), "sync cycle failed: {}", e.message());
                match e.code() {
                    // The grant's own lifecycle already moved (needs re-consent).
                    ErrorCode::TokenRevoked
                    | ErrorCode::GrantMismatch
                    | ErrorCode::NotConnected => None,
                    // The host's sink failed, or the lease moved: not the mailbox's fault.
                    ErrorCode::SinkFailed | ErrorCode::Conflict => None,
                    code => Some(LifecycleEvent::SyncFailed {
                        direction: Direction::Incoming,
                        code,
                        reason: e.message().to_owned(),
                    }),
                }
            }
        };
        let _ = profile;
        if let Some(event) = event
            && let Err(e) = sync.record(&mailbox.id, &[event]).await
        {
            tracing::warn!(mailbox = %mailbox.email, "could not record the cycle's outcome: {e}");
        }
    }

    /// How long after a cycle the mailbox is due again: the engine's
    /// postponement or the profile's minimum polling interval, the longer.
    pub(crate) fn postpone_for(&self, profile: &ServerProfile) -> Duration {
        let polling =
            Duration::from_secs(u64::from(profile.processing.min_polling_interval_minutes) * 60);
        self.inner.options.postpone().max(polling)
    }

    /// Publishes progress.
    pub(crate) fn report_progress(&self, progress: SyncProgress) {
        let _ = self.inner.progress.send(progress);
    }

    /// Raises an alert on the mailbox (e.g. an oversized message).
    pub(crate) async fn alert(&self, mailbox: &Mailbox, code: ErrorCode, message: String) {
        if let Err(e) = self
            .inner
            .sync
            .add_alert(
                &mailbox.id,
                crate::model::AlertLevel::Warning,
                code.as_str(),
                message,
            )
            .await
        {
            tracing::warn!(mailbox = %mailbox.email, "could not add an alert: {e}");
        }
    }

    /// Hands a batch to the sink, bounded by the sink timeout; one outcome
    /// per message or `sink_failed`.
    pub(crate) async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> Result<Vec<DeliveryOutcome>> {
        let n = messages.len();
        let timeout = self.inner.options.sink_timeout();
        let outcome = tokio::time::timeout(timeout, self.inner.sink.deliver(messages)).await;
        match outcome {
            Err(_) => Err(Error::new(
                ErrorCode::SinkFailed,
                format!("the sink did not answer within {} s", timeout.as_secs()),
            )),
            Ok(Err(e)) => Err(Error::new(
                ErrorCode::SinkFailed,
                format!("the sink failed: {} [{}]", e.message(), e.code()),
            )),
            Ok(Ok(outcomes)) if outcomes.len() != n => Err(Error::new(
                ErrorCode::SinkFailed,
                format!(
                    "the sink returned {} outcomes for {n} messages; it must return one per message",
                    outcomes.len()
                ),
            )),
            Ok(Ok(outcomes)) => Ok(outcomes),
        }
    }
}

#[cfg(test)]
mod options_tests {
    use super::*;

    /// Every duration of the engine, at its type's largest value, is refused
    /// by validation (naming the field) rather than overflowing a deadline.
    #[test]
    fn the_largest_durations_are_refused() {
        for field in ["postpone_secs", "sink_timeout_secs", "lease_secs"] {
            let mut o = EngineOptions::default();
            match field {
                "postpone_secs" => o.postpone_secs = u32::MAX,
                "sink_timeout_secs" => o.sink_timeout_secs = u32::MAX,
                _ => o.lease_secs = u32::MAX,
            }
            let e = o.validate().unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation);
            assert_eq!(e.field(), Some(field), "{e}");
        }
        let o = EngineOptions {
            postpone_secs: crate::options::MAX_SECS,
            sink_timeout_secs: crate::options::MAX_SECS,
            lease_secs: crate::options::MAX_SECS,
            ..EngineOptions::default()
        };
        o.validate().unwrap();
        EngineOptions::default().validate().unwrap();
    }
}
