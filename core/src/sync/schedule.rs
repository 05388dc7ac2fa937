//! Which mailboxes are due, and the loop that syncs them.
//!
//! A mailbox is due when its incoming direction is enabled and the
//! postponement after its last cycle has passed, or when it is retrying
//! and its backoff (`next_attempt`, persisted in its lifecycle state) has
//! passed. The store keeps that due time with each mailbox (written with
//! every change of the mailbox, its state or its cursor), and an engine
//! claims due mailboxes from it, oldest due first, into their sync leases
//! ([`crate::store::LeaseStore::claim_due`]; PostgreSQL: `FOR UPDATE SKIP
//! LOCKED`), at most [`super::EngineOptions::workers`] at a time: so a
//! mailbox syncs in one place at a time, also across processes, and
//! engines sharing a store divide the due mailboxes between them. A cycle
//! renews its lease while it works and runs within its account's and
//! profile's connection budgets.
//!
//! With an outbox ([`Engine::with_outbox`]), the outgoing direction is
//! scheduled by the same rules (its status, its outbox cursor's
//! `next_due`), and the persisted due time is the earlier of the two
//! directions'. A claimed cycle runs each direction that is due: outgoing
//! first (its messages written under the mailbox's send lease, while the
//! claimed sync lease is kept), then incoming. A mailbox gets its outgoing
//! schedule with its first outgoing cycle; [`Engine::seed_outgoing`]
//! starts it for mailboxes that have none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Result;
use crate::lifecycle::{DirectionStatus, GrantStatus, MailboxState};
use crate::model::{IncomingDelivery, Mailbox, MailboxId, Timestamp};
use crate::store::LeaseRecord;

use super::{CycleReport, Engine, SyncCursor};

