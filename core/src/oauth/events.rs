//! Host-facing hooks: what happened to a mailbox's connection, so a CRM can
//! notify its user (e.g. "reconnect your Gmail").
//!
//! Every event is also written to the mailbox's alerts wall
//! ([`crate::model::Mailbox::alerts`]); the listener is the push channel.

use time::OffsetDateTime;

use crate::model::MailboxId;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxEventKind {
    /// Consent completed; tokens are stored.
    Connected,
    /// The access token was refreshed.
    Refreshed,
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent,
    /// The mailbox was disconnected (tokens revoked and deleted).
    Disconnected,
}

impl MailboxEventKind {
    /// Every kind, in documentation order.
    pub const ALL: &'static [MailboxEventKind] = &[
        MailboxEventKind::Connected,
        MailboxEventKind::Refreshed,
        MailboxEventKind::NeedsReconsent,
        MailboxEventKind::Disconnected,
    ];

    /// The stable snake_case name, e.g. `"needs_reconsent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxEventKind::Connected => "connected",
            MailboxEventKind::Refreshed => "refreshed",
            MailboxEventKind::NeedsReconsent => "needs_reconsent",
            MailboxEventKind::Disconnected => "disconnected",
        }
    }
}

/// One event. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxEvent {
    /// What happened.
    pub kind: MailboxEventKind,
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// The error code behind the event (e.g. `token_revoked`), if any.
    pub code: Option<String>,
    /// What happened and what to do, for people.
    pub message: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Receives [`MailboxEvent`]s. Called synchronously on the task that caused
/// the event, which may hold the mailbox's token lock: keep it quick and
/// queue the work — calling back into [`crate::MailSync`] for the same
/// mailbox from inside `on_event` can deadlock. A panic in the listener is
/// caught and logged, never propagated.
pub trait MailboxEventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: &MailboxEvent);
}

/// A listener that collects events in memory (handy in tests and scripts).
#[derive(Debug, Default)]
pub struct CollectingListener {
    events: std::sync::Mutex<Vec<MailboxEvent>>,
}

impl CollectingListener {
    /// An empty collector.
    pub fn new() -> Self {
        CollectingListener::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<MailboxEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl MailboxEventListener for CollectingListener {
    fn on_event(&self, event: &MailboxEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}
