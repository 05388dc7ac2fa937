//! One outgoing cycle of one mailbox: the host's pending mail goes out over
//! SMTP, each message once.
//!
//! 1. Ask the host's [`Outbox`] for pending messages (nothing pending: no
//!    connection at all).
//! 2. For each, its record ([`OutgoingRecord`]) decides: sent, failed or
//!    unknown before → reported again, not sent; deferred and not due yet →
//!    left alone; `sending` → the process that sent it died on the wire
//!    (resent with the same Message-ID, or reported `unknown` with
//!    [`EngineOptions::unknown_after_crash`](super::EngineOptions::unknown_after_crash));
//!    otherwise it is sent.
//! 3. A message is prepared before anything connects: a Message-ID (its
//!    own for a raw message that has one, else `<uuid@mailbox-domain>`,
//!    kept in the record for every later attempt), the sender checked
//!    (`sender_not_allowed`), raw line endings normalised and line lengths
//!    checked, a composed message built with lettre.
//! 4. One authenticated connection serves the batch (within the account's
//!    and profile's connection budgets), reconnecting after a failure and
//!    when the access token it authenticated with has expired. For each
//!    message: record `sending` (compare-and-swap, fenced by the send
//!    lease), `MAIL`/`RCPT`/`DATA`, record the outcome, then report it.
//!    A message is recorded `sent` only after the server's `250` to the end
//!    of its data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use crate::MailSync;
use crate::checks::MailboxCredentials;
use crate::error::{Error, ErrorCode, Result};
use crate::lease::Lease;
use crate::lifecycle::{Direction, DirectionStatus, GrantStatus, LifecycleEvent, MailboxState};
use crate::model::{Mailbox, MailboxId, OutgoingDelivery, Secret, ServerProfile, Timestamp};
use crate::net::smtp::{SmtpClient, SmtpStage, Transaction};
use crate::net::{CredentialSource, Credentials, Steps};
use crate::store::LeaseKind;

use super::message::header_section;
use super::{
    ComposedMessage, CycleReport, Engine, OutboxCursor, OutgoingContent, OutgoingMessage,
    OutgoingRecord, OutgoingState, SendReport,
};

/// RFC 5322 §2.1.1: a line is at most 998 octets, without its CRLF.
const MAX_LINE: usize = 998;

/// Connections one cycle opens at most (the first and the reconnects).
const MAX_CONNECTS: u32 = 4;

/// Why outgoing mail of a mailbox is not sent now, or `None` when it may be.
pub(super) fn not_sendable(
    engine: &Engine,
    mailbox: &Mailbox,
    state: &MailboxState,
) -> Option<Error> {
    if engine.inner.outbox.is_none() {
        return Some(Error::new(
            ErrorCode::NotEnabled,
            "this engine has no outbox (create it with Engine::with_outbox)",
        ));
    }
    if mailbox.outgoing_delivery != OutgoingDelivery::ServerSideSync {
        return Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "mailbox {} does not use server-side sync for outgoing mail",
                mailbox.email
            ),
        ));
    }
    if let GrantStatus::NeedsReconsent { code, reason, .. } = &state.grant {
        return Some(Error::new(*code, reason.clone()));
    }
    match &state.outgoing.status {
        DirectionStatus::Enabled { .. } | DirectionStatus::Retrying { .. } => None,
        DirectionStatus::NotTested {} => Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "outgoing mail of {} is not enabled yet; run Test & Enable first",
                mailbox.email
            ),
        )),
        DirectionStatus::Disabled { code, reason, .. } => Some(Error::new(
            ErrorCode::NotEnabled,
            format!(
                "outgoing mail of {} was disabled ({code}: {reason}); fix it and run Test & Enable",
                mailbox.email
            ),
        )),
    }
}

/// When a mailbox's outgoing cycle is due next, as the store persists it
/// (see [`crate::store::sync_due_at`]): enabled → its outbox cursor's
/// `next_due` (none before its first outgoing cycle, see
/// [`Engine::seed_outgoing`]); retrying → its backoff. `None` when it is
/// not scheduled.
pub(crate) fn due_at(
    mailbox: &Mailbox,
    state: &MailboxState,
    cursor: Option<&OutboxCursor>,
) -> Option<Timestamp> {
    if mailbox.outgoing_delivery != OutgoingDelivery::ServerSideSync
        || matches!(state.grant, GrantStatus::NeedsReconsent { .. })
    {
        return None;
    }
    match &state.outgoing.status {
        DirectionStatus::Enabled { .. } => cursor.and_then(|c| c.next_due),
        DirectionStatus::Retrying { next_attempt, .. } => Some(*next_attempt),
        DirectionStatus::NotTested {} | DirectionStatus::Disabled { .. } => None,
    }
}

/// Whether a claimed cycle sends now: the direction is enabled and its
/// postponement has passed (or it never had an outgoing cycle), or it is
/// retrying and its backoff has passed.
pub(super) fn due_now(state: &MailboxState, cursor: Option<&OutboxCursor>, now: Timestamp) -> bool {
    match &state.outgoing.status {
        DirectionStatus::Enabled { .. } => {
            cursor.and_then(|c| c.next_due).is_none_or(|at| at <= now)
        }
        DirectionStatus::Retrying { next_attempt, .. } => *next_attempt <= now,
        DirectionStatus::NotTested {} | DirectionStatus::Disabled { .. } => false,
    }
}

