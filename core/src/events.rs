//! What happened to mailboxes, for the host: a [`Subscription`] yields each
//! mailbox's current state first ([`MailboxEventKind::Snapshot`]) and then
//! every change, in order per mailbox.
//!
//! Events are published after the change is stored and outside every lock
//! the library holds; the subscriber reads them on its own task. A host may
//! therefore call back into the library from its handler — for the same
//! mailbox too — without deadlocking. A subscriber that falls behind (more
//! than a thousand events queued) gets a fresh snapshot of the mailboxes it
//! follows instead of the events it missed.
//!
//! Events cover changes made through this [`MailSync`] instance; another
//! process's changes are seen in the store, not here.

use std::collections::VecDeque;

use tokio::sync::broadcast;

use crate::MailSync;
use crate::error::{ErrorCode, Result};
use crate::lifecycle::{Direction, MailboxState};
use crate::model::{MailboxId, Timestamp};

pub use crate::lifecycle::MailboxEventKind;

/// How many events a subscriber may fall behind before it is resynced.
pub(crate) const CHANNEL_CAPACITY: usize = 1024;

/// One event. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
pub struct MailboxEvent {
    /// What happened.
    pub kind: MailboxEventKind,
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// The direction, for direction events.
    pub direction: Option<Direction>,
    /// The error code behind the event (e.g. `token_revoked`), if any.
    pub code: Option<ErrorCode>,
    /// What happened and what to do, for people.
    pub message: String,
    /// When.
    pub at: Timestamp,
    /// The mailbox's state after the event.
    pub state: MailboxState,
}

/// A stream of [`MailboxEvent`]s; see the module docs. Dropping it ends the
/// subscription.
pub struct Subscription {
    sync: MailSync,
    mailbox: Option<MailboxId>,
    rx: broadcast::Receiver<MailboxEvent>,
    queued: VecDeque<MailboxEvent>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("mailbox", &self.mailbox)
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) async fn start(sync: MailSync, mailbox: Option<MailboxId>) -> Result<Subscription> {
        // Listen first, then read: a change between the two shows up as an
        // event after its snapshot, never lost.
        let rx = sync.inner.events.subscribe();
        let mut sub = Subscription {
            sync,
            mailbox,
            rx,
            queued: VecDeque::new(),
        };
        sub.queued = sub.snapshots().await?;
        Ok(sub)
    }

    async fn snapshots(&self) -> Result<VecDeque<MailboxEvent>> {
        let mailboxes = match &self.mailbox {
            Some(id) => vec![self.sync.directory().get_mailbox(id).await?],
            None => self.sync.directory().list_mailboxes(None).await?,
        };
        let now = self.sync.now();
        let mut out = VecDeque::new();
        for mailbox in mailboxes {
            let Some(state) = self.sync.store().get_state(&mailbox.id).await? else {
                continue;
            };
            out.push_back(MailboxEvent {
                kind: MailboxEventKind::Snapshot,
                mailbox_id: mailbox.id.clone(),
                email: mailbox.email.clone(),
                direction: None,
                code: None,
                message: format!("the current state of {}", mailbox.email),
                at: now,
                state,
            });
        }
        Ok(out)
    }

    /// The next event; `None` once the [`MailSync`] instance is gone.
    pub async fn next(&mut self) -> Option<MailboxEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            match self.rx.recv().await {
                Ok(event) => {
                    if self.mailbox.as_ref().is_none_or(|m| m == &event.mailbox_id) {
                        return Some(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "event subscriber fell behind; resyncing with a snapshot"
                    );
                    match self.snapshots().await {
                        Ok(snapshots) => self.queued = snapshots,
                        Err(e) => {
                            tracing::warn!(code = %e.code(), "cannot resync the subscription");
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The subscription as a `futures` stream.
    pub fn into_stream(self) -> impl futures::Stream<Item = MailboxEvent> + Send {
        futures::stream::unfold(self, |mut sub| async move {
            sub.next().await.map(|event| (event, sub))
        })
    }
}