/// When a mailbox is due next, in either direction (see
/// [`crate::store::sync_due_at`]); `None` when neither is scheduled.
pub(crate) fn due_at(
    mailbox: &Mailbox,
    state: &MailboxState,
    cursor: Option<&SyncCursor>,
    outbox: Option<&super::OutboxCursor>,
) -> Option<Timestamp> {
    let incoming = incoming_due_at(mailbox, state, cursor);
    let outgoing = super::outgoing::due_at(mailbox, state, outbox);
    match (incoming, outgoing) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When a mailbox's incoming mail is due next; `None` when it is not
/// scheduled (disabled, not tested, needing re-consent, or not using
/// server-side sync).
pub(crate) fn incoming_due_at(
    mailbox: &Mailbox,
    state: &MailboxState,
    cursor: Option<&SyncCursor>,
) -> Option<Timestamp> {
    if !matches!(
        mailbox.incoming_delivery,
        IncomingDelivery::ServerSideSync | IncomingDelivery::ForwardMailbox
    ) || matches!(state.grant, GrantStatus::NeedsReconsent { .. })
    {
        return None;
    }
    match &state.incoming.status {
        DirectionStatus::Enabled { since } => {
            Some(cursor.and_then(|c| c.next_due).unwrap_or(*since))
        }
        DirectionStatus::Retrying { next_attempt, .. } => Some(*next_attempt),
        DirectionStatus::NotTested {} | DirectionStatus::Disabled { .. } => None,
    }
}

impl Engine {
    /// Claims the sync leases of up to `limit` mailboxes due now, oldest
    /// due first, leaving out `skip` and whatever another worker holds or is
    /// claiming at this moment.
    async fn claim(&self, limit: usize, skip: &[MailboxId]) -> Result<Vec<LeaseRecord>> {
        let sync = &self.inner.sync;
        let now = sync.now();
        let claimed = sync
            .store()
            .claim_due(
                &self.inner.owner,
                now,
                now.plus(self.inner.options.lease()),
                limit,
                skip,
            )
            .await?;
        crate::metrics::leases_claimed(claimed.len());
        Ok(claimed)
    }

    /// How long until a mailbox may become claimable, at most `max_idle`
    /// (at least 50 ms, so a mailbox that cannot start does not spin).
    async fn idle_for(&self, max_idle: Duration) -> Duration {
        let wait = match self.inner.sync.store().next_due().await {
            Ok(Some(at)) => at.since(self.inner.sync.now()).min(max_idle),
            Ok(None) => max_idle,
            Err(e) => {
                tracing::warn!("could not read when the next mailbox is due: {e}");
                max_idle
            }
        };
        wait.max(Duration::from_millis(50))
    }

    /// Syncs every mailbox that is due now, once, at most `workers` at a
    /// time; returns one report per mailbox synced. Mailboxes are claimed
    /// from the store as workers free up ([`crate::store::LeaseStore::claim_due`]),
    /// so engines in other processes sharing the store take the others; a
    /// mailbox another worker holds is left to it.
    /// Queued token revocations that are due are sent meanwhile
    /// ([`crate::Connections::retry_revocations`]).
    pub async fn run_due(&self) -> Result<Vec<CycleReport>> {
        let revoking = tokio::spawn(retry_revocations(self.inner.sync.clone()));
        let reports = self.run_due_cycles().await;
        let _ = revoking.await;
        reports
    }

    async fn run_due_cycles(&self) -> Result<Vec<CycleReport>> {
        let workers = self.inner.options.workers as usize;
        let mut tasks = tokio::task::JoinSet::new();
        let mut taken: Vec<MailboxId> = Vec::new();
        let mut reports = Vec::new();
        let mut more = true;
        if self.inner.outbox.is_some() {
            self.seed_outgoing().await?;
        }
        loop {
            if more && tasks.len() < workers {
                let asked = workers - tasks.len();
                match self.claim(asked, &taken).await {
                    Ok(claimed) => {
                        more = claimed.len() == asked;
                        for lease in claimed {
                            taken.push(lease.mailbox_id.clone());
                            let engine = self.clone();
                            tasks.spawn(async move { engine.cycle_claimed(lease).await });
                        }
                    }
                    Err(e) if taken.is_empty() => return Err(e),
                    Err(e) => {
                        tracing::warn!("could not claim more due mailboxes: {e}");
                        more = false;
                    }
                }
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            if let Some(report) = finished(joined) {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Syncs mailboxes as they fall due until the handle is stopped or
    /// dropped: keeps up to `workers` cycles running, claiming a due mailbox
    /// whenever one ends, and otherwise sleeps until the next mailbox may be
    /// claimed (at most `max_idle`, so mailboxes enabled meanwhile are
    /// picked up). Engines in other processes sharing the store divide the
    /// mailboxes between them the same way. Queued token revocations that
    /// are due are sent in the background, at most once a minute
    /// ([`crate::Connections::retry_revocations`]).
    pub fn start(&self, max_idle: Duration) -> EngineHandle {
        let stop = Arc::new(Notify::new());
        let engine = self.clone();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let workers = engine.inner.options.workers as usize;
            let mut tasks = tokio::task::JoinSet::new();
            let mut seeded: Option<std::time::Instant> = None;
            let mut revoking: Option<(std::time::Instant, tokio::task::JoinHandle<()>)> = None;
            loop {
                if revoking
                    .as_ref()
                    .is_none_or(|(at, task)| task.is_finished() && at.elapsed() >= REVOKE_EVERY)
                {
                    let task = tokio::spawn(retry_revocations(engine.inner.sync.clone()));
                    revoking = Some((std::time::Instant::now(), task));
                }
                // Mailboxes whose outgoing mail has no schedule yet get one
                // (at start, then at most once a minute).
                if engine.inner.outbox.is_some()
                    && seeded.is_none_or(|at| at.elapsed() >= SEED_EVERY)
                {
                    seeded = Some(std::time::Instant::now());
                    if let Err(e) = engine.seed_outgoing().await {
                        tracing::warn!("could not schedule outgoing mail: {e}");
                    }
                }
                let mut full = false;
                if tasks.len() < workers {
                    let asked = workers - tasks.len();
                    // Not raced with stop: a claim dropped mid-commit could
                    // still land after `stop` released this engine's leases
                    // (SQLite finishes a queued COMMIT without its future).
                    // A stop meanwhile is seen by the select below.
                    match engine.claim(asked, &[]).await {
                        Ok(claimed) => {
                            full = claimed.len() == asked;
                            for lease in claimed {
                                let engine = engine.clone();
                                tasks.spawn(async move { engine.cycle_claimed(lease).await });
                            }
                        }
                        Err(e) => tracing::warn!("could not claim due mailboxes: {e}"),
                    }
                }
                // Every worker busy: wait for one to end. Else for the next
                // due time too.
                let wait = if full || tasks.len() >= workers {
                    max_idle
                } else {
                    engine.idle_for(max_idle).await
                };
                tokio::select! {
                    biased;
                    _ = stopping.notified() => break,
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                        let _ = finished(joined);
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            // Cut the running cycles short (their batches come again), and
            // a revocation in flight (its claim expires; it is sent again).
            tasks.shutdown().await;
            if let Some((_, task)) = revoking {
                task.abort();
            }
        });
        EngineHandle {
            stop,
            task: Some(task),
            engine: self.clone(),
        }
    }

    /// Sets the `mailsync_mailboxes{state}` gauges ([`crate::metrics`]) from
    /// every mailbox's state (one read of each). The `mailsync worker`
    /// command calls it periodically when it exports metrics.
    pub async fn record_mailbox_gauges(&self) -> Result<()> {
        let sync = &self.inner.sync;
        let mut counts = crate::metrics::STATES.map(|s| (s, 0usize));
        for mailbox in sync.directory().list_mailboxes(None).await? {
            let Some(state) = sync.store().get_state(&mailbox.id).await? else {
                continue;
            };
            let label = crate::metrics::state_label(&mailbox, &state);
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == label) {
                c.1 += 1;
            }
        }
        crate::metrics::mailboxes(&counts);
        Ok(())
    }

    /// Releases the sync leases this engine still holds — after cycles
    /// were cut short (their futures dropped) — so another worker may take
    /// the mailboxes at once rather than when the leases expire. A cut
    /// cycle moved no cursor past an unacknowledged batch.
    pub async fn release_leases(&self) {
        let store = self.inner.sync.store();
        match store.list_leases().await {
            Ok(leases) => {
                for lease in leases.iter().filter(|l| l.owner == self.inner.owner) {
                    if let Err(e) = store.release_lease(lease).await {
                        tracing::warn!(mailbox = %lease.mailbox_id, "could not release a sync lease: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("could not list the sync leases: {e}"),
        }
    }
}

/// How often [`Engine::start`] looks for mailboxes whose outgoing mail has
/// no schedule yet ([`Engine::seed_outgoing`]).
const SEED_EVERY: Duration = Duration::from_secs(60);

/// How often [`Engine::start`] sends the queued token revocations that are
/// due.
const REVOKE_EVERY: Duration = Duration::from_secs(60);

/// Sends the queued token revocations that are due, logging the outcome.
async fn retry_revocations(sync: crate::MailSync) {
    match sync.retry_revocations().await {
        Ok(0) => {}
        Ok(sent) => tracing::info!(sent, "queued token revocations sent"),
        Err(e) => tracing::warn!("could not send the queued token revocations: {e}"),
    }
}

/// The report of a finished cycle task; a cycle that could not start is
/// logged (quietly when another worker has the mailbox).
fn finished(
    joined: std::result::Result<Result<CycleReport>, tokio::task::JoinError>,
) -> Option<CycleReport> {
    match joined {
        Ok(Ok(report)) => Some(report),
        Ok(Err(e)) if e.code() == crate::ErrorCode::Conflict => None,
        Ok(Err(e)) => {
            tracing::warn!("a sync cycle could not start: {e}");
            None
        }
        Err(e) => {
            tracing::error!("a sync task failed: {e}");
            None
        }
    }
}

/// A running engine ([`Engine::start`]). Dropping it stops the engine;
/// [`EngineHandle::stop`] also waits until it stopped. A cycle that is
/// stopped mid-batch does not move the cursor: its batch comes again.
#[derive(Debug)]
pub struct EngineHandle {
    stop: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    engine: Engine,
}

impl EngineHandle {
    /// Stops the engine, waits for it, and releases the leases of the
    /// cycles it cut short (their batches come again; no cursor moved).
    pub async fn stop(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.engine.release_leases().await;
    }
}

impl Drop for EngineHandle {
    /// Stops the engine as [`EngineHandle::stop`] does, in the background
    /// when a runtime is there: the loop ends at its next wait (a claim in
    /// flight is finished, so its lease is seen and given back), then the
    /// leases of cut cycles are released. Without a runtime the loop is
    /// aborted and its leases expire.
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let engine = self.engine.clone();
                    runtime.spawn(async move {
                        let _ = task.await;
                        engine.release_leases().await;
                    });
                }
                Err(_) => task.abort(),
            }
        }
    }
}