impl Engine {
    /// One outgoing cycle: send lease, outbox, SMTP, lifecycle.
    pub(crate) async fn send_cycle(&self, mailbox: Mailbox) -> Result<CycleReport> {
        let started = Instant::now();
        let sync = &self.inner.sync;
        let mut report = CycleReport::new(&mailbox);
        let profile = sync.profile_of(&mailbox).await?;
        let Some(lease) = Lease::acquire(
            sync.store().clone(),
            sync.clock(),
            &mailbox.id,
            LeaseKind::Send,
            &self.inner.owner,
            self.inner.options.lease(),
        )
        .await?
        else {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "outgoing mail of {} is being sent elsewhere right now",
                    mailbox.email
                ),
            ));
        };
        let span =
            tracing::info_span!("sync_cycle", mailbox = %mailbox.email, direction = "outgoing");
        let outcome = tracing::Instrument::instrument(
            run(self, &mailbox, &profile, lease, &mut report),
            span,
        )
        .await;
        report.duration_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        self.conclude_outgoing(&mailbox, outcome, &mut report).await;
        Ok(report)
    }

    /// Applies an outgoing cycle's outcome to the mailbox's lifecycle.
    async fn conclude_outgoing(
        &self,
        mailbox: &Mailbox,
        outcome: Result<Concluded>,
        report: &mut CycleReport,
    ) {
        let (failure, worked) = match outcome {
            Ok(c) => {
                if let Some(e) = c.failure.as_ref().or(c.host_error.as_ref()) {
                    report.outgoing_error_code = Some(e.code());
                    report.outgoing_error_message = Some(e.message().to_owned());
                }
                (c.failure, c.worked)
            }
            Err(e) => {
                report.outgoing_error_code = Some(e.code());
                report.outgoing_error_message = Some(e.message().to_owned());
                (Some(e), false)
            }
        };
        let event = match &failure {
            None if worked => Some(LifecycleEvent::SyncSucceeded {
                direction: Direction::Outgoing,
            }),
            None => None,
            Some(e) => {
                tracing::warn!(mailbox = %mailbox.email, code = %e.code(), "outgoing cycle failed: {}", e.message());
                match e.code() {
                    // The grant's own lifecycle already moved (needs re-consent).
                    ErrorCode::TokenRevoked
                    | ErrorCode::GrantMismatch
                    | ErrorCode::NotConnected => None,
                    // The host's outbox failed, or the lease moved: not the mailbox's fault.
                    ErrorCode::SinkFailed | ErrorCode::Conflict => None,
                    code => Some(LifecycleEvent::SyncFailed {
                        direction: Direction::Outgoing,
                        code,
                        reason: e.message().to_owned(),
                    }),
                }
            }
        };
        if let Some(event) = event
            && let Err(e) = self.inner.sync.record(&mailbox.id, &[event]).await
        {
            tracing::warn!(mailbox = %mailbox.email, "could not record the outgoing cycle's outcome: {e}");
        }
    }

    /// Sends a message again whose fate was `unknown` (or that `failed`),
    /// with the same Message-ID: its record goes back to pending, and the
    /// next outgoing cycle sends it if the outbox still returns it.
    /// `conflict` while the mailbox's mail is being sent; `validation` for
    /// a message that was sent (it is never sent twice) or is not
    /// waiting for the host.
    pub async fn resend(&self, mailbox: &MailboxId, id: &str) -> Result<()> {
        let sync = &self.inner.sync;
        let record = sync.directory().get_mailbox(mailbox).await?;
        let Some(lease) = Lease::acquire(
            sync.store().clone(),
            sync.clock(),
            mailbox,
            LeaseKind::Send,
            &self.inner.owner,
            self.inner.options.lease(),
        )
        .await?
        else {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "outgoing mail of {} is being sent right now; try again",
                    record.email
                ),
            ));
        };
        let ids = [id.to_owned()];
        let result = async {
            let Some(mut stored) = sync
                .store()
                .get_outgoing(mailbox, &ids)
                .await?
                .into_iter()
                .next()
            else {
                return Err(Error::not_found("outgoing message", id));
            };
            match stored.state {
                OutgoingState::Unknown | OutgoingState::Failed => {}
                state => {
                    return Err(Error::validation(
                        "id",
                        format!(
                            "message {id} is {} (Message-ID <{}>); only unknown or failed messages are sent again",
                            state.as_str(),
                            stored.message_id
                        ),
                    ));
                }
            }
            let expected = stored.version;
            stored.state = OutgoingState::Pending;
            stored.next_attempt = None;
            stored.updated_at = sync.now();
            match sync
                .store()
                .put_outgoing(&stored, expected, lease.record())
                .await?
            {
                Some(_) => Ok(()),
                None => Err(Error::new(
                    ErrorCode::Conflict,
                    "the message's record changed meanwhile; reload it",
                )),
            }
        }
        .await;
        let _ = lease.release().await;
        result
    }
}

