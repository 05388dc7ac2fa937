//! Applying lifecycle events to a stored mailbox state: read, apply (the
//! rules in [`crate::lifecycle`]), write with compare-and-swap together with
//! any grant and pending-consent change, then publish the events. A lost
//! race re-reads and applies again, which is safe because `apply` decides
//! from the state it is given.

use std::sync::Arc;

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::events::MailboxEvent;
use crate::lifecycle::{self, Context, LifecycleEvent, MailboxState, Notice};
use crate::model::{Alert, MailboxId};
use crate::store::{Commit, CommitOutcome, GrantChange, PendingChange};

/// How often a transition is re-applied after losing a race.
const MAX_ATTEMPTS: usize = 20;

impl MailSync {
    fn state_lock(&self, mailbox: &MailboxId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .state_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(mailbox.clone()).or_default().clone()
    }

    /// Applies `events` to the mailbox's state and stores the result with
    /// the grant and pending changes, atomically. `conflict` when the
    /// events do not fit the state, or the grant is not at the expected
    /// version.
    pub(crate) async fn transition(
        &self,
        mailbox: &MailboxId,
        events: &[LifecycleEvent],
        grant: GrantChange<'_>,
        pending: PendingChange<'_>,
    ) -> Result<MailboxState> {
        let lock = self.state_lock(mailbox);
        let _serial = lock.lock().await;
        let record = self.directory().get_mailbox(mailbox).await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(before) = self.store().get_state(mailbox).await? else {
                return Err(Error::not_found("mailbox", mailbox));
            };
            let now = self.now();
            let ctx = Context {
                email: &record.email,
                now,
                policy: self.inner.options.failure_policy,
            };
            let t = lifecycle::apply_all(&before, events, &ctx)?;
            let alerts: Vec<Alert> = lifecycle::alerts_for(&t.changes, &record.email)
                .into_iter()
                .map(|a| Alert {
                    level: a.level,
                    code: a.code,
                    message: a.message,
                    at: now,
                })
                .collect();
            let changed = t.changed(&before);
            let commit = Commit {
                mailbox_id: mailbox,
                expected_state_version: before.version,
                state: changed.then_some(&t.state),
                grant: grant.clone(),
                pending: pending.clone(),
                alerts: &alerts,
            };
            match self.store().commit(&commit).await? {
                CommitOutcome::Committed { state_version, .. } => {
                    let mut state = t.state;
                    state.version = state_version;
                    let notices = lifecycle::notices_for(&t.changes, &record.email);
                    self.publish(&record.id, &record.email, &state, notices);
                    return Ok(state);
                }
                CommitOutcome::StateConflict => continue,
                CommitOutcome::GrantConflict => {
                    return Err(Error::new(
                        ErrorCode::Conflict,
                        format!(
                            "the grant of {} was changed by someone else meanwhile",
                            record.email
                        ),
                    ));
                }
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "the state of {} kept changing under {MAX_ATTEMPTS} attempts; try again",
                record.email
            ),
        ))
    }

    /// Applies events that change only the state.
    pub(crate) async fn record(
        &self,
        mailbox: &MailboxId,
        events: &[LifecycleEvent],
    ) -> Result<MailboxState> {
        self.transition(mailbox, events, GrantChange::Keep, PendingChange::Keep)
            .await
    }

    /// Adds an alert to the mailbox without changing its state.
    pub(crate) async fn add_alert(
        &self,
        mailbox: &MailboxId,
        level: crate::model::AlertLevel,
        code: &str,
        message: String,
    ) -> Result<()> {
        let alert = Alert {
            level,
            code: code.to_owned(),
            message,
            at: self.now(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let Some(state) = self.store().get_state(mailbox).await? else {
                return Err(Error::not_found("mailbox", mailbox));
            };
            let commit = Commit {
                mailbox_id: mailbox,
                expected_state_version: state.version,
                state: None,
                grant: GrantChange::Keep,
                pending: PendingChange::Keep,
                alerts: std::slice::from_ref(&alert),
            };
            match self.store().commit(&commit).await? {
                CommitOutcome::Committed { .. } => return Ok(()),
                _ => continue,
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            "the mailbox's state kept changing; the alert was not added",
        ))
    }

    /// Sends notices to subscribers.
    pub(crate) fn publish(
        &self,
        mailbox: &MailboxId,
        email: &str,
        state: &MailboxState,
        notices: Vec<Notice>,
    ) {
        let at = self.now();
        for notice in notices {
            tracing::info!(mailbox = %mailbox, kind = notice.kind.as_str(), code = ?notice.code, "mailbox event");
            // No subscriber is not an error.
            let _ = self.inner.events.send(MailboxEvent {
                kind: notice.kind,
                mailbox_id: mailbox.clone(),
                email: email.to_owned(),
                direction: notice.direction,
                code: notice.code,
                message: notice.message,
                at,
                state: state.clone(),
            });
        }
    }
}
