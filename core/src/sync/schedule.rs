//! Which mailboxes are due, and the loop that syncs them.
//!
//! A mailbox is due when its incoming direction is enabled and the
//! postponement after its last cycle has passed, or when it is retrying
//! and its backoff (`next_attempt`, persisted in its lifecycle state) has
//! passed. Due mailboxes are taken oldest-due first, at most
//! [`super::EngineOptions::workers`] at a time, each under its sync lease
//! (so a mailbox syncs in one place at a time, also across processes) and
//! within its account's and profile's connection budgets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::error::Result;
use crate::lifecycle::{DirectionStatus, GrantStatus, MailboxState};
use crate::model::{IncomingDelivery, Mailbox, Timestamp};

use super::{CycleReport, Engine, SyncCursor};

/// When a mailbox is due next; `None` when it is not scheduled (disabled,
/// not tested, needing re-consent, or not using server-side sync).
pub(crate) fn due_at(
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
    /// The mailboxes due now, oldest due first.
    async fn due(&self) -> Result<Vec<(Timestamp, Mailbox)>> {
        let sync = &self.inner.sync;
        let now = sync.now();
        let cursors: std::collections::HashMap<_, _> = sync
            .store()
            .list_cursors()
            .await?
            .into_iter()
            .map(|c| (c.mailbox_id.clone(), c))
            .collect();
        let mut due = Vec::new();
        for mailbox in sync.directory().list_mailboxes(None).await? {
            let Some(state) = sync.store().get_state(&mailbox.id).await? else {
                continue;
            };
            if let Some(at) = due_at(&mailbox, &state, cursors.get(&mailbox.id))
                && at.unix_millis() <= now.unix_millis()
            {
                due.push((at, mailbox));
            }
        }
        due.sort_by_key(|(at, m)| (at.unix_millis(), m.id.clone()));
        Ok(due)
    }

    /// When the next mailbox is due (none: nothing is scheduled).
    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let sync = &self.inner.sync;
        let mut next: Option<Timestamp> = None;
        for status in self.status().await? {
            if let Some(at) = status.next_due
                && next.is_none_or(|n| at.unix_millis() < n.unix_millis())
            {
                next = Some(at);
            }
        }
        let _ = sync;
        Ok(next)
    }

    /// Syncs every mailbox that is due now, once, at most `workers` at a
    /// time; returns one report per mailbox synced. A mailbox another
    /// worker holds is left to it.
    pub async fn run_due(&self) -> Result<Vec<CycleReport>> {
        let due = self.due().await?;
        let workers = Arc::new(Semaphore::new(self.inner.options.workers as usize));
        let mut tasks = tokio::task::JoinSet::new();
        for (_, mailbox) in due {
            let permit = workers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| crate::Error::new(crate::ErrorCode::Internal, "workers closed"))?;
            let engine = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                engine.cycle(mailbox).await
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(e)) if e.code() == crate::ErrorCode::Conflict => {}
                Ok(Err(e)) => tracing::warn!("a sync cycle could not start: {e}"),
                Err(e) => tracing::error!("a sync task failed: {e}"),
            }
        }
        Ok(reports)
    }

    /// Runs [`Engine::run_due`] until the handle is stopped or dropped,
    /// sleeping until the next mailbox is due (at most `max_idle`, so
    /// mailboxes enabled meanwhile are picked up).
    pub fn start(&self, max_idle: Duration) -> EngineHandle {
        let stop = Arc::new(Notify::new());
        let engine = self.clone();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let run = engine.run_due();
                tokio::select! {
                    _ = stopping.notified() => break,
                    result = run => {
                        if let Err(e) = result {
                            tracing::warn!("sync pass failed: {e}");
                        }
                    }
                }
                let wait = match engine.next_due().await {
                    Ok(Some(at)) => {
                        let now = engine.inner.sync.now();
                        Duration::from_millis(
                            u64::try_from(at.unix_millis() - now.unix_millis()).unwrap_or(0),
                        )
                        .min(max_idle)
                    }
                    _ => max_idle,
                };
                tokio::select! {
                    _ = stopping.notified() => break,
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                }
            }
        });
        EngineHandle {
            stop,
            task: Some(task),
            engine: self.clone(),
        }
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
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