impl Engine {
    /// For an engine without an outbox that claimed a mailbox due only for
    /// outgoing mail: moves the outbox cursor's `next_due` on by the
    /// postponement, as a cycle with an empty outbox would (nothing else
    /// changes; a retrying direction keeps its backoff). Best effort: a
    /// mailbox whose send lease is held elsewhere is left to its holder.
    pub(super) async fn postpone_unsendable(&self, mailbox: &Mailbox, state: &MailboxState) {
        if !matches!(state.outgoing.status, DirectionStatus::Enabled { .. }) {
            return;
        }
        let sync = &self.inner.sync;
        let postponed = async {
            let profile = sync.profile_of(mailbox).await?;
            let Some(lease) = Lease::acquire(
                sync.store().clone(),
                sync.clock(),
                &mailbox.id,
                LeaseKind::Send,
                &self.inner.owner,
                self.inner.options.lease(),
            )
            .await?
            else {
                return Ok(());
            };
            let now = sync.now();
            let written = match sync.store().get_outbox_cursor(&mailbox.id).await {
                Ok(Some(cursor)) if cursor.next_due.is_some_and(|at| at <= now) => {
                    let mut next = cursor.clone();
                    next.next_due = Some(now.plus(self.postpone_for(&profile)));
                    sync.store()
                        .put_outbox_cursor(&next, cursor.version, lease.record())
                        .await
                        .map(|_| ())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            let _ = lease.release().await;
            written
        };
        if let Err(e) = postponed.await {
            tracing::warn!(mailbox = %mailbox.email, "could not postpone outgoing mail this engine cannot send: {e}");
        }
    }

    /// Starts the outgoing schedule of every mailbox that sends through
    /// server-side sync, has its outgoing direction enabled and never had
    /// an outgoing cycle: its outbox cursor is written due now, so the
    /// scheduler claims it ([`Engine::run_due`] and [`Engine::start`] call
    /// this; a mailbox that also takes mail in gets it with its first
    /// cycle anyway). Nothing without an outbox. A mailbox whose send
    /// lease is held elsewhere is left to its holder.
    pub async fn seed_outgoing(&self) -> Result<()> {
        if self.inner.outbox.is_none() {
            return Ok(());
        }
        let sync = &self.inner.sync;
        let store = sync.store();
        let scheduled: std::collections::HashSet<MailboxId> = store
            .list_outbox_cursors()
            .await?
            .into_iter()
            .map(|c| c.mailbox_id)
            .collect();
        for mailbox in sync.directory().list_mailboxes(None).await? {
            if mailbox.outgoing_delivery != OutgoingDelivery::ServerSideSync
                || scheduled.contains(&mailbox.id)
            {
                continue;
            }
            let Some(state) = store.get_state(&mailbox.id).await? else {
                continue;
            };
            if !matches!(state.outgoing.status, DirectionStatus::Enabled { .. })
                || matches!(state.grant, GrantStatus::NeedsReconsent { .. })
            {
                continue;
            }
            let Some(lease) = Lease::acquire(
                store.clone(),
                sync.clock(),
                &mailbox.id,
                LeaseKind::Send,
                &self.inner.owner,
                self.inner.options.lease(),
            )
            .await?
            else {
                continue;
            };
            let mut cursor = OutboxCursor::new(mailbox.id.clone());
            cursor.next_due = Some(sync.now());
            // `None`: another worker wrote it first, which is as good.
            let written = store.put_outbox_cursor(&cursor, 0, lease.record()).await;
            let _ = lease.release().await;
            written?;
        }
        Ok(())
    }
}

/// How a cycle ended, for the lifecycle.
#[derive(Debug, Default)]
struct Concluded {
    /// The mailbox's failure (transient: deferrals; permanent: the account).
    failure: Option<Error>,
    /// The host's outbox failed to take a report (not the mailbox's fault).
    host_error: Option<Error>,
    /// Something went to the server (or nothing was waiting): the direction works.
    worked: bool,
}

async fn run(
    engine: &Engine,
    mailbox: &Mailbox,
    profile: &ServerProfile,
    mut lease: Lease,
    report: &mut CycleReport,
) -> Result<Concluded> {
    let mut session = Session::new(engine, mailbox, profile);
    let result = cycle(engine, mailbox, profile, &mut lease, &mut session, report).await;
    session.close().await;
    let _ = lease.release().await;
    result
}

/// A message ready for the wire.
#[derive(Debug)]
struct Prepared {
    data: Vec<u8>,
    recipients: Vec<lettre::Address>,
}

/// What a message needs in this cycle.
enum Next {
    /// Report its recorded outcome again.
    Report(OutgoingRecord),
    /// Nothing (deferred, not due yet).
    Wait,
    /// Record `unknown` (it was on the wire when its sender died).
    MarkUnknown(OutgoingRecord),
    /// Send it (its record, if it has one).
    Send(Option<OutgoingRecord>),
}

struct Ctx<'a> {
    engine: &'a Engine,
    sync: &'a MailSync,
    mailbox: &'a Mailbox,
    lease: &'a mut Lease,
    report: &'a mut CycleReport,
    concluded: Concluded,
    cursor: OutboxCursor,
}

async fn cycle(
    engine: &Engine,
    mailbox: &Mailbox,
    profile: &ServerProfile,
    lease: &mut Lease,
    session: &mut Session<'_>,
    report: &mut CycleReport,
) -> Result<Concluded> {
    let sync = &engine.inner.sync;
    let options = &engine.inner.options;
    let Some(outbox) = engine.inner.outbox.clone() else {
        return Err(Error::new(
            ErrorCode::NotEnabled,
            "this engine has no outbox",
        ));
    };
    let store = sync.store().clone();
    let cursor = store
        .get_outbox_cursor(&mailbox.id)
        .await?
        .unwrap_or_else(|| OutboxCursor::new(mailbox.id.clone()));
    let limit = options.sends_per_cycle;
    let timeout = options.sink_timeout();
    let messages = match tokio::time::timeout(timeout, outbox.pending(&mailbox.id, limit)).await {
        Err(_) => {
            return Err(Error::new(
                ErrorCode::SinkFailed,
                format!("the outbox did not answer within {} s", timeout.as_secs()),
            ));
        }
        Ok(Err(e)) => {
            return Err(Error::new(
                ErrorCode::SinkFailed,
                format!("the outbox failed: {} [{}]", e.message(), e.code()),
            ));
        }
        Ok(Ok(m)) => m,
    };
    let full = messages.len() >= limit as usize;
    let mut seen = std::collections::HashSet::new();
    let messages: Vec<OutgoingMessage> = messages
        .into_iter()
        .filter(|m| seen.insert(m.id.clone()))
        .collect();
    let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    let mut records: HashMap<String, OutgoingRecord> = if ids.is_empty() {
        HashMap::new()
    } else {
        store
            .get_outgoing(&mailbox.id, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect()
    };
    let mut ctx = Ctx {
        engine,
        sync,
        mailbox,
        lease,
        report,
        concluded: Concluded::default(),
        cursor,
    };
    // The direction's retry is due: every deferred message is tried again
    // (their own `next_attempt` is the same moment, give or take).
    let retry_due = matches!(
        sync.directory().state(&mailbox.id).await?.outgoing.status,
        DirectionStatus::Retrying { next_attempt, .. } if next_attempt <= sync.now()
    );
    let mut waiting = false;
    let mut changed = false;
    // A connection failure that defers the rest of the batch.
    let mut unreachable: Option<Error> = None;
    let renew_every = options.lease() / 3;
    let mut renewed = Instant::now();
    for message in messages {
        if renewed.elapsed() >= renew_every {
            ctx.lease.renew().await?;
            renewed = Instant::now();
        }
        let record = records.remove(&message.id);
        let now = sync.now();
        let next = match record {
            Some(r) => match r.state {
                OutgoingState::Sent | OutgoingState::Failed | OutgoingState::Unknown => {
                    Next::Report(r)
                }
                OutgoingState::Deferred
                    if !retry_due && r.next_attempt.is_some_and(|at| at > now) =>
                {
                    Next::Wait
                }
                OutgoingState::Sending if options.unknown_after_crash => Next::MarkUnknown(r),
                _ => Next::Send(Some(r)),
            },
            None => Next::Send(None),
        };
        match next {
            Next::Wait => waiting = true,
            Next::Report(r) => {
                if let Some(report) = r.report() {
                    ctx.deliver_report(&outbox, report).await;
                }
            }
            Next::MarkUnknown(r) => {
                changed = true;
                ctx.mark_unknown(
                    &outbox,
                    r,
                    "the process sending it stopped after it went on the wire, before the server's \
                     answer was recorded: the server may or may not have accepted it",
                )
                .await?;
            }
            Next::Send(r) => {
                changed = true;
                let message_id = r.as_ref().map(|r| r.message_id.clone());
                let prepared = prepare(
                    mailbox,
                    &message,
                    message_id.as_deref(),
                    options.max_message_bytes,
                );
                let (prepared, message_id) = match prepared {
                    Ok(p) => p,
                    Err((e, message_id)) => {
                        ctx.finish_refused(&outbox, &message.id, r, message_id, e)
                            .await?;
                        continue;
                    }
                };
                if let Some(e) = &unreachable {
                    ctx.defer(&outbox, &message.id, r, &message_id, e, None)
                        .await?;
                    continue;
                }
                let deadline = session.data_deadline(prepared.data.len());
                let client = match session.ready().await {
                    Ok(c) => c,
                    Err(e) if e.is_transient() => {
                        ctx.defer(&outbox, &message.id, r, &message_id, &e, None)
                            .await?;
                        ctx.concluded.failure.get_or_insert(e.clone_error());
                        unreachable = Some(e);
                        continue;
                    }
                    // Credentials (revoked grant, auth rejected), TLS, …:
                    // the messages stay as they are.
                    Err(e) => {
                        ctx.concluded.failure = Some(e);
                        break;
                    }
                };
                let record = ctx.mark_sending(&message.id, r, &message_id).await?;
                let from = mailbox_address(mailbox).map_err(|(e, _)| e)?;
                let outcome = client
                    .transaction(
                        &from,
                        &prepared.recipients,
                        &prepared.data,
                        options.allow_partial_send,
                        deadline,
                    )
                    .await;
                if ctx.after_transaction(&outbox, record, outcome).await? {
                    break;
                }
            }
        }
    }
    if !waiting && ctx.concluded.failure.is_none() {
        // Nothing waits for a later attempt: the direction works.
        ctx.concluded.worked = true;
    }
    // The cursor: counters and when the next cycle is due.
    let now = sync.now();
    let postpone = engine.postpone_for(profile);
    let mut next = ctx.cursor.clone();
    next.last_cycle_at = Some(now);
    next.next_due = Some(if full && changed {
        now
    } else {
        now.plus(postpone)
    });
    match store
        .put_outbox_cursor(&next, ctx.cursor.version, ctx.lease.record())
        .await?
    {
        Some(_) => {}
        None => {
            return Err(Error::new(
                ErrorCode::Conflict,
                "the mailbox's send lease or outbox cursor was taken over by another worker; this cycle stops",
            ));
        }
    }
    Ok(ctx.concluded)
}

trait CloneError {
    fn clone_error(&self) -> Error;
}

impl CloneError for Error {
    fn clone_error(&self) -> Error {
        let mut e = Error::new(self.code(), self.message().to_owned());
        if let Some(f) = self.field() {
            e.set_field(f);
        }
        e
    }
}

fn conflict() -> Error {
    Error::new(
        ErrorCode::Conflict,
        "the mailbox's send lease or a message's record was taken over by another worker; this cycle stops",
    )
}

impl Ctx<'_> {
    fn now(&self) -> Timestamp {
        self.sync.now()
    }

    fn new_record(&self, id: &str, message_id: &str) -> OutgoingRecord {
        let now = self.now();
        OutgoingRecord {
            mailbox_id: self.mailbox.id.clone(),
            id: id.to_owned(),
            message_id: message_id.to_owned(),
            state: OutgoingState::Pending,
            attempts: 0,
            next_attempt: None,
            code: None,
            smtp_code: None,
            reply: None,
            refused: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    /// Writes `record` (compare-and-swap on its version, fenced by the send
    /// lease); returns it with its new version.
    async fn write(&mut self, mut record: OutgoingRecord) -> Result<OutgoingRecord> {
        record.updated_at = self.now();
        let expected = record.version;
        match self
            .sync
            .store()
            .put_outgoing(&record, expected, self.lease.record())
            .await?
        {
            Some(version) => {
                record.version = version;
                Ok(record)
            }
            None => Err(conflict()),
        }
    }

    /// Hands a report to the host (bounded by the sink timeout); a failure
    /// is remembered, not fatal: the record holds the outcome and the
    /// report is made again while the host returns the message.
    async fn deliver_report(&mut self, outbox: &Arc<dyn super::Outbox>, report: SendReport) {
        let timeout = self.engine.inner.options.sink_timeout();
        let id = report.id.clone();
        let failed = match tokio::time::timeout(timeout, outbox.report(report)).await {
            Err(_) => Some(format!(
                "the outbox did not take the report of {id} within {} s",
                timeout.as_secs()
            )),
            Ok(Err(e)) => Some(format!(
                "the outbox failed to take the report of {id}: {} [{}]",
                e.message(),
                e.code()
            )),
            Ok(Ok(())) => None,
        };
        if let Some(message) = failed {
            tracing::warn!(mailbox = %self.mailbox.email, "{message}");
            self.concluded
                .host_error
                .get_or_insert(Error::new(ErrorCode::SinkFailed, message));
        }
    }

    async fn finish(
        &mut self,
        outbox: &Arc<dyn super::Outbox>,
        record: OutgoingRecord,
    ) -> Result<()> {
        let record = self.write(record).await?;
        match record.state {
            OutgoingState::Sent => {
                self.report.sent += 1;
                self.cursor.sent += 1;
            }
            OutgoingState::Failed => {
                self.report.send_failed += 1;
                self.cursor.failed += 1;
            }
            OutgoingState::Deferred => self.report.send_deferred += 1,
            OutgoingState::Unknown => self.report.send_unknown += 1,
            OutgoingState::Pending | OutgoingState::Sending => {}
        }
        if let Some(report) = record.report() {
            self.deliver_report(outbox, report).await;
        }
        Ok(())
    }

    /// Refused before connecting (sender, lines, size, addresses).
    async fn finish_refused(
        &mut self,
        outbox: &Arc<dyn super::Outbox>,
        id: &str,
        record: Option<OutgoingRecord>,
        message_id: String,
        e: Error,
    ) -> Result<()> {
        let mut record = record.unwrap_or_else(|| self.new_record(id, &message_id));
        record.state = OutgoingState::Failed;
        record.code = Some(e.code());
        record.smtp_code = None;
        record.reply = Some(e.message().to_owned());
        record.next_attempt = None;
        self.finish(outbox, record).await
    }

    async fn defer(
        &mut self,
        outbox: &Arc<dyn super::Outbox>,
        id: &str,
        record: Option<OutgoingRecord>,
        message_id: &str,
        e: &Error,
        smtp_code: Option<u16>,
    ) -> Result<()> {
        let mut record = record.unwrap_or_else(|| self.new_record(id, message_id));
        let interval = self.sync.options().failure_policy.interval();
        record.state = OutgoingState::Deferred;
        record.code = Some(e.code());
        record.smtp_code = smtp_code;
        record.reply = Some(e.message().to_owned());
        record.next_attempt = Some(self.now().plus(interval));
        self.finish(outbox, record).await
    }

    async fn mark_unknown(
        &mut self,
        outbox: &Arc<dyn super::Outbox>,
        mut record: OutgoingRecord,
        reason: &str,
    ) -> Result<()> {
        record.state = OutgoingState::Unknown;
        record.code = None;
        record.smtp_code = None;
        record.reply = Some(reason.to_owned());
        record.next_attempt = None;
        self.finish(outbox, record).await
    }

    /// Records the attempt before anything goes on the wire: after a crash
    /// the record says the message may have gone out.
    async fn mark_sending(
        &mut self,
        id: &str,
        record: Option<OutgoingRecord>,
        message_id: &str,
    ) -> Result<OutgoingRecord> {
        let mut record = record.unwrap_or_else(|| self.new_record(id, message_id));
        record.state = OutgoingState::Sending;
        record.attempts += 1;
        self.write(record).await
    }

    /// Records and reports a transaction's outcome; `true`: stop the cycle
    /// (the account itself was refused).
    async fn after_transaction(
        &mut self,
        outbox: &Arc<dyn super::Outbox>,
        mut record: OutgoingRecord,
        outcome: Transaction,
    ) -> Result<bool> {
        let id = record.id.clone();
        let message_id = record.message_id.clone();
        match outcome {
            Transaction::Accepted { reply, refused } => {
                record.state = OutgoingState::Sent;
                record.code = None;
                record.smtp_code = reply.get(..3).and_then(|c| c.parse().ok());
                record.reply = Some(reply);
                record.refused = refused;
                record.next_attempt = None;
                self.finish(outbox, record).await?;
            }
            Transaction::Refused {
                stage: SmtpStage::MailFrom,
                code: code @ 500..=u16::MAX,
                reply,
                ..
            } => {
                // The envelope sender is the mailbox itself: a refusal here
                // is about the account (sender not allowed, sending limit,
                // policy). The message is not at fault and stays pending.
                record.state = OutgoingState::Pending;
                record.code = Some(ErrorCode::SendRejected);
                record.smtp_code = Some(code);
                record.reply = Some(reply.clone());
                self.write(record).await?;
                self.concluded.failure = Some(Error::new(
                    ErrorCode::SendRejected,
                    format!(
                        "the SMTP server refused {} as a sender ({code}): {reply}",
                        self.mailbox.email
                    ),
                ));
                return Ok(true);
            }
            Transaction::Refused {
                code: code @ 500..=u16::MAX,
                reply,
                refused,
                ..
            } => {
                record.state = OutgoingState::Failed;
                record.code = Some(ErrorCode::SendRejected);
                record.smtp_code = Some(code);
                record.reply = Some(reply);
                record.refused = refused;
                record.next_attempt = None;
                self.finish(outbox, record).await?;
            }
            Transaction::Refused {
                code,
                reply,
                refused,
                ..
            } => {
                let e = Error::new(
                    ErrorCode::SendDeferred,
                    format!("the SMTP server deferred the message ({code}): {reply}"),
                );
                record.refused = refused;
                self.defer(outbox, &id, Some(record), &message_id, &e, Some(code))
                    .await?;
                self.concluded.failure.get_or_insert(e);
            }
            Transaction::Unsendable(e) => {
                self.finish_refused(outbox, &id, Some(record), message_id, e)
                    .await?;
            }
            Transaction::Broken { error, after_data } => {
                if after_data && self.engine.inner.options.unknown_after_crash {
                    let reason = format!(
                        "the connection was lost after the message went out, before the server answered: \
                         the server may or may not have accepted it ({})",
                        error.message()
                    );
                    self.mark_unknown(outbox, record, &reason).await?;
                } else {
                    self.defer(outbox, &id, Some(record), &message_id, &error, None)
                        .await?;
                }
                self.concluded.failure.get_or_insert(error);
            }
        }
        Ok(false)
    }
}

/// The mailbox's own address, for `MAIL FROM` and as the only allowed `From`.
fn mailbox_address(mailbox: &Mailbox) -> std::result::Result<lettre::Address, (Error, String)> {
    mailbox.email.parse::<lettre::Address>().map_err(|e| {
        (
            Error::validation(
                "email",
                format!("{} cannot be used as a sender: {e}", mailbox.email),
            ),
            String::new(),
        )
    })
}

/// A new Message-ID (without angle brackets) in the mailbox's domain.
fn new_message_id(mailbox: &Mailbox) -> String {
    let domain = mailbox
        .email
        .rsplit_once('@')
        .map_or("localhost", |(_, d)| d);
    format!("{}@{domain}", uuid::Uuid::new_v4().simple())
}

fn sender_not_allowed(mailbox: &Mailbox, from: &str) -> Error {
    Error::new(
        ErrorCode::SenderNotAllowed,
        format!(
            "the message's sender {from} is not the mailbox's address {}; it was not sent",
            mailbox.email
        ),
    )
}

/// Builds what goes on the wire, before anything connects; on failure the
/// error and the Message-ID to record.
fn prepare(
    mailbox: &Mailbox,
    message: &OutgoingMessage,
    message_id: Option<&str>,
    max_bytes: u32,
) -> std::result::Result<(Prepared, String), (Error, String)> {
    let assigned = message_id
        .map(str::to_owned)
        .unwrap_or_else(|| new_message_id(mailbox));
    let prepared = match &message.content {
        OutgoingContent::Raw { raw, recipients } => {
            prepare_raw(mailbox, raw, recipients, &assigned)
        }
        OutgoingContent::Composed { message } => prepare_composed(mailbox, message, &assigned)
            .map(|p| (p, assigned.clone()))
            .map_err(|e| (e, assigned.clone())),
    }?;
    if prepared.0.data.len() > max_bytes as usize {
        return Err((
            Error::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "the message is {} bytes; the engine sends at most {max_bytes}",
                    prepared.0.data.len()
                ),
            ),
            prepared.1,
        ));
    }
    Ok(prepared)
}

fn parse_address(field: &str, address: &str) -> Result<lettre::Address> {
    address.trim().parse::<lettre::Address>().map_err(|e| {
        Error::validation(
            field,
            format!("'{address}' is not a valid email address: {e}"),
        )
    })
}

fn prepare_composed(
    mailbox: &Mailbox,
    message: &ComposedMessage,
    message_id: &str,
) -> Result<Prepared> {
    use lettre::message::header::ContentType;
    use lettre::message::{Attachment, Mailbox as Lettre, MultiPart, SinglePart};

    let own = mailbox_address(mailbox).map_err(|(e, _)| e)?;
    let from_name = match &message.from {
        Some(from) if !from.address.trim().eq_ignore_ascii_case(&mailbox.email) => {
            return Err(sender_not_allowed(mailbox, &from.address));
        }
        Some(from) => from.name.clone(),
        None => None,
    };
    let mut builder = lettre::Message::builder()
        .from(Lettre::new(from_name, own))
        .subject(message.subject.clone())
        .message_id(Some(format!("<{message_id}>")));
    let mut recipients = Vec::new();
    for (field, list) in [
        ("to", &message.to),
        ("cc", &message.cc),
        ("bcc", &message.bcc),
    ] {
        for a in list {
            let address = parse_address(field, &a.address)?;
            recipients.push(address.clone());
            let mailbox = Lettre::new(a.name.clone(), address);
            builder = match field {
                "to" => builder.to(mailbox),
                "cc" => builder.cc(mailbox),
                _ => builder.bcc(mailbox),
            };
        }
    }
    if recipients.is_empty() {
        return Err(Error::validation("to", "the message has no recipient"));
    }
    if let Some(id) = &message.in_reply_to {
        builder = builder.in_reply_to(format!("<{}>", id.trim_matches(['<', '>'])));
    }
    if !message.references.is_empty() {
        let refs: Vec<String> = message
            .references
            .iter()
            .map(|r| format!("<{}>", r.trim_matches(['<', '>'])))
            .collect();
        builder = builder.references(refs.join(" "));
    }
    enum Body {
        Single(SinglePart),
        Multi(MultiPart),
    }
    let body = match (&message.text, &message.html) {
        (Some(text), Some(html)) => Body::Multi(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        )),
        (None, Some(html)) => Body::Single(SinglePart::html(html.clone())),
        (Some(text), None) => Body::Single(SinglePart::plain(text.clone())),
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    };
    let built = if message.attachments.is_empty() {
        match body {
            Body::Single(part) => builder.singlepart(part),
            Body::Multi(part) => builder.multipart(part),
        }
    } else {
        let mut mixed = match body {
            Body::Single(part) => MultiPart::mixed().singlepart(part),
            Body::Multi(part) => MultiPart::mixed().multipart(part),
        };
        for a in &message.attachments {
            let content_type = ContentType::parse(&a.content_type).map_err(|e| {
                Error::validation(
                    "attachments.content_type",
                    format!("'{}' is not a MIME type: {e}", a.content_type),
                )
            })?;
            mixed = mixed.singlepart(
                Attachment::new(a.name.clone()).body(a.content.0.clone(), content_type),
            );
        }
        builder.multipart(mixed)
    }
    .map_err(|e| Error::validation("message", format!("cannot build the message: {e}")))?;
    Ok(Prepared {
        data: built.formatted(),
        recipients,
    })
}

fn prepare_raw(
    mailbox: &Mailbox,
    raw: &[u8],
    recipients: &[String],
    assigned: &str,
) -> std::result::Result<(Prepared, String), (Error, String)> {
    let data = crate::net::smtp::normalize_line_endings(raw).into_owned();
    let header = header_section(&data);
    let parsed = mail_parser::MessageParser::default().parse_headers(header);
    let own_id = parsed
        .as_ref()
        .and_then(|m| m.message_id())
        .map(str::to_owned);
    let message_id = own_id.clone().unwrap_or_else(|| assigned.to_owned());
    let fail = |e: Error| (e, message_id.clone());
    if let Some((n, len)) = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .enumerate()
        .find(|(_, len)| *len > MAX_LINE)
    {
        return Err(fail(Error::validation(
            "raw",
            format!(
                "line {} of the message is {len} octets long; RFC 5322 allows {MAX_LINE} (encode long \
                 lines, e.g. as quoted-printable)",
                n + 1
            ),
        )));
    }
    let Some(parsed) = parsed else {
        return Err(fail(Error::validation("raw", "the message has no header")));
    };
    let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address.as_ref().map(|s| s.to_string()))
                .collect()
        })
        .unwrap_or_default()
    };
    let from = addresses(parsed.from());
    if from.is_empty() {
        return Err(fail(Error::validation(
            "raw",
            "the message has no From header",
        )));
    }
    for sender in from.iter().chain(addresses(parsed.sender()).iter()) {
        if !sender.trim().eq_ignore_ascii_case(&mailbox.email) {
            return Err(fail(sender_not_allowed(mailbox, sender)));
        }
    }
    let listed: Vec<String> = if recipients.is_empty() {
        let mut all = addresses(parsed.to());
        all.extend(addresses(parsed.cc()));
        all.extend(addresses(parsed.bcc()));
        all
    } else {
        recipients.to_vec()
    };
    let mut envelope = Vec::with_capacity(listed.len());
    for r in &listed {
        envelope.push(parse_address("recipients", r).map_err(fail)?);
    }
    if envelope.is_empty() {
        return Err(fail(Error::validation(
            "recipients",
            "the message has no recipient",
        )));
    }
    drop(parsed);
    let mut data = without_header(&data, "bcc");
    if own_id.is_none() {
        let mut with_id = format!("Message-ID: <{message_id}>\r\n").into_bytes();
        with_id.extend_from_slice(&data);
        data = with_id;
    }
    Ok((
        Prepared {
            data,
            recipients: envelope,
        },
        message_id,
    ))
}

/// The message without the header fields named `name` (with their folded
/// lines). The data has CRLF line endings.
fn without_header(data: &[u8], name: &str) -> Vec<u8> {
    let header_len = header_section(data).len();
    let mut out = Vec::with_capacity(data.len());
    let mut skipping = false;
    let mut rest = &data[..header_len];
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        let line = &rest[..end];
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            skipping = line
                .iter()
                .position(|b| *b == b':')
                .is_some_and(|i| line[..i].trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        rest = &rest[end..];
    }
    out.extend_from_slice(&data[header_len..]);
    out
}

/// Credentials for sending: the mailbox's current access token, with its
/// expiry, so a long batch reconnects with a fresh one.
struct SendCredentials {
    sync: MailSync,
    mailbox: MailboxId,
    email: String,
    oauth: bool,
    passwords: MailboxCredentials,
    last: Mutex<Option<(Secret, Option<Timestamp>)>>,
}

impl SendCredentials {
    /// When the token the last connection used expires.
    fn expires_at(&self) -> Option<Timestamp> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|(_, at)| *at)
    }
}

#[async_trait::async_trait]
impl CredentialSource for SendCredentials {
    async fn credentials(&self, force_fresh: bool) -> Result<Credentials> {
        if !self.oauth {
            return self.passwords.credentials(force_fresh).await;
        }
        let rejected = if force_fresh {
            self.last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(s, _)| s.clone())
        } else {
            None
        };
        let token = self
            .sync
            .obtain_access_token(&self.mailbox, rejected.as_ref())
            .await?;
        let secret = token.token.secret().clone();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((secret.clone(), token.expires_at));
        Ok(Credentials::OAuth {
            user: self.email.clone(),
            access_token: secret,
        })
    }
}

/// The batch's SMTP connection: opened when the first message needs it,
/// within the account's and the profile's connection budgets; opened again
/// after a failure or once its token has expired.
struct Session<'a> {
    engine: &'a Engine,
    profile: &'a ServerProfile,
    creds: SendCredentials,
    client: Option<SmtpClient>,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    connects: u32,
}

impl<'a> Session<'a> {
    fn new(engine: &'a Engine, mailbox: &'a Mailbox, profile: &'a ServerProfile) -> Self {
        let sync = engine.inner.sync.clone();
        Session {
            engine,
            profile,
            creds: SendCredentials {
                sync: sync.clone(),
                mailbox: mailbox.id.clone(),
                email: mailbox.email.clone(),
                oauth: profile.authentication.is_oauth(),
                passwords: MailboxCredentials::new(sync, mailbox.clone(), profile.clone()),
                last: Mutex::new(None),
            },
            client: None,
            permits: None,
            connects: 0,
        }
    }

    /// How long sending `size` bytes and reading the answer may take.
    fn data_deadline(&self, size: usize) -> Duration {
        let timeout = self.profile.processing.connection_timeout();
        let rate = u64::from(self.engine.inner.options.min_throughput_bytes_per_sec);
        timeout + Duration::from_secs(size as u64 / rate)
    }

    /// Whether the token the connection authenticated with has expired.
    fn outlived(&self) -> bool {
        let now = self.engine.inner.sync.now();
        self.creds
            .expires_at()
            .is_some_and(|at| at.unix_millis() <= now.unix_millis())
    }

    /// The connection, (re)opened if needed.
    async fn ready(&mut self) -> Result<&mut SmtpClient> {
        let reopen = match &self.client {
            Some(c) => c.is_broken() || self.outlived(),
            None => true,
        };
        if reopen {
            if let Some(mut old) = self.client.take()
                && !old.is_broken()
            {
                old.quit().await;
            }
            if self.connects >= MAX_CONNECTS {
                return Err(Error::new(
                    ErrorCode::ServerUnavailable,
                    format!(
                        "the SMTP connection failed {} times in this cycle; the rest waits for the next",
                        self.connects
                    ),
                ));
            }
            self.connects += 1;
            if self.permits.is_none() {
                self.permits = Some(self.acquire().await?);
            }
            self.client = Some(self.connect().await?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no SMTP connection"))
    }

    async fn acquire(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let inner = &self.engine.inner;
        let account = Engine::semaphore(
            &inner.accounts,
            &self.creds.email,
            inner.options.connections_per_account,
        );
        let per_profile = Engine::semaphore(
            &inner.profiles,
            self.profile.id.as_str(),
            u32::from(self.profile.processing.max_concurrent_connections.max(1)),
        );
        let closed = |_| Error::new(ErrorCode::Internal, "connection budget closed");
        let account = account.acquire_owned().await.map_err(closed)?;
        let per_profile = per_profile.acquire_owned().await.map_err(closed)?;
        Ok((account, per_profile))
    }

    /// Connects and authenticates; a refused token is replaced once.
    async fn connect(&self) -> Result<SmtpClient> {
        let sync = &self.engine.inner.sync;
        let options = sync.connect_options(self.profile)?;
        let endpoint = &self.profile.outgoing;
        let creds = self.creds.credentials(false).await?;
        let mut steps = Steps::new("SMTP", options.timeout);
        match SmtpClient::connect(endpoint, &options, &creds, None, &mut steps).await {
            Ok(c) => Ok(c),
            Err(e) if e.error.code() == ErrorCode::AuthRejected && creds.is_oauth() => {
                let fresh = self.creds.credentials(true).await?;
                let mut steps = Steps::new("SMTP", options.timeout);
                SmtpClient::connect(endpoint, &options, &fresh, None, &mut steps)
                    .await
                    .map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    async fn close(&mut self) {
        if let Some(mut c) = self.client.take()
            && !c.is_broken()
        {
            c.quit().await;
        }
        self.permits = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MailboxSpec;

    fn mailbox() -> Mailbox {
        Mailbox::from_spec(
            MailboxSpec::user("alice@example.com"),
            None,
            Timestamp::from_unix_millis(0),
        )
        .unwrap()
    }

    fn raw(text: &str) -> OutgoingMessage {
        OutgoingMessage {
            id: "m1".into(),
            content: OutgoingContent::Raw {
                raw: text.as_bytes().to_vec().into(),
                recipients: Vec::new(),
            },
        }
    }

    #[test]
    fn raw_messages_get_crlf_a_message_id_and_lose_bcc() {
        let m = raw(
            "From: Alice <ALICE@example.com>\nTo: bob@example.org\nBcc: secret@example.org,\n \
             also@example.org\nSubject: hi\n\nline one\r.\nbody\n",
        );
        let (p, id) = prepare(&mailbox(), &m, None, 1 << 20).unwrap();
        assert!(id.ends_with("@example.com"), "{id}");
        let text = String::from_utf8(p.data).unwrap();
        assert!(
            text.starts_with(&format!("Message-ID: <{id}>\r\n")),
            "{text}"
        );
        assert!(!text.contains("Bcc") && !text.contains("also@"), "{text}");
        assert!(text.contains("\r\nline one\r\n.\r\nbody\r\n"), "{text:?}");
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
        let rcpts: Vec<String> = p.recipients.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            rcpts,
            ["bob@example.org", "secret@example.org", "also@example.org"]
        );
        // A message with its own Message-ID keeps it; the record's is reused.
        let own = raw("Message-ID: <own@x>\r\nFrom: alice@example.com\r\nTo: b@x.org\r\n\r\nx");
        assert_eq!(
            prepare(&mailbox(), &own, Some("other@y"), 1 << 20)
                .unwrap()
                .1,
            "own@x"
        );
        let (p, id) = prepare(
            &mailbox(),
            &raw("From: alice@example.com\r\nTo: b@x.org\r\n\r\nx"),
            Some("kept@example.com"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(id, "kept@example.com");
        assert!(p.data.starts_with(b"Message-ID: <kept@example.com>\r\n"));
    }

    #[test]
    fn raw_messages_are_checked_before_connecting() {
        let code = |text: &str| {
            prepare(&mailbox(), &raw(text), None, 1 << 20)
                .unwrap_err()
                .0
                .code()
        };
        assert_eq!(
            code("From: mallory@example.com\r\nTo: b@x.org\r\n\r\nx"),
            ErrorCode::SenderNotAllowed
        );
        assert_eq!(
            code("From: alice@example.com\r\nSender: m@example.com\r\nTo: b@x.org\r\n\r\nx"),
            ErrorCode::SenderNotAllowed
        );
        assert_eq!(code("To: b@x.org\r\n\r\nx"), ErrorCode::Validation);
        assert_eq!(
            code("From: alice@example.com\r\n\r\nx"),
            ErrorCode::Validation
        );
        let long = format!(
            "From: alice@example.com\r\nTo: b@x.org\r\n\r\n{}\r\n",
            "a".repeat(999)
        );
        let (e, _) = prepare(&mailbox(), &raw(&long), None, 1 << 20).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.message().contains("line 4"), "{}", e.message());
        let ok = format!(
            "From: alice@example.com\r\nTo: b@x.org\r\n\r\n{}\r\n",
            "a".repeat(998)
        );
        assert!(prepare(&mailbox(), &raw(&ok), None, 1 << 20).is_ok());
        assert_eq!(
            prepare(&mailbox(), &raw(&ok), None, 1024)
                .unwrap_err()
                .0
                .code(),
            ErrorCode::MessageTooLarge
        );
    }

    #[test]
    fn composed_messages_are_built_and_checked() {
        let mut c = ComposedMessage {
            to: vec![super::super::MailAddress {
                name: Some("Bob".into()),
                address: "bob@example.org".into(),
            }],
            bcc: vec![super::super::MailAddress {
                name: None,
                address: "hidden@example.org".into(),
            }],
            subject: "Réunion".into(),
            text: Some("hello".into()),
            html: Some("<p>hello</p>".into()),
            attachments: vec![super::super::OutgoingAttachment {
                name: "a.txt".into(),
                content_type: "text/plain".into(),
                content: b"attached".to_vec().into(),
            }],
            in_reply_to: Some("root@crm.example.com".into()),
            references: vec!["root@crm.example.com".into()],
            ..ComposedMessage::default()
        };
        let m = |c: &ComposedMessage| OutgoingMessage {
            id: "c1".into(),
            content: OutgoingContent::Composed { message: c.clone() },
        };
        let (p, id) = prepare(&mailbox(), &m(&c), Some("fixed@example.com"), 1 << 20).unwrap();
        assert_eq!(id, "fixed@example.com");
        let text = String::from_utf8(p.data).unwrap();
        assert!(text.contains("Message-ID: <fixed@example.com>"), "{text}");
        assert!(
            text.contains("In-Reply-To: <root@crm.example.com>"),
            "{text}"
        );
        assert!(text.contains("multipart/mixed") && text.contains("multipart/alternative"));
        assert!(!text.contains("hidden@"), "{text}");
        assert_eq!(p.recipients.len(), 2);
        c.from = Some(super::super::MailAddress {
            name: None,
            address: "someone@else.example".into(),
        });
        assert_eq!(
            prepare(&mailbox(), &m(&c), None, 1 << 20)
                .unwrap_err()
                .0
                .code(),
            ErrorCode::SenderNotAllowed
        );
        c.from = None;
        c.to.clear();
        c.bcc.clear();
        assert_eq!(
            prepare(&mailbox(), &m(&c), None, 1 << 20)
                .unwrap_err()
                .0
                .code(),
            ErrorCode::Validation
        );
    }
}
